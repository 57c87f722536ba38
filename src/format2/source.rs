//! What a format-2 backup reads: the frozen mirror, walked by descriptor. rustic_core's own
//! `LocalSource` walks by path strings, and its walk of a path longer than `PATH_MAX` fails
//! (a WARN line, the rest of that subtree silently missing from the snapshot). This source
//! opens every directory relative to its parent's descriptor, one name at a time, so a path
//! of any length is read; the full paths it hands rustic_core are only names for the tree.
//!
//! It yields what `LocalSource` yields, in the same order (each directory's entries sorted by
//! name, bytewise, a directory before its contents) and with the same node metadata (mode in
//! Go's encoding, owner ids and names, mtime, atime = mtime, ctime, inode, device id only for
//! hard links, links, size, link targets, extended attributes), so an unchanged file is still
//! recognised from the parent snapshot and never read again.
//!
//! A file's reader does not read its holes (`SEEK_DATA`/`SEEK_HOLE`): it yields zeros for them,
//! which the chunker stores once. Anything that cannot be read is kept in `problems`: the mirror
//! is spotkeeper's own copy, so a failure there fails the backup rather than drop an entry.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustic_core::repofile::{Metadata, Node, NodeType};
use rustic_core::{ErrorKind, ReadSource, ReadSourceEntry, ReadSourceOpen, RusticError, RusticResult};
use rustix::fs::{FileType, SeekFrom, Stat};
use rustix::io::Errno;

use crate::walk::fd;

/// Entries that could not be read: (path, what went wrong).
type Problems = Arc<Mutex<Vec<(PathBuf, String)>>>;

/// The mirror at `root` as a rustic_core source.
#[derive(Debug)]
pub struct MirrorSource {
    root: PathBuf,
    problems: Problems,
}

impl MirrorSource {
    pub fn new(root: &Path) -> MirrorSource {
        MirrorSource {
            root: root.to_path_buf(),
            problems: Problems::default(),
        }
    }

    /// What could not be read (walked, opened or read) since this source was made.
    pub fn problems(&self) -> Vec<(PathBuf, String)> {
        self.problems.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn note(problems: &Problems, path: &Path, message: String) {
    tracing::warn!(path = %path.display(), reason = %message, "cannot read an entry of the mirror");
    problems
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((path.to_path_buf(), message));
}

fn io_error(path: &Path, what: &str, e: io::Error) -> Box<RusticError> {
    RusticError::with_source(
        ErrorKind::InputOutput,
        format!("cannot {what} `{{path}}` in the mirror"),
        e,
    )
    .attach_context("path", path.display().to_string())
}

impl ReadSource for MirrorSource {
    type Open = OpenAt;
    type Iter = Entries;

    /// Unknown: the progress it would feed is hidden, and a second walk would cost a second
    /// pass over the metadata.
    fn size(&self) -> RusticResult<Option<u64>> {
        Ok(None)
    }

    fn entries(&self) -> Entries {
        Entries {
            root: Some(self.root.clone()),
            stack: Vec::new(),
            names: HashMap::new(),
            problems: Arc::clone(&self.problems),
        }
    }
}

/// One open directory of the walk and the names left to visit in it.
struct Level {
    dir: Arc<OwnedFd>,
    path: PathBuf,
    names: std::vec::IntoIter<CString>,
}

/// The walk: one descriptor per directory level (the mirror's depth is bounded by the walker
/// that fills it), plus the parent directory each pending file open holds.
pub struct Entries {
    /// The root, until the walk starts.
    root: Option<PathBuf>,
    stack: Vec<Level>,
    /// User and group names by id, looked up once (`LocalSource` caches them too).
    names: HashMap<(bool, u32), Option<String>>,
    problems: Problems,
}

impl Iterator for Entries {
    type Item = RusticResult<ReadSourceEntry<OpenAt>>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(root) = self.root.take() {
            match open_level(fd::open_dir_path(&root), root.clone()) {
                Ok(level) => self.stack.push(level),
                Err(e) => {
                    note(&self.problems, &root, format!("cannot list the directory: {e}"));
                    return Some(Err(io_error(&root, "list", e)));
                }
            }
        }
        loop {
            let top = self.stack.last_mut()?;
            let Some(name) = top.names.next() else {
                self.stack.pop();
                continue;
            };
            let dir = Arc::clone(&top.dir);
            let path = top.path.join(OsStr::from_bytes(name.to_bytes()));
            return Some(self.entry(dir, name, path));
        }
    }
}

/// A level for the directory `opened` (at `path`): its names, sorted bytewise as
/// `LocalSource`'s `Path::cmp` sorts the entries of one directory.
fn open_level(opened: io::Result<OwnedFd>, path: PathBuf) -> io::Result<Level> {
    let dir = opened?;
    let names = fd::list_dir(dir.as_fd())?;
    Ok(Level {
        dir: Arc::new(dir),
        path,
        names: names.into_iter(),
    })
}

impl Entries {
    fn entry(&mut self, dir: Arc<OwnedFd>, name: CString, path: PathBuf) -> RusticResult<ReadSourceEntry<OpenAt>> {
        let failed = |problems: &Problems, what: &str, e: io::Error| {
            note(problems, &path, format!("cannot {what}: {e}"));
            io_error(&path, what, e)
        };
        let stat = fd::stat_at(dir.as_fd(), &name).map_err(|e| failed(&self.problems, "stat", e))?;
        let kind = fd::file_type(&stat);
        let os_name = OsStr::from_bytes(name.to_bytes());
        let (node_type, stat, xattrs) = match kind {
            FileType::Directory => {
                let opened = fd::open_dir_at(dir.as_fd(), &name);
                let opened = opened.map_err(|e| failed(&self.problems, "open", e))?;
                // What is described is what was opened and will be walked.
                let stat = fd::stat_fd(&opened).map_err(|e| failed(&self.problems, "stat", e))?;
                if fd::file_type(&stat) != FileType::Directory {
                    let e = io::Error::from(Errno::NOTDIR);
                    return Err(failed(&self.problems, "open", e));
                }
                let xattrs = xattrs_of_dir(&opened);
                let level = open_level(Ok(opened), path.clone());
                self.stack.push(level.map_err(|e| failed(&self.problems, "list", e))?);
                (NodeType::Dir, stat, xattrs)
            }
            FileType::Symlink => {
                let target =
                    fd::read_link_at(dir.as_fd(), &name).map_err(|e| failed(&self.problems, "read the link", e))?;
                let target = Path::new(OsStr::from_bytes(&target));
                (NodeType::from_link(target), stat, xattrs_at(&dir, &name))
            }
            FileType::BlockDevice => (NodeType::Dev { device: stat.st_rdev }, stat, xattrs_at(&dir, &name)),
            FileType::CharacterDevice => (NodeType::Chardev { device: stat.st_rdev }, stat, xattrs_at(&dir, &name)),
            FileType::Fifo => (NodeType::Fifo, stat, xattrs_at(&dir, &name)),
            FileType::Socket => (NodeType::Socket, stat, xattrs_at(&dir, &name)),
            _ => (NodeType::File, stat, xattrs_at(&dir, &name)),
        };
        let mut meta = self.metadata(&stat, kind == FileType::Directory);
        if !xattrs.is_empty() {
            meta.extended_attributes = serde_json::from_value(serde_json::Value::Array(xattrs)).unwrap_or_default();
        }
        let node = Node::new_node(os_name, node_type, meta);
        let open = (node.node_type == NodeType::File).then(|| OpenAt {
            dir,
            name,
            path: path.clone(),
            id: (stat.st_dev, stat.st_ino),
            problems: Arc::clone(&self.problems),
        });
        Ok(ReadSourceEntry { path, node, open })
    }

    /// The metadata `LocalSource` records with its default save options.
    fn metadata(&mut self, stat: &Stat, is_dir: bool) -> Metadata {
        let time = |sec: i64, nsec| rustic_core::jiff::Timestamp::new(sec, i32::try_from(nsec).unwrap_or(0)).ok();
        let mtime = time(stat.st_mtime, stat.st_mtime_nsec);
        #[allow(clippy::useless_conversion)] // u32 on some targets
        let links = u64::from(stat.st_nlink);
        let hard_link = links > 1 && !is_dir;
        Metadata {
            mode: Some(go_mode(stat.st_mode)),
            mtime,
            atime: mtime,
            ctime: time(stat.st_ctime, stat.st_ctime_nsec),
            uid: Some(stat.st_uid),
            gid: Some(stat.st_gid),
            user: self.name_of(false, stat.st_uid),
            group: self.name_of(true, stat.st_gid),
            inode: stat.st_ino,
            device_id: if hard_link { stat.st_dev } else { 0 },
            size: if is_dir {
                0
            } else {
                u64::try_from(stat.st_size).unwrap_or(0)
            },
            links: if is_dir { 0 } else { links },
            extended_attributes: Vec::new(),
        }
    }

    fn name_of(&mut self, group: bool, id: u32) -> Option<String> {
        self.names
            .entry((group, id))
            .or_insert_with(|| {
                if group {
                    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(id))
                        .ok()
                        .flatten()
                        .map(|g| g.name)
                } else {
                    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id))
                        .ok()
                        .flatten()
                        .map(|u| u.name)
                }
            })
            .clone()
    }
}

/// `st_mode` in Go's `fs.FileMode` encoding, as restic stores it.
fn go_mode(mode: u32) -> u32 {
    const DIR: u32 = 1 << 31;
    const SYMLINK: u32 = 1 << 27;
    const DEVICE: u32 = 1 << 26;
    const FIFO: u32 = 1 << 25;
    const SOCKET: u32 = 1 << 24;
    const SETUID: u32 = 1 << 23;
    const SETGID: u32 = 1 << 22;
    const CHARDEV: u32 = 1 << 21;
    const STICKY: u32 = 1 << 20;
    const IRREGULAR: u32 = 1 << 19;
    let mut go = mode & 0o777;
    go |= match mode & 0o170_000 {
        0o140_000 => SOCKET,
        0o120_000 => SYMLINK,
        0o060_000 => DEVICE,
        0o040_000 => DIR,
        // rustic_core sets only the char-device bit here (its `CHARDEV & DEVICE` is 0).
        0o020_000 => CHARDEV & DEVICE,
        0o010_000 => FIFO,
        0o100_000 => 0,
        _ => IRREGULAR,
    };
    for (bit, go_bit) in [(0o4000, SETUID), (0o2000, SETGID), (0o1000, STICKY)] {
        if mode & bit != 0 {
            go |= go_bit;
        }
    }
    go
}

/// Extended attributes of a directory, from its descriptor.
fn xattrs_of_dir(dir: &OwnedFd) -> Vec<serde_json::Value> {
    rustic_xattr::collect(
        |buf| rustix::fs::flistxattr(dir, buf),
        |name, buf| rustix::fs::fgetxattr(dir, name, buf),
    )
}

/// Extended attributes of `name` in `dir`, the link itself never followed, reached through
/// `/proc/self/fd/<dir>/<name>` (no `*at` call exists; the path stays a few bytes whatever
/// the depth). None when `/proc` is not there.
fn xattrs_at(dir: &OwnedFd, name: &CStr) -> Vec<serde_json::Value> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.to_bytes());
    let Ok(path) = CString::new(path) else {
        return Vec::new();
    };
    rustic_xattr::collect(
        |buf| rustix::fs::llistxattr(path.as_c_str(), buf),
        |attr, buf| rustix::fs::lgetxattr(path.as_c_str(), attr, buf),
    )
}

/// rustic_core's `ExtendedAttribute` is not exported by name; it is built through its serde
/// form (`{"name": ..., "value": base64}`), the one restic stores.
mod rustic_xattr {
    use std::ffi::CStr;

    /// Lists the attributes with `list` and reads each with `get`; errors (no support, no
    /// permission, a race) leave an attribute out, as `LocalSource` does.
    pub fn collect<L, G>(list: L, get: G) -> Vec<serde_json::Value>
    where
        L: Fn(&mut [u8]) -> rustix::io::Result<usize>,
        G: Fn(&CStr, &mut [u8]) -> rustix::io::Result<usize>,
    {
        let Some(names) = sized(|buf| list(buf)) else {
            return Vec::new();
        };
        names
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .filter_map(|n| {
                let name = std::ffi::CString::new(n).ok()?;
                let value = sized(|buf| get(&name, buf));
                Some(serde_json::json!({
                    "name": String::from_utf8_lossy(n),
                    "value": value.map(|v| base64(&v)),
                }))
            })
            .collect()
    }

    /// Calls `call` with a buffer large enough for its answer (asked first with an empty one).
    fn sized(call: impl Fn(&mut [u8]) -> rustix::io::Result<usize>) -> Option<Vec<u8>> {
        for _ in 0..4 {
            let size = call(&mut []).ok()?;
            let mut buf = vec![0u8; size];
            match call(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Some(buf);
                }
                Err(rustix::io::Errno::RANGE) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    pub(super) fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// How to open one file of the mirror: its parent directory's descriptor and its name.
pub struct OpenAt {
    dir: Arc<OwnedFd>,
    name: CString,
    path: PathBuf,
    /// (device, inode) the walk described: what is opened must be that file.
    id: (u64, u64),
    problems: Problems,
}

impl ReadSourceOpen for OpenAt {
    type Reader = HoleReader;

    fn open(self) -> RusticResult<HoleReader> {
        let opened = fd::open_file_at(self.dir.as_fd(), &self.name).and_then(|file| {
            let stat = fd::stat_fd(&file)?;
            if fd::file_type(&stat) != FileType::RegularFile || (stat.st_dev, stat.st_ino) != self.id {
                return Err(io::Error::other("it was replaced while the backup ran"));
            }
            Ok((file, stat))
        });
        let (file, stat) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                note(&self.problems, &self.path, format!("cannot open: {e}"));
                return Err(io_error(&self.path, "open", e));
            }
        };
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        let blocks = u64::try_from(stat.st_blocks).unwrap_or(0);
        Ok(HoleReader {
            file,
            pos: 0,
            // As many blocks as bytes: no hole worth asking about.
            region: if blocks.saturating_mul(512) >= size {
                Region::Dense
            } else {
                Region::Unknown
            },
            path: self.path,
            problems: self.problems,
        })
    }
}

/// What the file holds from the reader's position on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Region {
    /// Not asked yet.
    Unknown,
    /// Data up to this offset.
    Data(u64),
    /// A hole (zeros, nothing to read) up to this offset.
    Hole(u64),
    /// No hole information (a dense file, or a file system that cannot say): read everything.
    Dense,
    /// Past the end.
    End,
}

/// A file of the mirror, read from its start; holes come back as zeros without a read.
pub struct HoleReader {
    file: File,
    pos: u64,
    region: Region,
    path: PathBuf,
    problems: Problems,
}

impl HoleReader {
    /// Where the data and holes are from `pos`.
    fn locate(&self) -> io::Result<Region> {
        match rustix::fs::seek(&self.file, SeekFrom::Data(self.pos)) {
            Ok(data) if data > self.pos => Ok(Region::Hole(data)),
            Ok(_) => match rustix::fs::seek(&self.file, SeekFrom::Hole(self.pos)) {
                Ok(hole) if hole > self.pos => Ok(Region::Data(hole)),
                // The file changed between the two calls: read it as it is.
                Ok(_) | Err(Errno::NXIO) => Ok(Region::Dense),
                Err(e) => Err(e.into()),
            },
            // No data from `pos` on: a hole to the end, or the end.
            Err(Errno::NXIO) => {
                let size = u64::try_from(fd::stat_fd(&self.file)?.st_size).unwrap_or(0);
                Ok(if self.pos < size {
                    Region::Hole(size)
                } else {
                    Region::End
                })
            }
            Err(Errno::INVAL | Errno::NOTSUP) => Ok(Region::Dense),
            Err(e) => Err(e.into()),
        }
    }

    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let (len, is_data) = match self.region {
                Region::End => return Ok(0),
                Region::Unknown => {
                    self.region = self.locate()?;
                    continue;
                }
                Region::Dense => (buf.len(), true),
                Region::Data(end) | Region::Hole(end) if end <= self.pos => {
                    self.region = Region::Unknown;
                    continue;
                }
                Region::Data(end) => (clamp(end - self.pos, buf.len()), true),
                Region::Hole(end) => (clamp(end - self.pos, buf.len()), false),
            };
            let n = if is_data {
                match self.file.read_at(&mut buf[..len], self.pos) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            } else {
                buf[..len].fill(0);
                len
            };
            self.pos += n as u64;
            return Ok(n);
        }
    }
}

fn clamp(left: u64, len: usize) -> usize {
    usize::try_from(left).map_or(len, |left| left.min(len))
}

impl Read for HoleReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_some(buf).inspect_err(|e| {
            note(
                &self.problems,
                &self.path,
                format!("cannot read at offset {}: {e}", self.pos),
            );
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::Mode;

    #[test]
    fn modes_are_gos() {
        assert_eq!(go_mode(0o100_644), 0o644);
        assert_eq!(go_mode(0o040_755), (1 << 31) | 0o755);
        assert_eq!(go_mode(0o120_777), (1 << 27) | 0o777);
        assert_eq!(go_mode(0o104_755), (1 << 23) | 0o755);
        assert_eq!(go_mode(0o020_600), 0o600);
    }

    #[test]
    fn holes_read_as_zeros_and_data_as_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sparse");
        let file = File::create(&path).expect("create");
        file.write_all_at(b"head", 0).expect("write");
        file.write_all_at(b"middle", 8 << 20).expect("write");
        file.set_len(32 << 20).expect("extend");
        let mut reader = HoleReader {
            file: File::open(&path).expect("open"),
            pos: 0,
            region: Region::Unknown,
            path: path.clone(),
            problems: Problems::default(),
        };
        let mut all = Vec::new();
        reader.read_to_end(&mut all).expect("read");
        assert_eq!(all.len(), 32 << 20);
        assert_eq!(&all[..4], b"head");
        assert_eq!(&all[8 << 20..(8 << 20) + 6], b"middle");
        let mut expected = vec![0u8; 32 << 20];
        expected[..4].copy_from_slice(b"head");
        expected[8 << 20..(8 << 20) + 6].copy_from_slice(b"middle");
        assert!(all == expected);
    }

    /// A tree with every kind of entry the mirror can hold, and some it cannot.
    fn build_tree(root: &Path) {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::PermissionsExt;
        let write = |rel: &str, body: &[u8], mode: u32| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(&path, body).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        write("a/b/c.txt", b"c", 0o644);
        write("a/B.txt", b"upper", 0o600);
        write("a.txt", b"a dot", 0o644);
        write("a-b/x", b"dash", 0o4755);
        write("big.bin", &vec![7u8; 3 << 20], 0o640);
        std::fs::hard_link(root.join("big.bin"), root.join("big-link.bin")).expect("hard link");
        std::fs::write(root.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).expect("symlink");
        std::os::unix::fs::symlink(OsStr::from_bytes(b"odd-\xff"), root.join("odd-link")).expect("symlink");
        std::os::unix::fs::symlink("a/b", root.join("a/dir-link")).expect("symlink");
        std::fs::create_dir_all(root.join("empty")).expect("dir");
        std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        let sparse = File::create(root.join("sparse")).expect("create");
        sparse.write_all_at(b"data", 1 << 20).expect("write");
        sparse.set_len(4 << 20).expect("extend");
    }

    fn read_all(open: OpenAt) -> Vec<u8> {
        let mut body = Vec::new();
        open.open().expect("open").read_to_end(&mut body).expect("read");
        body
    }

    #[test]
    fn entries_and_nodes_are_local_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("root");
        build_tree(&root);
        let local = rustic_core::LocalSource::new(
            rustic_core::LocalSourceSaveOptions::default(),
            &rustic_core::Excludes::default(),
            &rustic_core::LocalSourceFilterOptions::default(),
            &[&root],
        )
        .expect("local source");
        let theirs: Vec<(PathBuf, Node, Option<Vec<u8>>)> = local
            .entries()
            .map(|e| {
                let e = e.expect("local entry");
                let is_file = e.node.node_type == NodeType::File;
                let body = e.open.filter(|_| is_file).map(|o| {
                    let mut body = Vec::new();
                    o.open().expect("open").read_to_end(&mut body).expect("read");
                    body
                });
                (e.path, e.node, body)
            })
            .collect();
        let source = MirrorSource::new(&root);
        let ours: Vec<(PathBuf, Node, Option<Vec<u8>>)> = source
            .entries()
            .map(|e| {
                let e = e.expect("entry");
                (e.path, e.node, e.open.map(read_all))
            })
            .collect();
        assert!(source.problems().is_empty(), "{:?}", source.problems());
        assert_eq!(ours.len(), theirs.len());
        for (ours, theirs) in ours.iter().zip(&theirs) {
            assert_eq!(ours.0, theirs.0);
            assert_eq!(ours.1, theirs.1, "{:?}", ours.0);
            assert!(ours.2 == theirs.2, "{:?}: contents differ", ours.0);
        }
    }

    /// Bytes this thread read (read(2), pread(2), ...).
    fn thread_rchar() -> u64 {
        std::fs::read_to_string("/proc/thread-self/io")
            .expect("/proc/thread-self/io")
            .lines()
            .find_map(|l| l.strip_prefix("rchar: ").and_then(|n| n.trim().parse().ok()))
            .expect("rchar")
    }

    #[test]
    fn a_files_holes_are_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("root");
        let size = 256u64 << 20;
        let file = File::create(root.join("sparse")).expect("create");
        file.write_all_at(b"head", 0).expect("write");
        file.write_all_at(b"tail", size - 4).expect("write");
        file.set_len(size).expect("extend");
        let source = MirrorSource::new(&root);
        let entry = source.entries().next().expect("one entry").expect("entry");
        let mut reader = entry.open.expect("a file").open().expect("open");
        let before = thread_rchar();
        let mut buf = vec![0u8; 1 << 20];
        let (mut total, mut nonzero) = (0u64, 0u64);
        loop {
            let n = reader.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            total += n as u64;
            nonzero += buf[..n].iter().filter(|b| **b != 0).count() as u64;
        }
        let read = thread_rchar() - before;
        assert_eq!(total, size);
        assert_eq!(nonzero, 8);
        assert!(read < 1 << 20, "read {read} bytes of a file with 8 bytes of data");
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        for (raw, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(rustic_xattr::base64(raw.as_bytes()), coded);
        }
        let attrs = rustic_xattr::collect(|_| Err(Errno::NOTSUP), |_, _| Err(Errno::NOTSUP));
        assert!(attrs.is_empty());
    }
}
