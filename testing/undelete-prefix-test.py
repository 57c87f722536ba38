#!/usr/bin/env python3
"""testing/undelete-prefix.py against a real S3 server with versioning: moto 5.2.5 on 127.0.0.1,
started here on a free port (testing/start-moto.sh), and the script run as operators run it.

  testing/undelete-prefix-check.sh        (makes .venv-moto when missing, then runs this)

Hand-picked cases (a deleted prefix, an overwritten key, a key made after the moment, ...) and
generated schedules of puts and deletes before and after the moment: afterwards the prefix holds
exactly what it held at the moment, no data version is gone, a sibling prefix is untouched, and a
second run changes nothing. SEED=N replays one generated schedule (each failure prints its seed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import time
import unittest
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
from botocore.config import Config

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "undelete-prefix.py"
ENV = {
    **os.environ,
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
PREFIX = "openclaw/prod-alice"
# Its name begins with PREFIX's: a prefix taken as a string, not a folder, would reach it.
SIBLING = "openclaw/prod-alice-b"
GENERATED_SCHEDULES = 8

spec = importlib.util.spec_from_file_location("undelete_prefix", SCRIPT)
undelete = importlib.util.module_from_spec(spec)
sys.modules["undelete_prefix"] = undelete  # dataclasses look their module up
spec.loader.exec_module(undelete)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """moto_server on a free port of 127.0.0.1, ready when GET / answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(HERE / "start-moto.sh"), str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        for _ in range(6000):
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.url} within 60 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class Bucket:
    """A fresh versioned bucket and what a test does to it."""

    count = 0

    def __init__(self, moto: Moto, versioned: bool = True) -> None:
        Bucket.count += 1
        self.name = f"undelete-{Bucket.count}"
        self.s3 = boto3.client(
            "s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test",
            config=Config(s3={"addressing_style": "path"}),
        )
        self.s3.create_bucket(Bucket=self.name)
        if versioned:
            self.s3.put_bucket_versioning(Bucket=self.name, VersioningConfiguration={"Status": "Enabled"})
        self.endpoint = moto.url

    def put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.name, Key=key, Body=body)

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.name, Key=key)

    def apply(self, ops: list[tuple]) -> None:
        for op in ops:
            if op[0] == "put":
                self.put(op[1], op[2])
            else:
                self.delete(op[1])

    def current(self, prefix: str) -> dict[str, bytes]:
        found = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix + "/"):
            for o in page.get("Contents", []):
                found[o["Key"]] = self.s3.get_object(Bucket=self.name, Key=o["Key"])["Body"].read()
        return found

    def history(self, prefix: str = "") -> tuple[set, set]:
        """(data versions, delete markers) as (key, version id) pairs."""
        data, markers = set(), set()
        for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=self.name, Prefix=prefix):
            data |= {(v["Key"], v["VersionId"]) for v in page.get("Versions", [])}
            markers |= {(m["Key"], m["VersionId"]) for m in page.get("DeleteMarkers", [])}
        return data, markers

    def moment(self) -> str:
        """A time after every write so far and before every later one. Listings give LastModified
        to the second, like S3's: the moment is the next whole second, and the clock passes it
        before this returns (a bounded wait, under a second)."""
        now = datetime.now(timezone.utc)
        moment = now.replace(microsecond=0) + timedelta(seconds=1)
        for _ in range(2000):
            if datetime.now(timezone.utc) >= moment + timedelta(milliseconds=5):
                break
            time.sleep(0.001)
        return moment.isoformat().replace("+00:00", "Z")

    def undelete(self, *args: str, prefix: str = PREFIX, before: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(SCRIPT), "--endpoint", self.endpoint, "--bucket", self.name, "--prefix", prefix,
             "--before", before, *args],
            env=ENV, capture_output=True, text=True, timeout=120,
        )


class UndeletePrefix(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.moto = Moto()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.moto.stop()

    def bring_back(self, before_ops: list[tuple], after_ops: list[tuple], *args: str, context: str = "") -> dict:
        """Applies before_ops, takes the moment, applies after_ops (and writes to the sibling on
        both sides), runs the script; checks every promise and returns its JSON report."""
        b = Bucket(self.moto)
        b.apply(before_ops)
        b.put(f"{SIBLING}/latest.json", b"sibling 1")
        wanted = b.current(PREFIX)
        moment = b.moment()
        b.apply(after_ops)
        b.put(f"{SIBLING}/latest.json", b"sibling 2")
        b.delete(f"{SIBLING}/latest.json")
        made_after = {k: v for k, v in b.current(PREFIX).items() if k not in wanted}
        data_before, _ = b.history()
        sibling_before = b.history(SIBLING + "/")

        done = b.undelete("--json", *args, before=moment)
        self.assertEqual(done.returncode, 0, f"{context}\n{done.stderr}")
        report = json.loads(done.stdout)
        expected = {**wanted, **made_after} if "--keep-newer" in args else wanted
        self.assertEqual(b.current(PREFIX), expected, context)
        data_after, _ = b.history()
        self.assertLessEqual(data_before, data_after, f"{context}: a data version was deleted")
        self.assertEqual(b.history(SIBLING + "/"), sibling_before, f"{context}: the sibling prefix was touched")

        again = b.undelete("--json", *args, before=moment)
        self.assertEqual(again.returncode, 0, again.stderr)
        counts = json.loads(again.stdout)["counts"]
        self.assertEqual(counts["undelete"] + counts["copy"] + counts["delete"], 0, f"{context}: a second run acted: {again.stdout}")
        self.assertEqual(b.current(PREFIX), expected, context)
        return report

    # --- hand-picked -------------------------------------------------------------------------

    def test_a_deleted_prefix_comes_back_by_removing_its_delete_markers(self):
        keys = [f"{PREFIX}/latest.json", f"{PREFIX}/repo/config", f"{PREFIX}/repo/data/ab/abcdef"]
        report = self.bring_back([("put", k, k.encode()) for k in keys], [("delete", k) for k in keys])
        self.assertEqual(report["counts"], {"undelete": 3, "copy": 0, "delete": 0, "kept": 0, "unchanged": 0})
        self.assertTrue(all(len(a["delete_markers_removed"]) == 1 for a in report["actions"]))

    def test_an_overwritten_key_gets_its_old_bytes_back_as_a_new_version(self):
        key = f"{PREFIX}/latest.json"
        report = self.bring_back([("put", key, b"head 1")], [("put", key, b"head 2"), ("put", key, b"head 3")])
        self.assertEqual(report["counts"]["copy"], 1)

    def test_a_key_made_after_the_moment_is_deleted_or_with_keep_newer_kept(self):
        before = [("put", f"{PREFIX}/repo/snapshots/1", b"one")]
        after = [("put", f"{PREFIX}/repo/snapshots/2", b"two")]
        self.assertEqual(self.bring_back(before, after)["counts"]["delete"], 1)
        self.assertEqual(self.bring_back(before, after, "--keep-newer")["counts"]["kept"], 1)

    def test_a_key_deleted_and_made_again_after_the_moment_gets_its_old_bytes(self):
        key = f"{PREFIX}/latest.json"
        report = self.bring_back([("put", key, b"old")], [("delete", key), ("put", key, b"new"), ("delete", key), ("put", key, b"newer")])
        self.assertEqual(report["counts"]["copy"], 1)

    def test_a_key_deleted_before_the_moment_stays_deleted(self):
        key = f"{PREFIX}/repo/index/1"
        report = self.bring_back([("put", key, b"x"), ("delete", key)], [("put", key, b"back from the dead")])
        self.assertEqual(report["counts"]["delete"], 1)

    def test_a_key_made_and_deleted_after_the_moment_and_an_untouched_one_are_left_alone(self):
        report = self.bring_back(
            [("put", f"{PREFIX}/repo/keys/k", b"key")],
            [("put", f"{PREFIX}/repo/tmp", b"t"), ("delete", f"{PREFIX}/repo/tmp")],
        )
        self.assertEqual(report["counts"], {"undelete": 0, "copy": 0, "delete": 0, "kept": 0, "unchanged": 2})
        self.assertEqual(report["actions"], [])

    def test_a_dry_run_changes_nothing_and_prints_the_plan(self):
        b = Bucket(self.moto)
        b.put(f"{PREFIX}/latest.json", b"1")
        moment = b.moment()
        b.delete(f"{PREFIX}/latest.json")
        history = b.history()
        done = b.undelete("--dry-run", before=moment)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(f"undelete  {PREFIX}/latest.json  removes 1 delete marker", done.stdout)
        self.assertIn("dry run, nothing changed", done.stdout)
        self.assertEqual(b.history(), history)

    def test_bad_arguments_and_an_unversioned_bucket_are_refused_naming_them(self):
        b = Bucket(self.moto, versioned=False)
        b.put(f"{PREFIX}/latest.json", b"1")
        for args, status, message in [
            (["--prefix", PREFIX, "--before", "2026-12-07T06:00:00"], 2, "--before '2026-12-07T06:00:00' has no offset"),
            (["--prefix", PREFIX, "--before", "yesterday"], 2, "--before 'yesterday' is not an RFC 3339 time"),
            (["--prefix", "", "--before", "2026-12-07T06:00:00Z"], 2, "--prefix is empty"),
            (["--prefix", "/openclaw/x", "--before", "2026-12-07T06:00:00Z"], 2, "--prefix '/openclaw/x' starts with /"),
            (["--prefix", PREFIX, "--before", "2026-12-07T06:00:00Z"], 1, f"bucket {b.name} has never been versioned"),
        ]:
            done = subprocess.run(
                [sys.executable, str(SCRIPT), "--endpoint", b.endpoint, "--bucket", b.name, *args],
                env=ENV, capture_output=True, text=True, timeout=60,
            )
            self.assertEqual(done.returncode, status, (args, done.stderr))
            self.assertIn(message, done.stderr, args)
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--endpoint", b.endpoint, "--bucket", "no-such-bucket", "--prefix", PREFIX,
             "--before", "2026-12-07T06:00:00Z"], env=ENV, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(done.returncode, 1)
        self.assertIn("no-such-bucket", done.stderr)

    # --- generated ---------------------------------------------------------------------------

    def test_generated_schedules_come_back_exactly(self):
        seeds = [int(os.environ["SEED"])] if "SEED" in os.environ else [random.randrange(1 << 32) for _ in range(GENERATED_SCHEDULES)]
        for seed in seeds:
            with self.subTest(seed=seed):
                rng = random.Random(seed)
                keys = [f"{PREFIX}/latest.json", f"{PREFIX}/repo/config"] + [
                    f"{PREFIX}/repo/{rng.choice(['data/ab', 'data/cd', 'index', 'snapshots'])}/{i:04x}" for i in range(rng.randint(3, 12))
                ]

                def schedule(n: int) -> list[tuple]:
                    ops = []
                    for _ in range(n):
                        key = rng.choice(keys)
                        ops.append(("delete", key) if rng.random() < 0.35 else ("put", key, rng.randbytes(rng.randint(0, 64))))
                    return ops

                args = ("--keep-newer",) if rng.random() < 0.25 else ()
                self.bring_back(schedule(rng.randint(5, 30)), schedule(rng.randint(1, 30)), *args,
                                context=f"seed {seed} (replay: SEED={seed} testing/undelete-prefix-check.sh)")


class Plans(unittest.TestCase):
    """The pure plan of one key, table by table (no server)."""

    T = datetime(2026, 12, 7, 6, 0, tzinfo=timezone.utc)

    def entry(self, minute: int, *, marker: bool = False, latest: bool = False, etag: str = "") -> object:
        return undelete.Entry(f"v{minute}", self.T + timedelta(minutes=minute), latest, marker, etag, 1)

    def test_plans(self):
        e = self.entry
        for name, entries, keep_newer, action in [
            ("current before the moment", [e(-5, latest=True)], False, "unchanged"),
            ("deleted after", [e(1, marker=True, latest=True), e(-5)], False, "undelete"),
            ("deleted twice after", [e(2, marker=True, latest=True), e(1, marker=True), e(-5)], False, "undelete"),
            ("overwritten after", [e(1, latest=True, etag="b"), e(-5, etag="a")], False, "copy"),
            ("copied back already", [e(3, latest=True, etag="a"), e(1, etag="b"), e(-5, etag="a")], False, "unchanged"),
            ("made after", [e(1, latest=True)], False, "delete"),
            ("made after, kept", [e(1, latest=True)], True, "kept"),
            ("deleted before, made again after", [e(1, latest=True), e(-2, marker=True), e(-5)], False, "delete"),
            ("made and deleted after", [e(2, marker=True, latest=True), e(1)], False, "unchanged"),
            ("written exactly at the moment", [e(0, latest=True), e(-5)], False, "copy"),
        ]:
            with self.subTest(name):
                plan = undelete.plan_key("k", entries, self.T, keep_newer)
                self.assertEqual(plan.action, action)
                self.assertTrue(all(m.is_marker for m in plan.markers))

    def test_entries_in_the_same_second_are_put_in_s3s_order_when_it_decides(self):
        at = self.T - timedelta(minutes=5)
        version, marker = undelete.Entry("data", at, False, False), undelete.Entry("marker", at, False, True)
        head = self.entry(1, latest=True)
        for name, listed, s3_order, action in [
            # Listing order says nothing in a tie; S3's one-by-one walk does.
            ("the version was newer", [head, marker, version], ["data", "marker"], "copy"),
            ("the delete marker was newer", [head, version, marker], ["marker", "data"], "delete"),
        ]:
            with self.subTest(name):
                walked = []

                def walk(after, count):
                    walked.append((after, count))
                    return s3_order

                entries = undelete.settle_ties("k", listed, self.T, walk)
                self.assertEqual(walked, [("v1", 2)])
                self.assertEqual(undelete.plan_key("k", entries, self.T, False).action, action)

    def test_a_walk_starts_after_the_nearest_newer_entry_alone_in_its_second(self):
        def at(seconds):
            return self.T + timedelta(seconds=seconds)

        entries = [
            undelete.Entry("head", at(9), True, False),
            undelete.Entry("n1", at(5), False, False),
            undelete.Entry("n2", at(5), False, True),
            undelete.Entry("t1", at(-1), False, True),
            undelete.Entry("t2", at(-1), False, False),
            undelete.Entry("old", at(-9), False, False),
        ]
        walked = []

        def walk(after, count):
            walked.append((after, count))
            return ["n2", "n1", "t2", "t1"]

        settled = undelete.settle_ties("k", entries, self.T, walk)
        self.assertEqual(walked, [("head", 4)])
        self.assertEqual([e.version_id for e in settled], ["head", "n2", "n1", "t2", "t1", "old"])
        self.assertEqual(undelete.plan_key("k", settled, self.T, False).action, "copy")
        # With every newer second tied, the walk starts at the newest entry.
        entries[0] = undelete.Entry("head", at(5), True, False)
        walked.clear()
        undelete.settle_ties("k", entries, self.T, lambda after, count: walked.append((after, count)) or ["head", "n2", "n1", "t2", "t1"])
        self.assertEqual(walked, [(None, 5)])

    def test_no_walk_without_a_tie_or_when_the_current_entry_is_in_it(self):
        def walk(after, count):
            raise AssertionError("walked")

        e = self.entry
        undelete.settle_ties("k", [e(1, latest=True), e(-5), e(-6, marker=True)], self.T, walk)
        at = self.T - timedelta(seconds=3)
        tied = [undelete.Entry("a", at, True, False), undelete.Entry("b", at, False, True)]
        self.assertEqual(undelete.settle_ties("k", tied, self.T, walk), tied)

    def test_a_listing_that_changed_while_it_was_walked_is_refused(self):
        at = self.T - timedelta(minutes=5)
        listed = [self.entry(1, latest=True), undelete.Entry("a", at, False, False), undelete.Entry("b", at, False, True)]
        with self.assertRaisesRegex(undelete.UndeleteError, "k: its listing changed"):
            undelete.settle_ties("k", listed, self.T, lambda after, count: ["a", "z"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
