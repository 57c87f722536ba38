//! Faults in Docker, S3 and the repository against the real daemon (real binary, the machine's
//! Docker Engine behind a proxy that makes chosen calls fail, s3s-fs, moto): no fault loses a
//! change, leaves the container frozen, skips the final snapshot, or counts a planned stop as a
//! crash. Each test names the items of docs/reliability.md ("Faults in the daemon") it covers.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{
    Daemon, DockerProxy, Setup, World, configure_daemon, docker, docker_available, failure, remove_container, setup,
    status, wait_for, write,
};

/// A daemon world whose Docker calls go through a fault proxy, with snapshots only on request.
fn faulty(name: &str, extra_container: &str) -> (Setup, DockerProxy) {
    let t = setup(name, extra_container, "");
    let proxy = DockerProxy::start(t.world.dir.path());
    let config = fs::read_to_string(&t.world.config).expect("config");
    let config = config.replacen("interval = \"3s\"", "interval = \"1h\"", 1).replacen(
        "[daemon]\n",
        &format!("[daemon]\ndocker_host = {:?}\n", proxy.host()),
        1,
    );
    fs::write(&t.world.config, config).expect("config");
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    (t, proxy)
}

fn running(world: &World, daemon: &Daemon) {
    let ok = wait_for(Duration::from_secs(120), || {
        status(world).is_some_and(|s| s["phase"] == "running")
    });
    assert!(ok, "daemon not running; log:\n{}", daemon.log());
}

fn container_running(name: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}} {{.State.Paused}}", name]) == "true false"
}

/// The content of `relative` in what the latest snapshot restores to.
fn latest_file(world: &World, relative: &str) -> Vec<u8> {
    let to = world.dir.path().join(format!("check-{}", common::free_port()));
    world.ok(&["restore", "--to", to.to_str().expect("utf-8")]);
    let body = fs::read(to.join(relative)).unwrap_or_default();
    let _ = fs::remove_dir_all(&to);
    body
}

/// The restic snapshots in the repository (format 2's `repo/snapshots/`, one object each).
fn snapshot_count(t: &Setup) -> usize {
    let dir =
        t.s3.root
            .path()
            .join(&t.world.bucket)
            .join(t.world.key("repo/snapshots"));
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Items 1 and 5: with `consistency = "stop"`, a start that fails after the copy loses nothing
/// (the change is uploaded, the container is started again by the supervisor), and planned stops
/// never add up to a crash loop.
#[test]
fn stop_consistency_failed_start_loses_nothing_and_planned_stops_are_not_crashes() {
    if !docker_available() {
        return;
    }
    let (t, proxy) = faulty("stopfail", "consistency = \"stop\"\nrestart_limit = 3");
    let mut daemon = Daemon::start(&t.world);
    running(&t.world, &daemon);
    for round in 0..5 {
        write(&t.world.state.join("round.txt"), format!("{round}").as_bytes(), 0o644);
        let out = t.world.json(&["snapshot", "--json"]);
        assert_eq!(out["outcome"], "uploaded", "round {round}: {out}");
        assert!(
            wait_for(Duration::from_secs(30), || container_running(&t.container)),
            "round {round}"
        );
    }
    let s = status(&t.world).expect("status");
    assert_eq!(s["phase"], "running", "planned stops counted as crashes: {s}");
    assert_eq!(s["container"]["crash_loop"], false, "{s}");
    assert_eq!(s["container"]["restarts"], 0, "{s}");

    // One failed start after the copy: the change still reaches the latest snapshot.
    write(&t.world.state.join("marker.txt"), b"v2", 0o644);
    proxy.fail("POST", &format!("/containers/{}/start", t.container), 1);
    let out = t.world.json(&["snapshot", "--json"]);
    assert_eq!(out["outcome"], "uploaded", "{out}\nlog:\n{}", daemon.log());
    assert_eq!(
        proxy.failed("POST", "/start"),
        1,
        "the snapshot did not stop and start the container: {out}\nrequests: {:?}\nlog:\n{}",
        proxy.seen(),
        daemon.log()
    );
    assert_eq!(latest_file(&t.world, "marker.txt"), b"v2");
    // The supervisor starts it again after its backoff.
    assert!(
        wait_for(Duration::from_secs(60), || container_running(&t.container)),
        "not restarted; log:\n{}",
        daemon.log()
    );
    write(&t.world.state.join("marker.txt"), b"v3", 0o644);
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
    assert_eq!(latest_file(&t.world, "marker.txt"), b"v3", "final snapshot");
}

/// A slow boot after a stop-consistency snapshot is not a failed health check: with probes
/// every second and an app that answers only after 6 s, the daemon used to count three
/// failures, stop the booting app and restart it, every snapshot.
#[test]
fn a_slow_boot_after_a_stop_snapshot_is_not_a_failed_health_check() {
    if !docker_available() {
        return;
    }
    let (t, _proxy) = faulty("slowboot", "consistency = \"stop\"");
    let config = fs::read_to_string(&t.world.config).expect("config");
    let config = config.replacen(
        "[container.environment]\n",
        "[container.environment]\nBOOT_MS = \"6000\"\n",
        1,
    );
    fs::write(&t.world.config, config).expect("config");
    let mut daemon = Daemon::start(&t.world);
    running(&t.world, &daemon);
    write(&t.world.state.join("marker.txt"), b"slow", 0o644);
    let out = t.world.json(&["snapshot", "--json"]);
    assert_eq!(out["outcome"], "uploaded", "{out}\nlog:\n{}", daemon.log());
    // The app answers again once its boot is over; by then three probes have failed.
    assert!(
        wait_for(Duration::from_secs(90), || common::http_get(t.port, "/healthz")
            .is_some()),
        "the app never answered again; log:\n{}",
        daemon.log()
    );
    let s = status(&t.world).expect("status");
    assert_eq!(
        s["container"]["restarts"],
        0,
        "a booting app was restarted: {s}\nlog:\n{}",
        daemon.log()
    );
    assert_eq!(s["phase"], "running", "{s}");
    assert_eq!(
        common::count(&daemon.log(), "health check failed"),
        0,
        "{}",
        daemon.log()
    );
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
}

/// Items 9, 3, 8 and 2, in one daemon's life: an inspect error fails the snapshot instead of
/// copying the live state, and the change stays pending; a thaw that fails past its retries is
/// reported and retried until the container runs again; a manual restore of an unknown snapshot
/// stops nothing; and SIGTERM while Docker refuses to stop the container still ends with a final
/// snapshot (the container is killed).
#[test]
fn docker_faults_never_lose_a_change_nor_leave_the_app_frozen() {
    if !docker_available() {
        return;
    }
    let (t, proxy) = faulty("dockerfault", "");
    let mut daemon = Daemon::start(&t.world);
    running(&t.world, &daemon);

    // 9: inspect fails once.
    write(&t.world.state.join("marker.txt"), b"inspect", 0o644);
    proxy.fail("GET", &format!("/containers/{}/json", t.container), 1);
    let (code, stderr) = failure(&t.world.run(&["snapshot"]));
    assert_eq!(code, 6, "{stderr}");
    assert_eq!(proxy.failed("GET", "/json"), 1);
    assert_eq!(proxy.failed("POST", "/pause"), 0);
    let out = t.world.json(&["snapshot", "--json"]);
    assert_eq!(out["outcome"], "uploaded", "the change stayed pending: {out}");
    assert_eq!(latest_file(&t.world, "marker.txt"), b"inspect");

    // What the mirror's walk skipped (a FIFO is never opened) is listed by the daemon's snapshot.
    let fifo = t.world.state.join("app.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let out = t.world.json(&["snapshot", "--json"]);
    assert!(out["skipped"].as_u64() >= Some(1), "{out}");
    let skipped = common::newest_skipped(&t.world);
    assert!(
        skipped.iter().any(|(path, _)| path.ends_with("app.fifo")),
        "{skipped:?}"
    );
    fs::remove_file(&fifo).expect("remove fifo");

    // 3: unpause fails more often than one thaw retries.
    proxy.fail("POST", &format!("/containers/{}/unpause", t.container), 12);
    write(&t.world.state.join("marker.txt"), b"thaw", 0o644);
    let out = t.world.json(&["snapshot", "--json"]);
    assert_eq!(out["outcome"], "uploaded", "{out}");
    assert!(daemon.log().contains("CONTAINER LEFT FROZEN"), "log:\n{}", daemon.log());
    let thawed = wait_for(Duration::from_secs(90), || {
        container_running(&t.container) && status(&t.world).is_some_and(|s| s["container"]["frozen_error"].is_null())
    });
    assert!(thawed, "still frozen; log:\n{}", daemon.log());
    assert_eq!(proxy.failed("POST", "/unpause"), 12);

    // 8: an unknown snapshot is refused before anything is stopped.
    let started_at = docker(&["inspect", "-f", "{{.State.StartedAt}}", &t.container]);
    let before = snapshot_count(&t);
    let (code, stderr) = failure(&t.world.run(&["restore", "--snapshot", "2020-01-01-00-00"]));
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("2020-01-01-00-00"), "{stderr}");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &t.container]),
        started_at
    );
    assert_eq!(snapshot_count(&t), before, "no safety snapshot for a refused restore");

    // 8: `snapshot --json` has one schema with and without the daemon.
    let through_daemon = t.world.json(&["snapshot", "--json"]);
    let alone = World::new(&t.s3, &t.world.bucket, "dockerfault-alone");
    write(&alone.state.join("a.txt"), b"a", 0o644);
    let without = alone.json(&["snapshot", "--json"]);
    let keys = |v: &serde_json::Value| {
        let mut keys: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        keys.sort();
        keys
    };
    if through_daemon["outcome"] == "uploaded" {
        assert_eq!(keys(&through_daemon), keys(&without));
    }
    assert_eq!(without["outcome"], "uploaded");

    // 2: SIGTERM while every stop fails.
    write(&t.world.state.join("marker.txt"), b"final", 0o644);
    proxy.fail("POST", &format!("/containers/{}/stop", t.container), 100);
    let exit = daemon.stop();
    assert!(exit.success(), "exit {exit:?}; log:\n{}", daemon.log());
    assert!(proxy.failed("POST", "/stop") >= 1);
    assert!(daemon.log().contains("killing the container"), "log:\n{}", daemon.log());
    assert_eq!(latest_file(&t.world, "marker.txt"), b"final");
    assert!(!container_running(&t.container));
    assert!(
        !t.world.dir.path().join("run/openclaw/.env").exists(),
        "the secrets file is removed on stop"
    );
}

/// Items 11, 6 and 7: an engine without the configured log driver gets `local` with a warning;
/// a container removed behind the daemon's back is recreated; and with the daemon gone, a restore
/// into the state directory refuses while the container still runs on it.
#[test]
fn log_driver_fallback_recreation_and_no_restore_under_a_running_container() {
    if !docker_available() {
        return;
    }
    let t = setup("recreate", "", "");
    let config = fs::read_to_string(&t.world.config).expect("config");
    let config = config
        .replacen("log_driver = \"json-file\"", "log_driver = \"no-such-driver\"", 1)
        .replacen("interval = \"3s\"", "interval = \"1h\"", 1);
    fs::write(&t.world.config, config).expect("config");
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    let mut daemon = Daemon::start(&t.world);
    running(&t.world, &daemon);
    let s = status(&t.world).expect("status");
    assert_eq!(s["container"]["log_driver"], "local", "{s}");
    assert!(s["warnings"].to_string().contains("no-such-driver"), "{s}");
    assert_eq!(
        docker(&["inspect", "-f", "{{.HostConfig.LogConfig.Type}}", &t.container]),
        "local"
    );

    // 6: docker rm -f.
    remove_container(&t.container);
    let recreated = wait_for(Duration::from_secs(60), || container_running(&t.container));
    assert!(recreated, "log:\n{}", daemon.log());
    assert_eq!(status(&t.world).expect("status")["phase"], "running");

    // 7: the daemon dies; its container keeps running on the state directory.
    write(&t.world.state.join("mine.txt"), b"local", 0o644);
    t.world.ok(&["snapshot"]);
    daemon.kill();
    assert!(container_running(&t.container));
    let out = t.world.run(&["restore", "--force"]);
    let (code, stderr) = failure(&out);
    assert_eq!(code, 7, "{stderr}");
    assert!(
        stderr.contains(&t.container) && stderr.contains("docker stop"),
        "{stderr}"
    );
    assert_eq!(fs::read(t.world.state.join("mine.txt")).expect("untouched"), b"local");
    assert!(!spotkeeper_displaced(&t.world.state).exists(), "nothing moved aside");
    // Once it is stopped, the same restore goes ahead.
    docker(&["stop", "-t", "5", &t.container]);
    t.world.ok(&["restore", "--force"]);
    remove_container(&t.container);
}

fn spotkeeper_displaced(state: &Path) -> std::path::PathBuf {
    let name = state.file_name().expect("name").to_string_lossy().to_string();
    state.with_file_name(format!("{name}.displaced"))
}

/// Item 10: a `latest.json` that cannot be read does not stop a machine with good local
/// state (kept, and backups go on, replacing the damaged pointer), and an empty machine restores
/// the newest complete snapshot instead of retrying forever.
#[test]
fn an_unreadable_latest_falls_back_on_the_newest_complete_snapshot() {
    if !docker_available() {
        return;
    }
    let t = setup("badlatest", "", "");
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    write(&t.world.state.join("mine.txt"), b"v1", 0o644);
    t.world.ok(&["snapshot"]);
    let latest_key = t.world.key("latest.json");
    // Through S3 itself: an object that reads back fine and is not a pointer.
    t.s3.put_object(&t.world.bucket, &latest_key, b"{ damaged");

    let mut daemon = Daemon::start(&t.world);
    running(&t.world, &daemon);
    assert_eq!(fs::read(t.world.state.join("mine.txt")).expect("kept"), b"v1");
    write(&t.world.state.join("mine.txt"), b"v2", 0o644);
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
    assert!(
        serde_json::from_slice::<serde_json::Value>(&t.s3.object(&t.world.bucket, &latest_key)).is_ok(),
        "the final snapshot replaced the damaged pointer"
    );
    assert_eq!(latest_file(&t.world, "mine.txt"), b"v2");
    remove_container(&t.container);

    // An empty machine, latest.json damaged again: it restores the newest complete snapshot.
    t.s3.put_object(&t.world.bucket, &latest_key, b"{ damaged");
    let empty = World::with_endpoint(&t.world.endpoint, &t.world.bucket, &t.world.prefix);
    let (container, _) = configure_daemon(&empty, &t.moto, "badlatest2", "", "");
    t.moto.put_parameter("/openclaw/badlatest2/API_KEY", "x");
    fs::remove_dir(&empty.state).expect("empty state");
    let mut second = Daemon::start(&empty);
    running(&empty, &second);
    assert_eq!(fs::read(empty.state.join("mine.txt")).expect("restored"), b"v2");
    second.kill();
    remove_container(&container);
}

/// Item 12: copies of displaced local state do not pile up on the root disk.
#[test]
fn displaced_copies_are_pruned_to_the_newest_two() {
    let s3 = common::S3Server::start();
    let world = World::new(&s3, "displaced", "lab");
    write(&world.state.join("a.txt"), b"a", 0o644);
    world.ok(&["snapshot"]);
    let root = spotkeeper_displaced(&world.state);
    for round in 0..4 {
        write(&world.state.join("local.txt"), format!("{round}").as_bytes(), 0o644);
        world.ok(&["restore", "--force"]);
    }
    let kept: Vec<_> = fs::read_dir(&root).expect("displaced root").flatten().collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
}

/// Item 2, the last resort: Docker refuses both stop and kill. The container is frozen for the
/// final snapshot, which holds the last write, and thawed before the daemon exits.
#[test]
fn sigterm_when_docker_refuses_stop_and_kill_freezes_for_the_final_snapshot_then_thaws() {
    if !docker_available() {
        return;
    }
    let (t, proxy) = faulty("nokill", "");
    let mut daemon = Daemon::start(&t.world);
    running(&t.world, &daemon);
    write(&t.world.state.join("marker.txt"), b"frozen-final", 0o644);
    proxy.fail("POST", &format!("/containers/{}/stop", t.container), 100);
    proxy.fail("POST", &format!("/containers/{}/kill", t.container), 100);
    let exit = daemon.stop();
    assert!(exit.success(), "exit {exit:?}; log:\n{}", daemon.log());
    assert!(
        daemon.log().contains("freezing the container for the final snapshot"),
        "log:\n{}",
        daemon.log()
    );
    assert!(proxy.failed("POST", "/kill") >= 1);
    assert_eq!(latest_file(&t.world, "marker.txt"), b"frozen-final");
    assert!(
        container_running(&t.container),
        "the container must be left running and thawed, not frozen"
    );
    remove_container(&t.container);
}

/// Issue 11's change tracking in the daemon: with nothing changed, a snapshot freezes nothing and
/// uploads nothing; a change is copied and uploaded, frozen once.
#[test]
fn a_quiet_app_is_never_frozen_and_a_change_is_copied() {
    if !docker_available() {
        return;
    }
    let (t, proxy) = faulty("quiet", "");
    // The fake app writes once at start, then not for an hour.
    let config = fs::read_to_string(&t.world.config).expect("config");
    fs::write(
        &t.world.config,
        config.replacen("WRITE_INTERVAL_MS = \"20\"", "WRITE_INTERVAL_MS = \"3600000\"", 1),
    )
    .expect("config");
    let mut daemon = Daemon::start(&t.world);
    running(&t.world, &daemon);
    let first = t.world.json(&["snapshot", "--json"]);
    assert_eq!(first["outcome"], "uploaded", "{first}");
    let pauses = proxy.requests("POST", "/pause");
    let before = snapshot_count(&t);
    let quiet = t.world.json(&["snapshot", "--json"]);
    assert_eq!(quiet["outcome"], "unchanged", "{quiet}\nlog:\n{}", daemon.log());
    assert_eq!(quiet["freeze_ms"], 0, "{quiet}");
    assert_eq!(
        proxy.requests("POST", "/pause"),
        pauses,
        "nothing changed, nothing frozen"
    );
    assert_eq!(snapshot_count(&t), before);

    write(&t.world.state.join("agents/new.jsonl"), b"{\"seq\":1}\n", 0o644);
    let changed = t.world.json(&["snapshot", "--json"]);
    assert_eq!(changed["outcome"], "uploaded", "{changed}");
    assert_eq!(proxy.requests("POST", "/pause"), pauses + 1);
    assert_eq!(latest_file(&t.world, "agents/new.jsonl"), b"{\"seq\":1}\n");

    // A change left alone for over a second is copied before the freeze (the presync), so the
    // frozen sync finds nothing left to copy: the snapshot must still be uploaded, with it.
    let settled = vec![7u8; 2 << 20];
    write(&t.world.state.join("agents/settled.bin"), &settled, 0o644);
    let written = std::time::SystemTime::now();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::SystemTime::now() < written + Duration::from_millis(1200) {
        assert!(std::time::Instant::now() < deadline, "the clock did not move");
        std::thread::sleep(Duration::from_millis(20));
    }
    let presynced = t.world.json(&["snapshot", "--json"]);
    assert_eq!(presynced["outcome"], "uploaded", "{presynced}\nlog:\n{}", daemon.log());
    assert_eq!(proxy.requests("POST", "/pause"), pauses + 2);
    assert!(
        latest_file(&t.world, "agents/settled.bin") == settled,
        "the presynced file is in the snapshot"
    );
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
    remove_container(&t.container);
}
