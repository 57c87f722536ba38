//! `spotkeeper restore`: restore `latest/` or a snapshot into the state directory or `--to DIR`.

use chrono::Utc;

use super::{CommandError, human_bytes, print_json};
use crate::cli::RestoreArgs;
use crate::config::Config;
use crate::record;
use crate::restore::{self, RestoreRequest};

pub async fn run(config: &Config, args: &RestoreArgs) -> Result<(), CommandError> {
    // Into the state dir while the daemon runs: it stops the container, keeps a safety snapshot,
    // restores (keeping the current state in `<state dir>.displaced/`) and starts the container again.
    if args.to.is_none() {
        let request = crate::control::Request::Restore {
            snapshot: args.snapshot,
        };
        if let Some(result) = super::via_daemon(config, &request).await? {
            if args.json {
                return print_json(&result);
            }
            let restored = &result["restored"];
            println!(
                "restored {} into {} through the daemon ({} files, safety snapshot: {}); container started again",
                restored["id"].as_str().unwrap_or("?"),
                restored["target"].as_str().unwrap_or("?"),
                restored["files"],
                result["safety_snapshot"]["id"]
                    .as_str()
                    .or(result["safety_snapshot"]["since"].as_str())
                    .unwrap_or("?")
            );
            if let Some(displaced) = restored["displaced"].as_str() {
                println!("previous local state kept at {displaced}");
            }
            return Ok(());
        }
    }
    let store = &super::connect(config).await;
    let repository = config.repository_url();
    let is_state_dir = args.to.is_none();
    let local = record::load(&config.state.work_dir)?;
    let origin = local.as_ref().map(|r| {
        if r.repository == repository && r.state_dir == config.state.dir {
            format!(
                "local state that descends from snapshot {} (latest/ was {} then; it may hold newer changes)",
                r.snapshot_id, r.latest_id
            )
        } else {
            format!(
                "local state last recorded against {} (snapshot {})",
                r.repository, r.snapshot_id
            )
        }
    });
    let request = RestoreRequest {
        snapshot: args.snapshot,
        target: args.to.clone().unwrap_or_else(|| config.state.dir.clone()),
        is_state_dir,
        force: args.force,
        origin,
        repository: repository.clone(),
        now: Utc::now(),
    };
    let report = restore::restore(store, &request).await?;
    if is_state_dir {
        record::remember(
            &config.state.work_dir,
            &repository,
            &config.state.dir,
            report.id,
            report.latest.unwrap_or(report.id),
        )?;
    }
    tracing::info!(snapshot_id = %report.id, target = %report.target.display(), files = report.files,
        duration_ms = report.duration_ms, "restore complete");
    if args.json {
        return print_json(&report);
    }
    println!(
        "restored {} into {}: {} files, {}, verified, {} ms",
        report.id,
        report.target.display(),
        report.files,
        human_bytes(report.bytes),
        report.duration_ms
    );
    if let Some(displaced) = &report.displaced {
        println!("previous local state kept at {}", displaced.display());
    }
    Ok(())
}
