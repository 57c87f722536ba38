//! `spotkeeper check-config`: validate and print the effective configuration, and the AWS
//! region in use with where it came from; then warn, on stderr, about what is valid but would
//! not serve OpenClaw as it runs itself.

use std::path::Path;

use super::CommandError;
use crate::config::{Config, ContainerConfig, ProbeKind};

pub async fn run(config: &Config, path: &Path) -> Result<(), CommandError> {
    // A daemon's config (it has [container]) is what `run` would refuse without [repository].
    if config.container.is_some() {
        config.writer_repository("run")?;
    }
    let (region, source) = crate::aws::resolve_region(config.s3.region.as_deref()).await;
    eprintln!("{} is valid; effective configuration:", path.display());
    print!("{}", config.to_toml());
    println!("# AWS region in use: {region} (from {})", source.describe());
    for warning in warnings(config) {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// What an operator should fix although the config is valid.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if config.repository.is_none() {
        out.push(
            "there is no [repository] section: `snapshot` and `run` refuse to write (format 2 is the only format \
             written); this config can only read format 1 snapshots"
                .to_string(),
        );
    }
    if config.snapshot.ignored_compression_level {
        out.push(
            "snapshot.compression_level is ignored: it was format 1's zstd level, and format 1 is no longer written; \
             remove it"
                .to_string(),
        );
    }
    if let Some(container) = &config.container {
        out.extend(container_warnings(container));
    }
    match crate::openclaw::check(config) {
        Ok(Some(outside)) => {
            for o in outside {
                out.push(format!(
                    "{} names {:?} for `{}`, outside every state path's mount: OpenClaw's own backup follows it, \
                     spotkeeper would not back it up; add it as a [[state.paths]] entry, or move it under one",
                    crate::openclaw::CONFIG_FILE,
                    o.path,
                    o.key
                ));
            }
        }
        Ok(None) => {}
        Err(e) => out.push(format!("{e}; its agent directories were not checked")),
    }
    out
}

/// The container settings that differ from how OpenClaw runs itself.
fn container_warnings(c: &ContainerConfig) -> Vec<String> {
    let mut out = Vec::new();
    if c.stop_timeout < crate::config::DEFAULT_STOP_TIMEOUT {
        out.push(format!(
            "container.stop_timeout is {}: OpenClaw drains for up to 90 s (openclaw/openclaw#150954), a shorter \
             timeout kills it mid-drain",
            crate::duration::format(c.stop_timeout)
        ));
    }
    if !c.image.contains("@sha256:") {
        out.push(format!(
            "container.image {:?} is not pinned by digest: a new machine may pull a different image than the one \
             the state was written by (docs/deployment.md says how to find the digest)",
            c.image
        ));
    }
    if c.probe == ProbeKind::Openclaw && c.health_url.is_none() {
        out.push("container.health_url is not set: a hung gateway is never restarted".to_string());
    }
    if c.startup_url.is_none() && c.health_url.is_some() {
        out.push(
            "container.startup_url is not set: READY waits for liveness only, not for OpenClaw's /startupz".to_string(),
        );
    }
    out
}
