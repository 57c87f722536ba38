//! One file per subcommand. Each returns a `CommandError`, which knows its exit code.

mod check_config;
mod list;
mod prune;
mod restore;
mod snapshot;
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
            CommandError::Restore(e) => match e {
                RestoreError::Repository(e) => repository_code(e),
                RestoreError::Archive(e) if e.is_integrity() => exit::INTEGRITY,
                RestoreError::Archive(_) | RestoreError::Download { .. } | RestoreError::Io { .. } => exit::IO,
                RestoreError::NoSnapshot { .. }
                | RestoreError::SnapshotNotFound { .. }
                | RestoreError::ArchiveMissing { .. } => exit::NOT_FOUND,
                RestoreError::Refused { .. } | RestoreError::LatestMissing { .. } => exit::REFUSED,
                RestoreError::Task(_) => exit::FAILURE,
            },
            CommandError::Record(_) | CommandError::Output(_) => exit::IO,
            CommandError::PartialPrune(_) => exit::PARTIAL,
        }
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
            | ManifestError::UnsafeEntry { .. },
        ) => exit::INTEGRITY,
    }
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> Result<(), CommandError> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::CheckConfig => check_config::run(&config, &cli.config),
        Command::Snapshot(args) => snapshot::run(&config, &connect(&config).await, &args).await,
        Command::Restore(args) => restore::run(&config, &connect(&config).await, &args).await,
        Command::List(args) => list::run(&config, &connect(&config).await, &args).await,
        Command::Verify(args) => verify::run(&config, &connect(&config).await, &args).await,
        Command::Prune(args) => prune::run(&config, &connect(&config).await, &args).await,
    }
}

async fn connect(config: &Config) -> Store {
    Store::connect(&config.s3).await
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
