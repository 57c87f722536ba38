#!/usr/bin/env python3
"""Recovery time for docs/performance.md: from `spotkeeper run` on an empty machine (the image
present, no state, no work_dir, no cache) to systemd's READY=1, beside the time restic alone takes
to restore the same snapshot from the same S3 server.

For each scale: generate a synthetic OpenClaw state (bench/generate.py), snapshot it once in
format 2 (the seed, as a machine that ran before would have left it), then in each run, in a
rotating order:
  - `spotkeeper run` with an empty state and work_dir: secrets off, the boot restore, the fake
    OpenClaw container (testing/build-fake-image.sh) created and started, READY=1 when /startupz
    says it started. READY is read from a NOTIFY_SOCKET of our own, as systemd would hear it; the
    daemon is then killed (-9) and its container removed, so the repository stays the seed;
  - `restic restore latest` of the same repository into an empty directory.
Wall times; the daemon's own restore time from its log. Prints a Markdown table and writes
bench/out/recovery-<date>.json. No assertion: figures only. Needs target/release/spotkeeper and
target/release/examples/demo-s3 (bench/run.sh builds them) and restic.

    bench/recovery.py [--scales medium,large] [--runs 3]
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "target/release/spotkeeper"
S3 = REPO / "target/release/examples/demo-s3"
PASSWORD = "spotkeeper-bench"
BUCKET = "bench-bucket"
PREFIX = "recovery"
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="testsecret", AWS_REGION="us-east-1",
           AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
           AWS_EC2_METADATA_DISABLED="true")
READY_LIMIT = 900


def log(msg):
    print(f"[recovery {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3(root):
    port = free_port()
    proc = subprocess.Popen([str(S3), str(port), str(root), BUCKET], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("the demo S3 server did not start")


def write_config(path, state, work, s3_port, password_file, image=None, app_port=None, container=None):
    text = f"""[state]
dir = "{state}"
work_dir = "{work}"
[s3]
bucket = "{BUCKET}"
prefix = "{PREFIX}"
endpoint = "http://127.0.0.1:{s3_port}"
[repository]
password_file = "{password_file}"
[snapshot]
interval = "1h"
follow = "off"
[spot]
enabled = false
[metrics]
enabled = false
[verify]
daily = false
[daemon]
socket = "{work.parent / (work.name + '.sock')}"
"""
    if image:
        text += f"""[container]
name = "{container}"
image = "{image}"
ports = ["127.0.0.1:{app_port}:18789"]
health_url = "http://127.0.0.1:{app_port}/healthz"
startup_url = "http://127.0.0.1:{app_port}/startupz"
log_driver = "json-file"
stop_timeout = "10s"
start_timeout = "15m"
[container.environment]
WRITE_INTERVAL_MS = "200"
"""
    path.write_text(text)


def spotkeeper_run_to_ready(scratch, s3_port, password_file, image, tag):
    """Seconds from exec of `spotkeeper run` on an empty machine to READY=1, and the daemon's own
    restore time (ms) from its log."""
    machine = scratch / f"machine-{tag}"
    shutil.rmtree(machine, ignore_errors=True)
    machine.mkdir()
    state, work = machine / "state", machine / "work"
    container = f"spotkeeper-recovery-{os.getpid()}-{tag}"
    config = machine / "spotkeeper.toml"
    write_config(config, state, work, s3_port, password_file, image, free_port(), container)
    notify_path = machine / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(1.0)
    logfile = machine / "daemon.log"
    env = dict(ENV, NOTIFY_SOCKET=str(notify_path))
    subprocess.run(["docker", "rm", "-f", container], capture_output=True)
    start = time.perf_counter()
    daemon = subprocess.Popen([str(BIN), "--config", str(config), "run"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(logfile, "w"))
    ready = None
    try:
        while time.perf_counter() - start < READY_LIMIT:
            try:
                message = notify.recv(4096).decode(errors="replace")
            except socket.timeout:
                if daemon.poll() is not None:
                    raise SystemExit(f"spotkeeper run exited {daemon.returncode}; see {logfile}")
                continue
            if any(line == "READY=1" for line in message.splitlines()):
                ready = time.perf_counter() - start
                break
        if ready is None:
            raise SystemExit(f"no READY=1 within {READY_LIMIT} s; see {logfile}")
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        notify.close()
    text = logfile.read_text()
    restored = re.search(r"restored snapshot_id=\S+ files=\d+ duration_ms=(\d+)", text)
    restore_ms = int(restored.group(1)) if restored else None
    files = sum(1 for _ in state.rglob("*"))
    # Kept until the scale is done: ext4 without a journal slows every file creation for a minute
    # after many deletions (bench/run.py, SETTLE_S), and the next restore would pay for it.
    return ready, restore_ms, files


def restic_restore(scratch, s3_port, tag):
    target = scratch / f"restic-{tag}"
    shutil.rmtree(target, ignore_errors=True)
    env = dict(ENV, RESTIC_PASSWORD=PASSWORD, RESTIC_REPOSITORY=f"s3:http://127.0.0.1:{s3_port}/{BUCKET}/{PREFIX}/repo",
               RESTIC_CACHE_DIR=str(scratch / f"restic-cache-{tag}"))
    start = time.perf_counter()
    out = subprocess.run(["restic", "restore", "latest", "--target", str(target)], env=env, capture_output=True,
                         text=True)
    took = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"restic restore failed: {out.stderr.strip()}")
    return took  # the restore is kept until the scale is done, as spotkeeper's


def median_range(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="medium,large")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for needed in (BIN, S3):
        if not needed.exists():
            sys.exit(f"{needed} is missing: run bench/run.sh (or `cargo build --release --bin spotkeeper --example demo-s3`)")
    if not shutil.which("restic"):
        sys.exit("restic is missing (bench/run.sh installs it)")
    image = subprocess.run([str(REPO / "testing/build-fake-image.sh")], capture_output=True, text=True,
                           check=True).stdout.strip()
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "image": image, "scales": {}}
    rows = []
    for scale in args.scales.split(","):
        scratch = Path(tempfile.mkdtemp(prefix=f"spotkeeper-recovery-{scale}."))
        try:
            seed_state = scratch / "seed-state"
            log(f"{scale}: generating the state")
            subprocess.run([sys.executable, str(REPO / "bench/generate.py"), "--scale", scale, str(seed_state)],
                           check=True, stdout=subprocess.DEVNULL)
            s3, s3_port = start_s3(scratch / "s3")
            try:
                password_file = scratch / "password"
                password_file.write_text(PASSWORD + "\n")
                password_file.chmod(0o600)
                seed_config = scratch / "seed.toml"
                write_config(seed_config, seed_state, scratch / "seed-work", s3_port, password_file)
                log(f"{scale}: the seed snapshot")
                seeded = subprocess.run([str(BIN), "--config", str(seed_config), "snapshot", "--json"], env=ENV,
                                        capture_output=True, text=True)
                if seeded.returncode != 0:
                    sys.exit(f"the seed snapshot failed: {seeded.stderr}")
                ready, restore_ms, restic = [], [], []
                for run in range(args.runs):
                    order = ["spotkeeper", "restic"] if run % 2 == 0 else ["restic", "spotkeeper"]
                    for tool in order:
                        if tool == "spotkeeper":
                            took, restored, files = spotkeeper_run_to_ready(scratch, s3_port, password_file, image,
                                                                            f"{run}")
                            ready.append(took)
                            restore_ms.append(restored)
                            log(f"{scale} run {run + 1}: READY after {took:.2f} s (restore {restored} ms, {files} entries)")
                        else:
                            took = restic_restore(scratch, s3_port, f"{run}")
                            restic.append(took)
                            log(f"{scale} run {run + 1}: restic restore {took:.2f} s")
                results["scales"][scale] = {"ready_s": ready, "restore_ms": restore_ms, "restic_restore_s": restic}
                rows.append((scale, median_range(ready),
                             median_range([ms / 1000 if ms is not None else None for ms in restore_ms]),
                             median_range(restic)))
            finally:
                s3.terminate()
                s3.wait()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    out_dir = REPO / "bench/out"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"recovery-{datetime.date.today()}.json").write_text(json.dumps(results, indent=2))
    print(f"| recovery, median (min-max) of {args.runs} | `spotkeeper run` on an empty machine to READY=1 "
          "| of which the restore | restic restore alone |")
    print("|---|---|---|---|")
    for scale, ready, restore, restic in rows:
        print(f"| {scale} | {ready} | {restore} | {restic} |")


if __name__ == "__main__":
    main()
