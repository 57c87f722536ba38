//! `spotkeeper list`: every snapshot of both formats, newest first: format 1 with totals from the
//! manifests' metadata, format 2 with restic's id and what each snapshot added to the repository.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{CommandError, human_bytes, print_json};
use crate::catalog::{self, Detail, HeadRead, Snapshot};
use crate::cli::ListArgs;
use crate::config::Config;
use crate::snapshot_id::SnapshotId;
use crate::store::Store;

#[derive(Debug, Serialize)]
struct Row {
    id: SnapshotId,
    created_at: DateTime<Utc>,
    complete: bool,
    latest: bool,
    /// Format 1: the archive's size. Format 2: the new data this snapshot added (packed).
    archive_bytes: Option<u64>,
    files: Option<u64>,
    bytes: Option<u64>,
    format: u8,
    /// Format 2: restic's id (`restic restore RESTIC_ID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    restic_id: Option<String>,
    /// The state paths the snapshot holds, each with its files and bytes (format 1: the one
    /// path `state`).
    paths: Vec<crate::mirror::PathTotals>,
    /// Taken to follow changes (`[snapshot] follow`), kept `retention.follow_keep`.
    follow: bool,
    /// Format 2: the entries the snapshot could not copy, with the reason (from its encrypted
    /// description). Format 1 lists them in snapshots/ID/manifest.json.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    skipped: Vec<crate::tree::Skipped>,
    /// Format 2, taken by the daemon: the image the app ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<crate::manifest::ImageInfo>,
}

pub async fn run(
    config: &Config,
    store: &Store,
    engine: Option<&crate::format2::Engine>,
    args: &ListArgs,
) -> Result<(), CommandError> {
    let catalog = catalog::read(store, engine, Detail::Totals).await?;
    // `list` is how a person looks at a damaged repository: say it, and list anyway.
    if let HeadRead::Unreadable(e) = catalog.head() {
        tracing::warn!(error = %e, "the latest pointer cannot be read; no snapshot is marked latest");
    }
    if catalog.format2_unlisted() {
        tracing::warn!(
            "this prefix holds format 2 snapshots, which need [repository] password_ssm or password_file \
             to be listed (and latest.json's MAC to be checked); only format 1 is shown"
        );
    }
    // A head that is not authentic, or moved backwards: listed anyway (the snapshots are what a
    // person picks from), nothing marked latest, then the error (exit 5).
    let untrusted = catalog.distrust().map(crate::repository::RepositoryError::from);
    let mut rows: Vec<Row> = catalog.snapshots().iter().map(|s| row(s, catalog.is_head(s))).collect();
    rows.sort_by(|a, b| b.id.cmp(&a.id).then(b.format.cmp(&a.format)));
    for key in catalog.foreign_keys() {
        tracing::warn!(key = %store.full_key(key), "object under snapshots/ that belongs to no snapshot id; left alone");
    }
    if args.json {
        print_json(&rows)?;
        return untrusted.map_or(Ok(()), |e| Err(e.into()));
    }
    if rows.is_empty() {
        println!("no snapshot in {}", config.repository_url());
        return untrusted.map_or(Ok(()), |e| Err(e.into()));
    }
    println!(
        "{:<22} {:<10} {:>8} {:>12} {:>12}  {:<6} RESTIC ID",
        "ID", "STATE", "FILES", "SIZE", "STORED", "FORMAT"
    );
    for row in rows {
        let state = match (row.complete, row.latest, row.follow) {
            (true, true, _) => "latest",
            (true, false, true) => "follow",
            (true, false, false) => "complete",
            (false, _, _) => "incomplete",
        };
        let show = |v: Option<u64>, f: fn(u64) -> String| v.map(f).unwrap_or_else(|| "-".into());
        println!(
            "{:<22} {:<10} {:>8} {:>12} {:>12}  {:<6} {}",
            row.id.to_string(),
            state,
            show(row.files, |n| n.to_string()),
            show(row.bytes, human_bytes),
            show(row.archive_bytes, human_bytes),
            row.format,
            row.restic_id.as_deref().map_or("-", |id| &id[..8.min(id.len())]),
        );
        // Several paths: each on its own line under the snapshot.
        if row.paths.len() > 1 {
            for path in &row.paths {
                println!("  {:<31} {:>8} {:>12}", path.name, path.files, human_bytes(path.bytes));
            }
        }
    }
    untrusted.map_or(Ok(()), |e| Err(e.into()))
}

fn row(snapshot: &Snapshot, latest: bool) -> Row {
    let paths = match (snapshot.paths(), snapshot.files(), snapshot.bytes()) {
        (Some(paths), _, _) => paths
            .iter()
            .map(|p| crate::mirror::PathTotals {
                name: p.name.clone(),
                files: p.files,
                bytes: p.bytes,
            })
            .collect(),
        // Format 1 holds the one path `state`.
        (None, Some(files), Some(bytes)) if snapshot.format() == catalog::Format::One => {
            vec![crate::mirror::PathTotals {
                name: crate::config::SHORTHAND_PATH_NAME.to_string(),
                files,
                bytes,
            }]
        }
        (None, _, _) => Vec::new(),
    };
    Row {
        id: snapshot.id(),
        created_at: snapshot.created_at(),
        complete: snapshot.complete(),
        latest,
        archive_bytes: snapshot.stored(),
        files: snapshot.files(),
        bytes: snapshot.bytes(),
        format: snapshot.format().number(),
        restic_id: snapshot.restic_id().map(str::to_string),
        skipped: snapshot.skipped().to_vec(),
        image: snapshot.image().cloned(),
        paths,
        follow: snapshot.follow(),
    }
}
