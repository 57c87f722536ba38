//! The one walker of the live state directory (and of the mirror). The state directory is
//! untrusted input: the app, or whatever took it over, may rename, swap, replace and plant
//! anything in it while it is read, as root. So:
//!
//! - every directory and file is opened relative to its parent's descriptor, one component at a
//!   time, with `O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC` (and `openat2`'s `RESOLVE_BENEATH|
//!   RESOLVE_NO_SYMLINKS` where the kernel has it): nothing outside the tree is ever opened;
//! - metadata comes from `fstatat(AT_SYMLINK_NOFOLLOW)` on the parent's descriptor or `fstat`
//!   of the opened descriptor, never from a path resolved again;
//! - FIFOs, sockets and devices are never opened: their type is checked first, and what an open
//!   returns is checked again with `fstat`;
//! - an entry that vanishes, changes type, cannot be read, is too deep or too long is skipped,
//!   logged with its path and reported; only an unreadable root fails a walk;
//! - paths longer than `PATH_MAX` work: nothing is ever opened by its full path.

pub mod fd;
pub mod sparse;
pub mod tracker;

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Stat};

use crate::exclude::Excludes;
use crate::tree::Skipped;

pub use tracker::{ChangeSet, ChangeTracker, Changes, TrackerOptions};

/// Directories deeper than this below the root are skipped (each level holds a descriptor).
pub const MAX_DEPTH: usize = 128;
/// Relative paths longer than this (bytes) are skipped.
pub const MAX_PATH_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("cannot read the state directory {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
}

/// One entry a walk met: its path relative to the root and its metadata (`fstatat` without
/// following, or `fstat` of the opened directory).
pub struct Found<'a> {
    pub rel: &'a str,
    pub stat: &'a Stat,
    parent: BorrowedFd<'a>,
    name: &'a CStr,
}

impl Found<'_> {
    /// Opens the file for reading and checks, with `fstat` of what was opened, that it is the
    /// regular file the walk listed (same device and inode). The returned `Stat` is the one to
    /// record. `Ok(None)`: it vanished (a temp or lock file, not state). `Err` carries the reason
    /// to report when the entry must be skipped.
    pub fn open(&self) -> Result<Option<(File, Stat)>, String> {
        let file = match fd::open_file_at(self.parent, self.name) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot open: {e}")),
        };
        let stat = fd::stat_fd(&file).map_err(|e| format!("cannot stat what was opened: {e}"))?;
        if fd::file_type(&stat) != FileType::RegularFile {
            return Err("was replaced by something that is not a regular file while it was read".into());
        }
        if (stat.st_dev, stat.st_ino) != (self.stat.st_dev, self.stat.st_ino) {
            return Err("was replaced by another file while it was read".into());
        }
        Ok(Some((file, stat)))
    }

    /// The parent directory's descriptor and this entry's name in it.
    pub fn at(&self) -> (BorrowedFd<'_>, &CStr) {
        (self.parent, self.name)
    }
}

/// What a walk hands its visitor, in order: each directory's entries sorted by name, a directory
/// before its contents (`dir`, then its entries, then `leave_dir`).
pub trait Visitor {
    type Error;
    /// A directory, opened (`dir_fd`); return `false` to not descend.
    fn dir(&mut self, found: &Found<'_>, dir_fd: BorrowedFd<'_>) -> Result<bool, Self::Error>;
    /// After a directory's entries.
    fn leave_dir(&mut self, found: &Found<'_>, dir_fd: BorrowedFd<'_>) -> Result<(), Self::Error>;
    /// A regular file (not yet opened: `found.open()` opens it safely).
    fn file(&mut self, found: &Found<'_>, walk: &mut Walk<'_>) -> Result<(), Self::Error>;
    /// A symlink and its target, read with `readlinkat` on the parent.
    fn symlink(&mut self, found: &Found<'_>, target: &[u8], walk: &mut Walk<'_>) -> Result<(), Self::Error>;
    /// Called between entries: return true to stop (the walk returns `Ok(false)`).
    fn cancelled(&self) -> bool {
        false
    }
}

/// One walk's state: the excludes and what was skipped.
pub struct Walk<'a> {
    excludes: &'a Excludes,
    /// Everything skipped, with the reason, in walk order.
    pub skipped: Vec<Skipped>,
}

impl<'a> Walk<'a> {
    pub fn new(excludes: &'a Excludes) -> Walk<'a> {
        Walk {
            excludes,
            skipped: Vec::new(),
        }
    }

    /// Skips `rel` for `reason`: logged with the path, reported.
    pub fn skip(&mut self, rel: &str, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::warn!(path = rel, reason = %reason, "skipped an entry of the state directory");
        self.skipped.push(Skipped {
            path: rel.to_string(),
            reason,
        });
    }

    /// Walks the tree under `root_fd` (whose own metadata the caller has). Returns `Ok(false)`
    /// when the visitor cancelled.
    pub fn run<V: Visitor>(&mut self, root_fd: BorrowedFd<'_>, visitor: &mut V) -> Result<bool, V::Error> {
        self.walk_dir(root_fd, "", 0, visitor)
    }

    /// Walks the entries of one directory `dir` (at `rel`, `depth` levels below the root).
    pub fn walk_dir<V: Visitor>(
        &mut self,
        dir: BorrowedFd<'_>,
        rel: &str,
        depth: usize,
        visitor: &mut V,
    ) -> Result<bool, V::Error> {
        let names = match fd::list_dir(dir) {
            Ok(names) => names,
            Err(e) => {
                // The root was listable when opened; a subdirectory that is not is skipped.
                self.skip(
                    if rel.is_empty() { "." } else { rel },
                    format!("cannot list the directory: {e}"),
                );
                return Ok(true);
            }
        };
        for name in names {
            if visitor.cancelled() {
                return Ok(false);
            }
            if !self.entry(dir, rel, &name, depth, visitor)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One entry `name` of `dir`: look, decide, hand to the visitor.
    pub fn entry<V: Visitor>(
        &mut self,
        dir: BorrowedFd<'_>,
        dir_rel: &str,
        name: &CStr,
        depth: usize,
        visitor: &mut V,
    ) -> Result<bool, V::Error> {
        // A long walk is progress for the systemd watchdog, entry by entry.
        crate::liveness::mark();
        let Ok(text) = std::str::from_utf8(name.to_bytes()) else {
            self.skip(&fd::join(dir_rel, &fd::shown(name.to_bytes())), "the name is not UTF-8");
            return Ok(true);
        };
        let rel = fd::join(dir_rel, text);
        if rel.len() > MAX_PATH_BYTES {
            self.skip(&rel, format!("the path is longer than {MAX_PATH_BYTES} bytes"));
            return Ok(true);
        }
        let stat = match fd::stat_at(dir, name) {
            Ok(stat) => stat,
            // Gone since the listing: a temp or lock file, not state.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => {
                self.skip(&rel, format!("cannot stat: {e}"));
                return Ok(true);
            }
        };
        let kind = fd::file_type(&stat);
        if self.excludes.is_excluded(Path::new(&rel), kind == FileType::Directory) {
            return Ok(true);
        }
        let found = Found {
            rel: &rel,
            stat: &stat,
            parent: dir,
            name,
        };
        match kind {
            FileType::Directory => {
                if depth + 1 > MAX_DEPTH {
                    self.skip(&rel, format!("deeper than {MAX_DEPTH} directories"));
                    return Ok(true);
                }
                let Some((child, child_stat)) = self.open_dir(dir, name, &rel) else {
                    return Ok(true);
                };
                let found = Found {
                    stat: &child_stat,
                    ..found
                };
                if visitor.dir(&found, child.as_fd())? {
                    if !self.walk_dir(child.as_fd(), &rel, depth + 1, visitor)? {
                        return Ok(false);
                    }
                    visitor.leave_dir(&found, child.as_fd())?;
                }
            }
            FileType::RegularFile => visitor.file(&found, self)?,
            FileType::Symlink => match fd::read_link_at(dir, name) {
                Ok(target) => visitor.symlink(&found, &target, self)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // EINVAL: no longer a link (swapped with a directory or file).
                Err(e) => self.skip(&rel, format!("cannot read the link: {e}")),
            },
            // Sockets belong to the running process, not to its state.
            FileType::Socket => {}
            FileType::Fifo => self.skip(&rel, "a FIFO is never opened or archived"),
            FileType::CharacterDevice | FileType::BlockDevice => {
                self.skip(&rel, "a device is never opened or archived")
            }
            FileType::Unknown => self.skip(&rel, "unknown file type"),
        }
        Ok(true)
    }

    fn open_dir(&mut self, parent: BorrowedFd<'_>, name: &CStr, rel: &str) -> Option<(OwnedFd, Stat)> {
        let child = match fd::open_dir_at(parent, name) {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                // ELOOP/ENOTDIR: swapped with a link or a file since it was looked at.
                self.skip(rel, format!("cannot open the directory: {e}"));
                return None;
            }
        };
        match fd::stat_fd(&child) {
            Ok(stat) => Some((child, stat)),
            Err(e) => {
                self.skip(rel, format!("cannot stat the directory: {e}"));
                None
            }
        }
    }
}

/// Opens the root of a walk: the configured state directory (or mirror), and its metadata.
pub fn open_root(path: &Path) -> Result<(OwnedFd, Stat), WalkError> {
    let root_error = |source| WalkError::Root {
        path: path.to_path_buf(),
        source,
    };
    let root = fd::open_dir_path(path).map_err(root_error)?;
    let stat = fd::stat_fd(&root).map_err(root_error)?;
    // Listing it is what makes a root usable: fail here, not as a skipped ".".
    fd::list_dir(root.as_fd()).map_err(root_error)?;
    Ok((root, stat))
}
