//! spotkeeper's own restore of a format-2 snapshot: every entry is checked before anything is
//! written, then written through directory descriptors (one name at a time, never following a
//! link, so no path is ever longer than one name and no link the snapshot holds is ever
//! followed), with the file contents read from the packs in large ranges by several readers at
//! once, decrypted in place, decompressed and checked against their ids, and written in the
//! order the packs hold them; blocks of zeros are never read or written, so holes stay holes.
//!
//! What a new machine waits for (issue 22): the trees of one depth are read together (a round
//! of GETs per depth, not one GET per directory); what is held is bounded in bytes (`BUDGET`),
//! not in reads; the ids of blobs of zeros cost one pass over the longest of them; and the
//! write-back starts while the restore goes on (`FLUSH_EVERY`), so the final `syncfs` is short;
//! the buffers of reads and blobs are reused (`Buffers`), and each read wakes its reader once
//! (`S3Backend::block`).
//!
//! rustic_core's own restorer joins names onto the target as path strings (a path past PATH_MAX
//! fails, a crafted tree could write through a link), writes every zero, and panics on some
//! write errors; this one is built on its lower pieces (the index, trees, the master key).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use aes256ctr_poly1305aes::aead::{AeadInPlace, generic_array::GenericArray};
use rustic_core::repofile::{Metadata, Node, NodeType};
use rustic_core::{DataId, IndexedFullStatus, Repository, TreeId};
use rustix::fs::{AtFlags, Mode, Timespec, Timestamps};
use sha2::{Digest, Sha256};

use super::S3Backend;
use crate::walk::fd;

/// Readers of packs at once: S3 answers many ranged GETs in parallel far faster than in turn.
const READERS: usize = 8;
/// One read covers neighbouring blobs of one pack up to this many bytes, read and decompressed
/// (a read of one blob larger than this is allowed: restic's chunks are at most 8 MiB)...
const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;
/// ...skipping at most this many bytes between two of them (cheaper than a second request).
const MAX_READ_GAP: u64 = 256 * 1024;
/// Bytes a restore holds at most for file contents: what readers fetched (encrypted) and what
/// they decompressed, until the writer has written it. A read is taken only when its bytes fit
/// (or when nothing is held: a single read larger than the budget still goes, alone).
const BUDGET: u64 = 40 * 1024 * 1024;
/// Written bytes after which the file system is asked to write back what is dirty, while the
/// restore goes on: the device works from the start, and the final `syncfs` (which makes the
/// restore durable before it is swapped in) waits only for the last of it.
const FLUSH_EVERY: u64 = 32 * 1024 * 1024;
/// No blob of restic's is larger (its chunker stops at 8 MiB); a larger length in the index is
/// damage, and must not become an allocation of up to 4 GiB.
const MAX_BLOB_BYTES: u32 = 64 * 1024 * 1024;
/// What restic's encryption adds to a blob: a 16-byte IV before it, a 16-byte MAC after it.
const SEALING: u32 = 32;

/// Go's `os.FileMode` bits that restic stores (rustic_core maps them the same way).
const GO_MODE_SETUID: u32 = 1 << 23;
const GO_MODE_SETGID: u32 = 1 << 22;
const GO_MODE_STICKY: u32 = 1 << 20;

/// Why a restore stopped. Nothing outside the target was touched in any case.
#[derive(Debug, thiserror::Error)]
pub enum RestorerError {
    /// The snapshot holds an entry restore never writes (the relative path, why).
    #[error("{path:?}: {reason}")]
    Unsafe { path: String, reason: &'static str },
    /// The repository's data does not match what the snapshot names.
    #[error("{what}")]
    Damaged { what: String },
    /// rustic_core failed (reading a tree, the index, a pack).
    #[error("{0}")]
    Repository(Box<rustic_core::RusticError>),
    /// The local disk failed (full, read-only, too deep for the file system...).
    #[error("{}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// What a restore of one tree wrote.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub files: u64,
    pub bytes: u64,
    /// Entries whose setuid/setgid bits were dropped (restore never plants them).
    pub privilege_dropped: Vec<String>,
    /// Bytes read from packs.
    pub read_bytes: u64,
    /// Ranged GETs of packs for the contents.
    pub reads: u64,
}

/// One directory of the plan: its parent's index (`None`: the target itself) and name.
struct DirPlan {
    parent: Option<usize>,
    name: CString,
    rel: String,
    meta: Metadata,
}

struct FilePlan {
    dir: usize,
    name: CString,
    rel: String,
    meta: Metadata,
    content: Vec<DataId>,
}

struct LinkPlan {
    dir: usize,
    name: CString,
    rel: String,
    target: CString,
    meta: Metadata,
}

/// Everything a tree holds, checked, in the order it is created (a directory before what it
/// holds).
#[derive(Default)]
pub struct Plan {
    dirs: Vec<DirPlan>,
    files: Vec<FilePlan>,
    links: Vec<LinkPlan>,
}

impl Plan {
    /// Reads the tree `root` (a state path's directory) and checks every entry: a plain name
    /// (not empty, `.` or `..`, no `/` or NUL), once per directory, only directories, regular
    /// files and links. Links are data: any target is kept as it is (restore never follows one).
    ///
    /// The trees of one depth are read together: the blobs that lie close in one pack in one
    /// ranged GET, the GETs by several readers at once (a tree's depth costs one round of
    /// requests, not each directory one).
    pub fn read(
        repo: &Repository<IndexedFullStatus>,
        backend: &S3Backend,
        cipher: &Aes256CtrPoly1305Aes,
        root: TreeId,
    ) -> Result<Plan, RestorerError> {
        let mut plan = Plan::default();
        plan.dirs.push(DirPlan {
            parent: None,
            name: CString::default(),
            rel: String::new(),
            meta: Metadata::default(),
        });
        let mut level = vec![(root, 0usize)];
        while !level.is_empty() {
            let ids: Vec<TreeId> = level.iter().map(|(id, _)| *id).collect();
            let trees = read_trees(repo, backend, cipher, &ids)?;
            let mut next = Vec::new();
            for ((_, dir), nodes) in level.into_iter().zip(trees) {
                let mut seen = HashSet::with_capacity(nodes.len());
                for node in nodes {
                    let name = node.name().into_owned();
                    let rel = join(&plan.dirs[dir].rel, &name);
                    let c_name = checked_name(&name).ok_or_else(|| RestorerError::Unsafe {
                        path: rel.clone(),
                        reason: "a name that is empty, `.` or `..`, or holds `/` or NUL",
                    })?;
                    if !seen.insert(name.clone()) {
                        return Err(RestorerError::Unsafe {
                            path: rel,
                            reason: "two entries with one name",
                        });
                    }
                    plan.add(node, dir, c_name, rel, &mut next)?;
                }
            }
            level = next;
        }
        Ok(plan)
    }

    fn add(
        &mut self,
        node: Node,
        dir: usize,
        name: CString,
        rel: String,
        pending: &mut Vec<(TreeId, usize)>,
    ) -> Result<(), RestorerError> {
        match &node.node_type {
            NodeType::Dir => {
                let Some(subtree) = node.subtree else {
                    return Err(RestorerError::Unsafe {
                        path: rel,
                        reason: "a directory without a tree",
                    });
                };
                pending.push((subtree, self.dirs.len()));
                self.dirs.push(DirPlan {
                    parent: Some(dir),
                    name,
                    rel,
                    meta: node.meta,
                });
            }
            NodeType::File => self.files.push(FilePlan {
                dir,
                name,
                rel,
                content: node.content.clone().unwrap_or_default(),
                meta: node.meta,
            }),
            NodeType::Symlink { .. } => {
                let target = node.node_type.to_link().as_os_str().as_bytes().to_vec();
                let Ok(target) = CString::new(target) else {
                    return Err(RestorerError::Unsafe {
                        path: rel,
                        reason: "a link whose target holds NUL",
                    });
                };
                if target.as_bytes().is_empty() {
                    return Err(RestorerError::Unsafe {
                        path: rel,
                        reason: "a link with an empty target",
                    });
                }
                self.links.push(LinkPlan {
                    dir,
                    name,
                    rel,
                    target,
                    meta: node.meta,
                });
            }
            _ => {
                return Err(RestorerError::Unsafe {
                    path: rel,
                    reason: "a device, socket or pipe",
                });
            }
        }
        Ok(())
    }

    /// Files in the plan.
    pub fn files(&self) -> usize {
        self.files.len()
    }
}

fn join(parent: &str, name: &OsStr) -> String {
    let name = name.to_string_lossy();
    if parent.is_empty() {
        name.into_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// The name as one path component, or `None` when it is not one.
fn checked_name(name: &OsStr) -> Option<CString> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return None;
    }
    CString::new(bytes).ok()
}

/// The descriptors of the plan's directories, opened one name at a time from the target and
/// kept up to a bound (a tree of many directories must not run out of descriptors).
struct Dirs<'a> {
    plan: &'a [DirPlan],
    root: &'a OwnedFd,
    open: HashMap<usize, OwnedFd>,
}

const MAX_OPEN_DIRS: usize = 256;

impl Dirs<'_> {
    fn fd(&mut self, index: usize) -> io::Result<BorrowedFd<'_>> {
        if index == 0 {
            return Ok(self.root.as_fd());
        }
        if !self.open.contains_key(&index) {
            // The chain up to the nearest open ancestor, then down again.
            let mut chain = vec![index];
            while let Some(parent) = self.plan[*chain.last().unwrap_or(&0)].parent {
                if parent == 0 || self.open.contains_key(&parent) {
                    break;
                }
                chain.push(parent);
            }
            if self.open.len() + chain.len() > MAX_OPEN_DIRS {
                self.open.clear();
                return self.open_chain_from_root(index);
            }
            for &dir in chain.iter().rev() {
                let parent = self.plan[dir].parent.unwrap_or(0);
                let opened = {
                    let parent_fd = if parent == 0 {
                        self.root.as_fd()
                    } else {
                        self.open.get(&parent).map(AsFd::as_fd).ok_or_else(missing_parent)?
                    };
                    fd::open_dir_at(parent_fd, &self.plan[dir].name)?
                };
                self.open.insert(dir, opened);
            }
        }
        self.open.get(&index).map(AsFd::as_fd).ok_or_else(missing_parent)
    }

    fn open_chain_from_root(&mut self, index: usize) -> io::Result<BorrowedFd<'_>> {
        let mut chain = vec![index];
        while let Some(parent) = self.plan[*chain.last().unwrap_or(&0)].parent {
            if parent == 0 {
                break;
            }
            chain.push(parent);
        }
        let mut current: Option<OwnedFd> = None;
        for &dir in chain.iter().rev() {
            let parent = current.as_ref().map_or(self.root.as_fd(), AsFd::as_fd);
            current = Some(fd::open_dir_at(parent, &self.plan[dir].name)?);
        }
        let opened = current.ok_or_else(missing_parent)?;
        self.open.insert(index, opened);
        self.open.get(&index).map(AsFd::as_fd).ok_or_else(missing_parent)
    }
}

fn missing_parent() -> io::Error {
    io::Error::other("a directory of the restore was not open (a bug)")
}

/// Where a blob's bytes go: the file (its index in the plan) and the offset in it.
#[derive(Debug, Clone, Copy)]
struct Place {
    file: usize,
    offset: u64,
}

/// One blob to read: its id, where it is in its pack, and where it goes.
#[derive(Debug, Clone)]
struct BlobRead {
    id: DataId,
    /// Offset in the pack and length there (encrypted, maybe compressed).
    offset: u64,
    length: u64,
    uncompressed: Option<u32>,
    place: Place,
}

/// One ranged GET of a pack: neighbouring blobs, in file order.
#[derive(Debug, Clone)]
struct ReadJob {
    pack: rustic_core::Id,
    start: u64,
    end: u64,
    /// The blobs' bytes once decompressed.
    data_bytes: u64,
    blobs: Vec<BlobRead>,
}

/// What the writer needs of one file beyond its plan: its size, the sum of its blobs.
struct FileLayout {
    size: u64,
}

/// Where a blob is: its pack, its offset and length there (encrypted, maybe compressed), and its
/// length once decompressed when it is compressed.
#[derive(Debug, Clone, Copy)]
struct Located {
    pack: rustic_core::Id,
    offset: u64,
    length: u64,
    uncompressed: Option<u32>,
}

/// The most bytes a blob takes in its pack: the largest chunk compressed at its worst, sealed.
fn largest_sealed() -> u64 {
    zstd::zstd_safe::compress_bound(MAX_BLOB_BYTES as usize) as u64 + u64::from(SEALING)
}

impl Located {
    /// Where the index says blob `id` is; `what` names it in the error.
    fn find<T: rustic_core::PackedId>(
        repo: &Repository<IndexedFullStatus>,
        id: &T,
        what: impl FnOnce() -> String,
    ) -> Result<Located, RestorerError> {
        let entry = repo.get_index_entry(id).map_err(|_| RestorerError::Damaged {
            what: format!("{} is in no pack the index names", what()),
        })?;
        let location = entry.location;
        Ok(Located {
            pack: *entry.pack,
            offset: u64::from(location.offset),
            length: u64::from(location.length),
            uncompressed: location.uncompressed_length.map(std::num::NonZeroU32::get),
        })
    }

    /// Its length once decrypted and decompressed, or why it cannot be one of restic's blobs.
    /// Its length in the pack is bounded too: a read is allocated at that length before its
    /// bytes arrive, so a damaged index must not ask for 4 GiB of it.
    fn data_length(&self) -> Result<u32, &'static str> {
        if self.length > largest_sealed() {
            return Err("claims more bytes in its pack than any chunk takes");
        }
        let length = match self.uncompressed {
            Some(length) => length,
            None => u32::try_from(self.length)
                .ok()
                .and_then(|l| l.checked_sub(SEALING))
                .ok_or("is shorter than its encryption")?,
        };
        if length > MAX_BLOB_BYTES {
            return Err("claims more bytes than any chunk");
        }
        Ok(length)
    }
}

/// Every file's blobs as the index places them, and the order files are written in: by where
/// their content starts (pack, then offset), so that the reads go through each pack front to
/// back whatever order the trees list the files in.
#[allow(clippy::type_complexity)]
fn locate_all(
    repo: &Repository<IndexedFullStatus>,
    files: &[FilePlan],
) -> Result<(Vec<Vec<(Located, u32)>>, Vec<usize>), RestorerError> {
    let mut located = Vec::with_capacity(files.len());
    for file in files {
        let mut blobs = Vec::with_capacity(file.content.len());
        for id in &file.content {
            let blob = || format!("{}: blob {}", file.rel, id.to_hex().as_str());
            let at = Located::find(repo, id, blob)?;
            let length = at.data_length().map_err(|why| RestorerError::Damaged {
                what: format!("{} {why}", blob()),
            })?;
            blobs.push((at, length));
        }
        located.push(blobs);
    }
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&index| located[index].first().map(|(at, _)| (at.pack, at.offset)));
    Ok((located, order))
}

/// The reads of every file's content in the order files are written in (`locate_all`),
/// neighbouring blobs of a pack in one read, blobs of zeros left out (their places stay holes).
#[allow(clippy::type_complexity)]
fn read_jobs(
    repo: &Repository<IndexedFullStatus>,
    files: &[FilePlan],
) -> Result<(Vec<usize>, Vec<ReadJob>, Vec<FileLayout>), RestorerError> {
    let (located, order) = locate_all(repo, files)?;
    let mut jobs: Vec<ReadJob> = Vec::new();
    let mut layouts: Vec<FileLayout> = files.iter().map(|_| FileLayout { size: 0 }).collect();
    let lengths = located.iter().flatten().map(|(_, length)| *length).collect();
    let zero_ids = zero_ids(lengths);
    for &index in &order {
        let file = &files[index];
        let mut offset = 0u64;
        for (id, &(location, data_length)) in file.content.iter().zip(&located[index]) {
            let place = Place { file: index, offset };
            offset += u64::from(data_length);
            if zero_ids.get(&data_length) == Some(id) {
                continue;
            }
            let read = BlobRead {
                id: *id,
                offset: location.offset,
                length: location.length,
                uncompressed: location.uncompressed,
                place,
            };
            let pack = location.pack;
            let start = read.offset;
            let end = read.offset + read.length;
            match jobs.last_mut() {
                Some(job)
                    if job.pack == pack
                        && start >= job.start
                        && start <= job.end + MAX_READ_GAP
                        && end.max(job.end) - job.start <= MAX_READ_BYTES
                        && job.data_bytes + u64::from(data_length) <= MAX_READ_BYTES =>
                {
                    job.end = job.end.max(end);
                    job.data_bytes += u64::from(data_length);
                    job.blobs.push(read);
                }
                _ => jobs.push(ReadJob {
                    pack,
                    start,
                    end,
                    data_bytes: u64::from(data_length),
                    blobs: vec![read],
                }),
            }
        }
        if offset != file.meta.size {
            return Err(RestorerError::Damaged {
                what: format!(
                    "{}: its blobs hold {offset} bytes but the snapshot says {}",
                    file.rel, file.meta.size
                ),
            });
        }
        layouts[index] = FileLayout { size: offset };
    }
    Ok((order, jobs, layouts))
}

/// The id of `length` zero bytes for each length (ids are content hashes, so a blob of zeros is
/// known without reading it). One hasher runs through zeros up to the longest, and each length's
/// id is a copy of it finished there: the work is the longest length, not the sum of them (a
/// state of 3,000 files of distinct sizes would otherwise hash its whole size in zeros).
fn zero_ids(lengths: std::collections::BTreeSet<u32>) -> HashMap<u32, DataId> {
    let block = [0u8; 64 * 1024];
    let mut hasher = Sha256::new();
    let mut at = 0u64;
    let mut ids = HashMap::with_capacity(lengths.len());
    for length in lengths {
        let mut left = u64::from(length) - at;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            hasher.update(&block[..n]);
            left -= n as u64;
        }
        at = u64::from(length);
        ids.insert(
            length,
            DataId::from(rustic_core::Id::new(hasher.clone().finalize().into())),
        );
    }
    ids
}

/// The key that decrypts the repository's blobs.
pub fn cipher(repo: &Repository<IndexedFullStatus>) -> Result<Aes256CtrPoly1305Aes, RestorerError> {
    let master = repo.key();
    if master.encrypt.len() != 32 || master.mac.k.len() != 16 || master.mac.r.len() != 16 {
        return Err(RestorerError::Damaged {
            what: "the repository's master key has an unexpected length".into(),
        });
    }
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(&master.encrypt);
    key[32..48].copy_from_slice(&master.mac.k);
    key[48..].copy_from_slice(&master.mac.r);
    Ok(Aes256CtrPoly1305Aes::new(GenericArray::from_slice(&key)))
}

/// Reads one job's range and gives each blob's plaintext, checked against its id.
fn read_job(
    backend: &S3Backend,
    cipher: &Aes256CtrPoly1305Aes,
    job: &ReadJob,
    buffers: &Buffers,
    decompressor: &mut zstd::bulk::Decompressor<'static>,
) -> Result<Vec<(Place, Vec<u8>)>, RestorerError> {
    let body = buffers.take((job.end - job.start) as usize);
    let mut bytes = backend
        .read_pack_range_into(&job.pack, job.start, job.end - job.start, body)
        .map_err(RestorerError::Repository)?;
    let mut out: Vec<(Place, Vec<u8>)> = Vec::with_capacity(job.blobs.len());
    // A blob is decrypted in place once: one that comes again (two files, or one file, holding
    // the same chunk) is a copy of the first.
    let mut opened: HashMap<(u64, u64, DataId), usize> = HashMap::new();
    for blob in &job.blobs {
        if let Some(&first) = opened.get(&(blob.offset, blob.length, blob.id)) {
            let mut data = buffers.take(out[first].1.len());
            data.extend_from_slice(&out[first].1);
            out.push((blob.place, data));
            continue;
        }
        let from = (blob.offset - job.start) as usize;
        let to = from + blob.length as usize;
        let damaged = |why: &str| RestorerError::Damaged {
            what: format!(
                "blob {} in pack {} {why}",
                blob.id.to_hex().as_str(),
                job.pack.to_hex().as_str()
            ),
        };
        let Some(sealed) = bytes.get_mut(from..to) else {
            return Err(damaged("lies past the end of the pack"));
        };
        let length = blob.uncompressed.map_or(sealed.len(), |length| length as usize);
        let mut data = buffers.take(length);
        open_blob(cipher, sealed, blob.uncompressed, &blob.id, decompressor, &mut data).map_err(|why| damaged(&why))?;
        opened.insert((blob.offset, blob.length, blob.id), out.len());
        out.push((blob.place, data));
    }
    buffers.give(bytes);
    crate::liveness::mark();
    Ok(out)
}

/// One blob as read from its pack (`nonce | ciphertext | MAC`): decrypted in place,
/// decompressed when `uncompressed` gives its length, and checked against `id`; its plaintext
/// replaces what `data` held.
fn open_blob(
    cipher: &Aes256CtrPoly1305Aes,
    sealed: &mut [u8],
    uncompressed: Option<u32>,
    id: &rustic_core::Id,
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    data: &mut Vec<u8>,
) -> Result<(), String> {
    if sealed.len() < SEALING as usize {
        return Err("is too short to be encrypted".into());
    }
    let (nonce, rest) = sealed.split_at_mut(16);
    let (body, tag) = rest.split_at_mut(rest.len() - 16);
    cipher
        .decrypt_in_place_detached(
            GenericArray::from_slice(nonce),
            b"",
            body,
            GenericArray::from_slice(tag),
        )
        .map_err(|_| "fails its MAC (damaged or not of this repository)".to_string())?;
    data.clear();
    match uncompressed {
        Some(length) => {
            // zstd writes into `data`'s capacity and never grows it: a frame longer than that
            // fails, and one of another length than the index says is refused below.
            data.reserve_exact(length as usize);
            let written = decompressor
                .decompress_to_buffer(body, data)
                .map_err(|e| format!("does not decompress: {e}"))?;
            if written != length as usize {
                return Err("decompresses to another length than the index says".into());
            }
        }
        None => data.extend_from_slice(body),
    }
    let hash: [u8; 32] = Sha256::digest(&data[..]).into();
    if rustic_core::Id::new(hash) != *id {
        return Err("does not hash to its id".into());
    }
    Ok(())
}

/// The trees `ids`, in that order: read with as few GETs as their places allow (blobs close
/// together in one pack in one read), by up to `READERS` readers at once, each decrypted,
/// decompressed, checked against its id and parsed.
fn read_trees(
    repo: &Repository<IndexedFullStatus>,
    backend: &S3Backend,
    cipher: &Aes256CtrPoly1305Aes,
    ids: &[TreeId],
) -> Result<Vec<Vec<Node>>, RestorerError> {
    crate::liveness::mark();
    let mut located = Vec::with_capacity(ids.len());
    for (index, id) in ids.iter().enumerate() {
        let at = Located::find(repo, id, || format!("tree {}", id.to_hex().as_str()))?;
        at.data_length().map_err(|why| RestorerError::Damaged {
            what: format!("tree {} {why}", id.to_hex().as_str()),
        })?;
        located.push((at, index));
    }
    located.sort_unstable_by_key(|(at, _)| (at.pack, at.offset));
    // Neighbouring trees of one pack in one read.
    let mut reads: Vec<(Located, Vec<(Located, usize)>)> = Vec::new();
    for (at, index) in located {
        match reads.last_mut() {
            Some((range, members))
                if range.pack == at.pack
                    && at.offset <= range.offset + range.length + MAX_READ_GAP
                    && (at.offset + at.length).max(range.offset + range.length) - range.offset <= MAX_READ_BYTES =>
            {
                range.length = (at.offset + at.length).max(range.offset + range.length) - range.offset;
                members.push((at, index));
            }
            _ => reads.push((at, vec![(at, index)])),
        }
    }
    let trees: Vec<Mutex<Option<Vec<Node>>>> = ids.iter().map(|_| Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed: Mutex<Option<RestorerError>> = Mutex::new(None);
    let read_one = |(range, members): &(Located, Vec<(Located, usize)>)| -> Result<(), RestorerError> {
        let mut decompressor = new_decompressor()?;
        let mut bytes = backend
            .read_pack_range_into(&range.pack, range.offset, range.length, Vec::new())
            .map_err(RestorerError::Repository)?;
        // A tree that comes twice (two identical directories) is parsed once.
        let mut parsed: HashMap<u64, usize> = HashMap::new();
        for (at, index) in members {
            if let Some(&first) = parsed.get(&at.offset) {
                let slot = trees[first].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let nodes = slot.clone();
                drop(slot);
                *trees[*index].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = nodes;
                continue;
            }
            let id = &ids[*index];
            let damaged = |why: &str| RestorerError::Damaged {
                what: format!(
                    "tree {} in pack {} {why}",
                    id.to_hex().as_str(),
                    at.pack.to_hex().as_str()
                ),
            };
            let from = (at.offset - range.offset) as usize;
            let sealed = bytes
                .get_mut(from..from + at.length as usize)
                .ok_or_else(|| damaged("lies past the end of the pack"))?;
            let mut json = Vec::new();
            open_blob(cipher, sealed, at.uncompressed, id, &mut decompressor, &mut json)
                .map_err(|why| damaged(&why))?;
            let tree: TreeNodes = serde_json::from_slice(&json).map_err(|e| damaged(&format!("is not a tree: {e}")))?;
            *trees[*index].lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(tree.nodes.unwrap_or_default());
            parsed.insert(at.offset, *index);
        }
        crate::liveness::mark();
        Ok(())
    };
    std::thread::scope(|scope| {
        for _ in 0..READERS.min(reads.len()) {
            scope.spawn(|| {
                loop {
                    let taken = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(read) = reads.get(taken) else { break };
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_one(read)))
                        .unwrap_or_else(|_| {
                            Err(RestorerError::Damaged {
                                what: format!("reading trees of pack {} failed (a bug)", read.0.pack.to_hex().as_str()),
                            })
                        });
                    if let Err(e) = result {
                        failed
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_or_insert(e);
                        // The others stop at their next read.
                        next.store(reads.len(), std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
        return Err(e);
    }
    trees
        .into_iter()
        .map(|tree| tree.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| RestorerError::Damaged {
            what: "a tree was not read (a bug)".into(),
        })
}

/// A tree as restic writes it: its nodes (`null` for none).
#[derive(serde::Deserialize)]
struct TreeNodes {
    nodes: Option<Vec<Node>>,
}

/// A job's blobs, each with where it goes, or why it could not be read.
type JobResult = Result<Vec<(Place, Vec<u8>)>, RestorerError>;

/// Reads done and not yet written, in job order; a reader takes the next job only when its bytes
/// fit in `BUDGET` beside what is held (taken and not yet written).
struct Shared {
    state: Mutex<Window>,
    /// Readers wait here for room in the budget.
    room: Condvar,
    /// The writer waits here for the job it needs next.
    done: Condvar,
}

#[derive(Default)]
struct Window {
    next: usize,
    held: u64,
    done: BTreeMap<usize, JobResult>,
    stop: bool,
}

impl ReadJob {
    /// What a job holds at most: the encrypted range and the decompressed blobs.
    fn cost(&self) -> u64 {
        (self.end - self.start) + self.data_bytes
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next job for a reader, or `None` when all are taken or the restore stopped.
    fn take(&self, jobs: &[ReadJob]) -> Option<usize> {
        let mut window = self.lock();
        loop {
            if window.stop || window.next >= jobs.len() {
                return None;
            }
            let cost = jobs[window.next].cost();
            if window.held == 0 || window.held + cost <= BUDGET {
                window.held += cost;
                window.next += 1;
                return Some(window.next - 1);
            }
            window = self
                .room
                .wait(window)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn put(&self, job: usize, result: JobResult) {
        let mut window = self.lock();
        window.done.insert(job, result);
        self.done.notify_one();
    }

    /// Job `job`'s result, once read.
    fn wait_for(&self, job: usize) -> JobResult {
        let mut window = self.lock();
        loop {
            if let Some(result) = window.done.remove(&job) {
                return result;
            }
            window = self
                .done
                .wait(window)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// A job's bytes are written (or dropped): readers may take more.
    fn release(&self, cost: u64) {
        let mut window = self.lock();
        window.held = window.held.saturating_sub(cost);
        self.room.notify_all();
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.room.notify_all();
        self.done.notify_all();
    }
}

/// Restores `plan` into `target`, an empty directory spotkeeper made, or made here 0700 if
/// absent (its own mode and owner are the caller's to set).
pub fn restore(
    repo: &Repository<IndexedFullStatus>,
    backend: &S3Backend,
    cipher: &Aes256CtrPoly1305Aes,
    plan: &Plan,
    target: &Path,
) -> Result<Restored, RestorerError> {
    let write_error = |rel: &str| {
        let rel = rel.to_string();
        move |source: io::Error| write_failed(target, &rel, source)
    };
    let root = match fd::open_dir_path(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(target)
                .map_err(write_error(""))?;
            fd::open_dir_path(target).map_err(write_error(""))?
        }
        opened => opened.map_err(write_error(""))?,
    };
    let mut dirs = Dirs {
        plan: &plan.dirs,
        root: &root,
        open: HashMap::new(),
    };
    let mut restored = Restored::default();
    // Directories first (0700 until their contents are in), then links.
    for dir in plan.dirs.iter().skip(1) {
        let parent = dirs.fd(dir.parent.unwrap_or(0)).map_err(write_error(&dir.rel))?;
        rustix::fs::mkdirat(parent, dir.name.as_c_str(), Mode::from_raw_mode(0o700))
            .map_err(|e| write_error(&dir.rel)(e.into()))?;
    }
    for link in &plan.links {
        let parent = dirs.fd(link.dir).map_err(write_error(&link.rel))?;
        rustix::fs::symlinkat(link.target.as_c_str(), parent, link.name.as_c_str())
            .map_err(|e| write_error(&link.rel)(e.into()))?;
        set_owner_at(parent, &link.name, &link.meta).map_err(write_error(&link.rel))?;
        if let Some(times) = timestamps(&link.meta) {
            rustix::fs::utimensat(parent, link.name.as_c_str(), &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| write_error(&link.rel)(e.into()))?;
        }
    }
    let (order, jobs, layouts) = read_jobs(repo, &plan.files)?;
    let shared = Shared {
        state: Mutex::new(Window::default()),
        room: Condvar::new(),
        done: Condvar::new(),
    };
    let buffers = Buffers::default();
    let flusher = Flusher::default();
    let written = std::thread::scope(|scope| {
        scope.spawn(|| flusher.run(&root));
        for _ in 0..READERS.min(jobs.len()) {
            scope.spawn(|| {
                let mut decompressor = match new_decompressor() {
                    Ok(decompressor) => decompressor,
                    Err(e) => {
                        if let Some(job) = shared.take(&jobs) {
                            shared.put(job, Err(e));
                        }
                        return;
                    }
                };
                while let Some(job) = shared.take(&jobs) {
                    // A reader that panicked must still hand in a result: the writer waits for it.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        read_job(backend, cipher, &jobs[job], &buffers, &mut decompressor)
                    }))
                    .unwrap_or_else(|_| {
                        Err(RestorerError::Damaged {
                            what: format!("reading pack {} failed (a bug)", jobs[job].pack.to_hex().as_str()),
                        })
                    });
                    let failed = result.is_err();
                    shared.put(job, result);
                    if failed {
                        break;
                    }
                }
            });
        }
        // Readers and the flusher stop when the writer is done, also when it panics (the scope
        // waits for them before it hands the panic on).
        let _stop = StopOnDrop(&shared, &flusher);
        write_files(
            plan,
            &order,
            &layouts,
            &jobs,
            &shared,
            &mut dirs,
            target,
            &mut restored,
            &flusher,
            &buffers,
        )
    });
    written?;
    restored.read_bytes = jobs.iter().map(|j| j.end - j.start).sum();
    restored.reads = jobs.len() as u64;
    // Directories' own metadata last, the deepest first (a read-only directory is filled first).
    for (index, dir) in plan.dirs.iter().enumerate().skip(1).rev() {
        let fd = dirs.fd(index).map_err(write_error(&dir.rel))?;
        let fd = fd.try_clone_to_owned().map_err(write_error(&dir.rel))?;
        if let Some(dropped) = set_metadata(&fd, &dir.meta, true).map_err(write_error(&dir.rel))? {
            restored.privilege_dropped.push(format!("{} ({dropped})", dir.rel));
        }
    }
    Ok(restored)
}

fn write_failed(target: &Path, rel: &str, source: io::Error) -> RestorerError {
    let path = if rel.is_empty() {
        target.to_path_buf()
    } else {
        target.join(rel)
    };
    RestorerError::Write { path, source }
}

/// Writes every file in plan order, taking each job's blobs as the readers finish them.
#[allow(clippy::too_many_arguments)]
fn write_files(
    plan: &Plan,
    order: &[usize],
    layouts: &[FileLayout],
    jobs: &[ReadJob],
    shared: &Shared,
    dirs: &mut Dirs<'_>,
    target: &Path,
    restored: &mut Restored,
    flusher: &Flusher,
    buffers: &Buffers,
) -> Result<(), RestorerError> {
    let write_error = |rel: &str| {
        let rel = rel.to_string();
        move |source: io::Error| write_failed(target, &rel, source)
    };
    let mut next_job = 0usize;
    let mut pending: std::collections::VecDeque<(Place, Vec<u8>)> = std::collections::VecDeque::new();
    // The bytes of the job whose blobs are in `pending`, given back once they are all written.
    let mut pending_cost = 0u64;
    for &index in order {
        let (file, layout) = (&plan.files[index], &layouts[index]);
        let parent = dirs.fd(file.dir).map_err(|e| write_error(&file.rel)(e))?;
        let out: File = fd::create_file_at(parent, &file.name, true).map_err(|e| write_error(&file.rel)(e))?;
        // The size first: what is never written stays a hole.
        out.set_len(layout.size).map_err(|e| write_error(&file.rel)(e))?;
        loop {
            if pending.is_empty() && next_job < jobs.len() && jobs[next_job].blobs[0].place.file == index {
                shared.release(std::mem::take(&mut pending_cost));
                match shared.wait_for(next_job) {
                    Ok(blobs) => pending.extend(blobs),
                    Err(e) => return Err(e),
                }
                pending_cost = jobs[next_job].cost();
                next_job += 1;
            }
            match pending.front() {
                Some((place, _)) if place.file == index => {
                    let Some((place, data)) = pending.pop_front() else {
                        break;
                    };
                    write_sparse(&out, &data, place.offset).map_err(|e| write_error(&file.rel)(e))?;
                    buffers.give(data);
                    crate::liveness::mark();
                }
                _ => break,
            }
        }
        if let Some(dropped) = set_metadata(&out, &file.meta, false).map_err(|e| write_error(&file.rel)(e))? {
            restored.privilege_dropped.push(format!("{} ({dropped})", file.rel));
        }
        restored.files += 1;
        restored.bytes += layout.size;
        flusher.wrote(layout.size);
    }
    Ok(())
}

/// A decompression context for one reader (zstd's own buffers, kept from blob to blob).
fn new_decompressor() -> Result<zstd::bulk::Decompressor<'static>, RestorerError> {
    zstd::bulk::Decompressor::new().map_err(|e| RestorerError::Damaged {
        what: format!("zstd could not make a decompression context: {e}"),
    })
}

/// The restore's large buffers (the bodies of reads, blobs once decompressed), given back once
/// used and taken again: a restore faults their pages in once, not once per read and per blob.
/// Fresh buffers of 1-8 MiB are each mapped, faulted in page by page, zeroed by the kernel and
/// unmapped again: 90,000 page faults for a medium restore, a fifth of its system time.
///
/// A buffer's capacity is a power of two, so that one fits the next read or blob of its class
/// whatever its exact length. A kept buffer is given only for a length of at least half its
/// capacity, so what a buffer in flight holds is at most twice what the budget counts for it
/// (`BUDGET`), and what is kept unused is bounded (`KEPT_BUFFER_BYTES`), the largest going
/// first. Small buffers are not kept: the allocator reuses those anyway.
#[derive(Default)]
struct Buffers {
    free: Mutex<Vec<Vec<u8>>>,
}

/// Bytes of unused buffers kept for reuse at most.
const KEPT_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// Buffers smaller than this are neither rounded up nor kept.
const SMALLEST_KEPT_BUFFER: usize = 64 * 1024;

impl Buffers {
    /// An empty buffer that holds `length` bytes without growing: the smallest kept one that
    /// does and is at most twice as large, else a new one.
    fn take(&self, length: usize) -> Vec<u8> {
        if length < SMALLEST_KEPT_BUFFER {
            return Vec::with_capacity(length);
        }
        let mut free = self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fitting = free
            .iter()
            .enumerate()
            .filter(|(_, buffer)| buffer.capacity() >= length && buffer.capacity() / 2 <= length)
            .min_by_key(|(_, buffer)| buffer.capacity())
            .map(|(index, _)| index);
        match fitting {
            Some(index) => {
                let mut buffer = free.swap_remove(index);
                buffer.clear();
                buffer
            }
            None => {
                drop(free);
                Vec::with_capacity(length.checked_next_power_of_two().unwrap_or(length))
            }
        }
    }

    /// Keeps `buffer` for later, unless that keeps more than `KEPT_BUFFER_BYTES`: then the
    /// largest kept buffers go (`buffer` itself if it is the largest).
    fn give(&self, buffer: Vec<u8>) {
        if buffer.capacity() < SMALLEST_KEPT_BUFFER {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        free.push(buffer);
        let mut kept: usize = free.iter().map(Vec::capacity).sum();
        while kept > KEPT_BUFFER_BYTES {
            let Some(largest) = free
                .iter()
                .enumerate()
                .max_by_key(|(_, buffer)| buffer.capacity())
                .map(|(index, _)| index)
            else {
                break;
            };
            kept -= free.swap_remove(largest).capacity();
        }
    }
}

/// Stops the readers and the flusher when dropped.
struct StopOnDrop<'a>(&'a Shared, &'a Flusher);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
        self.1.stop();
    }
}

/// Starts the write-back of what the restore wrote every `FLUSH_EVERY` bytes, on a thread of
/// its own (a `syncfs` of the target's file system; its result does not matter: the final one,
/// after the restore, is the one that is checked).
#[derive(Default)]
struct Flusher {
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl Flusher {
    fn wrote(&self, bytes: u64) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.0 += bytes;
        if state.0 >= FLUSH_EVERY {
            self.changed.notify_all();
        }
    }

    fn stop(&self) {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1 = true;
        self.changed.notify_all();
    }

    fn run(&self, root: &OwnedFd) {
        loop {
            {
                let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                while state.0 < FLUSH_EVERY && !state.1 {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if state.1 {
                    return;
                }
                state.0 = 0;
            }
            let _ = rustix::fs::syncfs(root);
        }
    }
}

/// The block size below which zeros are written rather than left as a hole.
const HOLE_BLOCK: u64 = 4096;

/// Writes `data` at `offset`, leaving every block of zeros (aligned on the file's blocks)
/// unwritten: the file was sized first, so those blocks are holes, as they were in the state.
fn write_sparse(out: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let end = offset + data.len() as u64;
    let mut at = offset;
    // The first write starts at the first non-zero block; runs of data are written whole.
    let mut run: Option<u64> = None;
    while at < end {
        let block_end = ((at / HOLE_BLOCK) + 1) * HOLE_BLOCK;
        let next = block_end.min(end);
        let slice = &data[(at - offset) as usize..(next - offset) as usize];
        // An OR over the block, not a search that stops early: the compiler makes it SIMD.
        let zero = slice.iter().fold(0u8, |acc, b| acc | b) == 0;
        match (zero, run) {
            (false, None) => run = Some(at),
            (true, Some(start)) => {
                out.write_all_at(&data[(start - offset) as usize..(at - offset) as usize], start)?;
                run = None;
            }
            _ => {}
        }
        at = next;
    }
    if let Some(start) = run {
        out.write_all_at(&data[(start - offset) as usize..], start)?;
    }
    Ok(())
}

/// Gives a file or directory its owner (when root), mode (setuid and setgid never: returns
/// which were dropped) and times, through its descriptor.
fn set_metadata(fd: &impl AsFd, meta: &Metadata, dir: bool) -> io::Result<Option<&'static str>> {
    if rustix::process::geteuid().is_root()
        && let (Some(uid), Some(gid)) = (meta.uid, meta.gid)
    {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
    }
    let (mode, dropped) = unix_mode(meta.mode, dir);
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
    if let Some(times) = timestamps(meta) {
        rustix::fs::futimens(fd, &times)?;
    }
    Ok(dropped)
}

/// A link's owner (when root), never following it.
fn set_owner_at(parent: BorrowedFd<'_>, name: &CString, meta: &Metadata) -> io::Result<()> {
    if rustix::process::geteuid().is_root()
        && let (Some(uid), Some(gid)) = (meta.uid, meta.gid)
    {
        rustix::fs::chownat(
            parent,
            name.as_c_str(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    Ok(())
}

/// The Unix mode restic's Go mode stands for, without setuid and setgid (and which of them were
/// dropped). Without a mode: 0600 for a file, 0700 for a directory.
pub fn unix_mode(go_mode: Option<u32>, dir: bool) -> (u32, Option<&'static str>) {
    let Some(go_mode) = go_mode else {
        return (if dir { 0o700 } else { 0o600 }, None);
    };
    let mut mode = go_mode & 0o777;
    if go_mode & GO_MODE_STICKY != 0 {
        mode |= 0o1000;
    }
    let dropped = match (go_mode & GO_MODE_SETUID != 0, go_mode & GO_MODE_SETGID != 0) {
        (true, true) => Some("setuid and setgid dropped"),
        (true, false) => Some("setuid dropped"),
        (false, true) => Some("setgid dropped"),
        (false, false) => None,
    };
    (mode, dropped)
}

fn timestamps(meta: &Metadata) -> Option<Timestamps> {
    let mtime = meta.mtime.as_ref()?;
    let spec = |t: &rustic_core::jiff::Timestamp| Timespec {
        tv_sec: t.as_second(),
        tv_nsec: i64::from(t.subsec_nanosecond()),
    };
    Some(Timestamps {
        last_access: spec(meta.atime.as_ref().unwrap_or(mtime)),
        last_modification: spec(mtime),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_never_carry_setuid_or_setgid() {
        assert_eq!(unix_mode(Some(0o644), false), (0o644, None));
        assert_eq!(unix_mode(Some(0o755 | (1 << 31)), true), (0o755, None));
        assert_eq!(
            unix_mode(Some(0o777 | GO_MODE_STICKY | (1 << 31)), true),
            (0o1777, None)
        );
        assert_eq!(
            unix_mode(Some(0o755 | GO_MODE_SETUID), false),
            (0o755, Some("setuid dropped"))
        );
        assert_eq!(
            unix_mode(Some(0o755 | GO_MODE_SETUID | GO_MODE_SETGID), false),
            (0o755, Some("setuid and setgid dropped"))
        );
        assert_eq!(unix_mode(None, false), (0o600, None));
        assert_eq!(unix_mode(None, true), (0o700, None));
    }

    #[test]
    fn only_plain_names_are_names() {
        for bad in ["", ".", "..", "a/b", "/"] {
            assert!(checked_name(OsStr::new(bad)).is_none(), "{bad:?}");
        }
        assert!(checked_name(OsStr::from_bytes(b"a\0b")).is_none());
        assert!(checked_name(OsStr::from_bytes(b"\xff\xfe latin-1")).is_some());
        assert!(checked_name(OsStr::new(&"n".repeat(255))).is_some());
    }

    #[test]
    fn zeros_are_left_as_holes_and_data_is_written_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("f"))
            .expect("file");
        let size = 64 * HOLE_BLOCK;
        file.set_len(size).expect("size");
        let mut data = vec![0u8; 40 * HOLE_BLOCK as usize];
        // Data at an unaligned offset in the middle, and in the very last byte.
        data[(10 * HOLE_BLOCK + 17) as usize..(12 * HOLE_BLOCK) as usize].fill(7);
        let last = data.len() - 1;
        data[last] = 9;
        write_sparse(&file, &data, 3 * HOLE_BLOCK + 5).expect("write");
        let mut back = vec![0u8; size as usize];
        file.read_exact_at(&mut back, 0).expect("read");
        let mut want = vec![0u8; size as usize];
        want[(3 * HOLE_BLOCK + 5) as usize..(3 * HOLE_BLOCK + 5) as usize + data.len()].copy_from_slice(&data);
        assert!(back == want, "the bytes read back are the bytes written");
        let blocks = std::os::unix::fs::MetadataExt::blocks(&file.metadata().expect("meta"));
        assert!(blocks * 512 <= 4 * HOLE_BLOCK, "{blocks} blocks: zeros were written");
    }

    /// A blob sealed as restic seals it: `nonce | ciphertext | MAC` of `plain`, compressed first
    /// when `compress`; returns it with its id and its length once decompressed.
    fn sealed_blob(cipher: &Aes256CtrPoly1305Aes, plain: &[u8], compress: bool) -> (Vec<u8>, rustic_core::Id) {
        let mut body = if compress {
            zstd::bulk::compress(plain, 3).expect("compress")
        } else {
            plain.to_vec()
        };
        let nonce = [7u8; 16];
        let tag = cipher
            .encrypt_in_place_detached(GenericArray::from_slice(&nonce), b"", &mut body)
            .expect("seal");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&body);
        sealed.extend_from_slice(&tag);
        let id: [u8; 32] = Sha256::digest(plain).into();
        (sealed, rustic_core::Id::new(id))
    }

    #[test]
    fn a_reused_buffer_gives_exactly_the_blob_and_never_more_than_the_index_says() {
        let cipher = Aes256CtrPoly1305Aes::new(GenericArray::from_slice(&[3u8; 64]));
        let mut decompressor = new_decompressor().expect("context");
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for compress in [true, false] {
            let uncompressed = compress.then_some(plain.len() as u32);
            // A buffer that held a larger blob before: its old bytes must not show through.
            let mut data = vec![0xEEu8; 1 << 20];
            let (mut sealed, id) = sealed_blob(&cipher, &plain, compress);
            open_blob(&cipher, &mut sealed, uncompressed, &id, &mut decompressor, &mut data).expect("open");
            assert!(data == plain, "compressed {compress}: the blob, exactly");
            assert!(data.capacity() >= 1 << 20, "the buffer was reused, not replaced");
        }
        // The index says fewer bytes than the frame holds, or more: refused, although the
        // buffer could hold the whole frame.
        for claimed in [plain.len() as u32 - 1, plain.len() as u32 + 1] {
            let mut data = Vec::with_capacity(1 << 20);
            let (mut sealed, id) = sealed_blob(&cipher, &plain, true);
            let refused = open_blob(&cipher, &mut sealed, Some(claimed), &id, &mut decompressor, &mut data);
            assert!(refused.is_err(), "a frame of {} bytes taken for {claimed}", plain.len());
        }
        // Another blob's id: refused.
        let (mut sealed, _) = sealed_blob(&cipher, &plain, true);
        let other = rustic_core::Id::new(Sha256::digest(b"other").into());
        let mut data = Vec::new();
        let refused = open_blob(
            &cipher,
            &mut sealed,
            Some(plain.len() as u32),
            &other,
            &mut decompressor,
            &mut data,
        );
        assert_eq!(refused, Err("does not hash to its id".to_string()));
    }

    #[test]
    fn an_index_entry_larger_than_any_chunk_is_refused_before_a_read_is_allocated() {
        let at = |length: u64, uncompressed: Option<u32>| Located {
            pack: rustic_core::Id::default(),
            offset: 0,
            length,
            uncompressed,
        };
        let largest_sealed = largest_sealed();
        assert_eq!(at(1056, Some(4096)).data_length(), Ok(4096));
        assert_eq!(at(1056, None).data_length(), Ok(1024));
        assert_eq!(
            at(largest_sealed, Some(MAX_BLOB_BYTES)).data_length(),
            Ok(MAX_BLOB_BYTES)
        );
        // 4 GiB in the pack for 1 KiB of data: a read of that length would be allocated first.
        assert!(at(4 << 30, Some(1024)).data_length().is_err());
        assert!(at(largest_sealed + 1, Some(1024)).data_length().is_err());
        assert!(at(u64::from(u32::MAX), None).data_length().is_err());
        assert!(at(1056, Some(MAX_BLOB_BYTES + 1)).data_length().is_err());
        assert!(at(31, None).data_length().is_err(), "shorter than its encryption");
    }

    #[test]
    fn buffers_fit_what_is_asked_are_reused_and_keep_a_bounded_amount() {
        let buffers = Buffers::default();
        // Lengths from a fixed generator: small ones, and restic's chunks of 512 KiB to 8 MiB.
        let mut seed = 0x2545_f491_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut held: Vec<Vec<u8>> = Vec::new();
        let mut reused = 0;
        for round in 0..2_000 {
            let length = match next() % 4 {
                0 => (next() % 70_000) as usize,
                _ => (512 * 1024 + next() % (8 * 1024 * 1024 - 512 * 1024)) as usize,
            };
            let before: Vec<*const u8> = buffers.free.lock().expect("lock").iter().map(|b| b.as_ptr()).collect();
            let mut buffer = buffers.take(length);
            assert!(
                buffer.is_empty() && buffer.capacity() >= length,
                "round {round}: {length} bytes fit"
            );
            if length >= SMALLEST_KEPT_BUFFER {
                assert!(
                    buffer.capacity() / 2 <= length,
                    "round {round}: {length} bytes in {}",
                    buffer.capacity()
                );
            }
            if before.contains(&buffer.as_ptr()) {
                reused += 1;
            }
            buffer.push(1);
            held.push(buffer);
            // Given back in another order than taken, a few at a time.
            if held.len() > (next() % 8) as usize {
                let at = (next() as usize) % held.len();
                buffers.give(held.swap_remove(at));
            }
            let free = buffers.free.lock().expect("lock");
            let kept: usize = free.iter().map(Vec::capacity).sum();
            assert!(kept <= KEPT_BUFFER_BYTES, "round {round}: {kept} bytes kept");
            assert!(
                free.iter().all(|b| b.capacity() >= SMALLEST_KEPT_BUFFER),
                "small buffers are not kept"
            );
        }
        assert!(reused > 500, "only {reused} of 2,000 takes reused a buffer");
    }

    #[test]
    fn a_zero_blob_is_known_by_its_id_at_every_length() {
        // Lengths around the hash's 64-byte blocks and the generator's 64 KiB blocks.
        let lengths: std::collections::BTreeSet<u32> =
            [0, 1, 55, 56, 63, 64, 65, 1000, 65_535, 65_536, 65_537, 200_000]
                .into_iter()
                .collect();
        let ids = zero_ids(lengths.clone());
        for length in lengths {
            let want: [u8; 32] = Sha256::digest(vec![0u8; length as usize]).into();
            assert_eq!(ids[&length], DataId::from(rustic_core::Id::new(want)), "{length} zeros");
        }
        let other: [u8; 32] = Sha256::digest(b"data").into();
        assert_ne!(ids[&1], DataId::from(rustic_core::Id::new(other)), "data is not zeros");
    }
}
