//! The gateway owner lease, kept as OpenClaw keeps it: table `state_leases` of
//! `$STATE_DIR/state/openclaw.sqlite`, scope `gateway-owner`, key `global`.
//!
//! Reclaim follows the OLD rule (`readStateLeaseProcessOwnerStatus`, the subject of
//! openclaw/openclaw#155644): only an owner recorded on this very hostname can be
//! found dead; any other live lease is "unknown" and is waited out until it expires.
//! A clean stop deletes the row; a crash or a kill leaves it, so a snapshot of a
//! running gateway carries a live lease.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

/// The global state database, relative to the state directory.
pub const LEASE_DB: &str = "state/openclaw.sqlite";
const SCOPE: &str = "gateway-owner";
const LEASE_KEY: &str = "global";
/// How often a waiting start reads the row again.
const POLL: Duration = Duration::from_millis(200);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS state_leases (
    scope TEXT NOT NULL,
    lease_key TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at INTEGER,
    heartbeat_at INTEGER,
    payload_json TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope, lease_key)
) STRICT;";

/// The process that holds (or wants) the lease, as `payload_json.owner` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub pid: u32,
    pub host: String,
    /// Process start, ms since the epoch.
    #[serde(default)]
    pub started_at: Option<i64>,
}

impl Owner {
    /// The value of the `owner` column: one id per process instance.
    fn id(&self) -> String {
        format!("{}:{}:{}", self.host, self.pid, self.started_at.unwrap_or(0))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    owner: Owner,
    #[serde(default)]
    port: Option<u16>,
}

/// What a start finds in the table, reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// `None` when neither `payload_json.owner` nor `owner` parses as an owner.
    pub owner: Option<Owner>,
    /// ms since the epoch; NULL never expires.
    pub expires_at: Option<i64>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Take(&'static str),
    Wait(&'static str),
}

/// The old reclaim rule, with `now_ms` passed in. The fake's model of a same-host
/// owner: the container restarted, so its process is gone (OpenClaw finds its pid
/// dead or reused with another start time).
pub fn decide(held: Option<&Held>, me: &Owner, now_ms: i64) -> Decision {
    let Some(held) = held else {
        return Decision::Take("no lease");
    };
    if held.expires_at.is_some_and(|expires_at| expires_at < now_ms) {
        return Decision::Take("expired");
    }
    match &held.owner {
        None => Decision::Wait("owner unreadable: cannot tell whether it lives"),
        Some(owner) if owner == me => Decision::Take("already ours"),
        Some(owner) if owner.host == me.host => Decision::Take("owner on this host is gone"),
        Some(_) => Decision::Wait("owner on another host: cannot tell whether it lives (openclaw#155644)"),
    }
}

/// Lease timing: `LEASE_TTL_MS`, `LEASE_HEARTBEAT_MS`.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ttl: Duration,
    pub heartbeat: Duration,
}

/// A held lease: a thread renews it until `release` (which deletes the row) or
/// the process ends (which leaves it, as a crash does).
pub struct Lease {
    release: Arc<AtomicBool>,
    heartbeat: JoinHandle<()>,
}

impl Lease {
    /// Stops the heartbeat and deletes the row if it is still ours.
    pub fn release(self) {
        self.release.store(true, Ordering::SeqCst);
        if self.heartbeat.join().is_err() {
            eprintln!("fake-openclaw: lease heartbeat thread panicked; lease not released");
        }
    }
}

/// Takes the lease, waiting (polling every 200 ms) while the old rule says wait.
/// `Ok(None)` when `cancelled` turns true first.
pub fn acquire(
    state_dir: &Path,
    me: &Owner,
    port: u16,
    timing: Timing,
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<Lease>, String> {
    let path = state_dir.join(LEASE_DB);
    let mut conn = open(&path)?;
    let mut told = false;
    loop {
        if cancelled() {
            return Ok(None);
        }
        let now = crate::now_ms();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| format!("lock {}: {e}", path.display()))?;
        let held = read(&tx).map_err(|e| format!("read lease in {}: {e}", path.display()))?;
        match decide(held.as_ref(), me, now) {
            Decision::Take(reason) => {
                write(&tx, me, port, now, timing.ttl)
                    .and_then(|()| tx.commit())
                    .map_err(|e| format!("write lease in {}: {e}", path.display()))?;
                eprintln!("fake-openclaw: lease taken ({reason}) by {}", me.id());
                break;
            }
            Decision::Wait(reason) => {
                drop(tx); // rolls back; the holder may renew or release meanwhile
                if !told {
                    told = true;
                    let held = held.as_ref();
                    let host = held
                        .and_then(|h| h.owner.as_ref())
                        .map_or("unknown", |o| o.host.as_str());
                    let until = held
                        .and_then(|h| h.expires_at)
                        .map_or("never".to_string(), |t| t.to_string());
                    eprintln!("fake-openclaw: lease held by host {host} until {until}; waiting ({reason})");
                }
            }
        }
        thread::sleep(POLL);
    }
    let release = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let release = Arc::clone(&release);
        let me = me.clone();
        thread::spawn(move || heartbeat_loop(conn, path, &me, timing, &release))
    };
    Ok(Some(Lease { release, heartbeat }))
}

fn heartbeat_loop(conn: Connection, path: PathBuf, me: &Owner, timing: Timing, release: &AtomicBool) {
    let mut next = Instant::now() + timing.heartbeat;
    let mut lost = false;
    while !release.load(Ordering::SeqCst) {
        if Instant::now() < next {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        next += timing.heartbeat;
        let now = crate::now_ms();
        let expires_at = now + timing.ttl.as_millis() as i64;
        match conn.execute(
            "UPDATE state_leases SET expires_at = ?1, heartbeat_at = ?2, updated_at = ?2
             WHERE scope = ?3 AND lease_key = ?4 AND owner = ?5",
            params![expires_at, now, SCOPE, LEASE_KEY, me.id()],
        ) {
            Ok(0) if !lost => {
                lost = true;
                eprintln!(
                    "fake-openclaw: lease in {} is no longer ours; not renewing",
                    path.display()
                );
            }
            Ok(_) => {}
            // a failed beat is logged and the next one tries again
            Err(e) => eprintln!("fake-openclaw: lease heartbeat in {}: {e}", path.display()),
        }
    }
    match conn.execute(
        "DELETE FROM state_leases WHERE scope = ?1 AND lease_key = ?2 AND owner = ?3",
        params![SCOPE, LEASE_KEY, me.id()],
    ) {
        Ok(_) => eprintln!("fake-openclaw: lease released"),
        Err(e) => eprintln!("fake-openclaw: release lease in {}: {e}", path.display()),
    }
    if let Err((_, e)) = conn.close() {
        eprintln!("fake-openclaw: close {}: {e}", path.display());
    }
}

fn open(path: &Path) -> Result<Connection, String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let conn = Connection::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| format!("journal_mode=WAL on {}: {e}", path.display()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("{}: journal_mode is {mode}, not wal", path.display()));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000; {SCHEMA}"
    ))
    .map_err(|e| format!("init {}: {e}", path.display()))?;
    Ok(conn)
}

fn read(conn: &Connection) -> rusqlite::Result<Option<Held>> {
    conn.query_row(
        "SELECT owner, expires_at, payload_json FROM state_leases WHERE scope = ?1 AND lease_key = ?2",
        params![SCOPE, LEASE_KEY],
        |r| {
            let owner: String = r.get(0)?;
            let expires_at: Option<i64> = r.get(1)?;
            let payload: Option<String> = r.get(2)?;
            Ok(Held {
                owner: parse_owner(payload.as_deref(), &owner),
                expires_at,
            })
        },
    )
    .optional()
}

/// `payload_json.owner`, else the `owner` column read as an owner object.
fn parse_owner(payload_json: Option<&str>, owner_column: &str) -> Option<Owner> {
    payload_json
        .and_then(|p| serde_json::from_str::<Payload>(p).ok())
        .map(|p| p.owner)
        .or_else(|| serde_json::from_str::<Owner>(owner_column).ok())
}

fn write(conn: &Connection, me: &Owner, port: u16, now: i64, ttl: Duration) -> rusqlite::Result<()> {
    let payload = Payload {
        owner: me.clone(),
        port: Some(port),
    };
    let payload = serde_json::to_string(&payload).expect("a struct of strings and integers serializes");
    conn.execute(
        "INSERT INTO state_leases
             (scope, lease_key, owner, expires_at, heartbeat_at, payload_json, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?5)
         ON CONFLICT (scope, lease_key) DO UPDATE SET
             owner = excluded.owner, expires_at = excluded.expires_at,
             heartbeat_at = excluded.heartbeat_at, payload_json = excluded.payload_json,
             created_at = excluded.created_at, updated_at = excluded.updated_at",
        params![SCOPE, LEASE_KEY, me.id(), now + ttl.as_millis() as i64, now, payload],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(host: &str, pid: u32, started_at: Option<i64>) -> Owner {
        Owner {
            pid,
            host: host.to_string(),
            started_at,
        }
    }

    #[test]
    fn reclaim_rule() {
        let me = owner("a", 7, Some(5_000));
        let held = |o: Option<Owner>, expires_at: Option<i64>| Some(Held { owner: o, expires_at });
        let now = 10_000;
        let cases: &[(Option<Held>, Decision)] = &[
            (None, Decision::Take("no lease")),
            // expiry beats everything, foreign or unreadable
            (
                held(Some(owner("b", 7, Some(1))), Some(9_999)),
                Decision::Take("expired"),
            ),
            (held(None, Some(0)), Decision::Take("expired")),
            // expires_at < now: still valid at the very millisecond
            (
                held(Some(owner("b", 7, Some(1))), Some(10_000)),
                Decision::Wait("owner on another host: cannot tell whether it lives (openclaw#155644)"),
            ),
            (
                held(Some(owner("b", 1, None)), Some(310_000)),
                Decision::Wait("owner on another host: cannot tell whether it lives (openclaw#155644)"),
            ),
            (
                held(Some(owner("b", 1, None)), None),
                Decision::Wait("owner on another host: cannot tell whether it lives (openclaw#155644)"),
            ),
            (
                held(None, Some(310_000)),
                Decision::Wait("owner unreadable: cannot tell whether it lives"),
            ),
            // same host: the old process is gone, whatever its pid
            (
                held(Some(owner("a", 7, Some(1))), Some(310_000)),
                Decision::Take("owner on this host is gone"),
            ),
            (
                held(Some(owner("a", 1, Some(1))), Some(310_000)),
                Decision::Take("owner on this host is gone"),
            ),
            (
                held(Some(owner("a", 7, None)), None),
                Decision::Take("owner on this host is gone"),
            ),
            (held(Some(me.clone()), Some(310_000)), Decision::Take("already ours")),
            // hostnames compare exactly
            (
                held(Some(owner("A", 7, Some(1))), Some(310_000)),
                Decision::Wait("owner on another host: cannot tell whether it lives (openclaw#155644)"),
            ),
        ];
        for (held, want) in cases {
            assert_eq!(&decide(held.as_ref(), &me, now), want, "held {held:?}");
        }
    }

    #[test]
    fn owner_json() {
        let me = owner("box", 1, Some(42));
        let payload = serde_json::to_string(&Payload {
            owner: me.clone(),
            port: Some(18789),
        })
        .unwrap();
        assert_eq!(
            payload,
            r#"{"owner":{"pid":1,"host":"box","startedAt":42},"port":18789}"#
        );
        assert_eq!(parse_owner(Some(&payload), "x"), Some(me.clone()));
        // OpenClaw's own payload carries more fields
        let theirs = r#"{"owner":{"pid":9,"host":"h","processNamespace":"n","startedAt":null},"port":1,"mode":"lan"}"#;
        assert_eq!(parse_owner(Some(theirs), "x"), Some(owner("h", 9, None)));
        assert_eq!(parse_owner(None, r#"{"pid":3,"host":"c"}"#), Some(owner("c", 3, None)));
        assert_eq!(parse_owner(Some("nonsense"), "box:1:42"), None);
    }

    #[test]
    fn take_wait_and_release_on_disk() {
        let dir = std::env::temp_dir().join(format!("fake-openclaw-lease-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let timing = Timing {
            ttl: Duration::from_secs(300),
            heartbeat: Duration::from_millis(50),
        };
        let a = owner("a", 1, Some(1));
        let lease = acquire(&dir, &a, 1, timing, &|| false).unwrap().unwrap();
        // a live lease of host a: host b reads it, waits one poll, and gives up when cancelled
        let b = owner("b", 1, Some(2));
        let polls = std::cell::Cell::new(0);
        let cancel_on_second_poll = || {
            polls.set(polls.get() + 1);
            polls.get() > 1
        };
        assert!(acquire(&dir, &b, 1, timing, &cancel_on_second_poll).unwrap().is_none());
        assert_eq!(polls.get(), 2);
        let conn = open(&dir.join(LEASE_DB)).unwrap();
        let held = read(&conn).unwrap().unwrap();
        assert_eq!(held.owner, Some(a.clone()));
        assert_eq!(
            decide(Some(&held), &b, crate::now_ms()),
            Decision::Wait("owner on another host: cannot tell whether it lives (openclaw#155644)")
        );
        lease.release();
        assert_eq!(read(&conn).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
