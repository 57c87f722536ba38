//! Spot notices and CloudWatch metrics: the real binary, Docker with the fake OpenClaw, s3s-fs,
//! moto (SSM), LocalStack (CloudWatch) and a fake IMDSv2 server.

mod common;

use std::fs;
use std::time::Duration;

use common::{
    Daemon, FakeImds, LocalStack, docker, docker_available, http_get, remove_container, setup, shape, status, wait_for,
};

#[test]
fn a_spot_notice_becomes_a_complete_final_snapshot_and_metrics_tell_the_operator() {
    if !docker_available() {
        return;
    }
    let imds = FakeImds::start();
    let cloudwatch = LocalStack::start();
    let stack = format!("drill-{}", std::process::id());
    let extra = format!(
        "[spot]\nenabled = true\nimds_endpoint = {:?}\npoll = \"1s\"\n\n\
         [metrics]\nenabled = true\nnamespace = \"SpotkeeperTest\"\nendpoint = {:?}\ndimensions = {{ Stack = {stack:?} }}\n",
        imds.endpoint(),
        cloudwatch.endpoint()
    );
    let t = setup("spot", "", &extra);
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    let mut daemon = Daemon::start(&t.world);
    let running = wait_for(Duration::from_secs(120), || {
        status(&t.world).is_some_and(|s| s["phase"] == "running" && s["last_snapshot"]["id"].is_string())
    });
    assert!(running, "daemon not running; log:\n{}", daemon.log());
    assert_eq!(status(&t.world).expect("status")["instance_id"], "i-0123456789abcdef0");

    // A rebalance recommendation: one extra snapshot right away.
    imds.set_rebalance(chrono::Utc::now());
    let extra_snapshot = wait_for(Duration::from_secs(30), || {
        daemon.log().contains("rebalance recommendation")
    });
    assert!(extra_snapshot, "log:\n{}", daemon.log());

    // A 100 MB change since the last snapshot (the fake also writes about 50 times a second).
    common::write(
        &t.world.state.join("media/new.bin"),
        &common::noise(100 * 1024 * 1024, 42),
        0o644,
    );
    // Two minutes' notice:
    let deadline = chrono::Utc::now() + chrono::TimeDelta::seconds(120);
    imds.set_instance_action("terminate", deadline);
    let handled = wait_for(Duration::from_secs(120), || {
        daemon.log().contains("interrupted: final snapshot done")
    });
    assert!(handled, "interruption not handled; log:\n{}", daemon.log());
    if let Some(line) = daemon
        .log()
        .lines()
        .find(|l| l.contains("interrupted: final snapshot done"))
    {
        eprintln!("drill 1: {line}");
    }
    let s = status(&t.world).expect("daemon still answers");
    assert_eq!(s["phase"], "interrupted");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &t.container]), "false");
    // Not restarted: the instance is going away.
    assert!(http_get(t.port, "/healthz").is_none());

    // The latest snapshot holds every write acknowledged before the container stopped.
    let final_dir = t.world.dir.path().join("final");
    t.world.ok(&["restore", "--to", final_dir.to_str().expect("utf8")]);
    let mut local = shape(&t.world.state);
    local.remove(".env");
    assert_eq!(shape(&final_dir), local);
    // The head is the final snapshot the interrupted daemon took.
    assert_eq!(
        common::head_id(&t.world).as_deref(),
        s["last_snapshot"]["id"].as_str(),
        "the final snapshot is the head: {s}"
    );

    // The daily drill, by hand.
    let drill = t.world.json(&["verify", "--deep", "--json"]);
    assert_eq!(drill["databases"][0], "memory/main.sqlite", "{drill}");

    // Metrics reached CloudWatch, with their dimensions.
    let names = [
        "SnapshotSuccess",
        "FreezeWindow",
        "ArchiveBytes",
        "SpotNoticeReceived",
        "SnapshotDuration",
    ];
    let mut sums = Default::default();
    let delivered = wait_for(Duration::from_secs(30), || {
        sums = cloudwatch.metric_sums("SpotkeeperTest", &stack, &names);
        names.iter().all(|n| sums.contains_key(*n))
    });
    assert!(delivered, "metrics missing: {sums:?}; log:\n{}", daemon.log());
    assert_eq!(sums["SpotNoticeReceived"], 1.0);
    assert!(sums["SnapshotSuccess"] >= 2.0, "{sums:?}");

    // IMDSv2 only: a token was fetched and reused.
    let state = imds.state.lock().expect("imds");
    assert!(
        state.tokens_issued >= 1 && state.gets > state.tokens_issued,
        "tokens {} gets {}",
        state.tokens_issued,
        state.gets
    );
    drop(state);

    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
    remove_container(&t.container);
    let _ = fs::remove_dir_all(&final_dir);
}

#[test]
fn without_imds_the_watcher_is_disabled_and_the_daemon_carries_on() {
    if !docker_available() {
        return;
    }
    let closed = common::free_port();
    let extra = format!("[spot]\nenabled = true\nimds_endpoint = \"http://127.0.0.1:{closed}\"\n");
    let t = setup("noimds", "", &extra);
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    let mut daemon = Daemon::start(&t.world);
    let running = wait_for(Duration::from_secs(120), || {
        status(&t.world).is_some_and(|s| s["phase"] == "running")
    });
    assert!(running, "log:\n{}", daemon.log());
    assert!(daemon.log().contains("not on EC2"), "log:\n{}", daemon.log());
    assert!(daemon.stop().success());
    remove_container(&t.container);
}

/// Issue 24's Spot order, with OpenClaw's 90-second drain: on the notice a frozen snapshot of
/// the running gateway first, then SIGTERM with what is left of the two minutes, then the final
/// snapshot. Everything the gateway acknowledged before the notice is in the snapshots, and the
/// final upload lands before the deadline.
#[test]
fn a_spot_notice_with_a_90_second_drain_snapshots_first_and_lands_before_the_deadline() {
    if !docker_available() {
        return;
    }
    let imds = FakeImds::start();
    let extra = format!(
        "[spot]\nenabled = true\nimds_endpoint = {:?}\npoll = \"1s\"\n",
        imds.endpoint()
    );
    let t = setup("spot90", "", &extra);
    t.edit_config(|config| {
        config
            .replace("stop_timeout = \"20s\"", "stop_timeout = \"90s\"")
            .replace("DRAIN_MS = \"300\"", "DRAIN_MS = \"90000\"")
    });
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    let mut daemon = Daemon::start(&t.world);
    let running = wait_for(Duration::from_secs(120), || {
        status(&t.world).is_some_and(|s| s["phase"] == "running" && s["last_snapshot"]["id"].is_string())
    });
    assert!(running, "daemon not running; log:\n{}", daemon.log());

    // Every write cycle up to this one was acknowledged before the notice.
    let acked_before = read_ack(&t.world.state);
    let deadline = chrono::Utc::now() + chrono::TimeDelta::seconds(120);
    imds.set_instance_action("terminate", deadline);
    let handled = wait_for(Duration::from_secs(150), || {
        let log = daemon.log();
        log.contains("interrupted: final snapshot done") || log.contains("final snapshot FAILED")
    });
    let log = daemon.log();
    assert!(handled, "interruption not handled; log:\n{log}");
    let done = log
        .lines()
        .find(|l| l.contains("interrupted: final snapshot done"))
        .unwrap_or_else(|| panic!("the final snapshot failed; log:\n{log}"));
    eprintln!("drill: {done}");
    // The order: the frozen snapshot, then the stop, then the final snapshot.
    let first = log
        .find("the running app's state is in a snapshot")
        .expect("a snapshot first");
    let stop = log.find("Spot notice: stopping the app").expect("then the stop");
    let last = log
        .find("interrupted: final snapshot done")
        .expect("then the final snapshot");
    assert!(first < stop && stop < last, "order; log:\n{log}");
    // Before the deadline (the line says how many seconds were left).
    let left: i64 = done
        .split(" s before the deadline")
        .next()
        .and_then(|head| head.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no seconds left in {done:?}"));
    assert!(left >= 0, "the final snapshot landed after the deadline: {done}");

    // Nothing acknowledged before the notice is lost: the head holds it all, and the drained
    // gateway's last write too.
    let restored = t.world.dir.path().join("restored");
    t.world.ok(&["restore", "--to", restored.to_str().expect("utf8")]);
    let restored_ack = read_ack(&restored);
    assert!(
        restored_ack >= acked_before,
        "restored ack {restored_ack} < {acked_before} acknowledged before the notice"
    );
    assert_eq!(
        restored_ack,
        read_ack(&t.world.state),
        "the final snapshot is the drained state"
    );
    let db = rusqlite::Connection::open(restored.join("memory/main.sqlite")).expect("restored db");
    let rows: i64 = db
        .query_row(
            "SELECT count(*) FROM memory WHERE seq <= ?1",
            [acked_before as i64],
            |r| r.get(0),
        )
        .expect("count");
    let first_seq: i64 = db
        .query_row("SELECT min(seq) FROM memory", [], |r| r.get(0))
        .expect("min");
    assert_eq!(rows, acked_before as i64 - first_seq + 1, "every acknowledged row");
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
    remove_container(&t.container);
}

fn read_ack(state: &std::path::Path) -> u64 {
    fs::read_to_string(state.join("ack.txt"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}
