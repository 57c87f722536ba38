//! `spotkeeper restore`: restore `latest/` or a snapshot into the state directory or `--to DIR`.

use chrono::Utc;

use super::{CommandError, human_bytes, print_json};
use crate::cli::RestoreArgs;
use crate::config::Config;
use crate::control::Reply;
use crate::record;
use crate::restore::{self, RestoreRequest};
use crate::runtime::{self, ContainerRuntime, RunState};
use crate::snapshot::SnapshotOutcome;

pub async fn run(config: &Config, args: &RestoreArgs) -> Result<(), CommandError> {
    // Into the state dir while the daemon runs: it stops the container, keeps a safety snapshot,
    // restores (keeping the current state in `<state dir>.displaced/`) and starts the container again.
    if args.to.is_none() {
        let request = crate::control::Request::Restore {
            snapshot: args.snapshot,
        };
        if let Some(reply) = super::via_daemon(config, &request).await? {
            let Reply::Restore(done) = reply else {
                return Err(super::unexpected(&reply));
            };
            if args.json {
                return print_json(&done);
            }
            let safety = match &done.safety_snapshot {
                SnapshotOutcome::Uploaded { id, .. } => id.to_string(),
                SnapshotOutcome::Unchanged { since, .. } => format!("unchanged since {since}"),
            };
            println!(
                "restored {} into {} through the daemon ({} files, safety snapshot: {safety}); container started again",
                done.restored.id,
                done.restored.target.display(),
                done.restored.files,
            );
            if let Some(displaced) = &done.restored.displaced {
                println!("previous local state kept at {}", displaced.display());
            }
            return Ok(());
        }
        // No daemon: the container must not be running on the state directory.
        refuse_while_container_runs(config).await?;
    }
    let (store, engine) = super::open(config).await?;
    let store = &store;
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
    let report = restore::restore(store, engine.as_ref(), &request).await?;
    if is_state_dir {
        crate::displaced::prune(&config.state.dir, crate::displaced::KEEP);
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

/// A container that runs with the state directory bind-mounted follows it when it is renamed
/// aside: the app would keep writing into the displaced copy. Refuse while it runs. No Docker
/// socket at all means no container can run.
async fn refuse_while_container_runs(config: &Config) -> Result<(), CommandError> {
    let Some(container) = &config.container else {
        return Ok(());
    };
    let socket = config
        .daemon
        .docker_host
        .as_deref()
        .map(|h| h.strip_prefix("unix://").unwrap_or(h).to_string())
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    if config.daemon.docker_host.is_none()
        && std::env::var_os("DOCKER_HOST").is_none()
        && !std::path::Path::new(&socket).exists()
    {
        return Ok(());
    }
    let docker = runtime::connect(config.daemon.docker_host.as_deref()).await?;
    let state = runtime::Container::new(docker, &container.name).state().await;
    let state = match state {
        Ok(state) => state,
        // Not ours: it cannot have our state mounted by our doing, but say nothing; the restore
        // checks the target as always.
        Err(runtime::RuntimeError::Foreign { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if matches!(state, RunState::Running | RunState::Paused) {
        return Err(CommandError::ContainerRunning {
            state_dir: config.state.dir.clone(),
            container: container.name.clone(),
            state: format!("{state:?}").to_lowercase(),
        });
    }
    Ok(())
}
