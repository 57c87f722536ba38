//! A snapshot killed at any point leaves the head (`latest.json`) on a complete snapshot that
//! verifies, leaves nothing the next run trips over (restic locks, half-written packs), and the
//! next run carries on from that head.

mod common;

use std::time::Duration;

use common::{S3Server, World, assert_head_verifies, noise, write};

#[test]
fn kill_during_snapshot_never_leaves_a_half_new_head() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "crash", "lab");
    write(&world.state.join("a.txt"), b"first", 0o644);
    let first = world.json(&["snapshot", "--json"])["id"]
        .as_str()
        .expect("id")
        .to_string();
    // Large enough that a snapshot takes a while, so kills land in every phase. Noise does not
    // deduplicate, so each round's snapshot has new data to upload.
    let mut heads = vec![first];
    // Kill points spread over the life of a snapshot; they are fault injection, not synchronisation.
    for (round, delay_ms) in [0u64, 10, 30, 60, 100, 150, 250, 400, 600, 900].into_iter().enumerate() {
        write(
            &world.state.join(format!("blob{}.bin", round % 3)),
            &noise(12 * 1024 * 1024, round as u64 + 1),
            0o644,
        );
        write(
            &world.state.join("round.txt"),
            format!("round {round}").as_bytes(),
            0o644,
        );
        let mut child = world.command(&["snapshot"]).spawn().expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();

        let head = assert_head_verifies(&world).expect("a head after the first snapshot");
        assert!(
            heads.contains(&head) || round > 0 || delay_ms > 0,
            "round {round}: a snapshot killed at once cannot have moved the head"
        );
        if !heads.contains(&head) {
            heads.push(head);
        }
    }
    // The next run cleans nothing up by hand and carries on; its parent is the current head.
    let head = common::head_id(&world).expect("head");
    let next = world.json(&["snapshot", "--json"]);
    assert_eq!(next["parent"].as_str(), Some(head.as_str()), "{next}");
    assert_eq!(assert_head_verifies(&world), next["id"].as_str().map(str::to_string));
    let restored = world.dir.path().join("restored");
    world.ok(&["restore", "--to", restored.to_str().expect("utf8")]);
    assert_eq!(common::shape(&restored), common::shape(&world.state));
    // A snapshot killed after its restic snapshot but before latest.json leaves one that no head
    // names; list shows every snapshot, and none is incomplete.
    let listed = world.json(&["list", "--json"]);
    for row in listed.as_array().expect("rows") {
        assert_eq!(row["complete"], serde_json::json!(true), "{row}");
    }
}
