//! Restoring a snapshot: extract into a staging directory on the target's filesystem, verify
//! every checksum, make it durable, then swap it in with renames. A failed or interrupted restore
//! leaves the target exactly as it was; local state is moved aside, never deleted.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_util::io::SyncIoBridge;

use crate::archive::{self, ArchiveError};
use crate::catalog::{self, Catalog, Detail, Found, HeadRead};
use crate::format2::{self, Engine};
use crate::manifest::Manifest;
use crate::repository::{self, Head, LATEST_ARCHIVE, RepositoryError};
use crate::snapshot_id::SnapshotId;
use crate::store::Store;

mod journal;
pub mod plan;
pub use journal::{JOURNAL_FILE, pending as journal_pending};
pub use plan::TargetState;

/// At every start (daemon, `restore`, `snapshot`), before anything looks at the state: completes
/// a restore that was killed between its swaps, then removes what restores killed earlier left
/// beside each of `dirs` (staging directories of processes that are gone: a full copy of the
/// state each). Returns the snapshot a completed restore restored.
pub fn recover(work_dir: &Path, dirs: &[PathBuf]) -> Result<Option<SnapshotId>, RestoreError> {
    let completed = journal::recover(work_dir)?;
    for dir in dirs {
        remove_stale_staging(dir);
    }
    Ok(completed)
}

/// Suffix of the staging directory, created beside the target: `<parent>/.<name>.spotkeeper-staging.<pid>`.
pub const STAGING_SUFFIX: &str = "spotkeeper-staging";
/// Suffix of the folder beside the state directory where replaced local state is kept:
/// `<parent>/<name>.displaced/<time>/<name>`.
pub const DISPLACED_SUFFIX: &str = "displaced";

/// Where state replaced by a restore of `target` is kept. Beside the target, never in `work_dir`:
/// under systemd each ReadWritePaths=/StateDirectory= path is its own mount, and rename(2) cannot
/// cross mounts (EXDEV), while the swap must be renames.
pub fn displaced_root(target: &Path) -> PathBuf {
    let parent = target.parent().unwrap_or_else(|| Path::new("/"));
    parent.join(format!("{}.{DISPLACED_SUFFIX}", target_name(target)))
}

fn target_name(target: &Path) -> String {
    target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into())
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(
        "no snapshot in {repository}: there is no latest/ and the listing of snapshots/ found no complete snapshot"
    )]
    NoSnapshot { repository: String },
    #[error(
        "{repository} has no latest/manifest.json but holds {count} complete snapshot(s), the newest {newest}; \
         refusing to guess: restore one with --snapshot ID"
    )]
    LatestMissing {
        repository: String,
        newest: SnapshotId,
        count: usize,
    },
    #[error(
        "snapshot {id} does not exist in {repository}, or is incomplete (no manifest); `spotkeeper list` shows what exists"
    )]
    SnapshotNotFound { repository: String, id: SnapshotId },
    #[error("the archive of snapshot {id} is missing from {repository} (looked for {keys})")]
    ArchiveMissing {
        repository: String,
        id: SnapshotId,
        keys: String,
    },
    #[error(
        "{repository} holds more than one format-2 snapshot with id {id} (restic ids {restic_ids}): two writers \
         took snapshots in the same minute; refusing to guess. Restore one by hand with restic (docs/format.md)"
    )]
    Ambiguous {
        repository: String,
        id: SnapshotId,
        restic_ids: String,
    },
    #[error(
        "refusing to restore snapshot {id}: it holds {reason} at {path}; nothing was changed (restore never plants \
         such entries)"
    )]
    Unsafe {
        id: SnapshotId,
        path: PathBuf,
        reason: String,
    },
    #[error("download of {key} failed: {source}")]
    Download { key: String, source: io::Error },
    #[error("refusing to restore into {target}: {why}. Nothing was changed. {hint}")]
    Refused { target: PathBuf, why: String, hint: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("restore task failed: {0}")]
    Task(String),
    #[error("cannot restore snapshot {id}: {why}. Nothing was changed")]
    Paths { id: SnapshotId, why: String },
    #[error(
        "an interrupted restore cannot be completed ({path}: {why}). Nothing more was changed; look at the paths \
         its journal (restore-journal.json in work_dir) names, then move the journal aside to go on"
    )]
    Journal { path: PathBuf, why: String },
}

/// Where a restore goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// The configured state paths (name, directory), in config order: each staged beside its
    /// own directory, then swapped in under the journal in `work_dir`.
    State {
        paths: Vec<(String, PathBuf)>,
        work_dir: PathBuf,
    },
    /// `--to DIR` (and the drill): an empty or absent directory; several paths go to
    /// `DIR/<name>`, one alone to `DIR` itself.
    Dir(PathBuf),
}

/// What to restore, and where.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// A specific snapshot, or the head.
    pub snapshot: Option<SnapshotId>,
    pub destination: Destination,
    /// Only this path (`--path NAME`); the local record is then left as it is.
    pub only: Option<String>,
    /// Move non-empty local state aside instead of refusing (state paths only).
    pub force: bool,
    /// What the local state descends from, for the refusal message.
    pub origin: Option<String>,
    pub repository: String,
    pub now: DateTime<Utc>,
}

impl RestoreRequest {
    fn is_state(&self) -> bool {
        matches!(self.destination, Destination::State { .. })
    }
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestoreReport {
    pub id: SnapshotId,
    /// What `latest/` was when restoring (the base for the local record).
    pub latest: Option<SnapshotId>,
    pub target: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub archive_bytes: u64,
    pub duration_ms: u64,
    /// Where the previous local state was moved, if anything was there.
    pub displaced: Option<PathBuf>,
    /// Paths whose setuid/setgid bits were dropped (restore never plants them).
    pub privilege_dropped: Vec<String>,
    /// Each restored path.
    #[serde(default)]
    pub paths: Vec<RestoredPath>,
    /// Configured paths the snapshot does not hold (left as they were).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// One restored path.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestoredPath {
    pub name: String,
    pub target: PathBuf,
    pub files: u64,
    pub bytes: u64,
    /// Where its previous local content was moved, if it had any.
    pub displaced: Option<PathBuf>,
}

/// Looks at `target` without changing it.
pub fn inspect(target: &Path) -> Result<TargetState, RestoreError> {
    match fs::read_dir(target) {
        Ok(mut entries) => Ok(if entries.next().is_some() {
            TargetState::NonEmpty
        } else {
            TargetState::Empty
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TargetState::Absent),
        Err(source) => Err(RestoreError::Io {
            path: target.to_path_buf(),
            source,
        }),
    }
}

/// What a restore reads.
#[derive(Debug, Clone)]
pub enum Chosen {
    /// Format 1: an archive and its manifest.
    One(Box<Manifest>),
    /// Format 2: a snapshot of the restic repository.
    Two(Chosen2),
}

#[derive(Debug, Clone)]
pub struct Chosen2 {
    pub id: SnapshotId,
    pub restic_id: String,
    pub files: Option<u64>,
    pub bytes: Option<u64>,
}

impl Chosen {
    pub fn id(&self) -> SnapshotId {
        match self {
            Chosen::One(m) => m.id,
            Chosen::Two(c) => c.id,
        }
    }
}

/// The engine, or the error that says format 2 needs a password.
fn need_engine<'a>(engine: Option<&'a Engine>, repository: &str) -> Result<&'a Engine, RestoreError> {
    engine.ok_or_else(|| {
        RepositoryError::NeedsPassword {
            repository: repository.to_string(),
        }
        .into()
    })
}

/// Resolves what to restore: `snapshot` (format 2 first, then format 1) or the head
/// (`latest.json`, else format 1's `latest/`). Also returns the head's id.
pub async fn resolve(
    store: &Store,
    engine: Option<&Engine>,
    snapshot: Option<SnapshotId>,
    repository: &str,
) -> Result<(Chosen, Option<SnapshotId>), RestoreError> {
    choose(
        catalog::read(store, engine, Detail::Listing).await?,
        store,
        snapshot,
        repository,
    )
    .await
}

/// `resolve` on a catalog already read; `store` only reads a format-1 snapshot's manifest.
pub async fn choose(
    catalog: Catalog,
    store: &Store,
    snapshot: Option<SnapshotId>,
    repository: &str,
) -> Result<(Chosen, Option<SnapshotId>), RestoreError> {
    if let Some(id) = snapshot {
        // The head only informs the local record: a damaged one must not block a named snapshot,
        // nor one that is not authentic: the named snapshot is (restic's files are).
        match catalog.head() {
            HeadRead::Unreadable(e) => tracing::warn!(error = %e, "ignoring an unreadable latest pointer"),
            HeadRead::Untrusted { error, .. } => {
                tracing::warn!(error = %error, "ignoring a latest pointer that cannot be trusted")
            }
            HeadRead::Absent | HeadRead::Found(_) => {}
        }
        let head_id = catalog.head_id();
        let not_found = || -> Result<(Chosen, Option<SnapshotId>), RestoreError> {
            // A format-2 prefix read without a password: say what is missing, not "not found".
            catalog.require_format2()?;
            Err(RestoreError::SnapshotNotFound {
                repository: repository.to_string(),
                id,
            })
        };
        return match catalog.find(id) {
            Found::Head(pointer) => Ok((Chosen::Two(chosen_of_pointer(pointer.clone())), head_id)),
            Found::Two(listed) => Ok((Chosen::Two(chosen2(listed, id)), head_id)),
            Found::Ambiguous(restic_ids) => Err(RestoreError::Ambiguous {
                repository: repository.to_string(),
                id,
                restic_ids: restic_ids.join(", "),
            }),
            Found::One => match repository::manifest(store, &id).await? {
                Some(manifest) => Ok((Chosen::One(Box::new(manifest)), head_id)),
                None => not_found(),
            },
            Found::Missing => not_found(),
        };
    }
    let catalog = catalog.followable()?;
    match catalog.head() {
        HeadRead::Found(Head::Two(pointer)) => {
            catalog.require_format2()?;
            Ok((Chosen::Two(chosen_of_pointer(pointer.clone())), Some(pointer.id)))
        }
        HeadRead::Found(Head::One(manifest)) => Ok((Chosen::One(Box::new(manifest.clone())), Some(manifest.id))),
        // No head: only listings that succeeded and found no complete snapshot mean "none".
        _ => match catalog.newest_complete() {
            Some(newest) => Err(RestoreError::LatestMissing {
                repository: repository.to_string(),
                newest: newest.id(),
                count: catalog.complete_count(),
            }),
            None => Err(RestoreError::NoSnapshot {
                repository: repository.to_string(),
            }),
        },
    }
}

fn chosen_of_pointer(pointer: crate::format2::pointer::Pointer) -> Chosen2 {
    Chosen2 {
        id: pointer.id,
        restic_id: pointer.restic_id,
        files: Some(pointer.files),
        bytes: Some(pointer.bytes),
    }
}

fn chosen2(listed: &format2::Listed, id: SnapshotId) -> Chosen2 {
    Chosen2 {
        id,
        restic_id: listed.restic_id.clone(),
        files: listed.files,
        bytes: listed.bytes,
    }
}

/// Restores a snapshot: every path it holds that the destination names (or `request.only`),
/// staged, verified and made durable before anything is swapped in; into the state paths under
/// the swap journal, so that a kill leaves either the old set or (at the next start) the new one.
pub async fn restore(
    store: &Store,
    engine: Option<&Engine>,
    request: &RestoreRequest,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    if let Destination::State { work_dir, paths } = &request.destination {
        let dirs: Vec<PathBuf> = paths.iter().map(|(_, dir)| dir.clone()).collect();
        recover(work_dir, &dirs)?;
    }
    // What would be refused after the download is refused before it.
    match &request.destination {
        Destination::State { paths, .. } => {
            for (name, dir) in paths {
                if request.only.as_deref().is_none_or(|only| only == name) {
                    check_target(request, dir, inspect(dir)?)?;
                }
            }
        }
        Destination::Dir(dir) => check_target(request, dir, inspect(dir)?)?,
    }
    let (chosen, latest) = resolve(store, engine, request.snapshot, &request.repository).await?;
    let held: Vec<format2::PathRecord> = match &chosen {
        Chosen::One(manifest) => vec![format2::PathRecord {
            name: crate::config::SHORTHAND_PATH_NAME.to_string(),
            root: manifest.root,
            files: manifest.totals.files,
            bytes: manifest.totals.bytes,
        }],
        Chosen::Two(two) => layout(need_engine(engine, &request.repository)?, two).await?,
    };
    let held_names: Vec<String> = held.iter().map(|p| p.name.clone()).collect();
    let refused = |why: String| RestoreError::Paths { id: chosen.id(), why };
    let (targets, missing): (Vec<Target>, Vec<String>) = match &request.destination {
        Destination::State { paths, .. } => {
            let configured: Vec<String> = paths.iter().map(|(name, _)| name.clone()).collect();
            let planned = plan::plan(&held_names, &configured, request.only.as_deref()).map_err(refused)?;
            let targets = planned
                .restore
                .into_iter()
                .filter_map(|(from, name)| {
                    let dir = paths.iter().find(|(n, _)| *n == name)?.1.clone();
                    Some(Target { name, from, dir })
                })
                .collect();
            (targets, planned.missing)
        }
        Destination::Dir(dir) => {
            let planned = plan::plan_to_dir(&held_names, request.only.as_deref()).map_err(refused)?;
            let targets = planned
                .into_iter()
                .map(|(name, nested)| Target {
                    dir: if nested { dir.join(&name) } else { dir.clone() },
                    from: name.clone(),
                    name,
                })
                .collect();
            (targets, Vec::new())
        }
    };
    for name in &missing {
        tracing::warn!(path = %name, snapshot_id = %chosen.id(), "the snapshot does not hold this state path (taken before it was configured); it is left as it is");
    }
    let mut stagings: Vec<PathBuf> = Vec::with_capacity(targets.len());
    for target in &targets {
        match prepare_staging(&target.dir) {
            Ok(staging) => stagings.push(staging),
            Err(e) => {
                stagings.iter().for_each(|s| remove_staging(s));
                return Err(e);
            }
        }
    }
    let staged = stage(store, engine, request, &chosen, &held, &targets, &stagings).await;
    let unpacked = match staged {
        Ok(unpacked) => unpacked,
        Err(e) => {
            stagings.iter().for_each(|s| remove_staging(s));
            return Err(e);
        }
    };
    let swapped = swap_all(request, &chosen, latest, &targets, &stagings);
    let displaced = match swapped {
        Ok(displaced) => displaced,
        Err(e) => {
            // A journal that stays names these staging directories: the next start needs them.
            let journal_kept = match &request.destination {
                Destination::State { work_dir, .. } => work_dir.join(JOURNAL_FILE).exists(),
                Destination::Dir(_) => false,
            };
            if !journal_kept {
                stagings.iter().for_each(|s| remove_staging(s));
            }
            return Err(e);
        }
    };
    let paths: Vec<RestoredPath> = targets
        .iter()
        .zip(&unpacked)
        .zip(displaced)
        .map(|((target, unpacked), displaced)| RestoredPath {
            name: target.name.clone(),
            target: target.dir.clone(),
            files: unpacked.files,
            bytes: unpacked.bytes,
            displaced,
        })
        .collect();
    Ok(RestoreReport {
        id: chosen.id(),
        latest,
        target: match &request.destination {
            Destination::Dir(dir) => dir.clone(),
            Destination::State { .. } => paths[0].target.clone(),
        },
        files: unpacked.iter().map(|u| u.files).sum(),
        bytes: unpacked.iter().map(|u| u.bytes).sum(),
        archive_bytes: unpacked.iter().map(|u| u.archive_bytes).sum(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        displaced: paths.iter().find_map(|p| p.displaced.clone()),
        privilege_dropped: unpacked.into_iter().flat_map(|u| u.privilege_dropped).collect(),
        paths,
        missing,
    })
}

/// The state paths a format-2 snapshot holds (its description).
async fn layout(engine: &Engine, two: &Chosen2) -> Result<Vec<format2::PathRecord>, RestoreError> {
    let restic_id = two.restic_id.clone();
    let tag = two.id.to_string();
    Ok(engine
        .with(move |repo| repo.layout(&restic_id, &tag))
        .await
        .map_err(RepositoryError::from)?)
}

/// Fills each staging directory with its path, verified, and makes them durable.
async fn stage(
    store: &Store,
    engine: Option<&Engine>,
    request: &RestoreRequest,
    chosen: &Chosen,
    held: &[format2::PathRecord],
    targets: &[Target],
    stagings: &[PathBuf],
) -> Result<Vec<archive::Unpacked>, RestoreError> {
    let unpacked = match chosen {
        Chosen::One(manifest) => {
            vec![download_and_unpack(store, manifest, &stagings[0], request.snapshot.is_none()).await?]
        }
        Chosen::Two(two) => {
            let staged: Vec<(format2::PathRecord, PathBuf)> = targets
                .iter()
                .zip(stagings)
                .filter_map(|(target, staging)| {
                    held.iter()
                        .find(|p| p.name == target.from)
                        .map(|record| (record.clone(), staging.clone()))
                })
                .collect();
            restore_format2(need_engine(engine, &request.repository)?, two, &staged).await?
        }
    };
    let syncing = Instant::now();
    for staging in stagings {
        sync_filesystem(staging)?;
    }
    tracing::debug!(
        ms = syncing.elapsed().as_millis() as u64,
        "restore: staged files durable (syncfs)"
    );
    Ok(unpacked)
}

/// Puts every staged path in place. `--to`: renames into the (empty) destination. State paths:
/// each target is looked at again (the download may have taken a while), the places for what
/// is there are chosen, the journal is written, then the swaps run; a swap that fails undoes
/// the ones before it. Returns where each path's previous content went.
fn swap_all(
    request: &RestoreRequest,
    chosen: &Chosen,
    latest: Option<SnapshotId>,
    targets: &[Target],
    stagings: &[PathBuf],
) -> Result<Vec<Option<PathBuf>>, RestoreError> {
    let mut states = Vec::with_capacity(targets.len());
    for target in targets {
        let state = inspect(&target.dir)?;
        check_target(request, &target.dir, state)?;
        states.push(state);
    }
    let (paths, work_dir) = match &request.destination {
        Destination::Dir(_) => {
            for ((target, staging), state) in targets.iter().zip(stagings).zip(&states) {
                let dir = &target.dir;
                if *state == TargetState::Empty {
                    fs::remove_dir(dir).map_err(io_error(dir))?;
                }
                fs::rename(staging, dir).map_err(io_error(dir))?;
            }
            return Ok(vec![None; targets.len()]);
        }
        Destination::State { paths, work_dir } => (paths, work_dir),
    };
    let stamp = request.now.format("%Y-%m-%dT%H-%M-%SZ").to_string();
    let mut swaps = Vec::with_capacity(targets.len());
    for ((target, staging), state) in targets.iter().zip(stagings).zip(&states) {
        let dir = &target.dir;
        let displaced = match state {
            TargetState::NonEmpty => Some(displaced_holder(dir, &stamp)?.join(target_name(dir))),
            TargetState::Absent | TargetState::Empty => None,
        };
        swaps.push(journal::Swap {
            name: target.name.clone(),
            target: dir.clone(),
            staging: staging.clone(),
            displaced,
        });
    }
    // The whole set restored: the record says the state is this snapshot. One path restored on
    // purpose leaves the record as it was (the rest of the set still descends from it).
    let record = match &request.only {
        Some(_) => None,
        None => Some(journal::RecordUpdate {
            repository: request.repository.clone(),
            state_dir: paths[0].1.clone(),
            snapshot_id: chosen.id(),
            latest_id: latest.unwrap_or(chosen.id()),
        }),
    };
    let entry = journal::Journal::new(chosen.id(), swaps, record);
    // One restore (or completion of one) at a time in this work_dir.
    let _lock = journal::lock(work_dir)?;
    // Every path staged and durable, nothing swapped, no journal yet.
    crate::failpoint::hit(journal::FAILPOINT);
    journal::write(work_dir, &entry)?;
    for (done, swap) in entry.swaps.iter().enumerate() {
        if let Err(e) = journal::apply(swap) {
            // Put the set back as it was; if that fails too, the journal stays and the next
            // start completes the restore.
            let undone = entry.swaps[..=done].iter().rev().try_for_each(journal::undo);
            match undone {
                Ok(()) => {
                    if let Err(remove) = journal::finish(work_dir) {
                        tracing::error!(error = %remove, "could not remove the restore journal after undoing the swaps");
                    }
                }
                Err(undo) => tracing::error!(error = %undo, journal = %work_dir.join(journal::JOURNAL_FILE).display(),
                    "could not undo the swaps before the failed one; the next start completes the restore"),
            }
            return Err(e);
        }
    }
    journal::complete(work_dir, &entry)?;
    Ok(entry.swaps.into_iter().map(|s| s.displaced).collect())
}

/// One path of a restore: its configured name, its name in the snapshot (they differ only for a
/// snapshot from before `[[state.paths]]`, see `plan::plan`), and where it goes.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    from: String,
    dir: PathBuf,
}

/// A new folder `<target>.displaced/<stamp>` (`…-2`, `…-3` when taken).
fn displaced_holder(target: &Path, stamp: &str) -> Result<PathBuf, RestoreError> {
    let root = displaced_root(target);
    // 0700: it holds a whole copy of the state, whatever the umask.
    crate::private_fs::create_dir_all(&root).map_err(io_error(&root))?;
    let mut holder = root.join(stamp);
    let mut n = 1;
    while let Err(e) = crate::private_fs::create_dir(&holder) {
        if e.kind() != io::ErrorKind::AlreadyExists || n >= 1000 {
            return Err(RestoreError::Io {
                path: holder,
                source: e,
            });
        }
        n += 1;
        holder = root.join(format!("{stamp}-{n}"));
    }
    Ok(holder)
}

fn check_target(request: &RestoreRequest, target: &Path, state: TargetState) -> Result<(), RestoreError> {
    if state != TargetState::NonEmpty {
        return Ok(());
    }
    if !request.is_state() {
        return Err(RestoreError::Refused {
            target: target.to_path_buf(),
            why: "it is not empty".into(),
            hint: "--to needs an empty or absent directory.".into(),
        });
    }
    if request.force {
        return Ok(());
    }
    let origin = request
        .origin
        .clone()
        .unwrap_or_else(|| "local state of unknown origin (no local record)".into());
    Err(RestoreError::Refused {
        target: target.to_path_buf(),
        why: format!("it holds {origin}"),
        hint: format!(
            "To keep it and replace it, run again with --force: it will be moved to {} first. \
             To look at the snapshot without touching it, use --to DIR.",
            displaced_root(target).display()
        ),
    })
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn prepare_staging(target: &Path) -> Result<PathBuf, RestoreError> {
    let parent = target
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    fs::create_dir_all(&parent).map_err(io_error(&parent))?;
    remove_stale_staging(target);
    let prefix = format!(".{}.{STAGING_SUFFIX}.", target_name(target));
    let staging = parent.join(format!("{prefix}{}", std::process::id()));
    crate::private_fs::create_dir(&staging).map_err(io_error(&staging))?;
    Ok(staging)
}

/// Removes the staging directories beside `target` whose restore process is gone.
fn remove_stale_staging(target: &Path) {
    let parent = target
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let prefix = format!(".{}.{STAGING_SUFFIX}.", target_name(target));
    if let Ok(entries) = fs::read_dir(&parent) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A restore still running in another process keeps its staging dir.
            // Our own pid on one is an earlier process's that had it (this process removes or
            // renames its own before it makes another).
            let owner_alive = name
                .strip_prefix(&prefix)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| pid != std::process::id() && process_alive(pid));
            if name.starts_with(&prefix) && !owner_alive {
                tracing::info!(path = %entry.path().display(), "removing the staging directory of a restore that was killed");
                remove_staging(&entry.path());
            }
        }
    }
}

/// True when a process with this pid exists (Linux `/proc`).
pub fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

fn remove_staging(staging: &Path) {
    if let Err(e) = fs::remove_dir_all(staging)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %staging.display(), error = %e, "could not remove restore staging directory");
    }
}

/// Restores the paths `staged` (each with the staging directory it goes to) of a format-2
/// snapshot (every entry checked before anything is written, written through descriptors: see
/// `format2::restorer`), then gives each staged root its recorded owner and mode.
pub async fn restore_format2(
    engine: &Engine,
    two: &Chosen2,
    staged: &[(format2::PathRecord, PathBuf)],
) -> Result<Vec<archive::Unpacked>, RestoreError> {
    let _progress = crate::progress::begin("restore", two.bytes, two.files);
    let restic_id = two.restic_id.clone();
    let tag = two.id.to_string();
    let targets: Vec<(String, PathBuf)> = staged.iter().map(|(p, dir)| (p.name.clone(), dir.clone())).collect();
    let restored = engine
        .with(move |repo| repo.restore(&restic_id, &tag, &targets))
        .await
        .map_err(RepositoryError::from)?;
    let mut unpacked = Vec::with_capacity(staged.len());
    for ((record, staging), restored) in staged.iter().zip(restored) {
        let mut privilege_dropped: Vec<String> = restored
            .privilege_dropped
            .into_iter()
            .map(|path| format!("{}/{path}", record.name))
            .collect();
        if let Some(dropped) = set_root(staging, Some(record.root))? {
            privilege_dropped.push(format!("{} ({dropped})", record.name));
        }
        unpacked.push(archive::Unpacked {
            files: restored.files,
            bytes: restored.bytes,
            archive_bytes: restored.read_bytes,
            privilege_dropped,
        });
    }
    Ok(unpacked)
}

/// Gives the staged root the state directory's owner (as root) and permission bits; without a
/// record (a snapshot not written by spotkeeper), 0700. Bits above 0o777 (setuid, setgid,
/// sticky) and the world-write bit are never planted on a state directory (another local user
/// could plant files in the app's state): returns which were dropped.
fn set_root(staging: &Path, root: Option<crate::tree::Owner>) -> Result<Option<String>, RestoreError> {
    use std::os::unix::fs::PermissionsExt;
    let root = root.unwrap_or(crate::tree::Owner {
        mode: 0o700,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
    });
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(staging, Some(root.uid), Some(root.gid)).map_err(io_error(staging))?;
    }
    let (mode, dropped) = root.planted_mode();
    fs::set_permissions(staging, fs::Permissions::from_mode(mode)).map_err(io_error(staging))?;
    Ok(dropped)
}

/// Streams the archive (the snapshot's own, else `latest/`'s copy when restoring latest) into
/// the checker/extractor.
async fn download_and_unpack(
    store: &Store,
    manifest: &Manifest,
    staging: &Path,
    from_latest: bool,
) -> Result<archive::Unpacked, RestoreError> {
    let (key, stream) = open_archive(store, manifest, from_latest).await?;
    unpack_stream(stream, manifest, Some(staging.to_path_buf()), key).await
}

/// The archive `manifest` names, or (for `latest/`) the copy under `latest/` when the snapshot's
/// own was pruned; with its `s3://` URL. Whichever is read, it is checked against the manifest.
pub async fn open_archive(
    store: &Store,
    manifest: &Manifest,
    from_latest: bool,
) -> Result<(String, aws_sdk_s3::primitives::ByteStream), RestoreError> {
    let mut candidates = vec![manifest.archive.key.clone()];
    if from_latest {
        candidates.push(LATEST_ARCHIVE.to_string());
    }
    let mut body = None;
    for key in &candidates {
        if let Some(stream) = store.get_stream(key).await.map_err(RepositoryError::from)? {
            body = Some((key.clone(), stream));
            break;
        }
    }
    let Some((key, stream)) = body else {
        return Err(RestoreError::ArchiveMissing {
            repository: store.url("").trim_end_matches('/').to_string(),
            id: manifest.id,
            keys: candidates.join(", "),
        });
    };
    Ok((store.url(&key), stream))
}

/// Checks (and with `dest`, extracts) an archive body on a blocking thread. A read error of the
/// body is reported as a download failure, not as a corrupt archive.
pub async fn unpack_stream(
    stream: aws_sdk_s3::primitives::ByteStream,
    manifest: &Manifest,
    dest: Option<PathBuf>,
    key: String,
) -> Result<archive::Unpacked, RestoreError> {
    let task = if dest.is_some() { "restore" } else { "verify" };
    let _progress = crate::progress::begin(task, Some(manifest.totals.bytes), Some(manifest.totals.files));
    let manifest = manifest.clone();
    let reader = SyncIoBridge::new(stream.into_async_read());
    let network_error = Arc::new(Mutex::new(None));
    let tracker = TrackingReader {
        inner: reader,
        error: Arc::clone(&network_error),
    };
    let source = key.clone();
    let result = tokio::task::spawn_blocking(move || archive::unpack(tracker, &manifest, dest.as_deref(), &source))
        .await
        .map_err(|e| RestoreError::Task(e.to_string()))?;
    match result {
        Ok(unpacked) => Ok(unpacked),
        Err(e) => {
            let network = network_error.lock().ok().and_then(|mut slot| slot.take());
            match network {
                Some(source) => Err(RestoreError::Download { key, source }),
                None => Err(e.into()),
            }
        }
    }
}

/// Remembers the first read error of the network body.
struct TrackingReader<R> {
    inner: R,
    error: Arc<Mutex<Option<io::Error>>>,
}

impl<R: Read> Read for TrackingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::liveness::mark();
        self.inner.read(buf).inspect_err(|e| {
            if let Ok(mut slot) = self.error.lock()
                && slot.is_none()
            {
                *slot = Some(io::Error::new(e.kind(), e.to_string()));
            }
        })
    }
}

/// Makes the staged files durable before they become the state: a power cut after the swap
/// must not leave empty files that the local record says are a complete restore.
fn sync_filesystem(staging: &Path) -> Result<(), RestoreError> {
    let dir = fs::File::open(staging).map_err(io_error(staging))?;
    rustix::fs::syncfs(&dir).map_err(|e| RestoreError::Io {
        path: staging.to_path_buf(),
        source: e.into(),
    })
}
