//! fake-openclaw: a stand-in for the OpenClaw gateway container in spotkeeper's tests.
//!
//! It behaves like OpenClaw where it matters for backups and supervision: it writes
//! into its state directory all the time (an append-only JSONL log, a SQLite database
//! in WAL mode, a whole-file rewrite through temp + rename), keeps OpenClaw's gateway
//! owner lease, answers OpenClaw's probes, drains for a configurable time on
//! SIGTERM/SIGINT, and restarts itself on a "config change" the way the gateway does.
//!
//! Command line (the image's ENTRYPOINT is the binary; the container command is its argv):
//!   [node dist/index.js gateway] [--bind loopback|lan|auto] [--port N]
//!                      `--bind`/`--port` anywhere, also as `--bind=lan`; the program words
//!                      are ignored, other arguments are logged and ignored. Without
//!                      `--bind` (or with `loopback`) it listens on 127.0.0.1 only, like
//!                      the image's own command: a published port is dead. `lan`, `auto`
//!                      and `0.0.0.0` listen on 0.0.0.0. `--port` overrides PORT.
//!   caps               print the `CapEff:` line of /proc/self/status (run with `docker exec`)
//!   healthcheck [--port N]
//!                      GET /healthz on 127.0.0.1:PORT; exit 0 when it answers 200 with a
//!                      JSON body whose `ok` is true within 2 s, else 1 (an exec-form
//!                      Docker health check; the image has no shell). So it fails on a
//!                      FAKE_PRE_PROBES gateway, whose catch-all 200 is HTML.
//!
//! Environment (all optional):
//!   STATE_DIR          state directory            (default /home/node/.openclaw)
//!   PORT               HTTP port                  (default 18789; `--port` wins)
//!   DRAIN_MS           drain time after a signal  (default 500)
//!   WRITE_INTERVAL_MS  time between write cycles  (default 50)
//!   BOOT_MS            sleep before listening     (default 0: a slow boot, nothing answers)
//!   ENV_FILE           OpenClaw's global env file (default $STATE_DIR/.env): listed by
//!                      /env-keys, and read once at start for the OPENCLAW_* variables
//!                      below, without overriding the process environment (as OpenClaw
//!                      loads ~/.openclaw/.env)
//!   CRASH_AFTER_MS     if set: exit with code 3 after that long (the lease is left behind)
//!   EXTRA_DIRS         `:`-separated directories (OpenClaw's workspace and auth-profile
//!                      mounts): each write cycle also replaces `seq.txt` in each, after
//!                      the session log and the database and before `ack.txt`, so a
//!                      consistent copy of all of them has every `seq.txt` at ack or ack+1
//!   LEASE_TTL_MS       owner lease lifetime       (default 300000, OpenClaw's 5 minutes;
//!                      0 makes every lease found expired, so a start never waits)
//!   LEASE_HEARTBEAT_MS lease renewal interval     (default 15000)
//!   FAKE_REQUIRE_AUTH  `1`: refuse a non-loopback bind without OPENCLAW_GATEWAY_TOKEN or
//!                      OPENCLAW_GATEWAY_PASSWORD (the real gateway ALWAYS refuses; the
//!                      fake does only when asked, since most tests run without a token)
//!   FAKE_FAILED_CHANNELS comma list of channel names that start out failed (/readyz 503)
//!   FAKE_PRE_PROBES    `1`: behave like an OpenClaw image from before 2026-03-02: no probe
//!                      routes; every GET/HEAD path (/healthz, /readyz, /startupz too)
//!                      answers 200 text/html (the Control UI catch-all), except /stats
//!                      and /env-keys; the /fake/* routes still work
//!   OPENCLAW_GATEWAY_TOKEN, OPENCLAW_GATEWAY_PASSWORD
//!                      the gateway's secrets: a request with `Authorization: Bearer <either>`
//!                      gets probe details (below)
//!   OPENCLAW_NO_RESPAWN, OPENCLAW_SUPERVISOR_MODE, OPENCLAW_SYSTEMD_UNIT, INVOCATION_ID,
//!   SYSTEMD_EXEC_PID, JOURNAL_STREAM
//!                      supervisor hints, read as OpenClaw reads them (see config change)
//!
//! HTTP (HTTP/1.0, `Connection: close`). Probes: GET or HEAD only (else 405 with
//! `Allow: GET, HEAD`), `application/json`, `Cache-Control: no-store`:
//!   /healthz, /health    200 {"ok":true,"status":"live"}, also while draining
//!   /startupz, /startup  503 {"ok":false,"status":"starting"} until started (the lease is
//!                        held and the first write cycle is durable), then
//!                        200 {"ok":true,"status":"started"};
//!                        503 {"ok":false,"status":"draining"} once a signal arrived
//!   /readyz, /ready      200 {"ready":true} when started, not draining and no channel
//!                        failed, else 503 {"ready":false}
//!   With a matching Bearer the bodies carry details: `uptimeMs`; /startupz while starting
//!   `"pendingReason":"startup-sidecars"`; /readyz `"failing":[...]`: the failed channels,
//!   or ["gateway-draining"], or ["startup-sidecars"] while starting ([] when ready).
//! The fake's own routes:
//!   GET  /stats               {"writes": N, "last_seq": N}
//!   GET  /env-keys            key names of ENV_FILE as a JSON array (404 if it is absent)
//!   POST /fake/channels       body: comma list of failed channels (empty: all healthy);
//!                             200 {"failing":[...]}
//!   POST /fake/config-change  a config change: 202 {"ok":true,"restart":"<mode>"}, then
//!                             OpenClaw's "full process restart":
//!       OPENCLAW_NO_RESPAWN truthy           -> mode `in-process`: keeps running; stdout
//!                                               `restarted in-process`
//!       OPENCLAW_SUPERVISOR_MODE external (or docker, clawctl), or any non-empty
//!       OPENCLAW_SYSTEMD_UNIT, INVOCATION_ID, SYSTEMD_EXEC_PID, JOURNAL_STREAM
//!                                            -> mode `supervised`: stops writing, releases
//!                                               the lease, stdout `restarting`, exit 0
//!       no hint                              -> mode `detached` (older builds; the detached
//!                                               copy dies with the container): same, stdout
//!                                               `respawning detached`, exit 0
//! Anything else: 404 for GET/HEAD, 405 for other methods.
//!
//! Owner lease (see lease.rs): table `state_leases` in $STATE_DIR/state/openclaw.sqlite (WAL),
//! scope `gateway-owner`, key `global`. After listening and before the first write cycle, the
//! fake takes it when there is none, when it expired, or when its owner host is this
//! container's hostname (the old process is gone); a live lease of another host is waited
//! out: stderr `lease held by host X until T; waiting (...)` once, then a poll every 200 ms.
//! While it waits /healthz answers and /startupz says starting. Heartbeats renew it; a clean
//! drain or a config-change exit deletes it; a crash or SIGKILL leaves it.
//!
//! Stdout, one line each, nothing else: `lease acquired`, then `started` (serving, lease
//! held, writes about to begin), `ack N` after every durable write cycle, `draining` when a
//! signal arrives, `drained` just before exit 0 (after the lease is released); or, after a
//! config change, one of `restarted in-process`, `restarting`, `respawning detached`.
//! A signal during the lease wait gives `draining`, `drained` with no `started`.
//! Diagnostics go to stderr. No environment value is ever printed.
//!
//! Exit codes: 0 clean (drained, or a config-change restart); 1 a runtime failure (a
//! write, the lease database); 3 CRASH_AFTER_MS; 78 a configuration error: bad argv or
//! environment value, or (FAKE_REQUIRE_AUTH=1) a non-loopback bind without a secret,
//! after OpenClaw's stderr line "Refusing to bind gateway to lan without auth. Set
//! OPENCLAW_GATEWAY_TOKEN or OPENCLAW_GATEWAY_PASSWORD." (78 is EX_CONFIG).

#![forbid(unsafe_code)]

mod cli;
mod env;
mod http;
mod lease;
mod restart;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};
use serde::Deserialize;

use cli::{Command, GatewayArgs};
use env::{is_truthy, OpenClawEnv};
use http::{HttpConfig, Shared};

const SESSION_LOG: &str = "agents/main/sessions/current.jsonl";
const MEMORY_DB: &str = "memory/main.sqlite";
const CREDENTIALS: &str = "credentials/state.json";
const ACK_FILE: &str = "ack.txt";
const DEFAULT_PORT: u16 = 18789;
/// Where the kernel keeps the UTS hostname (readable in a FROM-scratch container).
const HOSTNAME_FILES: [&str; 2] = ["/proc/sys/kernel/hostname", "/etc/hostname"];
const EXIT_RUNTIME: u8 = 1;
/// EX_CONFIG: bad arguments or environment, or the refusal to bind without auth.
const EXIT_CONFIG: u8 = 78;

struct Config {
    state_dir: PathBuf,
    bind: Ipv4Addr,
    port: u16,
    drain: Duration,
    interval: Duration,
    env_file: PathBuf,
    crash_after: Option<Duration>,
    boot: Duration,
    extra_dirs: Vec<PathBuf>,
    lease: lease::Timing,
    require_auth: bool,
    pre_probes: bool,
    failed_channels: Vec<String>,
}

enum Failure {
    /// Exit 78; the message is printed with a prefix.
    Config(String),
    /// Exit 78; OpenClaw's refusal line was already printed.
    Refused,
    /// Exit 1.
    Runtime(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Runtime(message)
    }
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

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| is_truthy(&v))
}

fn config(args: &GatewayArgs) -> Result<Config, String> {
    let state_dir = PathBuf::from(
        std::env::var("STATE_DIR")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/home/node/.openclaw".to_string()),
    );
    let port = match args.port {
        Some(port) => port,
        None => u16::try_from(env_u64("PORT", DEFAULT_PORT.into())?).map_err(|_| "PORT is out of range".to_string())?,
    };
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
        bind: args.bind.ip(),
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
        lease: lease::Timing {
            ttl: Duration::from_millis(env_u64("LEASE_TTL_MS", 300_000)?),
            heartbeat: Duration::from_millis(env_u64("LEASE_HEARTBEAT_MS", 15_000)?.max(1)),
        },
        require_auth: env_flag("FAKE_REQUIRE_AUTH"),
        pre_probes: env_flag("FAKE_PRE_PROBES"),
        failed_channels: http::parse_channels(&std::env::var("FAKE_FAILED_CHANNELS").unwrap_or_default()),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("fake-openclaw: error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let gateway = match command {
        Command::Healthcheck { port } => return healthcheck(port),
        Command::Caps => return caps(),
        Command::Gateway(gateway) => gateway,
    };
    match run(&gateway) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("fake-openclaw: error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Refused) => ExitCode::from(EXIT_CONFIG),
        Err(Failure::Runtime(e)) => {
            eprintln!("fake-openclaw: error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn run(args: &GatewayArgs) -> Result<(), Failure> {
    let started_at = now_ms();
    let cfg = config(args).map_err(Failure::Config)?;
    for word in &args.ignored {
        eprintln!("fake-openclaw: ignoring argument {word:?}");
    }
    let openclaw_env = OpenClawEnv::load(&cfg.env_file);
    let secrets: Vec<String> = ["OPENCLAW_GATEWAY_TOKEN", "OPENCLAW_GATEWAY_PASSWORD"]
        .iter()
        .filter_map(|name| openclaw_env.non_empty(name))
        .map(|secret| secret.trim().to_string())
        .collect();
    if cli::refuses_without_auth(args.bind, !secrets.is_empty()) {
        if cfg.require_auth {
            eprintln!("{}", cli::refusal_message(args.bind));
            return Err(Failure::Refused);
        }
        eprintln!(
            "fake-openclaw: binding {} without a gateway token (the real gateway refuses; FAKE_REQUIRE_AUTH=1 does too)",
            args.bind.name()
        );
    }
    let restart = restart::restart_mode(|name| openclaw_env.get(name));

    // Signals first, so that a SIGTERM during start-up is not lost.
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&signalled))
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
        fs::create_dir_all(dir.join(sub)).map_err(|e| format!("create {}: {e}", dir.join(sub).display()))?;
    }
    for extra in &cfg.extra_dirs {
        fs::create_dir_all(extra).map_err(|e| format!("create {}: {e}", extra.display()))?;
    }

    let conn = open_db(&dir.join(MEMORY_DB))?;
    let highest = highest_jsonl_seq(&dir.join(SESSION_LOG))?
        .max(highest_db_seq(&conn)?)
        .max(read_ack(&dir.join(ACK_FILE)));
    let shared = Arc::new(Shared {
        writes: AtomicU64::new(0),
        last_seq: AtomicU64::new(highest),
        signalled: Arc::clone(&signalled),
        restart_requested: AtomicBool::new(false),
        failed_channels: Mutex::new(cfg.failed_channels.clone()),
        started: Instant::now(),
    });

    // A slow boot, as a large app has: nothing answers /healthz until it is over.
    if !cfg.boot.is_zero() {
        thread::sleep(cfg.boot);
    }
    let listener =
        TcpListener::bind((cfg.bind, cfg.port)).map_err(|e| format!("bind {}:{}: {e}", cfg.bind, cfg.port))?;
    eprintln!(
        "fake-openclaw: listening on {}:{} (restart mode {})",
        cfg.bind,
        cfg.port,
        restart.name()
    );
    {
        let shared = Arc::clone(&shared);
        let http_cfg = Arc::new(HttpConfig {
            env_file: cfg.env_file.clone(),
            secrets,
            pre_probes: cfg.pre_probes,
            restart: restart.clone(),
        });
        thread::spawn(move || http::serve(listener, shared, http_cfg));
    }

    let me = lease::Owner {
        pid: std::process::id(),
        host: hostname(),
        started_at: Some(started_at),
    };
    let should_stop = || signalled.load(Ordering::SeqCst) || shared.restart_requested.load(Ordering::SeqCst);
    let owner_lease = lease::acquire(dir, &me, cfg.port, cfg.lease, &should_stop)?;

    let mut log = open_log(&dir.join(SESSION_LOG))?;
    let mut seq = highest;
    if owner_lease.is_some() {
        say("lease acquired");
        eprintln!("fake-openclaw: next seq {}", highest + 1);
        say("started");

        let mut next = Instant::now();
        while !should_stop() {
            seq += 1;
            let writes = shared.writes.load(Ordering::SeqCst) + 1;
            write_cycle(dir, &cfg.extra_dirs, &mut log, &conn, seq, writes == 1)?;
            shared.writes.store(writes, Ordering::SeqCst);
            shared.last_seq.store(seq, Ordering::SeqCst);
            say(&format!("ack {seq}"));

            next += cfg.interval;
            let now = Instant::now();
            if next < now {
                next = now; // fell behind: do not burst to catch up
            }
            while !should_stop() {
                let now = Instant::now();
                if now >= next {
                    break;
                }
                thread::sleep((next - now).min(Duration::from_millis(10)));
            }
        }
    }

    let close = |log: File, conn: Connection, owner_lease: Option<lease::Lease>| -> Result<(), String> {
        drop(log);
        conn.close().map_err(|(_, e)| format!("close {MEMORY_DB}: {e}"))?;
        if let Some(owner_lease) = owner_lease {
            owner_lease.release();
        }
        Ok(())
    };

    if !signalled.load(Ordering::SeqCst) && shared.restart_requested.load(Ordering::SeqCst) {
        // A full process restart: no drain, writes stopped, lease released, exit 0.
        close(log, conn, owner_lease)?;
        // in-process restarts never stop the loop: only the exiting modes get here
        say(restart.stdout_line());
        return Ok(());
    }

    // Drain: no more writes, probes still answered.
    say("draining");
    thread::sleep(cfg.drain);
    close(log, conn, owner_lease)?;
    say("drained");
    Ok(())
}

/// This container's hostname (the kernel's UTS name, as `os.hostname()` reads it).
fn hostname() -> String {
    HOSTNAME_FILES
        .iter()
        .find_map(|path| fs::read_to_string(path).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `fake-openclaw caps`: the effective capabilities of a process started in the container
/// (`docker exec`), as `/proc/self/status` says them; the image has no shell to read it.
fn caps() -> ExitCode {
    match fs::read_to_string("/proc/self/status") {
        Ok(status) => {
            for line in status.lines().filter(|l| l.starts_with("CapEff:")) {
                say(line);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fake-openclaw: cannot read /proc/self/status: {e}");
            ExitCode::from(1)
        }
    }
}

/// `fake-openclaw healthcheck`: exit 0 if GET /healthz on 127.0.0.1:PORT answers 200
/// with a JSON body whose `ok` is true within 2 s, else 1. For exec-form health checks,
/// as the scratch image has no shell: Healthcheck.Test = ["CMD", "/fake-openclaw", "healthcheck"].
fn healthcheck(port: Option<u16>) -> ExitCode {
    let ok = (|| -> Result<bool, String> {
        let port = match port {
            Some(port) => port,
            None => u16::try_from(env_u64("PORT", DEFAULT_PORT.into())?).map_err(|e| e.to_string())?,
        };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let t = Duration::from_secs(2);
        let mut s = TcpStream::connect_timeout(&addr, t).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(t)).map_err(|e| e.to_string())?;
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
        Ok(live_response(&resp))
    })();
    match ok {
        Ok(true) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// A liveness answer as a real probe accepts it: status 200 and a JSON body with `"ok": true`.
fn live_response(resp: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Live {
        ok: bool,
    }
    let Some(head_end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let status_ok = resp
        .split(|&b| b == b'\n')
        .next()
        .and_then(|line| std::str::from_utf8(line).ok())
        .and_then(|line| line.split_whitespace().nth(1))
        == Some("200");
    status_ok && serde_json::from_slice::<Live>(&resp[head_end + 4..]).is_ok_and(|live| live.ok)
}

/// One stdout line, flushed at once (stdout is a pipe under Docker).
pub(crate) fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// ms since the epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
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
    fn liveness_answers() {
        let cases: &[(&str, bool)] = &[
            (
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"ok\":true,\"status\":\"live\"}",
                true,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n{ \"ok\": true }", true),
            ("HTTP/1.0 200 OK\r\n\r\n{\"ok\":false,\"status\":\"live\"}", false),
            (
                "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<!doctype html><html></html>",
                false,
            ),
            ("HTTP/1.0 200 OK\r\n\r\nok", false),
            ("HTTP/1.0 503 Service Unavailable\r\n\r\n{\"ok\":true}", false),
            ("HTTP/1.0 200 OK\r\n\r\n", false),
            ("", false),
        ];
        for (resp, want) in cases {
            assert_eq!(live_response(resp.as_bytes()), *want, "{resp:?}");
        }
    }
}
