//! `spotkeeper status`: what the running daemon is doing.

use chrono::{DateTime, Utc};

use super::{CommandError, human_bytes, print_json};
use crate::cli::StatusArgs;
use crate::config::Config;
use crate::control::Request;

pub async fn run(config: &Config, args: &StatusArgs) -> Result<(), CommandError> {
    let Some(status) = super::via_daemon(config, &Request::Status).await? else {
        return Err(CommandError::NoDaemon(config.daemon.socket.display().to_string()));
    };
    if args.json {
        return print_json(&status);
    }
    let now = Utc::now();
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
    let age = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| format!("{}s ago", (now - t.with_timezone(&Utc)).num_seconds()))
            .unwrap_or_else(|| "-".into())
    };
    let c = &status["container"];
    println!("phase:          {}", text(&status["phase"]));
    println!(
        "container:      {} {} (healthy: {}, restarts: {}{})",
        text(&c["name"]),
        text(&c["state"]),
        c["healthy"],
        c["restarts"],
        if c["crash_loop"] == true {
            ", CRASH LOOP: not restarting"
        } else {
            ""
        }
    );
    println!("image:          {} {}", text(&c["image"]), text(&c["image_digest"]));
    let s = &status["last_snapshot"];
    if s.is_null() {
        println!("last snapshot:  none yet");
    } else {
        println!(
            "last snapshot:  {} ({}, {} ms, freeze {} ms, {})",
            text(&s["id"]),
            age(&s["at"]),
            s["duration_ms"],
            s["freeze_ms"],
            human_bytes(s["archive_bytes"].as_u64().unwrap_or(0))
        );
    }
    if let Some(since) = status["unchanged_since"].as_str() {
        println!("                unchanged since {since}");
    }
    println!("next snapshot:  {}", text(&status["next_snapshot"]));
    let p = &status["last_prune"];
    if !p.is_null() {
        println!(
            "last prune:     {} deleted, {} kept ({}){}",
            p["deleted"],
            p["kept"],
            age(&p["at"]),
            p["error"].as_str().map(|e| format!(" {e}")).unwrap_or_default()
        );
    }
    if let Some(error) = status["last_error"].as_str() {
        println!("last error:     {error}");
    }
    Ok(())
}
