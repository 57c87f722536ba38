//! What a person sees: one clear line per failure naming the thing and the next step (no SDK
//! dumps), visible retries, `--json` failures on stdout, config errors with TOML's layout and a
//! suggestion, a quiet success off a terminal, a progress bar on one, completions and a man
//! page. The real binary against s3s-fs (through a fault proxy where S3 must misbehave).

mod common;

use std::fs;
use std::process::Command;

use common::{FaultProxy, ProxyMode, S3Server, World, failure, free_port, write};

/// No SDK type or debug dump in anything a person reads.
fn assert_plain(text: &str) {
    for dump in [
        "DispatchFailure",
        "ConnectorError",
        "ServiceError",
        "raw: Response",
        "{ source",
    ] {
        assert!(!text.contains(dump), "a debug dump reached the person: {text}");
    }
}

/// The lines of stderr that are not warnings (the error itself).
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("error: ")).collect()
}

#[test]
fn each_s3_failure_is_one_line_naming_the_next_step() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "exists", "lab");
    write(&world.state.join("a.txt"), b"a", 0o644);

    // Nothing listens: refused, retried visibly, then one line with host, port and cause.
    let port = free_port();
    let nowhere = World::with_endpoint(&format!("http://127.0.0.1:{port}"), "b-unreachable", "");
    let (code, stderr) = failure(&nowhere.run(&["list"]));
    assert_eq!(code, 6, "{stderr}");
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!("cannot connect to S3 at 127.0.0.1:{port}: connection refused"))
            && errors[0].contains("check [s3] endpoint"),
        "{stderr}"
    );
    assert!(
        stderr.contains("retrying, attempt 2 of 5"),
        "retries are visible: {stderr}"
    );
    assert_plain(&stderr);

    // No credentials anywhere (no keys, no profile, no instance metadata).
    let out = world
        .command(&["list"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("run");
    let (code, stderr) = failure(&out);
    assert_eq!(code, 6, "{stderr}");
    assert!(
        stderr.contains("no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the instance a role"),
        "{stderr}"
    );
    assert_plain(&stderr);

    // A wrong secret.
    let mut wrong = World::new(&s3, "exists", "lab");
    wrong.secret = "wrong-secret".into();
    let (code, stderr) = failure(&wrong.run(&["list"]));
    assert_eq!(code, 6, "{stderr}");
    assert!(
        stderr.contains("S3 rejected the credentials (SignatureDoesNotMatch)"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-secret"), "{stderr}");
    assert_plain(&stderr);

    // No such bucket, with --json: the failure on stdout too, with the same exit code.
    let missing = World::with_endpoint(&s3.endpoint(), "no-such-bucket", "");
    let out = missing.run(&["list", "--json"]);
    let (code, stderr) = failure(&out);
    assert_eq!(code, 4, "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error on stdout");
    assert_eq!(doc["error"]["code"], 4, "{doc}");
    assert_eq!(doc["error"]["kind"], "not-found", "{doc}");
    let message = doc["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("bucket no-such-bucket does not exist: check [s3] bucket and [s3] region"),
        "{message}"
    );
    assert!(stderr.contains(message), "the same words on stderr: {stderr}");
}

#[test]
fn a_silent_s3_is_reported_at_each_retry_and_given_up_on_within_the_bound() {
    let s3 = S3Server::start();
    let proxy = FaultProxy::start(s3.port);
    let mut world = World::with_endpoint(&proxy.endpoint(), "stalled", "");
    world.s3_extra = "timeout = \"1s\"\n".into();
    world.write_config("");
    proxy.set(ProxyMode::Stall);
    let (code, stderr) = failure(&world.run(&["list"]));
    assert_eq!(code, 6, "{stderr}");
    for attempt in 2..=5 {
        assert!(
            stderr.contains(&format!(
                "S3 did not answer within 1 s; retrying, attempt {attempt} of 5"
            )),
            "attempt {attempt}: {stderr}"
        );
    }
    assert!(
        error_lines(&stderr)[0]
            .contains("did not answer within 1 s (5 attempts): check the network, or raise [s3] timeout"),
        "{stderr}"
    );
    assert_plain(&stderr);
}

#[test]
fn config_errors_keep_the_layout_name_the_key_and_suggest() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "config", "");
    let base = fs::read_to_string(&world.config).expect("config");

    // An unknown key: TOML's caret under it, and the nearest known key.
    fs::write(&world.config, base.replacen("prefix =", "prefx =", 1)).expect("config");
    let (code, stderr) = failure(&world.run(&["check-config"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("unknown field `prefx`"), "{stderr}");
    assert!(stderr.contains("did you mean `prefix`?"), "{stderr}");
    assert!(stderr.contains("^^^^^"), "TOML's layout is kept: {stderr}");

    // A wrong type: the dotted key and the type in words.
    fs::write(
        &world.config,
        format!("{base}\n[container]\nname = \"c\"\nimage = \"i\"\nrestart_limit = \"high\"\n"),
    )
    .expect("config");
    let (code, stderr) = failure(&world.run(&["check-config"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("in `container.restart_limit`"), "{stderr}");
    assert!(stderr.contains("expected a whole number"), "{stderr}");
    assert!(!stderr.contains("u32"), "{stderr}");

    // A value out of range is shown as the value it is.
    fs::write(&world.config, base.replacen("[spot]\n", "[spot]\npoll = \"2m\"\n", 1)).expect("config");
    let (code, stderr) = failure(&world.run(&["check-config"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("spot.poll = \"2m\" is not valid: must be between 1s and 60s"),
        "{stderr}"
    );

    // A missing key is "required", not "not valid".
    fs::write(&world.config, "[s3]\nprefix = \"p\"\n").expect("config");
    let (_, stderr) = failure(&world.run(&["check-config"]));
    assert!(
        stderr.contains("s3.bucket is required: the bucket that holds the snapshots"),
        "{stderr}"
    );

    // A missing file: where it looked and how to point elsewhere.
    let out = Command::new(env!("CARGO_BIN_EXE_spotkeeper"))
        .args(["--config", "/nonexistent/spotkeeper.toml", "list"])
        .env_remove("SPOTKEEPER_CONFIG")
        .output()
        .expect("run");
    let (code, stderr) = failure(&out);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("/nonexistent/spotkeeper.toml: No such file or directory (named by --config)")
            && stderr.contains("SPOTKEEPER_CONFIG")
            && stderr.contains("check-config"),
        "{stderr}"
    );
}

#[test]
fn a_command_off_a_terminal_prints_its_result_once_and_on_a_terminal_a_bar() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "quiet", "");
    for i in 0..50 {
        write(&world.state.join(format!("f{i}.bin")), &vec![i as u8; 64 * 1024], 0o644);
    }
    // Without -v, only the result: nothing on stderr.
    let out = world
        .command(&["snapshot"])
        .env_remove("SPOTKEEPER_LOG")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "stderr off a terminal");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "the result, once: {stdout}");

    // On a terminal (script(1) gives the command a pty): a bar naming the work, on stderr.
    let target = world.dir.path().join("restored");
    let command = world.command(&["restore", "--to", target.to_str().expect("utf-8")]);
    let mut line = format!("{:?}", command.get_program());
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&format!("{arg:?}"));
    }
    let mut script = Command::new("script");
    script.args(["-qec", &line, "/dev/null"]);
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => script.env(key, value),
            None => script.env_remove(key),
        };
    }
    script.env_remove("SPOTKEEPER_LOG");
    let out = script.output().expect("script(1)");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{seen}");
    assert!(
        seen.contains("restore") && seen.contains("ETA"),
        "no bar on a terminal: {seen:?}"
    );
    assert!(target.join("f49.bin").exists());
}

#[test]
fn completions_and_man_pages_need_no_config() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_spotkeeper"))
            .args(["--config", "/nonexistent.toml"])
            .args(args)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run(&["completions", "bash"]).contains("_spotkeeper()"));
    assert!(run(&["completions", "zsh"]).contains("#compdef spotkeeper"));
    assert!(run(&["completions", "fish"]).contains("complete -c spotkeeper"));
    let page = run(&["man"]);
    assert!(page.contains(".TH spotkeeper 1") && page.contains("restore"), "{page}");
    let page = run(&["man", "restore"]);
    assert!(
        page.contains(".TH spotkeeper-restore 1") && page.contains("\\-\\-force"),
        "{page}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_spotkeeper"))
        .args(["man", "nonsense"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_region_in_use_is_shown_and_no_warning_is_printed_when_none_is_set() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "region", "");
    let config = fs::read_to_string(&world.config).expect("config");
    fs::write(&world.config, config.replacen("region = \"us-east-1\"\n", "", 1)).expect("config");
    let out = world
        .command(&["check-config"])
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("SPOTKEEPER_LOG")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("# AWS region in use: us-east-1 (from the default (none configured))"),
        "{stdout}"
    );
    assert!(!stderr.contains("IMDS") && !stderr.contains("WARN"), "{stderr}");
    let out = world
        .command(&["check-config"])
        .env("AWS_REGION", "eu-west-3")
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("# AWS region in use: eu-west-3 (from AWS_REGION or AWS_DEFAULT_REGION)")
    );
}
