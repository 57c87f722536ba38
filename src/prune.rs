//! Applying the retention policy to a repository: list, decide (the pure `retention::plan` plus
//! the `latest/` guard), delete manifests first and then the rest of each doomed snapshot.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::repository::{self, Listing, RepositoryError};
use crate::retention::{self, Action, Decision, RetentionPolicy, SnapshotSummary};
use crate::snapshot_id::SnapshotId;
use crate::store::Store;

/// One snapshot's decision and, after deleting, what S3 refused.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub decision: Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Lists and decides; deletes unless `dry_run`. A failed listing returns before any decision.
pub async fn prune(
    store: &Store,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<Outcome>, RepositoryError> {
    let listing = repository::list(store).await?;
    let latest = repository::latest(store).await?.map(|(m, _)| m.id);
    let mut outcomes: Vec<Outcome> = plan(&listing, latest, policy, now)
        .into_iter()
        .map(|decision| Outcome { decision, error: None })
        .collect();
    if !dry_run {
        delete(store, &listing, &mut outcomes).await?;
    }
    Ok(outcomes)
}

/// The policy's decisions, plus one guard the policy cannot see: the snapshot `latest/` points to.
pub fn plan(
    listing: &Listing,
    latest: Option<SnapshotId>,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let summaries: Vec<SnapshotSummary> = listing
        .snapshots
        .iter()
        .map(|s| SnapshotSummary {
            id: s.id,
            complete: s.complete,
        })
        .collect();
    let mut decisions = retention::plan(&summaries, policy, now);
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
async fn delete(store: &Store, listing: &Listing, outcomes: &mut [Outcome]) -> Result<(), RepositoryError> {
    let doomed: Vec<&repository::Listed> = listing
        .snapshots
        .iter()
        .filter(|s| {
            outcomes
                .iter()
                .any(|o| o.decision.id == s.id && o.decision.action == Action::Delete)
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
