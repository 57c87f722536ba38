//! `spotkeeper snapshot`: snapshot the state directory now (without a daemon: no freeze).

use chrono::Utc;

use super::{CommandError, human_bytes, print_json};
use crate::cli::SnapshotArgs;
use crate::config::Config;
use crate::exclude::Excludes;
use crate::manifest::Host;
use crate::record;
use crate::snapshot::{self, SnapshotRequest};

pub async fn run(config: &Config, args: &SnapshotArgs) -> Result<(), CommandError> {
    // A running daemon owns the state: it freezes the container and keeps its own bookkeeping.
    if !args.force
        && let Some(result) = super::via_daemon(config, &crate::control::Request::Snapshot).await?
    {
        if args.json {
            return print_json(&result);
        }
        match result["outcome"].as_str() {
            Some("unchanged") => println!(
                "unchanged since {} (no upload)",
                result["since"].as_str().unwrap_or("?")
            ),
            _ => println!(
                "{}  {} files, {} archive, {} ms, freeze {} ms, {} S3 requests (taken by the daemon)",
                result["id"].as_str().unwrap_or("?"),
                result["files"],
                human_bytes(result["archive_bytes"].as_u64().unwrap_or(0)),
                result["duration_ms"],
                result["freeze_ms"],
                result["requests"]
            ),
        }
        return Ok(());
    }
    let store = &super::connect(config).await;
    let repository = config.repository_url();
    let local = record::load(&config.state.work_dir)?;
    let base = local.as_ref().and_then(|r| r.base_for(&repository, &config.state.dir));
    let excludes =
        Excludes::new(&config.state.dir, &config.state.exclude).map_err(|e| crate::config::ConfigError::Parse {
            path: config.state.dir.clone(),
            message: e.to_string(),
        })?;
    let request = SnapshotRequest {
        source: config.state.dir.clone(),
        excludes,
        compression_level: config.snapshot.compression_level,
        host: Host {
            hostname: snapshot::hostname(),
            instance_id: None,
            writer: Some(record::writer_id(&config.state.work_dir)?),
        },
        image: None,
        base,
        force: args.force,
        now: Utc::now(),
    };
    let report = snapshot::take(store, request).await?;
    record::remember(
        &config.state.work_dir,
        &repository,
        &config.state.dir,
        report.id,
        report.id,
    )?;
    tracing::info!(snapshot_id = %report.id, files = report.files, archive_bytes = report.archive_bytes,
        duration_ms = report.duration_ms, requests = report.requests, "snapshot complete");
    if args.json {
        print_json(&report)
    } else {
        println!(
            "{}  {} files, {} -> {} archive, {} ms, {} S3 requests",
            report.id,
            report.files,
            human_bytes(report.bytes),
            human_bytes(report.archive_bytes),
            report.duration_ms,
            report.requests
        );
        Ok(())
    }
}
