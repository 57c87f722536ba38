//! `prune` of a format-1 prefix against a real S3 server, with and without `[repository]`:
//! exactly the right keys remain, latest/ is never touched. (Format 2's prune: tests/format2.rs.)

mod common;

use common::{S3Server, World, failure};

/// (id, complete, expected to remain after `prune --now 2026-03-10T12:05:00Z`)
const SNAPSHOTS: &[(&str, bool, bool)] = &[
    ("2026-03-10-12-00", true, true),   // newest complete, latest/
    ("2026-03-10-11-40", false, true),  // incomplete, 25 minutes old: maybe still uploading
    ("2026-03-10-08-00", true, true),   // within 24h
    ("2026-03-09-12-20", true, true),   // within 24h
    ("2026-03-09-11-40", true, false),  // daily tier, not the earliest of 03-09
    ("2026-03-09-00-20", true, false),  // daily tier, not the earliest of 03-09
    ("2026-03-09-00-10", false, false), // incomplete for a day: removed
    ("2026-03-09-00-00", true, true),   // earliest of 03-09
    ("2026-03-06-08-00", true, false),  // the instance was off at midnight...
    ("2026-03-06-07-40", true, true),   // ...so the day's earliest is 07:40
    ("2026-03-03-13-00", true, true),   // daily tier side of the week split across the boundary
    ("2026-03-03-00-00", true, false),  // weekly tier, week from Fri 02-27: 03-01 is earlier
    ("2026-03-02-00-00", true, false),  // same week
    ("2026-03-01-00-00", true, true),   // earliest of the week from Fri 02-27 (no Friday in it)
    ("2026-02-20-06-00", true, true),   // earliest of the week from Fri 02-20
    ("2026-01-01-00-00", true, false),  // older than 30 days
];

const NOW: &str = "2026-03-10T12:05:00Z";

/// A fabricated format-1 history: the frozen fixture's first snapshot (written by the last
/// format-1 writer) copied under every id. Format 1 is no longer written, and prune of a
/// format-1 prefix keeps working forever.
fn seed(s3: &S3Server, world: &World) {
    let fixture = common::repo_root().join("tests/fixtures/format1/objects/snapshots/2026-12-07-07-01");
    let template: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("manifest.json")).expect("fixture manifest"))
            .expect("manifest");
    let archive = std::fs::read(fixture.join("state.tar.zst")).expect("fixture archive");
    s3.bucket("prune");
    for (id, complete, _) in SNAPSHOTS {
        let mut manifest = template.clone();
        manifest["id"] = serde_json::json!(id);
        manifest["archive"]["key"] = serde_json::json!(format!("snapshots/{id}/state.tar.zst"));
        s3.put_object("prune", &world.key(&format!("snapshots/{id}/state.tar.zst")), &archive);
        if *complete {
            let body = serde_json::to_vec(&manifest).expect("json");
            s3.put_object("prune", &world.key(&format!("snapshots/{id}/manifest.json")), &body);
            if *id == SNAPSHOTS[0].0 {
                s3.put_object("prune", &world.key("latest/manifest.json"), &body);
                s3.put_object("prune", &world.key("latest/state.tar.zst"), &archive);
            }
        }
    }
}

fn expected_keys(world: &World) -> Vec<String> {
    let mut keys = vec![world.key("latest/manifest.json"), world.key("latest/state.tar.zst")];
    for (id, complete, remains) in SNAPSHOTS {
        if *remains {
            keys.push(world.key(&format!("snapshots/{id}/state.tar.zst")));
            if *complete {
                keys.push(world.key(&format!("snapshots/{id}/manifest.json")));
            }
        }
    }
    keys.sort();
    keys
}

#[test]
fn dry_run_explains_every_decision_and_deletes_nothing() {
    let s3 = S3Server::start();
    let mut world = World::new(&s3, "prune", "lab");
    world.without_repository();
    seed(&s3, &world);
    let before = s3.keys("prune");
    let decisions = world.json(&["prune", "--dry-run", "--now", NOW, "--json"]);
    let decisions = decisions.as_array().expect("array");
    assert_eq!(decisions.len(), SNAPSHOTS.len());
    for (id, _, remains) in SNAPSHOTS {
        let decision = decisions
            .iter()
            .find(|d| d["id"] == *id)
            .expect("every snapshot decided");
        let action = if *remains { "keep" } else { "delete" };
        assert_eq!(decision["action"], action, "{id}: {decision}");
        assert!(decision["reason"].as_str().is_some_and(|r| !r.is_empty()), "{decision}");
    }
    assert_eq!(s3.keys("prune"), before, "a dry run deletes nothing");
    let text = world.ok(&["prune", "--dry-run", "--now", NOW]);
    assert!(text.contains("keep    2026-03-06-07-40"), "{text}");
    assert!(text.contains("delete  2026-03-06-08-00"), "{text}");
    assert!(text.contains("2026-03-06-07-40 kept for this day"), "{text}");
}

#[test]
fn prune_leaves_exactly_the_kept_snapshots_and_latest() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "prune", "lab");
    seed(&s3, &world);
    let out = world.ok(&["prune", "--now", NOW]);
    assert!(out.contains("deleted 7"), "{out}");
    assert_eq!(s3.keys("prune"), expected_keys(&world));
    // Pruning again changes nothing.
    world.ok(&["prune", "--now", NOW]);
    assert_eq!(s3.keys("prune"), expected_keys(&world));
}

#[test]
fn prune_refuses_to_act_when_the_listing_fails() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let world = World::with_endpoint(&format!("http://127.0.0.1:{port}"), "prune", "lab");
    let (code, stderr) = failure(&world.run(&["prune", "--now", NOW]));
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("list"), "{stderr}");
}
