//! Format 1's archive, read forever: plain tar compressed with plain zstd, so `zstd -d | tar -x`
//! recovers a state without spotkeeper. `unpack` checks every entry against the manifest while
//! it extracts (or only checks, for `verify`), refusing anything that could write outside the
//! target. Nothing writes format 1 any more (format 2 is the only format written).

use std::collections::{BTreeMap, HashSet};
use std::ffi::CStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::EntryType;

use rustix::fs::{AtFlags, Mode, Timestamps};

use crate::manifest::{self, EntryKind, FileEntry, Manifest};
use crate::stream::HashingReader;
use crate::walk::{fd, sparse};

/// Read size when hashing and copying file contents.
const COPY_BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot write the archive stream: {0}")]
    Stream(io::Error),
    #[error("state directory {path} does not exist or is not a directory")]
    NoStateDir { path: PathBuf },
    #[error("archive {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("archive {key} does not match its manifest: {reason}")]
    Mismatch { key: String, reason: String },
    #[error("archive {key}: entry {path:?} refused: {reason}")]
    Refused { key: String, path: String, reason: String },
}

impl ArchiveError {
    /// True when the archive itself is bad (as opposed to the local disk).
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            ArchiveError::Corrupt { .. } | ArchiveError::Mismatch { .. } | ArchiveError::Refused { .. }
        )
    }
}

/// What `unpack` found.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub files: u64,
    pub bytes: u64,
    pub archive_bytes: u64,
    /// Paths whose setuid/setgid bits were dropped on restore (never planted).
    pub privilege_dropped: Vec<String>,
}

/// Permission bits restore applies: setuid and setgid are never planted.
const RESTORE_MODE_MASK: u32 = 0o1777;

/// Decompresses and reads the archive `compressed`, checking every entry and the archive's own
/// size and SHA-256 against `manifest`. With `dest`, extracts into it (a fresh, empty directory,
/// written by descriptor: nothing is ever opened through a link) and applies modes (without
/// setuid/setgid, which are reported), owners (when running as root) and mtimes from the
/// manifest. `source` names the archive in errors (for example its `s3://` URL).
pub fn unpack<R: Read>(
    compressed: R,
    manifest: &Manifest,
    dest: Option<&Path>,
    source: &str,
) -> Result<Unpacked, ArchiveError> {
    let key = source;
    let corrupt = |reason: String| ArchiveError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let mismatch = |reason: String| ArchiveError::Mismatch {
        key: key.to_string(),
        reason,
    };
    let dest_fd = match dest {
        Some(dest) => Some(fd::open_dir_path(dest).map_err(|source| ArchiveError::Write {
            path: dest.to_path_buf(),
            source,
        })?),
        None => None,
    };
    let mut counted = HashingReader::new(compressed);
    let decoder = zstd::stream::read::Decoder::new(&mut counted).map_err(|e| corrupt(e.to_string()))?;
    let mut archive = tar::Archive::new(decoder);
    let expected = manifest.by_path();
    let mut extractor = Extractor {
        key,
        dest: dest.zip(dest_fd.as_ref().map(|f| f.as_fd())),
        open_dirs: Vec::new(),
        expected: &expected,
        seen: HashSet::with_capacity(expected.len()),
        dirs: HashSet::new(),
        unpacked: Unpacked::default(),
        buffer: vec![0; COPY_BUFFER],
        as_root: rustix::process::geteuid().is_root(),
    };
    let entries = archive.entries().map_err(|e| corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
        extractor.entry(&mut entry)?;
    }
    if let Some(missing) = expected.keys().find(|p| !extractor.seen.contains(**p)) {
        return Err(mismatch(format!(
            "{missing:?} is in the manifest but not in the archive"
        )));
    }
    // Read the rest of the zstd frame and anything after it, so the hash covers every byte.
    let mut decoder = archive.into_inner();
    io::copy(&mut decoder, &mut io::sink()).map_err(|e| corrupt(e.to_string()))?;
    drop(decoder);
    let (archive_bytes, sha256) = counted.finish().map_err(|e| corrupt(e.to_string()))?;
    if archive_bytes != manifest.archive.bytes {
        return Err(mismatch(format!(
            "the manifest says the archive has {} bytes, it has {archive_bytes}",
            manifest.archive.bytes
        )));
    }
    if sha256 != manifest.archive.sha256 {
        return Err(mismatch(format!(
            "archive SHA-256 is {sha256}, the manifest says {}",
            manifest.archive.sha256
        )));
    }
    if extractor.dest.is_some() {
        extractor.apply_dir_metadata(manifest)?;
    }
    let mut unpacked = extractor.unpacked;
    unpacked.archive_bytes = archive_bytes;
    Ok(unpacked)
}

struct Extractor<'a> {
    key: &'a str,
    /// The target directory: its path (for errors) and descriptor (for everything else).
    dest: Option<(&'a Path, BorrowedFd<'a>)>,
    /// Directories opened below `dest`, the current path's ancestors: (relative path, fd).
    open_dirs: Vec<(String, OwnedFd)>,
    expected: &'a BTreeMap<&'a str, &'a FileEntry>,
    seen: HashSet<String>,
    /// Directories created from archive entries: the only places a later entry may go.
    dirs: HashSet<String>,
    unpacked: Unpacked,
    buffer: Vec<u8>,
    as_root: bool,
}

/// A GNU sparse 1.0 member: its apparent size.
struct SparseMember {
    real_size: u64,
}

impl Extractor<'_> {
    fn refused(&self, path: &str, reason: impl Into<String>) -> ArchiveError {
        ArchiveError::Refused {
            key: self.key.to_string(),
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    fn mismatch(&self, reason: String) -> ArchiveError {
        ArchiveError::Mismatch {
            key: self.key.to_string(),
            reason,
        }
    }

    fn write_error(&self, rel: &str, source: io::Error) -> ArchiveError {
        let path = self
            .dest
            .map(|(d, _)| d.join(rel))
            .unwrap_or_else(|| PathBuf::from(rel));
        ArchiveError::Write { path, source }
    }

    /// The descriptor of the extracted directory `rel` ("" is the target), opened component by
    /// component from the target without following links; the ancestors of the last one asked
    /// for stay open, so archive order (a directory, then its contents) costs one open each.
    fn dir_fd(&mut self, rel: &str) -> Result<BorrowedFd<'_>, ArchiveError> {
        let Some((_, root)) = self.dest else {
            return Err(self.write_error(rel, io::Error::other("no target")));
        };
        while let Some((open, _)) = self.open_dirs.last() {
            if rel == open || rel.starts_with(&format!("{open}/")) {
                break;
            }
            self.open_dirs.pop();
        }
        let mut current = self.open_dirs.last().map(|(p, _)| p.clone()).unwrap_or_default();
        while current != rel {
            let rest = if current.is_empty() {
                rel
            } else {
                &rel[current.len() + 1..]
            };
            let component = rest.split('/').next().unwrap_or(rest);
            let next = fd::join(&current, component);
            let parent = self.open_dirs.last().map(|(_, f)| f.as_fd()).unwrap_or(root);
            let name = fd::c_name(component.as_bytes()).map_err(|e| self.write_error(&next, e))?;
            let opened = fd::open_dir_at(parent, &name).map_err(|e| self.write_error(&next, e))?;
            self.open_dirs.push((next.clone(), opened));
            current = next;
        }
        Ok(self.open_dirs.last().map(|(_, f)| f.as_fd()).unwrap_or(root))
    }

    /// Mode bits to apply for `entry`: setuid/setgid dropped and reported.
    fn safe_mode(&mut self, path: &str, mode: u32) -> Mode {
        if mode & 0o6000 != 0 {
            tracing::warn!(
                path,
                mode = format!("{mode:o}"),
                "dropped setuid/setgid bits on restore"
            );
            self.unpacked.privilege_dropped.push(path.to_string());
        }
        Mode::from_raw_mode(mode & RESTORE_MODE_MASK)
    }

    fn sparse_member<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &str,
    ) -> Result<Option<SparseMember>, ArchiveError> {
        let Some(extensions) = entry.pax_extensions().map_err(|e| self.refused(path, e.to_string()))? else {
            return Ok(None);
        };
        let (mut major, mut minor, mut name, mut real_size) = (None, None, None, None);
        for extension in extensions {
            let extension = extension.map_err(|e| self.refused(path, e.to_string()))?;
            let value = extension
                .value()
                .map_err(|_| self.refused(path, "PAX value is not UTF-8"))?;
            match extension.key() {
                Ok("GNU.sparse.major") => major = Some(value.to_string()),
                Ok("GNU.sparse.minor") => minor = Some(value.to_string()),
                Ok("GNU.sparse.name") => name = Some(value.to_string()),
                Ok("GNU.sparse.realsize") => real_size = value.parse::<u64>().ok(),
                Ok(key) if key.starts_with("GNU.sparse.") => {
                    return Err(self.refused(path, format!("unsupported PAX sparse key {key}")));
                }
                _ => {}
            }
        }
        match (major.as_deref(), minor.as_deref(), real_size) {
            (None, None, None) => Ok(None),
            (Some("1"), Some("0"), Some(real_size)) => {
                if name.as_deref().is_some_and(|n| n != path) {
                    return Err(self.refused(path, "GNU.sparse.name differs from the member's path"));
                }
                Ok(Some(SparseMember { real_size }))
            }
            _ => Err(self.refused(path, "only GNU sparse format 1.0 with a real size is restored")),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let path = std::str::from_utf8(&raw_path)
            .map_err(|_| self.refused(&shown, "path is not UTF-8"))?
            .trim_end_matches('/')
            .to_string();
        manifest::check_relative_path(&path).map_err(|reason| self.refused(&shown, reason))?;
        let kind = match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => EntryKind::File,
            EntryType::Directory => EntryKind::Dir,
            EntryType::Symlink => EntryKind::Symlink,
            EntryType::Link => return Err(self.refused(&path, "hard links are not restored")),
            EntryType::Char | EntryType::Block => return Err(self.refused(&path, "device files are not restored")),
            EntryType::Fifo => return Err(self.refused(&path, "fifos are not restored")),
            other => return Err(self.refused(&path, format!("unsupported tar entry type {other:?}"))),
        };
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        if !parent.is_empty() && !self.dirs.contains(parent) {
            return Err(self.refused(&path, "its parent directory is not an earlier directory entry"));
        }
        let Some(expected) = self.expected.get(path.as_str()).copied() else {
            return Err(self.mismatch(format!("{path:?} is in the archive but not in the manifest")));
        };
        if !self.seen.insert(path.clone()) {
            return Err(self.mismatch(format!("{path:?} appears twice in the archive")));
        }
        if expected.kind != kind {
            return Err(self.mismatch(format!(
                "{path:?} is a {kind:?} in the archive but a {:?} in the manifest",
                expected.kind
            )));
        }
        let c_name = fd::c_name(name.as_bytes()).map_err(|_| self.refused(&path, "contains a NUL byte"))?;
        match kind {
            EntryKind::Dir => {
                if self.dest.is_some() {
                    let parent_fd = self.dir_fd(parent)?;
                    rustix::fs::mkdirat(parent_fd, c_name.as_c_str(), Mode::from_raw_mode(0o700))
                        .map_err(|e| self.write_error(&path, e.into()))?;
                }
                self.dirs.insert(path);
            }
            EntryKind::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                if expected.target.as_deref() != Some(link.as_str()) {
                    return Err(self.mismatch(format!(
                        "symlink {path:?} points to {link:?} in the archive, {:?} in the manifest",
                        expected.target
                    )));
                }
                // The manifest's links were judged against its whole tree when it was decoded.
                manifest::check_link_target(&path, &link).map_err(|reason| self.refused(&path, reason))?;
                if self.dest.is_some() {
                    let target =
                        fd::c_name(link.as_bytes()).map_err(|_| self.refused(&path, "link contains a NUL byte"))?;
                    let as_root = self.as_root;
                    let parent_fd = self.dir_fd(parent)?;
                    let result = rustix::fs::symlinkat(target.as_c_str(), parent_fd, c_name.as_c_str())
                        .and_then(|()| set_link_meta(parent_fd, &c_name, expected, as_root));
                    result.map_err(|e| self.write_error(&path, e.into()))?;
                }
            }
            EntryKind::File => {
                let sparse = self.sparse_member(entry, &path)?;
                self.file(entry, &path, &c_name, expected, sparse)?
            }
        }
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &str,
        name: &CStr,
        expected: &FileEntry,
        sparse: Option<SparseMember>,
    ) -> Result<(), ArchiveError> {
        let stored = entry
            .header()
            .size()
            .map_err(|e| self.mismatch(format!("{path:?}: {e}")))?;
        let apparent = sparse.as_ref().map_or(stored, |s| s.real_size);
        if apparent != expected.bytes {
            return Err(self.mismatch(format!(
                "{path:?} has {apparent} bytes in the archive, the manifest says {}",
                expected.bytes
            )));
        }
        if sparse.is_some() != expected.sparse.is_some() {
            return Err(self.mismatch(format!(
                "{path:?} is sparse in only one of the archive and the manifest"
            )));
        }
        let out = match self.dest {
            Some(_) => {
                let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                let parent_fd = self.dir_fd(parent)?;
                Some(fd::create_file_at(parent_fd, name, true).map_err(|e| self.write_error(path, e))?)
            }
            None => None,
        };
        let mut hashed = HashedEntry {
            entry,
            hasher: Sha256::new(),
        };
        let corrupt = |key: &str, e: String| ArchiveError::Corrupt {
            key: key.to_string(),
            reason: format!("reading {path:?}: {e}"),
        };
        let segments = match &sparse {
            Some(member) => {
                let (segments, _) =
                    sparse::decode_map(&mut hashed, member.real_size).map_err(|reason| self.refused(path, reason))?;
                segments
            }
            None => vec![(0, stored)],
        };
        let mut data = 0u64;
        for (offset, len) in segments {
            let mut done = 0u64;
            while done < len {
                let want = usize::try_from(len - done).unwrap_or(usize::MAX).min(self.buffer.len());
                let n = hashed
                    .read(&mut self.buffer[..want])
                    .map_err(|e| corrupt(self.key, e.to_string()))?;
                if n == 0 {
                    return Err(corrupt(self.key, "the member ends before its data".into()));
                }
                if let Some(out) = &out {
                    use std::os::unix::fs::FileExt;
                    out.write_all_at(&self.buffer[..n], offset + done)
                        .map_err(|e| self.write_error(path, e))?;
                }
                done += n as u64;
            }
            data += len;
        }
        if hashed
            .read(&mut self.buffer[..1])
            .map_err(|e| corrupt(self.key, e.to_string()))?
            != 0
        {
            return Err(self.mismatch(format!("{path:?} holds more data than its sparse map describes")));
        }
        if let Some(stored) = expected.sparse
            && stored != data
        {
            return Err(self.mismatch(format!(
                "{path:?} holds {data} bytes of data, the manifest says {stored}"
            )));
        }
        let sha = hex::encode(hashed.hasher.finalize());
        if expected.sha256.as_deref() != Some(sha.as_str()) {
            return Err(self.mismatch(format!(
                "{path:?} has SHA-256 {sha}, the manifest says {}",
                expected.sha256.as_deref().unwrap_or("none")
            )));
        }
        if let Some(out) = out {
            // Holes stay holes: the size is set, not written.
            out.set_len(apparent).map_err(|e| self.write_error(path, e))?;
            let mode = self.safe_mode(path, expected.mode);
            set_meta(out.as_fd(), expected.uid, expected.gid, mode, expected, self.as_root)
                .map_err(|e| self.write_error(path, e.into()))?;
        }
        self.unpacked.files += 1;
        self.unpacked.bytes += apparent;
        Ok(())
    }

    /// Applies directory modes, owners and mtimes, children before parents so that setting a
    /// directory's mtime or a read-only mode comes after everything inside it is written; then
    /// the target's own from `manifest.root`. Files and links got theirs when written.
    fn apply_dir_metadata(&mut self, manifest: &Manifest) -> Result<(), ArchiveError> {
        for entry in manifest.files.iter().rev().filter(|e| e.kind == EntryKind::Dir) {
            let (parent, name) = entry.path.rsplit_once('/').unwrap_or(("", entry.path.as_str()));
            let c_name = fd::c_name(name.as_bytes()).map_err(|e| self.write_error(&entry.path, e))?;
            let parent_fd = self.dir_fd(parent)?;
            let dir = fd::open_dir_at(parent_fd, &c_name).map_err(|e| self.write_error(&entry.path, e))?;
            let mode = self.safe_mode(&entry.path, entry.mode);
            set_meta(dir.as_fd(), entry.uid, entry.gid, mode, entry, self.as_root)
                .map_err(|e| self.write_error(&entry.path, e.into()))?;
        }
        self.open_dirs.clear();
        let as_root = self.as_root;
        let root_mode = manifest.root.mode;
        let root = self.dir_fd("")?;
        if as_root {
            rustix::fs::fchown(
                root,
                Some(rustix::fs::Uid::from_raw(manifest.root.uid)),
                Some(rustix::fs::Gid::from_raw(manifest.root.gid)),
            )
            .map_err(|e| self.write_error("", e.into()))?;
        }
        // The same rule as format 2's: no setuid, setgid, sticky or world-write on a state directory.
        let (mode, dropped) = manifest.root.planted_mode();
        if let Some(dropped) = dropped {
            tracing::warn!(
                mode = format!("{root_mode:o}"),
                "{dropped} on the restored state directory"
            );
            self.unpacked.privilege_dropped.push(format!(". ({dropped})"));
        }
        let root = self.dir_fd("")?;
        rustix::fs::fchmod(root, Mode::from_raw_mode(mode)).map_err(|e| self.write_error("", e.into()))?;
        Ok(())
    }
}

/// Owner (as root), mode and mtime onto an open descriptor; the owner first, as `chown` clears
/// setuid bits anyway.
fn set_meta(
    target: BorrowedFd<'_>,
    uid: u32,
    gid: u32,
    mode: Mode,
    entry: &FileEntry,
    as_root: bool,
) -> rustix::io::Result<()> {
    if as_root {
        rustix::fs::fchown(
            target,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
    }
    rustix::fs::fchmod(target, mode)?;
    rustix::fs::futimens(target, &times(entry))
}

fn set_link_meta(parent: BorrowedFd<'_>, name: &CStr, entry: &FileEntry, as_root: bool) -> rustix::io::Result<()> {
    if as_root {
        rustix::fs::chownat(
            parent,
            name,
            Some(rustix::fs::Uid::from_raw(entry.uid)),
            Some(rustix::fs::Gid::from_raw(entry.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    rustix::fs::utimensat(parent, name, &times(entry), AtFlags::SYMLINK_NOFOLLOW)
}

fn times(entry: &FileEntry) -> Timestamps {
    let mtime = rustix::fs::Timespec {
        tv_sec: entry.mtime.timestamp(),
        tv_nsec: entry.mtime.timestamp_subsec_nanos().into(),
    };
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

/// A tar member's data, hashed as it is read.
struct HashedEntry<'e, R> {
    entry: &'e mut R,
    hasher: Sha256,
}

impl<R: Read> Read for HashedEntry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = loop {
            match self.entry.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.hasher.update(&buf[..n]);
        crate::progress::add_bytes(n as u64);
        Ok(n)
    }
}
