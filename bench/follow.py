#!/usr/bin/env python3
"""The cost of a minute-scale window of loss (docs/performance.md, "Follow snapshots").

The release daemon runs format 2 with `[snapshot] follow` (default 60 s) on the bench's medium
state while the fake OpenClaw writes steadily, for `--minutes` (default 30). Beside it, stock
restic backs the same directory up once a minute into a local repository: the yardstick for
bytes stored. Measured:
  - the window of loss: `status`'s oldest unprotected change, sampled every second (median, worst);
  - S3 requests by price class per hour (from each snapshot's counts in the daemon's log), and the
    most any one follow snapshot made;
  - total freeze time per hour;
  - bytes stored per hour (the bucket's growth) against restic's repository's growth;
  - what a month of it costs in requests at S3's list prices.
Prints a Markdown table and writes bench/out/follow-<date>.json. Figures only, no assertion.

    bench/follow.py [--minutes 30] [--follow 60s] [--write-interval-ms 200] [--scale medium]
"""
import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import BIN, ENV, REPO, S3, free_port, spotkeeper, wait  # noqa: E402

# S3 Standard, us-east-1 list prices per 1,000 requests.
PUT_CLASS_PER_1000 = 0.005  # PUT, COPY, POST, LIST
GET_CLASS_PER_1000 = 0.0004  # GET, HEAD


def tree_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--follow", default="60s")
    parser.add_argument("--write-interval-ms", type=int, default=200)
    parser.add_argument("--scale", default="medium")
    args = parser.parse_args()
    if not shutil.which("restic"):
        raise SystemExit("needs restic (apt-get install restic) for the yardstick")
    image = subprocess.run([str(REPO / "testing/build-fake-image.sh")], capture_output=True, text=True,
                           check=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="spotkeeper-follow-bench."))
    state = work / "state"
    subprocess.run([sys.executable, str(REPO / "bench/generate.py"), "--scale", args.scale, str(state)], check=True,
                   stdout=subprocess.DEVNULL)
    s3_port, app_port = free_port(), free_port()
    s3_root = work / "s3"
    s3 = subprocess.Popen([str(S3), str(s3_port), str(s3_root), "bench-bucket"], stderr=subprocess.DEVNULL)
    password = work / "repository-password"
    password.write_text("spotkeeper-bench\n")
    password.chmod(0o600)
    container = f"spotkeeper-follow-bench-{os.getpid()}"
    config = work / "spotkeeper.toml"
    config.write_text(f"""[state]
dir = "{state}"
work_dir = "{work / 'spotkeeper'}"
[s3]
bucket = "bench-bucket"
prefix = "follow"
endpoint = "http://127.0.0.1:{s3_port}"
[repository]
password_file = "{password}"
[snapshot]
interval = "20m"
follow = "{args.follow}"
[container]
name = "{container}"
image = "{image}"
ports = ["127.0.0.1:{app_port}:18789"]
health_url = "http://127.0.0.1:{app_port}/healthz"
log_driver = "json-file"
stop_timeout = "10s"
[container.environment]
WRITE_INTERVAL_MS = "{args.write_interval_ms}"
[daemon]
socket = "{work / 'control.sock'}"
[spot]
enabled = false
[metrics]
enabled = false
[verify]
daily = false
""")
    restic_repo = work / "restic-repo"
    restic_env = dict(os.environ, RESTIC_PASSWORD="spotkeeper-bench", RESTIC_REPOSITORY=str(restic_repo))
    subprocess.run(["restic", "init"], env=restic_env, check=True, capture_output=True)
    log_path = work / "daemon.log"
    log = open(log_path, "w")
    daemon = subprocess.Popen([str(BIN), "--config", str(config), "run"], env=ENV, stderr=log,
                              stdout=subprocess.DEVNULL)
    windows, restic_runs = [], []
    stop = threading.Event()

    def restic_every_minute():
        while not stop.is_set():
            started = time.time()
            out = subprocess.run(["restic", "backup", "--quiet", "--host", "bench", str(state)], env=restic_env,
                                 capture_output=True, text=True)
            restic_runs.append({"at": started, "seconds": time.time() - started, "ok": out.returncode in (0, 3)})
            stop.wait(max(0.0, 60 - (time.time() - started)))

    try:
        wait(lambda: "mirror warmed up" in log_path.read_text(), 600, "the daemon to start")
        # The first snapshot (a full upload) is not the steady state: measure from the one after.
        wait(lambda: log_path.read_text().count("snapshot complete") >= 1, 600, "the first snapshot")
        subprocess.run(["restic", "backup", "--quiet", "--host", "bench", str(state)], env=restic_env, check=True,
                       capture_output=True)
        bucket0, restic0 = tree_bytes(s3_root), tree_bytes(restic_repo)
        snapshots0 = log_path.read_text().count("snapshot complete")
        started = time.time()
        runner = threading.Thread(target=restic_every_minute, daemon=True)
        runner.start()
        deadline = started + args.minutes * 60
        while time.time() < deadline:
            status = json.loads(spotkeeper(config, "status", "--json"))
            since = status.get("unprotected_since")
            if since:
                at = datetime.datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
                windows.append(max(0.0, time.time() - at))
            else:
                windows.append(0.0)
            time.sleep(1)
        elapsed_h = (time.time() - started) / 3600
        stop.set()
        runner.join(timeout=120)
        bucket1, restic1 = tree_bytes(s3_root), tree_bytes(restic_repo)
    finally:
        daemon.terminate()
        daemon.wait(timeout=120)
        s3.terminate()
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
    text = re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text())
    lines = [l for l in text.splitlines() if "snapshot complete" in l][snapshots0:]
    field = lambda line, key: int(re.search(rf"\b{key}=(\d+)", line).group(1))  # noqa: E731
    snaps = [{k: field(l, k) for k in ("put", "list", "get", "freeze_ms", "duration_ms")} |
             {"follow": 'reason="follow"' in l} for l in lines]
    follows = [s for s in snaps if s["follow"]]
    per_h = lambda total: total / elapsed_h  # noqa: E731
    put_h, list_h, get_h = (per_h(sum(s[k] for s in snaps)) for k in ("put", "list", "get"))
    freeze_h = per_h(sum(s["freeze_ms"] for s in snaps)) / 1000
    month_h = 30 * 24
    cost = month_h * ((put_h + list_h) * PUT_CLASS_PER_1000 + get_h * GET_CLASS_PER_1000) / 1000
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "scale": args.scale,
        "minutes": args.minutes, "follow": args.follow, "write_interval_ms": args.write_interval_ms,
        "window_s": {"median": statistics.median(windows), "worst": max(windows), "samples": len(windows)},
        "snapshots": len(snaps), "follow_snapshots": len(follows),
        "per_hour": {"put": put_h, "list": list_h, "get": get_h, "freeze_s": freeze_h,
                     "bucket_bytes": per_h(bucket1 - bucket0), "restic_bytes": per_h(restic1 - restic0)},
        "per_follow_snapshot_max": {k: max((s[k] for s in follows), default=0) for k in ("put", "list", "get")},
        "snapshot_ms_median": statistics.median([s["duration_ms"] + s["freeze_ms"] for s in snaps]) if snaps else 0,
        "restic_runs": len(restic_runs), "month_request_cost_usd": cost,
        # every counted freeze, in order: the spread says what a freeze costs beside Docker's own
        # pause and unpause (a large file copied in the freeze shows as an outlier)
        "freezes_ms": [s["freeze_ms"] for s in snaps],
    }
    out_dir = REPO / "bench/out"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"follow-{datetime.date.today()}.json").write_text(json.dumps(results, indent=2))
    print(f"| follow {args.follow}, {args.scale} state, a write every {args.write_interval_ms} ms, "
          f"{args.minutes:g} min | value |")
    print("|---|---|")
    print(f"| window of loss, median / worst ({len(windows)} samples) | "
          f"{results['window_s']['median']:.1f} s / {results['window_s']['worst']:.1f} s |")
    print(f"| snapshots (follow) | {len(snaps)} ({len(follows)}) |")
    print(f"| snapshot (freeze + upload), median | {results['snapshot_ms_median']} ms |")
    print(f"| requests per hour: PUT-class / LIST / GET | {put_h:.0f} / {list_h:.0f} / {get_h:.0f} |")
    print(f"| most requests of one follow snapshot: PUT / LIST / GET | "
          f"{results['per_follow_snapshot_max']['put']} / {results['per_follow_snapshot_max']['list']} / "
          f"{results['per_follow_snapshot_max']['get']} |")
    print(f"| total freeze per hour | {freeze_h:.2f} s |")
    if snaps:
        freezes = sorted(results["freezes_ms"])
        print(f"| freeze, median (min-max) | {statistics.median(freezes):g} ms ({freezes[0]}-{freezes[-1]}) |")
    print(f"| bucket growth per hour (restic every minute) | {results['per_hour']['bucket_bytes'] / 1e6:.1f} MB "
          f"({results['per_hour']['restic_bytes'] / 1e6:.1f} MB) |")
    print(f"| a month of requests at S3 list prices | ${cost:.2f} |")


if __name__ == "__main__":
    main()
