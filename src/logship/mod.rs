//! spotkeeper's own log lines to CloudWatch Logs (`[logs]`), for `spotkeeper run` only: a
//! `tracing` layer (`layer.rs`) pushes each line into a bounded buffer (`buffer.rs`, pure) and a
//! task sends batches with PutLogEvents every `[logs] flush`, or sooner when `FLUSH_AT` lines wait.
//!
//! Logging never waits for the network: a push takes a std mutex for the push alone, and a full
//! buffer drops its oldest line (counted). A batch that failed for a passing reason goes back to
//! the front for the next flush; one CloudWatch Logs refuses for good is dropped (counted). This
//! module's own warnings go to stderr/journald only: the layer ignores them (no recursion).

pub mod buffer;
mod layer;

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_cloudwatchlogs::Client;
use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::{DEFAULT_LOGS_BUFFER_EVENTS, LogsConfig};
use buffer::{LogBuffer, LogEvent};
pub use layer::ShipLayer;

/// Send before the next tick once this many lines wait.
pub const FLUSH_AT: usize = 1000;
/// One PutLogEvents or CreateLogStream call gets this long (SDK retries included).
const CALL_LIMIT: Duration = Duration::from_secs(15);
/// Batches sent in one flush at most (the rest wait for the next one).
const BATCHES_PER_FLUSH: usize = 20;
/// Failures are warned about at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Events from this module's targets never go into the buffer.
const OWN_TARGET: &str = "spotkeeper::logship";

/// Whether lines are kept: from the layer's install until the config is read (`Pending`, with
/// the default bound), then `On` with `[logs]`, `Off` without.
const PENDING: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

/// What `spotkeeper status --json` shows under `logs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsStatus {
    /// Lines CloudWatch Logs accepted.
    pub shipped: u64,
    /// Lines lost: pushed out of the full buffer, too old, or refused for good.
    pub dropped: u64,
}

/// The buffer and counters the layer and the shipper share (one per process).
struct Shared {
    buffer: Mutex<LogBuffer>,
    mode: AtomicU8,
    wake: Notify,
    shipped: AtomicU64,
    /// Dropped lines already published as the `LogEventsDropped` metric.
    reported_drops: AtomicU64,
}

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

fn shared() -> &'static Arc<Shared> {
    SHARED.get_or_init(|| {
        Arc::new(Shared {
            buffer: Mutex::new(LogBuffer::new(DEFAULT_LOGS_BUFFER_EVENTS)),
            mode: AtomicU8::new(PENDING),
            wake: Notify::new(),
            shipped: AtomicU64::new(0),
            reported_drops: AtomicU64::new(0),
        })
    })
}

impl Shared {
    /// The buffer, also after a panic elsewhere poisoned the lock (a log line must not panic).
    fn buffer(&self) -> MutexGuard<'_, LogBuffer> {
        self.buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The layer `main` installs for `spotkeeper run`; it keeps lines until `start` says where
/// they go (or that they go nowhere).
pub fn layer() -> ShipLayer {
    ShipLayer::new(Arc::clone(shared()))
}

/// Shipped and dropped lines so far; `None` when `[logs]` is not configured.
pub fn counters() -> Option<LogsStatus> {
    let shared = SHARED.get()?;
    (shared.mode.load(Ordering::Relaxed) == ON).then(|| LogsStatus {
        shipped: shared.shipped.load(Ordering::Relaxed),
        dropped: shared.buffer().dropped(),
    })
}

/// Lines dropped since the last call (the `LogEventsDropped` metric); `None` when off.
pub fn unreported_drops() -> Option<u64> {
    let dropped = counters()?.dropped;
    let before = shared().reported_drops.swap(dropped, Ordering::Relaxed);
    Some(dropped.saturating_sub(before))
}

/// A handle to the shipper task: `flush` on the way out.
#[derive(Debug, Clone)]
pub struct LogShipper {
    requests: mpsc::Sender<oneshot::Sender<()>>,
}

/// Starts shipping to `config`'s group and stream (within a Tokio runtime); without `[logs]`,
/// stops keeping lines and returns `None`.
pub fn start(config: Option<&LogsConfig>, sdk_config: &aws_config::SdkConfig) -> Option<LogShipper> {
    let shared = Arc::clone(shared());
    let Some(config) = config else {
        shared.mode.store(OFF, Ordering::Relaxed);
        shared.buffer().clear();
        return None;
    };
    let mut builder = aws_sdk_cloudwatchlogs::config::Builder::from(sdk_config);
    if let Some(region) = &config.region {
        builder = builder.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    shared.buffer().set_capacity(config.buffer_events);
    shared.mode.store(ON, Ordering::Relaxed);
    let (requests, receiver) = mpsc::channel(4);
    let shipper = Shipper {
        client: Client::from_conf(builder.build()),
        group: config.group.clone(),
        stream: config.stream.clone(),
        flush: config.flush,
        shared,
        last_warning: None,
    };
    tokio::spawn(layer::SHIPPING.scope((), shipper.run(receiver)));
    Some(LogShipper { requests })
}

impl LogShipper {
    /// Sends what is buffered, waiting at most `limit` in all (shutdown).
    pub async fn flush(&self, limit: Duration) {
        let (done, wait) = oneshot::channel();
        let _ = tokio::time::timeout(limit, async {
            if self.requests.send(done).await.is_ok() {
                let _ = wait.await;
            }
        })
        .await;
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What one failed call says, reduced to the facts the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    /// The service's error code, when it answered with one.
    code: Option<String>,
    /// The HTTP status, when there was an answer.
    status: Option<u16>,
}

impl Failure {
    fn of<E: ProvideErrorMetadata>(error: &SdkError<E>) -> Failure {
        match error {
            SdkError::ServiceError(service) => Failure {
                code: service.err().code().map(str::to_string),
                status: Some(service.raw().status().as_u16()),
            },
            SdkError::ResponseError(response) => Failure {
                code: None,
                status: Some(response.raw().status().as_u16()),
            },
            _ => Failure {
                code: None,
                status: None,
            },
        }
    }
}

/// What to do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The stream (or the group) does not exist: create the stream, then try again.
    Missing,
    /// Unreachable, throttled, or the service failed: keep the batch for the next flush.
    Transient,
    /// Refused (bad request, no permission): give the batch up.
    Permanent,
}

/// The one place that decides transient vs permanent.
fn classify(failure: &Failure) -> Verdict {
    const TRANSIENT_CODES: [&str; 4] = [
        "ThrottlingException",
        "ServiceUnavailableException",
        "LimitExceededException",
        "RequestTimeout",
    ];
    match (failure.code.as_deref(), failure.status) {
        (Some("ResourceNotFoundException"), _) => Verdict::Missing,
        (Some(code), _) if TRANSIENT_CODES.contains(&code) => Verdict::Transient,
        (_, None) => Verdict::Transient,
        (_, Some(status)) if status >= 500 || status == 429 || status == 408 => Verdict::Transient,
        // An answer without a code is a body that could not be read: try again.
        (None, Some(_)) => Verdict::Transient,
        (Some(_), Some(_)) => Verdict::Permanent,
    }
}

/// How many of `sent` events CloudWatch Logs accepted but did not store (too old, too new,
/// expired); indexes as PutLogEvents reports them.
fn rejected(too_new_start: Option<i32>, too_old_end: Option<i32>, expired_end: Option<i32>, sent: usize) -> usize {
    let index = |i: Option<i32>| i.and_then(|i| usize::try_from(i).ok());
    let old = [index(too_old_end), index(expired_end)]
        .into_iter()
        .flatten()
        .map(|end| end + 1)
        .max()
        .unwrap_or(0);
    let new = index(too_new_start).map_or(0, |start| sent.saturating_sub(start));
    (old + new).min(sent)
}

/// Why a batch was not delivered.
enum NotSent {
    /// Kept for the next flush.
    Retry(String),
    /// Given up on.
    Refused(String),
}

struct Shipper {
    client: Client,
    group: String,
    stream: String,
    flush: Duration,
    shared: Arc<Shared>,
    last_warning: Option<Instant>,
}

impl Shipper {
    async fn run(mut self, mut requests: mpsc::Receiver<oneshot::Sender<()>>) {
        let mut ticker = tokio::time::interval(self.flush);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reply = tokio::select! {
                _ = ticker.tick() => None,
                _ = self.shared.wake.notified() => None,
                request = requests.recv() => match request {
                    Some(done) => Some(done),
                    None => return,
                },
            };
            self.ship().await;
            if let Some(done) = reply {
                let _ = done.send(());
            }
        }
    }

    /// Sends batches until the buffer is empty, a batch must wait, or `BATCHES_PER_FLUSH`.
    async fn ship(&mut self) {
        for _ in 0..BATCHES_PER_FLUSH {
            let batch = self.shared.buffer().take_batch(now_ms());
            if batch.is_empty() {
                return;
            }
            let sent = batch.len();
            match self.send(&batch).await {
                Ok(rejected) => {
                    self.shared
                        .shipped
                        .fetch_add((sent - rejected) as u64, Ordering::Relaxed);
                    if rejected > 0 {
                        self.shared.buffer().count_dropped(rejected as u64);
                    }
                }
                Err(NotSent::Retry(why)) => {
                    self.shared.buffer().put_back(batch);
                    self.warn(&format!(
                        "cannot reach CloudWatch Logs; lines kept for the next try ({why})"
                    ));
                    return;
                }
                Err(NotSent::Refused(why)) => {
                    self.shared.buffer().count_dropped(sent as u64);
                    self.warn(&format!(
                        "CloudWatch Logs refused {sent} log lines; they are dropped ({why})"
                    ));
                }
            }
        }
    }

    /// One PutLogEvents; on a missing stream, creates it and tries once more. `Ok`: the events
    /// CloudWatch Logs did not store.
    async fn send(&self, batch: &[LogEvent]) -> Result<usize, NotSent> {
        let events: Vec<InputLogEvent> = batch
            .iter()
            .filter_map(|e| {
                InputLogEvent::builder()
                    .timestamp(e.timestamp_ms)
                    .message(e.message.clone())
                    .build()
                    .ok()
            })
            .collect();
        for attempt in 0..2 {
            let call = self
                .client
                .put_log_events()
                .log_group_name(&self.group)
                .log_stream_name(&self.stream)
                .set_log_events(Some(events.clone()))
                .send();
            let error = match tokio::time::timeout(CALL_LIMIT, call).await {
                Err(_) => return Err(NotSent::Retry("no answer within 15s".into())),
                Ok(Ok(out)) => {
                    let info = out.rejected_log_events_info();
                    return Ok(rejected(
                        info.and_then(|i| i.too_new_log_event_start_index()),
                        info.and_then(|i| i.too_old_log_event_end_index()),
                        info.and_then(|i| i.expired_log_event_end_index()),
                        events.len(),
                    ));
                }
                Ok(Err(e)) => e,
            };
            let shown = format!(
                "PutLogEvents to {}/{}: {}",
                self.group,
                self.stream,
                DisplayErrorContext(&error)
            );
            match classify(&Failure::of(&error)) {
                Verdict::Missing if attempt == 0 => self.create_stream().await?,
                Verdict::Transient => return Err(NotSent::Retry(shown)),
                Verdict::Missing | Verdict::Permanent => return Err(NotSent::Refused(shown)),
            }
        }
        Err(NotSent::Refused(format!(
            "log stream {}/{} still missing after it was created",
            self.group, self.stream
        )))
    }

    /// CreateLogStream; one that already exists is fine. A missing group is not (Pulumi makes it).
    async fn create_stream(&self) -> Result<(), NotSent> {
        let call = self
            .client
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .send();
        let error = match tokio::time::timeout(CALL_LIMIT, call).await {
            Err(_) => return Err(NotSent::Retry("CreateLogStream: no answer within 15s".into())),
            Ok(Ok(_)) => {
                tracing::info!(group = %self.group, stream = %self.stream, "log stream created");
                return Ok(());
            }
            Ok(Err(e)) => e,
        };
        let failure = Failure::of(&error);
        if failure.code.as_deref() == Some("ResourceAlreadyExistsException") {
            return Ok(());
        }
        let shown = format!(
            "CreateLogStream {}/{}: {}",
            self.group,
            self.stream,
            DisplayErrorContext(&error)
        );
        match classify(&failure) {
            Verdict::Transient => Err(NotSent::Retry(shown)),
            Verdict::Missing => Err(NotSent::Refused(format!(
                "log group {} does not exist ({shown})",
                self.group
            ))),
            Verdict::Permanent => Err(NotSent::Refused(shown)),
        }
    }

    /// At most once a minute, to stderr/journald only (the layer ignores this module).
    fn warn(&mut self, text: &str) {
        if self.last_warning.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        self.last_warning = Some(Instant::now());
        let dropped = self.shared.buffer().dropped();
        tracing::warn!(dropped, "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_classifier_decides_what_is_retried() {
        let failure = |code: Option<&str>, status: Option<u16>| Failure {
            code: code.map(str::to_string),
            status,
        };
        let table = [
            (failure(Some("ResourceNotFoundException"), Some(400)), Verdict::Missing),
            (failure(Some("ThrottlingException"), Some(400)), Verdict::Transient),
            (
                failure(Some("ServiceUnavailableException"), Some(503)),
                Verdict::Transient,
            ),
            (failure(Some("InternalFailure"), Some(500)), Verdict::Transient),
            (failure(None, Some(502)), Verdict::Transient),
            (failure(None, Some(200)), Verdict::Transient),
            // Connection refused, DNS, timeouts: no answer at all.
            (failure(None, None), Verdict::Transient),
            (
                failure(Some("InvalidParameterException"), Some(400)),
                Verdict::Permanent,
            ),
            (failure(Some("AccessDeniedException"), Some(400)), Verdict::Permanent),
            (
                failure(Some("UnrecognizedClientException"), Some(400)),
                Verdict::Permanent,
            ),
            (
                failure(Some("DataAlreadyAcceptedException"), Some(400)),
                Verdict::Permanent,
            ),
        ];
        for (failure, verdict) in table {
            assert_eq!(classify(&failure), verdict, "{failure:?}");
        }
    }

    #[test]
    fn rejected_events_are_counted_from_put_log_events_indexes() {
        // (too new from, too old up to, expired up to, sent, not stored)
        let table = [
            (None, None, None, 10, 0),
            (Some(8), None, None, 10, 2),
            (None, Some(2), None, 10, 3),
            (None, Some(2), Some(4), 10, 5),
            (Some(5), Some(4), None, 10, 10),
            (Some(0), Some(9), None, 10, 10),
            (Some(-1), Some(-1), None, 10, 0),
        ];
        for (new, old, expired, sent, not_stored) in table {
            assert_eq!(
                rejected(new, old, expired, sent),
                not_stored,
                "{new:?} {old:?} {expired:?}"
            );
        }
    }
}
