//! The `spotkeeper` binary: parse the command line, start logging, run the command, map its
//! error to a documented exit code.

use std::process::ExitCode;

use clap::Parser;
use spotkeeper::cli::{Cli, Command};
use spotkeeper::exit::Exit;
use spotkeeper::{commands, report};
use tracing_subscriber::EnvFilter;

/// jemalloc, with its background thread on: memory a tick frees goes back to the kernel while the
/// daemon rests, where glibc's arenas kept it (docs/performance.md, "Memory at rest").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors keep clap's layout on stderr; a --json caller gets one on stdout too.
            let usage = e.use_stderr();
            if usage && std::env::args().any(|a| a == "--json") {
                report::json_error(Exit::Usage, &e.kind().to_string());
            }
            let _ = e.print();
            return if usage { Exit::Usage.into() } else { Exit::Ok.into() };
        }
    };
    init_logging(&cli);
    let json = cli.json();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return report::failure(json, Exit::Failure, &format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            // The whole chain for whoever asked for it (-vv); the person gets one line.
            tracing::debug!(error = ?e, "command failed");
            report::failure(json, e.exit(), &e.to_string())
        }
    }
}

/// Logs go to the journal with structured fields when stderr is the journal, else to stderr
/// (stdout is the command's output). The daemon logs INFO; a command a person runs prints its
/// result on stdout and only warnings on stderr, more with -v (INFO) and -vv (DEBUG).
/// `SPOTKEEPER_LOG` (a tracing filter) overrides both.
fn init_logging(cli: &Cli) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let daemon = matches!(cli.command, Command::Run);
    let level = match (cli.verbose, daemon) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        _ => "debug",
    };
    // The SDKs' own INFO and DEBUG lines are noise to a person; their failures reach the person
    // through spotkeeper's own errors, with the chain at -vv.
    let sdk = if cli.verbose >= 3 { "debug" } else { "error" };
    let filter = EnvFilter::try_from_env("SPOTKEEPER_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},aws_config={sdk},aws_smithy_runtime={sdk},aws_smithy_runtime_api={sdk},aws_sdk_s3={sdk},\
             aws_sdk_ssm={sdk},aws_sdk_cloudwatch={sdk},aws_sdk_cloudwatchlogs={sdk},aws_sdk_ecr={sdk},hyper={sdk},hyper_util={sdk},bollard={sdk},\
             rustic_core=warn"
        ))
    });
    // The daemon's own lines also go to CloudWatch Logs when `[logs]` says where.
    let ship = daemon.then(spotkeeper::logship::layer);
    let registry = tracing_subscriber::registry().with(filter).with(ship);
    if spotkeeper::systemd::stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        registry
            // Fields under their own names (`SNAPSHOT_ID=…`), not the default `F_SNAPSHOT_ID`.
            .with(
                journald
                    .with_syslog_identifier("spotkeeper".into())
                    .with_field_prefix(None),
            )
            .init();
        return;
    }
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(spotkeeper::progress::stderr_writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if daemon {
        registry.with(layer).init();
    } else {
        // A person reads these next to the command's result: no timestamps.
        registry.with(layer.without_time()).init();
    }
}
