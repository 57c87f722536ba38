//! spotkeeper keeps one stateful container alive on an EC2 Spot instance with its state safe in
//! S3. The binary's `main.rs` is a thin shell over this library.

pub mod archive;
pub mod aws;
pub mod boot;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod displaced;
pub mod drill;
pub mod duration;
pub mod ecr;
pub mod exclude;
pub mod exit;
pub mod failpoint;
pub mod format2;
#[cfg(test)]
mod layers;
pub mod liveness;
pub mod logship;
pub mod manifest;
pub mod metrics;
pub mod mirror;
pub mod openclaw;
pub mod ports;
pub mod private_fs;
pub mod progress;
pub mod prune;
pub mod record;
pub mod report;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod runtime;
pub mod schedule;
pub mod secrets;
pub mod snapshot;
pub mod snapshot_id;
pub mod spot;
pub mod state_lock;
pub mod store;
pub mod stream;
pub mod systemd;
pub mod tree;
pub mod walk;
