//! The layout of a repository in S3 and the reads every command shares:
//!
//! ```text
//! PREFIX/snapshots/<id>/state.tar.zst   the archive
//! PREFIX/snapshots/<id>/manifest.json   written last: its presence marks the snapshot complete
//! PREFIX/latest/state.tar.zst           copy of the newest complete snapshot's archive
//! PREFIX/latest/manifest.json           its manifest, written after the archive: the pointer
//! ```
//!
//! That is format 1. Format 2 (`crate::format2`) is a restic repository under `PREFIX/repo/` with
//! its pointer `PREFIX/latest.json`; once that pointer exists it is the head of the repository,
//! and format 1's snapshots are history (read, restored, pruned by age).

use std::collections::BTreeMap;

use crate::format2::pointer::{self, Pointer};
use crate::format2::{self, Engine};
use crate::manifest::{MAX_METADATA_BYTES, Manifest, ManifestError};
use crate::snapshot_id::SnapshotId;
use crate::store::{Store, StoreError};

/// Folder of all snapshots.
pub const SNAPSHOTS_DIR: &str = "snapshots/";
/// The newest complete snapshot's manifest: the one object whose replacement switches `latest/`.
pub const LATEST_MANIFEST: &str = "latest/manifest.json";
/// A copy of the newest complete snapshot's archive, for recovery with standard tools.
pub const LATEST_ARCHIVE: &str = "latest/state.tar.zst";
const ARCHIVE_NAME: &str = "state.tar.zst";
const MANIFEST_NAME: &str = "manifest.json";

/// User metadata on a snapshot's manifest object, so `list` can show totals with a HEAD.
pub const META_FILES: &str = "files";
pub const META_BYTES: &str = "bytes";
pub const META_CREATED_AT: &str = "created-at";

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Format2(#[from] crate::format2::Format2Error),
    #[error(transparent)]
    Password(#[from] crate::format2::PasswordError),
    /// `latest.json` is not authentic, or moved backwards.
    #[error(transparent)]
    Head(#[from] crate::format2::head::HeadError),
    #[error(
        "{repository} holds format 2 snapshots (an encrypted restic repository under repo/, pointer latest.json), \
         and this config has no [repository] section with the password: add `password_ssm` (or `password_file`) \
         under [repository]; docs/format.md explains"
    )]
    NeedsPassword { repository: String },
}

impl From<pointer::PointerError> for RepositoryError {
    fn from(error: pointer::PointerError) -> Self {
        match error {
            pointer::PointerError::Store(e) => RepositoryError::Store(e),
            pointer::PointerError::Manifest(e) => RepositoryError::Manifest(e),
            pointer::PointerError::Format2(e) => RepositoryError::Format2(e),
            pointer::PointerError::Head(e) => RepositoryError::Head(e),
        }
    }
}

impl RepositoryError {
    /// The S3 failure underneath, whichever format's code met it.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            RepositoryError::Store(e) => Some(e),
            RepositoryError::Format2(e) => e.store_error(),
            _ => None,
        }
    }

    /// An S3 failure worth retrying (never "no snapshot").
    pub fn is_transient(&self) -> bool {
        self.store_error().is_some_and(crate::store::is_transient)
    }
}

/// The head of the repository: what `latest` means.
#[derive(Debug, Clone)]
pub enum Head {
    /// Format 1's `latest/manifest.json` (no `latest.json` yet).
    One(Manifest),
    /// Format 2's `latest.json`.
    Two(Pointer),
}

impl Head {
    pub fn id(&self) -> SnapshotId {
        match self {
            Head::One(m) => m.id,
            Head::Two(p) => p.id,
        }
    }

    pub fn parent(&self) -> Option<SnapshotId> {
        match self {
            Head::One(m) => m.parent,
            Head::Two(p) => p.parent,
        }
    }

    pub fn writer(&self) -> Option<&str> {
        match self {
            Head::One(m) => m.host.writer.as_deref(),
            Head::Two(p) => p.writer.as_deref(),
        }
    }

    pub fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        match self {
            Head::One(m) => m.created_at,
            Head::Two(p) => p.created_at,
        }
    }

    pub fn bytes(&self) -> u64 {
        match self {
            Head::One(m) => m.totals.bytes,
            Head::Two(p) => p.bytes,
        }
    }

    /// The lineage guard's view of it.
    pub fn lineage(&self) -> (SnapshotId, Option<SnapshotId>, Option<&str>) {
        (self.id(), self.parent(), self.writer())
    }
}

/// The head and the ETag of the object it was read from. `latest.json` wins over format 1's
/// `latest/`; an unreadable `latest.json` is an error (`RepositoryError::Manifest`), never a
/// silent fall back to the older format. With `engine` (the password), `latest.json`'s MAC is
/// checked (`RepositoryError::Head` when it fails); without, it cannot be.
pub async fn head(store: &Store, engine: Option<&Engine>) -> Result<Option<(Head, Option<String>)>, RepositoryError> {
    if let Some((pointer, etag)) = pointer::read(store, engine).await? {
        return Ok(Some((Head::Two(pointer), etag)));
    }
    Ok(latest(store).await?.map(|(m, etag)| (Head::One(m), etag)))
}

/// Format 2's snapshots, or none when the repository under `repo/` does not exist yet.
pub async fn list_format2(engine: &Engine) -> Result<Vec<format2::Listed>, RepositoryError> {
    match engine.list().await {
        Ok(listed) => Ok(listed),
        Err(format2::Format2Error::Missing { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `latest.json` exists (a format-2 repository), damaged or not, for the error when no
/// password is configured. A GET, not a HEAD: S3 answers a HEAD's errors without a body, so
/// rejected credentials would read as "access denied".
pub async fn has_pointer(store: &Store) -> Result<bool, RepositoryError> {
    match store.get_bytes_capped(pointer::POINTER_KEY, MAX_METADATA_BYTES).await {
        Ok(found) => Ok(found.is_some()),
        Err(StoreError::TooLarge { .. }) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// `snapshots/<id>/state.tar.zst`
pub fn archive_key(id: &SnapshotId) -> String {
    format!("{SNAPSHOTS_DIR}{id}/{ARCHIVE_NAME}")
}

/// `snapshots/<id>/manifest.json`
pub fn manifest_key(id: &SnapshotId) -> String {
    format!("{SNAPSHOTS_DIR}{id}/{MANIFEST_NAME}")
}

/// One snapshot as seen in a listing.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: SnapshotId,
    /// Its manifest exists.
    pub complete: bool,
    pub archive_bytes: Option<u64>,
    /// Every key under `snapshots/<id>/`, relative to the prefix.
    pub keys: Vec<String>,
}

/// A listing of `snapshots/` that succeeded to the last page.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Sorted oldest first.
    pub snapshots: Vec<Listed>,
    /// Keys under `snapshots/` that are not part of any snapshot id (left alone, reported).
    pub foreign: Vec<String>,
}

/// Lists every snapshot. Only a listing that succeeded and found nothing means "no snapshot".
pub async fn list(store: &Store) -> Result<Listing, RepositoryError> {
    let objects = store.list(SNAPSHOTS_DIR).await?;
    let mut by_id: BTreeMap<SnapshotId, Listed> = BTreeMap::new();
    let mut foreign = Vec::new();
    for object in objects {
        let rest = object.key.strip_prefix(SNAPSHOTS_DIR).unwrap_or(&object.key);
        let parsed = rest
            .split_once('/')
            .and_then(|(id, name)| id.parse::<SnapshotId>().ok().map(|id| (id, name)));
        let Some((id, name)) = parsed else {
            foreign.push(object.key);
            continue;
        };
        let listed = by_id.entry(id).or_insert_with(|| Listed {
            id,
            complete: false,
            archive_bytes: None,
            keys: Vec::new(),
        });
        match name {
            MANIFEST_NAME => listed.complete = true,
            ARCHIVE_NAME => listed.archive_bytes = Some(object.size),
            _ => {}
        }
        listed.keys.push(object.key);
    }
    Ok(Listing {
        snapshots: by_id.into_values().collect(),
        foreign,
    })
}

/// Ids already used in the minute of `id`, complete or not: a new snapshot never reuses one.
pub async fn ids_in_minute(store: &Store, id: &SnapshotId) -> Result<Vec<SnapshotId>, RepositoryError> {
    let minute = SnapshotId::new(id.time(), 1).to_string();
    let objects = store.list(&format!("{SNAPSHOTS_DIR}{minute}")).await?;
    Ok(objects
        .iter()
        .filter_map(|o| {
            o.key
                .strip_prefix(SNAPSHOTS_DIR)
                .and_then(|rest| rest.split_once('/'))
                .and_then(|(id, _)| id.parse().ok())
        })
        .collect())
}

/// `latest/`'s manifest and its ETag, `None` when the repository has no snapshot yet.
pub async fn latest(store: &Store) -> Result<Option<(Manifest, Option<String>)>, RepositoryError> {
    let Some((bytes, etag)) = get_capped(store, LATEST_MANIFEST).await? else {
        return Ok(None);
    };
    let key = store.full_key(LATEST_MANIFEST);
    Ok(Some((Manifest::decode(&bytes, &key, None)?, etag)))
}

/// `latest/` for a writer about to replace it: when `latest/manifest.json` exists but cannot be
/// read, the newest complete snapshot stands in for it (with the damaged object's ETag, so the
/// replacement is still conditional). The lineage guard then judges against that snapshot, as the
/// boot decision does; a damaged pointer does not stop backups forever.
/// `excluding` is the writer's own new snapshot, which must not stand in for what it replaces.
pub async fn latest_for_writer(
    store: &Store,
    excluding: Option<SnapshotId>,
) -> Result<Option<(Manifest, Option<String>)>, RepositoryError> {
    match latest(store).await {
        Err(RepositoryError::Manifest(damaged)) => {
            let listing = list(store).await?;
            let Some(newest) = listing
                .snapshots
                .iter()
                .rev()
                .find(|s| s.complete && Some(s.id) != excluding)
                .map(|s| s.id)
            else {
                return Err(damaged.into());
            };
            let Some(manifest) = manifest(store, &newest).await? else {
                return Err(damaged.into());
            };
            let etag = store.get_bytes(LATEST_MANIFEST).await?.and_then(|(_, etag)| etag);
            tracing::warn!(error = %damaged, stand_in = %newest, "latest/ cannot be read; the newest complete snapshot stands in for it");
            Ok(Some((manifest, etag)))
        }
        other => other,
    }
}

/// The manifest of snapshot `id`, `None` when it does not exist or is incomplete.
pub async fn manifest(store: &Store, id: &SnapshotId) -> Result<Option<Manifest>, RepositoryError> {
    let relative = manifest_key(id);
    let Some((bytes, _)) = get_capped(store, &relative).await? else {
        return Ok(None);
    };
    let key = store.full_key(&relative);
    Ok(Some(Manifest::decode(&bytes, &key, Some(*id))?))
}

/// A metadata object, refused past `MAX_METADATA_BYTES` with an error naming its key.
async fn get_capped(store: &Store, relative: &str) -> Result<Option<(bytes::Bytes, Option<String>)>, RepositoryError> {
    match store.get_bytes_capped(relative, MAX_METADATA_BYTES).await {
        Err(StoreError::TooLarge { key, cap, .. }) => Err(ManifestError::TooLarge { key, cap }.into()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let id: SnapshotId = "2026-02-27-14-00-2".parse().expect("id");
        assert_eq!(archive_key(&id), "snapshots/2026-02-27-14-00-2/state.tar.zst");
        assert_eq!(manifest_key(&id), "snapshots/2026-02-27-14-00-2/manifest.json");
    }
}
