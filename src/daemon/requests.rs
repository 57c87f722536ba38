//! What comes from outside: control requests, Spot interruption notices, SIGTERM/SIGINT; and the
//! final snapshot both of the last two end with.

use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;

use super::jobs::Hold;
use super::{Daemon, DaemonError, EXTEND_STEP, Event};
use crate::config::Consistency;
use crate::control::{self, Reply, Request};
use crate::exit::Exit;
use crate::metrics::{Unit, names};
use crate::restore;
use crate::runtime::{self, ContainerRuntime};
use crate::snapshot::SnapshotOutcome;
use crate::snapshot_id::SnapshotId;
use crate::spot::InstanceAction;

/// How the container was held still for the final snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quiesced {
    Stopped,
    Killed,
    Frozen,
    /// Docker refused stop, kill and pause: the state is read as it is.
    AsItIs,
}

impl Daemon {
    pub(super) async fn on_control(&mut self, request: Request) -> Reply {
        match request {
            Request::Status => Reply::error("status is answered by the control task".into(), Exit::Failure),
            Request::Snapshot => match self.snapshot_now("requested", Hold::AsConfigured).await {
                Ok(outcome) => Reply::Snapshot(outcome),
                Err(e) => Reply::error(e.to_string(), e.exit()),
            },
            Request::Restore { snapshot, path } => match self.manual_restore(snapshot, path).await {
                Ok(done) => Reply::Restore(done),
                Err(e) => Reply::error(e.to_string(), e.exit()),
            },
        }
    }

    /// A restore asked for while running: resolve and check the snapshot first (nothing is
    /// stopped for a snapshot that does not exist), then stop the container, keep a safety
    /// snapshot of what is about to be replaced, restore (the replaced state is kept in
    /// `<state dir>.displaced/`), start again.
    pub(super) async fn manual_restore(
        &mut self,
        snapshot: Option<SnapshotId>,
        path: Option<String>,
    ) -> Result<control::ManualRestore, DaemonError> {
        if let Some(name) = &path {
            self.config.state.require_path(name).map_err(DaemonError::Refused)?;
        }
        // Pin the snapshot now: once the safety snapshot is taken, latest/ is that snapshot, and
        // restoring "latest" would change nothing.
        let store = self.edges.store.clone();
        let (chosen, _) =
            restore::resolve(&store, self.edges.engine.as_ref(), snapshot, &self.snapshots.repository).await?;
        let snapshot = Some(chosen.id());
        self.say(&format!("manual restore of {}: stopping the container", chosen.id()));
        self.workload.supervision.stopping_on_purpose();
        if let Err(e) = self.workload.container.stop(self.container_config.stop_timeout).await {
            self.workload.supervision.stop_abandoned();
            return Err(e.into());
        }
        let safety = match self
            .snapshot_now("safety before manual restore", Hold::AlreadyQuiet)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                // Without a safety copy the restore would risk the only copy of recent changes.
                self.start_container("after a refused manual restore").await;
                return Err(e);
            }
        };
        let mut restored = self.restore_into_state(snapshot, path, true).await;
        // A failed restore whose journal stays: complete it now (every path is staged and
        // durable); if even that fails, the app must not run on a set from two moments.
        if restored.is_err() && restore::journal_pending(&self.config.state.work_dir) {
            match restore::recover(&self.config.state.work_dir, &self.config.state.dirs()) {
                Ok(_) => tracing::warn!("the failed restore's swaps were completed from its journal"),
                Err(e) => {
                    tracing::error!(error = %e, "a restore is half done and cannot be completed; the container stays stopped");
                    self.update(|s| s.last_error = Some(e.to_string()));
                    return Err(e.into());
                }
            }
            restored = Err(DaemonError::Refused(
                "the restore hit an error part way and was then completed from its journal: every path is the \
                 snapshot asked for; `spotkeeper status` shows the state"
                    .into(),
            ));
        }
        self.workload.supervision.reset();
        self.update(|s| {
            s.container.crash_loop = false;
            s.phase = "running".into();
        });
        self.start_container("after a manual restore").await;
        let report = restored?;
        self.prune_displaced();
        self.say(&format!("running; restored {}", report.id));
        Ok(control::ManualRestore {
            restored: report,
            safety_snapshot: safety,
        })
    }

    /// Stops the container for good and takes the final snapshot, whatever the engine answers:
    /// a graceful stop; if that fails, a kill; if that fails too, a freeze; and if even that
    /// fails, the state as it is. The snapshot is attempted in every case.
    async fn final_snapshot(&mut self, reason: &str, stop_timeout: Duration) -> Result<SnapshotOutcome, DaemonError> {
        self.workload.supervision.finish();
        // A frozen container cannot act on SIGTERM.
        if let Err(e) = runtime::thaw(&self.workload.container, 3).await {
            tracing::warn!(error = %e, "cannot thaw the container before stopping it");
        }
        let quiesced = match self.workload.container.stop(stop_timeout).await {
            Ok(()) => Quiesced::Stopped,
            Err(e) => {
                tracing::error!(error = %e, "graceful stop failed; killing the container");
                match self.workload.container.kill().await {
                    Ok(()) => Quiesced::Killed,
                    Err(e) => {
                        tracing::error!(error = %e, "kill failed; freezing the container for the final snapshot");
                        match self.workload.container.pause().await {
                            Ok(()) => Quiesced::Frozen,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot freeze it either; the final snapshot reads the state as it is");
                                Quiesced::AsItIs
                            }
                        }
                    }
                }
            }
        };
        tracing::info!(?quiesced, "container held for the final snapshot");
        self.edges.notifier.status("taking the final snapshot");
        let result = self.snapshot_now(reason, Hold::AlreadyQuiet).await;
        if quiesced == Quiesced::Frozen {
            self.thaw().await;
        }
        result
    }

    /// A Spot interruption: a frozen snapshot of the running app first (when it fits), then stop
    /// the container within what is left of the notice's two minutes, keeping a reserve for the
    /// final snapshot, then the final snapshot; report each step; then wait for the end.
    pub(super) async fn on_interruption(&mut self, action: InstanceAction) {
        let noticed = Utc::now();
        let text = format!(
            "Spot {} scheduled for {}: stopping the container and taking a final snapshot",
            action.action, action.time
        );
        tracing::warn!(action = %action.action, time = %action.time, "{text}");
        self.edges.notifier.status(&text);
        self.edges.metrics.record(names::SPOT_NOTICE, 1.0, Unit::Count);
        self.update(|s| {
            s.phase = "interrupted".into();
            s.spot_notice = Some(action.clone());
        });
        let upload_estimate = self.snapshots.protection.last_duration() * 3 + Duration::from_secs(10);
        let started = Instant::now();
        // Nothing restarts from now on.
        self.workload.supervision.finish();
        // First the running app, frozen: everything it acknowledged before the notice is safe
        // before the drain begins, whatever happens after.
        if crate::spot::snapshot_first(
            noticed,
            action.time,
            self.container_config.stop_timeout,
            upload_estimate,
            self.container_config.consistency == Consistency::Freeze,
        ) {
            self.edges
                .notifier
                .status("Spot notice: a frozen snapshot of the running app first");
            match self.snapshot_now("spot notice", Hold::AsConfigured).await {
                Ok(outcome) => tracing::warn!(
                    outcome = %serde_json::to_string(&outcome).unwrap_or_default(),
                    seconds_left = (action.time - Utc::now()).num_seconds(),
                    "Spot notice: the running app's state is in a snapshot; stopping it now"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "Spot notice: the first snapshot failed; stopping the app and taking the final one")
                }
            }
        }
        // Then SIGTERM with what is left, keeping the final snapshot's reserve.
        let stop_timeout = crate::spot::stop_budget(
            Utc::now(),
            action.time,
            self.container_config.stop_timeout,
            upload_estimate,
        );
        tracing::warn!(stop_budget_s = stop_timeout.as_secs(), "Spot notice: stopping the app");
        let outcome = self.final_snapshot("spot interruption", stop_timeout).await;
        let took_ms = started.elapsed().as_millis() as u64;
        let left = (action.time - Utc::now()).num_seconds();
        match outcome {
            Ok(outcome) => {
                let done = format!("interrupted: final snapshot done in {took_ms} ms, {left} s before the deadline");
                tracing::warn!(took_ms, seconds_left = left, stop_budget_ms = stop_timeout.as_millis() as u64,
                    outcome = %serde_json::to_string(&outcome).unwrap_or_default(), "{done}");
                self.edges.notifier.status(&done);
            }
            Err(e) => {
                let text = format!("interrupted: the final snapshot FAILED: {e}");
                tracing::error!(took_ms, seconds_left = left, "{text}");
                self.edges.notifier.status(&text);
                self.update(|s| s.last_error = Some(text));
            }
        }
        self.edges.metrics.flush(Duration::from_secs(5)).await;
    }

    /// SIGTERM/SIGINT: stop the container, take a final snapshot, remove the secrets file, exit.
    /// The exit is non-zero only when the final snapshot failed. A second signal aborts it.
    pub(super) async fn shutdown(&mut self, events: &mut mpsc::Receiver<Event>) -> Result<(), DaemonError> {
        self.update(|s| s.phase = "stopping".into());
        self.edges.notifier.stopping("stopping the container");
        self.edges
            .notifier
            .extend(self.container_config.stop_timeout + EXTEND_STEP);
        tracing::info!(container = %self.workload.container.name, "stopping: container first, then the final snapshot");
        let stop_timeout = self.container_config.stop_timeout;
        let aborted = async {
            loop {
                if let Some(Event::Signal) | None = events.recv().await {
                    return;
                }
            }
        };
        let result = tokio::select! {
            result = self.final_snapshot("final", stop_timeout) => result,
            _ = aborted => Err(DaemonError::Aborted),
        };
        if result.is_err() {
            // Aborted (or failed) while the container may be frozen for the final copy: it must
            // not stay frozen after spotkeeper exits.
            self.thaw().await;
        }
        self.publish_log_drops();
        self.edges.metrics.flush(Duration::from_secs(5)).await;
        self.remove_env_file();
        let result = match result {
            Ok(outcome) => {
                tracing::info!(outcome = %serde_json::to_string(&outcome).unwrap_or_default(), "final snapshot done; exiting");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "the final snapshot FAILED; changes since the last snapshot exist only on this disk");
                Err(e)
            }
        };
        // After the final snapshot's outcome is logged, so that CloudWatch Logs has it too.
        self.flush_logs().await;
        result
    }
}
