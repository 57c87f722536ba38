//! A snapshot killed at any point leaves `latest/` equal to a complete, verifiable snapshot,
//! and the next run carries on.

mod common;

use std::time::Duration;

use common::{S3Server, World, noise, write};

#[test]
fn kill_during_snapshot_never_leaves_a_half_new_latest() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "crash", "lab");
    write(&world.state.join("a.txt"), b"first", 0o644);
    let first = world.json(&["snapshot", "--json"])["id"]
        .as_str()
        .expect("id")
        .to_string();
    // Large enough that a snapshot takes a while, so kills land in every phase.
    for i in 0..6 {
        write(
            &world.state.join(format!("blob{i}.bin")),
            &noise(12 * 1024 * 1024, i + 1),
            0o644,
        );
    }
    let mut completed = vec![first];
    // Kill points spread over the life of a snapshot; they are fault injection, not synchronisation.
    for (round, delay_ms) in [0u64, 10, 30, 60, 100, 150, 250, 400, 600, 900].into_iter().enumerate() {
        write(
            &world.state.join("round.txt"),
            format!("round {round}").as_bytes(),
            0o644,
        );
        let mut child = world.command(&["snapshot"]).spawn().expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();

        let latest: serde_json::Value =
            serde_json::from_slice(&s3.object("crash", "lab/latest/manifest.json")).expect("latest manifest");
        let latest_id = latest["id"].as_str().expect("id").to_string();
        let own: serde_json::Value =
            serde_json::from_slice(&s3.object("crash", &format!("lab/snapshots/{latest_id}/manifest.json")))
                .expect("latest/ points at a complete snapshot");
        assert_eq!(
            own, latest,
            "round {round}: latest/manifest.json is that snapshot's manifest"
        );
        let verified = world.json(&["verify", "--json"]);
        assert_eq!(verified["id"].as_str(), Some(latest_id.as_str()), "round {round}");
        if !completed.contains(&latest_id) {
            completed.push(latest_id);
        }
    }
    // The next run cleans nothing up by hand and carries on; its parent is the current latest/.
    let latest: serde_json::Value =
        serde_json::from_slice(&s3.object("crash", "lab/latest/manifest.json")).expect("latest");
    let next = world.json(&["snapshot", "--json"]);
    assert_eq!(next["parent"], latest["id"]);
    let restored = world.dir.path().join("restored");
    world.ok(&["restore", "--to", restored.to_str().expect("utf8")]);
    assert_eq!(common::shape(&restored), common::shape(&world.state));
}
