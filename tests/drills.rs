//! Fault drills: each one injects a fault into the real daemon (real binary, Docker Engine,
//! s3s-fs, moto) and asserts that no data is lost. The list and results are in
//! docs/reliability.md.

mod common;

use std::fs;
use std::time::Duration;

use common::{
    Daemon, DockerProxy, FaultProxy, ProxyMode, S3Server, World, configure_daemon, count, docker, docker_available,
    failure, noise, remove_container, setup, shape, status, wait_for, write,
};

fn running(world: &World, daemon: &Daemon) {
    let ok = wait_for(Duration::from_secs(120), || {
        status(world).is_some_and(|s| s["phase"] == "running")
    });
    assert!(ok, "daemon not running; log:\n{}", daemon.log());
}

/// Drill 2: kill -9 of the daemon at many points of its snapshots.
#[test]
fn drill_kill_9_during_snapshots_never_breaks_latest_or_leaves_the_container_frozen() {
    if !docker_available() {
        return;
    }
    let t = setup("kill9", "", "");
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    // Enough data that a snapshot takes a while, so kills land inside them.
    write(
        &t.world.state.join("media/blob.bin"),
        &noise(40 * 1024 * 1024, 7),
        0o644,
    );
    let mut thawed_after_crash = 0;
    for (round, delay_ms) in [400u64, 1700, 2900, 3300, 5100, 6200].into_iter().enumerate() {
        let mut daemon = Daemon::start(&t.world);
        running(&t.world, &daemon);
        if round > 0 && daemon.log().contains("left frozen") {
            thawed_after_crash += 1;
        }
        // Not left frozen by the kill: a tick may freeze it for a moment (every 3 s here), so
        // the container must be running unpaused within a few ticks, not at this very instant.
        let unpaused = wait_for(Duration::from_secs(15), || {
            docker(&["inspect", "-f", "{{.State.Paused}}", &t.container]) == "false"
        });
        assert!(
            unpaused,
            "round {round}: the container stays frozen; log:\n{}",
            daemon.log()
        );
        // Change something so every tick uploads.
        write(
            &t.world.state.join("media/round.bin"),
            &noise(4 * 1024 * 1024, round as u64 + 100),
            0o644,
        );
        // A fault injection point, not a synchronisation.
        std::thread::sleep(Duration::from_millis(delay_ms));
        daemon.kill();
        common::assert_head_verifies(&t.world);
    }
    // The last start after the last kill carries on.
    let mut daemon = Daemon::start(&t.world);
    running(&t.world, &daemon);
    assert_eq!(docker(&["inspect", "-f", "{{.State.Paused}}", &t.container]), "false");
    let before = status(&t.world).expect("status")["last_snapshot"]["id"].clone();
    let carried_on = wait_for(Duration::from_secs(60), || {
        status(&t.world).is_some_and(|s| s["last_snapshot"]["id"].is_string() && s["last_snapshot"]["id"] != before)
    });
    assert!(carried_on, "no snapshot after the crashes; log:\n{}", daemon.log());
    assert!(daemon.stop().success());
    common::assert_head_verifies(&t.world);
    eprintln!("drill 2: {thawed_after_crash} restart(s) found the container frozen and thawed it");
    remove_container(&t.container);
}

/// Drill 3: S3 refusing connections, answering 500, stalling: no fresh start, no empty upload,
/// retries with backoff, recovery when S3 returns.
#[test]
fn drill_s3_failing_never_starts_fresh_and_recovers() {
    if !docker_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.bucket("faults");
    let proxy = FaultProxy::start(s3.port);
    let moto = common::Moto::start();
    // A previous machine's snapshot, written straight to S3.
    let previous = World::new(&s3, "faults", "lab");
    write(&previous.state.join("precious.txt"), b"must come back", 0o600);
    let seeded = previous.json(&["snapshot", "--json"])["id"]
        .as_str()
        .expect("id")
        .to_string();

    let mut world = World::with_endpoint(&proxy.endpoint(), "faults", "lab");
    // Short, so that a stalled S3 is noticed within the drill's time.
    world.s3_extra = "timeout = \"3s\"\n".into();
    let (container, _port) = configure_daemon(&world, &moto, "faults", "", "");
    moto.put_parameter("/openclaw/faults/API_KEY", "x");
    fs::remove_dir(&world.state).expect("empty state");
    proxy.set(ProxyMode::Reset);
    let mut daemon = Daemon::start(&world);
    let retried = wait_for(Duration::from_secs(60), || {
        count(&daemon.log(), "S3 not reachable") >= 2
    });
    assert!(retried, "no retries; log:\n{}", daemon.log());
    assert!(!world.state.exists(), "no fresh start while S3 is unreachable");
    assert!(
        docker(&["inspect", &container]).starts_with('['),
        "container must not start"
    );
    proxy.set(ProxyMode::Error500);
    let seen = count(&daemon.log(), "S3 not reachable");
    let retried = wait_for(Duration::from_secs(60), || {
        count(&daemon.log(), "S3 not reachable") > seen
    });
    assert!(retried, "no retries on 500s; log:\n{}", daemon.log());
    assert!(!world.state.exists());
    proxy.set(ProxyMode::Forward);
    running(&world, &daemon);
    assert_eq!(
        fs::read(world.state.join("precious.txt")).expect("restored"),
        b"must come back"
    );

    // While running: S3 stalls; snapshots fail and are retried; the head stays complete.
    proxy.set(ProxyMode::Stall);
    let failed = wait_for(Duration::from_secs(90), || daemon.log().contains("snapshot failed"));
    assert!(failed, "no failed snapshot while S3 stalled; log:\n{}", daemon.log());
    proxy.set(ProxyMode::Forward);
    let done = count(&daemon.log(), "snapshot complete");
    let recovered = wait_for(Duration::from_secs(90), || {
        count(&daemon.log(), "snapshot complete") > done
    });
    assert!(recovered, "no snapshot after S3 came back; log:\n{}", daemon.log());
    let latest = common::assert_head_verifies(&previous);
    assert_ne!(latest.as_deref(), Some(seeded.as_str()));
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
    remove_container(&container);
}

/// Drill 4a: a restore killed during extraction leaves the previous state as it was.
#[test]
fn drill_restore_killed_during_extraction_leaves_the_state_intact() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "interrupted", "");
    for i in 0..3 {
        write(
            &world.state.join(format!("big{i}.bin")),
            &noise(60 * 1024 * 1024, i + 1),
            0o644,
        );
    }
    world.ok(&["snapshot"]);
    let other = world.sibling();
    write(&other.state.join("mine.txt"), b"local state", 0o600);
    let before = shape(&other.state);
    for delay_ms in [50u64, 200, 500, 900] {
        let mut child = other.command(&["restore", "--force"]).spawn().expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let finished = child.wait().expect("wait");
        if finished.success() {
            break; // it beat the kill: nothing more to interrupt
        }
        assert_eq!(shape(&other.state), before, "killed after {delay_ms} ms: state changed");
    }
    // The next restore cleans the leftovers and completes.
    let out = other.run(&["restore", "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let parent = other.state.parent().expect("parent");
    let leftovers: Vec<_> = fs::read_dir(parent)
        .expect("parent")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "staging leftovers: {leftovers:?}");
}

/// Drill 4b: a target filesystem that fills up: clear error, previous state intact.
#[test]
fn drill_restore_onto_a_full_filesystem_fails_cleanly() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "fullfs", "");
    write(&world.state.join("big.bin"), &noise(30 * 1024 * 1024, 3), 0o644);
    world.ok(&["snapshot"]);
    let small = world.dir.path().join("small");
    fs::create_dir_all(&small).expect("mount point");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must be able to mount a tmpfs"
        );
        eprintln!("skipping: cannot mount a tmpfs here");
        return;
    }
    let mut other = World::with_endpoint(&world.endpoint, "fullfs", "");
    other.state = small.join("state");
    other.work = small.join("work");
    other.write_config("");
    write(&other.state.join("mine.txt"), b"local state", 0o600);
    let before = shape(&other.state);
    let (code, stderr) = failure(&other.run(&["restore", "--force"]));
    let after = shape(&other.state);
    let _ = std::process::Command::new("umount").arg(&small).status();
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(after, before, "previous state intact");
}

/// Drill 6: two daemons on one prefix: the second writer is detected and refuses to replace
/// latest.json, with a clear error.
#[test]
fn drill_two_daemons_on_one_prefix_the_second_writer_is_refused() {
    if !docker_available() {
        return;
    }
    let t = setup("twins", "", "");
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    let mut first = Daemon::start(&t.world);
    running(&t.world, &first);
    let has_snapshot = wait_for(Duration::from_secs(60), || {
        status(&t.world).is_some_and(|s| s["last_snapshot"]["id"].is_string())
    });
    assert!(has_snapshot);
    // A second instance on the same prefix (a mistake: two ASGs, a forgotten instance).
    let twin = World::with_endpoint(&t.world.endpoint, &t.world.bucket, &t.world.prefix);
    let (twin_container, _) = configure_daemon(&twin, &t.moto, "twins2", "", "");
    t.moto.put_parameter("/openclaw/twins2/API_KEY", "x");
    // The twin only snapshots when asked, so the order of events is the test's.
    let config = fs::read_to_string(&twin.config).expect("config");
    fs::write(
        &twin.config,
        config.replacen("interval = \"3s\"", "interval = \"1h\"", 1),
    )
    .expect("config");
    let mut second = Daemon::start(&twin);
    running(&twin, &second);
    // The first daemon moves latest.json on: the twin no longer descends from it.
    let base = status(&t.world).expect("status")["last_snapshot"]["id"].clone();
    let moved = wait_for(Duration::from_secs(60), || {
        status(&t.world).is_some_and(|s| s["last_snapshot"]["id"] != base)
    });
    assert!(moved, "log:\n{}", first.log());
    let (code, stderr) = failure(&twin.run(&["snapshot"]));
    assert_eq!(code, 7, "{stderr}");
    assert!(stderr.contains("refusing to replace the latest snapshot"), "{stderr}");
    let latest: serde_json::Value =
        serde_json::from_slice(&t.s3.object("daemon", &t.world.key("latest.json"))).expect("latest");
    // writer-id: the id, then the machine identity it belongs to.
    let first_writer = fs::read_to_string(t.world.work.join("writer-id")).expect("writer id");
    assert_eq!(
        latest["writer"],
        serde_json::json!(first_writer.lines().next().unwrap_or_default().trim()),
        "latest.json is the first writer's"
    );
    common::assert_head_verifies(&t.world);
    // Its final snapshot is refused too: it exits with the documented "refused" code.
    assert_eq!(second.stop().code(), Some(7), "log:\n{}", second.log());
    assert!(first.stop().success());
    remove_container(&t.container);
    remove_container(&twin_container);
}

/// Drill 8: the Docker events stream ends under the daemon (as on an engine restart): the
/// daemon reconnects and supervision resumes.
#[test]
fn drill_docker_events_stream_cut_reconnects_and_supervision_resumes() {
    if !docker_available() {
        return;
    }
    let t = setup("events", "", "");
    let proxy = DockerProxy::start(t.world.dir.path());
    let config = fs::read_to_string(&t.world.config).expect("config");
    let config = config.replacen(
        "[daemon]\n",
        &format!("[daemon]\ndocker_host = \"unix://{}\"\n", proxy.path.display()),
        1,
    );
    fs::write(&t.world.config, config).expect("config");
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    let mut daemon = Daemon::start(&t.world);
    running(&t.world, &daemon);
    proxy.cut();
    let reconnected = wait_for(Duration::from_secs(60), || {
        daemon.log().contains("events stream reconnected")
    });
    assert!(reconnected, "log:\n{}", daemon.log());
    // Supervision works again: a killed container is restarted.
    docker(&["kill", &t.container]);
    let restarted = wait_for(Duration::from_secs(60), || {
        status(&t.world).is_some_and(|s| s["container"]["restarts"].as_u64() >= Some(1))
    });
    assert!(restarted, "log:\n{}", daemon.log());
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
    remove_container(&t.container);
}

/// A first snapshot killed between its restic snapshot and latest.json: with local state the daemon keeps it
/// and carries on; on an empty machine it refuses to guess rather than start fresh.
#[test]
fn drill_complete_snapshot_without_latest_keeps_local_state_and_never_starts_fresh() {
    if !docker_available() {
        return;
    }
    let t = setup("nolatest", "", "");
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    write(&t.world.state.join("mine.txt"), b"local", 0o644);
    t.world.ok(&["snapshot"]);
    // What the kill leaves: the snapshot is complete, latest.json was never written.
    let latest = t.s3.root.path().join(&t.world.bucket).join(t.world.key("latest.json"));
    fs::remove_file(&latest).expect("remove latest.json");
    let mut daemon = Daemon::start(&t.world);
    running(&t.world, &daemon);
    assert_eq!(fs::read(t.world.state.join("mine.txt")).expect("kept"), b"local");
    let published = wait_for(Duration::from_secs(60), || latest.exists());
    assert!(
        published,
        "latest.json not written by the next snapshot; log:\n{}",
        daemon.log()
    );
    assert!(daemon.stop().success());

    // Another, empty machine on that prefix with latest.json gone again: refused, nothing started.
    fs::remove_file(&latest).expect("remove latest.json");
    let empty = World::with_endpoint(&t.world.endpoint, &t.world.bucket, &t.world.prefix);
    let (container, _) = configure_daemon(&empty, &t.moto, "nolatest2", "", "");
    t.moto.put_parameter("/openclaw/nolatest2/API_KEY", "x");
    fs::remove_dir(&empty.state).expect("empty state");
    let mut refused = Daemon::start(&empty);
    let exited = refused.wait_exit(Duration::from_secs(60));
    assert_eq!(exited.and_then(|s| s.code()), Some(7), "log:\n{}", refused.log());
    assert!(refused.log().contains("refusing to guess"), "log:\n{}", refused.log());
    assert!(!empty.state.exists(), "no fresh start");
    remove_container(&container);
}
