#!/usr/bin/env python3
"""spotkeeper next to the tools people use today, against one local S3 server (standard library only).

For each scale: generate a synthetic OpenClaw state (bench/generate.py), then in every run, with the
tools in a rotating order: each tool's first backup, the "20-minute change", each tool's backup after
it, each tool's restore, and a check of every restore against the state. Wall time, client CPU and
peak RSS come from wait4() on the tool's process (its whole process tree); bytes stored from the S3
server's directory; S3 requests from one extra counting pass through a small HTTP-counting proxy
(that pass is also the warm-up and its times are not reported).

Prints a Markdown table on stdout and writes bench/out/results-<date>.json. Run it through
bench/run.sh (`make bench`), which installs the tools first. See docs/performance.md.
"""

import argparse
import collections
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import stat
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BUCKET = "bench"
OPS = ("backup", "backup2", "restore")
OP_TITLES = {"backup": "first backup", "backup2": "after the change", "restore": "restore"}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "testsecret",
               "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
ALL_KEPT = ("modes", "mtimes", "symlinks", "empty dirs")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- running and measuring a command


def measure(cmd, env, logfile, cwd=None, stdout_path=None):
    """Run cmd to completion; wall time, and CPU and peak RSS of its process tree from wait4()."""
    with open(logfile, "ab") as err, open(stdout_path or os.devnull, "wb") as out:
        err.write(f"\n$ {shlex.join(cmd)}\n".encode())
        err.flush()
        start = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"exit": p.returncode, "wall_s": round(wall, 4), "cpu_s": round(ru.ru_utime + ru.ru_stime, 4),
            "cpu_user_s": round(ru.ru_utime, 4), "cpu_sys_s": round(ru.ru_stime, 4),
            "peak_rss_mb": round(ru.ru_maxrss / 1024, 1)}


def output(cmd, env=None):
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        return (r.stdout.strip() or r.stderr.strip()).splitlines()[0] if r.returncode == 0 else None
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------- the S3 server and the counting proxy


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3(binary, root, logfile):
    port = free_port()
    env = dict(os.environ, **CREDENTIALS)
    proc = subprocess.Popen([binary, str(port), root, BUCKET], env=env, stdin=subprocess.DEVNULL,
                            stdout=open(logfile, "ab"), stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"the S3 server {binary} did not start (see {logfile})")


class RequestParser:
    """Counts HTTP/1.1 requests in a client-to-server byte stream: heads, Content-Length bodies and
    chunked bodies are followed; anything unexpected stops the counting for that connection."""

    def __init__(self, on_request):
        self.on_request = on_request
        self.state, self.after, self.left, self.buf, self.broken = "head", "head", 0, b"", False

    def feed(self, data):
        if self.broken:
            return
        data, self.buf, i = (self.buf + data if self.buf else data), b"", 0
        while i < len(data):
            if self.state == "body":
                n = min(self.left, len(data) - i)
                self.left, i = self.left - n, i + n
                if not self.left:
                    self.state = self.after
                continue
            end = data.find(b"\r\n\r\n" if self.state == "head" else b"\r\n", i)
            if end < 0:
                self.buf = data[i:]
                self.broken = len(self.buf) > 65536
                return
            chunk, i = data[i:end], end + (4 if self.state == "head" else 2)
            try:
                self._step(chunk)
            except ValueError:
                self.broken = True
                return

    def _step(self, chunk):
        if self.state == "head":
            lines = chunk.decode("latin-1").split("\r\n")
            method = lines[0].split(" ", 1)[0]
            if not method.isalpha():
                raise ValueError(lines[0])
            self.on_request(method)
            headers = dict((k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:]))
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.state = "size"
            elif int(headers.get("content-length", 0)):
                self.state, self.after, self.left = "body", "head", int(headers["content-length"])
        elif self.state == "size":
            size = int(chunk.split(b";")[0], 16)
            self.state, self.after, self.left = ("body", "size", size + 2) if size else ("trailer", "head", 0)
        elif self.state == "trailer" and not chunk:
            self.state = "head"


class CountingProxy:
    """127.0.0.1:port -> the S3 server, counting requests by method. Only used in the counting pass."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.counts = collections.Counter()
        self.unparsed = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def take(self):
        """Requests counted since the last take(): ({method: n}, connections whose parsing failed)."""
        with self.lock:
            counts, unparsed = dict(self.counts), self.unparsed
            self.counts.clear()
            self.unparsed = 0
        return counts, unparsed

    def _count(self, method):
        with self.lock:
            self.counts[method] += 1

    def _accept(self):
        while True:
            client, _ = self.server.accept()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            parser = RequestParser(self._count)
            threading.Thread(target=self._pipe, args=(client, upstream, parser), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src, dst, parser):
        try:
            while data := src.recv(1 << 17):
                if parser:
                    parser.feed(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if parser and parser.broken:
                with self.lock:
                    self.unparsed += 1
            for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                try:
                    s.shutdown(how)
                except OSError:
                    pass


# ---------------------------------------------------------------- the tools


class Ctx:
    """One run of one scale: where the state is, which endpoint to use, a tag for fresh prefixes."""

    def __init__(self, work, state, endpoint, tag, env, aws):
        self.work, self.state, self.endpoint, self.tag, self.env, self.aws = work, state, endpoint, tag, env, aws

    def s3url(self, prefix):
        return f"s3://{BUCKET}/{prefix}"


class Tool:
    key = ""  # for --tools
    name = ""
    kept = ()  # what the restore keeps besides file content (checked); the rest is not checked
    note = ""

    def prefix(self, ctx):
        return f"{self.name}-{ctx.tag}"

    def setup(self, ctx):
        pass

    def backup(self, ctx, second):
        raise NotImplementedError

    def restore(self, ctx, dest):
        raise NotImplementedError

    def env(self, ctx):
        return ctx.env


class Spotkeeper(Tool):
    """The binary as deployed: format 2 (a restic repository under repo/, [repository] password)."""
    key = name = "spotkeeper"
    kept = ALL_KEPT

    def __init__(self, binary):
        self.binary = binary

    def config(self, ctx):
        return os.path.join(ctx.work, f"spotkeeper-{ctx.tag}.toml")

    def setup(self, ctx):
        password = os.path.join(ctx.work, "spotkeeper-password")
        with open(password, "w") as f:
            f.write("spotkeeper-bench\n")
        os.chmod(password, 0o600)
        with open(self.config(ctx), "w") as f:
            f.write(f'[state]\ndir = "{ctx.state}"\nwork_dir = "{ctx.work}/spotkeeper-work-{ctx.tag}"\n'
                    f'[s3]\nbucket = "{BUCKET}"\nprefix = "{self.prefix(ctx)}"\nregion = "us-east-1"\n'
                    f'endpoint = "{ctx.endpoint}"\n[repository]\npassword_file = "{password}"\n')

    def backup(self, ctx, second):
        return [self.binary, "--config", self.config(ctx), "snapshot", "--json"]

    def restore(self, ctx, dest):
        return [self.binary, "--config", self.config(ctx), "restore", "--to", dest, "--json"]


class AwsSync(Tool):
    key, name = "aws", "aws s3 sync"
    note = "keeps content only: mtimes become the download time, modes the umask; follows the symlink"

    def prefix(self, ctx):
        return f"aws-sync-{ctx.tag}"

    def backup(self, ctx, second):
        return [ctx.aws, "s3", "sync", ctx.state, ctx.s3url(self.prefix(ctx)), "--delete", "--only-show-errors",
                "--endpoint-url", ctx.endpoint]

    def restore(self, ctx, dest):
        return [ctx.aws, "s3", "sync", ctx.s3url(self.prefix(ctx)), dest, "--only-show-errors",
                "--endpoint-url", ctx.endpoint]


class Rclone(Tool):
    key = name = "rclone"
    kept = ("mtimes",)
    note = "keeps mtimes (object metadata); not modes, the symlink (skipped) or empty dirs"

    def env(self, ctx):
        remote = {"TYPE": "s3", "PROVIDER": "Other", "ENDPOINT": ctx.endpoint, "REGION": "us-east-1",
                  "ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"], "FORCE_PATH_STYLE": "true",
                  "SECRET_ACCESS_KEY": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}
        return dict(ctx.env, RCLONE_CONFIG=os.path.join(ctx.work, "rclone.conf"),
                    **{f"RCLONE_CONFIG_BENCH_{k}": v for k, v in remote.items()})

    def setup(self, ctx):
        open(os.path.join(ctx.work, "rclone.conf"), "a").close()

    def remote(self, ctx):
        # the trailing "/" spares rclone a HEAD of the prefix, which s3s-fs answers 500 (not 404)
        # for a "folder" and rclone then retries for ~80 s; on AWS it would be a cheap 404
        return f"bench:{BUCKET}/{self.prefix(ctx)}/"

    def backup(self, ctx, second):
        return ["rclone", "sync", ctx.state, self.remote(ctx), "--transfers", "16"]

    def restore(self, ctx, dest):
        return ["rclone", "sync", self.remote(ctx), dest, "--transfers", "16"]


class Restic(Tool):
    key = name = "restic"
    kept = ALL_KEPT

    def env(self, ctx):
        return dict(ctx.env, RESTIC_PASSWORD="spotkeeper-bench",
                    RESTIC_REPOSITORY=f"s3:{ctx.endpoint}/{BUCKET}/{self.prefix(ctx)}",
                    RESTIC_CACHE_DIR=os.path.join(ctx.work, f"restic-cache-{ctx.tag}"))

    def setup(self, ctx):
        r = subprocess.run(["restic", "init"], env=self.env(ctx), capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"restic init failed: {r.stderr.strip()}")

    def backup(self, ctx, second):
        # from inside the state with ".": the snapshot holds relative paths and restores into --target
        return ["sh", "-c", 'cd "$1" && exec restic backup --quiet --host bench .', "sh", ctx.state]

    def restore(self, ctx, dest):
        return ["restic", "restore", "latest", "--target", dest, "--quiet"]


class TarZstdAws(Tool):
    key, name = "tar", "tar|zstd|aws s3 cp"
    kept = ALL_KEPT

    def prefix(self, ctx):
        return f"tar-{ctx.tag}"

    def object_url(self, ctx, n):
        return f"{ctx.s3url(self.prefix(ctx))}/state-{n}.tar.zst"

    def backup(self, ctx, second):
        aws = shlex.join([ctx.aws, "s3", "cp", "-", self.object_url(ctx, 2 if second else 1), "--only-show-errors",
                          "--endpoint-url", ctx.endpoint])
        return ["bash", "-c", f"set -o pipefail; tar -C {shlex.quote(ctx.state)} -cf - . | zstd -3 -T0 -q | {aws}"]

    def restore(self, ctx, dest):
        aws = shlex.join([ctx.aws, "s3", "cp", self.object_url(ctx, 2), "-", "--only-show-errors",
                          "--endpoint-url", ctx.endpoint])
        d = shlex.quote(dest)
        return ["bash", "-c", f"set -o pipefail; mkdir -p {d} && {aws} | zstd -d -q | tar -x -C {d}"]


# ---------------------------------------------------------------- checking a restore


def tree(root):
    """{relative path: description} of everything under root (content by SHA-256)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = {"type": "symlink", "target": os.readlink(p)}
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = {"type": "dir", "mode": stat.S_IMODE(st.st_mode)}
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                out[rel] = {"type": "file", "mode": stat.S_IMODE(st.st_mode), "mtime": int(st.st_mtime),
                            "bytes": st.st_size, "sha256": digest}
            else:
                out[rel] = {"type": "other"}
    return out


def compare(expected, actual, kept):
    """Problems of a restore: content always; modes, mtimes, symlinks and empty dirs when kept."""
    problems = []
    skip = {p for p, e in expected.items() if e["type"] == "symlink" and "symlinks" not in kept}
    for path, e in sorted(expected.items()):
        a = actual.get(path)
        if path in skip or (e["type"] == "dir" and a is None and "empty dirs" not in kept):
            continue
        if a is None or a["type"] != e["type"]:
            problems.append(f"{path}: {'missing' if a is None else a['type'] + ' instead of ' + e['type']}")
        elif e["type"] == "file" and (a["bytes"], a["sha256"]) != (e["bytes"], e["sha256"]):
            problems.append(f"{path}: content differs")
        elif e["type"] == "symlink" and a["target"] != e["target"]:
            problems.append(f"{path}: link target {a['target']!r}, expected {e['target']!r}")
        elif "modes" in kept and e["type"] != "symlink" and a["mode"] != e["mode"]:
            problems.append(f"{path}: mode {a['mode']:o}, expected {e['mode']:o}")
        elif "mtimes" in kept and e["type"] == "file" and a["mtime"] != e["mtime"]:
            problems.append(f"{path}: mtime {a['mtime']}, expected {e['mtime']}")
    problems += [f"{p}: unexpected {a['type']}" for p, a in sorted(actual.items())
                 if p not in expected and p not in skip]
    return problems


# ---------------------------------------------------------------- one scale


def stored_bytes(s3root, prefix):
    total = 0
    for dirpath, _, files in os.walk(os.path.join(s3root, BUCKET, prefix)):
        total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
    return total


def base_state(scale, seed, fresh):
    """The generated state, cached in bench/out/states/ (keyed by generate.py's hash)."""
    gen = os.path.join(HERE, "generate.py")
    with open(gen, "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()[:12]
    states = os.path.join(HERE, "out", "states")
    d = os.path.join(states, f"{scale}-seed{seed}-{key}")
    marker = d + ".json"
    if fresh or not os.path.exists(marker):
        os.makedirs(states, exist_ok=True)
        for old in os.listdir(states):  # states of an older generate.py, or this one half-written
            if old.startswith(f"{scale}-seed{seed}-"):
                p = os.path.join(states, old)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        log(f"generating the {scale} state in {d}")
        out = subprocess.run([sys.executable, gen, "--scale", scale, "--seed", str(seed), d],
                             check=True, capture_output=True, text=True).stdout
        with open(marker, "w") as f:
            f.write(out)
    with open(marker) as f:
        return d, json.load(f)


# ext4 without a journal (this bench's usual machine) skips, for every inode it allocates, each
# free inode of the group deleted less than 60 s ago (`recently_deleted` in fs/ext4/ialloc.c), and
# that scan made a tool that created files right after another's were deleted up to twice as slow
# (seen in `perf`: ext4_create -> recently_deleted). Deletions therefore happen in one place, and
# the timed operations start this long after them. A journaled ext4 or XFS never scans.
SETTLE_S = 61


def settle():
    os.sync()
    time.sleep(SETTLE_S)


def run_op(tool, ctx, op, logfile, counter):
    dest = os.path.join(ctx.work, f"restore-{tool.prefix(ctx)}")
    cmd = tool.restore(ctx, dest) if op == "restore" else tool.backup(ctx, op == "backup2")
    out_path = os.path.join(ctx.work, "stdout.json")
    os.sync()  # untimed: no tool pays for the writeback of what the previous one wrote
    if counter:
        counter.take()
    r = measure(cmd, tool.env(ctx), logfile, stdout_path=out_path)
    if counter:
        counts, unparsed = counter.take()
        r["requests"] = sum(counts.values())
        r["requests_by_method"] = counts
        if unparsed:
            r["requests_unparsed_connections"] = unparsed
    if isinstance(tool, Spotkeeper) and r["exit"] == 0:
        with open(out_path) as f:
            r["spotkeeper_json"] = json.load(f)
    return r, dest


class Bench:
    """What every pass shares: the tools, the S3 server (and the proxy), the directories."""

    def __init__(self, tools, work_root, s3root, port, proxy, env, aws, seed):
        self.tools, self.work_root, self.s3root, self.port = tools, work_root, s3root, port
        self.proxy, self.env, self.aws, self.seed = proxy, env, aws, seed


def one_pass(b, scale, base, n, results):
    """Pass 0 counts requests through the proxy (when there is one); the others are timed."""
    counter = b.proxy if n == 0 else None
    counting = counter is not None
    work = os.path.join(b.work_root, scale)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    state = os.path.join(work, "state")
    subprocess.run(["cp", "-a", base, state], check=True)
    endpoint = f"http://127.0.0.1:{counter.port if counting else b.port}"
    ctx = Ctx(work, state, endpoint, f"{scale}-{n}", b.env, b.aws)
    logfile = os.path.join(HERE, "out", f"tools-{scale}.log")
    order = b.tools[n % len(b.tools):] + b.tools[: n % len(b.tools)]
    log(f"{scale}: {'counting pass (through the proxy, warm-up)' if counting else f'run {n}'}: "
        + ", ".join(t.name for t in order))
    for t in order:
        t.setup(ctx)
    settle()  # after the previous pass's deletions (see SETTLE_S)

    def record(t, op, r):
        r["pass"] = n
        r["counting"] = counting
        results.setdefault(t.name, {}).setdefault(op, []).append(r)
        if r["exit"]:
            log(f"  {t.name} {op}: exit {r['exit']} (see {logfile})")

    for op in ("backup", "backup2"):
        if op == "backup2":
            time.sleep(1.1)  # the change is at least a second newer than every first backup
            subprocess.run([sys.executable, os.path.join(HERE, "generate.py"), "--mutate", "--seed", str(b.seed),
                            state], check=True, capture_output=True)
        for t in order:
            r, _ = run_op(t, ctx, op, logfile, counter)
            r["stored_bytes"] = stored_bytes(b.s3root, t.prefix(ctx))
            record(t, op, r)
    expected = tree(state)
    dests = []
    for t in order:
        r, dest = run_op(t, ctx, "restore", logfile, counter)
        dests.append(dest)
        if r["exit"] == 0:
            problems = compare(expected, tree(dest), t.kept)
            r["verified"] = not problems
            r["problems"] = problems[:10]
            if problems:
                log(f"  {t.name} restore does NOT match the state: {problems[:3]}")
        record(t, "restore", r)
    for dest in dests:  # only now: no restore creates files right after another's were deleted
        shutil.rmtree(dest, ignore_errors=True)
    for t in order:
        shutil.rmtree(os.path.join(b.s3root, BUCKET, t.prefix(ctx)), ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- summary


def summarize(results):
    """Per tool and operation: medians over the timed runs; None figures when a run failed or a
    restore did not match the state (the reason is in 'refused')."""
    out = {}
    for tool, ops in results.items():
        for op, runs in ops.items():
            timed = [r for r in runs if not r["counting"]]
            counted = [r for r in runs if r["counting"]]
            bad = [r for r in runs if r["exit"] or r.get("verified") is False]
            s = {"runs": len(timed)}
            if bad:
                r = bad[0]
                s["refused"] = (f"exit {r['exit']}" if r["exit"]
                                else "restore does not match: " + "; ".join(r["problems"][:3]))
            elif timed:
                walls = [r["wall_s"] for r in timed]
                s.update(wall_median_s=statistics.median(walls), wall_min_s=min(walls), wall_max_s=max(walls),
                         cpu_median_s=statistics.median(r["cpu_s"] for r in timed),
                         peak_rss_mb=max(r["peak_rss_mb"] for r in timed))
            if counted and "requests" in counted[0]:
                s["requests"] = counted[0]["requests"]
            if "stored_bytes" in runs[-1]:
                s["stored_bytes"] = runs[-1]["stored_bytes"]
            sk = [r["spotkeeper_json"] for r in timed if "spotkeeper_json" in r]
            if sk:
                s["self_reported_duration_ms_median"] = statistics.median(j.get("duration_ms", 0) for j in sk)
                for k in ("requests", "archive_bytes"):
                    if k in sk[-1]:
                        s[f"self_reported_{k}"] = sk[-1][k]
            out.setdefault(tool, {})[op] = s
    for tool, ops in out.items():
        for op, s in ops.items():
            ref = out.get("spotkeeper", {}).get(op, {}).get("wall_median_s")
            if ref and "wall_median_s" in s:
                s["ratio_to_spotkeeper"] = round(s["wall_median_s"] / ref, 2)
    return out


def mb(n):
    return f"{n / 1e6:.1f}"


def markdown(scale, info, summary, tools, runs):
    lines = [f"### {scale}: {info['files']:,} files, {mb(info['bytes'])} MB; "
             f"median (min-max) of {runs} run{'s' * (runs != 1)}", "",
             "| tool | operation | wall s | vs spotkeeper | CPU s | peak RSS MB | S3 requests | stored MB "
             "| restore check |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in tools:
        name = t.name.replace("|", "\\|")
        for op in OPS:
            s = summary.get(t.name, {}).get(op)
            if s is None:
                continue
            check = ("content, " + ", ".join(t.kept) if t.kept else "content") if op == "restore" else ""
            req = str(s.get("requests", "-"))
            stored = mb(s["stored_bytes"]) if "stored_bytes" in s else ""
            if "refused" in s:
                lines.append(f"| {name} | {OP_TITLES[op]} | **{s['refused']}** | | | | {req} | {stored} | |")
                continue
            wall = f"{s['wall_median_s']:.2f} ({s['wall_min_s']:.2f}-{s['wall_max_s']:.2f})"
            ratio = f"{s['ratio_to_spotkeeper']:.2f}x" if "ratio_to_spotkeeper" in s and t.key != "spotkeeper" else "-"
            check = f"ok: {check}" if check else ""
            lines.append(f"| {name} | {OP_TITLES[op]} | {wall} | {ratio} | {s['cpu_median_s']:.2f} | "
                         f"{s['peak_rss_mb']:.0f} | {req} | {stored} | {check} |")
    own = [f"{OP_TITLES[op]} {s['self_reported_duration_ms_median']:.0f} ms"
           + (f", {s['self_reported_requests']} requests" if "self_reported_requests" in s else "")
           for op, s in summary.get("spotkeeper", {}).items() if "self_reported_duration_ms_median" in s]
    if own:
        lines += ["", "spotkeeper's own JSON (median duration_ms): " + "; ".join(own) + "."]
    return "\n".join(lines)


# ---------------------------------------------------------------- machine, versions, idle daemon


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    osname = next((l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release")
                   if l.startswith("PRETTY_NAME")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "os": osname,
            "kernel": platform.release(), "filesystem": output(["findmnt", "-no", "FSTYPE", "--target", HERE]),
            "load_average_at_start": os.getloadavg()}


def versions(spotkeeper, aws):
    lock = open(os.path.join(REPO, "Cargo.lock")).read()
    s3s = lock.split('name = "s3s-fs"\nversion = "', 1)[1].split('"', 1)[0] if 'name = "s3s-fs"' in lock else "?"
    commit = output(["git", "-C", REPO, "describe", "--always", "--dirty"])
    return {"spotkeeper": f"{output([spotkeeper, '--version'])} ({spotkeeper}, repo at {commit})",
            "s3_server": f"s3s-fs {s3s} (target/release/examples/demo-s3)",
            "aws": output([aws, "--version"]), "rclone": output(["rclone", "version"]),
            "restic": output(["restic", "version"]), "zstd": output(["zstd", "--version"]),
            "tar": output(["tar", "--version"]), "python": platform.python_version()}


def idle(pid, seconds):
    """RSS and CPU of a running process (the daemon) over `seconds`: the idle figures of issue 5."""
    def cpu():
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss():
        return next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")) / 1024

    start, samples = cpu(), []
    for _ in range(int(seconds)):
        samples.append(rss())
        time.sleep(1)
    return {"pid": pid, "seconds": seconds, "cpu_s": round(cpu() - start, 3),
            "rss_mb_max": round(max(samples), 1), "rss_mb_median": round(statistics.median(samples), 1)}


# ---------------------------------------------------------------- main


def resolve_aws():
    """`aws`, without a pyenv shim in front of it (the shim costs every call ~0.1 s)."""
    path = shutil.which("aws")
    if path and "/shims/" in path:
        real = output(["pyenv", "which", "aws"])
        path = real or path
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default=os.environ.get("BENCH_SCALES", "small,medium"),
                    help="comma-separated: small, medium, large (default small,medium; env BENCH_SCALES)")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")),
                    help="timed runs per scale, after one counting pass (default 3; env BENCH_RUNS)")
    ap.add_argument("--tools", default="", help="comma-separated subset of: spotkeeper,aws,rclone,"
                    "restic,tar (spotkeeper writes format 2, aws is aws s3 sync, tar is tar|zstd|aws s3 cp)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-count", action="store_true", help="skip the counting pass (no S3 request counts)")
    ap.add_argument("--fresh", action="store_true", help="regenerate the states even when cached")
    ap.add_argument("--idle-pid", type=int, help="also measure this running daemon's idle RSS and CPU")
    ap.add_argument("--idle-seconds", type=int, default=60)
    ap.add_argument("--spotkeeper", default=os.environ.get("SPOTKEEPER_BIN",
                                                           os.path.join(REPO, "target/release/spotkeeper")))
    ap.add_argument("--s3-server", default=os.path.join(REPO, "target/release/examples/demo-s3"))
    ap.add_argument("--work-dir", default=os.path.join(HERE, "out", "work"),
                    help="where the state copies, the restores and the S3 server's files go (default bench/out/work)")
    a = ap.parse_args()
    scales = [s.strip() for s in a.scales.split(",") if s.strip()]
    if set(scales) - {"small", "medium", "large"}:
        ap.error(f"unknown scale in --scales {a.scales!r}: use small, medium, large")
    aws = resolve_aws()
    for need in (a.spotkeeper, a.s3_server):
        if not os.access(need, os.X_OK):
            sys.exit(f"missing {need}: make release (and the demo-s3 example) first, or use bench/run.sh")
    tools = [Spotkeeper(a.spotkeeper), AwsSync(), Rclone(), Restic(), TarZstdAws()]
    if a.tools:
        tools = [t for t in tools if t.key in a.tools.split(",")]
    missing = [b for b, used in (("aws", aws), ("rclone", "rclone"), ("restic", "restic"), ("zstd", "zstd"))
               if used is None or not shutil.which(used)]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)} (bench/run.sh installs them)")

    out_dir = os.path.join(HERE, "out")
    os.makedirs(out_dir, exist_ok=True)
    s3root = os.path.join(a.work_dir, "s3")
    shutil.rmtree(s3root, ignore_errors=True)
    os.makedirs(s3root)
    server, port = start_s3(a.s3_server, s3root, os.path.join(out_dir, "s3-server.log"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_", "RESTIC_"))}
    aws_config = os.path.join(out_dir, "aws-config")
    with open(aws_config, "w") as f:
        f.write("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env.update(CREDENTIALS, AWS_CONFIG_FILE=aws_config, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_EC2_METADATA_DISABLED="true")
    proxy = None if a.no_count else CountingProxy(port)
    bench = Bench(tools, a.work_dir, s3root, port, proxy, env, aws, a.seed)
    started = datetime.datetime.now(datetime.timezone.utc)
    report = {"date": started.isoformat(timespec="seconds"), "machine": machine(),
              "versions": versions(a.spotkeeper, aws),
              "runs": a.runs, "seed": a.seed,
              "method": {"wall": "perf_counter around the whole command, process start included",
                         "cpu": "user+sys of the process tree (wait4)",
                         "peak_rss": "largest single process of the tree (wait4 ru_maxrss); a pipeline's stages add up",
                         "requests": "HTTP requests counted by a proxy in a separate pass (not timed)",
                         "stored": "bytes under the tool's prefix in the S3 server's directory after the operation",
                         "restore_check": {t.name: ["content", *t.kept] for t in tools},
                         "not_kept": {t.name: t.note for t in tools if t.note}},
              "scales": {}}
    tables = []
    try:
        for scale in scales:
            base, info = base_state(scale, a.seed, a.fresh)
            open(os.path.join(out_dir, f"tools-{scale}.log"), "w").close()
            results = {}
            passes = ([0] if proxy else []) + list(range(1, a.runs + 1))
            for n in passes:
                one_pass(bench, scale, base, n, results)
            summary = summarize(results)
            report["scales"][scale] = {
                "state": info, "summary": summary, "raw": results,
                "daemon": {"freeze_window_ms": None, "idle": None,
                           "note": "the freeze window of a daemon snapshot is measured separately"}}
            tables.append(markdown(scale, info, summary, tools, a.runs))
            print(tables[-1] + "\n", flush=True)
        if a.idle_pid:
            log(f"measuring pid {a.idle_pid} for {a.idle_seconds} s")
            report["daemon_idle"] = idle(a.idle_pid, a.idle_seconds)
            print(f"daemon idle over {a.idle_seconds} s: {report['daemon_idle']}\n")
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(s3root, ignore_errors=True)
    stamp = started.strftime("%Y-%m-%dT%H-%MZ")
    path = os.path.join(out_dir, f"results-{stamp}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    about = "\n".join([f"- date: {report['date']}", f"- machine: {report['machine']}"]
                      + [f"- {k}: {v}" for k, v in report["versions"].items()])
    with open(os.path.join(out_dir, f"results-{stamp}.md"), "w") as f:
        f.write("\n\n".join(tables + [about]) + "\n")
    print(about)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
