//! spotkeeper's own log lines to CloudWatch Logs (`[logs]`): the real binary, Docker with the
//! fake OpenClaw, s3s-fs, moto (SSM) and LocalStack (CloudWatch Logs).

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, LocalStack, docker_available, free_port, setup, status, wait_for};

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

fn logs_client(endpoint: &str) -> aws_sdk_cloudwatchlogs::Client {
    let credentials =
        aws_sdk_cloudwatchlogs::config::Credentials::new(common::ACCESS_KEY, common::SECRET_KEY, None, None, "tests");
    let config = aws_sdk_cloudwatchlogs::config::Builder::new()
        .behavior_version(aws_sdk_cloudwatchlogs::config::BehaviorVersion::latest())
        .region(aws_sdk_cloudwatchlogs::config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_cloudwatchlogs::Client::from_conf(config)
}

/// The messages in `group`/`stream`, oldest first (empty while the stream does not exist).
fn messages(client: &aws_sdk_cloudwatchlogs::Client, group: &str, stream: &str) -> Vec<String> {
    let answer = block_on(
        client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .send(),
    );
    answer
        .map(|out| {
            out.events()
                .iter()
                .filter_map(|e| e.message().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_daemon_ships_its_own_lines_to_a_stream_it_creates() {
    if !docker_available() {
        return;
    }
    let localstack = LocalStack::start();
    let client = logs_client(&localstack.endpoint());
    let group = format!("/spotkeeper/logs-test-{}", std::process::id());
    let stream = "openclaw-logs-test/spotkeeper";
    block_on(client.create_log_group().log_group_name(&group).send()).expect("create the log group");
    let extra = format!(
        "\n[logs]\ngroup = {group:?}\nstream = {stream:?}\nendpoint = {:?}\nflush = \"1s\"\n",
        localstack.endpoint()
    );
    let t = setup("logs", "", &extra);
    let secret = format!("sk-logs-secret-{}", std::process::id());
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), &secret);
    let mut daemon = Daemon::start(&t.world);

    let mut lines = Vec::new();
    let shipped = wait_for(Duration::from_secs(120), || {
        std::thread::sleep(Duration::from_millis(500));
        lines = messages(&client, &group, stream);
        lines.iter().any(|l| l.contains("snapshot complete"))
    });
    assert!(
        shipped,
        "no \"snapshot complete\" in {group}/{stream}: {lines:#?}\nlog:\n{}",
        daemon.log()
    );
    // spotkeeper created the stream (the test made only the group), and said so on stderr only.
    assert!(daemon.log().contains("log stream created"), "log:\n{}", daemon.log());
    assert!(!lines.iter().any(|l| l.contains("log stream created")), "{lines:#?}");
    // Plain lines: the level first, no colours, nothing that was not logged already.
    assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.starts_with("INFO snapshot complete")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains(&secret)),
        "a secret reached CloudWatch Logs"
    );

    let s = status(&t.world).expect("status");
    assert!(s["logs"]["shipped"].as_u64().is_some_and(|n| n > 0), "{s}");
    assert_eq!(s["logs"]["dropped"], 0, "{s}");

    // The final snapshot's outcome is flushed on the way out.
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
    let last = wait_for(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(200));
        lines = messages(&client, &group, stream);
        lines.iter().any(|l| l.contains("final snapshot done"))
    });
    assert!(last, "the final flush did not arrive: {lines:#?}");
}

#[test]
fn with_cloudwatch_logs_unreachable_lines_are_dropped_and_counted_and_backups_go_on() {
    if !docker_available() {
        return;
    }
    let closed = free_port();
    // The drops are published where the other metrics go.
    let cloudwatch = LocalStack::start();
    let stack = format!("logs-down-{}", std::process::id());
    let extra = format!(
        "\n[logs]\ngroup = \"/spotkeeper/nowhere\"\nstream = \"nowhere/spotkeeper\"\n\
         endpoint = \"http://127.0.0.1:{closed}\"\nbuffer_events = 20\nflush = \"1s\"\n\n\
         [metrics]\nnamespace = \"SpotkeeperTest\"\nendpoint = {:?}\ndimensions = {{ Stack = {stack:?} }}\n",
        cloudwatch.endpoint()
    );
    let t = setup("logs-down", "", &extra);
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    let started = Instant::now();
    let mut daemon = Daemon::start(&t.world);

    let mut first = serde_json::Value::Null;
    let dropping = wait_for(Duration::from_secs(120), || {
        std::thread::sleep(Duration::from_millis(200));
        first = status(&t.world).unwrap_or_default();
        first["last_snapshot"]["id"].is_string() && first["logs"]["dropped"].as_u64().is_some_and(|n| n > 0)
    });
    assert!(dropping, "status: {first}\nlog:\n{}", daemon.log());
    assert_eq!(first["logs"]["shipped"], 0, "{first}");

    // Snapshots go on (every 3 s) while nothing reaches CloudWatch Logs.
    let mut later = serde_json::Value::Null;
    let more = wait_for(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(200));
        later = status(&t.world).unwrap_or_default();
        later["last_snapshot"]["id"].is_string() && later["last_snapshot"]["id"] != first["last_snapshot"]["id"]
    });
    assert!(
        more,
        "no snapshot after {}: {later}\nlog:\n{}",
        first["last_snapshot"]["id"],
        daemon.log()
    );
    assert!(
        later["logs"]["dropped"].as_u64() >= first["logs"]["dropped"].as_u64(),
        "{later}"
    );
    // Warned on stderr, at most once a minute.
    let warnings = daemon.log().matches("cannot reach CloudWatch Logs").count();
    let bound = 1 + started.elapsed().as_secs() / 60;
    assert!(
        (1..=bound as usize).contains(&warnings),
        "{warnings} warnings; log:\n{}",
        daemon.log()
    );

    // Gauges go out at start and every minute: wait for the second, with drops behind it.
    std::thread::sleep(Duration::from_secs(65).saturating_sub(started.elapsed()));

    let stopping = Instant::now();
    let exit = daemon.stop();
    let took = stopping.elapsed();
    eprintln!("stopped in {took:?} with CloudWatch Logs unreachable");
    assert!(exit.success(), "log:\n{}", daemon.log());
    // The container's 20 s stop timeout and the final snapshot bound the stop; the last flush
    // adds at most 2 s.
    assert!(
        took < Duration::from_secs(40),
        "stop took {took:?}; log:\n{}",
        daemon.log()
    );

    // The stop flushed the metrics.
    let mut sums = Default::default();
    let published = wait_for(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(500));
        sums = cloudwatch.metric_sums("SpotkeeperTest", &stack, &["LogEventsDropped"]);
        sums.get("LogEventsDropped").is_some_and(|sum| *sum > 0.0)
    });
    assert!(published, "LogEventsDropped: {sums:?}; log:\n{}", daemon.log());
    eprintln!("LogEventsDropped sum {sums:?}");
}
