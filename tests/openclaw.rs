//! OpenClaw as OpenClaw runs itself (issue 24): the container as its compose file and Fleet's
//! hardened profile create it, probes that hold the gateway to its JSON contract, self-restarts
//! that are not crashes, and the owner lease a restored gateway must reclaim at once. The real
//! binary, Docker with the fake OpenClaw (which models the contract from OpenClaw's sources),
//! s3s-fs and moto; format 2, as deployed.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, docker, docker_available, http_get, http_request, remove_container, setup, status, wait_for};

/// The gateway token the tests put in SSM (OpenClaw's LAN bind needs one).
const TOKEN: &str = "gateway-token-0123456789abcdef";

/// `docker inspect -f TEMPLATE container`.
fn inspect(container: &str, template: &str) -> String {
    docker(&["inspect", "-f", template, container])
}

/// Item 1 and 8: the command, Docker's init, the fixed hostname, Fleet's security profile and
/// the supervisor hint, as `docker inspect` shows them; nothing mounted but the state and the env
/// file; the token in neither the environment nor the command line; the gateway (which refuses a
/// LAN bind without a token, as OpenClaw does) serves on the published port.
#[test]
fn the_container_runs_with_openclaws_command_init_hostname_and_fleets_profile() {
    if !docker_available() {
        return;
    }
    let t = setup("profile", "", "");
    t.container_env("FAKE_REQUIRE_AUTH = \"1\"");
    t.moto
        .put_parameter(&format!("{}OPENCLAW_GATEWAY_TOKEN", t.ssm_path), TOKEN);
    let mut daemon = Daemon::start(&t.world);
    let running = wait_for(Duration::from_secs(120), || {
        status(&t.world).is_some_and(|s| s["phase"] == "running")
    });
    assert!(running, "daemon not running; log:\n{}", daemon.log());

    let c = &t.container;
    assert_eq!(
        inspect(c, "{{json .Config.Cmd}}"),
        r#"["node","dist/index.js","gateway","--bind","lan","--port","18789"]"#
    );
    assert_eq!(inspect(c, "{{.HostConfig.Init}}"), "true");
    assert_eq!(inspect(c, "{{.Config.Hostname}}"), "openclaw");
    assert_eq!(inspect(c, "{{json .HostConfig.CapDrop}}"), r#"["ALL"]"#);
    assert_eq!(inspect(c, "{{json .HostConfig.CapAdd}}"), "null");
    assert_eq!(
        inspect(c, "{{json .HostConfig.SecurityOpt}}"),
        r#"["no-new-privileges:true"]"#
    );
    assert_eq!(inspect(c, "{{.HostConfig.PidsLimit}}"), "512");
    let memory: u64 = inspect(c, "{{.HostConfig.Memory}}").parse().expect("memory");
    assert!(memory > 0, "a memory limit sized to the machine");
    assert_eq!(inspect(c, "{{.HostConfig.MemorySwap}}"), memory.to_string());
    assert_eq!(inspect(c, "{{.HostConfig.RestartPolicy.Name}}"), "no");
    let env = inspect(c, "{{json .Config.Env}}");
    assert!(env.contains("OPENCLAW_SYSTEMD_UNIT=spotkeeper.service"), "{env}");
    // Exactly the state directory and the env file, the latter read-only.
    let mounts: Vec<serde_json::Value> = serde_json::from_str(&inspect(c, "{{json .Mounts}}")).expect("mounts json");
    let mut seen: Vec<(String, String, bool)> = mounts
        .iter()
        .map(|m| {
            (
                m["Source"].as_str().unwrap_or_default().to_string(),
                m["Destination"].as_str().unwrap_or_default().to_string(),
                m["RW"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    seen.sort();
    let env_file = t.world.dir.path().join("run/openclaw/.env");
    let mut expected = vec![
        (
            t.world.state.display().to_string(),
            "/home/node/.openclaw".to_string(),
            true,
        ),
        (
            env_file.display().to_string(),
            "/home/node/.openclaw/.env".to_string(),
            false,
        ),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    // The token reached the gateway through the env file only.
    assert!(!docker(&["inspect", c]).contains(TOKEN), "the token in docker inspect");
    let keys = http_get(t.port, "/env-keys").expect("the gateway serves on the published port");
    assert!(keys.contains("OPENCLAW_GATEWAY_TOKEN"), "{keys}");
    // The gateway's process (the child of Docker's init) holds no capability, read from the host:
    // a `docker exec` here could start while the daemon freezes the container for a snapshot,
    // and Docker 28 then blocks the exec and the unpause behind it.
    let init: u32 = inspect(c, "{{.State.Pid}}").parse().expect("pid");
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).expect("children");
    let app: u32 = children
        .split_whitespace()
        .next()
        .expect("the app under init")
        .parse()
        .expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{app}/status")).expect("status");
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let line = status.lines().find(|l| l.starts_with(field)).expect(field);
        assert!(line.ends_with("0000000000000000"), "the gateway's {line}");
    }

    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
    assert!(!daemon.log().contains(TOKEN), "the token in the daemon's log");
}

/// Item 7: OpenClaw restarts itself after a config change by exiting 0 (with the supervisor
/// hint). Ten edits in a minute are ten self-restarts: each started again at once, none counted
/// toward the crash loop (whose limit here is 3), and the gateway serves after the last.
#[test]
fn ten_config_edits_in_a_minute_are_self_restarts_not_a_crash_loop() {
    if !docker_available() {
        return;
    }
    let t = setup("selfrestart", "restart_limit = 3\nrestart_window = \"10m\"\n", "");
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    let mut daemon = Daemon::start(&t.world);
    let running = wait_for(Duration::from_secs(120), || {
        status(&t.world).is_some_and(|s| s["phase"] == "running")
    });
    assert!(running, "daemon not running; log:\n{}", daemon.log());
    let began = Instant::now();
    for edit in 1..=10u64 {
        let started_at = inspect(&t.container, "{{.State.StartedAt}}");
        let answer = http_request(t.port, "POST", "/fake/config-change", &[], "");
        assert_eq!(answer.map(|a| a.0), Some(202), "edit {edit}; log:\n{}", daemon.log());
        // Started again: a new start time, and serving.
        let again = wait_for(Duration::from_secs(30), || {
            inspect(&t.container, "{{.State.StartedAt}}") != started_at
                && http_get(t.port, "/healthz").is_some()
                && status(&t.world).is_some_and(|s| s["container"]["self_restarts"] == edit)
        });
        assert!(again, "edit {edit}: not started again; log:\n{}", daemon.log());
    }
    eprintln!("ten self-restarts in {:?}", began.elapsed());
    let s = status(&t.world).expect("status");
    assert_eq!(s["container"]["crash_loop"], false, "{s}");
    assert_eq!(s["container"]["restarts"], 0, "no failure counted: {s}");
    assert_eq!(s["phase"], "running", "{s}");
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
}

/// Item 3 and the pre-March image: liveness accepts only `/healthz`'s JSON, so an image whose
/// Control UI answers every path with a 200 page never becomes READY; the start-up fails
/// naming the probe and why, instead of calling a missing route healthy.
#[test]
fn an_image_from_before_the_probes_is_never_taken_for_healthy() {
    if !docker_available() {
        return;
    }
    let t = setup("preprobes", "", "");
    t.edit_config(|config| config.replace("start_timeout = \"60s\"", "start_timeout = \"6s\""));
    t.container_env("FAKE_PRE_PROBES = \"1\"");
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    // READY waits on /startupz, then (an older config) on /healthz: neither is taken.
    for probe in ["/startupz", "/healthz"] {
        if probe == "/healthz" {
            t.edit_config(|config| {
                config
                    .lines()
                    .filter(|l| !l.starts_with("startup_url"))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        let mut daemon = Daemon::start(&t.world);
        // The image does answer: a catch-all page.
        let answering = wait_for(Duration::from_secs(60), || http_get(t.port, "/healthz").is_some());
        assert!(answering, "the fake never answered; log:\n{}", daemon.log());
        let exit = daemon.wait_exit(Duration::from_secs(120));
        assert_eq!(exit.and_then(|e| e.code()), Some(1), "log:\n{}", daemon.log());
        let log = daemon.log();
        let refusal = log
            .lines()
            .find(|l| l.starts_with("error: the container did not finish starting"))
            .unwrap_or_else(|| panic!("no start-up error; log:\n{log}"));
        assert!(refusal.contains(probe), "names the probe: {refusal}");
        assert!(refusal.contains("not OpenClaw's JSON"), "says why: {refusal}");
        remove_container(&t.container);
    }
}

/// Item 3: READY waits for `/startupz`; a failing channel makes `/readyz` answer 503, which is
/// reported (status, with the channel named, as the probe presents the gateway token) and never
/// restarts the gateway; when the channel recovers the report clears.
#[test]
fn a_failing_channel_is_reported_degraded_and_never_restarted() {
    if !docker_available() {
        return;
    }
    let t = setup("degraded", "", "");
    t.edit_config(|config| {
        config.replace(
            "health_interval = ",
            &format!(
                "ready_url = \"http://127.0.0.1:{port}/readyz\"\nhealth_interval = ",
                port = t.port
            ),
        )
    });
    t.container_env("FAKE_FAILED_CHANNELS = \"telegram\"");
    t.moto
        .put_parameter(&format!("{}OPENCLAW_GATEWAY_TOKEN", t.ssm_path), TOKEN);
    let mut daemon = Daemon::start(&t.world);
    let reported = wait_for(Duration::from_secs(120), || {
        status(&t.world).is_some_and(|s| {
            s["phase"] == "running"
                && s["container"]["degraded"]
                    .as_str()
                    .is_some_and(|d| d.contains("telegram"))
        })
    });
    assert!(reported, "no degraded report; log:\n{}", daemon.log());
    let started_at = inspect(&t.container, "{{.State.StartedAt}}");
    // Several probe intervals later: still the same container, never restarted.
    let (mut probes, deadline) = (0, Instant::now() + Duration::from_secs(60));
    while probes < 5 && Instant::now() < deadline {
        if http_request(t.port, "GET", "/readyz", &[], "").is_some_and(|(code, _)| code == 503) {
            probes += 1;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let s = status(&t.world).expect("status");
    assert_eq!(s["container"]["restarts"], 0, "{s}");
    assert_eq!(inspect(&t.container, "{{.State.StartedAt}}"), started_at);
    // The channel comes back: the report clears.
    let healed = http_request(t.port, "POST", "/fake/channels", &[], "");
    assert!(healed.is_some_and(|(code, _)| code < 300));
    let cleared = wait_for(Duration::from_secs(30), || {
        status(&t.world).is_some_and(|s| s["container"]["degraded"].is_null())
    });
    assert!(cleared, "log:\n{}", daemon.log());
    assert!(daemon.stop().success(), "log:\n{}", daemon.log());
    assert!(!daemon.log().contains(TOKEN), "the token in the daemon's log");
}

/// Item 4: a snapshot taken while the gateway runs carries its live owner lease (5 minutes).
/// A new machine restores it and, with the fixed hostname, the gateway reclaims its own lease and
/// serves within seconds, not after the lease's TTL. The control: a third machine whose
/// container has another hostname is held by the same lease and never finishes starting.
#[test]
fn a_new_machine_restored_from_a_running_gateway_reclaims_its_lease_and_serves_within_seconds() {
    if !docker_available() {
        return;
    }
    // Machine A runs the gateway and snapshots it while it runs; then it is lost (kill -9).
    let t = setup("lease-a", "", "");
    t.moto.put_parameter(&format!("{}API_KEY", t.ssm_path), "x");
    let mut a = Daemon::start(&t.world);
    let running = wait_for(Duration::from_secs(120), || {
        status(&t.world).is_some_and(|s| s["phase"] == "running")
    });
    assert!(running, "machine A not running; log:\n{}", a.log());
    let snapshot = t.world.json(&["snapshot", "--json"]);
    assert!(snapshot["id"].is_string(), "{snapshot}");
    a.kill();
    let snapshot_ack: u64 = std::fs::read_to_string(t.world.state.join("ack.txt"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    docker(&["kill", &t.container]);
    let lease = lease_host(&t.world.state);
    assert_eq!(
        lease.as_deref(),
        Some("openclaw"),
        "machine A's state holds a live lease"
    );

    // The control, machine C: another hostname. The restored lease is foreign to it: the gateway
    // waits for the lease's TTL, and the start-up gives up on /startupz.
    let c = t.world.sibling();
    let (c_container, _) = common::configure_daemon(&c, &t.moto, "lease-c", "hostname = \"machine-c\"\n", "");
    let config = std::fs::read_to_string(&c.config).expect("config");
    std::fs::write(
        &c.config,
        config.replace("start_timeout = \"60s\"", "start_timeout = \"10s\""),
    )
    .expect("config");
    std::fs::remove_dir(&c.state).expect("empty state");
    let mut c_daemon = Daemon::start(&c);
    let exit = c_daemon.wait_exit(Duration::from_secs(120));
    assert_eq!(exit.and_then(|e| e.code()), Some(1), "log:\n{}", c_daemon.log());
    assert!(c_daemon.log().contains("/startupz"), "log:\n{}", c_daemon.log());
    assert_eq!(
        lease_host(&c.state).as_deref(),
        Some("openclaw"),
        "C restored A's lease"
    );
    remove_container(&c_container);

    // Machine B: same bucket and prefix, empty state, a new container (a new id), the fixed
    // hostname.
    let b = t.world.sibling();
    let (b_container, b_port) = common::configure_daemon(&b, &t.moto, "lease-b", "", "");
    std::fs::remove_dir(&b.state).expect("empty state");
    let began = Instant::now();
    let mut b_daemon = Daemon::start(&b);
    let serving = wait_for(Duration::from_secs(120), || {
        status(&b).is_some_and(|s| s["phase"] == "running") && http_get(b_port, "/healthz").is_some()
    });
    let took = began.elapsed();
    assert!(serving, "machine B not serving; log:\n{}", b_daemon.log());
    eprintln!("restored and serving in {took:?} (the lease's TTL is 5 minutes)");
    assert!(
        b.state.join("state/openclaw.sqlite").is_file(),
        "the state with the lease was restored"
    );
    let written = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(b.state.join("ack.txt"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|ack| ack > snapshot_ack)
    });
    assert!(written, "the restored gateway writes past what A acknowledged");
    assert!(b_daemon.stop().success(), "log:\n{}", b_daemon.log());
    remove_container(&b_container);
}

/// The host recorded in OpenClaw's gateway owner lease under `state`, if any.
fn lease_host(state: &std::path::Path) -> Option<String> {
    let db = rusqlite::Connection::open_with_flags(
        state.join("state/openclaw.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    let payload: String = db
        .query_row(
            "SELECT payload_json FROM state_leases WHERE scope = 'gateway-owner' AND lease_key = 'global'",
            [],
            |r| r.get(0),
        )
        .ok()?;
    let payload: serde_json::Value = serde_json::from_str(&payload).ok()?;
    payload["owner"]["host"].as_str().map(str::to_string)
}
