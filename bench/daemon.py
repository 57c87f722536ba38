#!/usr/bin/env python3
"""Daemon figures for docs/performance.md: the freeze window of a snapshot of a synthetic state
after a typical 20-minute change, and the daemon's RSS and CPU while idle.

Runs the release binary against a local S3 (examples/demo-s3) with the fake OpenClaw container
(testing/build-fake-image.sh), Spot, metrics and secrets off. Prints a Markdown table and writes
bench/out/daemon-<date>.json. No assertion: figures only.

    bench/daemon.py [--scale medium] [--runs 3] [--idle-seconds 60]
"""
import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("SPOTKEEPER_BIN", REPO / "target/release/spotkeeper"))
S3 = REPO / "target/release/examples/demo-s3"
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="testsecret", AWS_REGION="us-east-1",
           AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true")


def unit_environment():
    """The Environment= lines of the shipped unit (GLIBC_TUNABLES): the daemon runs as deployed."""
    env = {}
    for line in (REPO / "systemd/spotkeeper.service").read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line[len("Environment="):].strip().strip('"').partition("=")
            env[key] = value
    return env


DAEMON_ENV = dict(ENV, **unit_environment())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(condition, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def spotkeeper(config, *args):
    out = subprocess.run([str(BIN), "--config", str(config), *args], env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"spotkeeper {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def proc_stat(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss_kib = next(int(l.split()[1]) for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return cpu, rss_kib


def anon_by_kind(pid):
    """Anonymous RSS (KiB) of `pid` by what holds it, from /proc/PID/smaps: glibc's main arena
    (`[heap]`), its other arenas (64 MiB reservations), thread stacks (2 MiB mappings behind a
    guard page), and the rest: jemalloc's heap (the daemon's allocator since 2026-12-07, whose
    mappings carry no name), the C libraries' allocations above glibc's mmap threshold, the
    runtime's own maps."""
    maps = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            maps.append({"size": (end - start) // 1024, "perms": head[1], "name": head[5] if len(head) > 5 else "",
                         "anon": 0})
        elif head and head[0] == "Anonymous:":
            maps[-1]["anon"] = int(head[1])
    kinds = {"glibc main arena": 0, "glibc other arenas": 0, "thread stacks": 0, "main stack": 0,
             "jemalloc and other": 0}
    for i, m in enumerate(maps):
        if not m["anon"]:
            continue
        after_guard = i > 0 and maps[i - 1]["perms"].startswith("---") and maps[i - 1]["size"] == 4
        arena_part = i + 1 < len(maps) and maps[i + 1]["perms"].startswith("---") and \
            (m["size"] + maps[i + 1]["size"]) % 65536 == 0
        if m["name"] == "[heap]":
            kinds["glibc main arena"] += m["anon"]
        elif m["name"] == "[stack]":
            kinds["main stack"] += m["anon"]
        elif m["name"]:
            kinds["jemalloc and other"] += m["anon"]
        elif arena_part or m["size"] == 65536:
            kinds["glibc other arenas"] += m["anon"]
        elif after_guard:
            kinds["thread stacks"] += m["anon"]
        else:
            kinds["jemalloc and other"] += m["anon"]
    return kinds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", default="medium")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-seconds", type=int, default=60)
    parser.add_argument("--format2", action="store_true", help="accepted for old command lines: format 2 is the only format written")
    args = parser.parse_args()
    image = subprocess.run([str(REPO / "testing/build-fake-image.sh")], capture_output=True, text=True, check=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="spotkeeper-daemon-bench."))
    state = work / "state"
    subprocess.run([sys.executable, str(REPO / "bench/generate.py"), "--scale", args.scale, str(state)], check=True,
                   stdout=subprocess.DEVNULL)
    s3_port, app_port = free_port(), free_port()
    s3 = subprocess.Popen([str(S3), str(s3_port), str(work / "s3"), "bench-bucket"], stderr=subprocess.DEVNULL)
    config = work / "spotkeeper.toml"
    container = f"spotkeeper-bench-{os.getpid()}"
    password = work / "repository-password"
    password.write_text("spotkeeper-bench\n")
    password.chmod(0o600)
    repository = f'[repository]\npassword_file = "{password}"\n'
    config.write_text(f"""[state]
dir = "{state}"
work_dir = "{work / 'spotkeeper'}"
[s3]
bucket = "bench-bucket"
prefix = "daemon"
endpoint = "http://127.0.0.1:{s3_port}"
[snapshot]
interval = "1h"
[container]
name = "{container}"
image = "{image}"
ports = ["127.0.0.1:{app_port}:18789"]
health_url = "http://127.0.0.1:{app_port}/healthz"
log_driver = "json-file"
stop_timeout = "10s"
[container.environment]
WRITE_INTERVAL_MS = "200"
[daemon]
socket = "{work / 'control.sock'}"
[spot]
enabled = false
[metrics]
enabled = false
[verify]
daily = false
{repository}""")
    log = open(work / "daemon.log", "w")
    daemon = subprocess.Popen([str(BIN), "--config", str(config), "run"], env=DAEMON_ENV, stderr=log,
                              stdout=subprocess.DEVNULL)
    results = {"scale": args.scale, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "snapshots": [],
               "unit_environment": unit_environment()}
    try:
        wait(lambda: "mirror warmed up" in (work / "daemon.log").read_text(), 300, "the daemon to start")
        first = json.loads(spotkeeper(config, "snapshot", "--json"))
        results["first"] = first
        for run in range(args.runs):
            subprocess.run([sys.executable, str(REPO / "bench/generate.py"), "--mutate", "--seed", str(run + 2), str(state)],
                           check=True, stdout=subprocess.DEVNULL)
            results["snapshots"].append(json.loads(spotkeeper(config, "snapshot", "--json")))
        time.sleep(5)  # let the last snapshot's buffers go before measuring idle
        cpu0, _ = proc_stat(daemon.pid)
        time.sleep(args.idle_seconds)
        cpu1, rss = proc_stat(daemon.pid)
        status = {l.split(":")[0]: l.split()[1] for l in Path(f"/proc/{daemon.pid}/status").read_text().splitlines()
                  if l.startswith(("RssAnon:", "RssFile:", "Threads:"))}
        results["idle"] = {"seconds": args.idle_seconds, "cpu_seconds": round(cpu1 - cpu0, 3), "rss_kib": rss,
                           # heap and stacks apart from the binary's own pages
                           "rss_anon_kib": int(status["RssAnon"]), "rss_file_kib": int(status["RssFile"]),
                           "threads": int(status["Threads"]), "anon_by_kind_kib": anon_by_kind(daemon.pid)}
    finally:
        daemon.terminate()
        daemon.wait(timeout=120)
        s3.terminate()
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
    freezes = [s["freeze_ms"] for s in results["snapshots"]]
    durations = [s["duration_ms"] for s in results["snapshots"]]
    out_dir = REPO / "bench/out"
    out_dir.mkdir(parents=True, exist_ok=True)
    results["format"] = 2
    suffix = "-format2"
    (out_dir / f"daemon-{datetime.date.today()}{suffix}.json").write_text(json.dumps(results, indent=2))
    print(f"| daemon figure ({args.scale}, format {results['format']}) | value |")
    print("|---|---|")
    print(f"| first snapshot through the daemon (mirror warmed) | {first['duration_ms']} ms, freeze {first['freeze_ms']} ms |")
    print(f"| freeze window after a 20-minute change, median (min-max) of {args.runs} | {statistics.median(freezes)} ms ({min(freezes)}-{max(freezes)}) |")
    print(f"| snapshot after a 20-minute change, median (min-max) | {statistics.median(durations)} ms ({min(durations)}-{max(durations)}) |")
    print(f"| S3 requests per snapshot | {results['snapshots'][-1]['requests']} |")
    idle = results["idle"]
    print(f"| RSS {5 + args.idle_seconds} s after the last tick (unit's environment) | {idle['rss_kib'] / 1024:.1f} MiB "
          f"(heap and stacks {idle['rss_anon_kib'] / 1024:.1f} MiB, binary {idle['rss_file_kib'] / 1024:.1f} MiB, "
          f"{idle['threads']} threads) |")
    kinds = ", ".join(f"{kind} {kib / 1024:.1f}" for kind, kib in idle["anon_by_kind_kib"].items())
    print(f"| of which heap and stacks, MiB | {kinds} |")
    print(f"| idle CPU over {args.idle_seconds} s | {results['idle']['cpu_seconds']} s |")


if __name__ == "__main__":
    main()
