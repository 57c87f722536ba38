//! The restore drill: a backup nobody has restored is a hope. Download a snapshot, verify every
//! checksum while extracting it into a scratch directory, open every SQLite database read-only
//! and run `PRAGMA integrity_check`, then delete the scratch directory. Used daily by the daemon
//! and by `spotkeeper verify --deep`.

use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;

use crate::restore::{self, RestoreError, RestoreRequest};
use crate::snapshot_id::SnapshotId;
use crate::store::Store;

/// Scratch folders in `work_dir` are `drill-scratch.<pid>`: a drill by hand and the daemon's
/// daily one never share one.
pub const SCRATCH_PREFIX: &str = "drill-scratch.";
/// Where in the scratch directory the snapshot is restored.
const RESTORED_DIR: &str = "restored";
/// The failpoint between the restore and the database checks (`crate::failpoint`).
pub const RESTORED_FAILPOINT: &str = "drill-restored";
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("SQLite database {path} in snapshot {id} fails its integrity check: {message}")]
    Sqlite {
        id: SnapshotId,
        path: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("drill task failed: {0}")]
    Task(String),
}

/// What the drill checked.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub id: SnapshotId,
    pub files: u64,
    pub bytes: u64,
    /// SQLite databases that passed `PRAGMA integrity_check`, relative paths.
    pub databases: Vec<String>,
    pub duration_ms: u64,
}

/// Runs the drill on `snapshot` (default `latest/`). The scratch directory is removed on every path.
pub async fn run(
    store: &Store,
    engine: Option<&crate::format2::Engine>,
    work_dir: &Path,
    repository: &str,
    snapshot: Option<SnapshotId>,
) -> Result<DrillReport, DrillError> {
    let started = Instant::now();
    // Leftovers of drills that were killed: ours, never user data.
    if let Ok(entries) = fs::read_dir(work_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let alive = name
                .strip_prefix(SCRATCH_PREFIX)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(restore::process_alive);
            if name.starts_with(SCRATCH_PREFIX) && !alive {
                remove(&entry.path())?;
            }
        }
    }
    let scratch = work_dir.join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
    remove(&scratch)?;
    // The scratch directory is ours, 0700 whatever the umask; the snapshot's tree goes inside
    // it with the snapshot's own modes (its root may well be 0755), closed to others by it.
    crate::private_fs::create_dir_all(&scratch).map_err(|source| DrillError::Io {
        path: scratch.clone(),
        source,
    })?;
    let restored = scratch.join(RESTORED_DIR);
    let request = RestoreRequest {
        snapshot,
        destination: restore::Destination::Dir(restored.clone()),
        only: None,
        force: false,
        origin: None,
        repository: repository.to_string(),
        now: Utc::now(),
    };
    let result = async {
        let report = restore::restore(store, engine, &request).await?;
        crate::failpoint::hit(RESTORED_FAILPOINT);
        let id = report.id;
        let root = restored.clone();
        let databases = tokio::task::spawn_blocking(move || check_databases(&root, id))
            .await
            .map_err(|e| DrillError::Task(e.to_string()))??;
        Ok(DrillReport {
            id,
            files: report.files,
            bytes: report.bytes,
            databases,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
    .await;
    remove(&scratch)?;
    result
}

fn remove(path: &Path) -> Result<(), DrillError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DrillError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Every SQLite database under `root` (by its header), checked read-only. Walked by descriptor
/// (a restored tree may hold paths past PATH_MAX and links to anywhere: none is followed); each
/// database is opened through its directory's descriptor (`/proc/self/fd/N/NAME`), so its path
/// is short whatever its depth.
fn check_databases(root: &Path, id: SnapshotId) -> Result<Vec<String>, DrillError> {
    use crate::walk::fd;
    use std::os::fd::{AsFd, AsRawFd};
    let io_error = |rel: &str| {
        let path = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        move |source| DrillError::Io { path, source }
    };
    let mut found = Vec::new();
    let mut stack = vec![(fd::open_dir_path(root).map_err(io_error(""))?, String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for name in fd::list_dir(dir.as_fd()).map_err(io_error(&rel))? {
            let child = fd::join(&rel, &fd::shown(name.to_bytes()));
            let Ok(stat) = fd::stat_at(dir.as_fd(), &name) else {
                continue;
            };
            match fd::file_type(&stat) {
                rustix::fs::FileType::Directory => {
                    stack.push((fd::open_dir_at(dir.as_fd(), &name).map_err(io_error(&child))?, child));
                }
                rustix::fs::FileType::RegularFile if is_sqlite(dir.as_fd(), &name) => {
                    let path = Path::new("/proc/self/fd")
                        .join(dir.as_raw_fd().to_string())
                        .join(std::ffi::OsStr::from_bytes(name.to_bytes()));
                    integrity_check(&path).map_err(|message| DrillError::Sqlite {
                        id,
                        path: child.clone(),
                        message,
                    })?;
                    found.push(child);
                }
                _ => {}
            }
        }
    }
    found.sort();
    Ok(found)
}

fn is_sqlite(dir: std::os::fd::BorrowedFd<'_>, name: &std::ffi::CStr) -> bool {
    let mut header = [0u8; 16];
    crate::walk::fd::open_file_at(dir, name)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok_and(|()| &header == SQLITE_MAGIC)
}

fn integrity_check(path: &Path) -> Result<(), String> {
    use rusqlite::{Connection, OpenFlags};
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| e.to_string())?;
    let mut statement = db.prepare("PRAGMA integrity_check").map_err(|e| e.to_string())?;
    let rows: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if rows == ["ok"] { Ok(()) } else { Err(rows.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_checks_sqlite_databases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_path = dir.path().join("memory/main.sqlite");
        fs::create_dir_all(db_path.parent().expect("parent")).expect("dirs");
        let db = rusqlite::Connection::open(&db_path).expect("open");
        db.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .expect("create");
        fs::write(dir.path().join("notes.md"), "# not a database").expect("write");
        let id: SnapshotId = "2026-11-23-10-00".parse().expect("id");
        let found = check_databases(dir.path(), id).expect("check");
        assert_eq!(found, ["memory/main.sqlite"]);
        drop(db);
        // A damaged database is named.
        let mut bytes = fs::read(&db_path).expect("read");
        let len = bytes.len();
        for b in &mut bytes[100..len.min(4096)] {
            *b = 0xff;
        }
        fs::write(&db_path, bytes).expect("corrupt");
        let _ = fs::remove_file(dir.path().join("memory/main.sqlite-wal"));
        let err = check_databases(dir.path(), id).expect_err("corrupt");
        assert!(err.to_string().contains("memory/main.sqlite"), "{err}");
    }
}
