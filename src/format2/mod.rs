//! Format 2: snapshots in a restic repository (through `rustic_core`) on spotkeeper's own S3
//! client: content-defined chunks, deduplicated and encrypted (AES-256 + Poly1305), so a
//! snapshot uploads what changed and stock `restic` can list, check and restore it.
//!
//! `Repo` is the repository engine (synchronous: rustic_core runs on the calling thread and its
//! own); `Engine` is its async face for the commands and the daemon, which keeps one repository
//! open between snapshots. docs/format2-research.md has the findings it rests on.

pub mod backend;
pub mod head;
pub mod keyfile;
pub mod password;
pub mod pointer;
pub mod restorer;
pub mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustic_core::repofile::{MasterKey, NodeType, SnapshotFile, SnapshotId};
use rustic_core::{
    BackupOptions, CheckOptions, ConfigOptions, Credentials, ErrorKind, FileType, KeyOptions, OpenStatus, PathList,
    PruneOptions, Repository, RepositoryBackends, RepositoryOptions, RusticError, SnapshotOptions, WriteBackend,
};

pub use backend::S3Backend;
pub use password::{Password, PasswordError};

/// The tag every spotkeeper snapshot carries (restic shows tags; it ignores rustic's label).
pub const TAG: &str = "spotkeeper";
/// The tag of a snapshot taken to follow changes (`[snapshot] follow`) rather than on the
/// schedule: `retention.follow_keep` applies to it.
pub const FOLLOW_TAG: &str = "follow";
/// The tag of a snapshot taken by a spotkeeper that writes an authenticated `latest.json`: once
/// a repository holds one, a `latest.json` without a MAC is a stripped one, never an older
/// version's (see `pointer::read`).
pub const SEALED_HEAD_TAG: &str = "sealed-head";

#[derive(Debug, thiserror::Error)]
pub enum Format2Error {
    #[error("{location}: {}", describe(source))]
    Repository {
        location: String,
        #[source]
        source: Box<RusticError>,
    },
    #[error("{location} failed its check: {}", describe(source))]
    Check {
        location: String,
        #[source]
        source: Box<RusticError>,
    },
    #[error("{location} already holds a repository; refusing to initialise it again")]
    Exists { location: String },
    #[error("{location} holds no repository yet: create it with `spotkeeper init`")]
    Missing { location: String },
    #[error(
        "{key} is missing, but {dir} holds the repository's {found}: its config was deleted or lost. Nothing was \
         changed, and no new repository is created over it (that would orphan every snapshot under a new master \
         key): put {key} back (an earlier version of the object, a copy; docs/format.md)"
    )]
    ConfigMissing {
        key: String,
        dir: String,
        found: &'static str,
    },
    #[error(
        "{key} cannot be decrypted with the key the password opens: it is damaged, or another repository's. \
         Nothing was changed: put this repository's config back (an earlier version of the object, a copy; \
         docs/format.md)"
    )]
    ConfigUnreadable { key: String },
    #[error("no snapshot {wanted} in {location}")]
    NoSnapshot { location: String, wanted: String },
    #[error("cannot back up {path}: {message}")]
    Source { path: PathBuf, message: String },
    #[error("repository task failed: {0}")]
    Task(String),
    #[error(
        "snapshot {snapshot} of {location} cannot be restored: {what}; nothing outside the staging directory was written"
    )]
    Damaged {
        location: String,
        snapshot: String,
        what: String,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to restore snapshot {snapshot} of {location}: it holds {reason} at {path:?}; nothing was written \
         (restore never plants such entries)"
    )]
    Unsafe {
        location: String,
        snapshot: String,
        path: String,
        reason: &'static str,
    },
}

impl Format2Error {
    /// The S3 failure underneath, if a request failed (for retries and exit codes).
    pub fn store_error(&self) -> Option<&crate::store::StoreError> {
        let (Format2Error::Repository { source, .. } | Format2Error::Check { source, .. }) = self else {
            return None;
        };
        store_error_in(source)
    }

    /// The password opened no key of the repository.
    pub fn is_wrong_password(&self) -> bool {
        matches!(self, Format2Error::Repository { source, .. } if source.is_incorrect_password())
    }

    /// The repository's bytes are damaged: a blob or file failed its MAC (rustic_core's `C001`)
    /// or changed after decryption (`C003`). An integrity failure, never retried.
    pub fn is_damage(&self) -> bool {
        let (Format2Error::Repository { source, .. } | Format2Error::Check { source, .. }) = self else {
            return false;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(error) = cause {
            // rustic_core wraps its own errors boxed or not.
            let rustic = error
                .downcast_ref::<RusticError>()
                .or_else(|| error.downcast_ref::<Box<RusticError>>().map(AsRef::as_ref));
            if rustic.is_some_and(|rustic| rustic.is_code("C001") || rustic.is_code("C003")) {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

fn store_error_in(error: &RusticError) -> Option<&crate::store::StoreError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(error) = cause {
        if let Some(store) = error.downcast_ref::<crate::store::StoreError>() {
            return Some(store);
        }
        cause = error.source();
    }
    None
}

/// rustic_core's error in one line: ours when S3 failed (it names the key and the next step),
/// else rustic_core's own concise form.
fn describe(error: &RusticError) -> String {
    if error.is_incorrect_password() {
        return "the repository password is wrong: it opens none of the keys under repo/keys/ (check \
                [repository] password_ssm or password_file)"
            .into();
    }
    if let Some(store) = store_error_in(error) {
        return store.to_string();
    }
    let text = error.display_log();
    text.strip_prefix("Error: ").unwrap_or(&text).to_string()
}

/// What a repository without its config still holds, if anything: keys, snapshots, index or
/// packs (the first kind found).
fn holds_repository(backend: &S3Backend) -> rustic_core::RusticResult<Option<&'static str>> {
    use rustic_core::ReadBackend;
    for (tpe, found) in [
        (FileType::Key, "keys (keys/)"),
        (FileType::Snapshot, "snapshots (snapshots/)"),
        (FileType::Index, "index (index/)"),
        (FileType::Pack, "data (data/)"),
    ] {
        if !backend.list(tpe)?.is_empty() {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Whether rustic_core's open failed on the config (decrypting or parsing it), not on a key
/// file: once a key opened, the config is all that is left to read.
fn config_failed(error: &RusticError) -> bool {
    !error.display_log().contains("data for key")
}

/// The full key of the repository's config, for messages.
fn config_key(backend: &S3Backend) -> String {
    backend
        .store()
        .full_key(&backend.key(FileType::Config, &rustic_core::Id::default()))
}

fn config_missing(backend: &S3Backend, found: &'static str) -> Format2Error {
    Format2Error::ConfigMissing {
        key: config_key(backend),
        dir: backend.store().full_key(&format!("{}/", backend::REPO_DIR)),
        found,
    }
}

/// An open repository. Indexing consumes rustic_core's handle, so each operation takes it and
/// gives it back; one that fails loses it, and the next operation opens the repository again.
pub struct Repo {
    repo: Option<Repository<OpenStatus>>,
    /// The backend rustic_core was given (a clone: its index-listing memo is shared).
    s3: S3Backend,
    cache: Option<PathBuf>,
    backends: RepositoryBackends,
    credentials: Credentials,
    location: String,
}

/// What a backup produced.
#[derive(Debug, Clone)]
pub struct Backup {
    /// restic's snapshot id (64 hex).
    pub id: String,
    pub files: u64,
    /// Bytes of the files backed up.
    pub bytes: u64,
    /// Bytes of new data added to the repository (after deduplication and compression).
    pub data_added_packed: u64,
}

/// With `cache`, rustic_core keeps the index, snapshots and tree packs there (encrypted, as in
/// the repository), so a snapshot reads its parent's trees from disk instead of one request
/// each; the daemon's lives in `work_dir`. Without it, nothing is cached: a person's command must
/// not leave a state's metadata under ~/.cache.
fn options(cache: Option<&Path>) -> RepositoryOptions {
    match cache {
        Some(dir) => RepositoryOptions::default().cache_dir(dir.to_path_buf()),
        None => RepositoryOptions::default().no_cache(true),
    }
}

/// Errors of rustic_core, with the repository named.
fn wrap(location: &str) -> impl Fn(Box<RusticError>) -> Format2Error + use<> {
    let location = location.to_string();
    move |source| Format2Error::Repository {
        location: location.clone(),
        source,
    }
}

impl Repo {
    /// Creates the repository (version 2, zstd) with `password` as its first key; `cache` as in
    /// `open`.
    pub fn init(backend: S3Backend, password: &Password, cache: Option<&Path>) -> Result<Repo, Format2Error> {
        let location = rustic_core::ReadBackend::location(&backend);
        let wrap = wrap(&location);
        let watch = backend.clone();
        let backends = RepositoryBackends::new(Arc::new(backend) as Arc<dyn WriteBackend>, None);
        let repo = Repository::new_with_progress(&options(cache), &backends, ToStatus).map_err(&wrap)?;
        if repo.config_id().map_err(&wrap)?.is_some() {
            return Err(Format2Error::Exists { location });
        }
        // Keys, snapshots or packs without a config: a new config would orphan them all.
        if let Some(found) = holds_repository(&watch).map_err(&wrap)? {
            return Err(config_missing(&watch, found));
        }
        // A password key, never a bare master key: restic opens the repository with it. The key
        // is spotkeeper's (restic's scrypt parameters: 32 MiB to open, not rustic_core's 128 MiB,
        // see `keyfile`), written before the config as rustic_core would: a config is never
        // without a key that opens it.
        let master = MasterKey::new();
        keyfile::write(&watch, &master, password.expose().as_bytes()).map_err(|e| {
            wrap(RusticError::with_source(
                ErrorKind::Key,
                "writing the repository's key failed",
                e,
            ))
        })?;
        let credentials = Credentials::password(password.expose());
        // No key options: with the master key given, rustic_core writes no key of its own.
        let repo = match repo.init(
            &Credentials::Masterkey(master),
            &KeyOptions::default(),
            &ConfigOptions::default(),
        ) {
            Ok(repo) => repo,
            Err(e) => {
                // Lost the race for `config` (or failed before it): a key of ours would open a
                // master key that no config uses, and the next open might pick it. Take it back.
                let (keys, config) = watch.written();
                if !config {
                    for id in keys {
                        if let Err(remove) = rustic_core::WriteBackend::remove(&watch, FileType::Key, &id, false) {
                            tracing::warn!(error = %remove.display_log(), "could not remove the key of a failed init");
                        }
                    }
                }
                return Err(wrap(e));
            }
        };
        Ok(Repo {
            repo: Some(repo),
            s3: watch,
            cache: cache.map(Path::to_path_buf),
            backends,
            credentials,
            location,
        })
    }

    /// Opens the repository with `password`, caching its metadata in `cache` (a directory of
    /// its own) when given.
    pub fn open(backend: S3Backend, password: &Password, cache: Option<&Path>) -> Result<Repo, Format2Error> {
        let location = rustic_core::ReadBackend::location(&backend);
        let s3 = backend.clone();
        let backends = RepositoryBackends::new(Arc::new(backend) as Arc<dyn WriteBackend>, None);
        let mut repo = Repo {
            repo: None,
            s3,
            cache: cache.map(Path::to_path_buf),
            backends,
            credentials: Credentials::password(password.expose()),
            location,
        };
        let opened = repo.take()?;
        repo.repo = Some(opened);
        Ok(repo)
    }

    /// rustic_core's handle: the one kept, else the repository opened again.
    fn take(&mut self) -> Result<Repository<OpenStatus>, Format2Error> {
        // Only a backup lists `index/` from the memo (see `backup`); everything else asks S3.
        self.s3.forget_index_listing();
        self.take_for_backup()
    }

    /// `take`, keeping the index-listing memo.
    fn take_for_backup(&mut self) -> Result<Repository<OpenStatus>, Format2Error> {
        if let Some(repo) = self.repo.take() {
            return Ok(repo);
        }
        let wrap = wrap(&self.location);
        let repo =
            Repository::new_with_progress(&options(self.cache.as_deref()), &self.backends, ToStatus).map_err(&wrap)?;
        if repo.config_id().map_err(&wrap)?.is_none() {
            if let Some(found) = holds_repository(&self.s3).map_err(&wrap)? {
                return Err(config_missing(&self.s3, found));
            }
            return Err(Format2Error::Missing {
                location: self.location.clone(),
            });
        }
        repo.open(&self.credentials).map_err(|e| {
            // The keys were read and one opened (else C002, the wrong password): what is left
            // to fail is the config, decrypted with that key and parsed.
            if e.is_incorrect_password() || store_error_in(&e).is_some() || !config_failed(&e) {
                return wrap(e);
            }
            tracing::debug!(error = %e.display_log(), "opening the repository failed on its config");
            Format2Error::ConfigUnreadable {
                key: config_key(&self.s3),
            }
        })
    }

    /// The key that authenticates `latest.json`, derived from this repository's master key.
    pub fn pointer_key(&mut self) -> Result<pointer::PointerKey, Format2Error> {
        // Not `take`: a snapshot asks between backups, and must keep the index-listing memo.
        let repo = self.take_for_backup()?;
        let key = pointer::PointerKey::of(&repo.key());
        self.repo = Some(repo);
        Ok(key)
    }

    /// Backs up `source`, a directory holding one directory per state path (stored as the
    /// snapshot's root: each path at `/<name>/`), tagged `spotkeeper` and `tags`, under the stable
    /// `host` name (the parent snapshot is found by host, and Spot hostnames change).
    ///
    /// rustic_core walks `source` by path: give it spotkeeper's own frozen mirror (filled by the
    /// descriptor-based walker), never the live state directory, which the app can rearrange.
    pub fn backup(
        &mut self,
        source: &Path,
        host: &str,
        tags: &[String],
        time: chrono::DateTime<chrono::Utc>,
        description: Option<String>,
        parent: Option<&str>,
    ) -> Result<Backup, Format2Error> {
        let wrap = wrap(&self.location);
        // The steady state lists nothing: `index/` as this backend last saw it plus what it
        // wrote since (see `backend::IndexMemo`).
        self.s3.memo_index(true);
        let indexed = self
            .take_for_backup()
            .and_then(|repo| repo.to_indexed_ids().map_err(&wrap));
        self.s3.memo_index(false);
        let repo = match indexed {
            Ok(repo) => repo,
            Err(e) => {
                self.s3.forget_index_listing();
                return Err(e);
            }
        };
        let mut all_tags = vec![TAG.to_string()];
        all_tags.extend(tags.iter().cloned());
        let mut snapshot = SnapshotOptions::default()
            .label(TAG.to_string())
            .host(host.to_string())
            .command("spotkeeper snapshot".to_string())
            .time(zoned(time))
            .description(description)
            .add_tags(&all_tags.join(","))
            .map_err(&wrap)?
            .to_snapshot()
            .map_err(&wrap)?;
        snapshot.program_version = format!("spotkeeper {}", env!("CARGO_PKG_VERSION"));
        let paths = PathList::from_iter([source.to_path_buf()])
            .sanitize()
            .map_err(|e| Format2Error::Source {
                path: source.to_path_buf(),
                message: e.to_string(),
            })?;
        // The parent is the snapshot latest.json names, never "the newest by time": an orphan, a
        // second writer's or a forged future-dated snapshot must not lend unchanged files its
        // content.
        let mut options = BackupOptions::default().as_path(PathBuf::from("/"));
        if let Some(parent) = parent {
            options.parent_opts.parents = vec![parent.to_string()];
        }
        // The mirror is read by descriptor (paths of any length; holes not read).
        let backup_paths = paths.paths();
        let Some(root) = backup_paths.first() else {
            return Err(Format2Error::Source {
                path: source.to_path_buf(),
                message: "no directory to back up".into(),
            });
        };
        let mirror = source::MirrorSource::new(root);
        let done = match repo.archive(&options, &mirror, snapshot, &backup_paths) {
            Ok(done) => done,
            Err(e) => {
                self.s3.forget_index_listing();
                return Err(wrap(e));
            }
        };
        self.repo = Some(repo.drop_index());
        // Every entry of the mirror belongs in the snapshot: one that could not be read fails
        // the upload (the snapshot saved is an orphan latest.json never names; the change
        // stays pending).
        if let Some((path, message)) = mirror.problems().into_iter().next() {
            return Err(Format2Error::Source { path, message });
        }
        let summary = done.summary.clone().unwrap_or_default();
        Ok(Backup {
            id: done.id.to_hex().as_str().to_string(),
            files: summary.total_files_processed,
            bytes: summary.total_bytes_processed,
            data_added_packed: summary.data_added_packed,
        })
    }

    /// spotkeeper's snapshots, oldest first.
    pub fn snapshots(&mut self) -> Result<Vec<SnapshotFile>, Format2Error> {
        let repo = self.take()?;
        let found = repo.get_matching_snapshots(|s| s.tags.contains(TAG));
        self.repo = Some(repo);
        let mut snapshots = found.map_err(wrap(&self.location))?;
        snapshots.sort_unstable();
        Ok(snapshots)
    }

    /// The state paths snapshot `id` (restic's id) holds, if it carries the tag `tag` (its
    /// spotkeeper id): read from its description, without loading the index.
    pub fn layout(&mut self, id: &str, tag: &str) -> Result<Vec<PathRecord>, Format2Error> {
        let repo = self.take()?;
        let found = repo.get_snapshot_from_str(id, |s| s.tags.contains(TAG));
        self.repo = Some(repo);
        let no_snapshot = || Format2Error::NoSnapshot {
            location: self.location.clone(),
            wanted: format!("{id} tagged {tag}"),
        };
        let snapshot = found.map_err(|_| no_snapshot())?;
        if !snapshot.tags.contains(TAG) || !snapshot.tags.contains(tag) {
            return Err(no_snapshot());
        }
        let summary = snapshot.summary.as_ref();
        let unsafe_layout = |path: String, reason| Format2Error::Unsafe {
            location: self.location.clone(),
            snapshot: id.to_string(),
            path,
            reason,
        };
        let paths = paths_of(
            snapshot.description.as_deref(),
            summary.map(|s| s.total_files_processed),
            summary.map(|s| s.total_bytes_processed),
        )
        .ok_or_else(|| {
            unsafe_layout(
                "/".into(),
                "no description spotkeeper wrote (it names the state paths a snapshot holds)",
            )
        })?;
        // The names become directory names (`restore --to DIR/<name>`): only what a config
        // accepts, each once.
        let mut seen = std::collections::HashSet::new();
        for path in &paths {
            if crate::config::check_path_name(&path.name).is_err() {
                return Err(unsafe_layout(
                    path.name.clone(),
                    "a state path name a config would refuse",
                ));
            }
            if !seen.insert(path.name.as_str()) {
                return Err(unsafe_layout(path.name.clone(), "a state path named twice"));
            }
        }
        Ok(paths)
    }

    /// Restores the state paths `targets` (each a path's name and an empty directory spotkeeper
    /// made) from the snapshot `id` (restic's id), if it carries the tag `tag` (its spotkeeper id).
    /// Every entry of every path is read and checked before anything is written (see
    /// `restorer`); then each path is written through directory descriptors.
    pub fn restore(
        &mut self,
        id: &str,
        tag: &str,
        targets: &[(String, PathBuf)],
    ) -> Result<Vec<restorer::Restored>, Format2Error> {
        let wrap = wrap(&self.location);
        let started = std::time::Instant::now();
        let repo = self.take()?.to_indexed().map_err(&wrap)?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "restore: repository open, index read"
        );
        let result = (|| {
            let no_snapshot = || Format2Error::NoSnapshot {
                location: self.location.clone(),
                wanted: format!("{id} tagged {tag}"),
            };
            let snapshot = repo
                .get_snapshot_from_str(id, |s| s.tags.contains(TAG))
                .map_err(|_| no_snapshot())?;
            // A full id is found whatever its tags: the tag is checked here.
            if !snapshot.tags.contains(TAG) || !snapshot.tags.contains(tag) {
                return Err(no_snapshot());
            }
            let failed = |name: &str, error: restorer::RestorerError| self.restorer_error(id, name, error);
            let cipher = restorer::cipher(&repo).map_err(|e| failed("", e))?;
            let mut plans = Vec::with_capacity(targets.len());
            for (name, dest) in targets {
                let node = repo
                    .node_from_snapshot_and_path(&snapshot, &format!("/{name}"))
                    .map_err(&wrap)?;
                let (NodeType::Dir, Some(tree)) = (&node.node_type, node.subtree) else {
                    return Err(failed(
                        name,
                        restorer::RestorerError::Unsafe {
                            path: String::new(),
                            reason: "a state path that is not a directory",
                        },
                    ));
                };
                let plan = restorer::Plan::read(&repo, &self.s3, &cipher, tree).map_err(|e| failed(name, e))?;
                tracing::debug!(ms = started.elapsed().as_millis() as u64, path = %name, files = plan.files(), "restore: trees read and checked");
                plans.push((name, plan, dest));
            }
            let mut restored = Vec::with_capacity(plans.len());
            for (name, plan, dest) in plans {
                let done = restorer::restore(&repo, &self.s3, &cipher, &plan, dest).map_err(|e| failed(name, e))?;
                tracing::debug!(ms = started.elapsed().as_millis() as u64, path = %name, read_bytes = done.read_bytes, reads = done.reads, "restore: contents written");
                restored.push(done);
            }
            Ok(restored)
        })();
        self.repo = Some(repo.drop_index());
        result
    }

    /// The restorer's error as this module's, naming the repository, snapshot and path.
    fn restorer_error(&self, id: &str, name: &str, error: restorer::RestorerError) -> Format2Error {
        let inside = |path: &str| {
            if path.is_empty() {
                name.to_string()
            } else {
                format!("{name}/{path}")
            }
        };
        match error {
            restorer::RestorerError::Unsafe { path, reason } => Format2Error::Unsafe {
                location: self.location.clone(),
                snapshot: id.to_string(),
                path: inside(&path),
                reason,
            },
            restorer::RestorerError::Damaged { what } => Format2Error::Damaged {
                location: self.location.clone(),
                snapshot: id.to_string(),
                what,
            },
            restorer::RestorerError::Repository(source) => Format2Error::Repository {
                location: self.location.clone(),
                source,
            },
            restorer::RestorerError::Write { path, source } => Format2Error::Write { path, source },
        }
    }

    /// Checks the repository's structure (config, keys, index, every snapshot's trees, that each
    /// pack the index names exists with its size) and, with `read_data`, reads every pack back and
    /// checks every blob's hash. Every finding is logged by rustic_core; any error fails.
    pub fn check(&mut self, read_data: bool) -> Result<(), Format2Error> {
        let wrap = wrap(&self.location);
        let repo = self.take()?;
        // Never trust the local cache for a check: compare against what S3 holds.
        let results = repo.check(CheckOptions::default().read_data(read_data).trust_cache(false));
        self.repo = Some(repo);
        results.map_err(&wrap)?.is_ok().map_err(|source| Format2Error::Check {
            location: self.location.clone(),
            source,
        })
    }

    /// Removes the restic snapshots `ids` (64 hex each). Their data stays until `prune`.
    pub fn forget(&mut self, ids: &[String]) -> Result<(), Format2Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let wrap = wrap(&self.location);
        let repo = self.take()?;
        let parsed: Result<Vec<SnapshotId>, _> = ids
            .iter()
            .map(|id| {
                id.parse::<rustic_core::Id>()
                    .map(SnapshotId::from)
                    .map_err(|_| Format2Error::NoSnapshot {
                        location: self.location.clone(),
                        wanted: id.clone(),
                    })
            })
            .collect();
        let result = parsed.and_then(|ids| repo.delete_snapshots(&ids).map_err(&wrap));
        self.repo = Some(repo);
        result
    }

    /// Two-phase prune: packs no snapshot needs are marked, and deleted by a later prune only
    /// when marked for at least `keep_delete` and still unneeded (a backup that began before the
    /// mark and uses one of them recovers it). No lock is taken, and none is needed, as long as
    /// no snapshot runs longer than `keep_delete`.
    pub fn prune(&mut self, keep_delete: std::time::Duration) -> Result<PruneSummary, Format2Error> {
        let wrap = wrap(&self.location);
        let repo = self.take()?;
        let span = rustic_core::jiff::Span::new().seconds(i64::try_from(keep_delete.as_secs()).unwrap_or(i64::MAX));
        let options = PruneOptions::default().keep_delete(span).instant_delete(false);
        let result = repo.prune_plan(&options).and_then(|plan| {
            let summary = PruneSummary {
                packs_deleted: plan.stats.packs_to_delete.remove,
                packs_marked: plan.stats.packs_to_delete.keep,
                bytes_deleted: plan.stats.size_to_delete.remove,
            };
            repo.prune(&options, plan).map(|()| summary)
        });
        self.repo = Some(repo);
        result.map_err(&wrap)
    }
}

/// What a prune of format 2 did to packs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PruneSummary {
    pub packs_deleted: u64,
    /// Packs marked for deletion now (deleted by a prune after the grace period).
    pub packs_marked: u64,
    pub bytes_deleted: u64,
}

/// The description's line that recorded the state directory's own owner and mode in snapshots
/// taken before `[[state.paths]]` (one path, `state`).
const ROOT_LINE: &str = "spotkeeper-root: ";
/// The description's line that lists the state paths: each one's name (its directory at the
/// top of the snapshot), its own owner and mode, files and bytes.
const PATHS_LINE: &str = "spotkeeper-paths: ";

/// One state path in a snapshot, as its description records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathRecord {
    pub name: String,
    /// The path's directory's own owner and mode (restored onto the directory).
    pub root: crate::tree::Owner,
    pub files: u64,
    pub bytes: u64,
}

/// The description's line that names the image the app ran (the daemon's snapshots).
const IMAGE_LINE: &str = "spotkeeper-image: ";

/// The image a description names; only the lines before the skipped entries are read (their
/// names come from the app).
pub fn image_of(description: Option<&str>) -> Option<crate::manifest::ImageInfo> {
    description?
        .lines()
        .take_while(|line| *line != SKIPPED_LINE)
        .find_map(|line| line.strip_prefix(IMAGE_LINE))
        .and_then(|json| serde_json::from_str(json).ok())
}

/// The description's line after which the skipped entries follow, one per line.
const SKIPPED_LINE: &str = "skipped (could not be copied):";

/// A snapshot's description: the paths, then the entries that were skipped.
pub fn description(
    paths: &[PathRecord],
    image: Option<&crate::manifest::ImageInfo>,
    skipped: &[crate::tree::Skipped],
) -> String {
    let mut text = format!("{PATHS_LINE}{}", serde_json::to_string(paths).unwrap_or_default());
    if let Some(image) = image {
        // JSON: a reference cannot break the line.
        text.push_str(&format!(
            "\n{IMAGE_LINE}{}",
            serde_json::to_string(image).unwrap_or_default()
        ));
    }
    if !skipped.is_empty() {
        text.push('\n');
        text.push_str(SKIPPED_LINE);
        // Names come from the app: escaped, so none can start a line of its own.
        for entry in skipped {
            text.push_str(&format!(
                "\n{}: {}",
                entry.path.escape_debug(),
                entry.reason.escape_debug()
            ));
        }
    }
    text
}

/// The entries a description lists as skipped (path and reason, escaped as the description holds
/// them: a name from the app never starts a line of its own). Empty for a description without the
/// list, or one spotkeeper did not write. Each line splits at its first `": "`, so a name that
/// holds one shows part of itself in the reason: shown to people, never acted on.
pub fn skipped_of(description: Option<&str>) -> Vec<crate::tree::Skipped> {
    let Some(text) = description else {
        return Vec::new();
    };
    text.lines()
        .skip_while(|line| *line != SKIPPED_LINE)
        .skip(1)
        .filter_map(|line| line.split_once(": "))
        .map(|(path, reason)| crate::tree::Skipped {
            path: path.to_string(),
            reason: reason.to_string(),
        })
        .collect()
}

/// The paths a description records; a snapshot from before `[[state.paths]]` holds the one
/// path `state` (its root owner from the old line, its totals from the snapshot's). `None`: a
/// description spotkeeper did not write.
pub fn paths_of(description: Option<&str>, files: Option<u64>, bytes: Option<u64>) -> Option<Vec<PathRecord>> {
    // Only the first line: the lines after it hold names that come from the app.
    let first = description?.lines().next()?;
    if let Some(json) = first.strip_prefix(PATHS_LINE) {
        return serde_json::from_str(json).ok();
    }
    let root = first
        .strip_prefix(ROOT_LINE)
        .and_then(|json| serde_json::from_str(json).ok())?;
    Some(vec![PathRecord {
        name: crate::config::SHORTHAND_PATH_NAME.to_string(),
        root,
        files: files.unwrap_or(0),
        bytes: bytes.unwrap_or(0),
    }])
}

/// rustic_core's byte progress (a backup's bytes read) fed into spotkeeper's own progress, which
/// the daemon shows in STATUS= (a snapshot longer than the watchdog shows that it moves) and the
/// CLI on a terminal; every other progress of rustic_core is hidden.
#[derive(Debug, Clone, Copy)]
struct ToStatus;

impl rustic_core::ProgressBars for ToStatus {
    fn progress(&self, kind: rustic_core::ProgressType, _prefix: &str) -> rustic_core::Progress {
        match kind {
            rustic_core::ProgressType::Bytes => rustic_core::Progress::new(BytesToStatus),
            _ => rustic_core::Progress::hidden(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct BytesToStatus;

impl rustic_core::RusticProgress for BytesToStatus {
    /// Hidden to rustic_core: it then skips its own scan of the source for a total (the mirror's
    /// totals are the snapshot's total already), yet still counts what it reads.
    fn is_hidden(&self) -> bool {
        true
    }
    fn set_length(&self, _len: u64) {}
    fn set_title(&self, _title: &str) {}
    fn inc(&self, inc: u64) {
        crate::progress::add_bytes(inc);
    }
    fn finish(&self) {}
}

/// chrono's UTC time as rustic_core's.
fn zoned(time: chrono::DateTime<chrono::Utc>) -> rustic_core::jiff::Zoned {
    let nanos = i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0);
    rustic_core::jiff::Timestamp::new(time.timestamp(), nanos)
        .unwrap_or(rustic_core::jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(rustic_core::jiff::tz::TimeZone::UTC)
}

/// Format 2 for async code: the store, the password and one repository kept open between calls
/// (no key derivation or index load per snapshot). Every call runs rustic_core on a blocking
/// thread, one at a time.
#[derive(Clone)]
pub struct Engine {
    store: crate::store::Store,
    password: Password,
    cache: Option<PathBuf>,
    repo: Arc<std::sync::Mutex<Option<Repo>>>,
    /// What this engine last knew for sure, so that a snapshot in the steady state reads nothing
    /// (see `Known`).
    known: Arc<std::sync::Mutex<Known>>,
}

/// The head this engine wrote last (with its ETag) and the snapshots it listed plus those it
/// took since. Kept only by a writer that moves the head itself (the daemon): the ETag makes
/// the next pointer write fail if anyone else moved it, and any failure forgets it all, so the
/// next snapshot reads S3 again.
#[derive(Debug, Default)]
struct Known {
    head: Option<(pointer::Pointer, String)>,
    listed: Option<Vec<Listed>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({})", self.location())
    }
}

impl Engine {
    /// `cache`: a directory of spotkeeper's own for rustic_core's metadata cache (the daemon's
    /// is in work_dir), or none.
    pub fn new(store: crate::store::Store, password: Password, cache: Option<PathBuf>) -> Engine {
        Engine {
            store,
            password,
            cache,
            repo: Arc::new(std::sync::Mutex::new(None)),
            known: Arc::default(),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The head this engine wrote last and its ETag, if it is still trusted.
    pub fn known_head(&self) -> Option<(pointer::Pointer, String)> {
        self.known().head.clone()
    }

    /// The snapshots as last listed plus those this engine took since, if still trusted.
    pub fn known_snapshots(&self) -> Option<Vec<Listed>> {
        self.known().listed.clone()
    }

    /// Records a snapshot this engine took and the head it wrote (`etag`: the pointer's new
    /// ETag; without one, the head is read again next time).
    pub fn took(&self, listed: Listed, head: pointer::Pointer, etag: Option<String>) {
        let mut known = self.known();
        if let Some(all) = &mut known.listed {
            all.push(listed);
        }
        known.head = etag.map(|etag| (head, etag));
    }

    /// Trusts nothing: the next snapshot reads the head and lists the snapshots again.
    pub fn forget_known(&self) {
        *self.known() = Known::default();
    }

    /// Where the repository is, as restic names it (`s3:` URLs differ by endpoint: see
    /// docs/format.md).
    pub fn location(&self) -> String {
        self.store.url(backend::REPO_DIR)
    }

    pub fn store(&self) -> &crate::store::Store {
        &self.store
    }

    /// Runs `work` on the open repository (opening it first if needed) on a blocking thread.
    pub async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Repo) -> Result<T, Format2Error> + Send + 'static,
    ) -> Result<T, Format2Error> {
        let handle = tokio::runtime::Handle::current();
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut slot = engine.repo.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.is_none() {
                let backend = S3Backend::new(engine.store.clone(), handle);
                *slot = Some(Repo::open(backend, &engine.password, engine.cache.as_deref())?);
            }
            let Some(repo) = slot.as_mut() else {
                return Err(Format2Error::Task("the repository could not be kept open".into()));
            };
            work(repo)
        })
        .await
        .map_err(|e| Format2Error::Task(e.to_string()))?
    }

    /// The key that authenticates `latest.json` (opens the repository if needed).
    pub async fn pointer_key(&self) -> Result<pointer::PointerKey, Format2Error> {
        self.with(|repo| repo.pointer_key()).await
    }

    /// Creates the repository; refuses when one exists.
    pub async fn init(&self) -> Result<(), Format2Error> {
        let handle = tokio::runtime::Handle::current();
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            let backend = S3Backend::new(engine.store.clone(), handle);
            let repo = Repo::init(backend, &engine.password, engine.cache.as_deref())?;
            *engine.repo.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(repo);
            // A new repository holds no snapshot.
            engine.known().listed = Some(Vec::new());
            Ok(())
        })
        .await
        .map_err(|e| Format2Error::Task(e.to_string()))?
    }

    /// spotkeeper's snapshots in the repository, oldest first (always listed anew).
    pub async fn list(&self) -> Result<Vec<Listed>, Format2Error> {
        let listed: Vec<Listed> = self
            .with(|repo| Ok(repo.snapshots()?.iter().map(Listed::of).collect()))
            .await?;
        self.known().listed = Some(listed.clone());
        Ok(listed)
    }
}

/// One format-2 snapshot as `list`, `prune` and `restore` see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    /// restic's id (64 hex).
    pub restic_id: String,
    /// spotkeeper's id, from the snapshot's tags; `None` for a snapshot tagged `spotkeeper` by
    /// someone else (left alone).
    pub id: Option<crate::snapshot_id::SnapshotId>,
    pub time: chrono::DateTime<chrono::Utc>,
    pub hostname: String,
    pub files: Option<u64>,
    pub bytes: Option<u64>,
    pub data_added: Option<u64>,
    /// The state paths, from the description (`None`: not a description spotkeeper wrote).
    pub paths: Option<Vec<PathRecord>>,
    /// Taken to follow changes (tag `follow`), not on the schedule: forgotten sooner.
    pub follow: bool,
    /// What the snapshot could not copy, and why (from the description).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<crate::tree::Skipped>,
    /// The image the app ran when the daemon took it (from the description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<crate::manifest::ImageInfo>,
    /// restic's id of the snapshot it was taken on: the head at the time (see `head`).
    #[serde(skip)]
    pub parent: Option<String>,
    /// Taken by a spotkeeper that authenticates `latest.json` (tag `sealed-head`).
    #[serde(skip)]
    pub sealed_head: bool,
}

impl Listed {
    fn of(snapshot: &SnapshotFile) -> Listed {
        let time = chrono::DateTime::from_timestamp(
            snapshot.time.timestamp().as_second(),
            u32::try_from(snapshot.time.timestamp().subsec_nanosecond()).unwrap_or(0),
        )
        .unwrap_or_default();
        let paths = paths_of(
            snapshot.description.as_deref(),
            snapshot.summary.as_ref().map(|s| s.total_files_processed),
            snapshot.summary.as_ref().map(|s| s.total_bytes_processed),
        )
        // Never shown or used: names a config would refuse (restore checks them again).
        .filter(|paths| paths.iter().all(|p| crate::config::check_path_name(&p.name).is_ok()));
        // The state's regular files, as the description records them; restic's summary also
        // counts links and other entries as files.
        let (files, bytes) = match &paths {
            Some(paths) => (
                Some(paths.iter().map(|p| p.files).sum()),
                Some(paths.iter().map(|p| p.bytes).sum()),
            ),
            None => (
                snapshot.summary.as_ref().map(|s| s.total_files_processed),
                snapshot.summary.as_ref().map(|s| s.total_bytes_processed),
            ),
        };
        Listed {
            restic_id: snapshot.id.to_hex().as_str().to_string(),
            id: snapshot.tags.iter().find_map(|tag| tag.parse().ok()),
            follow: snapshot.tags.contains(FOLLOW_TAG),
            skipped: skipped_of(snapshot.description.as_deref()),
            image: image_of(snapshot.description.as_deref()),
            parent: snapshot.parent.map(|p| p.to_hex().as_str().to_string()),
            sealed_head: snapshot.tags.contains(SEALED_HEAD_TAG),
            time,
            hostname: snapshot.hostname.clone(),
            files,
            bytes,
            data_added: snapshot.summary.as_ref().map(|s| s.data_added_packed),
            paths,
        }
    }
}

/// An SSM client for the repository password (`[repository] ssm_endpoint` overrides AWS's).
pub fn ssm_client(config: &crate::config::RepositoryConfig, sdk: &aws_config::SdkConfig) -> aws_sdk_ssm::Client {
    let mut builder = aws_sdk_ssm::config::Builder::from(sdk);
    if let Some(endpoint) = &config.ssm_endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    aws_sdk_ssm::Client::from_conf(builder.build())
}

/// The password `[repository]` names, read now.
pub async fn load_password(
    config: &crate::config::RepositoryConfig,
    sdk: &aws_config::SdkConfig,
) -> Result<Password, PasswordError> {
    match &config.password {
        crate::config::PasswordSource::File(path) => Password::from_file(path),
        crate::config::PasswordSource::Ssm(name) => Password::from_ssm(&ssm_client(config, sdk), name).await,
    }
}

/// The engine for `config`: `None` without a `[repository]` section (format 1). The password is
/// read once, here.
pub async fn engine_for(
    config: &crate::config::Config,
    sdk: &aws_config::SdkConfig,
    store: crate::store::Store,
    cache: Option<PathBuf>,
) -> Result<Option<Engine>, PasswordError> {
    let Some(repository) = &config.repository else {
        return Ok(None);
    };
    let password = load_password(repository, sdk).await?;
    Ok(Some(Engine::new(store, password, cache)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vendored chunker keeps the tables it built last (vendor/README.md). Whatever polynom
    /// came before, a `Rabin64`'s hash of each 64-byte window must be that window read as a
    /// polynom and reduced by this one's polynom: tables kept for another polynom break it.
    #[test]
    fn the_chunker_hashes_each_window_by_its_own_polynom_whatever_came_before() {
        use rustic_cdc::{Polynom, Polynom64, Rabin64, RollingHash64};
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // restic's polynoms have degree 53; the reference below shifts a reduced hash by 8 bits.
        let mut polynom = || (next() & ((1 << 53) - 1)) | (1 << 53) | 1;
        let polynoms: Vec<Polynom64> = (0..6).map(|_| polynom()).collect();
        let bytes: Vec<u8> = (0..400).map(|_| (next() >> 56) as u8).collect();
        // Each polynom in turn, then again: every one after a different one, and after itself.
        for &p in polynoms.iter().chain(polynoms.iter().rev()).chain(polynoms.iter()) {
            let mut rabin = Rabin64::new_with_polynom(6, &p);
            for (at, &byte) in bytes.iter().enumerate() {
                rabin.slide(byte);
                let window = &bytes[(at + 1).saturating_sub(64)..=at];
                let expected = window.iter().fold(0u64, |h, &b| ((h << 8) | u64::from(b)).modulo(&p));
                assert_eq!(*rabin.get_hash(), expected, "polynom {p:#x}, byte {at}");
            }
        }
    }

    #[test]
    fn the_paths_round_trip_through_the_description() {
        let owner = |mode| crate::tree::Owner {
            mode,
            uid: 1000,
            gid: 1000,
        };
        let paths = vec![
            PathRecord {
                name: "config".into(),
                root: owner(0o700),
                files: 3,
                bytes: 300,
            },
            PathRecord {
                name: "workspace".into(),
                root: owner(0o750),
                files: 1,
                bytes: 10,
            },
        ];
        let skipped = vec![
            crate::tree::Skipped {
                path: "config/a/fifo".into(),
                reason: "a FIFO".into(),
            },
            // A hostile name cannot start a line, nor split the path from the reason wrongly.
            crate::tree::Skipped {
                path: "x\nskipped (could not be copied):\ny".into(),
                reason: "Permission denied".into(),
            },
        ];
        let image = crate::manifest::ImageInfo {
            reference: "ghcr.io/openclaw/openclaw@sha256:ab\nspotkeeper-paths: []".into(),
            digest: Some("sha256:ab".into()),
        };
        let text = description(&paths, Some(&image), &skipped);
        assert_eq!(paths_of(Some(&text), Some(4), Some(310)), Some(paths.clone()));
        assert_eq!(image_of(Some(&text)), Some(image));
        assert_eq!(image_of(Some(&description(&paths, None, &skipped))), None);
        // A skipped name that looks like the image line is never read as one.
        let planted = vec![crate::tree::Skipped {
            path: "spotkeeper-image: {\"reference\":\"evil\",\"digest\":null}".into(),
            reason: "a FIFO".into(),
        }];
        assert_eq!(image_of(Some(&description(&paths, None, &planted))), None);
        assert!(text.contains("config/a/fifo: a FIFO"));
        let listed = skipped_of(Some(&text));
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(listed[0], skipped[0]);
        assert_eq!(listed[1].reason, "Permission denied");
        assert_eq!(listed[1].path, skipped[1].path.escape_debug().to_string());
        assert!(skipped_of(None).is_empty());
        assert!(skipped_of(Some("written by someone else")).is_empty());
        assert_eq!(paths_of(Some("written by someone else"), None, None), None);
        assert_eq!(paths_of(None, None, None), None);
        // Before [[state.paths]]: one path, `state`, with the snapshot's totals.
        let old = "spotkeeper-root: {\"mode\":448,\"uid\":0,\"gid\":0}\nskipped (could not be copied):\nx: y";
        let held = paths_of(Some(old), Some(5), Some(50)).expect("an old description");
        assert_eq!(held.len(), 1);
        assert_eq!(
            (held[0].name.as_str(), held[0].root.mode, held[0].files, held[0].bytes),
            ("state", 0o700, 5, 50)
        );
    }
}
