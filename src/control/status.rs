//! What `spotkeeper status` shows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::snapshot_id::SnapshotId;
use crate::spot::InstanceAction;

/// What `spotkeeper status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub phase: String,
    pub container: ContainerStatus,
    pub last_snapshot: Option<SnapshotStatus>,
    pub next_snapshot: Option<DateTime<Utc>>,
    pub unchanged_since: Option<SnapshotId>,
    pub last_prune: Option<PruneStatus>,
    pub last_error: Option<String>,
    pub secrets: Option<usize>,
    pub started_at: Option<DateTime<Utc>>,
    pub instance_id: Option<String>,
    pub spot_notice: Option<InstanceAction>,
    pub last_verify: Option<VerifyStatus>,
    /// Things an operator should know that are not errors (a log driver fallback, …).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// When the oldest change not yet in the head happened (`None`: every change seen is in it).
    #[serde(default)]
    pub unprotected_since: Option<DateTime<Utc>>,
    /// spotkeeper's own lines shipped to CloudWatch Logs and dropped; `None`: `[logs]` is off.
    #[serde(default)]
    pub logs: Option<crate::logship::LogsStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyStatus {
    pub at: DateTime<Utc>,
    pub id: Option<SnapshotId>,
    pub ok: bool,
    pub databases: usize,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub state: String,
    pub healthy: Option<bool>,
    pub restarts: u64,
    /// Clean exits the app made on its own and was started again for (OpenClaw restarts itself
    /// after a config change); not failures.
    #[serde(default)]
    pub self_restarts: u64,
    /// Why the app reports itself not ready while it is alive (OpenClaw's `/readyz`: a channel
    /// that cannot connect); `None`: ready, or not probed.
    #[serde(default)]
    pub degraded: Option<String>,
    pub image: String,
    pub image_digest: Option<String>,
    pub crash_loop: bool,
    /// Set while a thaw failed and the container may still be frozen.
    #[serde(default)]
    pub frozen_error: Option<String>,
    /// The log driver the container runs with.
    #[serde(default)]
    pub log_driver: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotStatus {
    pub id: SnapshotId,
    pub at: DateTime<Utc>,
    pub duration_ms: u64,
    pub freeze_ms: u64,
    pub archive_bytes: u64,
    pub files: u64,
    pub requests: u64,
    /// Entries of the state that could not be archived (listed in the manifest).
    #[serde(default)]
    pub skipped: usize,
    /// Each state path's files and bytes.
    #[serde(default)]
    pub paths: Vec<crate::mirror::PathTotals>,
    /// Why it was taken: `scheduled`, `follow`, `final`, `requested`, …
    #[serde(default)]
    pub reason: String,
    /// Its S3 requests by price class.
    #[serde(default)]
    pub request_counts: crate::store::RequestCounts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneStatus {
    pub at: DateTime<Utc>,
    pub deleted: usize,
    pub kept: usize,
    pub error: Option<String>,
}
