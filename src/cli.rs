//! The command line. Each subcommand's doc comment is its help.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;
use crate::snapshot_id::SnapshotId;

/// Keeps one stateful container alive on an EC2 Spot instance with its state safe in S3.
///
/// Exit codes: 0 ok, 1 unexpected failure, 2 usage, 3 config, 4 not found, 5 integrity,
/// 6 S3 or disk I/O, 7 refused to protect data, 8 prune could not delete everything.
#[derive(Debug, Parser)]
#[command(name = "spotkeeper", version, max_term_width = 100)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "SPOTKEEPER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// More detail on stderr: -v for progress notes (INFO), -vv for every step and the full
    /// chain of each error (DEBUG). `SPOTKEEPER_LOG` (a tracing filter) overrides both.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (started by spotkeeper.service): restore if needed, hydrate secrets, run and
    /// supervise the container, snapshot on schedule, prune daily, final snapshot on stop.
    Run,
    /// Show what the running daemon is doing: phase, container, last and next snapshot, last prune.
    Status(StatusArgs),
    /// Snapshot the state paths now (all of them, one snapshot) and make it the head.
    ///
    /// Refuses to replace `latest/` when the local state does not descend from it (another
    /// machine may be writing the same prefix) unless --force.
    Snapshot(SnapshotArgs),
    /// Restore the head (or --snapshot ID) into the state paths, or --to DIR.
    ///
    /// Every path is staged beside its own directory and verified before anything is swapped in;
    /// the swaps are journaled in work_dir, so a restore killed between them is completed by the
    /// next start: all paths or none. Non-empty paths are refused unless --force, which first
    /// moves each beside itself to <DIR>.displaced/<time>/. --path NAME restores one path.
    Restore(RestoreArgs),
    /// List every snapshot, newest first.
    List(ListArgs),
    /// Download a snapshot and check its archive and every file against its manifest, without
    /// extracting anything.
    Verify(VerifyArgs),
    /// Delete snapshots by the tiered retention policy in [retention], explaining every decision.
    ///
    /// Ages are measured from the newest complete snapshot, not from the clock; only the grace
    /// period for incomplete snapshots and the check for future-dated ids use the current time
    /// (or --now).
    Prune(PruneArgs),
    /// Validate the config file and print the effective configuration.
    CheckConfig,
    /// Create the format-2 repository (an encrypted restic repository under PREFIX/repo/) with
    /// the password that [repository] names.
    ///
    /// With --create-password, first creates that SSM SecureString with 32 random bytes (never
    /// overwriting one). Losing the password loses every backup: escrow it with `spotkeeper key
    /// show`. The daemon and `snapshot` also create the repository on their first format-2
    /// snapshot when nothing is under PREFIX/repo/ yet.
    Init(InitArgs),
    /// The repository password, for escrow (`key show`).
    Key(KeyArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) on stdout.
    ///
    /// For example `spotkeeper completions bash > /usr/share/bash-completion/completions/spotkeeper`
    /// (`make install` does this for bash, zsh and fish).
    Completions(CompletionsArgs),
    /// Print the manual page (roff) of spotkeeper, or of one subcommand, on stdout:
    /// `spotkeeper man | man -l -`, `spotkeeper man restore | man -l -`.
    Man(ManArgs),
}

impl Cli {
    /// Whether the command was asked for JSON output: its errors are then JSON on stdout too.
    pub fn json(&self) -> bool {
        match &self.command {
            Command::Status(a) => a.json,
            Command::Snapshot(a) => a.json,
            Command::Restore(a) => a.json,
            Command::List(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Prune(a) => a.json,
            Command::Run
            | Command::CheckConfig
            | Command::Completions(_)
            | Command::Man(_)
            | Command::Init(_)
            | Command::Key(_) => false,
        }
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Also create the SSM SecureString that [repository] password_ssm names, with 32 random
    /// bytes (64 hex digits); refused when it exists.
    #[arg(long)]
    pub create_password: bool,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print the repository password on stdout, for escrow (a password manager, a safe).
    ///
    /// Only to a terminal, unless --yes: a password in a pipe or a file is easy to leak.
    Show {
        /// Print it even though stdout is not a terminal.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// A subcommand whose page to print (`spotkeeper-SUBCOMMAND(1)`).
    #[arg(value_name = "SUBCOMMAND")]
    pub subcommand: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Replace `latest/` even if the local state does not descend from it.
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot to restore (default: `latest/`).
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<SnapshotId>,
    /// Restore into DIR (empty or absent) instead of the state paths: each path at DIR/<NAME>/
    /// when the snapshot holds several, else the one path at DIR.
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// Restore only the state path NAME (the others stay as they are; the local record too).
    #[arg(long, value_name = "NAME")]
    pub path: Option<String>,
    /// Move non-empty state paths aside to <DIR>.displaced/<time>/ and restore.
    #[arg(long, conflicts_with = "to")]
    pub force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The snapshot to verify (default: `latest/`).
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<SnapshotId>,
    /// The restore drill: extract into a scratch dir under work_dir, check every SQLite database
    /// with `PRAGMA integrity_check`, then delete the scratch dir.
    #[arg(long)]
    pub deep: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Print the decisions without deleting anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Evaluate as if at this time (RFC 3339). Only the grace period for incomplete snapshots and
    /// the future-dated check use it.
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<DateTime<Utc>>,
    /// Print the decisions as JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn json_is_known_for_every_command_that_has_it() {
        let cli = Cli::try_parse_from(["spotkeeper", "list", "--json"]).expect("parse");
        assert!(cli.json());
        let cli = Cli::try_parse_from(["spotkeeper", "-vv", "verify"]).expect("parse");
        assert!(!cli.json());
        assert_eq!(cli.verbose, 2);
        let cli = Cli::try_parse_from(["spotkeeper", "completions", "fish"]).expect("parse");
        assert!(!cli.json());
    }

    #[test]
    fn make_install_installs_a_man_page_for_every_subcommand() {
        let makefile = include_str!("../Makefile");
        let line = makefile
            .lines()
            .find(|l| l.contains("for sub in"))
            .expect("the Makefile's man page loop");
        let listed: Vec<&str> = line
            .split("for sub in")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .expect("the list")
            .split_whitespace()
            .collect();
        let known: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        assert_eq!(listed, known, "the Makefile's list of man pages");
    }

    #[test]
    fn restore_force_conflicts_with_to() {
        let result = Cli::try_parse_from(["spotkeeper", "restore", "--force", "--to", "/tmp/x"]);
        assert!(result.is_err());
    }
}
