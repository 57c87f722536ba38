//! `spotkeeper run`: the daemon.

use super::CommandError;
use crate::config::Config;
use crate::daemon;
use crate::systemd::Notifier;

pub async fn run(config: Config) -> Result<(), CommandError> {
    daemon::run(config, Notifier::from_env()).await?;
    Ok(())
}
