//! `work_dir/restore.lock`: held while a restore swaps its paths in (or completes an interrupted
//! one), and while a snapshot copies the state paths into its mirrors. A snapshot then copies
//! either the set from before a restore or the set after it, never paths from two moments.
//!
//! A `flock`: it goes with the process (a kill releases it), and two opens in one process
//! exclude each other too. Waiting is logged and bounded.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock's file name in `work_dir`.
pub const LOCK_FILE: &str = "restore.lock";
/// How long a command waits for the lock: a snapshot's first copy of a large state can take
/// minutes; a restore's swaps take seconds.
pub const COMMAND_WAIT: Duration = Duration::from_secs(15 * 60);
/// How long the daemon's scheduled snapshot waits (its loop must go on; the tick is retried).
pub const DAEMON_WAIT: Duration = Duration::from_secs(60);
/// Longest pause between two attempts while waiting.
const POLL_MAX: Duration = Duration::from_millis(200);
/// A wait is logged again this often.
const LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is still held by {holder} after {waited_s} s; nothing was changed by this {purpose}. Wait for it to \
         finish (or for that process to be stopped) and try again"
    )]
    Busy {
        path: PathBuf,
        holder: String,
        purpose: &'static str,
        waited_s: u64,
    },
}

/// The lock, held until dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Takes the lock for `purpose` ("restore", "snapshot"), waiting at most `limit`. A wait is
/// logged with the holder (the pid and purpose it wrote into the file) when it starts, every
/// 30 s, and when it ends.
pub fn hold(work_dir: &Path, purpose: &'static str, limit: Duration) -> Result<StateLock, StateLockError> {
    let path = work_dir.join(LOCK_FILE);
    let io_error = |source| StateLockError::Io {
        path: path.clone(),
        source,
    };
    crate::private_fs::create_dir_all(work_dir).map_err(|source| StateLockError::Io {
        path: work_dir.to_path_buf(),
        source,
    })?;
    let mut file = crate::private_fs::open_lock(&path).map_err(io_error)?;
    let started = Instant::now();
    let mut logged_at: Option<Instant> = None;
    let mut pause = Duration::from_millis(5);
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::WOULDBLOCK) => {}
            Err(e) => return Err(io_error(e.into())),
        }
        let waited = started.elapsed();
        let holder = holder(&path);
        if waited >= limit {
            return Err(StateLockError::Busy {
                path,
                holder,
                purpose,
                waited_s: waited.as_secs(),
            });
        }
        if logged_at.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            tracing::warn!(lock = %path.display(), %holder, purpose, waited_s = waited.as_secs(),
                limit_s = limit.as_secs(), "waiting for {} (held by {holder}) before this {purpose}", path.display());
            logged_at = Some(Instant::now());
        }
        std::thread::sleep(pause.min(limit.saturating_sub(waited)));
        pause = (pause * 2).min(POLL_MAX);
    }
    if logged_at.is_some() {
        tracing::info!(lock = %path.display(), purpose, waited_ms = started.elapsed().as_millis() as u64,
            "got {}", path.display());
    }
    // Who holds it, for the next waiter's message: best effort.
    let note = format!("process {} ({purpose})\n", std::process::id());
    let noted = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(note.as_bytes()));
    if let Err(e) = noted {
        tracing::debug!(lock = %path.display(), error = %e, "cannot note the holder in the lock file");
    }
    Ok(StateLock { _file: file })
}

/// What the holder wrote into the lock file ("process 123 (snapshot)"), or a plain description.
fn holder(path: &Path) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|f| f.take(200).read_to_string(&mut text));
    match read {
        Ok(_) if !text.trim().is_empty() => text.trim().to_string(),
        _ => "another spotkeeper process".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_within_its_limit_and_names_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = hold(dir.path(), "snapshot", Duration::ZERO).expect("first");
        let err = hold(dir.path(), "restore", Duration::from_millis(50)).expect_err("busy");
        let text = err.to_string();
        assert!(
            text.contains(&format!("process {} (snapshot)", std::process::id())),
            "{text}"
        );
        assert!(text.contains("restore.lock") && text.contains("this restore"), "{text}");
        drop(first);
        hold(dir.path(), "restore", Duration::ZERO).expect("free again");
    }
}
