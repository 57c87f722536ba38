//! Watching the container: Docker events (reconnecting), health probes, restarts with backoff
//! and the crash-loop limit.

use super::*;

impl Daemon {
    pub(super) fn spawn_watchers(&self, events: mpsc::Sender<Event>) {
        // Docker events, reconnecting when the stream ends (engine restart).
        let container = self.container.clone();
        let tx = events.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut since = Utc::now();
            let mut delay = Duration::from_millis(200);
            loop {
                let mut stream = Box::pin(container.events(since));
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(action) => {
                            since = Utc::now();
                            delay = Duration::from_millis(200);
                            if tx.send(Event::Container(action)).await.is_err() {
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
                if tx.send(Event::EventsReconnected).await.is_err() {
                    return;
                }
            }
        });
        // Spot notices, only when IMDS answered at start.
        if self.instance_id.is_some()
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
            let frozen = Arc::clone(&self.frozen);
            tokio::spawn(async move {
                let mut failures = 0u32;
                let mut healthy = true;
                loop {
                    tokio::time::sleep(interval).await;
                    let ok = supervisor::probe(&url).await;
                    if frozen.load(Ordering::Relaxed) {
                        continue;
                    }
                    failures = if ok { 0 } else { failures + 1 };
                    let now_healthy = ok || failures < UNHEALTHY_AFTER;
                    if now_healthy != healthy {
                        healthy = now_healthy;
                        if events.send(Event::Health(healthy)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }

    pub(super) async fn on_container_event(&mut self, action: &str) {
        tracing::debug!(container = %self.container.name, action, "container event");
        match action {
            "die" | "oom" if !self.expecting_stop && !self.interrupted => {
                self.container_failed(&format!("container event {action}"))
            }
            "start" | "unpause" => self.update(|s| s.container.state = "running".into()),
            "pause" => self.update(|s| s.container.state = "paused".into()),
            "die" | "stop" => self.update(|s| s.container.state = "exited".into()),
            _ => {}
        }
    }

    /// The event stream was down for a while: look at the container to catch a missed death.
    pub(super) async fn on_events_reconnected(&mut self) {
        tracing::info!("Docker events stream reconnected");
        match self.container.state().await {
            Ok(RunState::Running | RunState::Paused) => {}
            Ok(state) if !self.expecting_stop && self.restart_at.is_none() && !self.crash_loop => {
                self.container_failed(&format!(
                    "container found {state:?} after the events stream reconnected"
                ));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot inspect the container"),
        }
    }

    pub(super) async fn on_health(&mut self, healthy: bool) {
        self.update(|s| s.container.healthy = Some(healthy));
        self.metrics
            .record(names::CONTAINER_HEALTHY, if healthy { 1.0 } else { 0.0 }, Unit::Count);
        if healthy {
            tracing::info!(container = %self.container.name, "container healthy again");
            return;
        }
        if self.expecting_stop || self.crash_loop || self.restart_at.is_some() || self.interrupted {
            return;
        }
        tracing::warn!(container = %self.container.name, "container unhealthy; restarting it");
        self.expecting_stop = true;
        if let Err(e) = self.container.stop(self.container_config.stop_timeout).await {
            tracing::warn!(error = %e, "cannot stop the unhealthy container");
        }
        self.expecting_stop = false;
        self.container_failed("health check failed");
    }

    pub(super) fn container_failed(&mut self, why: &str) {
        self.update(|s| s.container.state = "exited".into());
        match self.restarts.failed(Utc::now()) {
            AfterFailure::RestartIn(delay) => {
                tracing::warn!(container = %self.container.name, why, restart_in_ms = delay.as_millis() as u64, "container failed; restarting after backoff");
                self.notifier
                    .status(&format!("container failed ({why}); restarting in {}s", delay.as_secs()));
                self.restart_at = Some(Instant::now() + delay);
            }
            AfterFailure::GiveUp => {
                let text = format!(
                    "container {} failed {} times within {}; not restarting it (crash loop). Fix it, then `systemctl restart spotkeeper`",
                    self.container.name,
                    self.restarts.recent(),
                    crate::duration::format(self.container_config.restart_window)
                );
                tracing::error!("{text}");
                self.notifier.status(&text);
                self.crash_loop = true;
                self.restart_at = None;
                self.update(|s| {
                    s.container.crash_loop = true;
                    s.phase = "crash-loop".into();
                    s.last_error = Some(text.clone());
                });
            }
        }
    }

    pub(super) async fn restart_container(&mut self, why: &str) {
        tracing::info!(container = %self.container.name, why, "starting the container again");
        self.update(|s| s.container.restarts += 1);
        self.metrics.record(names::CONTAINER_RESTARTS, 1.0, Unit::Count);
        // A failed recreation may have left this set: from here its death is a failure again.
        self.expecting_stop = false;
        match self.container.start().await {
            Ok(()) => self.update(|s| s.container.state = "running".into()),
            Err(e) => {
                tracing::warn!(error = %e, "restart failed");
                self.container_failed("restart failed");
            }
        }
    }
}
