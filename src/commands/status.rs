//! `spotkeeper status`: what the running daemon is doing.

use chrono::{DateTime, Utc};

use super::{CommandError, human_bytes, print_json};
use crate::cli::StatusArgs;
use crate::config::Config;
use crate::control::{Reply, Request};

pub async fn run(config: &Config, args: &StatusArgs) -> Result<(), CommandError> {
    let Some(reply) = super::via_daemon(config, &Request::Status).await? else {
        return Err(CommandError::NoDaemon(config.daemon.socket.display().to_string()));
    };
    let Reply::Status(status) = reply else {
        return Err(super::unexpected(&reply));
    };
    if args.json {
        return print_json(&status);
    }
    let now = Utc::now();
    let age = |t: DateTime<Utc>| format!("{}s ago", (now - t).num_seconds());
    let c = &status.container;
    println!("phase:          {}", status.phase);
    println!(
        "container:      {} {} (healthy: {}, restarts: {}, self-restarts: {}{})",
        c.name,
        if c.state.is_empty() { "-" } else { &c.state },
        c.healthy.map_or("-".to_string(), |h| h.to_string()),
        c.restarts,
        c.self_restarts,
        if c.crash_loop {
            ", CRASH LOOP: not restarting"
        } else {
            ""
        }
    );
    println!(
        "image:          {} {}",
        c.image,
        c.image_digest.as_deref().unwrap_or("-")
    );
    if !c.log_driver.is_empty() {
        println!("log driver:     {}", c.log_driver);
    }
    if let Some(degraded) = &c.degraded {
        println!("DEGRADED:       {degraded} (alive and serving; not restarted)");
    }
    if let Some(frozen) = &c.frozen_error {
        println!("FROZEN:         {frozen}");
    }
    match &status.last_snapshot {
        None => println!("last snapshot:  none yet"),
        Some(s) => println!(
            "last snapshot:  {} ({}, {} ms, freeze {} ms, {})",
            s.id,
            age(s.at),
            s.duration_ms,
            s.freeze_ms,
            human_bytes(s.archive_bytes)
        ),
    }
    if let Some(s) = status.last_snapshot.as_ref().filter(|s| s.paths.len() > 1) {
        for path in &s.paths {
            println!(
                "                {:<12} {} files, {}",
                path.name,
                path.files,
                human_bytes(path.bytes)
            );
        }
    }
    if let Some(s) = status.last_snapshot.as_ref().filter(|s| s.skipped > 0) {
        println!(
            "                {} entries could not be archived (listed in the manifest's skipped)",
            s.skipped
        );
    }
    match status.unprotected_since {
        Some(since) => println!(
            "window of loss: {} s (the oldest change not in a snapshot yet, at {})",
            (chrono::Utc::now() - since).num_seconds().max(0),
            since.to_rfc3339()
        ),
        None => println!("window of loss: none (every change seen is in the last snapshot)"),
    }
    if let Some(since) = status.unchanged_since {
        println!("                unchanged since {since}");
    }
    println!(
        "next snapshot:  {}",
        status.next_snapshot.map_or("-".to_string(), |t| t.to_rfc3339())
    );
    if let Some(p) = &status.last_prune {
        println!(
            "last prune:     {} deleted, {} kept ({}){}",
            p.deleted,
            p.kept,
            age(p.at),
            p.error.as_deref().map(|e| format!(" {e}")).unwrap_or_default()
        );
    }
    if let Some(logs) = &status.logs {
        println!(
            "own logs:       {} shipped to CloudWatch Logs, {} dropped",
            logs.shipped, logs.dropped
        );
    }
    for warning in &status.warnings {
        println!("warning:        {warning}");
    }
    if let Some(error) = &status.last_error {
        println!("last error:     {error}");
    }
    Ok(())
}
