//! `spotkeeper check-config`: validate and print the effective configuration, and the AWS
//! region in use with where it came from.

use std::path::Path;

use super::CommandError;
use crate::config::Config;

pub async fn run(config: &Config, path: &Path) -> Result<(), CommandError> {
    let (region, source) = crate::aws::resolve_region(config.s3.region.as_deref()).await;
    eprintln!("{} is valid; effective configuration:", path.display());
    print!("{}", config.to_toml());
    println!("# AWS region in use: {region} (from {})", source.describe());
    Ok(())
}
