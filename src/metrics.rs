//! CloudWatch metrics, best effort: datums are queued without waiting and sent in batches by a
//! background task; a failure is logged and never blocks a snapshot.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::error::DisplayErrorContext;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use tokio::sync::mpsc;

use crate::config::MetricsConfig;

/// Datums per PutMetricData call (the API allows 1000).
const BATCH: usize = 500;
/// How often queued datums are sent.
const FLUSH_EVERY: Duration = Duration::from_secs(20);
/// Datums queued before new ones are dropped (CloudWatch down for a long time).
const QUEUE: usize = 10_000;

/// Metric names; units are set where they are recorded.
pub mod names {
    pub const SNAPSHOT_SUCCESS: &str = "SnapshotSuccess";
    pub const SNAPSHOT_DURATION: &str = "SnapshotDuration";
    pub const ARCHIVE_BYTES: &str = "ArchiveBytes";
    pub const FREEZE_WINDOW: &str = "FreezeWindow";
    pub const SECONDS_SINCE_LAST_SNAPSHOT: &str = "SecondsSinceLastSnapshot";
    /// The age of the oldest change of the app's not yet in the head: the window of loss.
    pub const UNPROTECTED_SECONDS: &str = "UnprotectedSeconds";
    pub const CONTAINER_RESTARTS: &str = "ContainerRestarts";
    pub const CONTAINER_HEALTHY: &str = "ContainerHealthy";
    pub const RESTORE_DURATION: &str = "RestoreDuration";
    pub const PRUNE_DELETIONS: &str = "PruneDeletions";
    pub const SPOT_NOTICE: &str = "SpotNoticeReceived";
    pub const BACKUP_VERIFIED: &str = "BackupVerified";
    pub const LINEAGE_CONFLICT: &str = "LineageConflict";
    /// 1 each time the daemon refuses to start the app because of the head: not authentic,
    /// moved backwards, or older than the local state (the journal and `status` say which).
    pub const HEAD_REFUSED: &str = "HeadRefused";
    /// 1 while the container is stuck frozen (a thaw failed), 0 once it thawed.
    pub const CONTAINER_FROZEN: &str = "ContainerFrozen";
    /// 1 while the app reports itself alive but not ready (OpenClaw's `/readyz`: a channel that
    /// cannot connect), 0 once ready; never a restart.
    pub const APP_DEGRADED: &str = "AppDegraded";
    /// Entries of the state the last snapshot could not archive.
    pub const SKIPPED_ENTRIES: &str = "SkippedEntries";
    /// spotkeeper's own log lines lost on the way to CloudWatch Logs since the last datum (a
    /// full buffer while CloudWatch Logs was unreachable, or lines it refused).
    pub const LOG_EVENTS_DROPPED: &str = "LogEventsDropped";
}

/// Units used here.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Count,
    Seconds,
    Milliseconds,
    Bytes,
}

impl Unit {
    fn standard(self) -> StandardUnit {
        match self {
            Unit::Count => StandardUnit::Count,
            Unit::Seconds => StandardUnit::Seconds,
            Unit::Milliseconds => StandardUnit::Milliseconds,
            Unit::Bytes => StandardUnit::Bytes,
        }
    }
}

#[derive(Debug)]
enum Message {
    Datum(&'static str, f64, Unit),
    Dimension(String, String),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A handle to record metrics; cheap to clone. Disabled handles drop everything.
#[derive(Debug, Clone)]
pub struct Metrics {
    sender: Option<mpsc::Sender<Message>>,
}

impl Metrics {
    /// A handle that records nothing.
    pub fn disabled() -> Metrics {
        Metrics { sender: None }
    }

    /// Starts the sender task (within a Tokio runtime).
    pub fn start(config: &MetricsConfig, sdk_config: &aws_config::SdkConfig) -> Metrics {
        if !config.enabled {
            return Metrics::disabled();
        }
        let mut builder = aws_sdk_cloudwatch::config::Builder::from(sdk_config);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let client = Client::from_conf(builder.build());
        let (sender, receiver) = mpsc::channel(QUEUE);
        let sink = Sink {
            client,
            namespace: config.namespace.clone(),
            dimensions: config.dimensions.clone(),
            queue: Vec::new(),
            failing: false,
        };
        tokio::spawn(sink.run(receiver));
        Metrics { sender: Some(sender) }
    }

    /// Queues one datum; never waits.
    pub fn record(&self, name: &'static str, value: f64, unit: Unit) {
        if let Some(sender) = &self.sender
            && sender.try_send(Message::Datum(name, value, unit)).is_err()
        {
            tracing::debug!(name, "metrics queue full; datum dropped");
        }
    }

    /// Adds a dimension to every later datum (the instance id, once known).
    pub fn add_dimension(&self, name: &str, value: &str) {
        if let Some(sender) = &self.sender {
            let _ = sender.try_send(Message::Dimension(name.to_string(), value.to_string()));
        }
    }

    /// Sends what is queued, waiting at most `limit` (shutdown, tests).
    pub async fn flush(&self, limit: Duration) {
        if let Some(sender) = &self.sender {
            let (done, wait) = tokio::sync::oneshot::channel();
            if sender.send(Message::Flush(done)).await.is_ok() {
                let _ = tokio::time::timeout(limit, wait).await;
            }
        }
    }
}

struct Sink {
    client: Client,
    namespace: String,
    dimensions: BTreeMap<String, String>,
    queue: Vec<MetricDatum>,
    /// Log the first failure loudly, the rest quietly until it works again.
    failing: bool,
}

impl Sink {
    async fn run(mut self, mut receiver: mpsc::Receiver<Message>) {
        let mut ticker = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                message = receiver.recv() => match message {
                    Some(Message::Datum(name, value, unit)) => self.push(name, value, unit),
                    Some(Message::Dimension(name, value)) => { self.dimensions.insert(name, value); }
                    Some(Message::Flush(done)) => {
                        self.send().await;
                        let _ = done.send(());
                    }
                    None => {
                        self.send().await;
                        return;
                    }
                },
                _ = ticker.tick() => self.send().await,
            }
        }
    }

    fn push(&mut self, name: &'static str, value: f64, unit: Unit) {
        let dimensions: Vec<Dimension> = self
            .dimensions
            .iter()
            .map(|(k, v)| Dimension::builder().name(k).value(v).build())
            .collect();
        let datum = MetricDatum::builder()
            .metric_name(name)
            .value(value)
            .unit(unit.standard())
            .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from(
                std::time::SystemTime::now(),
            ))
            .set_dimensions(Some(dimensions))
            .build();
        if self.queue.len() < QUEUE {
            self.queue.push(datum);
        }
    }

    async fn send(&mut self) {
        while !self.queue.is_empty() {
            let batch: Vec<MetricDatum> = self.queue.drain(..self.queue.len().min(BATCH)).collect();
            let result = self
                .client
                .put_metric_data()
                .namespace(&self.namespace)
                .set_metric_data(Some(batch.clone()))
                .send()
                .await;
            match result {
                Ok(_) => {
                    if self.failing {
                        tracing::info!(namespace = %self.namespace, "CloudWatch metrics are being delivered again");
                    }
                    self.failing = false;
                }
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(namespace = %self.namespace, error = %DisplayErrorContext(&e),
                            "cannot publish CloudWatch metrics (best effort; backups are not affected)");
                    }
                    self.failing = true;
                    // Keep them for the next try, within bounds.
                    let room = QUEUE.saturating_sub(self.queue.len());
                    self.queue.splice(0..0, batch.into_iter().take(room));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every metric the daemon can publish has a row in the README's table (as `exit.rs` holds
    /// the exit codes): read from this file's own `names`, so a new metric without a row fails.
    #[test]
    fn every_metric_is_in_the_readme() {
        let source = include_str!("metrics.rs");
        let readme = include_str!("../README.md");
        let names: Vec<&str> = source
            .lines()
            .filter_map(|line| line.trim().strip_prefix("pub const "))
            .filter(|line| line.contains(": &str = \""))
            .filter_map(|line| line.split('"').nth(1))
            .collect();
        assert!(names.len() > 10, "{names:?}");
        for name in names {
            assert!(
                readme.contains(&format!("| `{name}` |")),
                "README's metric table has no row for {name}"
            );
        }
    }
}
