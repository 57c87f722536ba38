//! The state directory is untrusted input (issue 11): an app that swaps names under a running
//! snapshot, plants FIFOs and links, nests paths past PATH_MAX, writes sparse files, sets
//! setuid bits or hides files from a non-root spotkeeper must never get a host file into the
//! bucket, hang or abort a snapshot, or get privilege back from a restore.

mod common;

use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use common::{S3Server, Swapper, World, bucket_contains, run_bounded, tree_contains, write};
use spotkeeper::exclude::Excludes;
use spotkeeper::mirror;

/// Snapshots taken while names are being swapped.
const SNAPSHOTS_UNDER_SWAP: usize = 6;
/// Mirror syncs (in process, cheap) while names are being swapped.
const MIRROR_SYNCS_UNDER_SWAP: usize = 50;
/// Whatever happens, no snapshot of these tiny states may take longer (a hang, not a timing).
const HANG_LIMIT: Duration = Duration::from_secs(120);

/// A random marker, so that finding it anywhere means the host file leaked.
fn marker() -> Vec<u8> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("urandom");
    format!("HOST-SECRET-{}", hex::encode(bytes)).into_bytes()
}

/// A host directory outside the state with a root-only secret holding `marker`.
fn host_secret(world: &World, marker: &[u8]) -> std::path::PathBuf {
    let host = world.dir.path().join("host");
    write(&host.join("secret.txt"), &marker.repeat(64), 0o600);
    host
}

fn snapshot_bounded(world: &World) -> std::process::Output {
    run_bounded(world.command(&["snapshot", "--json"]), HANG_LIMIT)
}

/// How many entries a snapshot's `--json` says it skipped (a count, or the list of paths).
fn skipped_count(report: &serde_json::Value) -> u64 {
    report["skipped"]
        .as_u64()
        .or_else(|| report["skipped"].as_array().map(|a| a.len() as u64))
        .unwrap_or_else(|| panic!("no skipped in {report}"))
}

fn excludes(root: &Path) -> Excludes {
    Excludes::new(root, &[]).expect("excludes")
}

/// Item 1: a directory swapped with a link to a host directory, and a file swapped with a link
/// to a host file, while CLI snapshots run (12) and while the daemon's mirror warms up unfrozen and
/// then syncs frozen: no byte of the host file reaches the bucket, the mirror or a restore.
#[test]
fn host_files_never_reach_the_bucket_or_the_mirror_whatever_is_swapped() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "hostile-swap", "");
    let marker = marker();
    let host = host_secret(&world, &marker);
    for i in 0..20 {
        write(&world.state.join(format!("d/inside-{i}.txt")), b"state", 0o644);
    }
    write(&world.state.join("f"), b"state file", 0o644);
    symlink(&host, world.state.join("l")).expect("link to the host dir");
    symlink(host.join("secret.txt"), world.state.join("fl")).expect("link to the host file");
    let dir_swap = Swapper::start(&world.state.join("d"), &world.state.join("l"));
    let file_swap = Swapper::start(&world.state.join("f"), &world.state.join("fl"));

    for round in 0..2 * SNAPSHOTS_UNDER_SWAP {
        let out = snapshot_bounded(&world);
        assert!(
            out.status.success(),
            "snapshot {round} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The daemon's path: an unfrozen warm-up under the swaps, then the frozen sync.
    let mirror_dir = world.work.join("mirror-test");
    let cancel = Arc::new(AtomicBool::new(false));
    let ex = excludes(&world.state);
    for _ in 0..MIRROR_SYNCS_UNDER_SWAP {
        mirror::sync(&world.state, &mirror_dir, &ex, &cancel, Some(SystemTime::now())).expect("warm-up");
        assert!(!tree_contains(&mirror_dir, &marker), "warm-up copied a host file");
    }
    let swaps = dir_swap.stop() + file_swap.stop();
    assert!(swaps > 0);
    mirror::sync(&world.state, &mirror_dir, &ex, &cancel, None).expect("frozen sync");
    assert!(!tree_contains(&mirror_dir, &marker), "the mirror holds a host file");

    assert!(
        !bucket_contains(&s3, "hostile-swap", &marker),
        "a host file reached the bucket"
    );
    let restored = world.dir.path().join("restored");
    world.ok(&["restore", "--to", restored.to_str().expect("utf8")]);
    assert!(!tree_contains(&restored, &marker));
    // Whatever the swaps left at the end, the host's secret is still the host's only.
    let secret = fs::metadata(host.join("secret.txt")).expect("secret");
    assert_eq!(secret.mode() & 0o777, 0o600);
}

/// Item 2: a regular file swapped with a FIFO while snapshots and mirror syncs run: none hangs
/// (each is bounded by a watchdog far above its normal duration), none fails.
#[test]
fn fifo_swaps_never_hang_a_snapshot() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "hostile-fifo", "");
    write(&world.state.join("q"), b"queue", 0o644);
    write(&world.state.join("other.txt"), b"kept", 0o644);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        world.state.join("p"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    let swap = Swapper::start(&world.state.join("q"), &world.state.join("p"));
    for round in 0..SNAPSHOTS_UNDER_SWAP {
        let out = snapshot_bounded(&world);
        assert!(
            out.status.success(),
            "snapshot {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mirror_dir = world.work.join("mirror-test");
    let ex = excludes(&world.state);
    let cancel = Arc::new(AtomicBool::new(false));
    for _ in 0..SNAPSHOTS_UNDER_SWAP {
        mirror::sync(&world.state, &mirror_dir, &ex, &cancel, None).expect("sync");
    }
    swap.stop();
    // The FIFO itself is reported, never archived.
    let report = world.json(&["snapshot", "--json"]);
    assert_eq!(skipped_count(&report), 1, "{report}");
    let skipped = common::newest_skipped(&world);
    assert!(skipped.iter().any(|(p, _)| p == "p" || p == "q"), "{skipped:?}");
}

/// Item 3: a symlink swapped with a directory (readlink then answers EINVAL): every snapshot
/// completes and the rest of the state is archived.
#[test]
fn symlink_directory_swaps_do_not_abort_a_snapshot() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "hostile-link", "");
    write(&world.state.join("dir/a.txt"), b"a", 0o644);
    write(&world.state.join("kept.txt"), b"kept", 0o644);
    symlink("kept.txt", world.state.join("link")).expect("link");
    let swap = Swapper::start(&world.state.join("dir"), &world.state.join("link"));
    for round in 0..SNAPSHOTS_UNDER_SWAP {
        let out = snapshot_bounded(&world);
        assert!(
            out.status.success(),
            "snapshot {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert!(report["files"].as_u64().unwrap_or(0) >= 1, "{report}");
    }
    swap.stop();
}

/// Item 4: 40 levels of 120-character names (a path over 4,800 bytes, past PATH_MAX): the
/// snapshot completes and the restore recreates the file at the bottom.
#[test]
fn paths_longer_than_path_max_are_archived_and_restored() {
    use rustix::fs::{Mode, OFlags};
    let s3 = S3Server::start();
    let world = World::new(&s3, "hostile-deep", "");
    let level = "n".repeat(120);
    let mut dir = rustix::fs::open(&world.state, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).expect("state");
    for _ in 0..40 {
        rustix::fs::mkdirat(&dir, level.as_str(), Mode::from_raw_mode(0o755)).expect("mkdir");
        dir =
            rustix::fs::openat(&dir, level.as_str(), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).expect("open");
    }
    let file = rustix::fs::openat(
        &dir,
        "bottom.txt",
        OFlags::CREATE | OFlags::WRONLY,
        Mode::from_raw_mode(0o644),
    )
    .expect("create");
    rustix::io::write(&file, b"deep state").expect("write");
    write(&world.state.join("top.txt"), b"top", 0o644);

    let report = world.json(&["snapshot", "--json"]);
    assert_eq!(report["files"], 2, "{report}");
    let restored = world.dir.path().join("restored");
    world.ok(&["restore", "--to", restored.to_str().expect("utf8")]);
    let root = rustix::fs::open(&restored, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).expect("restored");
    let relative = vec![level.as_str(); 40].join("/");
    assert!(relative.len() > 4096);
    let deep = spotkeeper::walk::fd::open_dir_beneath(root.as_fd(), &relative).expect("deep dir restored");
    let name = std::ffi::CString::new("bottom.txt").expect("name");
    let mut bottom = spotkeeper::walk::fd::open_file_at(deep.as_fd(), &name).expect("bottom");
    let mut body = String::new();
    bottom.read_to_string(&mut body).expect("read");
    assert_eq!(body, "deep state");
}

/// Item 5: a 2 GiB sparse file with a few KB of data costs what its data costs: the archive is
/// small, the restored file is sparse (few blocks) with the same size and data; stock restic
/// restores the same file by hand.
#[test]
fn sparse_files_are_stored_and_restored_sparse() {
    use std::os::unix::fs::FileExt;
    let s3 = S3Server::start();
    let world = World::new(&s3, "hostile-sparse", "");
    let path = world.state.join("big.sparse");
    let file = fs::File::create(&path).expect("create");
    let pieces: [(u64, &[u8]); 3] = [(0, b"head"), (1 << 30, b"middle of the file"), ((2 << 30) - 4, b"tail")];
    for (offset, data) in pieces {
        file.write_all_at(&data.repeat(256), offset.min((2 << 30) - data.len() as u64 * 256))
            .expect("write");
    }
    file.set_len(2 << 30).expect("size");
    drop(file);
    let source_blocks = fs::metadata(&path).expect("meta").blocks();

    let started = Instant::now();
    let report = world.json(&["snapshot", "--json"]);
    let pack_time = started.elapsed();
    eprintln!(
        "2 GiB sparse file: snapshot {pack_time:?}, archive {} bytes",
        report["archive_bytes"]
    );
    assert!(
        report["archive_bytes"].as_u64().unwrap_or(u64::MAX) < 1 << 20,
        "{report}"
    );

    let restored = world.dir.path().join("restored");
    world.ok(&["restore", "--to", restored.to_str().expect("utf8")]);
    let back = restored.join("big.sparse");
    let meta = fs::metadata(&back).expect("restored");
    assert_eq!(meta.len(), 2 << 30);
    assert!(
        meta.blocks() <= source_blocks.max(8) * 4,
        "restored file has {} blocks, the source {source_blocks}",
        meta.blocks()
    );
    let (a, b) = (fs::File::open(&path).expect("a"), fs::File::open(&back).expect("b"));
    for (offset, data) in pieces {
        let offset = offset.min((2 << 30) - data.len() as u64 * 256);
        let (mut x, mut y) = (vec![0; data.len() * 256], vec![0; data.len() * 256]);
        a.read_exact_at(&mut x, offset).expect("read source");
        b.read_exact_at(&mut y, offset).expect("read restored");
        assert_eq!(x, y, "data at {offset}");
    }
    // A hole reads as zeros.
    let mut hole = vec![1u8; 4096];
    b.read_exact_at(&mut hole, 1 << 29).expect("read hole");
    assert!(hole.iter().all(|&z| z == 0));
    verify_with_stock_restic(&world, &back);
}

/// Hand recovery with stock restic (`restic restore`) gives the same file (restic 0.14 writes
/// its holes as zeros; `--sparse` came in 0.15).
fn verify_with_stock_restic(world: &World, restored: &Path) {
    use std::os::unix::fs::FileExt;
    let by_hand = world.dir.path().join("by-hand");
    let out = common::restic(
        world,
        &["restore", "latest", "--target", by_hand.to_str().expect("utf8")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let found: Vec<_> = walkdir(&by_hand)
        .into_iter()
        .filter(|p| p.ends_with("big.sparse"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    let (a, b) = (
        fs::metadata(&found[0]).expect("restic restored it"),
        fs::metadata(restored).expect("restored"),
    );
    assert_eq!(a.len(), b.len());
    let (x, y) = (
        fs::File::open(&found[0]).expect("x"),
        fs::File::open(restored).expect("y"),
    );
    const WINDOW: usize = 1 << 16;
    let (mut p, mut q) = (vec![0u8; WINDOW], vec![0u8; WINDOW]);
    for offset in (0..a.len()).step_by(64 << 20) {
        let offset = offset.min(a.len() - WINDOW as u64);
        x.read_exact_at(&mut p, offset).expect("read");
        y.read_exact_at(&mut q, offset).expect("read");
        assert_eq!(p, q, "at {offset}");
    }
}

fn walkdir(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

/// Item 6: setuid/setgid bits are recorded but never planted by a restore (and reported);
/// other bits and owners are kept.
#[test]
fn restore_drops_setuid_and_setgid() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "hostile-suid", "");
    write(&world.state.join("bin/tool"), b"#!/bin/sh\n", 0o755);
    fs::create_dir_all(world.state.join("open")).expect("dir");
    fs::set_permissions(world.state.join("open"), fs::Permissions::from_mode(0o7777)).expect("7777");
    rustix::fs::chown(
        world.state.join("bin/tool"),
        Some(rustix::fs::Uid::from_raw(1000)),
        Some(rustix::fs::Gid::from_raw(1000)),
    )
    .ok();
    // After the chown, which clears setuid.
    fs::set_permissions(world.state.join("bin/tool"), fs::Permissions::from_mode(0o4755)).expect("setuid");
    world.ok(&["snapshot"]);
    let restored = world.dir.path().join("restored");
    let report = world.json(&["restore", "--to", restored.to_str().expect("utf8"), "--json"]);
    let tool = fs::metadata(restored.join("bin/tool")).expect("tool");
    assert_eq!(tool.mode() & 0o7777, 0o755);
    let open = fs::metadata(restored.join("open")).expect("open");
    assert_eq!(open.mode() & 0o7777, 0o1777);
    // The mirror never holds a setuid or setgid bit, so format 2 never records one; whatever a
    // restic repository holds, restore reports what it dropped (a crafted repository's setuid
    // entries: tests/format2.rs, a_hostile_repository_...).
    let dropped = report["privilege_dropped"].as_array().expect("reported");
    assert!(
        dropped.iter().all(|p| p
            .as_str()
            .is_some_and(|p| p.starts_with("bin/tool") || p.starts_with("open"))),
        "{report}"
    );
    if rustix::process::geteuid().is_root() {
        assert_eq!((tool.uid(), tool.gid()), (1000, 1000), "owner kept");
    }
}

/// Item 7: `a/b -> ..` and `c -> a/b/..` (which resolves outside the tree through the first
/// link) are data in format 2: kept as they are, restored as links, never followed, so the
/// snapshot restores and nothing is written outside the target. (Format 1 skipped such a link
/// at snapshot; its reader still refuses one: tests/archive_safety.rs.)
#[test]
fn link_chains_leaving_the_tree_are_kept_as_links_and_never_followed() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "hostile-chain", "");
    fs::create_dir_all(world.state.join("a")).expect("dir");
    symlink("..", world.state.join("a/b")).expect("a/b");
    symlink("a/b/..", world.state.join("c")).expect("c");
    write(&world.state.join("a/f.txt"), b"f", 0o644);
    let report = world.json(&["snapshot", "--json"]);
    assert_eq!(skipped_count(&report), 0, "{report}");
    let outside = world.dir.path().join("outside");
    fs::create_dir_all(&outside).expect("dir");
    let restored = outside.join("restored");
    world.ok(&["restore", "--to", restored.to_str().expect("utf8")]);
    assert_eq!(fs::read_link(restored.join("a/b")).expect("kept"), Path::new(".."));
    assert_eq!(fs::read_link(restored.join("c")).expect("kept"), Path::new("a/b/.."));
    assert_eq!(fs::read(restored.join("a/f.txt")).expect("f"), b"f");
    let beside: Vec<_> = fs::read_dir(&outside)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        beside,
        vec![std::ffi::OsString::from("restored")],
        "nothing written beside the target"
    );
}

/// Item 8: a manifest past the cap is refused with an error naming the key and the cap,
/// before it is read (the process stays far below the manifest's size).
#[test]
fn a_huge_manifest_is_refused_with_bounded_memory() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "hostile-huge", "");
    let cap = spotkeeper::manifest::MAX_METADATA_BYTES as usize;
    let mut body = b"{\"format\": 1, \"padding\": \"".to_vec();
    body.resize(cap + 64 * 1024 * 1024, b'x');
    body.extend_from_slice(b"\"}");
    s3.put_object("hostile-huge", "latest/manifest.json", &body);
    drop(body);
    let mut child = world
        .command(&["verify"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let mut peak_kib = 0u64;
    let finished = common::wait_for(HANG_LIMIT, || {
        peak_kib = peak_kib.max(common::proc_status_kib(pid, "VmHWM").unwrap_or(0));
        matches!(child.try_wait(), Ok(Some(_)))
    });
    assert!(finished, "verify finished");
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("latest/manifest.json"), "{stderr}");
    assert!(stderr.contains(&cap.to_string()), "{stderr}");
    let manifest_kib = (cap as u64 + (64 << 20)) / 1024;
    eprintln!("verify of a {manifest_kib} KiB manifest: peak RSS {peak_kib} KiB");
    assert!(peak_kib < manifest_kib / 2, "peak RSS {peak_kib} KiB");
}

/// Item 9: as non-root, one unreadable file is skipped and reported; the CLI snapshot succeeds.
#[test]
fn an_unreadable_file_does_not_fail_a_non_root_snapshot() {
    if !rustix::process::geteuid().is_root() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("needs root and setpriv to run the binary as nobody: skipped");
        return;
    }
    let s3 = S3Server::start();
    let world = World::new(&s3, "hostile-nonroot", "");
    write(&world.state.join("readable.txt"), b"ok", 0o644);
    write(&world.state.join("sub/also.txt"), b"ok", 0o644);
    for path in [
        world.dir.path(),
        world.state.as_path(),
        &world.state.join("sub"),
        &world.state.join("readable.txt"),
        &world.state.join("sub/also.txt"),
        world.config.as_path(),
        world.password_file.as_deref().expect("a repository"),
    ] {
        rustix::fs::chown(
            path,
            Some(rustix::fs::Uid::from_raw(65534)),
            Some(rustix::fs::Gid::from_raw(65534)),
        )
        .expect("chown");
    }
    fs::set_permissions(world.dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    write(&world.state.join("root-only.txt"), b"secret", 0o600);
    fs::create_dir_all(&world.work).expect("work");
    rustix::fs::chown(
        &world.work,
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .expect("chown");
    let cmd = world.command(&["snapshot", "--json"]);
    let out = run_bounded(common::as_nobody(&cmd), HANG_LIMIT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["files"], 2, "{report}");
    assert_eq!(skipped_count(&report), 1, "{report}");
    let skipped = common::newest_skipped(&world);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].0, "root-only.txt");
    assert!(skipped[0].1.contains("Permission denied"), "{skipped:?}");
}

/// Issue 20 item 11: a control socket in a directory this user may not look into (root's
/// `/run/spotkeeper`, 0700) is no proof that no daemon runs: `snapshot` and `status` refuse, say
/// what is known and what to do, and upload nothing; so does a socket that is there and root's.
#[test]
fn a_control_socket_this_user_cannot_reach_is_refused_saying_what_is_known() {
    if !rustix::process::geteuid().is_root() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("needs root and setpriv to run the binary as nobody: skipped");
        return;
    }
    let s3 = S3Server::start();
    let world = World::new(&s3, "socket-unseen", "");
    write(&world.state.join("f.txt"), b"state", 0o644);
    fs::set_permissions(world.dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let closed = world.dir.path().join("run-closed");
    fs::create_dir(&closed).expect("dir");
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).expect("chmod");
    let socket = closed.join("control.sock");
    world.write_config(&format!("[daemon]\nsocket = {socket:?}\n"));
    fs::set_permissions(&world.config, fs::Permissions::from_mode(0o644)).expect("chmod");
    for args in [["snapshot", "--json"], ["status", "--json"]] {
        let out = run_bounded(common::as_nobody(&world.command(&args)), HANG_LIMIT);
        let (code, stderr) = common::failure(&out);
        assert_eq!(code, 7, "{args:?}: {stderr}");
        assert!(stderr.contains(&socket.display().to_string()), "{stderr}");
        assert!(
            stderr.contains("whether a spotkeeper daemon runs there cannot be told")
                && stderr.contains("as root")
                && stderr.contains("`[daemon] socket`"),
            "{stderr}"
        );
    }
    // The directory can be looked into, and a root-only socket is there: a daemon may run.
    let open = world.dir.path().join("run-open");
    fs::create_dir(&open).expect("dir");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = open.join("control.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).expect("chmod");
    world.write_config(&format!("[daemon]\nsocket = {socket:?}\n"));
    fs::set_permissions(&world.config, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run_bounded(common::as_nobody(&world.command(&["snapshot"])), HANG_LIMIT);
    let (code, stderr) = common::failure(&out);
    assert_eq!(code, 7, "{stderr}");
    assert!(
        stderr.contains("a spotkeeper daemon may be running on") && stderr.contains(&socket.display().to_string()),
        "{stderr}"
    );
    assert!(s3.keys("socket-unseen").is_empty(), "nothing uploaded");
}
