//! Watching the container (engine events, reconnecting; health probes) and carrying out what
//! the pure policy (`policy.rs`) decides: restarts with backoff, recreation, the crash loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::policy::{Decision, Observed};
use super::timetable::THAW_RETRY;
use super::{Daemon, Event, THAW_ATTEMPTS, UNHEALTHY_AFTER};
use crate::metrics::{Unit, names};
use crate::runtime::probe::{self, Probe, Verdict};
use crate::runtime::{self, ContainerEvent, ContainerRuntime, RunState};
use crate::spot::SpotWatcher;

impl Daemon {
    pub(super) fn spawn_watchers(&self, events: mpsc::Sender<Event>) {
        // Docker events, reconnecting when the stream ends (engine restart).
        let container = self.workload.container.clone();
        let tx = events.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut since = Utc::now();
            let mut stream_failed = false;
            let mut delay = Duration::from_millis(200);
            loop {
                let mut stream = container.events(since);
                if stream_failed && tx.send(Event::EventsReconnected).await.is_err() {
                    return;
                }
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(event) => {
                            since = Utc::now();
                            delay = Duration::from_millis(200);
                            if tx.send(Event::Container(event)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Docker events stream failed");
                            break;
                        }
                    }
                }
                tracing::warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "Docker events stream ended; reconnecting"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                stream_failed = true;
            }
        });
        // Spot notices, only when IMDS answered at start.
        if self.snapshots.instance_id.is_some()
            && let Ok(watcher) = SpotWatcher::new(&self.config.spot.imds_endpoint)
        {
            let poll = self.config.spot.poll;
            let tx = events.clone();
            tokio::spawn(async move {
                let mut interruption_sent = false;
                let mut last_rebalance = None;
                loop {
                    if !interruption_sent {
                        match watcher.instance_action().await {
                            Ok(Some(action)) => {
                                interruption_sent = true;
                                if tx.send(Event::Interruption(action)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => {}
                            Err(e) => tracing::debug!(error = %e, "Spot instance-action poll failed"),
                        }
                    }
                    match watcher.rebalance().await {
                        Ok(Some(notice)) if last_rebalance != Some(notice.notice_time) => {
                            last_rebalance = Some(notice.notice_time);
                            if tx.send(Event::Rebalance(notice)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "rebalance poll failed"),
                    }
                    tokio::time::sleep(poll).await;
                }
            });
        }
        // Health probes; a probe during a freeze does not count.
        if let Some(url) = self.container_config.health_url.clone() {
            let interval = self.container_config.health_interval;
            let kind = self.container_config.probe;
            let frozen = Arc::clone(&self.workload.frozen);
            let gate = Arc::clone(&self.workload.health);
            let events = events.clone();
            tokio::spawn(async move {
                let mut failures = 0u32;
                let mut healthy = true;
                let mut life = gate.starts();
                loop {
                    tokio::time::sleep(interval).await;
                    // A new start: failures of the previous life do not count toward this one.
                    if gate.starts() != life {
                        life = gate.starts();
                        failures = 0;
                    }
                    let verdict = match runtime::fetch(&url, None).await {
                        Ok(answer) => probe::judge(kind, Probe::Live, &answer),
                        Err(e) => Verdict::Fail(e),
                    };
                    let ok = verdict == Verdict::Pass;
                    if frozen.load(Ordering::Relaxed) || !gate.counts(ok) {
                        continue;
                    }
                    if let Verdict::Fail(reason) = &verdict {
                        tracing::debug!(url, reason, "liveness probe failed");
                    }
                    failures = if ok { 0 } else { failures + 1 };
                    let now_healthy = ok || failures < UNHEALTHY_AFTER;
                    if now_healthy != healthy {
                        healthy = now_healthy;
                        if events.send(Event::Health(healthy, Utc::now())).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
        // Readiness: reported (a degraded channel), never a restart.
        if let Some(url) = self.container_config.ready_url.clone() {
            let interval = self.container_config.health_interval;
            let kind = self.container_config.probe;
            let frozen = Arc::clone(&self.workload.frozen);
            let gate = Arc::clone(&self.workload.health);
            let token = Arc::clone(&self.workload.probe_token);
            tokio::spawn(async move {
                let mut reported: Option<String> = None;
                loop {
                    tokio::time::sleep(interval).await;
                    if frozen.load(Ordering::Relaxed) || gate.is_held() {
                        continue;
                    }
                    let bearer = token.lock().ok().and_then(|t| t.clone());
                    // No answer at all is the app down or restarting: liveness reports that, not
                    // readiness.
                    let Ok(answer) = runtime::fetch(&url, bearer.as_deref()).await else {
                        continue;
                    };
                    let verdict = probe::judge(kind, Probe::Ready, &answer);
                    let degraded = match verdict {
                        Verdict::Pass | Verdict::NoEndpoint => None,
                        Verdict::Fail(reason) => Some(reason),
                    };
                    if degraded != reported {
                        reported = degraded.clone();
                        if events.send(Event::Readiness(degraded)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }

    /// The app's readiness changed: report it (journal, STATUS, `status`, a metric); a degraded
    /// app keeps running, as OpenClaw's gateway serves with a channel down.
    pub(super) fn on_readiness(&mut self, degraded: Option<String>) {
        self.edges.metrics.record(
            names::APP_DEGRADED,
            if degraded.is_some() { 1.0 } else { 0.0 },
            Unit::Count,
        );
        match &degraded {
            Some(reason) => {
                let text = format!("running; {} degraded: {reason}", self.workload.container.name);
                tracing::warn!(container = %self.workload.container.name, reason, "the app reports itself not ready (a channel, not a crash): kept running");
                self.edges.notifier.status(&text);
            }
            None => {
                tracing::info!(container = %self.workload.container.name, "the app reports itself ready again");
                self.edges
                    .notifier
                    .status(&format!("running; {} ready", self.workload.container.name));
            }
        }
        self.update(|s| s.container.degraded = degraded);
    }

    pub(super) async fn on_container_event(&mut self, event: ContainerEvent) {
        tracing::debug!(container = %self.workload.container.name, ?event, "container event");
        let observed = match event {
            ContainerEvent::Started | ContainerEvent::Unpaused => {
                self.update(|s| s.container.state = "running".into());
                return;
            }
            ContainerEvent::Paused => {
                self.update(|s| s.container.state = "paused".into());
                return;
            }
            ContainerEvent::OutOfMemory => {
                tracing::warn!(container = %self.workload.container.name, "the container ran out of memory");
                return;
            }
            ContainerEvent::Other => return,
            ContainerEvent::Died { at, exit_code } => {
                self.update(|s| s.container.state = "exited".into());
                Observed::Died { at, exit_code }
            }
            ContainerEvent::Destroyed { at } => {
                self.update(|s| s.container.state = "missing".into());
                Observed::Missing { at }
            }
        };
        let decision = self.workload.supervision.observe(observed, Utc::now());
        self.carry_out(decision, &format!("{event:?}")).await;
    }

    /// The event stream was down for a while: look at the container to catch a missed death.
    pub(super) async fn on_events_reconnected(&mut self) {
        tracing::info!("Docker events stream reconnected");
        let observed = match self.workload.container.state().await {
            Ok(RunState::Running | RunState::Paused) => return,
            Ok(RunState::Missing) => Observed::Missing { at: Utc::now() },
            Ok(state) => {
                tracing::warn!(
                    ?state,
                    "container found not running after the events stream reconnected"
                );
                Observed::FoundStopped
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot inspect the container");
                return;
            }
        };
        let decision = self.workload.supervision.observe(observed, Utc::now());
        self.carry_out(decision, "found after the events stream reconnected")
            .await;
    }

    pub(super) async fn on_health(&mut self, healthy: bool, at: DateTime<Utc>) {
        self.update(|s| s.container.healthy = Some(healthy));
        self.edges
            .metrics
            .record(names::CONTAINER_HEALTHY, if healthy { 1.0 } else { 0.0 }, Unit::Count);
        if healthy {
            tracing::info!(container = %self.workload.container.name, "container healthy again");
            return;
        }
        let decision = self
            .workload
            .supervision
            .observe(Observed::Unhealthy { at }, Utc::now());
        self.carry_out(decision, "health check failed").await;
    }

    /// Carries out one decision of the policy.
    pub(super) async fn carry_out(&mut self, decision: Decision, why: &str) {
        match decision {
            Decision::Ignore(reason) => {
                tracing::debug!(container = %self.workload.container.name, why, reason, "nothing to do");
            }
            Decision::Restart { after, stop_first } => {
                if stop_first {
                    tracing::warn!(container = %self.workload.container.name, why, "stopping the container to restart it");
                    self.workload.supervision.stopping_on_purpose();
                    if let Err(e) = self.workload.container.stop(self.container_config.stop_timeout).await {
                        tracing::warn!(error = %e, "cannot stop the container");
                    }
                    self.workload.supervision.stop_abandoned();
                }
                self.update(|s| s.container.state = "exited".into());
                tracing::warn!(container = %self.workload.container.name, why, restart_in_ms = after.as_millis() as u64, "container failed; restarting after backoff");
                self.edges
                    .notifier
                    .status(&format!("container failed ({why}); restarting in {}s", after.as_secs()));
            }
            Decision::StartAgain => {
                tracing::info!(container = %self.workload.container.name, why, "the app exited cleanly on its own (a self-restart, such as OpenClaw's after a config change); starting it again");
                self.update(|s| s.container.self_restarts += 1);
                // A start that fails goes back to the policy, which may decide again.
                Box::pin(self.start_container("self-restart")).await;
            }
            Decision::Recreate => {
                tracing::warn!(container = %self.workload.container.name, why, "the container is gone; creating it again from the config");
                if let Err(e) = self.recreate_container().await {
                    tracing::error!(error = %e, "cannot recreate the container");
                    let decision = self.workload.supervision.observe(Observed::StartFailed, Utc::now());
                    Box::pin(self.carry_out(decision, "recreate failed")).await;
                }
            }
            Decision::GiveUp { failures } => {
                let text = format!(
                    "container {} failed {failures} times within {}; not restarting it (crash loop). Fix it, then `systemctl restart spotkeeper`",
                    self.workload.container.name,
                    crate::duration::format(self.container_config.restart_window)
                );
                tracing::error!("{text}");
                self.edges.notifier.status(&text);
                self.update(|s| {
                    s.container.crash_loop = true;
                    s.phase = "crash-loop".into();
                    s.last_error = Some(text.clone());
                });
            }
        }
    }

    pub(super) async fn restart_container(&mut self, why: &str) {
        tracing::info!(container = %self.workload.container.name, why, "starting the container again");
        self.update(|s| s.container.restarts += 1);
        self.edges.metrics.record(names::CONTAINER_RESTARTS, 1.0, Unit::Count);
        self.start_container(why).await;
    }

    /// Starts the container (after a stop of ours, or a backoff) and tells the policy: a death
    /// from before this start is then stale. A failure goes to the policy too (backoff); a
    /// container that is gone is recreated.
    pub(super) async fn start_container(&mut self, why: &str) {
        let at = Utc::now();
        match self.workload.container.start().await {
            Ok(()) => {
                self.workload.supervision.started(at);
                self.workload.health.started(self.container_config.start_timeout);
                self.update(|s| s.container.state = "running".into());
            }
            Err(e) => {
                tracing::error!(container = %self.workload.container.name, why, error = %e, "cannot start the container");
                self.workload.supervision.stop_abandoned();
                let observed = if e.is_missing() {
                    Observed::Missing { at: Utc::now() }
                } else {
                    Observed::StartFailed
                };
                let decision = self.workload.supervision.observe(observed, Utc::now());
                self.carry_out(decision, why).await;
            }
        }
    }

    /// Makes sure the container is not frozen (`runtime::thaw`). A failure is loud: an error in
    /// `status`, the ContainerFrozen metric, and a retry every few seconds from the main loop.
    pub(super) async fn thaw(&mut self) -> bool {
        let result = runtime::thaw(&self.workload.container, THAW_ATTEMPTS).await;
        self.workload.frozen.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => {
                if self.workload.stuck_frozen {
                    tracing::warn!(container = %self.workload.container.name, "container thawed at last");
                    self.edges.metrics.record(names::CONTAINER_FROZEN, 0.0, Unit::Count);
                    self.update(|s| {
                        s.container.frozen_error = None;
                        s.container.state = "running".into();
                    });
                }
                self.workload.stuck_frozen = false;
                true
            }
            Err(e) => {
                let text = format!("CONTAINER LEFT FROZEN: {e}; retrying every {}s", THAW_RETRY.as_secs());
                tracing::error!("{text}");
                self.edges.notifier.status(&text);
                self.edges.metrics.record(names::CONTAINER_FROZEN, 1.0, Unit::Count);
                self.update(|s| {
                    s.container.state = "paused".into();
                    s.container.frozen_error = Some(text.clone());
                    s.last_error = Some(text.clone());
                });
                self.workload.stuck_frozen = true;
                false
            }
        }
    }
}
