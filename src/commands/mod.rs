//! One file per subcommand. Each returns a `CommandError`, which knows its exit code.

mod check_config;
mod list;
mod prune;
mod restore;
mod run;
mod snapshot;
mod status;
mod verify;

use std::io;

use crate::cli::{Cli, Command};
use crate::config::{Config, ConfigError};
use crate::exit;
use crate::manifest::ManifestError;
use crate::record::RecordError;
use crate::repository::RepositoryError;
use crate::restore::RestoreError;
use crate::snapshot::SnapshotError;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("{0}")]
    PartialPrune(String),
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// An error the running daemon reported, with its exit code.
    #[error("{message}")]
    Remote { message: String, code: u8 },
    #[error("no spotkeeper daemon is running (nothing answers on {0})")]
    NoDaemon(String),
    #[error(transparent)]
    Drill(#[from] crate::drill::DrillError),
}

impl CommandError {
    /// The documented exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Config(_) => exit::CONFIG,
            CommandError::Repository(e) => repository_code(e),
            CommandError::Snapshot(e) => match e {
                SnapshotError::Repository(e) => repository_code(e),
                SnapshotError::Archive(_) => exit::IO,
                SnapshotError::Diverged { .. } | SnapshotError::LatestMoved { .. } => exit::REFUSED,
                SnapshotError::Task(_) => exit::FAILURE,
            },
            CommandError::Drill(crate::drill::DrillError::Restore(e)) => restore_code(e),
            CommandError::Drill(crate::drill::DrillError::Sqlite { .. }) => exit::INTEGRITY,
            CommandError::Drill(_) => exit::IO,
            CommandError::Restore(e) => restore_code(e),
            CommandError::Record(_) | CommandError::Output(_) => exit::IO,
            CommandError::PartialPrune(_) => exit::PARTIAL,
            CommandError::Daemon(e) => e.exit_code(),
            CommandError::Control(_) => exit::IO,
            CommandError::Remote { code, .. } => *code,
            CommandError::NoDaemon(_) => exit::NOT_FOUND,
        }
    }
}

fn restore_code(e: &RestoreError) -> u8 {
    match e {
        RestoreError::Repository(e) => repository_code(e),
        RestoreError::Archive(e) if e.is_integrity() => exit::INTEGRITY,
        RestoreError::Archive(_) | RestoreError::Download { .. } | RestoreError::Io { .. } => exit::IO,
        RestoreError::NoSnapshot { .. }
        | RestoreError::SnapshotNotFound { .. }
        | RestoreError::ArchiveMissing { .. } => exit::NOT_FOUND,
        RestoreError::Refused { .. } | RestoreError::LatestMissing { .. } => exit::REFUSED,
        RestoreError::Task(_) => exit::FAILURE,
    }
}

fn repository_code(error: &RepositoryError) -> u8 {
    match error {
        RepositoryError::Store(StoreError::NoSuchBucket { .. }) => exit::NOT_FOUND,
        RepositoryError::Store(_) => exit::IO,
        RepositoryError::Manifest(
            ManifestError::Decode { .. }
            | ManifestError::UnsupportedFormat { .. }
            | ManifestError::WrongId { .. }
            | ManifestError::UnsafeEntry { .. }
            | ManifestError::TooLarge { .. },
        ) => exit::INTEGRITY,
    }
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> Result<(), CommandError> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::CheckConfig => check_config::run(&config, &cli.config),
        Command::Run => run::run(config).await,
        Command::Status(args) => status::run(&config, &args).await,
        Command::Snapshot(args) => snapshot::run(&config, &args).await,
        Command::Restore(args) => restore::run(&config, &args).await,
        Command::List(args) => list::run(&config, &connect(&config).await, &args).await,
        Command::Verify(args) => verify::run(&config, &connect(&config).await, &args).await,
        Command::Prune(args) => prune::run(&config, &connect(&config).await, &args).await,
    }
}

async fn connect(config: &Config) -> Store {
    Store::connect(&config.s3, &crate::aws::sdk_config(config.s3.region.as_deref()).await)
}

/// Sends `request` to a running daemon. `Ok(None)` when none runs; a daemon's error becomes
/// `CommandError::Remote` with the daemon's exit code.
async fn via_daemon(
    config: &Config,
    request: &crate::control::Request,
) -> Result<Option<serde_json::Value>, CommandError> {
    match crate::control::call(&config.daemon.socket, request).await {
        Ok(None) => Ok(None),
        Ok(Some(response)) if response.ok => Ok(Some(response.result.unwrap_or_default())),
        Ok(Some(response)) => Err(CommandError::Remote {
            message: response.error.unwrap_or_else(|| "the daemon reported an error".into()),
            code: response.exit_code.unwrap_or(exit::FAILURE),
        }),
        // A daemon runs but this user may not talk to it (the socket is root's): working around it
        // behind its back would be worse, so this is an error.
        Err(e) => Err(e.into()),
    }
}

/// Writes `value` as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CommandError> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    println!("{text}");
    Ok(())
}

/// `1.2 MiB`-style sizes for people.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_picks_a_readable_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(268_057_104), "255.6 MiB");
    }
}
