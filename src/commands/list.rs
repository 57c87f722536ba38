//! `spotkeeper list`: every snapshot, newest first, with totals from the manifests' metadata.

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::{CommandError, human_bytes, print_json};
use crate::cli::ListArgs;
use crate::config::Config;
use crate::repository::{self, Listed, META_BYTES, META_CREATED_AT, META_FILES};
use crate::snapshot_id::SnapshotId;
use crate::store::Store;

/// HEAD requests in flight while reading manifest metadata.
const HEADS_IN_FLIGHT: usize = 16;

#[derive(Debug, Serialize)]
struct Row {
    id: SnapshotId,
    created_at: DateTime<Utc>,
    complete: bool,
    latest: bool,
    archive_bytes: Option<u64>,
    files: Option<u64>,
    bytes: Option<u64>,
}

pub async fn run(config: &Config, store: &Store, args: &ListArgs) -> Result<(), CommandError> {
    let listing = repository::list(store).await?;
    let latest = repository::latest(store).await?.map(|(m, _)| m.id);
    let rows: Vec<Result<Row, CommandError>> = stream::iter(listing.snapshots.into_iter().rev())
        .map(|listed| row(store, listed, latest))
        .buffered(HEADS_IN_FLIGHT)
        .collect()
        .await;
    let rows = rows.into_iter().collect::<Result<Vec<_>, _>>()?;
    for key in &listing.foreign {
        tracing::warn!(key = %store.full_key(key), "object under snapshots/ that belongs to no snapshot id; left alone");
    }
    if args.json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("no snapshot in {}", config.repository_url());
        return Ok(());
    }
    println!(
        "{:<22} {:<10} {:>8} {:>12} {:>12}",
        "ID", "STATE", "FILES", "SIZE", "ARCHIVE"
    );
    for row in rows {
        let state = match (row.complete, row.latest) {
            (true, true) => "latest",
            (true, false) => "complete",
            (false, _) => "incomplete",
        };
        let show = |v: Option<u64>, f: fn(u64) -> String| v.map(f).unwrap_or_else(|| "-".into());
        println!(
            "{:<22} {:<10} {:>8} {:>12} {:>12}",
            row.id.to_string(),
            state,
            show(row.files, |n| n.to_string()),
            show(row.bytes, human_bytes),
            show(row.archive_bytes, human_bytes),
        );
    }
    Ok(())
}

async fn row(store: &Store, listed: Listed, latest: Option<SnapshotId>) -> Result<Row, CommandError> {
    let mut row = Row {
        id: listed.id,
        created_at: listed.id.time(),
        complete: listed.complete,
        latest: latest == Some(listed.id),
        archive_bytes: listed.archive_bytes,
        files: None,
        bytes: None,
    };
    if !listed.complete {
        return Ok(row);
    }
    let metadata = store
        .head_metadata(&repository::manifest_key(&listed.id))
        .await
        .map_err(repository::RepositoryError::from)?;
    if let Some(metadata) = metadata {
        row.files = metadata.get(META_FILES).and_then(|v| v.parse().ok());
        row.bytes = metadata.get(META_BYTES).and_then(|v| v.parse().ok());
        if let Some(created) = metadata
            .get(META_CREATED_AT)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        {
            row.created_at = created.with_timezone(&Utc);
        }
    }
    Ok(row)
}
