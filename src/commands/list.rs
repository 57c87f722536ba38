//! `spotkeeper list`: every snapshot of both formats, newest first: format 1 with totals from the
//! manifests' metadata, format 2 with restic's id and what each snapshot added to the repository.

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
}

pub async fn run(
    config: &Config,
    store: &Store,
    engine: Option<&crate::format2::Engine>,
    args: &ListArgs,
) -> Result<(), CommandError> {
    let listing = repository::list(store).await?;
    // A head that is not authentic, or moved backwards: listed anyway (the snapshots are what a
    // person picks from), nothing marked latest, then the error (exit 5).
    let mut untrusted = None;
    let mut head = match repository::head(store, engine).await {
        Ok(head) => head.map(|(h, _)| h),
        // `list` is how a person looks at a damaged repository: say it, and list anyway.
        Err(repository::RepositoryError::Manifest(e)) => {
            tracing::warn!(error = %e, "the latest pointer cannot be read; no snapshot is marked latest");
            None
        }
        Err(e @ repository::RepositoryError::Head(_)) => {
            untrusted = Some(e);
            None
        }
        Err(e) => return Err(e.into()),
    };
    let latest_one = match &head {
        Some(repository::Head::One(manifest)) => Some(manifest.id),
        _ => None,
    };
    let format2 = match engine {
        Some(engine) => repository::list_format2(engine).await?,
        None => {
            if repository::has_pointer(store).await? {
                tracing::warn!(
                    "this prefix holds format 2 snapshots, which need [repository] password_ssm or password_file \
                     to be listed (and latest.json's MAC to be checked); only format 1 is shown"
                );
            }
            Vec::new()
        }
    };
    if let Some(repository::Head::Two(pointer)) = &head
        && engine.is_some()
        && let Err(e) = repository::check_not_replayed(store, pointer, &format2)
    {
        untrusted = Some(e);
        head = None;
    }
    // Two writers in one minute can give two restic snapshots one id: the head is the one whose
    // restic id latest.json names.
    let latest_restic = match &head {
        Some(repository::Head::Two(pointer)) => Some(pointer.restic_id.clone()),
        _ => None,
    };
    let rows: Vec<Result<Row, CommandError>> = stream::iter(listing.snapshots.into_iter().rev())
        .map(|listed| row(store, listed, latest_one))
        .buffered(HEADS_IN_FLIGHT)
        .collect()
        .await;
    let mut rows = rows.into_iter().collect::<Result<Vec<_>, _>>()?;
    rows.extend(format2.into_iter().filter_map(|l| {
        let id = l.id?;
        Some(Row {
            id,
            created_at: l.time,
            complete: true,
            latest: latest_restic.as_deref() == Some(l.restic_id.as_str()),
            archive_bytes: l.data_added,
            files: l.files,
            bytes: l.bytes,
            format: 2,
            follow: l.follow,
            restic_id: Some(l.restic_id),
            paths: l
                .paths
                .unwrap_or_default()
                .into_iter()
                .map(|p| crate::mirror::PathTotals {
                    name: p.name,
                    files: p.files,
                    bytes: p.bytes,
                })
                .collect(),
        })
    }));
    rows.sort_by(|a, b| b.id.cmp(&a.id).then(b.format.cmp(&a.format)));
    for key in &listing.foreign {
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

async fn row(store: &Store, listed: Listed, latest: Option<SnapshotId>) -> Result<Row, CommandError> {
    let mut row = Row {
        id: listed.id,
        created_at: listed.id.time(),
        complete: listed.complete,
        latest: latest == Some(listed.id),
        archive_bytes: listed.archive_bytes,
        files: None,
        bytes: None,
        format: 1,
        restic_id: None,
        paths: Vec::new(),
        follow: false,
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
    if let (Some(files), Some(bytes)) = (row.files, row.bytes) {
        row.paths = vec![crate::mirror::PathTotals {
            name: crate::config::SHORTHAND_PATH_NAME.to_string(),
            files,
            bytes,
        }];
    }
    Ok(row)
}
