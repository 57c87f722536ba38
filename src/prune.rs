//! Applying the retention policy to a repository: list both formats, decide (the pure
//! `retention::plan` over all of them, plus the head guard), then delete. Format 1: manifests
//! first, then the rest of each doomed snapshot. Format 2: forget the doomed restic snapshots,
//! then a two-phase prune of packs (`format2::Repo::prune`, grace `PACK_GRACE`).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{self, Catalog, Detail};
use crate::format2::{self, Engine};
use crate::repository::{self, RepositoryError};
use crate::retention::{self, Action, Decision, RetentionPolicy};
use crate::snapshot_id::SnapshotId;
use crate::store::Store;

/// One snapshot's decision and, after deleting, what S3 refused.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub decision: Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// 1 or 2.
    pub format: u8,
}

/// How long a pack that no snapshot needs stays before a prune deletes it: longer than any
/// snapshot runs, so one that started before the mark and reuses the pack recovers it.
pub const PACK_GRACE: std::time::Duration = std::time::Duration::from_secs(23 * 3600);

/// Lists and decides; deletes unless `dry_run`. A failed listing returns before any decision.
pub async fn prune(
    store: &Store,
    engine: Option<&Engine>,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<Outcome>, RepositoryError> {
    let catalog = catalog::read(store, engine, Detail::Listing).await?;
    catalog.require_format2()?;
    for foreign in catalog.foreign_format2() {
        tracing::warn!(restic_id = %foreign.restic_id, "a restic snapshot tagged spotkeeper without a spotkeeper id; left alone");
    }
    // Prune must know what the head is in order never to delete it. One that cannot be trusted
    // still names what it keeps: a forged one could only keep one snapshot more.
    let catalog = catalog.readable()?;
    let latest = catalog.claimed_head_id();
    let mut outcomes: Vec<Outcome> = plan(&catalog, latest, policy, now)
        .into_iter()
        .map(|decision| Outcome {
            format: catalog.format_of(decision.id).number(),
            decision,
            error: None,
        })
        .collect();
    if !dry_run {
        // A migration whose retirement of format 1's latest/ failed is finished here.
        if engine.is_some()
            && repository::has_pointer(store).await?
            && store.head_metadata(repository::LATEST_MANIFEST).await?.is_some()
        {
            crate::snapshot::retire_format1_latest(store).await;
        }
        delete(store, &catalog, &mut outcomes).await?;
        if let Some(engine) = engine {
            forget(engine, catalog.format2(), &mut outcomes).await?;
        }
    }
    Ok(outcomes)
}

/// Forgets the doomed format-2 snapshots, then prunes packs in two phases. A failed forget is
/// reported on each snapshot; the pack prune runs in any case (it only removes what no snapshot
/// uses, after the grace period).
async fn forget(engine: &Engine, format2: &[format2::Listed], outcomes: &mut [Outcome]) -> Result<(), RepositoryError> {
    let doomed: Vec<String> = format2
        .iter()
        .filter(|l| {
            outcomes
                .iter()
                .any(|o| Some(o.decision.id) == l.id && o.format == 2 && o.decision.action == Action::Delete)
        })
        .map(|l| l.restic_id.clone())
        .collect();
    if !doomed.is_empty() {
        let ids = doomed.clone();
        if let Err(e) = engine.with(move |repo| repo.forget(&ids)).await {
            tracing::error!(error = %e, "could not forget format-2 snapshots");
            for outcome in outcomes
                .iter_mut()
                .filter(|o| o.format == 2 && o.decision.action == Action::Delete)
            {
                outcome.error = Some(e.to_string());
            }
        }
    }
    let summary = match engine.with(|repo| repo.prune(PACK_GRACE)).await {
        Ok(summary) => summary,
        // No repository under repo/ yet (format 1 only, before the first format-2 snapshot).
        Err(format2::Format2Error::Missing { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        forgotten = doomed.len(),
        packs_deleted = summary.packs_deleted,
        packs_marked = summary.packs_marked,
        bytes_deleted = summary.bytes_deleted,
        "format-2 packs pruned (marked packs are deleted after the grace period)"
    );
    Ok(())
}

/// The policy's decisions over both formats (`Catalog::retention_input`), plus one guard the
/// policy cannot see: the snapshot the head (`latest.json` or `latest/`) points to.
pub fn plan(
    catalog: &Catalog,
    latest: Option<SnapshotId>,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let mut decisions = retention::plan(&catalog.retention_input(), policy, now);
    for decision in &mut decisions {
        if Some(decision.id) == latest && decision.action == Action::Delete {
            decision.action = Action::Keep;
            decision.reason = format!("latest/ points to it (policy: {})", decision.reason);
        }
    }
    decisions
}

/// Deletes manifests first, then the rest of each snapshot whose manifest is gone, so a
/// half-deleted snapshot reads as incomplete, never as complete with a missing archive.
async fn delete(store: &Store, catalog: &Catalog, outcomes: &mut [Outcome]) -> Result<(), RepositoryError> {
    let doomed: Vec<&repository::Listed> = catalog
        .format1()
        .filter(|s| {
            outcomes
                .iter()
                .any(|o| o.decision.id == s.id && o.format == 1 && o.decision.action == Action::Delete)
        })
        .collect();
    let manifests: Vec<String> = doomed
        .iter()
        .filter(|s| s.complete)
        .map(|s| repository::manifest_key(&s.id))
        .collect();
    let _progress = crate::progress::begin("prune", None, Some(doomed.len() as u64));
    let mut failures = store.delete(&manifests).await?;
    let rest: Vec<String> = doomed
        .iter()
        .filter(|s| !failures.iter().any(|(key, _)| *key == repository::manifest_key(&s.id)))
        .flat_map(|s| {
            s.keys
                .iter()
                .filter(|k| **k != repository::manifest_key(&s.id))
                .cloned()
        })
        .collect();
    failures.extend(store.delete(&rest).await?);
    crate::progress::add_items(doomed.len() as u64);
    for (key, reason) in failures {
        let id = key
            .strip_prefix(repository::SNAPSHOTS_DIR)
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(id, _)| id.parse::<SnapshotId>().ok());
        tracing::error!(key = %store.full_key(&key), reason, "could not delete");
        if let Some(outcome) = outcomes.iter_mut().find(|o| Some(o.decision.id) == id) {
            let text = format!("{key}: {reason}");
            outcome.error = Some(match outcome.error.take() {
                Some(previous) => format!("{previous}; {text}"),
                None => text,
            });
        }
    }
    Ok(())
}

/// Snapshots deleted (or that would be) and those S3 refused.
pub fn counts(outcomes: &[Outcome]) -> (usize, usize) {
    let deleting = outcomes.iter().filter(|o| o.decision.action == Action::Delete).count();
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    (deleting, failed)
}
