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
use crate::format2::{self, Engine};
use crate::manifest::Manifest;
use crate::repository::{self, Head, LATEST_ARCHIVE, RepositoryError};
use crate::snapshot_id::SnapshotId;
use crate::store::Store;

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
}

/// Where a restore goes.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// A specific snapshot, or `latest/`.
    pub snapshot: Option<SnapshotId>,
    pub target: PathBuf,
    /// True when `target` is the configured state directory (`--force` allowed).
    pub is_state_dir: bool,
    /// Move non-empty local state aside instead of refusing.
    pub force: bool,
    /// What the local state descends from, for the refusal message.
    pub origin: Option<String>,
    pub repository: String,
    pub now: DateTime<Utc>,
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
}

/// What is at a restore target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Absent,
    Empty,
    NonEmpty,
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
    if let Some(id) = snapshot {
        // The head only informs the local record: a damaged one must not block a named snapshot.
        let head = match repository::head(store).await {
            Ok(head) => head.map(|(h, _)| h),
            Err(RepositoryError::Manifest(e)) => {
                tracing::warn!(error = %e, "ignoring an unreadable latest pointer");
                None
            }
            Err(e) => return Err(e.into()),
        };
        let head_id = head.as_ref().map(Head::id);
        if let Some(engine) = engine {
            // The head is named by its restic id: another writer's snapshot that took the same
            // spotkeeper id (same minute) never stands in for it.
            if let Some(Head::Two(pointer)) = &head
                && pointer.id == id
            {
                return Ok((Chosen::Two(chosen_of_pointer(pointer.clone())), head_id));
            }
            let listed = repository::list_format2(engine).await?;
            let found: Vec<&format2::Listed> = listed.iter().filter(|l| l.id == Some(id)).collect();
            match found.as_slice() {
                [] => {}
                [one] => return Ok((Chosen::Two(chosen2(one, id)), head_id)),
                many => {
                    return Err(RestoreError::Ambiguous {
                        repository: repository.to_string(),
                        id,
                        restic_ids: many.iter().map(|l| l.restic_id.clone()).collect::<Vec<_>>().join(", "),
                    });
                }
            }
        }
        if let Some(manifest) = repository::manifest(store, &id).await? {
            return Ok((Chosen::One(Box::new(manifest)), head_id));
        }
        // A format-2 prefix read without a password: say what is missing, not "not found".
        if engine.is_none() && (matches!(head, Some(Head::Two(_))) || repository::has_pointer(store).await?) {
            need_engine(engine, repository)?;
        }
        return Err(RestoreError::SnapshotNotFound {
            repository: repository.to_string(),
            id,
        });
    }
    match repository::head(store).await? {
        Some((Head::Two(pointer), _)) => {
            need_engine(engine, repository)?;
            let id = pointer.id;
            return Ok((Chosen::Two(chosen_of_pointer(pointer)), Some(id)));
        }
        Some((Head::One(manifest), _)) => {
            let id = manifest.id;
            return Ok((Chosen::One(Box::new(manifest)), Some(id)));
        }
        None => {}
    }
    // No head: only listings that succeeded and found no complete snapshot mean "none".
    let listing = repository::list(store).await?;
    let mut complete: Vec<SnapshotId> = listing.snapshots.iter().filter(|s| s.complete).map(|s| s.id).collect();
    if let Some(engine) = engine {
        complete.extend(repository::list_format2(engine).await?.iter().filter_map(|l| l.id));
        complete.sort_unstable();
    }
    match complete.last() {
        Some(newest) => Err(RestoreError::LatestMissing {
            repository: repository.to_string(),
            newest: *newest,
            count: complete.len(),
        }),
        None => Err(RestoreError::NoSnapshot {
            repository: repository.to_string(),
        }),
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

/// Restores per `request`. See the module doc for the guarantees.
pub async fn restore(
    store: &Store,
    engine: Option<&Engine>,
    request: &RestoreRequest,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let target_state = inspect(&request.target)?;
    check_target(request, target_state)?;
    let (chosen, latest) = resolve(store, engine, request.snapshot, &request.repository).await?;
    let staging = prepare_staging(request)?;
    let result = match &chosen {
        Chosen::One(manifest) => download_and_unpack(store, manifest, &staging, request.snapshot.is_none()).await,
        Chosen::Two(two) => restore_format2(need_engine(engine, &request.repository)?, two, &staging).await,
    };
    let unpacked = match result {
        Ok(unpacked) => unpacked,
        Err(e) => {
            remove_staging(&staging);
            return Err(e);
        }
    };
    if let Err(e) = sync_filesystem(&staging) {
        remove_staging(&staging);
        return Err(e);
    }
    // Look again: the download may have taken a while, and the answer decides what is moved.
    let target_state = inspect(&request.target)?;
    if let Err(e) = check_target(request, target_state) {
        remove_staging(&staging);
        return Err(e);
    }
    let displaced = swap_in(request, &staging, target_state)?;
    Ok(RestoreReport {
        id: chosen.id(),
        latest,
        target: request.target.clone(),
        files: unpacked.files,
        bytes: unpacked.bytes,
        archive_bytes: unpacked.archive_bytes,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        displaced,
        privilege_dropped: unpacked.privilege_dropped,
    })
}

fn check_target(request: &RestoreRequest, state: TargetState) -> Result<(), RestoreError> {
    if state != TargetState::NonEmpty {
        return Ok(());
    }
    if !request.is_state_dir {
        return Err(RestoreError::Refused {
            target: request.target.clone(),
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
        target: request.target.clone(),
        why: format!("it holds {origin}"),
        hint: format!(
            "To keep it and replace it, run again with --force: it will be moved to {} first. \
             To look at the snapshot without touching it, use --to DIR.",
            displaced_root(&request.target).display()
        ),
    })
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates an empty staging directory beside the target, in its parent: on the same mount, so that
/// the swap is a rename (under systemd, `work_dir` is another mount even on the same filesystem).
/// Leftovers of an interrupted restore of this target (ours, never user data) are removed first.
fn prepare_staging(request: &RestoreRequest) -> Result<PathBuf, RestoreError> {
    let parent = request
        .target
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    fs::create_dir_all(&parent).map_err(io_error(&parent))?;
    let prefix = format!(".{}.{STAGING_SUFFIX}.", target_name(&request.target));
    if let Ok(entries) = fs::read_dir(&parent) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A restore still running in another process keeps its staging dir.
            let owner_alive = name
                .strip_prefix(&prefix)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(process_alive);
            if name.starts_with(&prefix) && !owner_alive {
                remove_staging(&entry.path());
            }
        }
    }
    let staging = parent.join(format!("{prefix}{}", std::process::id()));
    fs::create_dir(&staging).map_err(io_error(&staging))?;
    Ok(staging)
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

/// Format 2: every entry of the snapshot is checked before anything is written
/// (`format2::checked_nodes`), rustic_core restores it into `staging` (every blob's MAC checked
/// as it is decrypted, packs read in parallel), then the staged tree is checked again as format
/// 1's archives are: no link may leave the tree, nothing but files, directories and links, and
/// setuid/setgid bits are dropped. A repository written by someone else is untrusted input too.
pub async fn restore_format2(
    engine: &Engine,
    two: &Chosen2,
    staging: &Path,
) -> Result<archive::Unpacked, RestoreError> {
    let _progress = crate::progress::begin("restore", two.bytes, two.files);
    let restic_id = two.restic_id.clone();
    let tag = two.id.to_string();
    let dest = staging.to_path_buf();
    let description = engine
        .with(move |repo| repo.restore(&restic_id, &tag, &dest))
        .await
        .map_err(RepositoryError::from)?;
    let root = format2::root_of(description.as_deref());
    let staging = staging.to_path_buf();
    let id = two.id;
    tokio::task::spawn_blocking(move || {
        let unpacked = sanitize_staged(&staging, id)?;
        set_root(&staging, root)?;
        Ok(unpacked)
    })
    .await
    .map_err(|e| RestoreError::Task(e.to_string()))?
}

/// Gives the staged root the state directory's owner (as root) and mode, setuid/setgid never
/// planted; without a record (a snapshot not written by spotkeeper), 0700.
fn set_root(staging: &Path, root: Option<crate::manifest::Owner>) -> Result<(), RestoreError> {
    use std::os::unix::fs::PermissionsExt;
    let root = root.unwrap_or(crate::manifest::Owner {
        mode: 0o700,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
    });
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(staging, Some(root.uid), Some(root.gid)).map_err(io_error(staging))?;
    }
    fs::set_permissions(staging, fs::Permissions::from_mode(root.mode & 0o1777)).map_err(io_error(staging))
}

/// Walks a staged tree (never following links): counts it, drops setuid/setgid bits, refuses
/// links that leave it and any special file.
pub fn sanitize_staged(root: &Path, id: SnapshotId) -> Result<archive::Unpacked, RestoreError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut unpacked = archive::Unpacked {
        files: 0,
        bytes: 0,
        archive_bytes: 0,
        privilege_dropped: Vec::new(),
    };
    let mut entries: Vec<crate::manifest::FileEntry> = Vec::new();
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel_dir)) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(unsafe_entry(id, &path, "a name that is not UTF-8"));
            };
            let rel = if rel_dir.is_empty() {
                name.to_string()
            } else {
                format!("{rel_dir}/{name}")
            };
            let meta = fs::symlink_metadata(&path).map_err(io_error(&path))?;
            let kind = meta.file_type();
            let mode = meta.mode() & 0o7777;
            if (kind.is_file() || kind.is_dir()) && mode & 0o6000 != 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o1777)).map_err(io_error(&path))?;
                unpacked.privilege_dropped.push(rel.clone());
            }
            let (entry_kind, target) = if kind.is_dir() {
                pending.push((path.clone(), rel.clone()));
                (crate::manifest::EntryKind::Dir, None)
            } else if kind.is_file() {
                unpacked.files += 1;
                unpacked.bytes += meta.len();
                (crate::manifest::EntryKind::File, None)
            } else if kind.is_symlink() {
                let target = fs::read_link(&path).map_err(io_error(&path))?;
                let Some(target) = target.to_str().map(str::to_string) else {
                    return Err(unsafe_entry(id, &path, "a link whose target is not UTF-8"));
                };
                (crate::manifest::EntryKind::Symlink, Some(target))
            } else {
                return Err(unsafe_entry(id, &path, "a device, socket or pipe"));
            };
            entries.push(crate::manifest::FileEntry::for_links(rel, entry_kind, target));
        }
    }
    if let Some((path, reason)) = crate::manifest::escaping_links(&entries).into_iter().next() {
        return Err(unsafe_entry(id, &root.join(path), reason));
    }
    Ok(unpacked)
}

fn unsafe_entry(id: SnapshotId, path: &Path, reason: &str) -> RestoreError {
    RestoreError::Unsafe {
        id,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
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
        crate::systemd::progress();
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

/// Puts the staged tree at the target with two renames: the existing content (state dir only;
/// `--to` targets are empty) to `<name>.displaced/<time>/`, then the staging dir to the target. A
/// crash between the two leaves no target, the old state in `.displaced/` and the verified new
/// one in staging: the next boot restores again; nothing is lost.
fn swap_in(request: &RestoreRequest, staging: &Path, state: TargetState) -> Result<Option<PathBuf>, RestoreError> {
    let target = &request.target;
    let displaced = match state {
        TargetState::Absent => None,
        TargetState::Empty => {
            // An empty directory holds nothing to keep; remove it so the rename can land.
            fs::remove_dir(target).map_err(io_error(target))?;
            None
        }
        TargetState::NonEmpty => {
            let stamp = request.now.format("%Y-%m-%dT%H-%M-%SZ").to_string();
            let root = displaced_root(target);
            fs::create_dir_all(&root).map_err(io_error(&root))?;
            // Two restores within one second each get their own folder (`…Z`, `…Z-2`, …).
            let mut holder = root.join(&stamp);
            let mut n = 1;
            while let Err(e) = fs::create_dir(&holder) {
                if e.kind() != io::ErrorKind::AlreadyExists || n >= 1000 {
                    return Err(RestoreError::Io {
                        path: holder,
                        source: e,
                    });
                }
                n += 1;
                holder = root.join(format!("{stamp}-{n}"));
            }
            let place = holder.join(target_name(target));
            fs::rename(target, &place).map_err(io_error(target))?;
            tracing::info!(from = %target.display(), to = %place.display(), "moved local state aside");
            Some(place)
        }
    };
    if let Err(source) = fs::rename(staging, target) {
        // Put the previous state back where it was before reporting.
        if let Some(place) = &displaced
            && let Err(e) = fs::rename(place, target)
        {
            tracing::error!(from = %place.display(), to = %target.display(), error = %e,
                "could not move the previous state back; it is safe where it is");
        }
        remove_staging(staging);
        return Err(RestoreError::Io {
            path: target.clone(),
            source,
        });
    }
    if let Some(parent) = target.parent() {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_error(parent))?;
    }
    Ok(displaced)
}
