//! systemd integration: sd_notify (READY, STATUS, WATCHDOG, STOPPING, EXTEND_TIMEOUT_USEC),
//! the watchdog fed by progress, and whether stderr is the journal. Outside systemd every call is
//! a no-op.
//!
//! The watchdog: a task pings WATCHDOG=1 every half `WATCHDOG_USEC`, but only while something
//! showed progress within that half: the main loop each time round, and long steps as they go
//! (entries walked, chunks packed or downloaded) through `progress()`, and calls bounded by their
//! own timeouts (S3 requests, a container's stop) through `alive_while`. A long
//! snapshot that moves is never killed; a daemon stuck anywhere stops the pings and systemd kills
//! it within about twice `WatchdogSec`.

use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Sends notifications when `NOTIFY_SOCKET` is set; a failure to notify is logged, never fatal.
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    pub fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(false, states)
        {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    /// Start-up is complete.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// The one-line status `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Asks systemd for `extra` more time for the current start or stop.
    pub fn extend(&self, extra: Duration) {
        let usec = u32::try_from(extra.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}

/// The moment this process started; progress marks are counted from it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds after `epoch()` of the last progress mark.
static LAST_PROGRESS_MS: AtomicU64 = AtomicU64::new(0);

/// Marks progress: the daemon is alive and its current step is moving. Cheap (one atomic
/// store): call it per part, chunk or file.
pub fn progress() {
    let ms = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
    LAST_PROGRESS_MS.fetch_max(ms, Ordering::Relaxed);
}

/// Runs `work`, a call bounded by its own timeouts, marking progress every second while it runs
/// and for at most `bound`: a slow but live request (a part trickling to a slow S3, a container
/// taking its grace period to stop) is not a hang. Past `bound` it marks nothing, so a call that
/// hangs beyond its own limits still stops the pings.
pub async fn alive_while<F: std::future::Future>(bound: Duration, work: F) -> F::Output {
    marking_while(bound, Duration::from_secs(1), progress, work).await
}

/// `alive_while` with the tick and the mark as arguments (for tests).
async fn marking_while<F: std::future::Future>(bound: Duration, tick: Duration, mark: impl Fn(), work: F) -> F::Output {
    let deadline = Instant::now() + bound;
    let mut work = std::pin::pin!(work);
    loop {
        if Instant::now() < deadline {
            mark();
        }
        tokio::select! {
            output = &mut work => return output,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// How long ago progress was last marked.
pub fn since_progress() -> Duration {
    let now = epoch().elapsed();
    now.saturating_sub(Duration::from_millis(LAST_PROGRESS_MS.load(Ordering::Relaxed)))
}

/// Whether the watchdog task should ping now: progress within the last `window`.
pub fn alive(since_progress: Duration, window: Duration) -> bool {
    since_progress <= window
}

/// Starts the watchdog task when systemd asked for one (`WATCHDOG_USEC`): a ping every half
/// period while progress was marked within that half period.
pub fn spawn_watchdog(notifier: Notifier) {
    let Some(every) = watchdog_interval() else {
        return;
    };
    progress();
    tokio::spawn(async move {
        let mut silent = false;
        loop {
            tokio::time::sleep(every).await;
            let quiet_for = since_progress();
            if alive(quiet_for, every) {
                notifier.watchdog();
                silent = false;
            } else if !silent {
                silent = true;
                tracing::error!(
                    quiet_ms = quiet_for.as_millis() as u64,
                    "no progress for longer than half the watchdog period; not pinging systemd"
                );
            }
        }
    });
}

/// How often long work's progress reaches `systemctl status`.
const PROGRESS_STATUS_EVERY: Duration = Duration::from_secs(5);

/// Shows the progress of long work (a snapshot, a restore, the drill) in STATUS, as
/// `snapshot: 120.0 MiB of 400.0 MiB (30%), 12.0 MiB/s, about 24 s left`; work shorter than one
/// period is not shown. The job's own STATUS line replaces it when the work ends.
pub fn spawn_progress_status(notifier: Notifier) {
    if !notifier.enabled {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROGRESS_STATUS_EVERY).await;
            if let Some(reading) = crate::progress::reading()
                && reading.elapsed >= PROGRESS_STATUS_EVERY
            {
                notifier.status(&crate::progress::describe(&reading));
            }
        }
    });
}

/// Half of `WATCHDOG_USEC`, the interval to ping at; `None` when the watchdog is off.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// True when stderr is connected to the journal (`JOURNAL_STREAM` names its device and inode).
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(stat.st_dev) && ino.parse::<u64>().ok() == Some(stat.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bounded_call_marks_progress_only_within_its_bound() {
        use std::sync::atomic::AtomicU32;
        let marks = AtomicU32::new(0);
        let mark = || {
            marks.fetch_add(1, Ordering::Relaxed);
        };
        // A call that outlives its bound: marked at the start and each tick within the bound
        // (at most 5 ticks of 10 ms in 50 ms, fewer if the machine is slow), never after it.
        let output = marking_while(
            Duration::from_millis(50),
            Duration::from_millis(10),
            mark,
            tokio::time::sleep(Duration::from_millis(300)),
        )
        .await;
        assert_eq!(output, ());
        let counted = marks.load(Ordering::Relaxed);
        assert!((1..=6).contains(&counted), "{counted} marks");
    }

    #[test]
    fn progress_moves_the_mark_and_the_watchdog_judges_by_it() {
        progress();
        assert!(since_progress() < Duration::from_secs(5));
        assert!(alive(Duration::from_secs(10), Duration::from_secs(60)));
        assert!(alive(Duration::from_secs(60), Duration::from_secs(60)));
        assert!(!alive(Duration::from_secs(61), Duration::from_secs(60)));
    }
}
