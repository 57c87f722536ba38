//! The local record in `work_dir`: which snapshot the local state directory came from and what
//! `latest/` was at that moment. It is how spotkeeper knows that local state descends from
//! `latest/` (keep it) or not (never overwrite `latest/` with it, never restore over it silently).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::snapshot_id::SnapshotId;

/// File name of the record inside `work_dir`.
pub const RECORD_FILE: &str = "record.json";

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read local record {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "local record {path} is damaged ({source}); move it aside to continue, spotkeeper will then treat local state as of unknown origin"
    )]
    Decode { path: PathBuf, source: serde_json::Error },
    #[error("cannot write local record {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// What the local state directory descends from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRecord {
    /// `s3://bucket/prefix` the ids refer to.
    pub repository: String,
    pub state_dir: PathBuf,
    /// The snapshot the local content was last restored from or uploaded as.
    pub snapshot_id: SnapshotId,
    /// What `latest/` pointed to at that moment: the only `latest/` this state may replace.
    pub latest_id: SnapshotId,
    pub updated_at: DateTime<Utc>,
}

impl LocalRecord {
    /// The `latest/` id this state may replace, if the record is about this repository and dir.
    pub fn base_for(&self, repository: &str, state_dir: &Path) -> Option<SnapshotId> {
        (self.repository == repository && self.state_dir == state_dir).then_some(self.latest_id)
    }

    /// `base_for` a set of state paths: the record names one of their directories (the first
    /// path when it was written; paths reordered or added in front keep their lineage).
    pub fn base_for_set(&self, repository: &str, dirs: &[PathBuf]) -> Option<SnapshotId> {
        dirs.iter().find_map(|dir| self.base_for(repository, dir))
    }
}

/// Reads the record, `None` when there is none yet.
pub fn load(work_dir: &Path) -> Result<Option<LocalRecord>, RecordError> {
    let path = work_dir.join(RECORD_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RecordError::Read { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| RecordError::Decode { path, source })
}

/// Records that the state in `state_dir` now is snapshot `snapshot_id` and may replace
/// `latest/` while `latest/` is `latest_id`.
pub fn remember(
    work_dir: &Path,
    repository: &str,
    state_dir: &Path,
    snapshot_id: SnapshotId,
    latest_id: SnapshotId,
) -> Result<(), RecordError> {
    save(
        work_dir,
        &LocalRecord {
            repository: repository.to_string(),
            state_dir: state_dir.to_path_buf(),
            snapshot_id,
            latest_id,
            updated_at: Utc::now(),
        },
    )
}

/// Writes the record durably: temp file, fsync, rename, fsync of the directory.
pub fn save(work_dir: &Path, record: &LocalRecord) -> Result<(), RecordError> {
    let path = work_dir.join(RECORD_FILE);
    let write_error = |source| RecordError::Write {
        path: path.clone(),
        source,
    };
    crate::private_fs::create_dir_all(work_dir).map_err(write_error)?;
    let temp = work_dir.join(format!(".{RECORD_FILE}.tmp"));
    let body = serde_json::to_vec_pretty(record).map_err(|e| write_error(io::Error::other(e)))?;
    let mut file = crate::private_fs::create_file(&temp).map_err(write_error)?;
    file.write_all(&body).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    fs::rename(&temp, &path).map_err(write_error)?;
    File::open(work_dir).and_then(|d| d.sync_all()).map_err(write_error)?;
    Ok(())
}

/// File in `work_dir` holding this writer's id and the machine identity it belongs to.
pub const WRITER_FILE: &str = "writer-id";

/// What identifies this machine for the writer id: the EC2 instance id when known, else the
/// systemd machine id and this boot's id. A machine cloned from an image or a volume snapshot
/// carries `work_dir`, but not this.
pub fn machine_identity(instance_id: Option<&str>) -> String {
    if let Some(id) = instance_id {
        return format!("instance:{id}");
    }
    let read = |path: &str| {
        fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "host:{}:{}",
        read("/etc/machine-id"),
        read("/proc/sys/kernel/random/boot_id")
    )
}

/// The writer id a one-shot command uses: the daemon's (whatever machine identity it recorded,
/// since a command does not ask IMDS), else one made for this host.
pub fn current_writer_id(work_dir: &Path) -> Result<String, RecordError> {
    if let Ok(text) = fs::read_to_string(work_dir.join(WRITER_FILE))
        && let Some(id) = text.lines().next().map(str::trim)
        && !id.is_empty()
    {
        return Ok(id.to_string());
    }
    writer_id(work_dir, &machine_identity(None))
}

/// This writer's id, one per `work_dir` and machine identity: created on first use, and made
/// anew when the identity changed (a clone of this machine's disk). Two daemons on one prefix
/// have different ids even on one host, so the lineage guard tells them apart.
pub fn writer_id(work_dir: &Path, identity: &str) -> Result<String, RecordError> {
    let path = work_dir.join(WRITER_FILE);
    if let Ok(text) = fs::read_to_string(&path) {
        let mut lines = text.lines();
        let id = lines.next().unwrap_or_default().trim();
        let recorded_for = lines.next().unwrap_or_default().trim();
        if !id.is_empty() && recorded_for == identity {
            return Ok(id.to_string());
        }
        if !id.is_empty() {
            tracing::warn!(
                writer = id,
                "this work_dir's writer id belongs to another machine (a cloned disk?); taking a new one"
            );
        }
    }
    let id = fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|_| {
            format!(
                "{}-{}",
                std::process::id(),
                Utc::now().timestamp_nanos_opt().unwrap_or(0)
            )
        });
    let write_error = |source| RecordError::Write {
        path: path.clone(),
        source,
    };
    crate::private_fs::create_dir_all(work_dir).map_err(write_error)?;
    let temp = work_dir.join(format!(".{WRITER_FILE}.tmp"));
    crate::private_fs::write(&temp, format!("{id}\n{identity}\n")).map_err(write_error)?;
    fs::rename(&temp, &path).map_err(write_error)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_scopes_to_repository_and_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("no record is fine"), None);
        let record = LocalRecord {
            repository: "s3://b/lab".into(),
            state_dir: PathBuf::from("/opt/openclaw/.openclaw"),
            snapshot_id: "2026-02-27-14-00".parse().expect("id"),
            latest_id: "2026-02-27-14-20".parse().expect("id"),
            updated_at: Utc::now(),
        };
        save(dir.path(), &record).expect("saves");
        let loaded = load(dir.path()).expect("loads").expect("present");
        assert_eq!(loaded, record);
        let base = loaded.base_for("s3://b/lab", Path::new("/opt/openclaw/.openclaw"));
        assert_eq!(base.map(|id| id.to_string()).as_deref(), Some("2026-02-27-14-20"));
        assert_eq!(
            loaded.base_for("s3://b/other", Path::new("/opt/openclaw/.openclaw")),
            None
        );
        assert_eq!(loaded.base_for("s3://b/lab", Path::new("/srv/x")), None);
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(RECORD_FILE), b"{not json").expect("write");
        let err = load(dir.path()).expect_err("damaged");
        assert!(err.to_string().contains(RECORD_FILE), "{err}");
    }

    #[test]
    fn a_writer_id_is_kept_per_machine_and_renewed_on_a_clone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = writer_id(dir.path(), "instance:i-1").expect("id");
        assert_eq!(writer_id(dir.path(), "instance:i-1").expect("id"), first);
        // The disk was cloned onto another instance: a different writer.
        let clone = writer_id(dir.path(), "instance:i-2").expect("id");
        assert_ne!(clone, first);
        assert_eq!(writer_id(dir.path(), "instance:i-2").expect("id"), clone);
        assert!(machine_identity(Some("i-abc")).contains("i-abc"));
        assert!(machine_identity(None).starts_with("host:"));
    }
}
