//! The head and the repository's config are checked, not believed (issue 20, items 3 and 9), on
//! format 2 with the real binary on s3s-fs: an edited or MAC-less `latest.json` is an integrity
//! error naming it; a replayed one is refused by a new machine and never displaces newer local
//! state; a damaged, foreign or deleted `repo/config` is one line, exit 5, and nothing is created
//! over it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, S3Server, World, failure, shape, write};

const PASSWORD: &str = "correct-horse-battery-staple-2026";
const INTEGRITY: i32 = 5;

/// A format-2 world (`[repository] password_file`) with a small state.
fn world(s3: &S3Server, bucket: &str, prefix: &str) -> World {
    let world = World::new(s3, bucket, prefix);
    configure(&world, "");
    write(&world.state.join("notes/a.txt"), b"first", 0o644);
    world
}

/// Writes `world`'s config: format 2 with the shared password file, `extra` appended.
fn configure(world: &World, extra: &str) {
    let password_file = world.dir.path().join("repository-password");
    write(&password_file, format!("{PASSWORD}\n").as_bytes(), 0o600);
    world.write_config(&format!("[repository]\npassword_file = {password_file:?}\n{extra}"));
}

/// A second machine on `world`'s repository, with nothing local.
fn new_machine(world: &World) -> World {
    let machine = world.sibling();
    configure(&machine, "");
    machine
}

/// The file s3s-fs keeps object `key` of `world`'s bucket in.
fn object_path(s3: &S3Server, world: &World, relative: &str) -> PathBuf {
    s3.bucket(&world.bucket).join(world.key(relative))
}

/// Replaces object `relative` of `world`'s prefix, as anyone who can write the bucket can (s3s-fs
/// keeps a checksum beside each file: an edit on its disk would read as a broken answer).
fn put(s3: &S3Server, world: &World, relative: &str, body: &[u8]) {
    s3.put_object(&world.bucket, &world.key(relative), body);
}

/// Takes a snapshot of `world`'s state after writing `text`; returns its spotkeeper id.
fn snapshot(world: &World, text: &str) -> String {
    write(&world.state.join("notes/a.txt"), text.as_bytes(), 0o644);
    let out = world.json(&["snapshot", "--json"]);
    out["id"].as_str().expect("snapshot id").to_string()
}

/// The error line: stderr's last non-empty line.
fn error_line(stderr: &str) -> &str {
    stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

fn assert_integrity(out: &std::process::Output, names: &str, what: &str) -> String {
    let (code, stderr) = failure(out);
    assert_eq!(code, INTEGRITY, "{what}: {stderr}");
    assert!(
        error_line(&stderr).contains(names),
        "{what}: the error names {names}: {stderr}"
    );
    stderr
}

fn is_empty(dir: &Path) -> bool {
    fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none())
}

#[test]
fn an_edited_or_stripped_latest_json_is_an_integrity_error_and_changes_nothing() {
    let s3 = S3Server::start();
    let world = world(&s3, "head-edit", "lab");
    let first = snapshot(&world, "first");
    let pointer = object_path(&s3, &world, "latest.json");
    let genuine = fs::read(&pointer).expect("latest.json");
    let text = String::from_utf8(genuine.clone()).expect("utf-8");
    assert!(text.contains("\"mac\": \"hmac-sha256:"), "{text}");

    // One byte of the body edited: the hostname, which nothing else checks.
    let at = text.find("\"hostname\": \"").expect("hostname") + "\"hostname\": \"".len();
    let mut edited = genuine.clone();
    edited[at] = if edited[at] == b'x' { b'y' } else { b'x' };
    put(&s3, &world, "latest.json", &edited);
    let key = world.key("latest.json");
    let machine = new_machine(&world);
    let stderr = assert_integrity(&machine.run(&["restore"]), &key, "restore on a new machine");
    assert!(stderr.contains("--snapshot"), "the way out: {stderr}");
    assert!(is_empty(&machine.state), "nothing restored");
    assert_integrity(&machine.run(&["list"]), &key, "list");
    let before = shape(&world.state);
    assert_integrity(&world.run(&["restore", "--force"]), &key, "restore --force here");
    assert_eq!(shape(&world.state), before, "the local state is untouched");

    // The MAC stripped (as an older spotkeeper wrote it, or an attacker would).
    let mut value: serde_json::Value = serde_json::from_slice(&genuine).expect("json");
    value.as_object_mut().expect("object").remove("mac");
    put(
        &s3,
        &world,
        "latest.json",
        &serde_json::to_vec_pretty(&value).expect("json"),
    );
    let stderr = assert_integrity(&machine.run(&["restore"]), &key, "restore of a MAC-less pointer");
    assert!(stderr.contains("no MAC"), "{stderr}");
    assert!(is_empty(&machine.state), "nothing restored");

    // The way out: a snapshot by id, then a snapshot writes an authenticated pointer.
    machine.ok(&["restore", "--snapshot", &first]);
    assert_eq!(fs::read(machine.state.join("notes/a.txt")).expect("restored"), b"first");
    snapshot(&machine, "second");
    machine.ok(&["list"]);
    world.ok(&["list"]);
}

#[test]
fn a_replayed_latest_json_is_refused_by_a_new_machine_and_never_displaces_newer_state() {
    let s3 = S3Server::start();
    let world = world(&s3, "head-replay", "lab");
    let a = snapshot(&world, "a");
    let pointer = object_path(&s3, &world, "latest.json");
    let pointer_a = fs::read(&pointer).expect("latest.json");
    let b = snapshot(&world, "b");
    let pointer_b = fs::read(&pointer).expect("latest.json");
    let c = snapshot(&world, "c");

    // A's genuine pointer put back: its MAC is right, but B was published after it.
    put(&s3, &world, "latest.json", &pointer_a);
    let machine = new_machine(&world);
    let stderr = assert_integrity(&machine.run(&["restore"]), "latest.json", "restore of a replayed head");
    let line = error_line(&stderr);
    assert!(
        line.contains(&b) && line.contains("--snapshot"),
        "names the newer head and the way out: {line}"
    );
    assert!(is_empty(&machine.state), "nothing restored");
    assert_integrity(&machine.run(&["list"]), "latest.json", "list");
    machine.ok(&["restore", "--snapshot", &c]);
    assert_eq!(fs::read(machine.state.join("notes/a.txt")).expect("restored"), b"c");

    // The machine whose state is C: nothing moves it aside.
    let before = shape(&world.state);
    let (code, _) = failure(&world.run(&["restore"]));
    assert_eq!(code, 7, "refused without --force");
    assert_integrity(&world.run(&["restore", "--force"]), "latest.json", "restore --force");
    assert_eq!(shape(&world.state), before, "the newer local state is untouched");

    // B's pointer put back: one step back, which no history can tell from an orphan C. The
    // local record (state from C) still keeps the daemon from displacing it.
    put(&s3, &world, "latest.json", &pointer_b);
    if common::docker_available() {
        configure(
            &world,
            &format!(
                "[container]\nname = \"spotkeeper-test-head-{pid}\"\nimage = \"spotkeeper-test-never-pulled:1\"\n\
                 log_driver = \"json-file\"\n\n[daemon]\nsocket = {socket:?}\n",
                pid = std::process::id(),
                socket = world.dir.path().join("run/control.sock"),
            ),
        );
        let mut daemon = Daemon::start(&world);
        let status = daemon.wait_exit(Duration::from_secs(120));
        let log = daemon.log();
        assert_eq!(status.and_then(|s| s.code()), Some(7), "the daemon refuses: {log}");
        assert!(
            log.contains(&b) && log.contains(&c),
            "the journal names both snapshots: {log}"
        );
        assert_eq!(shape(&world.state), before, "the newer local state is untouched");
        assert!(
            !world.state.parent().expect("parent").join("state.displaced").exists(),
            "nothing was moved aside"
        );
    }
    let _ = a;
}

/// The snapshot-taking machine, then every command on a prefix whose `repo/config` is `config`
/// (`None`: deleted): one line, exit 5, naming it, and no new repository.
fn assert_config_refused(s3: &S3Server, world: &World, config: Option<&[u8]>, what: &str) {
    let path = object_path(s3, world, "repo/config");
    let genuine = fs::read(&path).expect("repo/config");
    match config {
        Some(bytes) => put(s3, world, "repo/config", bytes),
        None => fs::remove_file(&path).expect("delete repo/config"),
    }
    let keys_before = s3.keys(&world.bucket);
    let key = world.key("repo/config");
    let machine = new_machine(world);
    for (who, args) in [
        (world, vec!["list"]),
        (world, vec!["snapshot"]),
        (world, vec!["verify"]),
        (&machine, vec!["restore"]),
    ] {
        let out = who.run(&args);
        let stderr = assert_integrity(&out, &key, &format!("{what}: {args:?}"));
        assert!(!stderr.contains("panicked"), "{stderr}");
        let line = error_line(&stderr);
        assert!(
            stderr.lines().filter(|l| l.contains("repo/config")).count() <= 2,
            "{what}: one line, not a dump: {stderr}"
        );
        assert!(!line.is_empty());
    }
    // `init` never creates a repository over it.
    let (code, stderr) = failure(&world.run(&["init"]));
    assert_eq!(code, 7, "{what}: init refuses: {stderr}");
    assert_eq!(s3.keys(&world.bucket), keys_before, "{what}: nothing was written");
    assert!(is_empty(&machine.state), "{what}: nothing restored");
    put(s3, world, "repo/config", &genuine);
    world.ok(&["list"]);
}

#[test]
fn a_damaged_foreign_or_deleted_repo_config_is_one_line_exit_5_and_nothing_is_created() {
    let s3 = S3Server::start();
    let world = world(&s3, "repo-config", "lab");
    snapshot(&world, "one");
    snapshot(&world, "two");
    // Another repository's config, same password: a foreign master key.
    let other = World::new(&s3, "repo-config", "other");
    configure(&other, "");
    write(&other.state.join("x"), b"other", 0o644);
    other.ok(&["snapshot"]);
    let foreign = fs::read(object_path(&s3, &other, "repo/config")).expect("other config");

    assert_config_refused(&s3, &world, Some(b"not a restic config at all\n"), "garbage");
    assert_config_refused(&s3, &world, Some(&foreign), "another repository's config");
    assert_config_refused(&s3, &world, None, "deleted");
}
