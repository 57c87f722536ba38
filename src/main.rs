//! The `spotkeeper` binary: parse the command line, start logging, run the command, map its
//! error to a documented exit code.

use std::process::ExitCode;

use clap::Parser;
use spotkeeper::cli::Cli;
use spotkeeper::{commands, exit};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::Exit::Failure.into();
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => exit::Exit::Ok.into(),
        Err(e) => {
            eprintln!("error: {e}");
            e.exit().into()
        }
    }
}

/// Logs go to the journal with structured fields when stderr is the journal, else to stderr
/// (stdout is the command's output). `SPOTKEEPER_LOG` sets the filter.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_env("SPOTKEEPER_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn,aws_sdk_s3=warn,aws_sdk_ssm=warn")
    });
    let registry = tracing_subscriber::registry().with(filter);
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
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .init();
}
