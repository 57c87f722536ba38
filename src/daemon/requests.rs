//! What comes from outside: control requests, Spot interruption notices, SIGTERM/SIGINT.

use super::*;

impl Daemon {
    pub(super) async fn on_control(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::ok(serde_json::Value::Null),
            Request::Snapshot => match self.snapshot_now("requested").await {
                Ok(outcome) => Response::ok(serde_json::to_value(outcome).unwrap_or_default()),
                Err(e) => Response::error(e.to_string(), e.exit_code()),
            },
            Request::Restore { snapshot } => match self.manual_restore(snapshot).await {
                Ok(value) => Response::ok(value),
                Err(e) => Response::error(e.to_string(), e.exit_code()),
            },
        }
    }

    /// A restore asked for while running: stop the container, keep a safety snapshot of what is
    /// about to be replaced, restore (the replaced state is kept in `<state dir>.displaced/`), start again.
    pub(super) async fn manual_restore(
        &mut self,
        snapshot: Option<SnapshotId>,
    ) -> Result<serde_json::Value, DaemonError> {
        // Pin "latest" now: once the safety snapshot is taken, latest/ is that snapshot, and
        // restoring it would change nothing.
        let snapshot = match snapshot {
            Some(id) => Some(id),
            None => {
                let store = self.store.clone();
                let latest = repository::latest(&store).await?;
                Some(latest.map(|(m, _)| m.id).ok_or_else(|| RestoreError::NoSnapshot {
                    repository: self.repository.clone(),
                })?)
            }
        };
        self.say("manual restore: stopping the container");
        self.expecting_stop = true;
        if let Err(e) = self.container.stop(self.container_config.stop_timeout).await {
            self.expecting_stop = false;
            return Err(e.into());
        }
        let safety = self.snapshot_now("safety before manual restore").await;
        let safety = match safety {
            Ok(outcome) => outcome,
            Err(e) => {
                // Without a safety copy the restore would risk the only copy of recent changes.
                let _ = self.container.start().await;
                self.expecting_stop = false;
                return Err(e);
            }
        };
        let restored = self.restore_into_state(snapshot, true).await;
        let start = self.container.start().await;
        self.expecting_stop = false;
        let report = restored?;
        start?;
        self.restarts.reset();
        self.crash_loop = false;
        self.say(&format!("running; restored {}", report.id));
        Ok(serde_json::json!({ "restored": report, "safety_snapshot": safety }))
    }

    /// A Spot interruption: stop the container within a budget taken from the notice's time,
    /// take the final snapshot, update `latest/`, report each step; then wait for the end.
    pub(super) async fn on_interruption(&mut self, action: InstanceAction) {
        let noticed = Utc::now();
        let text = format!(
            "Spot {} scheduled for {}: stopping the container and taking a final snapshot",
            action.action, action.time
        );
        tracing::warn!(action = %action.action, time = %action.time, "{text}");
        self.notifier.status(&text);
        self.metrics.record(names::SPOT_NOTICE, 1.0, Unit::Count);
        self.interrupted = true;
        self.restart_at = None;
        self.update(|s| {
            s.phase = "interrupted".into();
            s.spot_notice = Some(action.clone());
        });
        let upload_estimate = self.last_snapshot_duration * 3 + Duration::from_secs(10);
        let stop_timeout = crate::spot::stop_budget(
            noticed,
            action.time,
            self.container_config.stop_timeout,
            upload_estimate,
        );
        let stop_started = Instant::now();
        self.expecting_stop = true;
        let _ = self.container.unpause().await;
        if let Err(e) = self.container.stop(stop_timeout).await {
            tracing::error!(error = %e, "cannot stop the container; snapshotting what is on disk");
        }
        let stop_ms = stop_started.elapsed().as_millis() as u64;
        let snapshot_started = Instant::now();
        let outcome = self.snapshot_tick("spot interruption").await;
        let snapshot_ms = snapshot_started.elapsed().as_millis() as u64;
        let left = (action.time - Utc::now()).num_seconds();
        match outcome {
            Some(outcome) => {
                let done = format!(
                    "interrupted: final snapshot done; container stop {stop_ms} ms, snapshot {snapshot_ms} ms, {left} s before the deadline"
                );
                tracing::warn!(stop_ms, snapshot_ms, seconds_left = left, stop_budget_ms = stop_timeout.as_millis() as u64,
                    outcome = %serde_json::to_string(&outcome).unwrap_or_default(), "{done}");
                self.notifier.status(&done);
            }
            None => {
                tracing::error!(
                    stop_ms,
                    snapshot_ms,
                    seconds_left = left,
                    "interrupted: the final snapshot FAILED"
                );
            }
        }
        self.metrics.flush(Duration::from_secs(5)).await;
    }

    /// SIGTERM/SIGINT: stop the container gracefully, take a final snapshot, exit. A second
    /// signal aborts the final snapshot.
    pub(super) async fn shutdown(&mut self, events: &mut mpsc::Receiver<Event>) -> Result<(), DaemonError> {
        self.update(|s| s.phase = "stopping".into());
        self.notifier.stopping("stopping the container");
        self.notifier.extend(self.container_config.stop_timeout + EXTEND_STEP);
        tracing::info!(container = %self.container.name, "stopping: container first, then the final snapshot");
        let work = async {
            self.expecting_stop = true;
            self.container.unpause().await.ok();
            self.container.stop(self.container_config.stop_timeout).await?;
            self.notifier.status("taking the final snapshot");
            self.snapshot_now("final").await
        };
        let aborted = async {
            loop {
                if let Some(Event::Signal) | None = events.recv().await {
                    return;
                }
            }
        };
        tokio::select! {
            result = work => {
                self.metrics.flush(Duration::from_secs(5)).await;
                let outcome = result?;
                tracing::info!(outcome = %serde_json::to_string(&outcome).unwrap_or_default(), "final snapshot done; exiting");
                Ok(())
            }
            _ = aborted => {
                tracing::error!("second signal: final snapshot aborted");
                Err(DaemonError::Aborted)
            }
        }
    }
}
