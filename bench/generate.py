#!/usr/bin/env python3
"""Synthetic OpenClaw-like state directories for the benchmarks (standard library only).

    generate.py --scale small|medium|large [--seed N] DIR    make a state in DIR (absent or empty)
    generate.py --mutate [--seed N] DIR                      apply a "typical 20-minute change"

The content is deterministic for a scale and seed: the same bytes every time. Modification times
are set relative to the moment of generation (older files further back), and the mutation stamps
what it touches with the current time, so tools that compare mtimes see the change as newer.
Both commands print a JSON summary on stdout.

Layout (what an OpenClaw state directory holds, in the proportions that matter for a backup):
    openclaw.json, cron/jobs.json                         small config files
    agents/<agent>/sessions/*.jsonl                       chat transcripts, log-normal sizes (~60%)
    agents/<agent>/sessions/sessions.json                 the session index, rewritten often
    agents/<agent>/agent/{auth-profiles,models}.json      small, 0600
    memory/main.sqlite                                    WAL mode; text chunks + float32 embeddings (~30% of it)
    credentials/whatsapp/default/*.json                   hundreds of tiny key files, 0600 in a 0700 dir
    workspace/*.md, workspace/memory/*.md, notes          markdown; one UTF-8 name with a space,
                                                          one symlink, one executable script
    media/inbound/*                                       a few binaries (random bytes)
    canvas/                                               an empty directory
"""

import argparse
import array
import base64
import itertools
import json
import os
import random
import sqlite3
import sys
import time

SCALES = {
    # MiB of session text, session files, agents, MiB of DB rows (the file ends ~17% larger),
    # credential files, workspace notes, MiB of binaries, binaries.
    # Totals: small ~41 MB / ~960 files, medium ~268 MB / ~2,950 files, large ~1.5 GB / ~8,000 files.
    "small": dict(sessions_mb=24, sessions=300, agents=2, db_mb=9, creds=600, notes=40, bin_mb=4, bins=4),
    "medium": dict(sessions_mb=155, sessions=2000, agents=4, db_mb=60, creds=800, notes=120, bin_mb=32, bins=6),
    "large": dict(sessions_mb=880, sessions=7000, agents=8, db_mb=350, creds=800, notes=180, bin_mb=140, bins=10),
}
AGENTS = ["main", "ops", "research", "family", "coding", "travel", "finance", "health"]
EMBEDDING_DIMS = 384  # 1,536 bytes of float32 per chunk
MIB = 1 << 20
DAY = 86400
EPOCH = 1772200800  # 2026-02-27T14:00:00Z: "now" inside the generated content


class Text:
    """Chat-like text from a Zipf-distributed vocabulary of made-up words: zstd -3 gets about 3x on it
    (real prose gets 3-4x), never the 100x of repeated filler. Generated in fresh blocks, never reused."""

    LETTERS = "etaoinshrdlucmfwypvbgkjqxz"
    FREQ = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8,
            2.4, 2.2, 2.4, 2.0, 1.9, 1.0, 1.5, 2.0, 0.8, 0.15, 0.1, 0.15, 0.07]

    def __init__(self, rng):
        self.rng = rng
        vocab = set()
        while len(vocab) < 20000:
            n = max(1, min(14, int(rng.lognormvariate(1.5, 0.45))))
            vocab.add("".join(rng.choices(self.LETTERS, self.FREQ, k=n)))
        self.vocab = sorted(vocab)
        rng.shuffle(self.vocab)
        self.cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(self.vocab))))
        self.buf, self.pos = "", 0

    def _refill(self):
        words = self.rng.choices(self.vocab, cum_weights=self.cum, k=200_000)
        i = 0
        while i < len(words):  # sentences of 4-24 words, sometimes a paragraph break
            words[i] = words[i].capitalize()
            i += self.rng.randint(4, 24)
            words[i - 1 if i <= len(words) else -1] += "." if self.rng.random() < 0.9 else ".\n\n"
        self.buf, self.pos = " ".join(words), 0

    def take(self, n):
        """About n characters of text (cut at a word boundary)."""
        n = max(1, int(n))
        out = []
        while n > 0:
            if self.pos >= len(self.buf):
                self._refill()
            end = self.buf.find(" ", self.pos + n)
            end = len(self.buf) if end < 0 else end
            out.append(self.buf[self.pos:end])
            n -= end - self.pos
            self.pos = end + 1
        return " ".join(out)


class Gen:
    """Writes files under root: deterministic content, mtimes relative to the real time."""

    def __init__(self, root, seed, clock=EPOCH):
        self.root = root
        self.clock = clock  # the time written inside files: fixed, so the bytes never depend on the day
        self.rng = random.Random(seed)
        self.text = Text(random.Random(f"{seed}-text"))
        self.now = int(time.time())  # only for mtimes
        self.files = 0
        self.bytes = 0

    def path(self, rel):
        return os.path.join(self.root, rel)

    def write(self, rel, data, mode=0o644, age=None, append=False):
        p = self.path(rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        existed = os.path.exists(p)
        with open(p, "ab" if append else "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(p, mode)
        self.stamp(rel, age)
        self.files += 0 if existed else 1
        self.bytes += len(data.encode() if isinstance(data, str) else data)

    def stamp(self, rel, age=None):
        """mtime = now - age seconds (a random age up to 30 days when not given)."""
        age = self.rng.randint(1200, 30 * DAY) if age is None else age
        t = self.now - age
        os.utime(self.path(rel), (t, t), follow_symlinks=False)

    def hexid(self, bits=32):
        return f"{self.rng.getrandbits(bits):0{bits // 4}x}"

    def uuid(self):
        h = self.hexid(128)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def b64(self, n):
        return base64.b64encode(self.rng.randbytes(n)).decode()

    def iso(self, t):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{t % 997:03d}Z"


def lognormal_sizes(rng, count, total, sigma):
    raw = [rng.lognormvariate(0, sigma) for _ in range(count)]
    scale = total / sum(raw)
    return [max(200, int(r * scale)) for r in raw]


# ---------------------------------------------------------------- sessions


def message_line(g, parent, t):
    """One JSONL line of a transcript: a user message, an assistant reply or a tool result."""
    kind = g.rng.choices(["user", "assistant", "toolResult"], [3, 5, 2])[0]
    mid = g.hexid()
    if kind == "user":
        msg = {"role": "user", "content": [{"type": "text", "text": g.text.take(g.rng.lognormvariate(5.0, 0.9))}],
               "timestamp": t * 1000}
    elif kind == "assistant":
        tin, tout = g.rng.randint(800, 90000), g.rng.randint(20, 4000)
        msg = {"role": "assistant", "content": [{"type": "text", "text": g.text.take(g.rng.lognormvariate(6.3, 0.9))}],
               "api": "anthropic-messages", "provider": "anthropic", "model": "claude-sonnet-4-5",
               "usage": {"input": tin, "output": tout, "cacheRead": g.rng.randint(0, tin), "cacheWrite": 0,
                         "totalTokens": tin + tout},
               "stopReason": "stop", "timestamp": t * 1000}
    else:
        msg = {"role": "toolResult", "toolCallId": "toolu_" + g.hexid(96),
               "toolName": g.rng.choice(["exec", "read", "web_fetch", "memory_search", "browser"]),
               "content": [{"type": "text", "text": g.text.take(g.rng.lognormvariate(6.8, 1.1))}],
               "isError": g.rng.random() < 0.03, "timestamp": t * 1000}
    line = {"type": "message", "id": mid, "parentId": parent, "timestamp": g.iso(t), "message": msg}
    return mid, json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"


def session_text(g, size, t):
    """Transcript lines totalling about `size` bytes, starting at time t."""
    lines, n, parent = [], 0, None
    while n < size:
        t += g.rng.randint(2, 400)
        parent, line = message_line(g, parent, t)
        lines.append(line)
        n += len(line)
    return "".join(lines)


def make_sessions(g, agents, count, total):
    index = {a: {} for a in agents}
    sizes = lognormal_sizes(g.rng, count, total, 1.3)
    for i, size in enumerate(sizes):
        agent = agents[0] if g.rng.random() < 0.5 else g.rng.choice(agents)
        sid = g.uuid()
        age = int(60 * DAY * (1 - i / count)) + g.rng.randint(1200, 3600)  # later sessions are newer
        start = g.clock - age - 3600
        head = json.dumps({"type": "session", "version": 3, "id": sid, "timestamp": g.iso(start),
                           "cwd": "/home/node/.openclaw/workspace"}, separators=(",", ":")) + "\n"
        rel = f"agents/{agent}/sessions/{sid}.jsonl"
        g.write(rel, head + session_text(g, size, start), age=age)
        index[agent][f"agent:{agent}:{g.hexid()}"] = {"sessionId": sid, "updatedAt": (g.clock - age) * 1000,
                                                     "chatType": g.rng.choice(["direct", "group"]),
                                                     "channel": g.rng.choice(["whatsapp", "telegram", "webchat"])}
    for agent in agents:
        write_index(g, agent, index[agent], age=1200)


def write_index(g, agent, entries, age):
    g.write(f"agents/{agent}/sessions/sessions.json", json.dumps(entries, indent=2, sort_keys=True), age=age)


# ---------------------------------------------------------------- the SQLite memory index

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (path TEXT PRIMARY KEY, source TEXT NOT NULL, hash TEXT NOT NULL,
                    mtime INTEGER NOT NULL, size INTEGER NOT NULL);
CREATE TABLE chunks (id TEXT PRIMARY KEY, path TEXT NOT NULL, source TEXT NOT NULL,
                     start_line INTEGER NOT NULL, end_line INTEGER NOT NULL, hash TEXT NOT NULL,
                     model TEXT NOT NULL, text TEXT NOT NULL, embedding BLOB NOT NULL,
                     updated_at INTEGER NOT NULL);
CREATE INDEX idx_chunks_path ON chunks(path);
"""


def embedding(rng):
    return array.array("f", (rng.gauss(0.0, 0.05) for _ in range(EMBEDDING_DIMS))).tobytes()


def chunk_row(g, path, line):
    text = g.text.take(g.rng.lognormvariate(8.0, 0.35))  # ~3.2 KB of text beside 1.5 KB of embedding
    return (g.hexid(64), path, "sessions", line, line + g.rng.randint(5, 60), g.hexid(128),
            "text-embedding-3-small", text, embedding(g.rng), g.clock - g.rng.randint(1200, 30 * DAY))


def make_db(g, target_bytes):
    rel = "memory/main.sqlite"
    os.makedirs(g.path("memory"), exist_ok=True)
    db = sqlite3.connect(g.path(rel))
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    with db:
        db.execute("INSERT INTO meta VALUES ('schema_version', '3'), ('provider', 'openai')")
        rows = target_bytes // 5000
        paths = [f"sessions/{g.uuid()}.jsonl" for _ in range(max(1, rows // 20))]
        for p in paths:
            db.execute("INSERT INTO files VALUES (?, 'sessions', ?, ?, ?)",
                       (p, g.hexid(128), g.clock - g.rng.randint(0, 30 * DAY), g.rng.randint(1000, 10**6)))
        db.executemany("INSERT INTO chunks VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (chunk_row(g, g.rng.choice(paths), i) for i in range(rows)))
    db.close()  # checkpoints the WAL into the database file, which stays in WAL mode
    g.files += 1
    g.bytes += os.path.getsize(g.path(rel))
    g.stamp(rel, age=1200)


# ---------------------------------------------------------------- small files


def make_credentials(g, count):
    d = "credentials/whatsapp/default"
    g.write(f"{d}/creds.json", json.dumps({
        "noiseKey": {"private": g.b64(32), "public": g.b64(32)},
        "signedIdentityKey": {"private": g.b64(32), "public": g.b64(32)},
        "signedPreKey": {"keyPair": {"private": g.b64(32), "public": g.b64(32)}, "signature": g.b64(64), "keyId": 1},
        "registrationId": g.rng.randint(1, 16383), "advSecretKey": g.b64(32),
        "me": {"id": f"{g.rng.randint(10**10, 10**11)}:12@s.whatsapp.net", "name": "OpenClaw"},
        "account": {"details": g.b64(120), "accountSignature": g.b64(64), "deviceSignature": g.b64(64)},
    }, indent=2), mode=0o600)
    oauth = {"anthropic": {"access": g.b64(96), "refresh": g.b64(96), "expires": (g.clock + DAY) * 1000}}
    g.write("credentials/oauth.json", json.dumps(oauth, indent=2), mode=0o600)
    for i in range(count - 2):
        kind = g.rng.choices(["pre-key", "session", "sender-key", "app-state-sync-key"], [60, 25, 10, 5])[0]
        if kind == "pre-key":
            rel, body = f"{d}/pre-key-{i + 1}.json", {"private": g.b64(32), "public": g.b64(32)}
        elif kind == "session":
            rel = f"{d}/session-{g.rng.randint(10**10, 10**11)}.{i}.json"
            body = {"_sessions": {g.b64(33): {"registrationId": g.rng.randint(1, 16383), "currentRatchet": {
                "ephemeralKeyPair": {"pubKey": g.b64(33), "privKey": g.b64(32)}, "rootKey": g.b64(32),
                "lastRemoteEphemeralKey": g.b64(33), "previousCounter": g.rng.randint(0, 50)},
                "chains": {g.b64(33): {"chainKey": {"counter": g.rng.randint(0, 500), "key": g.b64(32)},
                                       "messageKeys": {str(k): g.b64(32) for k in range(g.rng.randint(0, 12))}}}}},
                "version": "v1"}
        elif kind == "sender-key":
            rel = f"{d}/sender-key-{g.rng.randint(10**17, 10**18)}@g.us--{g.rng.randint(10**10, 10**11)}--0.json"
            body = [{"senderKeyId": g.rng.randint(0, 2**31), "senderChainKey": {"iteration": g.rng.randint(0, 900),
                     "seed": g.b64(32)}, "senderSigningKey": {"public": g.b64(33)}, "senderMessageKeys": []}]
        else:
            rel, body = f"{d}/app-state-sync-key-{base64.urlsafe_b64encode(g.rng.randbytes(6)).decode()}.json", {
                "keyData": g.b64(32), "fingerprint": {"rawId": g.rng.randint(0, 2**31), "currentIndex": 1,
                                                      "deviceIndexes": [0, 1]}, "timestamp": str(g.clock * 1000)}
        g.write(rel, json.dumps(body, separators=(",", ":")), mode=0o600)
    for d in ("credentials", "credentials/whatsapp", "credentials/whatsapp/default"):
        os.chmod(g.path(d), 0o700)


def markdown(g, size):
    parts, n = [], 0
    while n < size:
        if g.rng.random() < 0.2:
            s = f"\n## {g.text.take(30).rstrip('.').title()}\n\n"
        elif g.rng.random() < 0.5:
            s = "".join(f"- {g.text.take(g.rng.randint(30, 160))}\n" for _ in range(g.rng.randint(2, 8)))
        else:
            s = g.text.take(g.rng.randint(200, 900)) + "\n\n"
        parts.append(s)
        n += len(s)
    return "".join(parts)


def make_workspace(g, notes):
    for name in ("AGENTS", "SOUL", "TOOLS", "USER", "IDENTITY", "HEARTBEAT", "MEMORY"):
        g.write(f"workspace/{name}.md", f"# {name}\n\n" + markdown(g, g.rng.randint(800, 12000)))
    days = [time.strftime("%Y-%m-%d", time.gmtime(g.clock - k * DAY)) for k in range(notes // 2, 0, -1)]
    for k, day in enumerate(days):
        g.write(f"workspace/memory/{day}.md", f"# {day}\n\n" + markdown(g, g.rng.lognormvariate(8.3, 0.8)),
                age=(len(days) - k) * DAY)
    for i in range(notes - len(days)):
        name = g.text.take(12).split()[0].lower()
        g.write(f"workspace/notes/{name}-{i}.md", markdown(g, g.rng.lognormvariate(8.5, 1.0)))
    g.write("workspace/notes/Réunion équipe.md", markdown(g, 3000))
    script = '#!/bin/sh\nset -eu\ntar -C "$HOME/.openclaw/workspace" -czf - notes\n'
    g.write("workspace/scripts/export-notes.sh", script, mode=0o755)
    os.symlink(f"memory/{days[-1]}.md", g.path("workspace/TODAY.md"))
    g.stamp("workspace/TODAY.md", age=DAY)


def make_config(g, agents):
    g.write("openclaw.json", json.dumps({
        "gateway": {"port": 18789, "bind": "loopback", "auth": {"mode": "token"}},
        "agents": {"defaults": {"model": {"primary": "anthropic/claude-sonnet-4-5"},
                                "workspace": "~/.openclaw/workspace"},
                   "list": [{"id": a, "name": a.title()} for a in agents]},
        "channels": {"whatsapp": {"allowFrom": [f"+3361{g.rng.randint(10**6, 10**7)}" for _ in range(4)]},
                     "telegram": {"enabled": True}},
        "memory": {"provider": "openai", "model": "text-embedding-3-small"},
    }, indent=2))
    g.write("cron/jobs.json", json.dumps([{"id": g.uuid(), "schedule": "0 7 * * *", "agent": "main",
                                           "prompt": g.text.take(120)}], indent=2))
    for a in agents:
        g.write(f"agents/{a}/agent/auth-profiles.json", json.dumps({"anthropic:default": {"type": "api_key",
                "key": "sk-ant-" + g.b64(60)}}, indent=2), mode=0o600)
        g.write(f"agents/{a}/agent/models.json", json.dumps({"providers": {"anthropic": {"models": [
            "claude-sonnet-4-5", "claude-haiku-4-5"]}}}, indent=2))


def make_binaries(g, count, total):
    for size in lognormal_sizes(g.rng, count, total, 0.8):
        ext = g.rng.choice(["jpg", "ogg", "pdf", "mp4"])
        g.write(f"media/inbound/{g.uuid()}.{ext}", g.rng.randbytes(size))


def generate(root, scale, seed):
    p = SCALES[scale]
    if os.path.exists(root) and os.listdir(root):
        sys.exit(f"generate.py: {root} is not empty")
    os.makedirs(root, exist_ok=True)
    g = Gen(root, seed)
    agents = AGENTS[: p["agents"]]
    make_config(g, agents)
    make_credentials(g, p["creds"])
    make_workspace(g, p["notes"])
    make_binaries(g, p["bins"], p["bin_mb"] * MIB)
    make_db(g, p["db_mb"] * MIB)
    make_sessions(g, agents, p["sessions"], p["sessions_mb"] * MIB)
    os.makedirs(g.path("canvas"))
    return {"scale": scale, "seed": seed, "files": g.files, "bytes": g.bytes}


# ---------------------------------------------------------------- the 20-minute change


def listing(root, sub, suffix):
    d = os.path.join(root, sub)
    return sorted(os.path.join(sub, n) for n in os.listdir(d) if n.endswith(suffix)) if os.path.isdir(d) else []


def mutate(root, seed):
    """Appends to a few sessions, one new session, rewrites of small files (session index,
    credentials, today's note), SQLite inserts and updates, and two deletions."""
    g = Gen(root, f"{seed}-mutate", clock=EPOCH + 1200)
    changed = lambda rel: g.stamp(rel, age=0)  # noqa: E731
    summary = {"appended": [], "rewritten": [], "created": [], "deleted": [], "sqlite": {}}
    sessions = listing(root, "agents/main/sessions", ".jsonl")
    for rel in g.rng.sample(sessions[-40:], min(5, len(sessions))):
        g.write(rel, session_text(g, g.rng.randint(5_000, 60_000), g.clock - 1200), append=True)
        changed(rel)
        summary["appended"].append(rel)
    sid = g.uuid()
    rel = f"agents/main/sessions/{sid}.jsonl"
    g.write(rel, session_text(g, 20_000, g.clock - 900), age=0)
    summary["created"].append(rel)
    index_rel = "agents/main/sessions/sessions.json"
    with open(g.path(index_rel)) as f:
        index = json.load(f)
    index[f"agent:main:{g.hexid()}"] = {"sessionId": sid, "updatedAt": g.clock * 1000, "chatType": "direct",
                                         "channel": "whatsapp"}
    write_index(g, "main", index, age=0)
    summary["rewritten"].append(index_rel)
    creds = listing(root, "credentials/whatsapp/default", ".json")
    for rel in ["credentials/whatsapp/default/creds.json"] + g.rng.sample([c for c in creds if "/session-" in c], 2):
        with open(g.path(rel)) as f:
            body = json.load(f)
        g.write(rel, json.dumps(rekey(g, body), separators=(",", ":")), mode=0o600, age=0)  # same size, new keys
        summary["rewritten"].append(rel)
    notes = listing(root, "workspace/memory", ".md")
    g.write(notes[-1], markdown(g, 1500), append=True)
    changed(notes[-1])
    summary["rewritten"].append(notes[-1])
    summary["sqlite"] = mutate_db(g)
    for rel in (g.rng.choice([c for c in creds if "/pre-key-" in c]), sessions[g.rng.randint(0, len(sessions) // 4)]):
        os.remove(g.path(rel))
        summary["deleted"].append(rel)
    return summary


def rekey(g, v):
    """The same JSON with every key-like string (base64, 40+ chars) replaced by a new one of the same length."""
    if isinstance(v, dict):
        return {k: rekey(g, x) for k, x in v.items()}
    if isinstance(v, list):
        return [rekey(g, x) for x in v]
    if isinstance(v, str) and len(v) >= 40:
        return g.b64(len(v))[: len(v)]
    return v


def mutate_db(g):
    rel = "memory/main.sqlite"
    db = sqlite3.connect(g.path(rel))
    ids = [r[0] for r in db.execute("SELECT id FROM chunks ORDER BY id")]
    paths = [r[0] for r in db.execute("SELECT path FROM files ORDER BY path")]
    with db:
        new = [chunk_row(g, g.rng.choice(paths), i) for i in range(40)]
        db.executemany("INSERT INTO chunks VALUES (?,?,?,?,?,?,?,?,?,?)", new)
        upd = g.rng.sample(ids, min(25, len(ids)))
        db.executemany("UPDATE chunks SET text = ?, embedding = ?, updated_at = ? WHERE id = ?",
                       ((g.text.take(3000), embedding(g.rng), g.clock, i) for i in upd))
        db.execute("UPDATE files SET mtime = ? WHERE path = ?", (g.clock, paths[0]))
    db.close()
    g.stamp(rel, age=0)
    return {"inserted": len(new), "updated": len(upd)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--scale", choices=sorted(SCALES))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mutate", action="store_true", help="apply the 20-minute change to an existing state")
    a = ap.parse_args()
    if a.mutate == bool(a.scale):
        ap.error("give exactly one of --scale or --mutate")
    t = time.monotonic()
    out = mutate(a.dir, a.seed) if a.mutate else generate(a.dir, a.scale, a.seed)
    out["seconds"] = round(time.monotonic() - t, 2)
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
