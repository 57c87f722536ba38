//! One file per subcommand. Each returns a `CommandError`, which knows its exit code.

mod check_config;
mod init;
mod key;
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
use crate::control::{Reply, Request};
use crate::exit::{self, Exit};
use crate::format2::Engine;
use crate::record::RecordError;
use crate::repository::RepositoryError;
use crate::restore::RestoreError;
use crate::snapshot::SnapshotError;
use crate::store::Store;

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
    #[error("{0}")]
    Usage(String),
    /// Refused to protect data (exit 7).
    #[error("{0}")]
    Refused(String),
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
    #[error(transparent)]
    Mirror(#[from] crate::mirror::MirrorError),
    #[error(transparent)]
    Format2(#[from] crate::format2::Format2Error),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    StateLock(#[from] crate::state_lock::StateLockError),
    #[error("cannot prepare {path}: {source}")]
    WorkDir {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error(
        "refusing to restore into {state_dir}: container {container} is {state} with it bind-mounted, and would \
         keep writing into the state that is moved aside. Nothing was changed. Either start the daemon and restore \
         through it (`systemctl start spotkeeper`, then this command again: it stops the container, keeps a safety \
         snapshot, restores and starts it), or stop the container first (`docker stop {container}`)"
    )]
    ContainerRunning {
        state_dir: std::path::PathBuf,
        container: String,
        state: String,
    },
}

impl CommandError {
    /// The documented exit code for this error (the same mapping the daemon uses).
    pub fn exit(&self) -> Exit {
        match self {
            CommandError::Config(_) => Exit::Config,
            CommandError::Repository(e) => exit::of_repository(e),
            CommandError::Snapshot(e) => exit::of_snapshot(e),
            CommandError::Drill(crate::drill::DrillError::Restore(e)) => exit::of_restore(e),
            CommandError::Drill(crate::drill::DrillError::Sqlite { .. }) => Exit::Integrity,
            CommandError::Drill(_) => Exit::Io,
            CommandError::Restore(e) => exit::of_restore(e),
            CommandError::Record(_) | CommandError::Output(_) | CommandError::Mirror(_) => Exit::Io,
            CommandError::Format2(e) => exit::of_format2(e),
            CommandError::PartialPrune(_) => Exit::Partial,
            CommandError::Usage(_) => Exit::Usage,
            CommandError::Refused(_) => Exit::Refused,
            CommandError::Daemon(e) => e.exit(),
            CommandError::Control(e) => e.exit(),
            CommandError::Runtime(_) => Exit::Io,
            CommandError::Remote { code, .. } => Exit::from_code(*code),
            CommandError::NoDaemon(_) => Exit::NotFound,
            CommandError::ContainerRunning { .. } => Exit::Refused,
            CommandError::StateLock(crate::state_lock::StateLockError::Busy { .. }) => Exit::Refused,
            CommandError::StateLock(crate::state_lock::StateLockError::Io { .. }) | CommandError::WorkDir { .. } => {
                Exit::Io
            }
        }
    }
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> Result<(), CommandError> {
    match &cli.command {
        Command::Completions(args) => return completions(args.shell),
        Command::Man(args) => return man(args.subcommand.as_deref()),
        _ => {}
    }
    if !matches!(cli.command, Command::Run) {
        crate::progress::draw_on_terminal();
    }
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Completions(_) | Command::Man(_) => Ok(()),
        Command::CheckConfig => check_config::run(&config, &cli.config).await,
        Command::Run => run::run(config).await,
        Command::Status(args) => status::run(&config, &args).await,
        Command::Snapshot(args) => snapshot::run(&config, &args).await,
        Command::Restore(args) => restore::run(&config, &args).await,
        Command::List(args) => {
            let (store, engine) = open(&config).await?;
            list::run(&config, &store, engine.as_ref(), &args).await
        }
        Command::Verify(args) => {
            let (store, engine) = open(&config).await?;
            verify::run(&config, &store, engine.as_ref(), &args).await
        }
        Command::Prune(args) => {
            let (store, engine) = open(&config).await?;
            prune::run(&config, &store, engine.as_ref(), &args).await
        }
        Command::Init(args) => init::run(&config, &args).await,
        Command::Key(args) => key::run(&config, &args).await,
    }
}

/// `spotkeeper completions SHELL`: the script on stdout.
fn completions(shell: clap_complete::Shell) -> Result<(), CommandError> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut out = io::stdout().lock();
    clap_complete::generate(shell, &mut command, "spotkeeper", &mut out);
    Ok(())
}

/// `spotkeeper man [SUBCOMMAND]`: the manual page (roff) of spotkeeper or of one subcommand
/// (`spotkeeper-snapshot(1)`), on stdout.
fn man(subcommand: Option<&str>) -> Result<(), CommandError> {
    let command = <Cli as clap::CommandFactory>::command();
    let page = match subcommand {
        None => command,
        Some(name) => {
            let sub = command
                .find_subcommand(name)
                .ok_or_else(|| CommandError::Usage(format!("no subcommand named {name:?}")))?;
            sub.clone().name(format!("spotkeeper-{name}"))
        }
    };
    clap_mangen::Man::new(page).render(&mut io::stdout().lock())?;
    Ok(())
}

/// The store and, with a `[repository]` section, format 2's engine (password read now; no
/// metadata cache: a person's command leaves nothing of the state's metadata behind).
async fn open(config: &Config) -> Result<(Store, Option<Engine>), CommandError> {
    open_with_cache(config, None).await
}

/// `open` with rustic_core's metadata cache in `cache`.
async fn open_with_cache(
    config: &Config,
    cache: Option<std::path::PathBuf>,
) -> Result<(Store, Option<Engine>), CommandError> {
    if let Some(cache) = &cache {
        // rustic_core creates it with the umask's mode; ours first, 0700.
        crate::private_fs::ensure_dir(cache).map_err(|source| CommandError::WorkDir {
            path: cache.clone(),
            source,
        })?;
    }
    let sdk = crate::aws::sdk_config(config.s3.region.as_deref()).await;
    let store = Store::connect(&config.s3, &sdk);
    let engine = crate::format2::engine_for(config, &sdk, store.clone(), cache)
        .await
        .map_err(RepositoryError::from)?;
    Ok((store, engine))
}

/// Sends `request` to a running daemon. `Ok(None)` when none runs; a daemon's error becomes
/// `CommandError::Remote` with the daemon's exit code.
async fn via_daemon(config: &Config, request: &Request) -> Result<Option<Reply>, CommandError> {
    let call = crate::control::Call::new(config, request.clone());
    match crate::control::call(&config.daemon.socket, &call).await {
        Ok(None) => Ok(None),
        Ok(Some(Reply::Error(e))) => Err(CommandError::Remote {
            message: e.message,
            code: e.code,
        }),
        Ok(Some(reply)) => Ok(Some(reply)),
        // A daemon runs but this user may not talk to it (the socket is root's): working around it
        // behind its back would be worse, so this is an error.
        Err(e) => Err(e.into()),
    }
}

/// A daemon answered with a reply of the wrong kind: the two sides are different versions.
fn unexpected(reply: &Reply) -> CommandError {
    CommandError::Control(crate::control::ControlError::Protocol(format!(
        "unexpected reply from the daemon: {reply:?}"
    )))
}

/// Writes `value` as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CommandError> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    println!("{text}");
    Ok(())
}

use crate::progress::human_bytes;
