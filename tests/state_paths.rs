//! Several state paths (issue 13): OpenClaw's config, workspace and auth-profile directories in
//! one snapshot, restored all or nothing; a restore killed at every point between its swaps is
//! completed by the next start; one path restored on purpose.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{S3Server, World, failure, shape, write};

const PASSWORD: &str = "correct horse battery staple";

/// A format-2 world with OpenClaw's three directories, each holding something of its own.
fn three_path_world(s3: &S3Server, bucket: &str) -> (World, [PathBuf; 3]) {
    let mut world = World::new(s3, bucket, "lab");
    let dirs = world.use_three_paths();
    let password_file = world.dir.path().join("repository-password");
    write(&password_file, format!("{PASSWORD}\n").as_bytes(), 0o600);
    world.write_config(&format!("[repository]\npassword_file = {password_file:?}\n"));
    fill(&dirs, "v1");
    (world, dirs)
}

/// Writes a recognisable `version` into each of the three directories, with a few files each.
fn fill(dirs: &[PathBuf; 3], version: &str) {
    write(
        &dirs[0].join("openclaw.json"),
        format!("{{\"version\":\"{version}\"}}").as_bytes(),
        0o600,
    );
    write(
        &dirs[0].join("state/openclaw.sqlite"),
        &common::noise(64 * 1024, 1),
        0o600,
    );
    write(&dirs[0].join("agents/main/sessions/1.jsonl"), version.as_bytes(), 0o644);
    write(
        &dirs[1].join("AGENTS.md"),
        format!("workspace {version}").as_bytes(),
        0o644,
    );
    write(&dirs[1].join("notes/today.md"), version.as_bytes(), 0o644);
    write(
        &dirs[2].join("auth-profile.key"),
        format!("key {version}").as_bytes(),
        0o600,
    );
}

/// The version each directory holds (`None`: absent or unreadable).
fn versions(dirs: &[PathBuf; 3]) -> [Option<String>; 3] {
    let read = |p: PathBuf| fs::read_to_string(p).ok();
    [
        read(dirs[0].join("agents/main/sessions/1.jsonl")),
        read(dirs[1].join("notes/today.md")),
        read(dirs[2].join("auth-profile.key")).map(|k| k.trim_start_matches("key ").to_string()),
    ]
}

fn replace_with(dirs: &[PathBuf; 3], version: &str) {
    for dir in dirs {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).expect("dir");
    }
    fill(dirs, version);
}

/// Entries beside `dir` left by a restore (staging directories).
fn staging_left(dir: &Path) -> Vec<String> {
    let parent = dir.parent().expect("parent");
    fs::read_dir(parent)
        .expect("parent")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("spotkeeper-staging"))
        .collect()
}

#[test]
fn three_paths_are_one_snapshot_listed_verified_and_restored_together() {
    let s3 = S3Server::start();
    let (world, dirs) = three_path_world(&s3, "paths");
    let taken = world.json(&["snapshot", "--json"]);
    assert_eq!(taken["outcome"], "uploaded", "{taken}");
    let id = taken["id"].as_str().expect("id").to_string();

    // `list` and `verify` show each path's files and bytes.
    let list = world.json(&["list", "--json"]);
    let paths = &list[0]["paths"];
    let names: Vec<&str> = paths
        .as_array()
        .expect("paths")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["config", "workspace", "auth"], "{list}");
    assert_eq!(paths[0]["files"], 3, "{list}");
    assert_eq!(paths[1]["files"], 2, "{list}");
    assert_eq!(paths[2]["files"], 1, "{list}");
    assert_eq!(paths[2]["bytes"], 6, "{list}");
    let text = world.ok(&["list"]);
    assert!(text.contains("workspace") && text.contains("auth"), "{text}");
    let verified = world.json(&["verify", "--json"]);
    assert_eq!(verified["paths"], *paths, "{verified}");

    // `restore --to DIR` writes each path to DIR/<name>/.
    let to = world.dir.path().join("look");
    world.ok(&["restore", "--to", to.to_str().expect("utf-8")]);
    for (name, dir) in ["config", "workspace", "auth"].iter().zip(&dirs) {
        assert_eq!(shape(&to.join(name)), shape(dir), "path {name}");
    }
    let entries: Vec<String> = fs::read_dir(&to)
        .expect("to")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 3, "only the three paths: {entries:?}");

    // Stock restic reads one path: `restic restore ID:/workspace` is refused by Debian 12's
    // restic 0.14, so its documented fallback, `--include /workspace`.
    let password_file = world.dir.path().join("repository-password");
    let restic_id = taken["restic_id"].as_str().expect("restic id").to_string();
    let on_disk = s3.root.path().join(&world.bucket).join(&world.prefix).join("repo");
    let theirs = world.dir.path().join("by-restic");
    let out = std::process::Command::new("restic")
        .args([
            "-r",
            on_disk.to_str().expect("utf-8"),
            "--no-cache",
            "--no-lock",
            "restore",
        ])
        .args([restic_id.as_str(), "--include", "/workspace", "--target"])
        .arg(&theirs)
        .env("RESTIC_PASSWORD_FILE", &password_file)
        .output()
        .expect("restic");
    assert!(out.status.success(), "restic: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(shape(&theirs.join("workspace")), shape(&dirs[1]));
    assert!(!theirs.join("config").exists(), "only the path asked for");

    // A new machine: empty directories; `restore` brings all three back, from one moment, and
    // its record lets it snapshot on top.
    let second = world.sibling();
    second.write_config(&format!("[repository]\npassword_file = {password_file:?}\n"));
    let fresh = second.three_dirs();
    let report = second.json(&["restore", "--json"]);
    assert_eq!(report["id"].as_str(), Some(id.as_str()), "{report}");
    assert_eq!(report["paths"].as_array().map(Vec::len), Some(3), "{report}");
    assert_eq!(versions(&fresh), versions(&dirs));
    for (a, b) in fresh.iter().zip(&dirs) {
        assert_eq!(shape(a), shape(b));
    }
    fill(&fresh, "v2");
    let next = second.json(&["snapshot", "--json"]);
    assert_eq!(next["parent"].as_str(), Some(id.as_str()), "{next}");
}

#[test]
fn a_restore_killed_at_every_point_is_completed_by_the_next_start() {
    let s3 = S3Server::start();
    let (world, dirs) = three_path_world(&s3, "killed");
    let first = world.json(&["snapshot", "--json"]);
    let first_id = first["id"].as_str().expect("id").to_string();
    let want = versions(&dirs);
    let journal = world.work.join("restore-journal.json");
    let mut kills = 0;
    let mut completed = false;
    // Point 1: every path staged, no journal; 2: journal written; then each path moved aside
    // and swapped in (6); then the record (1). Bounded: the run that is not killed ends it.
    for point in 1..=16 {
        replace_with(&dirs, &format!("local-{point}"));
        let mut command = world.command(&["restore", "--force", "--snapshot", &first_id]);
        command.env("SPOTKEEPER_FAILPOINT", format!("restore-swap:{point}"));
        let out = command.output().expect("restore");
        if out.status.success() {
            completed = true;
            assert_eq!(versions(&dirs), want, "an uninterrupted restore");
            break;
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "point {point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        kills += 1;
        let journaled = journal.exists();
        // The next start (here `snapshot`) completes the restore before it looks at the state.
        let next = world.run(&["snapshot", "--json"]);
        assert!(
            next.status.success(),
            "point {point}: {}",
            String::from_utf8_lossy(&next.stderr)
        );
        assert!(!journal.exists(), "point {point}: the journal is gone");
        let expected = if journaled {
            want.clone()
        } else {
            // Killed before the journal: nothing was swapped.
            [
                Some(format!("local-{point}")),
                Some(format!("local-{point}")),
                Some(format!("local-{point}")),
            ]
        };
        assert_eq!(versions(&dirs), expected, "point {point}: one set, from one moment");
        for dir in &dirs {
            assert!(staging_left(dir).is_empty(), "point {point}: {:?}", staging_left(dir));
        }
        if journaled {
            // What was there is kept, for every path.
            for dir in &dirs {
                let kept = fs::read_dir(dir.with_extension("displaced"))
                    .map(|d| d.count())
                    .unwrap_or(0);
                assert!(kept >= 1, "point {point}: {} kept nothing", dir.display());
            }
        }
    }
    assert!(completed, "the restore never ran to the end");
    assert!(kills >= 9, "only {kills} points were reached");
}

#[test]
fn one_path_is_restored_on_purpose_and_the_others_are_left_alone() {
    let s3 = S3Server::start();
    let (world, dirs) = three_path_world(&s3, "onepath");
    let first = world.json(&["snapshot", "--json"]);
    let first_id = first["id"].as_str().expect("id").to_string();
    replace_with(&dirs, "v2");
    world.ok(&["snapshot"]);

    // Unknown names are refused, naming what exists.
    let (code, stderr) = failure(&world.run(&["restore", "--force", "--path", "cache"]));
    assert_eq!(code, 7, "{stderr}");
    assert!(
        stderr.contains("\"cache\"") && stderr.contains("config, workspace, auth"),
        "{stderr}"
    );

    let report = world.json(&[
        "restore",
        "--force",
        "--path",
        "workspace",
        "--snapshot",
        &first_id,
        "--json",
    ]);
    assert_eq!(report["paths"].as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(
        versions(&dirs),
        [Some("v2".into()), Some("v1".into()), Some("v2".into())],
        "only the workspace went back"
    );
    assert!(report["paths"][0]["displaced"].is_string(), "{report}");
    // The record still says the set descends from the head: the next snapshot is allowed.
    let next = world.json(&["snapshot", "--json"]);
    assert_eq!(next["outcome"], "uploaded", "{next}");

    // `--path` with `--to`: that path alone, at DIR itself.
    let to = world.dir.path().join("auth-only");
    world.ok(&[
        "restore",
        "--path",
        "auth",
        "--snapshot",
        &first_id,
        "--to",
        to.to_str().expect("utf-8"),
    ]);
    assert_eq!(fs::read_to_string(to.join("auth-profile.key")).expect("key"), "key v1");
}

#[test]
fn a_snapshot_holding_a_path_the_config_does_not_name_is_never_half_restored() {
    let s3 = S3Server::start();
    let (world, dirs) = three_path_world(&s3, "stray");
    world.ok(&["snapshot"]);
    // The same prefix, now configured with two of the three paths.
    let mut two = world.sibling();
    let fresh = two.three_dirs();
    let password_file = world.dir.path().join("repository-password");
    two.state_paths = Some(format!(
        "[[state.paths]]\nname = \"config\"\ndir = {:?}\n\n[[state.paths]]\nname = \"auth\"\ndir = {:?}\n",
        fresh[0], fresh[2]
    ));
    two.write_config(&format!("[repository]\npassword_file = {password_file:?}\n"));
    let (code, stderr) = failure(&two.run(&["restore"]));
    assert_eq!(code, 7, "{stderr}");
    assert!(
        stderr.contains("\"workspace\", which the config does not name"),
        "{stderr}"
    );
    assert!(!fresh[0].join("openclaw.json").exists(), "nothing was restored");
    drop(dirs);
}

/// The fake OpenClaw's seq in each of the three directories of a restored copy: the config's
/// `ack.txt` and the `seq.txt` the app writes in the other two just before each ack.
fn seqs(root: &Path) -> (u64, u64, u64) {
    let read = |p: PathBuf| {
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .parse::<u64>()
            .expect("a seq")
    };
    (
        read(root.join("config/ack.txt")),
        read(root.join("workspace/seq.txt")),
        read(root.join("auth/seq.txt")),
    )
}

/// The daemon with OpenClaw's three mounted directories: every snapshot is one moment of all
/// three (one freeze), a new machine gets all three back, one path is restored on purpose
/// through the daemon, and a boot with one path present and the others absent restores
/// nothing over the local set.
#[test]
fn the_daemon_keeps_openclaws_three_directories_together() {
    if !common::docker_available() {
        return;
    }
    let s3 = S3Server::start();
    let moto = common::Moto::start();
    let mut world = World::new(&s3, "daemon", "paths3");
    let dirs = world.use_three_paths();
    fs::remove_dir_all(&dirs[0]).expect("a new machine has no state");
    let password_file = world.dir.path().join("repository-password");
    write(&password_file, format!("{PASSWORD}\n").as_bytes(), 0o600);
    let (container, port) = common::configure_daemon(
        &world,
        &moto,
        "paths3",
        "",
        &format!("\n[repository]\npassword_file = {password_file:?}\n"),
    );
    // The app writes into the other two mounts; READY waits for its readiness endpoint.
    let config = fs::read_to_string(&world.config).expect("config");
    let config = config
        .replace(
            "DRAIN_MS = \"300\"",
            "DRAIN_MS = \"300\"\nEXTRA_DIRS = \"/home/node/.openclaw/workspace:/home/node/.config/openclaw\"",
        )
        .replace(
            "health_interval = ",
            &format!("ready_url = \"http://127.0.0.1:{port}/readyz\"\nhealth_interval = "),
        );
    fs::write(&world.config, config).expect("config");
    let ssm_path = "/openclaw/paths3/";
    moto.put_parameter(&format!("{ssm_path}API_KEY"), "x");

    let mut daemon = common::Daemon::start(&world);
    let snapshots = || {
        common::status(&world)
            .and_then(|s| s["last_snapshot"]["paths"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let ticked = common::wait_for(std::time::Duration::from_secs(120), || snapshots() == 3);
    assert!(ticked, "no snapshot with three paths; log:\n{}", daemon.log());
    let status = common::status(&world).expect("status");
    assert_eq!(status["last_snapshot"]["paths"][1]["name"], "workspace", "{status}");
    let text = world.ok(&["status"]);
    assert!(text.contains("workspace") && text.contains("auth"), "{text}");
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());

    // Every snapshot is one moment of the three: each `seq.txt` is the ack or the write after.
    let list = world.json(&["list", "--json"]);
    let ids: Vec<String> = list
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    assert!(ids.len() >= 2, "{list}");
    for id in &ids {
        let to = world.dir.path().join(format!("look-{id}"));
        world.ok(&["restore", "--snapshot", id, "--to", to.to_str().expect("utf-8")]);
        let (ack, workspace, auth) = seqs(&to);
        assert!(
            (ack..=ack + 1).contains(&workspace) && (ack..=ack + 1).contains(&auth),
            "snapshot {id} mixes moments: ack {ack}, workspace {workspace}, auth {auth}"
        );
    }
    let final_id = ids[0].clone();

    // A new machine (same config, empty disk): all three come back from the head.
    common::remove_container(&container);
    for dir in dirs.iter().chain([&world.work]) {
        let _ = fs::remove_dir_all(dir);
    }
    let mut daemon = common::Daemon::start(&world);
    let running = common::wait_for(std::time::Duration::from_secs(120), || {
        common::status(&world).is_some_and(|s| s["phase"] == "running")
    });
    assert!(running, "log:\n{}", daemon.log());
    assert!(
        daemon
            .log()
            .contains(&format!("restoring the state from snapshot {final_id}")),
        "log:\n{}",
        daemon.log()
    );
    for dir in &dirs {
        assert!(dir.is_dir(), "{} restored", dir.display());
    }

    // One path on purpose, through the daemon: the workspace goes back, the config does not.
    write(&dirs[1].join("marker.txt"), b"first", 0o644);
    write(&dirs[0].join("marker.txt"), b"first", 0o644);
    let marked = world.json(&["snapshot", "--json"]);
    let marked_id = marked["id"].as_str().expect("id").to_string();
    write(&dirs[1].join("marker.txt"), b"second", 0o644);
    write(&dirs[0].join("marker.txt"), b"second", 0o644);
    let done = world.json(&["restore", "--path", "workspace", "--snapshot", &marked_id, "--json"]);
    assert_eq!(done["restored"]["paths"].as_array().map(Vec::len), Some(1), "{done}");
    assert_eq!(fs::read_to_string(dirs[1].join("marker.txt")).expect("marker"), "first");
    assert_eq!(
        fs::read_to_string(dirs[0].join("marker.txt")).expect("marker"),
        "second"
    );
    assert!(
        dirs[1].with_extension("displaced").is_dir(),
        "the workspace it replaced is kept"
    );
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());

    // A boot with the config present and the other two absent: the set is local; nothing is
    // restored over it, the absent ones start empty.
    common::remove_container(&container);
    let ack_before: u64 = fs::read_to_string(dirs[0].join("ack.txt"))
        .expect("ack")
        .trim()
        .parse()
        .expect("seq");
    fs::remove_dir_all(&dirs[1]).expect("workspace");
    fs::remove_dir_all(&dirs[2]).expect("auth");
    let mut daemon = common::Daemon::start(&world);
    let running = common::wait_for(std::time::Duration::from_secs(120), || {
        common::status(&world).is_some_and(|s| s["phase"] == "running")
    });
    assert!(running, "log:\n{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("the set is local"), "log:\n{log}");
    assert!(!log.contains("restoring the state from snapshot"), "log:\n{log}");
    assert!(
        !dirs[1].join("marker.txt").exists(),
        "nothing was restored into the workspace"
    );
    let continued = common::wait_for(std::time::Duration::from_secs(30), || {
        fs::read_to_string(dirs[0].join("ack.txt"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|ack| ack > ack_before)
    });
    assert!(continued, "the app went on from the local config");
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
    common::remove_container(&container);
}

/// Issue 20 item 4: a `snapshot` holds the restore lock while it copies the paths into its
/// mirrors. Paused after copying the first of three paths, it makes a `restore --force` of an
/// older snapshot wait (and say so); the head it publishes holds all three paths from one
/// moment. Without the lock, the restore swapped every path in under it and the head held the
/// first path from before the restore and the others from after.
#[test]
fn a_snapshot_during_a_restore_publishes_paths_from_one_moment() {
    use std::process::Stdio;
    use std::time::Duration;
    let s3 = S3Server::start();
    let (world, dirs) = three_path_world(&s3, "onemoment");
    let v1 = world.json(&["snapshot", "--json"])["id"]
        .as_str()
        .expect("id")
        .to_string();
    replace_with(&dirs, "v2");
    let paused = world.dir.path().join("snapshot-paused");
    let mut snapshot = world.command(&["snapshot", "--json"]);
    snapshot
        .env(
            "SPOTKEEPER_FAILPOINT",
            format!("{}:1:pause:{}", spotkeeper::mirror::PATH_SYNCED, paused.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let snapshot = snapshot.spawn().expect("snapshot");
    assert!(
        common::wait_for(Duration::from_secs(60), || paused.exists()),
        "the snapshot never reached its first path"
    );
    let restore_log = world.dir.path().join("restore.log");
    let mut restore = world.command(&["restore", "--force", "--snapshot", &v1]);
    restore
        .stdout(Stdio::null())
        .stderr(fs::File::create(&restore_log).expect("log"));
    let mut restore = restore.spawn().expect("restore");
    // The restore waits for the lock and says so (or, without the lock, runs to its end).
    let mut restore_status = None;
    let waited_or_done = common::wait_for(Duration::from_secs(60), || {
        restore_status = restore.try_wait().expect("try_wait");
        restore_status.is_some() || fs::read_to_string(&restore_log).is_ok_and(|l| l.contains("waiting for"))
    });
    assert!(
        waited_or_done,
        "{}",
        fs::read_to_string(&restore_log).unwrap_or_default()
    );
    fs::remove_file(&paused).expect("release the snapshot");
    let snapshot = snapshot.wait_with_output().expect("snapshot");
    assert!(
        snapshot.status.success(),
        "{}",
        String::from_utf8_lossy(&snapshot.stderr)
    );
    let finished = common::wait_for(Duration::from_secs(120), || {
        restore_status = restore.try_wait().expect("try_wait");
        restore_status.is_some()
    });
    assert!(finished, "the restore never finished");
    let log = fs::read_to_string(&restore_log).unwrap_or_default();
    assert!(restore_status.is_some_and(|s| s.success()), "{log}");
    assert_eq!(
        versions(&dirs),
        [Some("v1".into()), Some("v1".into()), Some("v1".into())]
    );

    // The head: every path from one moment (the one before the restore).
    let head = world.dir.path().join("head");
    world.ok(&["restore", "--to", head.to_str().expect("utf-8")]);
    let published = versions(&[head.join("config"), head.join("workspace"), head.join("auth")]);
    assert_eq!(
        published,
        [Some("v2".into()), Some("v2".into()), Some("v2".into())],
        "the head mixes two moments"
    );
    assert!(
        log.contains("restore.lock") && log.contains("(snapshot)"),
        "the wait names the lock and its holder: {log}"
    );
}
