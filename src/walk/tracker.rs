//! Change tracking with inotify: a watch on every directory of the state tree keeps the set of
//! paths that changed since the last `take`, so a frozen sync copies only those
//! (`mirror::Mirror::sync_changes`) instead of walking everything while the app is paused.
//!
//! Watches are added by descriptor: each directory is opened from the root component by
//! component without following links, and watched through `/proc/self/fd/N`, so a link swapped
//! in by the app can never put a watch outside the tree. Whenever the set may be incomplete —
//! the kernel queue overflowed, the watch limit was reached, a directory was renamed (its
//! watches' paths are stale), the root went away, more paths than `MAX_TRACKED_PATHS` — `take`
//! answers `Changes::FullWalk` with the reason, after re-arming every watch, so that the full
//! walk that follows misses nothing. Writes through `mmap` raise no event: a full walk at
//! least daily (the caller's job) catches what inotify cannot see.

use std::collections::{BTreeSet, HashMap};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

use super::{MAX_DEPTH, WalkError, fd};
use crate::exclude::Excludes;

/// Changed paths kept between two `take`s; past it, a full walk is cheaper than the set.
pub const MAX_TRACKED_PATHS: usize = 100_000;
/// Directories watched at most (on top of the kernel's own `fs.inotify.max_user_watches`).
pub const MAX_WATCHES: usize = 65_536;
/// How often the background thread wakes to check that it should stop, in milliseconds.
const POLL_MS: i64 = 500;
/// Read buffer for events.
const EVENT_BUFFER: usize = 64 * 1024;

/// Paths that changed since the last `take`, relative to the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Entries to sync: a file or link for its content, a directory with everything under it.
    pub paths: BTreeSet<String>,
    /// Directories to refresh for their own mode, owner and mtime only ("" is the root).
    pub dirs: BTreeSet<String>,
}

impl ChangeSet {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.dirs.is_empty()
    }
}

/// What a tracker reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Exactly these changed (possibly nothing).
    Paths(ChangeSet),
    /// The tracker cannot vouch for a list: walk everything, and say why.
    FullWalk { reason: String },
}

/// Options of a tracker; `Default` is what the daemon wants.
#[derive(Debug, Clone)]
pub struct TrackerOptions {
    /// Drain the kernel queue on a thread of its own (else only in `take`).
    pub background: bool,
    /// Directories watched at most; more is handled as the kernel's watch limit.
    pub max_watches: usize,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            background: true,
            max_watches: MAX_WATCHES,
        }
    }
}

/// A recursive inotify watch on a state tree. See the module doc.
pub struct ChangeTracker {
    inner: Arc<Mutex<Inner>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    root_path: PathBuf,
    excludes: Excludes,
    max_watches: usize,
    inotify: OwnedFd,
    /// Watch descriptor -> the directory it watches, relative to the root.
    watches: HashMap<i32, String>,
    changes: ChangeSet,
    /// When the first change since the last `take` was seen (the app's changes only, not a
    /// requested full walk): a follow snapshot is due `follow` after it.
    first_change: Option<std::time::SystemTime>,
    /// Why the next `take` must answer a full walk.
    full_walk: Option<String>,
    buffer: Vec<MaybeUninit<u8>>,
}

/// What an event is about, copied out of the read buffer.
struct Event {
    wd: i32,
    flags: ReadFlags,
    name: Option<Vec<u8>>,
}

impl ChangeTracker {
    /// Watches `root` (minus `excludes`) with a thread that drains the kernel queue. The first
    /// `take` answers a full walk: nothing is known about what happened before.
    pub fn start(root: &Path, excludes: &Excludes) -> Result<ChangeTracker, WalkError> {
        ChangeTracker::with_options(root, excludes, TrackerOptions::default())
    }

    /// `start` with explicit options (tests use a small watch limit, or no thread).
    pub fn with_options(root: &Path, excludes: &Excludes, options: TrackerOptions) -> Result<ChangeTracker, WalkError> {
        let root_error = |source| WalkError::Root {
            path: root.to_path_buf(),
            source,
        };
        let inotify = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).map_err(|e| root_error(e.into()))?;
        let mut inner = Inner {
            root_path: root.to_path_buf(),
            excludes: excludes.clone(),
            max_watches: options.max_watches,
            inotify,
            watches: HashMap::new(),
            changes: ChangeSet::default(),
            first_change: None,
            full_walk: Some("first sync since the change tracker started".into()),
            buffer: vec![MaybeUninit::uninit(); EVENT_BUFFER],
        };
        inner.arm().map_err(root_error)?;
        let inner = Arc::new(Mutex::new(inner));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = options.background.then(|| {
            let (inner, stop) = (Arc::clone(&inner), Arc::clone(&stop));
            std::thread::spawn(move || drain_loop(&inner, &stop))
        });
        Ok(ChangeTracker { inner, stop, thread })
    }

    /// What changed since the last call (draining the kernel queue first, so that a change
    /// made before this call is in the answer), and starts a new set. A `FullWalk` answer
    /// re-arms every watch before returning: walk after it, not before.
    pub fn take(&self) -> Changes {
        let mut inner = lock(&self.inner);
        inner.drain();
        let changes = std::mem::take(&mut inner.changes);
        inner.first_change = None;
        match inner.full_walk.take() {
            Some(reason) => {
                if let Err(e) = inner.rearm() {
                    inner.full_walk = Some(format!("cannot watch the state directory: {e}"));
                }
                Changes::FullWalk { reason }
            }
            None => Changes::Paths(changes),
        }
    }

    /// What the next `take` would report, without taking it; `None` when it would ask for a
    /// full walk. The daemon copies these paths before it freezes the app (see
    /// `mirror::MirrorSet::presync`); the frozen sync then takes them all again.
    pub fn peek(&self) -> Option<ChangeSet> {
        let mut inner = lock(&self.inner);
        inner.drain();
        if inner.full_walk.is_some() {
            return None;
        }
        Some(inner.changes.clone())
    }

    /// Whether the next `take` would report anything (draining the kernel queue first), without
    /// taking it: the daemon freezes the app only when there is something to copy.
    pub fn has_changes(&self) -> bool {
        let mut inner = lock(&self.inner);
        inner.drain();
        inner.full_walk.is_some() || !inner.changes.is_empty()
    }

    /// When the app first changed something since the last `take` (draining the queue first);
    /// `None`: no change of the app's is pending.
    pub fn first_change_at(&self) -> Option<std::time::SystemTime> {
        let mut inner = lock(&self.inner);
        inner.drain();
        inner.first_change
    }

    /// Asks for a full walk at the next `take` (for example the daily one), with `reason`.
    pub fn request_full_walk(&self, reason: &str) {
        let mut inner = lock(&self.inner);
        inner.full_walk.get_or_insert_with(|| reason.to_string());
    }

    /// Directories watched now.
    pub fn watched(&self) -> usize {
        lock(&self.inner).watches.len()
    }
}

impl Drop for ChangeTracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves sets that are still sets: keep going.
    inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The background thread: wait for events (or the stop flag), drain them into the set.
fn drain_loop(inner: &Mutex<Inner>, stop: &AtomicBool) {
    let timeout = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: POLL_MS * 1_000_000,
    };
    while !stop.load(Ordering::Relaxed) {
        let ready = {
            let guard = lock(inner);
            let fd = rustix::io::fcntl_dupfd_cloexec(guard.inotify.as_fd(), 0);
            drop(guard);
            let Ok(fd) = fd else { return };
            let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
            rustix::event::poll(&mut fds, Some(&timeout)).unwrap_or(0)
        };
        if ready > 0 {
            lock(inner).drain();
        }
    }
}

impl Inner {
    /// A fresh inotify instance with a watch on every directory.
    fn rearm(&mut self) -> std::io::Result<()> {
        self.inotify = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        self.watches.clear();
        self.arm()
    }

    /// Watches the root and every directory under it.
    fn arm(&mut self) -> std::io::Result<()> {
        let root = fd::open_dir_path(&self.root_path)?;
        self.watch_tree(root, String::new(), 0);
        Ok(())
    }

    /// Watches the directory open as `dir` (at `rel`) and everything under it.
    fn watch_tree(&mut self, dir: OwnedFd, rel: String, depth: usize) {
        if !self.watch(dir.as_fd(), &rel) || depth >= MAX_DEPTH {
            return;
        }
        let Ok(names) = fd::list_dir(dir.as_fd()) else { return };
        for name in names {
            let Ok(text) = std::str::from_utf8(name.to_bytes()) else {
                continue;
            };
            let child_rel = fd::join(&rel, text);
            if self.excludes.is_excluded(Path::new(&child_rel), true) {
                continue;
            }
            // Only directories open with O_DIRECTORY|O_NOFOLLOW; anything else is skipped here.
            if let Ok(child) = fd::open_dir_at(dir.as_fd(), &name) {
                self.watch_tree(child, child_rel, depth + 1);
            }
        }
    }

    /// Adds a watch on the open directory `dir`; false (and a full walk) when it cannot.
    fn watch(&mut self, dir: BorrowedFd<'_>, rel: &str) -> bool {
        if self.watches.len() >= self.max_watches {
            self.full_walk.get_or_insert_with(|| {
                format!(
                    "more than {} directories to watch; falling back to full walks",
                    self.max_watches
                )
            });
            return false;
        }
        let mask = WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MODIFY
            | WatchFlags::ATTRIB
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR
            | WatchFlags::EXCL_UNLINK;
        // The magic link resolves to exactly the directory this descriptor holds.
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir));
        match inotify::add_watch(&self.inotify, proc_path.as_str(), mask) {
            Ok(wd) => {
                self.watches.insert(wd, rel.to_string());
                true
            }
            Err(e) => {
                let reason = match e {
                    Errno::NOSPC => "the inotify watch limit (fs.inotify.max_user_watches) was reached".to_string(),
                    other => format!("cannot watch {rel:?}: {other}"),
                };
                self.full_walk.get_or_insert(reason);
                false
            }
        }
    }

    /// Reads every queued event and folds it into the set.
    fn drain(&mut self) {
        let mut events = Vec::new();
        {
            let mut reader = inotify::Reader::new(&self.inotify, &mut self.buffer);
            loop {
                match reader.next() {
                    Ok(event) => events.push(Event {
                        wd: event.wd(),
                        flags: event.events(),
                        name: event.file_name().map(|n| n.to_bytes().to_vec()),
                    }),
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => continue,
                    Err(e) => {
                        self.full_walk
                            .get_or_insert_with(|| format!("cannot read inotify events: {e}"));
                        break;
                    }
                }
            }
        }
        let had_events = !events.is_empty();
        for event in events {
            self.apply(event);
        }
        // A change, or an event that made a full walk necessary (overflow, a renamed directory).
        if self.first_change.is_none() && (!self.changes.is_empty() || (had_events && self.full_walk.is_some())) {
            self.first_change = Some(std::time::SystemTime::now());
        }
        if self.changes.paths.len() + self.changes.dirs.len() > MAX_TRACKED_PATHS {
            self.full_walk
                .get_or_insert_with(|| format!("more than {MAX_TRACKED_PATHS} paths changed"));
            self.changes = ChangeSet::default();
        }
    }

    fn apply(&mut self, event: Event) {
        let flags = event.flags;
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            self.full_walk
                .get_or_insert_with(|| "the inotify queue overflowed (fs.inotify.max_queued_events)".into());
            return;
        }
        if flags.contains(ReadFlags::IGNORED) {
            self.watches.remove(&event.wd);
            return;
        }
        if flags.contains(ReadFlags::UNMOUNT) {
            self.full_walk
                .get_or_insert_with(|| "a filesystem under the state directory was unmounted".into());
            return;
        }
        let Some(dir_rel) = self.watches.get(&event.wd).cloned() else {
            return;
        };
        let is_dir = flags.contains(ReadFlags::ISDIR);
        let Some(name) = event.name else {
            // About the watched directory itself.
            if flags.intersects(ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF) {
                if dir_rel.is_empty() {
                    self.full_walk
                        .get_or_insert_with(|| "the state directory itself was moved or removed".into());
                } else {
                    self.changes.paths.insert(dir_rel);
                }
            } else if flags.contains(ReadFlags::ATTRIB) {
                self.changes.dirs.insert(dir_rel);
            }
            return;
        };
        let Ok(name) = String::from_utf8(name) else {
            return; // the walker skips names that are not UTF-8 anyway
        };
        let rel = fd::join(&dir_rel, &name);
        if self.excludes.is_excluded(Path::new(&rel), is_dir) {
            return;
        }
        if is_dir && flags.contains(ReadFlags::MOVED_FROM) {
            // Its watches (and its children's) now name a path that no longer exists.
            self.full_walk
                .get_or_insert_with(|| format!("directory {rel:?} was renamed"));
            return;
        }
        let listing_changed =
            flags.intersects(ReadFlags::CREATE | ReadFlags::DELETE | ReadFlags::MOVED_FROM | ReadFlags::MOVED_TO);
        if listing_changed {
            self.changes.dirs.insert(dir_rel);
        }
        if is_dir && flags.contains(ReadFlags::ATTRIB) && !listing_changed {
            self.changes.dirs.insert(rel);
            return;
        }
        if is_dir && flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
            self.watch_new_dir(&rel);
        }
        self.changes.paths.insert(rel);
    }

    /// Watches a directory that appeared (and whatever was created in it before the watch).
    fn watch_new_dir(&mut self, rel: &str) {
        let Ok(root) = fd::open_dir_path(&self.root_path) else {
            return;
        };
        if let Ok(dir) = fd::open_dir_beneath(root.as_fd(), rel) {
            let depth = rel.split('/').count();
            self.watch_tree(dir, rel.to_string(), depth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn excludes(root: &Path) -> Excludes {
        Excludes::new(root, &["*.lock".to_string()]).expect("valid")
    }

    fn paths(changes: Changes) -> ChangeSet {
        match changes {
            Changes::Paths(set) => set,
            Changes::FullWalk { reason } => panic!("unexpected full walk: {reason}"),
        }
    }

    #[test]
    fn a_change_is_seen_and_only_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("agents/a1")).expect("dirs");
        fs::write(root.join("agents/a1/s.jsonl"), "1\n").expect("write");
        fs::write(root.join("other"), "x").expect("write");
        let tracker = ChangeTracker::start(root, &excludes(root)).expect("start");
        assert!(tracker.has_changes(), "nothing is known before the first walk");
        assert!(
            matches!(tracker.take(), Changes::FullWalk { .. }),
            "the first take walks everything"
        );
        assert_eq!(tracker.watched(), 3);
        assert!(!tracker.has_changes());
        assert!(paths(tracker.take()).is_empty());

        fs::write(root.join("x.lock"), "").expect("excluded");
        assert!(!tracker.has_changes(), "an excluded file is no change");
        fs::write(root.join("agents/a1/s.jsonl"), "1\n2\n").expect("append");
        assert!(tracker.has_changes() && tracker.has_changes(), "looking takes nothing");
        let set = paths(tracker.take());
        assert_eq!(set.paths, BTreeSet::from(["agents/a1/s.jsonl".to_string()]), "{set:?}");

        // A new directory with content: synced as a subtree, and watched from now on.
        fs::create_dir_all(root.join("agents/a2/deep")).expect("dirs");
        fs::write(root.join("agents/a2/deep/t.jsonl"), "t").expect("write");
        let set = paths(tracker.take());
        assert!(set.paths.contains("agents/a2"), "{set:?}");
        assert!(set.dirs.contains("agents"), "{set:?}");
        fs::write(root.join("agents/a2/deep/t.jsonl"), "tt").expect("write");
        let set = paths(tracker.take());
        assert!(set.paths.contains("agents/a2/deep/t.jsonl"), "{set:?}");

        fs::remove_file(root.join("other")).expect("delete");
        let set = paths(tracker.take());
        assert!(set.paths.contains("other") && set.dirs.contains(""), "{set:?}");
    }

    #[test]
    fn a_queue_overflow_forces_a_full_walk() {
        let limit: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(16_384);
        assert!(
            limit <= 1 << 20,
            "max_queued_events {limit} is too large to overflow in a test"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // No thread: nothing drains the kernel queue until `take`.
        let options = TrackerOptions {
            background: false,
            ..TrackerOptions::default()
        };
        let tracker = ChangeTracker::with_options(root, &excludes(root), options).expect("start");
        assert!(matches!(tracker.take(), Changes::FullWalk { .. }));
        for i in 0..limit + 100 {
            fs::File::create(root.join(format!("f{i}"))).expect("create");
        }
        match tracker.take() {
            Changes::FullWalk { reason } => assert!(reason.contains("overflow"), "{reason}"),
            Changes::Paths(set) => panic!("expected a full walk, got {} paths", set.paths.len()),
        }
        // Re-armed: the next change is seen again.
        fs::write(root.join("f0"), "x").expect("write");
        assert!(paths(tracker.take()).paths.contains("f0"));
    }

    #[test]
    fn the_watch_limit_forces_full_walks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for i in 0..5 {
            fs::create_dir_all(root.join(format!("d{i}"))).expect("dir");
        }
        let options = TrackerOptions {
            background: false,
            max_watches: 3,
        };
        let tracker = ChangeTracker::with_options(root, &excludes(root), options).expect("start");
        for _ in 0..2 {
            match tracker.take() {
                Changes::FullWalk { reason } => {
                    assert!(
                        reason.contains("first sync") || reason.contains("directories to watch"),
                        "{reason}"
                    )
                }
                Changes::Paths(set) => panic!("expected a full walk, got {set:?}"),
            }
        }
    }

    #[test]
    fn a_renamed_directory_forces_a_full_walk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).expect("dirs");
        let tracker = ChangeTracker::start(root, &excludes(root)).expect("start");
        let _ = tracker.take();
        fs::rename(root.join("a"), root.join("c")).expect("rename");
        assert!(matches!(tracker.take(), Changes::FullWalk { .. }));
        fs::write(root.join("c/b/x"), "x").expect("write");
        assert!(paths(tracker.take()).paths.contains("c/b/x"));
    }
}
