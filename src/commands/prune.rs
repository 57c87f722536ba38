//! `spotkeeper prune`: apply the retention policy, explaining every decision.

use chrono::Utc;

use super::{CommandError, print_json};
use crate::cli::PruneArgs;
use crate::config::Config;
use crate::prune;
use crate::retention::Action;
use crate::store::Store;

pub async fn run(
    config: &Config,
    store: &Store,
    engine: Option<&crate::format2::Engine>,
    args: &PruneArgs,
) -> Result<(), CommandError> {
    let now = args.now.unwrap_or_else(Utc::now);
    let outcomes = prune::prune(store, engine, &config.retention, now, args.dry_run).await?;
    let (deleting, failed) = prune::counts(&outcomes);
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
                "{action:<7} {:<20} format {}  {}",
                outcome.decision.id.to_string(),
                outcome.format,
                outcome.decision.reason
            );
        }
        let verb = if args.dry_run { "would delete" } else { "deleted" };
        println!(
            "{} snapshots: {} kept, {verb} {}",
            outcomes.len(),
            outcomes.len() - deleting,
            deleting - failed
        );
    }
    if failed == 0 {
        return Ok(());
    }
    let details: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.decision.id)))
        .collect();
    Err(CommandError::PartialPrune(format!(
        "could not delete {failed} snapshot(s) from {}: {}",
        config.repository_url(),
        details.join("; ")
    )))
}
