//! What `spotkeeper status` shows, and what one snapshot attempt did.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::snapshot_id::SnapshotId;
use crate::spot::InstanceAction;

/// What `spotkeeper status` shows.
#[derive(Debug, Clone, Default, Serialize)]
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
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyStatus {
    pub at: DateTime<Utc>,
    pub id: Option<SnapshotId>,
    pub ok: bool,
    pub databases: usize,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub state: String,
    pub healthy: Option<bool>,
    pub restarts: u64,
    pub image: String,
    pub image_digest: Option<String>,
    pub crash_loop: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotStatus {
    pub id: SnapshotId,
    pub at: DateTime<Utc>,
    pub duration_ms: u64,
    pub freeze_ms: u64,
    pub archive_bytes: u64,
    pub files: u64,
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneStatus {
    pub at: DateTime<Utc>,
    pub deleted: usize,
    pub kept: usize,
    pub error: Option<String>,
}

/// What one snapshot attempt did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum SnapshotOutcome {
    Uploaded {
        id: SnapshotId,
        files: u64,
        archive_bytes: u64,
        duration_ms: u64,
        freeze_ms: u64,
        requests: u64,
    },
    Unchanged {
        since: SnapshotId,
        freeze_ms: u64,
    },
}
