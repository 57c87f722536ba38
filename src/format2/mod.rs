//! Format 2: snapshots in a restic repository (through `rustic_core`) on spotkeeper's own S3
//! client: content-defined chunks, deduplicated and encrypted (AES-256 + Poly1305), so a
//! snapshot uploads what changed and stock `restic` can list, check and restore it.
//!
//! This is the repository engine and its storage edge; the commands and the daemon do not use it
//! yet (docs/format2-research.md has the plan and the findings it rests on). Everything here is
//! synchronous: call it from `spawn_blocking`, never from async code (see `backend`).

pub mod backend;
pub mod password;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustic_core::repofile::SnapshotFile;
use rustic_core::{
    BackupOptions, CheckOptions, ConfigOptions, Credentials, KeyOptions, LocalDestination, LsOptions, OpenStatus,
    PathList, Repository, RepositoryBackends, RepositoryOptions, RestoreOptions, RusticError, SnapshotOptions,
    WriteBackend,
};

pub use backend::S3Backend;
pub use password::{Password, PasswordError};

/// The tag every spotkeeper snapshot carries (restic shows tags; it ignores rustic's label).
pub const TAG: &str = "spotkeeper";
/// Where the state sits inside each snapshot, whatever its directory on the host.
pub const SNAPSHOT_ROOT: &str = "/state";

#[derive(Debug, thiserror::Error)]
pub enum Format2Error {
    #[error("{location}: {source}")]
    Repository {
        location: String,
        #[source]
        source: Box<RusticError>,
    },
    #[error("{location} already holds a repository; refusing to initialise it again")]
    Exists { location: String },
    #[error("{location} holds no repository yet: create it with `spotkeeper init`")]
    Missing { location: String },
    #[error("no snapshot {wanted} in {location}")]
    NoSnapshot { location: String, wanted: String },
    #[error("cannot back up {path}: {message}")]
    Source { path: PathBuf, message: String },
}

/// An open repository. Indexing consumes rustic_core's handle, so each operation takes it and
/// gives it back; one that fails loses it, and the next operation opens the repository again.
pub struct Repo {
    repo: Option<Repository<OpenStatus>>,
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
        let backends = RepositoryBackends::new(Arc::new(backend) as Arc<dyn WriteBackend>, None);
        let repo = Repository::new(&options(cache), &backends).map_err(&wrap)?;
        if repo.config_id().map_err(&wrap)?.is_some() {
            return Err(Format2Error::Exists { location });
        }
        // A password key, never a bare master key: restic opens the repository with it.
        let credentials = Credentials::password(password.expose());
        let key = KeyOptions::default()
            .hostname("spotkeeper".to_string())
            .username("spotkeeper".to_string())
            .with_created(true);
        let repo = repo
            .init(&credentials, &key, &ConfigOptions::default())
            .map_err(&wrap)?;
        Ok(Repo {
            repo: Some(repo),
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
        let backends = RepositoryBackends::new(Arc::new(backend) as Arc<dyn WriteBackend>, None);
        let mut repo = Repo {
            repo: None,
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
        if let Some(repo) = self.repo.take() {
            return Ok(repo);
        }
        let wrap = wrap(&self.location);
        let repo = Repository::new(&options(self.cache.as_deref()), &self.backends).map_err(&wrap)?;
        if repo.config_id().map_err(&wrap)?.is_none() {
            return Err(Format2Error::Missing {
                location: self.location.clone(),
            });
        }
        repo.open(&self.credentials).map_err(&wrap)
    }

    /// Backs up `source` (stored as `/state`), tagged `spotkeeper` and `tags`, under the stable
    /// `host` name (the parent snapshot is found by host, and Spot hostnames change).
    ///
    /// rustic_core walks `source` by path: give it spotkeeper's own frozen mirror (filled by the
    /// descriptor-based walker), never the live state directory, which the app can rearrange.
    pub fn backup(&mut self, source: &Path, host: &str, tags: &[String]) -> Result<Backup, Format2Error> {
        let wrap = wrap(&self.location);
        let repo = self.take()?.to_indexed_ids().map_err(&wrap)?;
        let mut all_tags = vec![TAG.to_string()];
        all_tags.extend(tags.iter().cloned());
        let mut snapshot = SnapshotOptions::default()
            .label(TAG.to_string())
            .host(host.to_string())
            .command("spotkeeper snapshot".to_string())
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
        let options = BackupOptions::default().as_path(PathBuf::from(SNAPSHOT_ROOT));
        let done = repo.backup(&options, &paths, snapshot).map_err(&wrap)?;
        self.repo = Some(repo.drop_index());
        let summary = done.summary.clone().unwrap_or_default();
        Ok(Backup {
            id: done.id.to_hex().as_str().to_string(),
            files: summary.total_files_processed,
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

    /// Restores the snapshot `id` (restic's id or a unique prefix) into `dest`, an empty or absent
    /// directory.
    pub fn restore(&mut self, id: &str, dest: &Path) -> Result<(), Format2Error> {
        let wrap = wrap(&self.location);
        let repo = self.take()?.to_indexed().map_err(&wrap)?;
        let snapshot =
            repo.get_snapshot_from_str(id, |s| s.tags.contains(TAG))
                .map_err(|_| Format2Error::NoSnapshot {
                    location: self.location.clone(),
                    wanted: id.to_string(),
                })?;
        let node = repo
            .node_from_snapshot_and_path(&snapshot, SNAPSHOT_ROOT)
            .map_err(&wrap)?;
        let nodes = repo.ls(&node, &LsOptions::default()).map_err(&wrap)?;
        let dest = LocalDestination::new(&format!("{}/", dest.display()), true, false).map_err(&wrap)?;
        let options = RestoreOptions::default();
        let plan = repo
            .prepare_restore(&options, nodes.clone(), &dest, false)
            .map_err(&wrap)?;
        repo.restore(plan, &options, nodes, &dest).map_err(&wrap)?;
        self.repo = Some(repo.drop_index());
        Ok(())
    }

    /// Reads every pack back and checks every blob (`restic check --read-data`).
    pub fn check_read_data(&mut self) -> Result<(), Format2Error> {
        let wrap = wrap(&self.location);
        let repo = self.take()?;
        let results = repo.check(CheckOptions::default().read_data(true));
        self.repo = Some(repo);
        results.map_err(&wrap)?.is_ok().map_err(&wrap)?;
        Ok(())
    }
}
