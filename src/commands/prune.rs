//! `spotkeeper prune`: apply the retention policy, explaining every decision. Deletes a
//! snapshot's manifest before its archive, so a half-deleted snapshot reads as incomplete.

use chrono::Utc;
use serde::Serialize;

use super::{CommandError, print_json};
use crate::cli::PruneArgs;
use crate::config::Config;
use crate::repository::{self, Listing};
use crate::retention::{self, Action, Decision, SnapshotSummary};
use crate::snapshot_id::SnapshotId;
use crate::store::Store;

#[derive(Debug, Serialize)]
struct Outcome {
    #[serde(flatten)]
    decision: Decision,
    /// Set when a delete was attempted and S3 refused some keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn run(config: &Config, store: &Store, args: &PruneArgs) -> Result<(), CommandError> {
    // A failed listing returns here: nothing is decided, nothing deleted.
    let listing = repository::list(store).await?;
    let latest = repository::latest(store).await?.map(|(m, _)| m.id);
    let now = args.now.unwrap_or_else(Utc::now);
    let decisions = plan(&listing, latest, config, now);
    let mut outcomes: Vec<Outcome> = decisions
        .into_iter()
        .map(|decision| Outcome { decision, error: None })
        .collect();
    if !args.dry_run {
        delete(store, &listing, &mut outcomes).await?;
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.decision.id)))
        .collect();
    if args.json {
        print_json(&outcomes)?;
    } else {
        for outcome in &outcomes {
            let action = match outcome.decision.action {
                Action::Keep => "keep",
                Action::Delete if args.dry_run => "delete",
                Action::Delete if outcome.error.is_some() => "FAILED",
                Action::Delete => "deleted",
            };
            println!(
                "{action:<7} {:<20}  {}",
                outcome.decision.id.to_string(),
                outcome.decision.reason
            );
        }
        let deleting = outcomes.iter().filter(|o| o.decision.action == Action::Delete).count();
        let verb = if args.dry_run { "would delete" } else { "deleted" };
        println!(
            "{} snapshots: {} kept, {verb} {}",
            outcomes.len(),
            outcomes.len() - deleting,
            deleting - failed.len()
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CommandError::PartialPrune(format!(
            "could not delete {} snapshot(s) from {}: {}",
            failed.len(),
            config.repository_url(),
            failed.join("; ")
        )))
    }
}

/// The policy's decisions, plus one guard the policy cannot see: the snapshot `latest/` points to.
fn plan(listing: &Listing, latest: Option<SnapshotId>, config: &Config, now: chrono::DateTime<Utc>) -> Vec<Decision> {
    let summaries: Vec<SnapshotSummary> = listing
        .snapshots
        .iter()
        .map(|s| SnapshotSummary {
            id: s.id,
            complete: s.complete,
        })
        .collect();
    let mut decisions = retention::plan(&summaries, &config.retention, now);
    for decision in &mut decisions {
        if Some(decision.id) == latest && decision.action == Action::Delete {
            decision.action = Action::Keep;
            decision.reason = format!("latest/ points to it (policy: {})", decision.reason);
        }
    }
    decisions
}

/// Deletes manifests first, then the rest of each snapshot whose manifest is gone.
async fn delete(store: &Store, listing: &Listing, outcomes: &mut [Outcome]) -> Result<(), CommandError> {
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
    let mut failures = store
        .delete(&manifests)
        .await
        .map_err(repository::RepositoryError::from)?;
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
    failures.extend(store.delete(&rest).await.map_err(repository::RepositoryError::from)?);
    for (key, reason) in failures {
        let id = key
            .strip_prefix(repository::SNAPSHOTS_DIR)
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(id, _)| id.parse::<SnapshotId>().ok());
        if let Some(outcome) = outcomes.iter_mut().find(|o| Some(o.decision.id) == id) {
            let text = format!("{key}: {reason}");
            outcome.error = Some(match outcome.error.take() {
                Some(previous) => format!("{previous}; {text}"),
                None => text,
            });
        }
        tracing::error!(key = %store.full_key(&key), reason, "could not delete");
    }
    Ok(())
}
