//! What spotkeeper keeps for itself (work_dir, mirrors and their indexes, locks, journal,
//! record, caches, staging and scratch directories) is created 0700 (directories) and 0600
//! (files) whatever the caller's umask: the indexes list every file name of the state, and the
//! mirrors and staging directories hold the state itself. The modes are given at creation
//! (`DirBuilderExt`, `OpenOptionsExt`), so there is no window in which another user can open one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory spotkeeper keeps for itself.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file spotkeeper keeps for itself.
pub const FILE_MODE: u32 = 0o600;

/// `fs::create_dir_all`, each directory it creates 0700 (existing ones are left as they are).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)
}

/// `fs::create_dir`, 0700.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// A directory of spotkeeper's own: created 0700 when missing, and brought back to 0700 when an
/// earlier version (or a by-hand run under another umask) left it open to others.
pub fn ensure_dir(path: &Path) -> io::Result<()> {
    create_dir_all(path)?;
    tighten(path, DIR_MODE)
}

/// Removes the group and other bits of `path` when it has any (a directory or a file of ours
/// made before modes were set at creation). Links are not followed.
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() || meta.permissions().mode() & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// `File::create` (write, create, truncate), 0600 when created.
pub fn create_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// `fs::write`, the file 0600 when created.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> io::Result<()> {
    use std::io::Write;
    create_file(path)?.write_all(contents.as_ref())
}

/// Opens (creating it 0600) a lock file for writing, without truncating it; an existing one
/// open to others is brought back to 0600.
pub fn open_lock(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_do_not_follow_the_umask() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Whatever umask the test runs under, created things are 0700/0600 exactly.
        let nested = dir.path().join("a/b/c");
        create_dir_all(&nested).expect("dirs");
        for d in [dir.path().join("a"), dir.path().join("a/b"), nested.clone()] {
            assert_eq!(fs::metadata(&d).expect("meta").permissions().mode() & 0o7777, DIR_MODE);
        }
        let file = nested.join("f");
        write(&file, b"x").expect("write");
        assert_eq!(
            fs::metadata(&file).expect("meta").permissions().mode() & 0o7777,
            FILE_MODE
        );
        let open = dir.path().join("open");
        fs::create_dir(&open).expect("dir");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_dir(&open).expect("ensure");
        assert_eq!(
            fs::metadata(&open).expect("meta").permissions().mode() & 0o7777,
            DIR_MODE
        );
        let lock = dir.path().join("x.lock");
        fs::write(&lock, b"").expect("write");
        fs::set_permissions(&lock, fs::Permissions::from_mode(0o644)).expect("chmod");
        open_lock(&lock).expect("lock");
        assert_eq!(
            fs::metadata(&lock).expect("meta").permissions().mode() & 0o7777,
            FILE_MODE
        );
    }
}
