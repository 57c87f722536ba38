//! fake-openclaw: a stand-in for the OpenClaw container in spotkeeper's tests.
//!
//! It behaves like OpenClaw where it matters for backups: it writes into its
//! state directory all the time (an append-only JSONL log, a SQLite database in
//! WAL mode, a whole-file rewrite through temp + rename), answers `GET /healthz`,
//! and drains for a configurable time on SIGTERM/SIGINT.
//!
//! Environment (all optional):
//!   STATE_DIR          state directory            (default /home/node/.openclaw)
//!   PORT               HTTP port on 0.0.0.0       (default 18789)
//!   DRAIN_MS           drain time after a signal  (default 500)
//!   WRITE_INTERVAL_MS  time between write cycles  (default 50)
//!   ENV_FILE           env file for /env-keys     (default $STATE_DIR/.env)
//!   CRASH_AFTER_MS     if set: exit with code 3 after that long
//!   EXTRA_DIRS         `:`-separated directories (OpenClaw's workspace and auth-profile
//!                      mounts): each write cycle also replaces `seq.txt` in each, after
//!                      the session log and the database and before `ack.txt`, so a
//!                      consistent copy of all of them has every `seq.txt` at ack or ack+1
//!
//! `GET /readyz` answers 503 until the first write cycle is durable, then 200 (as
//! OpenClaw's readiness endpoint does once it serves).
//!
//! `fake-openclaw healthcheck` instead probes GET /healthz on 127.0.0.1:PORT
//! and exits 0 or 1 (an exec-form Docker health check; the image has no shell).
//!
//! Stdout, one line each, nothing else: `started`, `ack N` after every durable
//! write cycle, `draining` when a signal arrives, `drained` just before exit 0.
//! Diagnostics go to stderr. No environment value is ever printed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

const SESSION_LOG: &str = "agents/main/sessions/current.jsonl";
const MEMORY_DB: &str = "memory/main.sqlite";
const CREDENTIALS: &str = "credentials/state.json";
const ACK_FILE: &str = "ack.txt";

struct Config {
    state_dir: PathBuf,
    port: u16,
    drain: Duration,
    interval: Duration,
    env_file: PathBuf,
    crash_after: Option<Duration>,
    boot: Duration,
    extra_dirs: Vec<PathBuf>,
}

fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name} is not a non-negative integer")),
        _ => Ok(default),
    }
}

fn config() -> Result<Config, String> {
    let state_dir = PathBuf::from(
        std::env::var("STATE_DIR")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/home/node/.openclaw".to_string()),
    );
    let port = env_u64("PORT", 18789)?;
    let port = u16::try_from(port).map_err(|_| "PORT is out of range".to_string())?;
    let env_file = std::env::var("ENV_FILE")
        .ok()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| state_dir.join(".env"));
    let crash_after = match std::env::var("CRASH_AFTER_MS") {
        Ok(v) if !v.trim().is_empty() => Some(Duration::from_millis(env_u64("CRASH_AFTER_MS", 0)?)),
        _ => None,
    };
    Ok(Config {
        state_dir,
        port,
        drain: Duration::from_millis(env_u64("DRAIN_MS", 500)?),
        interval: Duration::from_millis(env_u64("WRITE_INTERVAL_MS", 50)?.max(1)),
        env_file,
        crash_after,
        boot: Duration::from_millis(env_u64("BOOT_MS", 0)?),
        extra_dirs: std::env::var("EXTRA_DIRS")
            .unwrap_or_default()
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect(),
    })
}

/// Counters shared with the HTTP thread.
struct Stats {
    writes: AtomicU64,
    last_seq: AtomicU64,
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return healthcheck();
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-openclaw: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<(), String> {
    let cfg = config()?;

    // Signals first, so that a SIGTERM during start-up is not lost.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }

    if let Some(after) = cfg.crash_after {
        thread::spawn(move || {
            thread::sleep(after);
            eprintln!("fake-openclaw: CRASH_AFTER_MS elapsed, exiting with code 3");
            std::process::exit(3);
        });
    }

    let dir = &cfg.state_dir;
    for sub in ["agents/main/sessions", "memory", "credentials"] {
        fs::create_dir_all(dir.join(sub)).map_err(|e| format!("create {sub}: {e}"))?;
    }
    for extra in &cfg.extra_dirs {
        fs::create_dir_all(extra).map_err(|e| format!("create {}: {e}", extra.display()))?;
    }

    let conn = open_db(&dir.join(MEMORY_DB))?;
    let highest = highest_jsonl_seq(&dir.join(SESSION_LOG))?
        .max(highest_db_seq(&conn)?)
        .max(read_ack(&dir.join(ACK_FILE)));
    let stats = Arc::new(Stats {
        writes: AtomicU64::new(0),
        last_seq: AtomicU64::new(highest),
    });

    // A slow boot, as a large app has: nothing answers /healthz until it is over.
    if !cfg.boot.is_zero() {
        thread::sleep(cfg.boot);
    }
    let listener = TcpListener::bind(("0.0.0.0", cfg.port)).map_err(|e| format!("bind 0.0.0.0:{}: {e}", cfg.port))?;
    {
        let stats = Arc::clone(&stats);
        let env_file = cfg.env_file.clone();
        thread::spawn(move || serve(listener, stats, env_file));
    }

    let mut log = open_log(&dir.join(SESSION_LOG))?;
    eprintln!("fake-openclaw: next seq {}", highest + 1);
    say("started");

    let mut seq = highest;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let writes = stats.writes.load(Ordering::SeqCst) + 1;
        write_cycle(dir, &cfg.extra_dirs, &mut log, &conn, seq, writes == 1)?;
        stats.writes.store(writes, Ordering::SeqCst);
        stats.last_seq.store(seq, Ordering::SeqCst);
        say(&format!("ack {seq}"));

        next += cfg.interval;
        let now = Instant::now();
        if next < now {
            next = now; // fell behind: do not burst to catch up
        }
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= next {
                break;
            }
            thread::sleep((next - now).min(Duration::from_millis(10)));
        }
    }

    // Drain: no more writes, health still answered.
    say("draining");
    thread::sleep(cfg.drain);
    drop(log);
    conn.close().map_err(|(_, e)| format!("close sqlite: {e}"))?;
    say("drained");
    Ok(())
}

/// `fake-openclaw healthcheck`: exit 0 if GET /healthz on 127.0.0.1:PORT
/// answers 200 within 2 s, else 1. For exec-form health checks, as the
/// scratch image has no shell: Healthcheck.Test = ["CMD", "/fake-openclaw", "healthcheck"].
fn healthcheck() -> ExitCode {
    let ok = (|| -> Result<bool, String> {
        let port = u16::try_from(env_u64("PORT", 18789)?).map_err(|e| e.to_string())?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let t = Duration::from_secs(2);
        let mut s = TcpStream::connect_timeout(&addr, t).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(t)).map_err(|e| e.to_string())?;
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
        Ok(resp.starts_with(b"HTTP/1.0 200"))
    })();
    match ok {
        Ok(true) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// One stdout line, flushed at once (stdout is a pipe under Docker).
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn open_db(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| format!("journal_mode=WAL: {e}"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {mode}, not wal"));
    }
    conn.execute_batch(
        "PRAGMA synchronous=NORMAL;
         PRAGMA busy_timeout=5000;
         CREATE TABLE IF NOT EXISTS memory (
             seq  INTEGER PRIMARY KEY,
             text TEXT NOT NULL,
             blob BLOB NOT NULL
         );",
    )
    .map_err(|e| format!("init sqlite: {e}"))?;
    Ok(conn)
}

fn highest_db_seq(conn: &Connection) -> Result<u64, String> {
    let v: Option<i64> = conn
        .query_row("SELECT MAX(seq) FROM memory", [], |r| r.get(0))
        .map_err(|e| format!("read max seq: {e}"))?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

fn read_ack(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Highest `"seq":N` in the last 64 KiB of the session log (torn last line ignored).
fn highest_jsonl_seq(path: &Path) -> Result<u64, String> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().filter_map(seq_of_line).max().unwrap_or(0))
}

fn seq_of_line(line: &str) -> Option<u64> {
    let rest = line.trim_start().strip_prefix("{\"seq\":")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if !rest[digits.len()..].starts_with([',', '}']) {
        return None;
    }
    digits.parse().ok()
}

/// Opens the log for appending; if the last line was torn (no trailing
/// newline), ends it so the next record starts on a line of its own.
fn open_log(path: &Path) -> Result<File, String> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1)).map_err(|e| e.to_string())?;
        f.read_exact(&mut last).map_err(|e| e.to_string())?;
        if last[0] != b'\n' {
            f.write_all(b"\n").map_err(|e| e.to_string())?;
        }
    }
    Ok(f)
}

fn write_cycle(
    dir: &Path,
    extra_dirs: &[PathBuf],
    log: &mut File,
    conn: &Connection,
    seq: u64,
    first: bool,
) -> Result<(), String> {
    let ts = now_ms();
    let text = format!("message {seq}");

    // 1. append-only log, fsynced
    let line = format!("{{\"seq\":{seq},\"ts_ms\":{ts},\"role\":\"assistant\",\"text\":\"{text}\"}}\n");
    log.write_all(line.as_bytes())
        .and_then(|_| log.sync_data())
        .map_err(|e| format!("append {SESSION_LOG}: {e}"))?;

    // 2. SQLite row in WAL mode
    let blob: Vec<u8> = (0..512u64).map(|i| ((seq.wrapping_mul(31) + i) % 251) as u8).collect();
    conn.execute(
        "INSERT INTO memory (seq, text, blob) VALUES (?1, ?2, ?3)",
        params![seq as i64, text, blob],
    )
    .map_err(|e| format!("insert seq {seq}: {e}"))?;

    // 3. whole-file rewrite every 10th seq (and on the first write of a run)
    if first || seq.is_multiple_of(10) {
        let body =
            format!("{{\n  \"seq\": {seq},\n  \"updated_ms\": {ts},\n  \"token\": \"fake-token-{seq:08}\"\n}}\n");
        replace_file(&dir.join(CREDENTIALS), body.as_bytes())?;
    }

    // 4. the other mounted directories
    for extra in extra_dirs {
        replace_file(&extra.join("seq.txt"), format!("{seq}\n").as_bytes())?;
    }

    // 5. acknowledge
    replace_file(&dir.join(ACK_FILE), format!("{seq}\n").as_bytes())
}

/// Write `path` atomically: temp file, fsync, rename, fsync the directory.
fn replace_file(path: &Path, data: &[u8]) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let res = (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    })();
    res.map_err(|e| format!("replace {}: {e}", path.display()))
}

// ---------------------------------------------------------------- HTTP

fn serve(listener: TcpListener, stats: Arc<Stats>, env_file: PathBuf) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let stats = Arc::clone(&stats);
        let env_file = env_file.clone();
        thread::spawn(move || {
            let _ = handle(stream, &stats, &env_file);
        });
    }
}

fn handle(mut stream: TcpStream, stats: &Stats, env_file: &Path) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 16 * 1024 {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");

    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain", "ok".to_string()),
        ("GET" | "HEAD", "/readyz") if stats.writes.load(Ordering::SeqCst) > 0 => {
            ("200 OK", "text/plain", "ready".to_string())
        }
        ("GET" | "HEAD", "/readyz") => ("503 Service Unavailable", "text/plain", "starting".to_string()),
        ("GET" | "HEAD", "/stats") => (
            "200 OK",
            "application/json",
            format!(
                "{{\"writes\": {}, \"last_seq\": {}}}",
                stats.writes.load(Ordering::SeqCst),
                stats.last_seq.load(Ordering::SeqCst)
            ),
        ),
        ("GET" | "HEAD", "/env-keys") => match env_keys(env_file) {
            Ok(Some(keys)) => ("200 OK", "application/json", keys),
            Ok(None) => (
                "404 Not Found",
                "application/json",
                "{\"error\": \"no env file\"}".into(),
            ),
            Err(_) => (
                "500 Internal Server Error",
                "application/json",
                "{\"error\": \"cannot read env file\"}".into(),
            ),
        },
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "method not allowed".to_string()),
    };
    let mut resp = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        resp.push_str(&body);
    }
    stream.write_all(resp.as_bytes())?;
    stream.flush()
}

/// Sorted, de-duplicated KEY names of a dotenv file as a JSON array; values
/// are never read into the answer. `None` when the file does not exist.
fn env_keys(path: &Path) -> io::Result<Option<String>> {
    let text = match fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, _) = l.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| k.to_string())
        })
        .collect();
    keys.sort();
    keys.dedup();
    let items: Vec<String> = keys.iter().map(|k| json_string(k)).collect();
    Ok(Some(format!("[{}]", items.join(", "))))
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_parsing() {
        assert_eq!(seq_of_line("{\"seq\":42,\"x\":1}"), Some(42));
        assert_eq!(seq_of_line("{\"seq\":7}"), Some(7));
        assert_eq!(seq_of_line("{\"seq\":4"), None); // torn
        assert_eq!(seq_of_line("garbage"), None);
    }

    #[test]
    fn env_key_listing() {
        let dir = std::env::temp_dir().join(format!("fake-openclaw-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join(".env");
        fs::write(
            &p,
            "# c\nZED=1\nexport API_KEY=secret\n\nAPI_KEY=again\nBAD LINE\nq\"=x\n",
        )
        .unwrap();
        assert_eq!(env_keys(&p).unwrap().unwrap(), "[\"API_KEY\", \"ZED\", \"q\\\"\"]");
        assert!(env_keys(&dir.join("missing")).unwrap().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
