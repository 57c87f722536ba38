//! The swap journal: a restore of several paths swaps them in one after another, and a kill
//! between two swaps must not leave a set from two moments. Before the first swap, every path
//! is staged, verified and durable, and the journal (in `work_dir`) names each swap; the next
//! start (daemon, `restore`, `snapshot`) completes what it names. Every step is idempotent: a
//! swap is judged by what exists (staging, target, displaced place), never by a counter.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{RestoreError, io_error};
use crate::snapshot_id::SnapshotId;

/// The journal's file name in `work_dir`.
pub const JOURNAL_FILE: &str = "restore-journal.json";
const JOURNAL_VERSION: u32 = 1;
/// The failpoint between durable steps (`crate::failpoint`).
pub const FAILPOINT: &str = "restore-swap";

/// One path's swap: the staged tree goes to `target`; what was there goes to `displaced` (or,
/// for an empty or absent target, nowhere).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swap {
    pub name: String,
    pub target: PathBuf,
    pub staging: PathBuf,
    pub displaced: Option<PathBuf>,
}

/// The local record a completed restore of the whole set leaves (none for one path alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordUpdate {
    pub repository: String,
    pub state_dir: PathBuf,
    pub snapshot_id: SnapshotId,
    pub latest_id: SnapshotId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    pub snapshot: SnapshotId,
    pub swaps: Vec<Swap>,
    pub record: Option<RecordUpdate>,
}

impl Journal {
    pub fn new(snapshot: SnapshotId, swaps: Vec<Swap>, record: Option<RecordUpdate>) -> Journal {
        Journal {
            version: JOURNAL_VERSION,
            snapshot,
            swaps,
            record,
        }
    }
}

fn journal_path(work_dir: &Path) -> PathBuf {
    work_dir.join(JOURNAL_FILE)
}

/// Writes the journal durably (temp file, fsync, rename, fsync of `work_dir`).
pub fn write(work_dir: &Path, journal: &Journal) -> Result<(), RestoreError> {
    let path = journal_path(work_dir);
    let temp = work_dir.join(format!(".{JOURNAL_FILE}.tmp"));
    let write = || -> io::Result<()> {
        crate::private_fs::create_dir_all(work_dir)?;
        let body = serde_json::to_vec_pretty(journal).map_err(io::Error::other)?;
        let mut file = crate::private_fs::create_file(&temp)?;
        file.write_all(&body)?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        File::open(work_dir)?.sync_all()
    };
    write().map_err(io_error(&path))?;
    crate::failpoint::hit(FAILPOINT);
    Ok(())
}

/// True while a journal names swaps not yet known to be complete.
pub fn pending(work_dir: &Path) -> bool {
    journal_path(work_dir).exists()
}

/// Removes the journal: the restore it names is complete.
pub fn finish(work_dir: &Path) -> Result<(), RestoreError> {
    let path = journal_path(work_dir);
    fs::remove_file(&path).map_err(io_error(&path))?;
    File::open(work_dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(work_dir))
}

/// The journal left by an interrupted restore, if any.
pub fn read(work_dir: &Path) -> Result<Option<Journal>, RestoreError> {
    let path = journal_path(work_dir);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path)(e)),
    };
    let journal: Journal =
        crate::manifest::read_json_capped(file, &path.display().to_string()).map_err(|e| RestoreError::Journal {
            path: path.clone(),
            why: e.to_string(),
        })?;
    if journal.version != JOURNAL_VERSION {
        return Err(RestoreError::Journal {
            path,
            why: format!("version {} is not one this spotkeeper knows", journal.version),
        });
    }
    Ok(Some(journal))
}

/// Holds `work_dir/restore.lock` (`crate::state_lock`): one process at a time writes or
/// completes a journal, whatever started it (the daemon, `restore`, `snapshot --force`), and no
/// snapshot copies the state paths meanwhile. Waits (logged) at most `state_lock::COMMAND_WAIT`.
pub fn lock(work_dir: &Path) -> Result<crate::state_lock::StateLock, RestoreError> {
    crate::state_lock::hold(work_dir, "restore", crate::state_lock::COMMAND_WAIT).map_err(|e| match e {
        crate::state_lock::StateLockError::Io { path, source } => RestoreError::Io { path, source },
        crate::state_lock::StateLockError::Busy {
            path, holder, waited_s, ..
        } => RestoreError::Io {
            path,
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "still held by {holder} after {waited_s} s; nothing was swapped. Wait for it to finish and \
                     restore again"
                ),
            ),
        },
    })
}

/// Carries out one swap, from wherever an earlier attempt stopped.
pub fn apply(swap: &Swap) -> Result<(), RestoreError> {
    let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
    if !exists(&swap.staging) {
        // Done already: the staged tree is the target now.
        if exists(&swap.target) {
            return Ok(());
        }
        return Err(RestoreError::Journal {
            path: swap.staging.clone(),
            why: format!(
                "path {:?}: neither the staged tree nor {} exists",
                swap.name,
                swap.target.display()
            ),
        });
    }
    if exists(&swap.target) {
        match &swap.displaced {
            Some(place) if !exists(place) => {
                if let Some(holder) = place.parent() {
                    crate::private_fs::create_dir_all(holder).map_err(io_error(holder))?;
                }
                fs::rename(&swap.target, place).map_err(io_error(&swap.target))?;
                tracing::info!(path = %swap.name, from = %swap.target.display(), to = %place.display(), "moved local state aside");
                sync_parent(&swap.target)?;
                crate::failpoint::hit(FAILPOINT);
            }
            // Only an empty directory may be removed; anything else is kept (the rename below
            // then fails and says so).
            _ => match fs::remove_dir(&swap.target) {
                Ok(()) => {}
                Err(e) => {
                    return Err(RestoreError::Journal {
                        path: swap.target.clone(),
                        why: format!(
                            "path {:?}: something appeared at the target after it was checked ({e}); it was kept",
                            swap.name
                        ),
                    });
                }
            },
        }
    }
    if let Err(e) = fs::rename(&swap.staging, &swap.target) {
        // Never leave the path absent: what was there goes back.
        if let Some(place) = &swap.displaced
            && !exists(&swap.target)
            && let Err(back) = fs::rename(place, &swap.target)
        {
            tracing::error!(path = %swap.name, from = %place.display(), error = %back,
                "could not move the previous state back; it is safe where it is");
        }
        return Err(io_error(&swap.target)(e));
    }
    sync_parent(&swap.target)?;
    crate::failpoint::hit(FAILPOINT);
    Ok(())
}

/// Undoes one swap, judged by what exists: a staged tree that went in goes back to staging, and
/// what was moved aside comes back.
pub fn undo(swap: &Swap) -> io::Result<()> {
    let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
    if !exists(&swap.staging) && exists(&swap.target) {
        fs::rename(&swap.target, &swap.staging)?;
    }
    if let Some(place) = &swap.displaced
        && exists(place)
        && !exists(&swap.target)
    {
        fs::rename(place, &swap.target)?;
    }
    match swap.target.parent() {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

fn sync_parent(target: &Path) -> Result<(), RestoreError> {
    match target.parent() {
        Some(parent) => File::open(parent).and_then(|d| d.sync_all()).map_err(io_error(parent)),
        None => Ok(()),
    }
}

/// Completes a restore that was interrupted between its swaps: every swap the journal names,
/// then the local record, then the journal goes. Returns the snapshot it restored, if any.
pub fn recover(work_dir: &Path) -> Result<Option<SnapshotId>, RestoreError> {
    if !journal_path(work_dir).exists() {
        return Ok(None);
    }
    let _lock = lock(work_dir)?;
    // Read under the lock: another process may have just completed it.
    let Some(journal) = read(work_dir)? else {
        return Ok(None);
    };
    tracing::warn!(snapshot_id = %journal.snapshot, paths = journal.swaps.len(),
        "completing a restore that was interrupted between its swaps");
    for swap in &journal.swaps {
        apply(swap)?;
    }
    complete(work_dir, &journal)?;
    Ok(Some(journal.snapshot))
}

/// After the swaps: the record (when the whole set was restored), then the journal goes.
pub fn complete(work_dir: &Path, journal: &Journal) -> Result<(), RestoreError> {
    if let Some(record) = &journal.record {
        crate::record::remember(
            work_dir,
            &record.repository,
            &record.state_dir,
            record.snapshot_id,
            record.latest_id,
        )
        .map_err(|e| RestoreError::Journal {
            path: work_dir.join(crate::record::RECORD_FILE),
            why: e.to_string(),
        })?;
        crate::failpoint::hit(FAILPOINT);
    }
    finish(work_dir)
}
