//! `PREFIX/latest.json`: spotkeeper's pointer to the newest snapshot of format 2. It names the
//! restic snapshot and carries the lineage (parent, writer) that the guard judges; it is only
//! ever replaced with `If-Match` on the ETag the writer read (or created with `If-None-Match`),
//! so two writers cannot both move it. restic never reads it: the repository under `repo/` is
//! complete without it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::manifest::{MAX_METADATA_BYTES, ManifestError};
use crate::snapshot_id::SnapshotId;
use crate::store::{Problem, PutCondition, Store, StoreError};

/// The pointer's key under the prefix.
pub const POINTER_KEY: &str = "latest.json";
/// The pointer's `format`.
pub const POINTER_FORMAT: u32 = 2;

/// What `latest.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// Always 2.
    pub format: u32,
    /// spotkeeper's id of the snapshot, also a tag on the restic snapshot.
    pub id: SnapshotId,
    /// restic's snapshot id (64 hex digits): `restic restore <restic_id>`.
    pub restic_id: String,
    /// What `latest.json` (or format 1's `latest/`) was when this snapshot was taken.
    pub parent: Option<SnapshotId>,
    /// The writer (a machine's local id) that took it: the lineage guard's second half.
    pub writer: Option<String>,
    pub hostname: String,
    pub created_at: DateTime<Utc>,
    pub files: u64,
    pub bytes: u64,
    /// Entries of the state that could not be copied. Their paths are in the restic snapshot's
    /// description (encrypted), never here: this object is plaintext.
    #[serde(default)]
    pub skipped: u64,
}

impl Pointer {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Parses `latest.json` read from `key`, refusing anything this version cannot trust.
    pub fn decode(bytes: &[u8], key: &str) -> Result<Pointer, ManifestError> {
        let invalid = |reason: String| ManifestError::Pointer {
            key: key.to_string(),
            reason,
        };
        #[derive(Deserialize)]
        struct VersionOnly {
            format: u32,
        }
        let version: VersionOnly = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if version.format != POINTER_FORMAT {
            return Err(ManifestError::PointerFormat {
                key: key.to_string(),
                found: version.format,
            });
        }
        let pointer: Pointer = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if pointer.restic_id.len() != 64 || !pointer.restic_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "restic_id {:?} is not 64 hex digits",
                pointer.restic_id
            )));
        }
        Ok(pointer)
    }
}

/// `latest.json` and its ETag; `None` when there is none (no format-2 snapshot yet).
pub async fn read(store: &Store) -> Result<Option<(Pointer, Option<String>)>, crate::repository::RepositoryError> {
    let got = match store.get_bytes_capped(POINTER_KEY, MAX_METADATA_BYTES).await {
        Err(StoreError::TooLarge { key, cap, .. }) => return Err(ManifestError::TooLarge { key, cap }.into()),
        other => other?,
    };
    let Some((bytes, etag)) = got else {
        return Ok(None);
    };
    Ok(Some((Pointer::decode(&bytes, &store.full_key(POINTER_KEY))?, etag)))
}

/// Why the pointer was not written.
#[derive(Debug)]
pub enum WriteError {
    /// Another writer replaced (or created) it since `etag` was read.
    Moved,
    Store(StoreError),
}

/// Replaces `latest.json` if it is still the object whose ETag is `etag` (`None`: only if
/// there is none).
/// Returns the new object's ETag (what the next write must match).
pub async fn write(store: &Store, pointer: &Pointer, etag: Option<String>) -> Result<Option<String>, WriteError> {
    let condition = match etag {
        Some(etag) => PutCondition::Matches(etag),
        None => PutCondition::Absent,
    };
    match store
        .put_bytes(
            POINTER_KEY,
            bytes::Bytes::from(pointer.encode()),
            "application/json",
            &[],
            condition,
        )
        .await
    {
        Ok(etag) => Ok(etag),
        Err(e) if e.problem() == Some(&Problem::PreconditionFailed) => Err(WriteError::Moved),
        Err(e) => Err(WriteError::Store(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer() -> Pointer {
        Pointer {
            format: POINTER_FORMAT,
            id: "2026-12-01-02-20".parse().expect("id"),
            restic_id: "ab".repeat(32),
            parent: Some("2026-12-01-02-00".parse().expect("id")),
            writer: Some("w-1".into()),
            hostname: "ip-10-0-0-1".into(),
            created_at: "2026-12-01T02:20:00Z".parse().expect("time"),
            files: 3,
            bytes: 42,
            skipped: 0,
        }
    }

    #[test]
    fn round_trips_and_refuses_what_it_cannot_trust() {
        let p = pointer();
        assert_eq!(Pointer::decode(&p.encode(), "k").expect("decode"), p);
        let mut newer = p.clone();
        newer.format = 3;
        let err = Pointer::decode(&newer.encode(), "b/latest.json").expect_err("format 3");
        assert!(err.to_string().contains("b/latest.json"), "{err}");
        let mut odd = p.clone();
        odd.restic_id = "../../etc".into();
        assert!(Pointer::decode(&odd.encode(), "k").is_err());
        assert!(Pointer::decode(b"{\"format\":2", "k").is_err());
    }
}
