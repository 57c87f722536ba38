//! What a snapshot accepts, restore restores: over generated state trees (links of every kind,
//! names of 255 bytes and not UTF-8, paths past PATH_MAX, sparse, empty and large files, FIFOs
//! and devices, setuid and 0000 modes, hard links, other owners), every tree that `snapshot`,
//! `list` and `verify` accept in format 2 comes back from `restore --to`, from the restore of a
//! new machine's state paths (the boot restore's code) and from the drill (`verify --deep`),
//! entry for entry, except what the snapshot reported as skipped; setuid and setgid are never
//! planted and holes stay holes.
//!
//! The trees are made and read through directory descriptors (a path past PATH_MAX cannot be
//! named whole). `SPOTKEEPER_SEED=N` replays one tree; `SPOTKEEPER_TREES=N` runs more.

mod common;

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::{S3Server, format2_world};
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use sha2::{Digest, Sha256};

/// xorshift64*: small, deterministic, replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn c(name: &[u8]) -> CString {
    CString::new(name).expect("no NUL in a generated name")
}

fn open_dir(parent: BorrowedFd<'_>, name: &[u8]) -> OwnedFd {
    rustix::fs::openat(
        parent,
        c(name).as_c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open a generated directory")
}

/// What the generator made that a snapshot must skip and report.
#[derive(Default)]
struct Made {
    names: usize,
}

/// A name for the next entry: plain, 255 bytes, not UTF-8, or odd.
fn name(rng: &mut Rng, made: &mut Made) -> Vec<u8> {
    made.names += 1;
    let n = made.names;
    match rng.below(8) {
        0 => {
            let mut long = format!("{n}-").into_bytes();
            long.resize(255, b'x');
            long
        }
        1 => format!("caf\u{e9}-{n}")
            .into_bytes()
            .into_iter()
            .chain(*b"-\xe9\xff")
            .collect(),
        2 => format!("with space and\nnewline {n}").into_bytes(),
        3 => format!("-dash-{n}.*?[").into_bytes(),
        4 => format!("\u{fc}n\u{ef}code-{n}").into_bytes(),
        _ => format!("e{n}").into_bytes(),
    }
}

const FILE_MODES: [u32; 8] = [0o644, 0o600, 0o640, 0o755, 0o4755, 0o2750, 0o6755, 0o000];
const DIR_MODES: [u32; 4] = [0o755, 0o700, 0o1777, 0o2775];
const LINK_TARGETS: [&[u8]; 8] = [
    b"/usr/share/zoneinfo/UTC",
    b"/etc",
    b"../../../../../../etc/passwd",
    b"..",
    b".",
    b"does-not-exist/anywhere",
    b"\xff\xfe-not-utf-8",
    b"e1",
];

fn set_times(dir: BorrowedFd<'_>, name: &[u8], rng: &mut Rng) {
    let spec = Timespec {
        tv_sec: 1_700_000_000 + i64::try_from(rng.below(100_000_000)).expect("small"),
        tv_nsec: i64::try_from(rng.below(1_000_000_000)).expect("small"),
    };
    let times = Timestamps {
        last_access: spec,
        last_modification: spec,
    };
    rustix::fs::utimensat(dir, c(name).as_c_str(), &times, AtFlags::SYMLINK_NOFOLLOW).expect("times");
}

fn maybe_chown(dir: BorrowedFd<'_>, name: &[u8], rng: &mut Rng) {
    if is_root() && rng.chance(30) {
        rustix::fs::chownat(
            dir,
            c(name).as_c_str(),
            Some(rustix::fs::Uid::from_raw(1000)),
            Some(rustix::fs::Gid::from_raw(1000)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .expect("chown");
    }
}

/// Fills `dir` with a random mix of entries, recursing up to `depth`.
fn generate(dir: BorrowedFd<'_>, depth: u32, rng: &mut Rng, made: &mut Made) {
    let mut files: Vec<Vec<u8>> = Vec::new();
    for _ in 0..(3 + rng.below(6)) {
        let entry = name(rng, made);
        let cname = c(&entry);
        match rng.below(14) {
            0..=3 => {
                let len = [0usize, 1, 100, 4096, 70_000][rng.below(5) as usize];
                write_file(dir, &entry, &common::noise(len, rng.next()));
                finish_file(dir, &entry, rng);
                files.push(entry);
            }
            4 => {
                let len = (1 + rng.below(3) as usize) * 1024 * 1024;
                write_file(dir, &entry, &common::noise(len, rng.next()));
                finish_file(dir, &entry, rng);
                files.push(entry);
            }
            5 => {
                // Sparse: 64 MiB with a few KiB of data.
                let file = write_file(dir, &entry, b"");
                file.set_len(64 * 1024 * 1024).expect("sparse size");
                for _ in 0..(1 + rng.below(3)) {
                    let at = rng.below(64 * 1024 * 1024 - 4096);
                    std::os::unix::fs::FileExt::write_all_at(&file, &common::noise(4096, rng.next()), at)
                        .expect("sparse data");
                }
                drop(file);
                finish_file(dir, &entry, rng);
                files.push(entry);
            }
            6 | 7 => {
                let target = LINK_TARGETS[rng.below(LINK_TARGETS.len() as u64) as usize];
                rustix::fs::symlinkat(c(target).as_c_str(), dir, cname.as_c_str()).expect("symlink");
                maybe_chown(dir, &entry, rng);
                set_times(dir, &entry, rng);
            }
            8 if !files.is_empty() => {
                let first = &files[rng.below(files.len() as u64) as usize];
                rustix::fs::linkat(dir, c(first).as_c_str(), dir, cname.as_c_str(), AtFlags::empty())
                    .expect("hard link");
            }
            9 => {
                rustix::fs::mknodat(
                    dir,
                    cname.as_c_str(),
                    rustix::fs::FileType::Fifo,
                    Mode::from_raw_mode(0o644),
                    0,
                )
                .expect("fifo");
            }
            10 if is_root() => {
                // /dev/null's numbers: a device node is never archived.
                rustix::fs::mknodat(
                    dir,
                    cname.as_c_str(),
                    rustix::fs::FileType::CharacterDevice,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(1, 3),
                )
                .expect("device");
            }
            11 if !files.is_empty() => {
                // The same bytes under another name: the same blobs twice in one read of a pack.
                let first = &files[rng.below(files.len() as u64) as usize];
                let mut body = Vec::new();
                if let Ok(fd) = rustix::fs::openat(
                    dir,
                    c(first).as_c_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW,
                    Mode::empty(),
                ) {
                    std::fs::File::from(fd)
                        .read_to_end(&mut body)
                        .expect("read the first copy");
                }
                write_file(dir, &entry, &body);
                finish_file(dir, &entry, rng);
                files.push(entry);
            }
            12 => {
                // Two empty directories: both are the one empty tree, read once for both.
                let twin = name(rng, made);
                for name in [&entry, &twin] {
                    rustix::fs::mkdirat(dir, c(name).as_c_str(), Mode::from_raw_mode(0o700)).expect("mkdir empty");
                }
            }
            _ if depth > 0 => {
                rustix::fs::mkdirat(dir, cname.as_c_str(), Mode::from_raw_mode(0o700)).expect("mkdir");
                let child = open_dir(dir, &entry);
                generate(child.as_fd(), depth - 1, rng, made);
                let mode = DIR_MODES[rng.below(DIR_MODES.len() as u64) as usize];
                rustix::fs::fchmod(&child, Mode::from_raw_mode(mode)).expect("chmod dir");
                maybe_chown(dir, &entry, rng);
                set_times(dir, &entry, rng);
            }
            _ => {
                write_file(dir, &entry, b"leaf");
                finish_file(dir, &entry, rng);
            }
        }
    }
}

fn write_file(dir: BorrowedFd<'_>, name: &[u8], body: &[u8]) -> std::fs::File {
    let fd = rustix::fs::openat(
        dir,
        c(name).as_c_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .expect("create a generated file");
    let file = std::fs::File::from(fd);
    std::os::unix::fs::FileExt::write_all_at(&file, body, 0).expect("write");
    file
}

fn finish_file(dir: BorrowedFd<'_>, name: &[u8], rng: &mut Rng) {
    // 0000 files cannot be read without root: a non-root run would skip them on purpose.
    let modes = if is_root() { &FILE_MODES[..] } else { &FILE_MODES[..7] };
    let mode = modes[rng.below(modes.len() as u64) as usize];
    maybe_chown(dir, name, rng);
    rustix::fs::chmodat(dir, c(name).as_c_str(), Mode::from_raw_mode(mode), AtFlags::empty()).expect("chmod");
    set_times(dir, name, rng);
}

/// A chain of directories whose path is longer than PATH_MAX, with a file at the bottom.
fn deep_chain(root: BorrowedFd<'_>) {
    let mut dir = rustix::io::fcntl_dupfd_cloexec(root, 0).expect("dup");
    for level in 0..40 {
        let mut part = format!("deep-{level:02}-").into_bytes();
        part.resize(120, b'd');
        rustix::fs::mkdirat(&dir, c(&part).as_c_str(), Mode::from_raw_mode(0o755)).expect("deep mkdir");
        dir = open_dir(dir.as_fd(), &part);
    }
    write_file(dir.as_fd(), b"bottom.txt", b"past PATH_MAX");
}

/// One entry as the test sees it: kind, mode, owner, mtime, content hash or link target, and
/// for files the allocated blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    kind: char,
    mode: u32,
    owner: (u32, u32),
    mtime: (i64, u64),
    body: String,
    size: u64,
    blocks: u64,
}

type Tree = BTreeMap<Vec<u8>, Seen>;

/// Reads a tree through descriptors, never following a link.
fn read_tree(root: &Path) -> Tree {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", root.display()));
    let mut out = Tree::new();
    read_dir_into(fd.as_fd(), Vec::new(), &mut out);
    out
}

fn read_dir_into(dir: BorrowedFd<'_>, rel: Vec<u8>, out: &mut Tree) {
    let mut names = Vec::new();
    let mut reader = rustix::fs::Dir::read_from(dir).expect("list");
    while let Some(entry) = reader.read() {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    for name in names {
        let mut path = rel.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&name);
        let stat = rustix::fs::statat(dir, c(&name).as_c_str(), AtFlags::SYMLINK_NOFOLLOW).expect("stat");
        let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
        let mut seen = Seen {
            kind: '?',
            mode: stat.st_mode & 0o7777,
            owner: (stat.st_uid, stat.st_gid),
            mtime: (stat.st_mtime, stat.st_mtime_nsec as u64),
            body: String::new(),
            size: stat.st_size as u64,
            blocks: 0,
        };
        match kind {
            rustix::fs::FileType::Directory => {
                seen.kind = 'd';
                seen.size = 0;
                let child = open_dir(dir, &name);
                read_dir_into(child.as_fd(), path.clone(), out);
            }
            rustix::fs::FileType::RegularFile => {
                seen.kind = 'f';
                seen.blocks = stat.st_blocks as u64;
                let fd = rustix::fs::openat(
                    dir,
                    c(&name).as_c_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .expect("open file");
                let mut body = Vec::new();
                std::fs::File::from(fd).read_to_end(&mut body).expect("read");
                seen.body = hex::encode(Sha256::digest(&body));
            }
            rustix::fs::FileType::Symlink => {
                seen.kind = 'l';
                seen.mode = 0;
                seen.size = 0;
                let target = rustix::fs::readlinkat(dir, c(&name).as_c_str(), Vec::new()).expect("readlink");
                seen.body = hex::encode(target.as_bytes());
            }
            rustix::fs::FileType::Fifo => seen.kind = 'p',
            rustix::fs::FileType::CharacterDevice | rustix::fs::FileType::BlockDevice => seen.kind = 'c',
            _ => seen.kind = 's',
        }
        out.insert(path, seen);
    }
}

/// The snapshot's walker keeps UTF-8 names only (the mirror's index is text): an entry whose own
/// name is not UTF-8 is skipped and reported, with all it holds.
fn utf8_path(path: &[u8]) -> bool {
    std::str::from_utf8(path).is_ok()
}

/// What a snapshot must report as skipped: FIFOs, devices and entries named in bytes that are
/// not UTF-8, each once (not what a skipped directory holds).
fn skipped(source: &Tree) -> u64 {
    source
        .iter()
        .filter(|(path, seen)| {
            let parent = path.rsplitn(2, |b| *b == b'/').nth(1).unwrap_or(b"");
            utf8_path(parent) && (!utf8_path(path) || matches!(seen.kind, 'p' | 'c'))
        })
        .count() as u64
}

/// What a restore must give back of `source`: no FIFO, device or skipped name; setuid and
/// setgid dropped.
fn expected(source: &Tree) -> Tree {
    source
        .iter()
        .filter(|(path, seen)| matches!(seen.kind, 'd' | 'f' | 'l') && utf8_path(path))
        .map(|(path, seen)| {
            let mut seen = seen.clone();
            seen.mode &= !0o6000;
            (path.clone(), seen)
        })
        .collect()
}

/// Compares a restored tree with what was expected, entry for entry; holes stay holes (a
/// restored file never takes more blocks than its source did, beyond one block per hole edge).
fn compare(seed: u64, how: &str, want: &Tree, got: &Tree) {
    let show = |path: &[u8]| OsStr::from_bytes(path).to_string_lossy().into_owned();
    for path in want.keys() {
        assert!(
            got.contains_key(path),
            "seed {seed}, {how}: {} is missing from the restore",
            show(path)
        );
    }
    for (path, seen) in got {
        let Some(wanted) = want.get(path) else {
            panic!("seed {seed}, {how}: {} was restored but never snapshotted", show(path));
        };
        let mut seen_cmp = seen.clone();
        let mut wanted_cmp = wanted.clone();
        seen_cmp.blocks = 0;
        wanted_cmp.blocks = 0;
        assert_eq!(seen_cmp, wanted_cmp, "seed {seed}, {how}: {} differs", show(path));
        if seen.kind == 'f' {
            assert!(
                seen.blocks <= wanted.blocks + 16,
                "seed {seed}, {how}: {} takes {} blocks, its source {} (holes filled)",
                show(path),
                seen.blocks,
                wanted.blocks
            );
        }
    }
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SPOTKEEPER_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let trees: u64 = std::env::var("SPOTKEEPER_TREES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    (0..trees).map(|i| base.wrapping_mul(31).wrapping_add(i * 7)).collect()
}

#[test]
fn every_tree_a_snapshot_accepts_is_restored_entry_for_entry() {
    let s3 = S3Server::start();
    for (round, seed) in seeds().into_iter().enumerate() {
        eprintln!("tree seed {seed} (replay with SPOTKEEPER_SEED={seed})");
        let mut rng = Rng(seed);
        let (world, password_file) = format2_world(&s3, &format!("invariant-{round}"));
        let mut made = Made::default();
        {
            let root =
                rustix::fs::open(&world.state, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("state");
            generate(root.as_fd(), 3, &mut rng, &mut made);
            if seed % 4 < 2 {
                deep_chain(root.as_fd());
            }
        }
        let source = read_tree(&world.state);
        let out = world.run(&["snapshot", "--json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "seed {seed}: snapshot failed: {stderr}");
        let snapshot: serde_json::Value = serde_json::from_slice(&out.stdout).expect("snapshot --json");
        assert_eq!(
            snapshot["skipped"].as_u64(),
            Some(skipped(&source)),
            "seed {seed}: the snapshot reports what it skipped, and only that: {snapshot}\n{stderr}"
        );
        let want = expected(&source);
        let files = want.values().filter(|s| s.kind == 'f').count() as u64;
        let listed = world.json(&["list", "--json"]);
        let row = listed
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["id"] == snapshot["id"]))
            .unwrap_or_else(|| panic!("seed {seed}: list shows the snapshot: {listed}"));
        assert_eq!(row["paths"][0]["files"].as_u64(), Some(files), "seed {seed}: {row}");
        // The files counted are the state's regular files, wherever they are shown.
        assert_eq!(snapshot["files"].as_u64(), Some(files), "seed {seed}: {snapshot}");
        assert_eq!(row["files"].as_u64(), Some(files), "seed {seed}: {row}");
        world.ok(&["verify"]);

        let to = world.dir.path().join("restored");
        world.ok(&["restore", "--to", to.to_str().expect("utf-8")]);
        compare(seed, "restore --to", &want, &read_tree(&to));

        // A new machine: the state paths restored as the boot restore does (staged, swapped).
        let machine = world.sibling();
        machine.write_config(&format!("[repository]\npassword_file = {password_file:?}\n"));
        machine.ok(&["restore"]);
        compare(
            seed,
            "restore of a new machine's state",
            &want,
            &read_tree(&machine.state),
        );

        // The drill restores the head into a scratch directory and checks it.
        world.ok(&["verify", "--deep"]);
    }
}
