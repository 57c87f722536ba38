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
            path: args.path.clone(),
        };
        if let Some(reply) = super::via_daemon(config, &request).await? {
            let Reply::Restore(done) = reply else {
                return Err(super::unexpected(&reply));
            };
            // A daemon from before `--path` ignores it and restores the whole set: say so.
            if let Some(name) = &args.path
                && !(done.restored.paths.len() == 1 && &done.restored.paths[0].name == name)
            {
                return Err(CommandError::Refused(format!(
                    "the running daemon is older than `restore --path`: it restored every path of snapshot {} (the state \
                     before it is its safety snapshot, and each directory's previous content is in <dir>.displaced/); \
                     restart it on this version to restore one path",
                    done.restored.id
                )));
            }
            if args.json {
                return print_json(&done);
            }
            let safety = match &done.safety_snapshot {
                SnapshotOutcome::Uploaded { id, .. } => id.to_string(),
                SnapshotOutcome::Unchanged { since, .. } => format!("unchanged since {since}"),
            };
            println!(
                "restored {} through the daemon ({} files, safety snapshot: {safety}); container started again",
                done.restored.id, done.restored.files,
            );
            print_paths(&done.restored);
            return Ok(());
        }
        // No daemon: the container must not be running on the state directory.
        refuse_while_container_runs(config).await?;
    }
    let (store, engine) = super::open(config).await?;
    let store = &store;
    let repository = config.repository_url();
    if let Some(name) = &args.path
        && args.to.is_none()
    {
        config.state.require_path(name).map_err(CommandError::Refused)?;
    }
    let local = record::load(&config.state.work_dir)?;
    let origin = local.as_ref().map(|r| {
        if r.repository == repository && r.state_dir == config.state.primary().dir {
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
    let destination = match &args.to {
        Some(dir) => restore::Destination::Dir(dir.clone()),
        None => restore::Destination::State {
            paths: config
                .state
                .paths
                .iter()
                .map(|p| (p.name.clone(), p.dir.clone()))
                .collect(),
            work_dir: config.state.work_dir.clone(),
        },
    };
    let request = RestoreRequest {
        snapshot: args.snapshot,
        destination,
        only: args.path.clone(),
        force: args.force,
        origin,
        repository: repository.clone(),
        now: Utc::now(),
    };
    let report = restore::restore(store, engine.as_ref(), &request).await?;
    if args.to.is_none() {
        for path in &config.state.paths {
            crate::displaced::prune(&path.dir, crate::displaced::KEEP);
        }
    }
    tracing::info!(snapshot_id = %report.id, target = %report.target.display(), files = report.files,
        duration_ms = report.duration_ms, "restore complete");
    if args.json {
        return print_json(&report);
    }
    println!(
        "restored {}: {} files, {}, verified, {} ms",
        report.id,
        report.files,
        human_bytes(report.bytes),
        report.duration_ms
    );
    print_paths(&report);
    Ok(())
}

/// Where each path went, and where its previous content was kept.
fn print_paths(report: &restore::RestoreReport) {
    for path in &report.paths {
        println!(
            "  {:<12} {} ({} files, {})",
            path.name,
            path.target.display(),
            path.files,
            human_bytes(path.bytes)
        );
        if let Some(displaced) = &path.displaced {
            println!("  {:<12} previous local state kept at {}", "", displaced.display());
        }
    }
    for name in &report.missing {
        println!("  {name:<12} not in this snapshot (taken before the path was configured): left as it was");
    }
    if !report.privilege_dropped.is_empty() {
        println!(
            "  restore never plants setuid, setgid or world-writable state directories; dropped on {} entries:",
            report.privilege_dropped.len()
        );
        for entry in &report.privilege_dropped {
            println!("    {}", entry.escape_debug());
        }
    }
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
            state_dir: config.state.primary().dir.clone(),
            container: container.name.clone(),
            state: format!("{state:?}").to_lowercase(),
        });
    }
    Ok(())
}
