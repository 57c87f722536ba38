//! The `tracing` layer that turns each event into one plain line (level, message, fields; no
//! target, no colours) and pushes it into the shared buffer. It never waits: the buffer's lock
//! is held for the push alone.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use super::{FLUSH_AT, OFF, OWN_TARGET, Shared};

tokio::task_local! {
    /// Set while the shipper task runs: what it (and the SDK inside it) logs is not shipped.
    pub(super) static SHIPPING: ();
}

/// Pushes spotkeeper's log lines into the CloudWatch Logs buffer.
pub struct ShipLayer {
    shared: Arc<Shared>,
}

impl ShipLayer {
    pub(super) fn new(shared: Arc<Shared>) -> ShipLayer {
        ShipLayer { shared }
    }
}

impl<S: Subscriber> Layer<S> for ShipLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if self.shared.mode.load(Ordering::Relaxed) == OFF
            || event.metadata().target().starts_with(OWN_TARGET)
            || event.metadata().target().starts_with("aws_sdk_cloudwatchlogs")
            || SHIPPING.try_with(|_| ()).is_ok()
        {
            return;
        }
        let line = format_line(event);
        let timestamp_ms = chrono::Utc::now().timestamp_millis();
        let waiting = {
            let mut buffer = self.shared.buffer();
            buffer.push(timestamp_ms, line);
            buffer.len()
        };
        if waiting >= FLUSH_AT {
            self.shared.wake.notify_one();
        }
    }
}

/// `INFO snapshot complete id=2026-12-07-10-00 files=3`: the stderr formatter's line without
/// its time (CloudWatch Logs keeps the event's own) and without colours.
fn format_line(event: &Event<'_>) -> String {
    let mut line = LineVisitor::default();
    event.record(&mut line);
    let mut text = format!("{} {}", event.metadata().level(), line.message);
    text.push_str(&line.fields);
    text
}

#[derive(Default)]
struct LineVisitor {
    message: String,
    fields: String,
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let _ = write!(self.fields, " {}={value}", field.name());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            // `log` records carried over by tracing-log.
            name if name.starts_with("log.") => {}
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// A line as the layer makes it, caught by a layer of its own.
    struct Catch(Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Catch {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            if let Ok(mut lines) = self.0.lock() {
                lines.push(format_line(event));
            }
        }
    }

    #[test]
    fn a_line_is_the_level_the_message_and_the_fields() {
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Catch(Arc::clone(&lines)));
        tracing::subscriber::with_default(subscriber, || {
            let id = "2026-12-07-10-00";
            tracing::info!(snapshot_id = %id, files = 3, "snapshot complete");
            tracing::warn!(path = "/var/lib/x", "cannot read");
            let error = std::io::Error::other("disk full");
            tracing::error!(error = &error as &dyn std::error::Error, "failed");
            tracing::info!("plain {}", 42);
        });
        let lines = lines.lock().expect("lines").clone();
        assert_eq!(
            lines,
            [
                "INFO snapshot complete snapshot_id=2026-12-07-10-00 files=3",
                "WARN cannot read path=\"/var/lib/x\"",
                "ERROR failed error=disk full",
                "INFO plain 42",
            ]
        );
    }
}
