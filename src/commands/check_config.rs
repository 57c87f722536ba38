//! `spotkeeper check-config`: validate and print the effective configuration.

use std::path::Path;

use super::CommandError;
use crate::config::Config;

pub fn run(config: &Config, path: &Path) -> Result<(), CommandError> {
    eprintln!("{} is valid; effective configuration:", path.display());
    print!("{}", config.to_toml());
    Ok(())
}
