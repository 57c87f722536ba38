//! Archives that try to write outside the target are refused before anything reaches it.

mod common;

use std::io::Write;

use common::{S3Server, World, failure};
use sha2::{Digest, Sha256};

const ID: &str = "2026-03-01-10-00";

/// One archive entry: raw tar header fields, so that even paths the tar crate refuses to write
/// (`..`, absolute) can be crafted.
struct Raw<'a> {
    path: &'a str,
    kind: tar::EntryType,
    link: Option<&'a str>,
    body: &'a [u8],
}

fn archive(entries: &[Raw]) -> Vec<u8> {
    let mut tar_bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar_bytes);
        for entry in entries {
            let mut header = tar::Header::new_gnu();
            let name = &mut header.as_gnu_mut().expect("gnu header").name;
            name[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
            header.set_entry_type(entry.kind);
            header.set_mode(0o644);
            header.set_size(entry.body.len() as u64);
            if let Some(link) = entry.link {
                let linkname = &mut header.as_gnu_mut().expect("gnu header").linkname;
                linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            builder.append(&header, entry.body).expect("append");
        }
        builder.finish().expect("finish");
    }
    let mut encoder = zstd::Encoder::new(Vec::new(), 3).expect("zstd");
    encoder.write_all(&tar_bytes).expect("compress");
    encoder.finish().expect("finish zstd")
}

/// Uploads `archive` with a manifest listing `files` as snapshot ID and latest/.
fn publish(s3: &S3Server, bucket: &str, archive: &[u8], files: serde_json::Value) {
    publish_with_root(s3, bucket, archive, files, 0o700);
}

/// `publish`, the manifest recording the state directory's mode as `root_mode`.
fn publish_with_root(s3: &S3Server, bucket: &str, archive: &[u8], files: serde_json::Value, root_mode: u32) {
    let manifest = serde_json::json!({
        "format": 1, "id": ID, "created_at": "2026-03-01T10:00:00Z", "parent": null,
        "host": {"hostname": "attacker", "instance_id": null},
        "archive": {"key": format!("snapshots/{ID}/state.tar.zst"), "bytes": archive.len(),
                    "sha256": hex::encode(Sha256::digest(archive)), "encoding": "tar+zstd"},
        "totals": {"files": 1, "bytes": 0},
        "root": {"mode": root_mode, "uid": 0, "gid": 0},
        "files": files,
    });
    let body = serde_json::to_vec(&manifest).expect("manifest");
    s3.put_object(bucket, &format!("snapshots/{ID}/state.tar.zst"), archive);
    s3.put_object(bucket, &format!("snapshots/{ID}/manifest.json"), &body);
    s3.put_object(bucket, "latest/manifest.json", &body);
}

fn file_entry(path: &str, body: &[u8]) -> serde_json::Value {
    serde_json::json!({"path": path, "type": "file", "mode": 420, "uid": 0, "gid": 0, "bytes": body.len(),
                       "mtime": "2026-03-01T09:59:00Z", "sha256": hex::encode(Sha256::digest(body))})
}

fn assert_refused(case: &str, entries: &[Raw], files: serde_json::Value, expected: &str) {
    let s3 = S3Server::start();
    let world = World::new(&s3, "hostile", "");
    publish(&s3, "hostile", &archive(entries), files);
    let target = world.dir.path().join("target");
    let (code, stderr) = failure(&world.run(&["restore", "--to", target.to_str().expect("utf8")]));
    assert_eq!(code, 5, "{case}: {stderr}");
    assert!(stderr.contains(expected), "{case}: {stderr}");
    assert!(!target.exists(), "{case}: nothing may reach the target");
    assert!(
        !world.dir.path().join("evil.txt").exists(),
        "{case}: nothing written outside"
    );
    let (code, stderr) = failure(&world.run(&["verify"]));
    assert_eq!(code, 5, "{case}: verify: {stderr}");
}

#[test]
fn parent_directory_entries_are_refused() {
    let body = b"owned";
    assert_refused(
        "dotdot",
        &[Raw {
            path: "../evil.txt",
            kind: tar::EntryType::Regular,
            link: None,
            body,
        }],
        serde_json::json!([file_entry("evil.txt", body)]),
        "\"../evil.txt\"",
    );
}

#[test]
fn absolute_entries_are_refused() {
    let body = b"owned";
    assert_refused(
        "absolute",
        &[Raw {
            path: "/tmp/evil.txt",
            kind: tar::EntryType::Regular,
            link: None,
            body,
        }],
        serde_json::json!([file_entry("evil.txt", body)]),
        "absolute path",
    );
}

#[test]
fn manifests_with_escaping_symlinks_are_refused() {
    assert_refused(
        "symlink out",
        &[Raw {
            path: "etc",
            kind: tar::EntryType::Symlink,
            link: Some("/etc"),
            body: b"",
        }],
        serde_json::json!([{"path": "etc", "type": "symlink", "mode": 511, "uid": 0, "gid": 0, "bytes": 0,
                            "mtime": "2026-03-01T09:59:00Z", "target": "/etc"}]),
        "symlink to an absolute path",
    );
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let body = b"through the link";
    assert_refused(
        "through link",
        &[
            Raw {
                path: "sub/",
                kind: tar::EntryType::Directory,
                link: None,
                body: b"",
            },
            Raw {
                path: "link",
                kind: tar::EntryType::Symlink,
                link: Some("sub"),
                body: b"",
            },
            Raw {
                path: "link/x",
                kind: tar::EntryType::Regular,
                link: None,
                body,
            },
        ],
        serde_json::json!([
            {"path": "sub", "type": "dir", "mode": 493, "uid": 0, "gid": 0, "bytes": 0, "mtime": "2026-03-01T09:59:00Z"},
            {"path": "link", "type": "symlink", "mode": 511, "uid": 0, "gid": 0, "bytes": 0,
             "mtime": "2026-03-01T09:59:00Z", "target": "sub"},
            file_entry("link/x", body),
        ]),
        "parent directory",
    );
}

#[test]
fn fifos_devices_and_hard_links_are_refused() {
    for (kind, reason) in [
        (tar::EntryType::Fifo, "fifos are not restored"),
        (tar::EntryType::Char, "device files are not restored"),
        (tar::EntryType::Block, "device files are not restored"),
        (tar::EntryType::Link, "hard links are not restored"),
    ] {
        assert_refused(
            reason,
            &[Raw {
                path: "special",
                kind,
                link: Some("other"),
                body: b"",
            }],
            serde_json::json!([file_entry("special", b"")]),
            reason,
        );
    }
}

#[test]
fn entries_missing_from_the_manifest_are_refused() {
    let body = b"smuggled";
    assert_refused(
        "smuggled",
        &[Raw {
            path: "extra.txt",
            kind: tar::EntryType::Regular,
            link: None,
            body,
        }],
        serde_json::json!([]),
        "not in the manifest",
    );
}

#[test]
fn link_chains_that_resolve_outside_are_refused() {
    // Lexically each link stays inside; resolved through `a/b`, `c` is the root's parent.
    let dir = |path: &str| {
        serde_json::json!({"path": path, "type": "dir", "mode": 493, "uid": 0, "gid": 0, "bytes": 0,
                           "mtime": "2026-03-01T09:59:00Z"})
    };
    let link = |path: &str, target: &str| {
        serde_json::json!({"path": path, "type": "symlink", "mode": 511, "uid": 0, "gid": 0, "bytes": 0,
                           "mtime": "2026-03-01T09:59:00Z", "target": target})
    };
    assert_refused(
        "chain",
        &[
            Raw {
                path: "a/",
                kind: tar::EntryType::Directory,
                link: None,
                body: b"",
            },
            Raw {
                path: "a/b",
                kind: tar::EntryType::Symlink,
                link: Some(".."),
                body: b"",
            },
            Raw {
                path: "c",
                kind: tar::EntryType::Symlink,
                link: Some("a/b/.."),
                body: b"",
            },
        ],
        serde_json::json!([dir("a"), link("a/b", ".."), link("c", "a/b/..")]),
        "outside the state directory",
    );
}

#[test]
fn crafted_setuid_modes_are_not_planted() {
    let s3 = S3Server::start();
    let world = World::new(&s3, "suid", "");
    let body = b"#!/bin/sh\n";
    let mut entry = file_entry("tool", body);
    entry["mode"] = serde_json::json!(0o6755);
    let archive = archive(&[Raw {
        path: "tool",
        kind: tar::EntryType::Regular,
        link: None,
        body,
    }]);
    publish(&s3, "suid", &archive, serde_json::json!([entry]));
    let target = world.dir.path().join("target");
    let report = world.json(&["restore", "--to", target.to_str().expect("utf8"), "--json"]);
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(target.join("tool")).expect("restored").mode() & 0o7777;
    assert_eq!(mode, 0o755);
    assert_eq!(report["privilege_dropped"], serde_json::json!(["tool"]), "{report}");
}

/// Issue 20, item 10, in format 1 too: a manifest recording the state directory as 0o6777 gets
/// a directory that is neither setuid, setgid nor world-writable, and the restore says so.
#[test]
fn a_recorded_state_directory_mode_is_never_planted_setuid_or_world_writable() {
    use std::os::unix::fs::PermissionsExt;
    let s3 = S3Server::start();
    let world = World::new(&s3, "hostile-root", "");
    let body = b"fine";
    let entries = [Raw {
        path: "a.txt",
        kind: tar::EntryType::Regular,
        link: None,
        body,
    }];
    publish_with_root(
        &s3,
        "hostile-root",
        &archive(&entries),
        serde_json::json!([file_entry("a.txt", body)]),
        0o6777,
    );
    let target = world.dir.path().join("target");
    let report = world.json(&["restore", "--to", target.to_str().expect("utf8"), "--json"]);
    let mode = std::fs::metadata(&target).expect("target").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o775, "{report}");
    assert!(report["privilege_dropped"].to_string().contains("0o6002"), "{report}");
}
