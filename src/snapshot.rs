//! Taking a snapshot: back up the mirrors into format 2's repository (restic's format, through
//! rustic_core), then move the head, `latest.json`, to it, but only when the state descends from
//! the current head (the lineage guard). Format 2 is the only format written; format 1 is read
//! forever (`restore`, `verify`, `list`, `prune`) and a first format-2 snapshot on a format-1
//! prefix retires its `latest/`.

use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::format2::Engine;
use crate::format2::pointer::{self, Pointer};
use crate::manifest::{Host, ManifestError};
use crate::repository::{self, Head, LATEST_ARCHIVE, LATEST_MANIFEST, RepositoryError};
use crate::snapshot_id::SnapshotId;
use crate::store::Store;
use crate::tree::{Owner, Skipped};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error("cannot read the state's root {path}: {source}")]
    Root { path: PathBuf, source: std::io::Error },
    #[error(
        "refusing to replace the latest snapshot of {repository}: it is snapshot {latest}, but this state {origin}. \
         Another machine may be writing this prefix. Nothing was uploaded. If this machine is now the only \
         writer, run `spotkeeper snapshot --force`; to look at the latest snapshot first, run \
         `spotkeeper restore --to DIR`"
    )]
    Diverged {
        repository: String,
        latest: SnapshotId,
        origin: String,
    },
    #[error(
        "snapshot {id} is complete in {repository}, but the latest snapshot (latest.json) was replaced by \
         another writer while it was uploading, so latest.json was left as that writer made it"
    )]
    LatestMoved { repository: String, id: SnapshotId },
    #[error("snapshot task failed: {0}")]
    Task(String),
}

/// What to snapshot and how.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    /// A directory holding one directory per state path, named as the path (spotkeeper's
    /// mirrors, filled by the descriptor walk: the engine never reads the live state).
    pub source: PathBuf,
    /// Each path's files and bytes (its owner and mode are read from `source`).
    pub paths: Vec<crate::mirror::PathTotals>,
    pub host: Host,
    /// The head the local state descends from (the local record), if known.
    pub base: Option<SnapshotId>,
    /// Move the head even when the state does not descend from it.
    pub force: bool,
    pub now: DateTime<Utc>,
    /// Entries the walk that filled the mirrors skipped: listed in the snapshot's description.
    pub also_skipped: Vec<Skipped>,
    /// Taken to follow changes (`[snapshot] follow`), not on the schedule: tagged `follow`,
    /// kept only `retention.follow_keep` unless the tiers keep it.
    pub follow: bool,
    /// The image the app runs (the daemon knows it; the CLI alone does not): recorded in the
    /// snapshot's description, so a state can be matched with the app version that wrote it.
    pub image: Option<crate::manifest::ImageInfo>,
}

/// What a snapshot did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotReport {
    pub id: SnapshotId,
    pub parent: Option<SnapshotId>,
    pub files: u64,
    pub bytes: u64,
    pub archive_bytes: u64,
    pub duration_ms: u64,
    /// HTTP requests sent to S3 for this snapshot, retries included.
    pub requests: u64,
    /// Paths that could not be archived (unreadable, vanished while read, special files,
    /// non-UTF-8 names, too deep, links leaving the tree); the manifest has the reasons.
    pub skipped: Vec<String>,
    /// Files that changed size while being read (only without a freeze).
    pub torn: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Format 2: restic's id of the snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restic_id: Option<String>,
    /// Each state path's files and bytes.
    pub paths: Vec<crate::mirror::PathTotals>,
    /// `requests` by S3's price classes.
    pub request_counts: crate::store::RequestCounts,
}

/// What one snapshot attempt did: the `--json` schema of `spotkeeper snapshot`, the same with
/// or without the daemon (the CLI alone never freezes: `freeze_ms` is 0).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum SnapshotOutcome {
    Uploaded {
        id: SnapshotId,
        parent: Option<SnapshotId>,
        files: u64,
        bytes: u64,
        archive_bytes: u64,
        duration_ms: u64,
        freeze_ms: u64,
        requests: u64,
        /// Entries that could not be archived (listed in the manifest).
        skipped: usize,
        /// Format 2: restic's id of the snapshot (`restic restore RESTIC_ID`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        restic_id: Option<String>,
    },
    Unchanged {
        since: SnapshotId,
        freeze_ms: u64,
    },
}

impl SnapshotReport {
    pub fn outcome(&self, freeze_ms: u64) -> SnapshotOutcome {
        SnapshotOutcome::Uploaded {
            id: self.id,
            parent: self.parent,
            files: self.files,
            bytes: self.bytes,
            archive_bytes: self.archive_bytes,
            duration_ms: self.duration_ms,
            freeze_ms,
            requests: self.requests,
            skipped: self.skipped.len(),
            restic_id: self.restic_id.clone(),
        }
    }
}

/// May a state whose base is `base` replace `latest/` (whose id, parent and writer are given)?
/// A `latest/` this very writer put on top of `base` also counts: the process that wrote it died
/// before it could update the local record.
pub fn check_lineage(
    latest: Option<(SnapshotId, Option<SnapshotId>, Option<&str>)>,
    base: Option<SnapshotId>,
    writer: &str,
    force: bool,
) -> Result<(), String> {
    let Some((latest_id, latest_parent, latest_writer)) = latest else {
        return Ok(());
    };
    match base {
        _ if force => Ok(()),
        Some(base) if base == latest_id => Ok(()),
        Some(base) if latest_parent == Some(base) && latest_writer == Some(writer) => Ok(()),
        // This writer's own first snapshot, whose record update was lost (killed, or the
        // pointer's answer lost).
        None if latest_parent.is_none() && latest_writer == Some(writer) => Ok(()),
        Some(base) => Err(format!("descends from {base}")),
        None => Err("was not restored from or uploaded to this repository by this machine".into()),
    }
}

/// Takes one snapshot of `request.source` into format 2's repository (creating it on an empty
/// prefix, or on one that held only format 1), then moves `latest.json` to it under the lineage
/// guard. Format 2 is the only format written: the CLI and the daemon both come here.
pub async fn take(store: &Store, engine: &Engine, request: SnapshotRequest) -> Result<SnapshotReport, SnapshotError> {
    let writer = request.host.writer.as_deref();
    let prepared = prepare(store, engine, request.base, writer, request.force).await;
    match prepared {
        Ok(prepared) => take_prepared(store, engine, prepared, request).await,
        Err(e) => {
            engine.forget_known();
            Err(e)
        }
    }
}

/// `take` once `prepare` has read what it needs from S3 (`spotkeeper snapshot` prepares while
/// it fills the mirrors).
pub async fn take_prepared(
    store: &Store,
    engine: &Engine,
    prepared: Prepared,
    request: SnapshotRequest,
) -> Result<SnapshotReport, SnapshotError> {
    let taken = take_steps(store, engine, prepared, request).await;
    if taken.is_err() {
        // Whatever failed, the next snapshot trusts nothing it knew: it reads the head again.
        engine.forget_known();
    }
    taken
}

/// The restic host of every snapshot: stable, because rustic_core finds a snapshot's parent by
/// host (and paths), and Spot machines' hostnames change. The real hostname is in `latest.json`.
pub const FORMAT2_HOST: &str = "spotkeeper";

/// What a snapshot reads before its backup: the head with its ETag and format 2's snapshots,
/// the repository opened (its key derived) or created on the way. None of it depends on the
/// state, so it can be read while the mirrors are filled.
#[derive(Debug)]
pub struct Prepared {
    head: Option<Head>,
    etag: Option<String>,
    listed: Vec<crate::format2::Listed>,
    /// This engine wrote the head last: nothing was read from S3.
    steady: bool,
    /// When `prepare` started, and the store's request counts then: a snapshot's duration and
    /// requests count its reads and the repository's creation too.
    started: Instant,
    requests_before: u64,
    counts_before: crate::store::RequestCounts,
}

/// The first steps of a snapshot. In the steady state (this engine wrote the head last) it reads
/// nothing from S3: the head and its ETag and the snapshots are what the engine knows; the
/// pointer's conditional write fails if anyone else moved the head. Otherwise it reads the head,
/// refuses a state that does not descend from it (before any repository is created), then lists
/// format 2's snapshots, creating the repository when there is none.
pub async fn prepare(
    store: &Store,
    engine: &Engine,
    base: Option<SnapshotId>,
    writer: Option<&str>,
    force: bool,
) -> Result<Prepared, SnapshotError> {
    let started = Instant::now();
    let requests_before = store.requests();
    let counts_before = store.request_counts();
    if let Some(((pointer, etag), listed)) = engine.known_head().zip(engine.known_snapshots()) {
        return Ok(Prepared {
            head: Some(Head::Two(pointer)),
            etag: Some(etag),
            listed,
            steady: true,
            started,
            requests_before,
            counts_before,
        });
    }
    let (head, etag) = head_for_writer(store, engine).await?;
    lineage(store, head.as_ref(), base, writer.unwrap_or_default(), force)?;
    let listed = ensure_format2(engine).await?;
    Ok(Prepared {
        head,
        etag,
        listed,
        steady: false,
        started,
        requests_before,
        counts_before,
    })
}

/// `check_lineage` as the error a snapshot returns.
fn lineage(
    store: &Store,
    head: Option<&Head>,
    base: Option<SnapshotId>,
    writer: &str,
    force: bool,
) -> Result<(), SnapshotError> {
    let Some(head) = head else {
        return Ok(());
    };
    check_lineage(Some(head.lineage()), base, writer, force).map_err(|origin| SnapshotError::Diverged {
        repository: repository_url(store),
        latest: head.id(),
        origin,
    })
}

/// `take`'s steps after `prepare`.
async fn take_steps(
    store: &Store,
    engine: &Engine,
    prepared: Prepared,
    request: SnapshotRequest,
) -> Result<SnapshotReport, SnapshotError> {
    let Prepared {
        head,
        etag,
        listed,
        steady,
        started,
        requests_before,
        counts_before,
    } = prepared;
    // Checked again with the request's own lineage (a prepared head is only ever this request's).
    let writer = request.host.writer.as_deref().unwrap_or_default();
    lineage(store, head.as_ref(), request.base, writer, request.force)?;
    // The mirrors' totals are what the backup reads (rustic_core reports its bytes as it goes).
    let total: u64 = request.paths.iter().map(|p| p.bytes).sum();
    let _progress = crate::progress::begin("snapshot", Some(total), None);
    let minute = SnapshotId::new(request.now, 1);
    // Format 1's ids in this minute: only a prefix whose head this engine did not write can
    // have them (a format-1 writer moves `latest/`, never `latest.json`).
    let mut taken = if steady {
        Vec::new()
    } else {
        repository::ids_in_minute(store, &minute).await?
    };
    taken.extend(
        listed
            .iter()
            .filter_map(|l| l.id)
            .filter(|id| SnapshotId::new(id.time(), 1) == minute),
    );
    let id = SnapshotId::first_free(request.now, &taken);
    let source = request.source.clone();
    let mut tags = vec![id.to_string(), crate::format2::SEALED_HEAD_TAG.to_string()];
    if request.follow {
        tags.push(crate::format2::FOLLOW_TAG.to_string());
    }
    let now = request.now;
    let skipped: Vec<Skipped> = request.also_skipped.clone();
    // Each path's name, owner, mode and totals and the skipped entries go into the snapshot's
    // description, which is encrypted like everything in the repository (`spotkeeper list --json`
    // shows the skipped entries).
    let mut paths = Vec::with_capacity(request.paths.len());
    for path in &request.paths {
        paths.push(crate::format2::PathRecord {
            name: path.name.clone(),
            root: root_owner(&request.source.join(&path.name))?,
            files: path.files,
            bytes: path.bytes,
        });
    }
    // The state's regular files and their bytes, as the description records them (restic's
    // summary also counts links and other entries as files).
    let (files, bytes) = paths.iter().fold((0, 0), |(f, b), p| (f + p.files, b + p.bytes));
    let description = Some(crate::format2::description(&paths, request.image.as_ref(), &skipped));
    let listed_skipped = crate::format2::skipped_of(description.as_deref());
    let parent = match &head {
        Some(Head::Two(pointer)) => Some(pointer.restic_id.clone()),
        _ => None,
    };
    let parent_restic_id = parent.clone();
    let backup = engine
        .with(move |repo| repo.backup(&source, FORMAT2_HOST, &tags, now, description, parent.as_deref()))
        .await
        .map_err(RepositoryError::from)?;
    let key = engine.pointer_key().await.map_err(RepositoryError::from)?;
    let pointer = Pointer {
        format: pointer::POINTER_FORMAT,
        id,
        restic_id: backup.id.clone(),
        parent: head.as_ref().map(Head::id),
        writer: request.host.writer.clone(),
        hostname: request.host.hostname.clone(),
        created_at: request.now,
        files,
        bytes,
        skipped: skipped.len() as u64,
    };
    let moved = || SnapshotError::LatestMoved {
        repository: repository_url(store),
        id,
    };
    let new_etag = match pointer::write(store, &pointer, &key, etag).await {
        Ok(etag) => etag,
        // The SDK retries a PUT whose answer was lost; the retry then finds our own pointer.
        Err(pointer::WriteError::Moved) => match pointer::read(store, Some(engine)).await {
            Ok(Some((current, etag))) if current.restic_id == pointer.restic_id => etag,
            _ => return Err(moved()),
        },
        Err(pointer::WriteError::Store(e)) => return Err(RepositoryError::from(e).into()),
    };
    engine.took(
        crate::format2::Listed {
            restic_id: backup.id.clone(),
            id: Some(id),
            time: request.now,
            hostname: FORMAT2_HOST.to_string(),
            files: Some(files),
            bytes: Some(bytes),
            data_added: Some(backup.data_added_packed),
            paths: None,
            follow: request.follow,
            // As a listing reads them back from the description.
            skipped: listed_skipped,
            image: request.image.clone(),
            parent: parent_restic_id,
            sealed_head: true,
        },
        pointer.clone(),
        new_etag,
    );
    if let Some(Head::One(_)) = head {
        retire_format1_latest(store).await;
    }
    Ok(SnapshotReport {
        id,
        parent: pointer.parent,
        files,
        bytes,
        archive_bytes: backup.data_added_packed,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        requests: store.requests() - requests_before,
        skipped: skipped.iter().map(|s| s.path.clone()).collect(),
        torn: Vec::new(),
        created_at: request.now,
        restic_id: Some(backup.id),
        paths: request.paths.clone(),
        request_counts: store.request_counts().since(&counts_before),
    })
}

/// The owner and mode of the directory being snapshotted (the mirror's root has the state
/// directory's).
fn root_owner(source: &std::path::Path) -> Result<Owner, SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(source).map_err(|e| SnapshotError::Root {
        path: source.to_path_buf(),
        source: e,
    })?;
    Ok(Owner {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// The head a format-2 writer judges against, and the ETag its pointer must match (`None`: the
/// pointer must not exist yet). A `latest.json` that cannot be read or authenticated (edited, or
/// an older spotkeeper's without a MAC) is stood in for by the newest format-2 snapshot (those are
/// authenticated), whose lineage is unknown: only a state restored from or uploaded as exactly
/// that snapshot passes the guard, and its snapshot writes an authenticated pointer.
async fn head_for_writer(store: &Store, engine: &Engine) -> Result<(Option<Head>, Option<String>), SnapshotError> {
    let damaged = match repository::head(store, Some(engine)).await {
        Ok(Some((Head::Two(pointer), etag))) => return Ok((Some(Head::Two(pointer)), etag)),
        Ok(Some((Head::One(manifest), _))) => return Ok((Some(Head::One(manifest)), None)),
        Ok(None) => return Ok((None, None)),
        // A pointer of a newer format is another version's, never "damaged": refuse.
        Err(RepositoryError::Manifest(damaged)) if !matches!(damaged, ManifestError::PointerFormat { .. }) => {
            RepositoryError::Manifest(damaged)
        }
        Err(RepositoryError::Head(untrusted)) => RepositoryError::Head(untrusted),
        Err(e) => return Err(e.into()),
    };
    let listed = repository::list_format2(engine).await?;
    let Some(newest) = listed.iter().rev().find(|l| l.id.is_some()) else {
        return Err(damaged.into());
    };
    // Capped: a pointer too large to be one is refused, never read whole.
    let etag = store
        .get_bytes_capped(pointer::POINTER_KEY, crate::manifest::MAX_METADATA_BYTES)
        .await
        .map_err(RepositoryError::from)?
        .and_then(|(_, etag)| etag);
    tracing::warn!(error = %damaged, stand_in = ?newest.id, "latest.json cannot be read; the newest format-2 snapshot stands in for it");
    let stand_in = Pointer {
        format: pointer::POINTER_FORMAT,
        id: newest.id.unwrap_or(SnapshotId::new(newest.time, 1)),
        restic_id: newest.restic_id.clone(),
        parent: None,
        writer: None,
        hostname: newest.hostname.clone(),
        created_at: newest.time,
        files: newest.files.unwrap_or(0),
        bytes: newest.bytes.unwrap_or(0),
        skipped: 0,
    };
    Ok((Some(Head::Two(stand_in)), etag))
}

/// Format 2's snapshots; creates the repository first when nothing at all is under `repo/` (a
/// new prefix, or one that only held format 1). A `repo/` with objects but no readable config is
/// never initialised over: that is an error for a person.
async fn ensure_format2(engine: &Engine) -> Result<Vec<crate::format2::Listed>, SnapshotError> {
    match engine.list().await {
        Ok(listed) => Ok(listed),
        Err(crate::format2::Format2Error::Missing { location }) => {
            let prefix = format!("{}/", crate::format2::backend::REPO_DIR);
            let present = engine.store().list(&prefix).await.map_err(RepositoryError::from)?;
            if !present.is_empty() {
                return Err(RepositoryError::from(crate::format2::Format2Error::Repository {
                    location: location.clone(),
                    source: rustic_core::RusticError::new(
                        rustic_core::ErrorKind::Backend,
                        "objects exist under repo/ but there is no repo/config: refusing to create a repository over \
                         them; see docs/format.md (by-hand recovery)",
                    ),
                })
                .into());
            }
            tracing::info!(repository = %location, "creating the format-2 repository (first snapshot of format 2 here)");
            engine.init().await.map_err(RepositoryError::from)?;
            Ok(Vec::new())
        }
        Err(e) => Err(RepositoryError::from(e).into()),
    }
}

/// After the first format-2 snapshot: format 1's `latest/` is no longer the head. Removing it
/// makes an older spotkeeper refuse to boot-restore (it sees snapshots but no `latest/`) instead
/// of restoring state older than this; its snapshots stay, pruned by age.
pub(crate) async fn retire_format1_latest(store: &Store) {
    let keys = [LATEST_MANIFEST.to_string(), LATEST_ARCHIVE.to_string()];
    match store.delete(&keys[..1]).await {
        Ok(failed) if failed.is_empty() => {
            if let Err(e) = store.delete(&keys[1..]).await {
                tracing::warn!(error = %e, "could not remove format 1's latest/state.tar.zst; prune leaves it");
            }
            tracing::info!("format 1's latest/ retired: latest.json is the head now");
        }
        Ok(failed) => tracing::warn!(?failed, "could not retire format 1's latest/manifest.json"),
        Err(e) => tracing::warn!(error = %e, "could not retire format 1's latest/manifest.json"),
    }
}

fn repository_url(store: &Store) -> String {
    let prefix = store.full_key("");
    format!("s3://{}/{}", store.bucket(), prefix.trim_end_matches('/'))
        .trim_end_matches('/')
        .to_string()
}

/// This machine's name, for the manifest.
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SnapshotId {
        text.parse().expect("valid id")
    }

    #[test]
    fn lineage_allows_only_descendants_unless_forced() {
        let latest = id("2026-02-27-14-00");
        let older = id("2026-02-27-13-40");
        let oldest = id("2026-02-27-13-20");
        let written_here = Some((latest, Some(older), Some("host-a")));
        assert!(check_lineage(None, None, "host-a", false).is_ok());
        assert!(check_lineage(None, Some(older), "host-a", false).is_ok());
        assert!(check_lineage(written_here, Some(latest), "host-b", false).is_ok());
        // Our own snapshot whose record update was lost in a crash.
        assert!(check_lineage(written_here, Some(older), "host-a", false).is_ok());
        // The same shape from another host is a second writer.
        let err = check_lineage(written_here, Some(older), "host-b", false).expect_err("diverged");
        assert!(err.contains("2026-02-27-13-40"), "{err}");
        assert!(check_lineage(written_here, Some(oldest), "host-a", false).is_err());
        assert!(check_lineage(written_here, None, "host-a", false).is_err());
        // A first snapshot (no parent) this writer took but could not record.
        let first_here = Some((latest, None, Some("host-a")));
        assert!(check_lineage(first_here, None, "host-a", false).is_ok());
        assert!(check_lineage(first_here, None, "host-b", false).is_err());
        assert!(check_lineage(written_here, None, "host-b", true).is_ok());
        assert!(check_lineage(written_here, Some(oldest), "host-b", true).is_ok());
    }
}
