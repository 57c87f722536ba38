#!/usr/bin/env python3
"""Brings one prefix of a versioned S3 bucket back to how it was at a moment (docs/deployment.md,
"Bringing a prefix back").

  undelete-prefix.py --bucket BUCKET --prefix PREFIX --before TIME [--endpoint URL] [--region R]
                     [--dry-run] [--keep-newer] [--json]

PREFIX is a folder: `openclaw/prod-alice` means the keys under `openclaw/prod-alice/`, never those
of `openclaw/prod-alice-b/`. TIME is RFC 3339 with its offset (2026-12-07T06:00:00Z). For every
key under PREFIX/, the newest version or delete marker whose LastModified is strictly before TIME
is the key's state at TIME:
  - a version, and only delete markers are newer (the key was deleted): those delete markers are
    removed, and that version is the current one again ("undelete");
  - a version, and newer versions exist (the key was overwritten): that version is copied over
    the key, a new current version with its bytes ("copy");
  - a delete marker, or nothing (the key was deleted before TIME, or made after it): a current
    version is deleted, which leaves a delete marker ("delete"), unless --keep-newer ("kept").
So the prefix holds exactly what it held at TIME. No data version is ever deleted: everything this
does can be undone by running it again with another TIME, within the bucket's noncurrent-version
time. S3 (and moto) list LastModified to the second (a multipart upload's is when it began): choose
TIME after the last write you want back and at least a second before the first you do not. When a
key has several entries in the second before TIME, their order is read from S3's own listing, one
entry at a time.

Every action is planned before any is taken; --dry-run prints the plan only. A run that stops on
an error can be repeated: keys already back as they were are left alone.

Credentials and region come from the usual AWS environment (AWS_ACCESS_KEY_ID, AWS_PROFILE,
AWS_REGION, ...). The caller needs s3:GetBucketVersioning, s3:ListBucketVersions,
s3:GetObjectVersion, s3:PutObject, s3:DeleteObject and, for delete markers only,
s3:DeleteObjectVersion; no instance role of the Pulumi program has the last one.

Exit status: 0 done (or nothing to do), 1 an error (its message names the bucket or key),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

# One CopyObject up to S3's limit for it, so that a copy keeps its source's ETag (a rerun then
# sees the key is already back).
SINGLE_COPY_LIMIT = 5 * 1024**3


class UndeleteError(Exception):
    """A problem the operator must fix; the message names the bucket or key."""


class UsageError(UndeleteError):
    """A bad argument; the message names it."""


@dataclass
class Entry:
    """One version or delete marker of a key."""

    version_id: str
    last_modified: datetime
    is_latest: bool
    is_marker: bool
    etag: str = ""
    size: int = 0

    def describe(self) -> str:
        kind = "delete marker" if self.is_marker else "version"
        return f"{kind} {self.version_id} ({self.last_modified.isoformat().replace('+00:00', 'Z')})"


@dataclass
class Plan:
    """What to do with one key."""

    key: str
    action: str  # undelete, copy, delete, kept, unchanged
    target: Entry | None = None
    head: Entry | None = None
    markers: list[Entry] = field(default_factory=list)

    def line(self) -> str:
        if self.action == "undelete":
            count = len(self.markers)
            return f"undelete  {self.key}  removes {count} delete marker{'s' if count != 1 else ''}; current: {self.target.describe()}"
        if self.action == "copy":
            return f"copy      {self.key}  {self.target.describe()} over {self.head.describe()}"
        if self.action == "delete":
            why = "deleted before --before" if self.target else "made after --before"
            return f"delete    {self.key}  {why}: its current {self.head.describe()} becomes noncurrent"
        if self.action == "kept":
            return f"kept      {self.key}  made after --before (--keep-newer)"
        return f"unchanged {self.key}"

    def as_json(self) -> dict:
        return {
            "key": self.key,
            "action": self.action,
            "version_id": self.target.version_id if self.target else None,
            "delete_markers_removed": [m.version_id for m in self.markers],
        }


def parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as e:
        raise UsageError(f"--before {text!r} is not an RFC 3339 time such as 2026-12-07T06:00:00Z ({e})") from None
    if moment.tzinfo is None:
        raise UsageError(f"--before {text!r} has no offset: write the zone, e.g. {text}Z for UTC")
    return moment


def folder(prefix: str) -> str:
    if not prefix or prefix in ("/", "."):
        raise UsageError("--prefix is empty: name the prefix to bring back (this never works on a whole bucket)")
    if prefix.startswith("/"):
        raise UsageError(f"--prefix {prefix!r} starts with /: S3 keys do not (e.g. openclaw/prod-alice)")
    return prefix if prefix.endswith("/") else prefix + "/"


def list_entries(s3, bucket: str, prefix: str) -> dict[str, list[Entry]]:
    """Every version and delete marker under `prefix`, by key, newest first as far as LastModified
    tells (to the second: see `settle_ties`)."""
    keys: dict[str, list[Entry]] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            keys.setdefault(v["Key"], []).append(
                Entry(v["VersionId"], v["LastModified"], v["IsLatest"], False, v.get("ETag", ""), v.get("Size", 0))
            )
        for m in page.get("DeleteMarkers", []):
            keys.setdefault(m["Key"], []).append(Entry(m["VersionId"], m["LastModified"], m["IsLatest"], True))
    for entries in keys.values():
        # Newest first; in a tie the current one (IsLatest) is the newer.
        entries.sort(key=lambda e: (e.last_modified, e.is_latest), reverse=True)
    return keys


def settle_ties(key: str, entries: list[Entry], before: datetime, walk) -> list[Entry]:
    """`entries` with the order of the ones in the newest second before `before` made exact, when
    several share it: that order decides which was current at `before`. The current entry
    (IsLatest) is the newest of its second; otherwise `walk(after_version_id, count)` reads the
    key's next `count` version ids after the given one (None: from the newest) in S3's listing
    order, which is exact. The walk starts after the nearest newer entry alone in its second."""
    earlier = [e for e in entries if e.last_modified < before]
    if not earlier:
        return entries
    second = earlier[0].last_modified
    tied = [e for e in entries if e.last_modified == second]
    if len(tied) < 2 or any(e.is_latest for e in tied):
        return entries
    newer = [e for e in entries if e.last_modified > second]
    start, between = None, []
    for moment in sorted({e.last_modified for e in newer}):
        group = [e for e in newer if e.last_modified == moment]
        if len(group) == 1:
            start = group[0].version_id
            break
        between += group
    ids = walk(start, len(between) + len(tied))
    by_id = {e.version_id: e for e in between + tied}
    if sorted(ids) != sorted(by_id):
        raise UndeleteError(f"{key}: its listing changed while it was read (versions in {second}); run again")
    walked = [by_id[i] for i in ids]
    above = [e for e in newer if e.version_id not in by_id]
    return above + walked + [e for e in entries if e.last_modified < second]


def walker(s3, bucket: str, key: str):
    """Reads `key`'s entries one per request, so that a version and a delete marker come back in
    S3's order (a page of several splits them into two lists)."""

    def walk(after: str | None, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            request = {"Bucket": bucket, "Prefix": key, "MaxKeys": 1}
            if after is not None:
                request.update(KeyMarker=key, VersionIdMarker=after)
            page = s3.list_object_versions(**request)
            found = [e for e in page.get("Versions", []) + page.get("DeleteMarkers", []) if e["Key"] == key]
            if len(found) != 1:
                break
            after = found[0]["VersionId"]
            ids.append(after)
        return ids

    return walk


def plan_key(key: str, entries: list[Entry], before: datetime, keep_newer: bool) -> Plan:
    """What to do with `key`, whose `entries` are newest first (see `settle_ties`)."""
    head = entries[0]
    earlier = [e for e in entries if e.last_modified < before]
    target = earlier[0] if earlier else None
    if target is not None and not target.is_marker:
        if target is head:
            return Plan(key, "unchanged", target, head)
        newer = entries[: entries.index(target)]
        if all(e.is_marker for e in newer):
            return Plan(key, "undelete", target, head, markers=newer)
        if not head.is_marker and head.etag and head.etag == target.etag and head.size == target.size:
            return Plan(key, "unchanged", target, head)  # already copied back by an earlier run
        return Plan(key, "copy", target, head)
    # Deleted at --before, or not made yet.
    if head.is_marker:
        return Plan(key, "unchanged", target, head)
    return Plan(key, "kept" if keep_newer else "delete", target, head)


def carry_out(s3, bucket: str, plan: Plan) -> None:
    if plan.action == "undelete":
        for marker in plan.markers:
            # Only ever a delete marker's id: no data version is deleted.
            if not marker.is_marker:
                raise UndeleteError(f"{plan.key}: refusing to delete {marker.describe()}, not a delete marker")
            s3.delete_object(Bucket=bucket, Key=plan.key, VersionId=marker.version_id)
    elif plan.action == "copy":
        s3.copy(
            {"Bucket": bucket, "Key": plan.key, "VersionId": plan.target.version_id},
            bucket,
            plan.key,
            Config=TransferConfig(multipart_threshold=SINGLE_COPY_LIMIT),
        )
    elif plan.action == "delete":
        s3.delete_object(Bucket=bucket, Key=plan.key)


def client(endpoint: str | None, region: str | None):
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}) if endpoint else None
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)


def run(args: argparse.Namespace) -> int:
    before = parse_time(args.before)
    prefix = folder(args.prefix)
    s3 = client(args.endpoint, args.region)
    try:
        status = s3.get_bucket_versioning(Bucket=args.bucket).get("Status")
    except ClientError as e:
        raise UndeleteError(f"bucket {args.bucket}: {e}") from None
    if status is None:
        raise UndeleteError(f"bucket {args.bucket} has never been versioned: there is no older version to bring back")
    if status != "Enabled":
        print(f"undelete-prefix.py: warning: versioning of bucket {args.bucket} is {status}", file=sys.stderr)
    plans = [
        plan_key(key, settle_ties(key, entries, before, walker(s3, args.bucket, key)), before, args.keep_newer)
        for key, entries in sorted(list_entries(s3, args.bucket, prefix).items())
    ]
    counts = {action: 0 for action in ("undelete", "copy", "delete", "kept", "unchanged")}
    done = 0
    for plan in plans:
        counts[plan.action] += 1
        if not args.json and plan.action != "unchanged":
            print(plan.line())
        if args.dry_run:
            continue
        try:
            carry_out(s3, args.bucket, plan)
        except (ClientError, BotoCoreError) as e:
            raise UndeleteError(
                f"{plan.key} ({plan.action}): {e}; {done} action(s) were taken before it: run again to finish"
            ) from None
        done += plan.action not in ("kept", "unchanged")
    when = before.isoformat().replace("+00:00", "Z")
    if args.json:
        print(json.dumps({"bucket": args.bucket, "prefix": prefix, "before": when, "dry_run": args.dry_run,
                          "keys": len(plans), "counts": counts, "actions": [p.as_json() for p in plans if p.action != "unchanged"]}))
    else:
        summary = ", ".join(f"{n} {'undeleted' if a == 'undelete' else 'copied' if a == 'copy' else 'deleted' if a == 'delete' else a}"
                            for a, n in counts.items())
        print(f"{prefix} in {args.bucket} as of {when}: {len(plans)} keys; {summary}" + ("; dry run, nothing changed" if args.dry_run else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", required=True, help="the versioned bucket")
    parser.add_argument("--prefix", required=True, help="the prefix to bring back, a folder (e.g. openclaw/prod-alice)")
    parser.add_argument("--before", required=True, metavar="TIME", help="RFC 3339 time with offset: the state wanted is the one just before it")
    parser.add_argument("--endpoint", help="S3 endpoint URL (a local server; default: AWS)")
    parser.add_argument("--region", help="region (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--keep-newer", action="store_true", help="leave keys made after TIME in place (spotkeeper then refuses a head older than their snapshots)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: counts and actions")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"undelete-prefix.py: {e}", file=sys.stderr)
        return 2
    except UndeleteError as e:
        print(f"undelete-prefix.py: {e}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as e:
        print(f"undelete-prefix.py: bucket {args.bucket}, prefix {args.prefix}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
