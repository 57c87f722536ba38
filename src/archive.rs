//! The archive: plain tar compressed with plain zstd, so `zstd -d | tar -x` recovers a state
//! without spotkeeper. `pack` walks the state directory once, hashing every file as it streams
//! into the archive; `unpack` checks every entry against the manifest while it extracts (or only
//! checks, for `verify`), refusing anything that could write outside the target.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::exclude::Excludes;
use crate::manifest::{self, EntryKind, FileEntry, Manifest, Owner, Skipped, Totals};
use crate::stream::HashingReader;

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

/// What `pack` archived, for the manifest.
#[derive(Debug, Default)]
pub struct Packed {
    pub files: Vec<FileEntry>,
    pub totals: Totals,
    pub root: Option<Owner>,
    pub skipped: Vec<Skipped>,
    /// Files whose size changed while they were read (only possible without a freeze).
    pub torn: Vec<String>,
}

/// Archives `root` (minus `excludes`) as tar into `out`, which the caller compresses.
/// Paths that vanish during the walk are skipped; sockets are skipped silently, other special
/// files are listed in `skipped`.
pub fn pack<W: Write>(root: &Path, excludes: &Excludes, out: W) -> Result<(Packed, W), ArchiveError> {
    let root_meta = fs::metadata(root).map_err(|_| ArchiveError::NoStateDir {
        path: root.to_path_buf(),
    })?;
    if !root_meta.is_dir() {
        return Err(ArchiveError::NoStateDir {
            path: root.to_path_buf(),
        });
    }
    let mut packer = Packer {
        root,
        excludes,
        builder: tar::Builder::new(out),
        packed: Packed {
            root: Some(owner_of(&root_meta)),
            ..Packed::default()
        },
    };
    packer.walk(root, "")?;
    let out = packer.builder.into_inner().map_err(ArchiveError::Stream)?;
    Ok((packer.packed, out))
}

struct Packer<'a, W: Write> {
    root: &'a Path,
    excludes: &'a Excludes,
    builder: tar::Builder<W>,
    packed: Packed,
}

impl<W: Write> Packer<'_, W> {
    fn walk(&mut self, dir: &Path, dir_rel: &str) -> Result<(), ArchiveError> {
        let read_error = |source| ArchiveError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut names = match fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(read_error)?,
            // A directory removed while we walk is as if it had been empty.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(read_error(e)),
        };
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let Some(name) = name.to_str() else {
                self.skip(&path, "file name is not UTF-8");
                continue;
            };
            let rel = if dir_rel.is_empty() {
                name.to_string()
            } else {
                format!("{dir_rel}/{name}")
            };
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ArchiveError::Read { path, source }),
            };
            let file_type = meta.file_type();
            if self.excludes.is_excluded(Path::new(&rel), file_type.is_dir()) {
                continue;
            }
            if file_type.is_dir() {
                self.append_dir(&rel, &meta)?;
                self.walk(&path, &rel)?;
            } else if file_type.is_file() {
                self.append_file(&path, &rel)?;
            } else if file_type.is_symlink() {
                self.append_symlink(&path, &rel, &meta)?;
            } else {
                use std::os::unix::fs::FileTypeExt;
                // Sockets belong to the running process, not to its state.
                if !file_type.is_socket() {
                    self.skip(&path, "special file (fifo or device) cannot be archived");
                }
            }
        }
        Ok(())
    }

    fn skip(&mut self, path: &Path, reason: &str) {
        tracing::warn!(path = %path.display(), reason, "not archived");
        let shown = path
            .strip_prefix(self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned();
        self.packed.skipped.push(Skipped {
            path: shown,
            reason: reason.to_string(),
        });
    }

    fn header(kind: EntryType, meta: &fs::Metadata, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(u64::from(meta.uid()));
        header.set_gid(u64::from(meta.gid()));
        header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        header
    }

    fn append_dir(&mut self, rel: &str, meta: &fs::Metadata) -> Result<(), ArchiveError> {
        let mut header = Self::header(EntryType::Directory, meta, 0);
        self.builder
            .append_data(&mut header, rel, io::empty())
            .map_err(ArchiveError::Stream)?;
        self.packed
            .files
            .push(entry_from(rel, EntryKind::Dir, meta, 0, None, None));
        self.packed.totals.dirs += 1;
        Ok(())
    }

    fn append_file(&mut self, path: &Path, rel: &str) -> Result<(), ArchiveError> {
        let file = match File::open(path) {
            Ok(file) => file,
            // Lock and temp files come and go; a file deleted since the listing is not state.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(ArchiveError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let meta = file.metadata().map_err(|source| ArchiveError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let size = meta.len();
        let mut header = Self::header(EntryType::Regular, &meta, size);
        let mut reader = ExactReader {
            file,
            path,
            remaining: size,
            hasher: Sha256::new(),
            short: false,
            error: None,
        };
        let result = self.builder.append_data(&mut header, rel, &mut reader);
        if let Some(source) = reader.error.take() {
            return Err(ArchiveError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
        result.map_err(ArchiveError::Stream)?;
        if reader.short {
            tracing::warn!(path = %path.display(), "file shrank while it was archived; the copy is torn (snapshots taken by the daemon freeze the container to avoid this)");
            self.packed.torn.push(rel.to_string());
        }
        let sha = hex::encode(reader.hasher.finalize());
        self.packed
            .files
            .push(entry_from(rel, EntryKind::File, &meta, size, Some(sha), None));
        self.packed.totals.files += 1;
        self.packed.totals.bytes += size;
        Ok(())
    }

    fn append_symlink(&mut self, path: &Path, rel: &str, meta: &fs::Metadata) -> Result<(), ArchiveError> {
        let target = match fs::read_link(path) {
            Ok(target) => target,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(ArchiveError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let Some(target) = target.to_str().map(str::to_string) else {
            self.skip(path, "symlink target is not UTF-8");
            return Ok(());
        };
        if let Err(reason) = manifest::check_link_target(rel, &target) {
            // Restore refuses such links, so archiving one would make the snapshot unrestorable.
            self.skip(path, reason);
            return Ok(());
        }
        let mut header = Self::header(EntryType::Symlink, meta, 0);
        self.builder
            .append_link(&mut header, rel, &target)
            .map_err(ArchiveError::Stream)?;
        self.packed
            .files
            .push(entry_from(rel, EntryKind::Symlink, meta, 0, None, Some(target)));
        self.packed.totals.symlinks += 1;
        Ok(())
    }
}

fn owner_of(meta: &fs::Metadata) -> Owner {
    Owner {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    }
}

fn mtime_of(meta: &fs::Metadata) -> DateTime<Utc> {
    let nanos = u32::try_from(meta.mtime_nsec()).unwrap_or(0);
    DateTime::from_timestamp(meta.mtime(), nanos).unwrap_or_default()
}

fn entry_from(
    rel: &str,
    kind: EntryKind,
    meta: &fs::Metadata,
    bytes: u64,
    sha256: Option<String>,
    target: Option<String>,
) -> FileEntry {
    FileEntry {
        path: rel.to_string(),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        bytes,
        mtime: mtime_of(meta),
        sha256,
        target,
    }
}

/// Yields exactly `remaining` bytes of a file that may be changing: stops at the size the
/// header promised, pads with zeros if the file shrank, and hashes what it yields so the
/// manifest always describes the archive.
struct ExactReader<'a> {
    file: File,
    path: &'a Path,
    remaining: u64,
    hasher: Sha256,
    short: bool,
    /// A read error, kept so it is reported with the file's path rather than as a stream error.
    error: Option<io::Error>,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = loop {
            match self.file.read(&mut buf[..want]) {
                Ok(0) => {
                    self.short = true;
                    buf[..want].fill(0);
                    break want;
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let message = format!("reading {}: {e}", self.path.display());
                    self.error = Some(e);
                    return Err(io::Error::other(message));
                }
            }
        };
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// What `unpack` found.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub files: u64,
    pub bytes: u64,
    pub archive_bytes: u64,
}

/// Decompresses and reads the archive `compressed`, checking every entry and the archive's own
/// size and SHA-256 against `manifest`. With `dest`, extracts into it (a fresh, empty directory)
/// and then applies modes, owners (when running as root) and mtimes from the manifest.
/// `source` names the archive in errors (for example its `s3://` URL).
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
    let mut counted = HashingReader::new(compressed);
    let decoder = zstd::stream::read::Decoder::new(&mut counted).map_err(|e| corrupt(e.to_string()))?;
    let mut archive = tar::Archive::new(decoder);
    let expected = manifest.by_path();
    let mut extractor = Extractor {
        key,
        dest,
        expected: &expected,
        seen: HashSet::with_capacity(expected.len()),
        dirs: HashSet::new(),
        unpacked: Unpacked::default(),
        buffer: vec![0; COPY_BUFFER],
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
    let mut unpacked = extractor.unpacked;
    unpacked.archive_bytes = archive_bytes;
    if let Some(dest) = dest {
        apply_metadata(dest, manifest)?;
    }
    Ok(unpacked)
}

struct Extractor<'a> {
    key: &'a str,
    dest: Option<&'a Path>,
    expected: &'a BTreeMap<&'a str, &'a FileEntry>,
    seen: HashSet<String>,
    /// Directories created from archive entries: the only places a later entry may go.
    dirs: HashSet<String>,
    unpacked: Unpacked,
    buffer: Vec<u8>,
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
        if let Some((parent, _)) = path.rsplit_once('/')
            && !self.dirs.contains(parent)
        {
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
        let target = self.dest.map(|d| d.join(&path));
        match kind {
            EntryKind::Dir => {
                if let Some(target) = &target {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(target)
                        .map_err(|source| ArchiveError::Write {
                            path: target.clone(),
                            source,
                        })?;
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
                manifest::check_link_target(&path, &link).map_err(|reason| self.refused(&path, reason))?;
                if let Some(target) = &target {
                    std::os::unix::fs::symlink(&link, target).map_err(|source| ArchiveError::Write {
                        path: target.clone(),
                        source,
                    })?;
                }
            }
            EntryKind::File => self.file(entry, &path, expected, target.as_deref())?,
        }
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &str,
        expected: &FileEntry,
        target: Option<&Path>,
    ) -> Result<(), ArchiveError> {
        let size = entry
            .header()
            .size()
            .map_err(|e| self.mismatch(format!("{path:?}: {e}")))?;
        if size != expected.bytes {
            return Err(self.mismatch(format!(
                "{path:?} has {size} bytes in the archive, the manifest says {}",
                expected.bytes
            )));
        }
        let mut out = match target {
            Some(target) => Some(
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(target)
                    .map_err(|source| ArchiveError::Write {
                        path: target.to_path_buf(),
                        source,
                    })?,
            ),
            None => None,
        };
        let mut hasher = Sha256::new();
        loop {
            let n = entry.read(&mut self.buffer).map_err(|e| ArchiveError::Corrupt {
                key: self.key.to_string(),
                reason: format!("reading {path:?}: {e}"),
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&self.buffer[..n]);
            if let (Some(out), Some(target)) = (out.as_mut(), target) {
                out.write_all(&self.buffer[..n]).map_err(|source| ArchiveError::Write {
                    path: target.to_path_buf(),
                    source,
                })?;
            }
        }
        let sha = hex::encode(hasher.finalize());
        if expected.sha256.as_deref() != Some(sha.as_str()) {
            return Err(self.mismatch(format!(
                "{path:?} has SHA-256 {sha}, the manifest says {}",
                expected.sha256.as_deref().unwrap_or("none")
            )));
        }
        self.unpacked.files += 1;
        self.unpacked.bytes += size;
        Ok(())
    }
}

/// Applies manifest modes, owners and mtimes, children before parents so that setting a
/// directory's mtime or a read-only mode comes after everything inside it is written.
fn apply_metadata(dest: &Path, manifest: &Manifest) -> Result<(), ArchiveError> {
    let as_root = rustix::process::geteuid().is_root();
    let write_error = |path: &Path, source: io::Error| ArchiveError::Write {
        path: path.to_path_buf(),
        source,
    };
    for entry in manifest.files.iter().rev() {
        let path = dest.join(&entry.path);
        let mtime = filetime::FileTime::from_unix_time(entry.mtime.timestamp(), entry.mtime.timestamp_subsec_nanos());
        if as_root {
            std::os::unix::fs::lchown(&path, Some(entry.uid), Some(entry.gid)).map_err(|e| write_error(&path, e))?;
        }
        match entry.kind {
            EntryKind::Symlink => {
                filetime::set_symlink_file_times(&path, mtime, mtime).map_err(|e| write_error(&path, e))?;
            }
            EntryKind::File | EntryKind::Dir => {
                fs::set_permissions(&path, fs::Permissions::from_mode(entry.mode))
                    .map_err(|e| write_error(&path, e))?;
                filetime::set_file_times(&path, mtime, mtime).map_err(|e| write_error(&path, e))?;
            }
        }
    }
    if as_root {
        std::os::unix::fs::lchown(dest, Some(manifest.root.uid), Some(manifest.root.gid))
            .map_err(|e| write_error(dest, e))?;
    }
    fs::set_permissions(dest, fs::Permissions::from_mode(manifest.root.mode)).map_err(|e| write_error(dest, e))?;
    Ok(())
}
