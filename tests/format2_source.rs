//! Format 2 reads the mirror by descriptor: a path longer than `PATH_MAX` is in the snapshot
//! (rustic_core's own path walk dropped it with a WARN line) and restored; a sparse file's
//! holes are not read, cost the repository nothing and are restored as holes; link targets
//! (non-UTF-8 ones too), modes and mtimes come back through stock `restic` and spotkeeper's
//! restore; an unchanged tree is not read again.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{S3Server, World, format2_world, write};
use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

/// 42 directories of 120-byte names: 5 KiB of path, past `PATH_MAX` (4096).
const LEVELS: usize = 42;

/// Stock restic on the repository's files as s3s-fs stores them (TESTING.md: restic's S3
/// listing of s3s-fs is unreliable).
fn restic(s3: &S3Server, world: &World, password_file: &Path, args: &[&OsStr]) -> std::process::Output {
    let on_disk = s3.root.path().join(&world.bucket).join(&world.prefix).join("repo");
    let out = Command::new("restic")
        .arg("-r")
        .arg(&on_disk)
        .args(["--no-cache", "--no-lock"])
        .args(args)
        .env("RESTIC_PASSWORD_FILE", password_file)
        .output();
    match out {
        Ok(out) => out,
        Err(e) => panic!("cannot run restic ({e}): install Debian's restic (`apt-get install restic`; .ci/run does)"),
    }
}

/// Stock restic restores snapshot `restic_id` into `target`.
fn restic_restore(s3: &S3Server, world: &World, password_file: &Path, restic_id: &str, target: &Path) {
    let out = restic(
        s3,
        world,
        password_file,
        &[
            OsStr::new("restore"),
            OsStr::new(restic_id),
            OsStr::new("--target"),
            target.as_os_str(),
        ],
    );
    assert!(
        out.status.success(),
        "restic restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn open_dir(path: &Path) -> OwnedFd {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open dir")
}

/// The names of the deep chain, level by level.
fn deep_names() -> Vec<String> {
    (0..LEVELS).map(|i| format!("{i:03}-{}", "d".repeat(116))).collect()
}

/// Creates the chain of `deep_names()` under `root`, one `mkdirat` relative to the parent's
/// descriptor at a time (no path past `PATH_MAX` is ever handed to the kernel), with `body` in
/// `deep.txt` at the bottom and `side.txt` beside the last directory.
fn build_deep(root: &Path, body: &[u8]) {
    let mut dir = open_dir(root);
    let names = deep_names();
    for (i, name) in names.iter().enumerate() {
        rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).expect("mkdirat");
        dir = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("openat");
        if i == LEVELS - 2 {
            let side = rustix::fs::openat(
                &dir,
                "side.txt",
                OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .expect("create side.txt");
            fs::File::from(side)
                .write_all(b"beside the deepest directory\n")
                .expect("write");
        }
    }
    let deep = rustix::fs::openat(
        &dir,
        "deep.txt",
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .expect("create deep.txt");
    fs::File::from(deep).write_all(body).expect("write");
}

/// The path of `name` in the chain's directory at `depth` (1: the first), relative to the state.
fn deep_rel(depth: usize, name: &str) -> String {
    let mut rel = deep_names()[..depth].join("/");
    rel.push('/');
    rel.push_str(name);
    rel
}

#[test]
fn a_path_longer_than_path_max_is_snapshotted_listed_by_stock_restic_and_restored() {
    let s3 = S3Server::start();
    let (world, password_file) = format2_world(&s3, "f2deep");
    write(&world.state.join("top.txt"), b"top\n", 0o644);
    build_deep(&world.state, b"the deepest file\n");
    write(&world.state.join("zz-after.txt"), b"after the deep chain\n", 0o644);
    assert!(deep_rel(LEVELS, "deep.txt").len() > 4096);
    assert!(deep_rel(LEVELS - 1, "side.txt").len() > 4096);

    let snapshot = world.json(&["snapshot", "--json"]);
    assert_eq!(snapshot["outcome"], "uploaded", "{snapshot}");
    // top.txt, side.txt, deep.txt, zz-after.txt: the deep two were missing before.
    assert_eq!(snapshot["files"], 4, "{snapshot}");
    let restic_id = snapshot["restic_id"].as_str().expect("restic_id").to_string();
    let listed = world.json(&["list", "--json"]);
    let rows = listed.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["files"], 4, "{listed}");

    let out = restic(&s3, &world, &password_file, &[OsStr::new("ls"), OsStr::new(&restic_id)]);
    assert!(
        out.status.success(),
        "restic ls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    for (depth, name) in [(LEVELS, "deep.txt"), (LEVELS - 1, "side.txt")] {
        let wanted = format!("/{}", deep_rel(depth, name));
        assert!(
            listing.lines().any(|line| line.ends_with(&wanted)),
            "restic ls lists {name} at the bottom of the chain:\n{listing}"
        );
    }
    assert!(listing.lines().any(|line| line.ends_with("/zz-after.txt")), "{listing}");
    // Stock restic 0.14 cannot restore it (its restore opens full paths: "file name too long"
    // past PATH_MAX); spotkeeper's own restore writes through directory descriptors.
    let restored = world.dir.path().join("restored");
    world.ok(&["restore", "--to", restored.to_str().expect("utf-8")]);
    assert_eq!(read_deep(&restored, LEVELS, "deep.txt"), b"the deepest file\n");
    assert_eq!(
        read_deep(&restored, LEVELS - 1, "side.txt"),
        b"beside the deepest directory\n"
    );
}

/// Reads `name` in the chain's directory at `depth` under `root`, by descriptor.
fn read_deep(root: &Path, depth: usize, name: &str) -> Vec<u8> {
    let mut dir = open_dir(root);
    for level in &deep_names()[..depth] {
        dir = rustix::fs::openat(
            &dir,
            level.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .expect("openat");
    }
    let file = rustix::fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .expect("open the deep file");
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(file), &mut body).expect("read");
    body
}

/// How many bytes `child` read (read(2), pread(2), ...: `rchar`), taken after it exited and
/// before it is reaped.
fn bytes_read_by(child: &mut std::process::Child) -> u64 {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::waitid(
        rustix::process::WaitId::Pid(pid),
        rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT,
    )
    .expect("waitid");
    let io = fs::read_to_string(format!("/proc/{}/io", child.id())).expect("/proc/PID/io");
    io.lines()
        .find_map(|line| line.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("rchar")
}

/// Runs `snapshot --json`: its report and how many bytes the process read.
fn snapshot_reading(world: &World) -> (serde_json::Value, u64) {
    let mut child = world
        .command(&["snapshot", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let read = bytes_read_by(&mut child);
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "snapshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (serde_json::from_slice(&out.stdout).expect("json"), read)
}

/// Finds the mirror's copy of `name` under `work`.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if entry.file_name() == name {
            return Some(path);
        }
        if entry.file_type().ok()?.is_dir()
            && let Some(found) = find(&path, name)
        {
            return Some(found);
        }
    }
    None
}

#[test]
fn a_sparse_file_is_snapshotted_without_reading_its_holes_costs_kilobytes_and_restores_sparse() {
    let s3 = S3Server::start();
    let (world, password_file) = format2_world(&s3, "f2sparse");
    let size: u64 = 1 << 30;
    let head = common::noise(4096, 3);
    let middle = common::noise(4096, 5);
    {
        let file = fs::File::create(world.state.join("sparse.bin")).expect("create");
        file.write_all_at(&head, 0).expect("write");
        file.write_all_at(&middle, 700 << 20).expect("write");
        file.set_len(size).expect("extend");
    }

    let (snapshot, read) = snapshot_reading(&world);
    assert_eq!(snapshot["files"], 1, "{snapshot}");
    assert_eq!(snapshot["bytes"], size, "{snapshot}");
    // The holes were neither read (from the state or the mirror) nor stored.
    assert!(
        read < 64 << 20,
        "the snapshot read {read} bytes of a file with 8 KiB of data"
    );
    let added = snapshot["archive_bytes"].as_u64().expect("archive_bytes");
    assert!(
        added < 256 << 10,
        "a file with 8 KiB of data added {added} bytes: {snapshot}"
    );

    // The mirror's copy keeps the holes.
    let mirrored = find(&world.work, "sparse.bin").expect("the mirror's copy");
    let meta = fs::metadata(&mirrored).expect("stat");
    assert_eq!(meta.len(), size);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "the mirror's copy takes {} blocks",
        meta.blocks()
    );

    // Unchanged: nothing new.
    let again = world.json(&["snapshot", "--json"]);
    assert!(
        again["archive_bytes"].as_u64().expect("archive_bytes") < 4096,
        "{again}"
    );

    // spotkeeper's restore writes it sparse, with its bytes.
    let ours = world.dir.path().join("restored");
    world.ok(&["restore", "--to", ours.to_str().expect("utf-8")]);
    let restored = fs::File::open(ours.join("sparse.bin")).expect("restored");
    let meta = restored.metadata().expect("stat");
    assert_eq!(meta.len(), size);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "the restored file takes {} blocks",
        meta.blocks()
    );
    let mut buf = vec![0u8; 4096];
    restored.read_exact_at(&mut buf, 700 << 20).expect("read");
    assert!(buf == middle);

    // Stock restic restores the bytes.
    let target = world.dir.path().join("by-restic");
    let restic_id = snapshot["restic_id"].as_str().expect("restic_id");
    restic_restore(&s3, &world, &password_file, restic_id, &target);
    let restored = fs::File::open(find(&target, "sparse.bin").expect("restored")).expect("open");
    assert_eq!(restored.metadata().expect("stat").len(), size);
    let mut buf = vec![0u8; 4096];
    restored.read_exact_at(&mut buf, 0).expect("read");
    assert!(buf == head);
    restored.read_exact_at(&mut buf, 700 << 20).expect("read");
    assert!(buf == middle);
    restored.read_exact_at(&mut buf, 300 << 20).expect("read");
    assert!(buf.iter().all(|b| *b == 0));
}

/// The tree of the top directory `name` of snapshot `id`, as restic stores it (JSON).
fn tree_of(s3: &S3Server, world: &World, password_file: &Path, id: &str, name: &str) -> serde_json::Value {
    let cat = |args: &[&str]| -> serde_json::Value {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let out = restic(s3, world, password_file, &args);
        assert!(
            out.status.success(),
            "restic cat: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("restic's JSON")
    };
    let snapshot = cat(&["cat", "snapshot", id]);
    let root = cat(&["cat", "blob", snapshot["tree"].as_str().expect("tree")]);
    let top = root["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == name)
        .expect("the top directory");
    cat(&["cat", "blob", top["subtree"].as_str().expect("subtree")])
}

/// Every entry under `root`: raw relative name -> (kind, mode, mtime, content's SHA-256 or
/// link target).
type RawShape = std::collections::BTreeMap<Vec<u8>, (char, u32, i64, Vec<u8>)>;

fn raw_shape(root: &Path) -> RawShape {
    let mut out = RawShape::new();
    raw_walk(root, root, &mut out);
    out
}

fn raw_walk(root: &Path, dir: &Path, out: &mut RawShape) {
    for entry in fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .as_os_str()
            .as_bytes()
            .to_vec();
        let meta = fs::symlink_metadata(&path).expect("stat");
        let mode = meta.mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).expect("link").into_os_string().into_vec();
            out.insert(rel, ('l', 0, meta.mtime(), target));
        } else if meta.is_dir() {
            out.insert(rel, ('d', mode, meta.mtime(), Vec::new()));
            raw_walk(root, &path, out);
        } else {
            let body = fs::read(&path).expect("read");
            out.insert(rel, ('f', mode, meta.mtime(), Sha256::digest(body).to_vec()));
        }
    }
}

#[test]
fn names_links_and_metadata_round_trip_through_stock_restic_and_an_unchanged_tree_adds_nothing() {
    let s3 = S3Server::start();
    let (world, password_file) = format2_world(&s3, "f2names");
    let state = &world.state;
    write(&state.join("agents/main/session.jsonl"), b"{\"seq\":1}\n", 0o600);
    write(&state.join("memory/db.sqlite"), &common::noise(8 << 20, 9), 0o640);
    let odd = OsString::from_vec(b"caf\xe9-\xff.txt".to_vec());
    write(&state.join(&odd), b"a name that is not UTF-8\n", 0o644);
    fs::hard_link(state.join("memory/db.sqlite"), state.join("memory/db-link.sqlite")).expect("hard link");
    std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", state.join("localtime")).expect("symlink");
    std::os::unix::fs::symlink("../memory", state.join("agents/memory")).expect("symlink");
    std::os::unix::fs::symlink(OsStr::from_bytes(b"target-\xfe"), state.join("odd-link")).expect("symlink");
    fs::create_dir_all(state.join("empty")).expect("empty dir");

    let (first, read_first) = snapshot_reading(&world);
    assert_eq!(first["outcome"], "uploaded", "{first}");
    assert!(
        read_first > 16 << 20,
        "the first snapshot copies and reads 8 MiB: {read_first}"
    );
    // Three regular files (the links are not counted as files); the state walker skips (and
    // reports) a name that is not UTF-8 before it reaches the mirror.
    assert_eq!(first["files"], 3, "{first}");
    assert_eq!(first["skipped"], 1, "{first}");
    let (second, read_second) = snapshot_reading(&world);
    assert_eq!(second["outcome"], "uploaded", "{second}");
    assert!(
        read_second < 4 << 20,
        "an unchanged file was read again: {read_second} bytes"
    );
    // Nothing changed: every file is recognised from the parent and none is read again (the
    // mirror's sync touches its top directory's ctime, so the root tree, a few hundred bytes,
    // is new).
    let added = second["archive_bytes"].as_u64().expect("archive_bytes");
    assert!(added < 4096, "an unchanged tree added {added} bytes: {second}");

    let target = world.dir.path().join("by-restic");
    let restic_id = second["restic_id"].as_str().expect("restic_id");
    restic_restore(&s3, &world, &password_file, restic_id, &target);
    let name = find(&target, "localtime")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("restored state");
    let mut expected = raw_shape(state);
    expected.remove(odd.as_bytes()).expect("the odd name");
    // Debian's restic 0.14 restores a link from its UTF-8 `linktarget` (U+FFFD for the byte that
    // is not UTF-8) and ignores `linktarget_raw`, which restic 0.17 and rustic read: the tree
    // must carry the raw bytes.
    expected.remove(b"odd-link".as_slice()).expect("the odd link");
    // spotkeeper's restore writes every one of them, the raw link target included.
    let ours = world.dir.path().join("restored");
    world.ok(&["restore", "--to", ours.to_str().expect("utf-8")]);
    let mut all = raw_shape(state);
    all.remove(odd.as_bytes()).expect("the odd name");
    assert_eq!(raw_shape(&ours), all, "spotkeeper's restore matches the state");
    let state_tree = tree_of(&s3, &world, &password_file, restic_id, "state");
    let odd_link = state_tree["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == "odd-link")
        .expect("odd-link in the tree");
    assert_eq!(odd_link["linktarget_raw"], "dGFyZ2V0Lf4=", "{odd_link}");
    let mut restored = raw_shape(&name);
    restored.remove(b"odd-link".as_slice()).expect("the odd link, restored");
    let differing: Vec<_> = expected
        .iter()
        .filter(|(rel, entry)| restored.get(*rel) != Some(entry))
        .map(|(rel, entry)| (OsStr::from_bytes(rel), entry, restored.get(rel)))
        .collect();
    assert!(
        differing.is_empty(),
        "restic's restore differs from the state: {differing:?}"
    );
    assert_eq!(restored.len(), expected.len());
}
