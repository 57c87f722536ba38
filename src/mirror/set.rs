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
use crate::walk::ChangeSet;
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
                Some(Changes::Paths(set)) => mirror.sync_changes(&set, cancel, None)?,
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

    /// Copies what the trackers saw change so far (`TrackerSet::peek`) while the app runs, so
    /// that the frozen sync after it finds most of it done: a file the app last changed more
    /// than a second before this started, and did not change while it was copied, is recorded
    /// as copied (as in `sync` with `unfrozen_since`), and the frozen sync skips it while its
    /// fingerprint holds. Anything else is copied again frozen: the frozen sync takes every path
    /// named here again. A path whose tracker asks for a full walk is left to the frozen sync.
    pub fn presync(&mut self, changes: &[Option<ChangeSet>], cancel: &AtomicBool) -> Result<SyncStats, MirrorError> {
        let since = SystemTime::now();
        let mut total = SyncStats::default();
        for ((_, mirror), changes) in self.mirrors.iter_mut().zip(changes) {
            if let Some(set) = changes.as_ref().filter(|set| !set.is_empty()) {
                add(&mut total, mirror.sync_changes(set, cancel, Some(since))?);
            }
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

    /// Each path's changes so far, left for the next `take` (`None` for an untracked path or
    /// one whose next take is a full walk).
    pub fn peek(&self) -> Vec<Option<ChangeSet>> {
        self.trackers
            .iter()
            .map(|t| t.as_ref().and_then(ChangeTracker::peek))
            .collect()
    }

    /// Makes the next sync of every path a full walk.
    pub fn request_full_walk(&self, reason: &str) {
        for tracker in self.trackers.iter().flatten() {
            tracker.request_full_walk(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::super::tests::Rng;
    use super::*;

    /// Every file under `root` (relative path, bytes) and every directory (no bytes).
    fn tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
        let mut found = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).expect("list") {
                let path = entry.expect("entry").path();
                let rel = path.strip_prefix(root).expect("under").display().to_string();
                if path.is_dir() {
                    found.insert(rel, None);
                    stack.push(path);
                } else {
                    found.insert(rel, Some(fs::read(&path).expect("read")));
                }
            }
        }
        found
    }

    /// Waits until everything written so far is more than a second old to the presync (whose
    /// clock is the system's), bounded.
    fn age_past_a_second(written: SystemTime) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while SystemTime::now() < written + Duration::from_millis(1100) {
            assert!(Instant::now() < deadline, "the clock did not move");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One write of the app: a page of the database rewritten, a log appended, a file replaced,
    /// created or removed.
    fn app_write(state: &Path, rng: &mut Rng) {
        let db = state.join("memory/main.sqlite");
        match rng.below(5) {
            0 | 1 => {
                let file = fs::OpenOptions::new().write(true).open(&db).expect("db");
                let pages = file.metadata().expect("meta").len() / 4096;
                file.write_all_at(&rng.bytes(4096), rng.below(pages) * 4096)
                    .expect("page");
            }
            2 => {
                use std::io::Write;
                let mut log = fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(state.join("sessions/a.jsonl"))
                    .expect("log");
                log.write_all(&rng.bytes(100)).expect("append");
            }
            3 => {
                let temp = state.join("creds.json.tmp");
                let len = 1 + rng.below(300) as usize;
                fs::write(&temp, rng.bytes(len)).expect("write");
                fs::rename(&temp, state.join("creds.json")).expect("replace");
            }
            _ => {
                let name = state.join(format!("sessions/{}.jsonl", rng.below(4)));
                if name.exists() {
                    fs::remove_file(&name).expect("remove");
                } else {
                    fs::write(&name, rng.bytes(50)).expect("create");
                }
            }
        }
    }

    /// The presync copies while the app writes; the frozen sync after it (the app held still)
    /// must leave the mirror equal to the state whatever the app did during the presync, and a
    /// large file the app left alone before the presync is not copied again in the freeze.
    #[test]
    fn a_presync_under_a_writing_app_leaves_the_frozen_sync_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        fs::create_dir_all(state.join("memory")).expect("dir");
        fs::create_dir_all(state.join("sessions")).expect("dir");
        let mut rng = Rng(7);
        fs::write(state.join("memory/main.sqlite"), rng.bytes(3 << 20)).expect("db");
        let path = StatePath {
            name: "state".into(),
            dir: state.clone(),
            mount: None,
            exclude: Vec::new(),
        };
        let mut mirrors = MirrorSet::open(
            std::slice::from_ref(&path),
            &dir.path().join("mirror"),
            &dir.path().join("index"),
        )
        .expect("open");
        let trackers = TrackerSet::start(std::slice::from_ref(&path));
        let cancel = AtomicBool::new(false);
        mirrors.sync_changes(trackers.take(), &cancel).expect("first sync");
        for round in 0..16u64 {
            // The app writes, then (one round in four) leaves everything alone for over a second.
            for _ in 0..1 + rng.below(6) {
                app_write(&state, &mut rng);
            }
            let quiet = round % 4 == 0;
            if quiet {
                age_past_a_second(SystemTime::now());
            }
            // In the other rounds the app goes on writing while the presync copies.
            let stop = Arc::new(AtomicBool::new(false));
            let writer = (!quiet).then(|| {
                let (state, stop) = (state.clone(), Arc::clone(&stop));
                let mut rng = Rng(round);
                std::thread::spawn(move || {
                    let mut writes = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && writes < 10_000 {
                        app_write(&state, &mut rng);
                        writes += 1;
                    }
                })
            });
            let presynced = mirrors.presync(&trackers.peek(), &cancel).expect("presync");
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(writer) = writer {
                writer.join().expect("writer");
            }
            // Frozen: the app is still from here.
            let frozen = mirrors.sync_changes(trackers.take(), &cancel).expect("frozen sync");
            let context = format!("round {round}: presync {presynced:?}, frozen {frozen:?}");
            assert!(presynced.changed(), "{context}");
            assert!(
                tree(&state) == tree(&dir.path().join("mirror/state")),
                "{context}: the mirror differs from the state"
            );
            if quiet {
                assert_eq!(frozen.copied, 0, "{context}: what was left alone was copied again");
            }
        }
        // A presync that fails (here: cancelled before it copied anything) loses nothing: the
        // frozen sync still has every change.
        for _ in 0..5 {
            app_write(&state, &mut rng);
        }
        let failed = mirrors.presync(&trackers.peek(), &AtomicBool::new(true));
        assert!(
            matches!(failed, Err(MirrorError::Cancelled)),
            "{:?}",
            failed.map(|_| ())
        );
        let frozen = mirrors.sync_changes(trackers.take(), &cancel).expect("frozen sync");
        assert!(frozen.changed(), "{frozen:?}");
        assert!(
            tree(&state) == tree(&dir.path().join("mirror/state")),
            "after a failed presync, the mirror differs from the state"
        );
    }
}
