#!/usr/bin/env python3
"""The figures issue 22 asks for, beside restic, from the newest files `make bench` wrote in
bench/out/: results-*.json (bench/run.py), daemon-*-format2.json (bench/daemon.py),
follow-*.json (bench/follow.py) and recovery-*.json (bench/recovery.py). Prints one Markdown
table per scale and the daemon's figures; a figure whose run is missing prints "-".
Figures only: nothing here passes or fails.

    python3 bench/summary.py [--out bench/out]
"""
import argparse
import glob
import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))


def newest(out, pattern):
    paths = sorted(glob.glob(os.path.join(out, pattern)), key=os.path.getmtime)
    if not paths:
        return None, None
    with open(paths[-1]) as f:
        return paths[-1], json.load(f)


def secs(v):
    return "-" if v is None else f"{v:.2f} s"


def ratio(ours, theirs, faster=True):
    """How many times faster (or smaller) ours is than theirs."""
    if not ours or not theirs:
        return "-"
    return f"{theirs / ours:.2f}x"


def tool_op(summary, tool, op, key="wall_median_s"):
    return summary.get(tool, {}).get(op, {}).get(key)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    a = ap.parse_args()
    results_path, results = newest(a.out, "results-*.json")
    daemon_path, daemon = newest(a.out, "daemon-*-format2.json")
    follow_path, follow = newest(a.out, "follow-*.json")
    recovery_path, recovery = newest(a.out, "recovery-*.json")
    print("## Issue 22's figures, spotkeeper beside restic in the same run\n")
    for path in (results_path, daemon_path, follow_path, recovery_path):
        if path:
            print(f"- {os.path.relpath(path, os.path.dirname(HERE))}")
    print()
    scales = list((results or {}).get("scales", {}))
    for scale in scales:
        summary = results["scales"][scale]["summary"]
        info = results["scales"][scale].get("state", {})
        print(f"### {scale} ({info.get('files', '?')} files, {info.get('bytes', 0) / 1e6:.0f} MB)\n")
        print("| figure | spotkeeper | restic | restic / spotkeeper (above 1: spotkeeper better) | target |")
        print("| --- | --- | --- | --- | --- |")
        for label, op, target in (("restore of the latest snapshot", "restore", ">= 1.5x"),
                                  ("first snapshot", "backup", ">= 1.5x"),
                                  ("the CLI's snapshot after the change", "backup2", ">= 3x")):
            ours, theirs = tool_op(summary, "spotkeeper", op), tool_op(summary, "restic", op)
            print(f"| {label} | {secs(ours)} | {secs(theirs)} | {ratio(ours, theirs)} | {target} |")
        ours = tool_op(summary, "spotkeeper", "restore", "peak_rss_mb")
        theirs = tool_op(summary, "restic", "restore", "peak_rss_mb")
        show = lambda v: "-" if v is None else f"{v:.0f} MB"  # noqa: E731
        print(f"| restore peak memory | {show(ours)} | {show(theirs)} | {ratio(ours, theirs)} | <= restic's |")
        rec = (recovery or {}).get("scales", {}).get(scale)
        if rec:
            ready = [v for v in rec["ready_s"] if v is not None]
            restic = [v for v in rec["restic_restore_s"] if v is not None]
            print(f"| empty machine to READY (recovery.py) | {secs(statistics.median(ready) if ready else None)} "
                  f"| restore alone {secs(statistics.median(restic) if restic else None)} | - | - |")
        print()
    print("### The daemon (medium)\n")
    print("| figure | spotkeeper | restic | target |")
    print("| --- | --- | --- | --- |")
    medium = (results or {}).get("scales", {}).get("medium", {}).get("summary", {})
    restic_incr = tool_op(medium, "restic", "backup2")
    if daemon:
        ticks = [s["duration_ms"] for s in daemon.get("snapshots", [])]
        tick = statistics.median(ticks) / 1000 if ticks else None
        faster = ratio(tick, restic_incr)
        print(f"| the daemon's snapshot after a 20-minute change | {secs(tick)} | {secs(restic_incr)} (incremental)"
              f" ({faster}) | >= 5x |")
        idle = daemon.get("idle") or {}
        rss = idle.get("rss_kib")
        print(f"| daemon memory {idle.get('seconds', '?')} s after a tick | "
              f"{'-' if rss is None else f'{rss / 1024:.0f} MiB'} | - | <= 40 MiB |")
    else:
        print("| the daemon's figures | - (no daemon-*-format2.json) | - | - |")
    if follow:
        print(f"| freeze per hour under follow ({follow['minutes']:g} min) | "
              f"{follow['per_hour']['freeze_s']:.2f} s | - | <= 2 s |")
    else:
        print("| freeze per hour under follow | - (no follow-*.json) | - | <= 2 s |")


if __name__ == "__main__":
    main()
