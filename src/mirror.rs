//! The freeze window's work: bring a local mirror of the state directory up to date by copying
//! only what changed (size, mtime, mode, owner or link target differ), removing what is gone.
//! The container is frozen while this runs, so it must be quick; packing and uploading happen
//! later from the mirror, with the container running again.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::exclude::Excludes;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot update the mirror at {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("mirror update cancelled: the freeze reached its cap")]
    Cancelled,
}

/// What one sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncStats {
    pub copied: u64,
    pub copied_bytes: u64,
    pub removed: u64,
    pub unchanged: u64,
}

impl SyncStats {
    /// True when the mirror changed.
    pub fn changed(&self) -> bool {
        self.copied > 0 || self.removed > 0
    }
}

/// Makes `mirror` equal `source` (minus excludes). `cancel` stops it between entries; a
/// cancelled mirror is left in a state the next sync repairs (mtimes are set after content).
///
/// `unfrozen_since`: the sync runs while the app may write (a warm-up before the first frozen
/// sync). A file modified after that instant minus a second may change during its copy without
/// its mtime telling, so its copy gets mtime 0 and the next (frozen) sync copies it again.
pub fn sync(
    source: &Path,
    mirror: &Path,
    excludes: &Excludes,
    cancel: &Arc<AtomicBool>,
    unfrozen_since: Option<std::time::SystemTime>,
) -> Result<SyncStats, MirrorError> {
    let mut stats = SyncStats::default();
    let as_root = rustix::process::geteuid().is_root();
    let meta = fs::metadata(source).map_err(|e| read_error(source, e))?;
    if !mirror.is_dir() {
        fs::create_dir_all(mirror).map_err(|e| write_error(mirror, e))?;
        stats.copied += 1;
    }
    let context = Context {
        excludes,
        cancel,
        as_root,
        settled_before: unfrozen_since.map(|t| t - std::time::Duration::from_secs(1)),
    };
    sync_dir(source, mirror, Path::new(""), &context, &mut stats)?;
    apply_meta(mirror, &meta, as_root, false)?;
    Ok(stats)
}

fn read_error(path: &Path, source: io::Error) -> MirrorError {
    MirrorError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn write_error(path: &Path, source: io::Error) -> MirrorError {
    MirrorError::Write {
        path: path.to_path_buf(),
        source,
    }
}

struct Context<'a> {
    excludes: &'a Excludes,
    cancel: &'a Arc<AtomicBool>,
    as_root: bool,
    /// Files modified after this are copied but marked for the next sync.
    settled_before: Option<std::time::SystemTime>,
}

fn sync_dir(
    source: &Path,
    mirror: &Path,
    rel: &Path,
    cx: &Context<'_>,
    stats: &mut SyncStats,
) -> Result<(), MirrorError> {
    let (excludes, cancel, as_root) = (cx.excludes, cx.cancel, cx.as_root);
    let mut seen: HashSet<OsString> = HashSet::new();
    let entries = match fs::read_dir(source) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(read_error(source, e)),
    };
    for entry in entries {
        if cancel.load(Ordering::Relaxed) {
            return Err(MirrorError::Cancelled);
        }
        let entry = entry.map_err(|e| read_error(source, e))?;
        let name = entry.file_name();
        let src = entry.path();
        let dst = mirror.join(&name);
        let rel_path = rel.join(&name);
        let src_meta = match fs::symlink_metadata(&src) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_error(&src, e)),
        };
        let file_type = src_meta.file_type();
        if excludes.is_excluded(&rel_path, file_type.is_dir()) {
            continue;
        }
        if !(file_type.is_dir() || file_type.is_file() || file_type.is_symlink()) {
            continue; // sockets, fifos, devices: the archive skips them too
        }
        seen.insert(name);
        let dst_meta = fs::symlink_metadata(&dst).ok();
        let same_kind = dst_meta.as_ref().is_some_and(|d| d.file_type() == file_type);
        if !same_kind && dst_meta.is_some() {
            remove(&dst)?;
            stats.removed += 1;
        }
        if file_type.is_dir() {
            if !same_kind {
                fs::create_dir(&dst).map_err(|e| write_error(&dst, e))?;
                stats.copied += 1;
            }
            sync_dir(&src, &dst, &rel_path, cx, stats)?;
            apply_meta(&dst, &src_meta, as_root, false)?;
        } else if file_type.is_symlink() {
            let target = match fs::read_link(&src) {
                Ok(target) => target,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read_error(&src, e)),
            };
            if same_kind
                && fs::read_link(&dst).ok().as_ref() == Some(&target)
                && unchanged(&src_meta, dst_meta.as_ref())
            {
                stats.unchanged += 1;
                continue;
            }
            if same_kind {
                remove(&dst)?;
            }
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| write_error(&dst, e))?;
            apply_meta(&dst, &src_meta, as_root, true)?;
            stats.copied += 1;
        } else {
            if same_kind && unchanged(&src_meta, dst_meta.as_ref()) {
                stats.unchanged += 1;
                continue;
            }
            match fs::copy(&src, &dst) {
                Ok(bytes) => stats.copied_bytes += bytes,
                // Gone since the listing: not state (a lock or temp file).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    seen.remove(entry.file_name().as_os_str());
                    continue;
                }
                Err(e) => return Err(write_error(&dst, e)),
            }
            // The copy's metadata is the source's as it was listed: if the file changed during
            // the copy (no freeze), its mtime moved on and the next sync copies it again.
            apply_meta(&dst, &src_meta, as_root, false)?;
            let unsettled = cx
                .settled_before
                .is_some_and(|t| src_meta.modified().map_or(true, |m| m >= t));
            if unsettled {
                filetime::set_file_mtime(&dst, filetime::FileTime::zero()).map_err(|e| write_error(&dst, e))?;
            }
            stats.copied += 1;
        }
    }
    // What the mirror has and the source no longer does.
    let existing = fs::read_dir(mirror).map_err(|e| read_error(mirror, e))?;
    for entry in existing.flatten() {
        if !seen.contains(&entry.file_name()) {
            remove(&entry.path())?;
            stats.removed += 1;
        }
    }
    Ok(())
}

fn unchanged(src: &fs::Metadata, dst: Option<&fs::Metadata>) -> bool {
    dst.is_some_and(|d| {
        d.len() == src.len()
            && d.mtime() == src.mtime()
            && d.mtime_nsec() == src.mtime_nsec()
            && (d.mode() & 0o7777) == (src.mode() & 0o7777)
            && d.uid() == src.uid()
            && d.gid() == src.gid()
    })
}

fn remove(path: &Path) -> Result<(), MirrorError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|e| write_error(path, e))
}

fn apply_meta(path: &Path, meta: &fs::Metadata, as_root: bool, is_link: bool) -> Result<(), MirrorError> {
    if as_root {
        std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid())).map_err(|e| write_error(path, e))?;
    }
    let mtime = filetime::FileTime::from_last_modification_time(meta);
    if is_link {
        filetime::set_symlink_file_times(path, mtime, mtime).map_err(|e| write_error(path, e))?;
    } else {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| write_error(path, e))?;
        filetime::set_file_mtime(path, mtime).map_err(|e| write_error(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excludes(root: &Path) -> Excludes {
        Excludes::new(root, &["*.lock".to_string()]).expect("valid")
    }

    fn run(src: &Path, dst: &Path) -> SyncStats {
        sync(src, dst, &excludes(src), &Arc::new(AtomicBool::new(false)), None).expect("sync")
    }

    #[test]
    fn copies_only_what_changed_and_removes_what_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("mirror"));
        fs::create_dir_all(src.join("a/b")).expect("dirs");
        fs::write(src.join("a/b/one.jsonl"), "1\n").expect("write");
        fs::write(src.join("two.json"), "{}").expect("write");
        fs::write(src.join("x.lock"), "").expect("write");
        std::os::unix::fs::symlink("two.json", src.join("link")).expect("link");
        let first = run(&src, &dst);
        assert!(first.changed());
        assert_eq!(fs::read_to_string(dst.join("a/b/one.jsonl")).expect("copied"), "1\n");
        assert!(!dst.join("x.lock").exists(), "excluded");
        assert_eq!(fs::read_link(dst.join("link")).expect("link"), Path::new("two.json"));

        let again = run(&src, &dst);
        assert!(!again.changed(), "{again:?}");
        assert_eq!(again.unchanged, 3);

        fs::write(src.join("a/b/one.jsonl"), "1\n2\n").expect("append");
        fs::remove_file(src.join("two.json")).expect("delete");
        let third = run(&src, &dst);
        assert_eq!((third.copied, third.removed), (1, 1), "{third:?}");
        assert_eq!(fs::read_to_string(dst.join("a/b/one.jsonl")).expect("copied"), "1\n2\n");
        assert!(!dst.join("two.json").exists());
    }

    #[test]
    fn a_cancelled_sync_stops_and_the_next_one_repairs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("mirror"));
        fs::create_dir_all(&src).expect("dir");
        fs::write(src.join("f"), "x").expect("write");
        let cancelled = sync(&src, &dst, &excludes(&src), &Arc::new(AtomicBool::new(true)), None);
        assert!(matches!(cancelled, Err(MirrorError::Cancelled)));
        let stats = run(&src, &dst);
        assert_eq!(fs::read_to_string(dst.join("f")).expect("repaired"), "x");
        assert!(stats.changed());
    }

    #[test]
    fn an_unfrozen_warm_up_marks_recent_files_for_the_next_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("mirror"));
        fs::create_dir_all(&src).expect("dir");
        fs::write(src.join("old"), "settled").expect("write");
        filetime::set_file_mtime(src.join("old"), filetime::FileTime::from_unix_time(1_700_000_000, 0)).expect("mtime");
        fs::write(src.join("hot"), "being written").expect("write");
        let warm = sync(
            &src,
            &dst,
            &excludes(&src),
            &Arc::new(AtomicBool::new(false)),
            Some(std::time::SystemTime::now()),
        )
        .expect("warm");
        assert_eq!(warm.copied, 3);
        // The frozen sync copies only the file that was hot during the warm-up.
        let frozen = run(&src, &dst);
        assert_eq!((frozen.copied, frozen.unchanged), (1, 1), "{frozen:?}");
    }
}
