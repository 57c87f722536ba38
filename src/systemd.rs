//! systemd integration: sd_notify (READY, STATUS, WATCHDOG, STOPPING, EXTEND_TIMEOUT_USEC),
//! the watchdog fed by the liveness mark, and whether stderr is the journal. Outside systemd
//! every call is a no-op.
//!
//! The watchdog: a task pings WATCHDOG=1 every half `WATCHDOG_USEC`, but only while something
//! marked progress within that half (`liveness`: the main loop each time round, long steps as
//! they go, calls bounded by their own timeouts). A long snapshot that moves is never killed; a
//! daemon stuck anywhere stops the pings and systemd kills it within about twice `WatchdogSec`.

use std::os::fd::AsFd;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::liveness;

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

    /// Whether systemd listens (`NOTIFY_SOCKET` is set).
    pub fn enabled(&self) -> bool {
        self.enabled
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
    liveness::mark();
    tokio::spawn(async move {
        let mut silent = false;
        loop {
            tokio::time::sleep(every).await;
            let quiet_for = liveness::since_mark();
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

    #[test]
    fn the_watchdog_pings_while_the_last_mark_is_within_the_window() {
        assert!(alive(Duration::from_secs(10), Duration::from_secs(60)));
        assert!(alive(Duration::from_secs(60), Duration::from_secs(60)));
        assert!(!alive(Duration::from_secs(61), Duration::from_secs(60)));
    }
}
