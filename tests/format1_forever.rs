//! One format written, two read: format 2 is the only format spotkeeper writes, and a format-1
//! prefix (the frozen one under tests/fixtures/format1, written by the last format-1 writer)
//! stays readable forever, with or without `[repository]`: list, verify, restore, prune, and the
//! migration to format 2.

mod common;

use common::{S3Server, World, failure, format1_fixture_shape, load_format1_fixture, shape, write};

/// The way out the refusal names: both ways to add a repository.
fn assert_names_the_way_out(stderr: &str) {
    for needle in [
        "[repository]",
        "password_ssm",
        "init --create-password",
        "password_file",
    ] {
        assert!(stderr.contains(needle), "the refusal names `{needle}`: {stderr}");
    }
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn snapshot_run_and_check_config_refuse_to_write_without_a_repository() {
    let s3 = S3Server::start();
    let mut world = World::new(&s3, "norepo", "lab");
    world.without_repository();
    write(&world.state.join("a.txt"), b"state", 0o644);
    s3.bucket("norepo");

    let (code, stderr) = failure(&world.run(&["snapshot"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("spotkeeper snapshot"), "{stderr}");
    assert_names_the_way_out(&stderr);
    assert!(s3.keys("norepo").is_empty(), "nothing written: {:?}", s3.keys("norepo"));

    // The daemon: refused before it touches S3, SSM or Docker.
    world.write_config("[container]\nname = \"norepo\"\nimage = \"busybox:latest\"\n");
    let (code, stderr) = failure(&world.run(&["run"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("spotkeeper run"), "{stderr}");
    assert!(s3.keys("norepo").is_empty());
    // check-config says the same about a daemon's config.
    let (code, stderr) = failure(&world.run(&["check-config"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("[repository]"), "{stderr}");
}

#[test]
fn a_format_1_prefix_is_read_forever_with_and_without_a_repository() {
    for with_repository in [false, true] {
        let s3 = S3Server::start();
        let mut world = World::new(&s3, "forever", "lab");
        if !with_repository {
            world.without_repository();
        }
        let [first, second] = load_format1_fixture(&s3, "forever", "lab");
        let case = if with_repository {
            "with [repository]"
        } else {
            "without [repository]"
        };

        // list: what the writer's own binary listed, field for field.
        let listed = world.json(&["list", "--json"]);
        let frozen: serde_json::Value = serde_json::from_slice(
            &std::fs::read(common::repo_root().join("tests/fixtures/format1/list.json")).expect("list.json"),
        )
        .expect("list.json");
        assert_eq!(listed, frozen, "{case}");

        // verify, each snapshot, reading every byte.
        for id in [&first, &second] {
            let verified = world.json(&["verify", "--deep", "--snapshot", id, "--json"]);
            assert_eq!(verified["id"].as_str(), Some(id.as_str()), "{case}: {verified}");
        }

        // restore: the latest, and an older one by id, entry for entry (kind, mode, mtime, bytes).
        let latest = world.dir.path().join("latest");
        world.ok(&["restore", "--to", latest.to_str().expect("utf-8")]);
        assert_eq!(shape(&latest), format1_fixture_shape(2), "{case}");
        let older = world.dir.path().join("older");
        world.ok(&["restore", "--snapshot", &first, "--to", older.to_str().expect("utf-8")]);
        assert_eq!(shape(&older), format1_fixture_shape(1), "{case}");

        // prune: the policy (tiers counted from the newest snapshot) keeps both (one minute apart),
        // and leaves latest/ alone. (Deleting format-1 snapshots by the tiers: tests/prune.rs.)
        let future = "2028-01-01T00:00:00Z";
        let plan = world.json(&["prune", "--dry-run", "--json", "--now", future]);
        let action = |id: &str| {
            plan.as_array()
                .expect("decisions")
                .iter()
                .find(|d| d["id"] == id)
                .map(|d| d["action"].as_str().unwrap_or_default().to_string())
        };
        assert_eq!(action(&second).as_deref(), Some("keep"), "{case}: {plan}");
        assert_eq!(action(&first).as_deref(), Some("keep"), "{case}: {plan}");
        let before = s3.keys("forever");
        world.ok(&["prune", "--now", future]);
        assert_eq!(s3.keys("forever"), before, "{case}");
        // What prune kept still restores.
        let after = world.dir.path().join("after-prune");
        world.ok(&["restore", "--to", after.to_str().expect("utf-8")]);
        assert_eq!(shape(&after), format1_fixture_shape(2), "{case}");
    }
}

/// `spotkeeper snapshot` reads the head while it fills the mirrors, and creates format 2's
/// repository only after the lineage guard: a state that does not descend from format 1's
/// latest is refused with nothing written, no `repo/` among it.
#[test]
fn a_diverged_snapshot_on_a_format_1_prefix_is_refused_before_a_repository_is_created() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "diverged", "lab");
    let [_, latest] = load_format1_fixture(&s3, "diverged", "lab");
    write(&world.state.join("mine.txt"), b"never restored from this prefix", 0o644);
    let before = s3.keys("diverged");
    let (code, stderr) = failure(&world.run(&["snapshot"]));
    assert_eq!(code, 7, "{stderr}");
    assert!(stderr.contains(&latest), "{stderr}");
    assert_eq!(s3.keys("diverged"), before, "nothing written");
}

#[test]
fn a_format_1_prefix_migrates_to_format_2_and_stays_readable() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "migrate", "lab");
    let [first, second] = load_format1_fixture(&s3, "migrate", "lab");

    // The boot restore of an upgraded machine: format 1's latest into the (empty) state dir.
    world.ok(&["restore"]);
    assert_eq!(shape(&world.state), format1_fixture_shape(2));

    // The first snapshot writes format 2 on top of format 1's latest, and retires latest/.
    write(&world.state.join("memory/new.md"), b"after the upgrade", 0o644);
    let new = world.json(&["snapshot", "--json"]);
    assert!(new["restic_id"].is_string(), "{new}");
    assert_eq!(
        new["parent"].as_str(),
        Some(second.as_str()),
        "the lineage crosses formats: {new}"
    );
    let keys = s3.keys("migrate");
    assert!(
        !keys.iter().any(|k| k.starts_with("lab/latest/")),
        "format 1's latest/ is retired: {keys:?}"
    );
    for id in [&first, &second] {
        assert!(keys.contains(&format!("lab/snapshots/{id}/manifest.json")), "{keys:?}");
    }

    let list = world.json(&["list", "--json"]);
    let rows: Vec<(String, u64, bool)> = list
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().expect("id").to_string(),
                r["format"].as_u64().expect("format"),
                r["latest"] == true,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (new["id"].as_str().expect("id").to_string(), 2, true),
            (second.clone(), 1, false),
            (first.clone(), 1, false),
        ]
    );
    // The old snapshots still restore by id, with or without the password.
    let again = world.dir.path().join("old-by-id");
    world.ok(&["restore", "--snapshot", &second, "--to", again.to_str().expect("utf-8")]);
    assert_eq!(shape(&again), format1_fixture_shape(2));
    let restored = world.dir.path().join("new");
    world.ok(&["restore", "--to", restored.to_str().expect("utf-8")]);
    assert_eq!(shape(&restored), shape(&world.state));

    // Prune judges both formats by one policy: the head (format 2) is kept, and the format-1
    // snapshots are judged beside it.
    let future = (chrono::Utc::now() + chrono::Duration::days(400)).to_rfc3339();
    let plan = world.json(&["prune", "--dry-run", "--json", "--now", &future]);
    let rows = plan.as_array().expect("decisions");
    assert!(
        rows.iter()
            .any(|d| d["id"] == new["id"] && d["action"] == "keep" && d["format"] == 2),
        "{plan}"
    );
    for id in [&first, &second] {
        assert!(
            rows.iter().any(|d| d["id"] == id.as_str() && d["format"] == 1),
            "{plan}"
        );
    }
}
