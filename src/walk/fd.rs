//! Descriptor primitives: every name is opened relative to its parent's descriptor, one
//! component at a time, never following a symlink; metadata comes from the descriptor.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

/// Flags every open of an entry of the state carries: never follow a link, never block on a
/// FIFO or a device, never leak into a child process, never become a controlling terminal.
const ENTRY_FLAGS: OFlags = OFlags::NOFOLLOW
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);

/// Set once `openat2` answered ENOSYS (a kernel older than 5.6): use `openat` from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens one component `name` under `parent`. `name` is a single path component (no `/`), so
/// `O_NOFOLLOW` covers it; `openat2`'s `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS` also refuses
/// anything that would resolve outside `parent` should a caller ever pass more.
fn open_at(parent: BorrowedFd<'_>, name: &CStr, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(parent, name, flags, mode, resolve) {
            Err(Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // EAGAIN: openat2 asks for a retry when a rename raced the lookup.
            Err(Errno::AGAIN) => {}
            other => return other.map_err(io::Error::from),
        }
    }
    if name.to_bytes().contains(&b'/') {
        return Err(io::Error::from(Errno::INVAL));
    }
    Ok(rustix::fs::openat(parent, name, flags, mode)?)
}

/// Opens the directory `name` in `parent` (never a link to one).
pub fn open_dir_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    open_at(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | ENTRY_FLAGS,
        Mode::empty(),
    )
}

/// Opens the regular file `name` in `parent` for reading: never a link, never blocking on a
/// FIFO; the caller checks with `fstat` that what it got is a regular file.
pub fn open_file_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    Ok(File::from(open_at(
        parent,
        name,
        OFlags::RDONLY | ENTRY_FLAGS,
        Mode::empty(),
    )?))
}

/// Creates (or truncates) the regular file `name` in `parent` for writing, mode 0600 until the
/// caller sets the real one; a link planted at `name` makes this fail rather than be followed.
pub fn create_file_at(parent: BorrowedFd<'_>, name: &CStr, exclusive: bool) -> io::Result<File> {
    let mut flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    flags |= if exclusive { OFlags::EXCL } else { OFlags::TRUNC };
    Ok(File::from(open_at(parent, name, flags, Mode::from_raw_mode(0o600))?))
}

/// Opens the existing regular file `name` in `parent` for reading and writing, keeping its
/// content (the mirror's update of a large file in place); never a link.
pub fn open_file_rw_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    Ok(File::from(open_at(
        parent,
        name,
        OFlags::RDWR | ENTRY_FLAGS,
        Mode::empty(),
    )?))
}

/// Opens the directory at `path` (operator-given: the state dir, the mirror, a restore target).
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?)
}

/// Opens the directory `relative` (`/`-separated) under `root`, component by component.
pub fn open_dir_beneath(root: BorrowedFd<'_>, relative: &str) -> io::Result<OwnedFd> {
    let mut current = rustix::io::fcntl_dupfd_cloexec(root, 0)?;
    for component in relative.split('/').filter(|c| !c.is_empty()) {
        if component == "." || component == ".." {
            return Err(io::Error::from(Errno::INVAL));
        }
        current = open_dir_at(current.as_fd(), &c_name(component.as_bytes())?)?;
    }
    Ok(current)
}

/// `fstatat(parent, name, AT_SYMLINK_NOFOLLOW)`: what is at `name` now, a link not followed.
pub fn stat_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// `fstat` of an open descriptor.
pub fn stat_fd(fd: impl AsFd) -> io::Result<Stat> {
    Ok(rustix::fs::fstat(fd)?)
}

/// The target of the link `name` in `parent`. EINVAL means `name` is no longer a link.
pub fn read_link_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(parent, name, Vec::new())?.into_bytes())
}

/// The entries of the directory `dir` (not `.` and `..`), sorted by name (bytewise).
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut reader = Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        names.push(name.to_owned());
    }
    names.sort();
    Ok(names)
}

/// A path component as a C string; a NUL inside is refused.
pub fn c_name(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(Errno::INVAL))
}

/// The kind of an inode, from `st_mode`.
pub fn file_type(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

/// Removes `name` from `parent`, whatever it is; a directory with everything inside it, walked
/// by descriptor. Absent is fine.
pub fn remove_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let stat = match stat_at(parent, name) {
        Ok(stat) => stat,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if file_type(&stat) == FileType::Directory {
        let dir = open_dir_at(parent, name)?;
        for child in list_dir(dir.as_fd())? {
            remove_at(dir.as_fd(), &child)?;
        }
        drop(dir);
        match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    } else {
        match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A name for logs and reports when it is not UTF-8.
pub fn shown(name: &[u8]) -> String {
    OsStr::from_bytes(name).to_string_lossy().into_owned()
}

/// `rel` joined with `name` (`/`-separated, no leading slash).
pub fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}
