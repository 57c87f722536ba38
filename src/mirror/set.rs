//! The state's paths together: one mirror and one change tracker per path, synced in one freeze.
//!
//! The mirrors live under one directory, `<root>/<name>/`, which is what a format-2 snapshot
//! stores (each path at `/<name>/`); their indexes live apart, in `<index_dir>/<name>.index`, so
//! that no index is ever stored.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use super::{Mirror, MirrorError, SyncStats};
use crate::config::StatePath;
use crate::exclude::Excludes;
use crate::tree::Skipped;
use crate::walk::tracker::{ChangeTracker, Changes};

/// The failpoint after each path's mirror is synced (`crate::failpoint`).
pub const PATH_SYNCED: &str = "mirror-path-synced";

/// One path's files and bytes in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathTotals {
    pub name: String,
    pub files: u64,
    pub bytes: u64,
}

/// The mirrors of every state path, in config order.
pub struct MirrorSet {
    root: PathBuf,
    mirrors: Vec<(String, Mirror)>,
}

impl MirrorSet {
    /// Opens (creating them if needed) the mirrors of `paths` under `root`, with indexes in
    /// `index_dir`, and removes from `root` anything that is not one of them (a path removed from
    /// the config must not linger in snapshots).
    pub fn open(paths: &[StatePath], root: &Path, index_dir: &Path) -> Result<MirrorSet, MirrorError> {
        let write_error = |path: &Path, source| MirrorError::Write {
            path: path.to_path_buf(),
            source,
        };
        // 0700 whatever the umask (and an older one left open is closed): the mirrors hold the
        // state, the indexes every file name in it.
        crate::private_fs::ensure_dir(root).map_err(|e| write_error(root, e))?;
        crate::private_fs::ensure_dir(index_dir).map_err(|e| write_error(index_dir, e))?;
        for entry in fs::read_dir(root).map_err(|e| write_error(root, e))? {
            let entry = entry.map_err(|e| write_error(root, e))?;
            let name = entry.file_name();
            if paths.iter().any(|p| name.as_encoded_bytes() == p.name.as_bytes()) {
                continue;
            }
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing a mirror that is no longer a state path");
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| write_error(&path, e))?;
            let _ = fs::remove_file(index_dir.join(index_name(&name.to_string_lossy())));
        }
        let mut mirrors = Vec::with_capacity(paths.len());
        for path in paths {
            let excludes = Excludes::new(&path.dir, &path.exclude).map_err(|e| MirrorError::Read {
                path: path.dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
            })?;
            let mirror = Mirror::open_with_index(
                &path.dir,
                &root.join(&path.name),
                &index_dir.join(index_name(&path.name)),
                &excludes,
            )?;
            mirrors.push((path.name.clone(), mirror));
        }
        Ok(MirrorSet {
            root: root.to_path_buf(),
            mirrors,
        })
    }

    /// The directory holding one mirror per path (what format 2 backs up).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The first path's mirror directory (what format 1, one path only, packs).
    pub fn primary_dir(&self) -> PathBuf {
        self.root.join(&self.mirrors[0].0)
    }

    /// Walks every path whole (see `Mirror::sync`), summing the stats; stops at the first error.
    pub fn sync(&mut self, cancel: &AtomicBool, unfrozen_since: Option<SystemTime>) -> Result<SyncStats, MirrorError> {
        let mut total = SyncStats::default();
        for (_, mirror) in &mut self.mirrors {
            add(&mut total, mirror.sync(cancel, unfrozen_since)?);
            crate::failpoint::hit(PATH_SYNCED);
        }
        Ok(total)
    }

    /// Syncs each path as its tracker says (`changes[i]` for path `i`; `None`: walk it whole).
    pub fn sync_changes(
        &mut self,
        changes: Vec<Option<Changes>>,
        cancel: &AtomicBool,
    ) -> Result<SyncStats, MirrorError> {
        let mut total = SyncStats::default();
        for ((name, mirror), changes) in self.mirrors.iter_mut().zip(changes) {
            let stats = match changes {
                Some(Changes::Paths(set)) if set.is_empty() => SyncStats::default(),
                Some(Changes::Paths(set)) => mirror.sync_changes(&set, cancel)?,
                Some(Changes::FullWalk { reason }) => {
                    tracing::info!(path = %name, reason, "walking the whole state path");
                    mirror.sync(cancel, None)?
                }
                None => mirror.sync(cancel, None)?,
            };
            add(&mut total, stats);
            crate::failpoint::hit(PATH_SYNCED);
        }
        Ok(total)
    }

    /// Writes every index (see `Mirror::save`); the first failure is returned, all are tried.
    pub fn save(&self) -> Result<(), MirrorError> {
        let mut first = Ok(());
        for (_, mirror) in &self.mirrors {
            if let Err(e) = mirror.save()
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// What the walks skipped; with several paths each entry is named `<path>/<entry>`.
    pub fn skipped(&self) -> Vec<Skipped> {
        let several = self.mirrors.len() > 1;
        self.mirrors
            .iter()
            .flat_map(|(name, mirror)| {
                mirror.skipped().into_iter().map(move |s| Skipped {
                    path: if several { format!("{name}/{}", s.path) } else { s.path },
                    reason: s.reason,
                })
            })
            .collect()
    }

    /// Each path's files and bytes, from the indexes.
    pub fn totals(&self) -> Vec<PathTotals> {
        self.mirrors
            .iter()
            .map(|(name, mirror)| {
                let (files, bytes) = mirror.totals();
                PathTotals {
                    name: name.clone(),
                    files,
                    bytes,
                }
            })
            .collect()
    }
}

fn index_name(name: &str) -> String {
    format!("{name}.{}", super::INDEX_SUFFIX)
}

fn add(total: &mut SyncStats, stats: SyncStats) {
    total.copied += stats.copied;
    total.copied_bytes += stats.copied_bytes;
    total.removed += stats.removed;
    total.unchanged += stats.unchanged;
    total.skipped += stats.skipped;
    total.full_walk |= stats.full_walk;
}

/// One change tracker per state path (a path whose tracker could not start has none: it is
/// walked whole at every sync).
pub struct TrackerSet {
    trackers: Vec<Option<ChangeTracker>>,
}

impl TrackerSet {
    /// Starts a tracker on each path; a failure is logged and leaves that path untracked.
    pub fn start(paths: &[StatePath]) -> TrackerSet {
        let trackers = paths
            .iter()
            .map(|path| {
                let excludes = Excludes::new(&path.dir, &path.exclude).ok()?;
                match ChangeTracker::start(&path.dir, &excludes) {
                    Ok(tracker) => {
                        tracing::info!(path = %path.name, watched = tracker.watched(), "watching the state path for changes");
                        Some(tracker)
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.name, error = %e, "cannot watch the state path; every snapshot walks all of it");
                        None
                    }
                }
            })
            .collect();
        TrackerSet { trackers }
    }

    /// True unless every path is tracked and none saw a change.
    pub fn has_changes(&self) -> bool {
        self.trackers
            .iter()
            .any(|t| t.as_ref().is_none_or(ChangeTracker::has_changes))
    }

    /// When the app first changed something in any path since the last take.
    pub fn first_change_at(&self) -> Option<std::time::SystemTime> {
        self.trackers
            .iter()
            .flatten()
            .filter_map(ChangeTracker::first_change_at)
            .min()
    }

    /// True when every path is tracked (follow snapshots need to know when the app writes).
    pub fn complete(&self) -> bool {
        self.trackers.iter().all(Option::is_some)
    }

    /// Each path's changes since the last take (`None` for an untracked path).
    pub fn take(&self) -> Vec<Option<Changes>> {
        self.trackers
            .iter()
            .map(|t| t.as_ref().map(ChangeTracker::take))
            .collect()
    }

    /// Makes the next sync of every path a full walk.
    pub fn request_full_walk(&self, reason: &str) {
        for tracker in self.trackers.iter().flatten() {
            tracker.request_full_walk(reason);
        }
    }
}
