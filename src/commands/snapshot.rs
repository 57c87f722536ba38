//! `spotkeeper snapshot`: snapshot the state directory now (without a daemon: no freeze).

use chrono::Utc;

use super::{CommandError, human_bytes, print_json};
use crate::cli::SnapshotArgs;
use crate::config::Config;
use crate::control::Reply;
use crate::exclude::Excludes;
use crate::manifest::Host;
use crate::record;
use crate::snapshot::{self, SnapshotOutcome, SnapshotRequest};

pub async fn run(config: &Config, args: &SnapshotArgs) -> Result<(), CommandError> {
    // A running daemon owns the state: it freezes the container and keeps its own bookkeeping.
    if !args.force
        && let Some(reply) = super::via_daemon(config, &crate::control::Request::Snapshot).await?
    {
        let Reply::Snapshot(outcome) = reply else {
            return Err(super::unexpected(&reply));
        };
        return print_outcome(&outcome, args.json, " (taken by the daemon)");
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
            writer: Some(record::current_writer_id(&config.state.work_dir)?),
        },
        image: None,
        base,
        force: args.force,
        now: Utc::now(),
        also_skipped: Vec::new(),
    };
    let report = snapshot::take(store, request).await?;
    record::remember(
        &config.state.work_dir,
        &repository,
        &config.state.dir,
        report.id,
        report.id,
    )?;
    print_outcome(&report.outcome(0), args.json, "")
}

/// The result, once: the same schema with or without the daemon.
fn print_outcome(outcome: &SnapshotOutcome, json: bool, how: &str) -> Result<(), CommandError> {
    if json {
        return print_json(outcome);
    }
    match outcome {
        SnapshotOutcome::Unchanged { since, .. } => println!("unchanged since {since} (no upload){how}"),
        SnapshotOutcome::Uploaded {
            id,
            files,
            bytes,
            archive_bytes,
            duration_ms,
            freeze_ms,
            requests,
            skipped,
            ..
        } => {
            println!(
                "{id}  {files} files, {} -> {} archive, {duration_ms} ms, freeze {freeze_ms} ms, {requests} S3 requests{how}",
                human_bytes(*bytes),
                human_bytes(*archive_bytes),
            );
            if *skipped > 0 {
                println!(
                    "{skipped} entries could not be archived: `spotkeeper list --json` shows them in the manifest"
                );
            }
        }
    }
    Ok(())
}
