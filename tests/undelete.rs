//! History survives the machine it protects (issue 23): in a versioned bucket, an instance that
//! deletes or overwrites every object of its prefix (what its role may do: DeleteObject and
//! PutObject, never DeleteObjectVersion) loses nothing for good. testing/undelete-prefix.py, run
//! as docs/deployment.md tells an operator to, brings the prefix back to a moment, and spotkeeper
//! then restores and verifies the state of that moment. Against moto's S3 with versioning.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ACCESS_KEY, Moto, SECRET_KEY, World, repo_root, shape, wait_for, write};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A versioned bucket, as the Pulumi program makes it.
fn versioned_bucket(endpoint: &str, bucket: &str) {
    let s3 = common::s3_client(endpoint);
    runtime().block_on(async {
        s3.create_bucket().bucket(bucket).send().await.expect("create bucket");
        s3.put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .expect("versioning");
    });
}

/// What a compromised or buggy instance can do with its role: overwrite some objects, delete
/// every object of its prefix (DeleteObject only: a delete marker over each). Returns the count.
fn wipe(endpoint: &str, bucket: &str, prefix: &str) -> usize {
    let s3 = common::s3_client(endpoint);
    runtime().block_on(async {
        let mut keys = Vec::new();
        let mut pages = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(format!("{prefix}/"))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.expect("list");
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        }
        for key in &keys {
            if key.ends_with("latest.json") || key.contains("/repo/config") {
                s3.put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(b"overwritten".to_vec().into())
                    .send()
                    .await
                    .expect("overwrite");
            }
            s3.delete_object().bucket(bucket).key(key).send().await.expect("delete");
        }
        keys.len()
    })
}

/// The moment between two writes: S3 (and moto) keep LastModified to the second, so the moment
/// is a whole second after the last write wanted back, and the next write comes a second later.
fn moment_after_now() -> chrono::DateTime<chrono::Utc> {
    let start = chrono::Utc::now();
    let moment = chrono::DateTime::from_timestamp(start.timestamp() + 2, 0).expect("time");
    let passed = wait_for(Duration::from_secs(5), || {
        chrono::Utc::now().timestamp() > moment.timestamp()
    });
    assert!(passed, "the clock reached {moment}");
    moment
}

#[test]
fn a_wiped_prefix_is_brought_back_and_spotkeeper_restores_the_state_of_that_moment() {
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    versioned_bucket(&endpoint, "fleet");
    let world = World::with_endpoint(&endpoint, "fleet", "openclaw/prod-alice");
    write(
        &world.state.join("agents/main/sessions/s1.jsonl"),
        b"{\"seq\":1}\n",
        0o644,
    );
    write(&world.state.join("credentials/oauth.json"), b"{\"token\":\"t\"}", 0o600);
    world.ok(&["snapshot"]);
    write(
        &world.state.join("agents/main/sessions/s1.jsonl"),
        b"{\"seq\":1}\n{\"seq\":2}\n",
        0o644,
    );
    let first = common::head_id(&world).expect("head");
    world.ok(&["snapshot"]);
    let wanted_head = common::head_id(&world).expect("head");
    assert_ne!(first, wanted_head);
    let expected = shape(&world.state);

    // After the moment: a later snapshot, then the instance wipes its prefix.
    let moment = moment_after_now();
    write(
        &world.state.join("agents/main/sessions/s1.jsonl"),
        b"lost on purpose",
        0o644,
    );
    world.ok(&["snapshot"]);
    let wiped = wipe(&endpoint, "fleet", "openclaw/prod-alice");
    assert!(wiped > 5, "{wiped} objects deleted");
    let gone = world.dir.path().join("gone");
    let out = world.run(&["restore", "--to", gone.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "nothing to restore after the wipe");

    // The operator's way back (docs/deployment.md): the script, then spotkeeper.
    let out = Command::new(repo_root().join(".venv-moto/bin/python"))
        .arg(repo_root().join("testing/undelete-prefix.py"))
        .args([
            "--endpoint",
            &endpoint,
            "--bucket",
            "fleet",
            "--prefix",
            "openclaw/prod-alice",
        ])
        .args([
            "--before",
            &moment.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "--json",
        ])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run undelete-prefix.py");
    assert!(
        out.status.success(),
        "undelete-prefix.py: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        common::head_id(&world).as_deref(),
        Some(wanted_head.as_str()),
        "the head of the moment"
    );
    world.ok(&["verify", "--deep"]);
    let back = world.dir.path().join("back");
    world.ok(&["restore", "--to", back.to_str().expect("utf-8")]);
    assert_eq!(shape(&back), expected, "the state of the moment, entry for entry");
    // The older snapshot is back too, and a new machine carries on from the head.
    let older = world.dir.path().join("older");
    world.ok(&["restore", "--snapshot", &first, "--to", older.to_str().expect("utf-8")]);
    let machine = world.sibling();
    std::fs::remove_dir(&machine.state).expect("empty state");
    machine.ok(&["restore"]);
    assert_eq!(shape(&machine.state), expected);
    write(&machine.state.join("agents/main/sessions/s2.jsonl"), b"new", 0o644);
    let next = machine.json(&["snapshot", "--json"]);
    assert_eq!(next["parent"].as_str(), Some(wanted_head.as_str()), "{next}");
}
