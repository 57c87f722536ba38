//! When a failed health probe counts. Not while the daemon holds the container still (frozen
//! for a snapshot, or stopped for one with `consistency = "stop"`), and not while the app
//! boots: after each start, failures count only once a probe has succeeded or `start_timeout`
//! has passed (Docker's start period). Without this, a slow boot after a stop-consistency
//! snapshot was taken for a failure and the daemon restarted a healthy app.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct HealthGate {
    held: AtomicBool,
    /// Milliseconds after `epoch()` until which a booting app's failures do not count; 0 once a
    /// probe succeeded.
    booting_until_ms: AtomicU64,
    /// Counts the container's starts: a prober forgets its failures when it changes.
    starts: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl HealthGate {
    /// The daemon stops the container on purpose (a stop-consistency snapshot).
    pub fn hold(&self) {
        self.held.store(true, Ordering::Relaxed);
    }

    pub fn release(&self) {
        self.held.store(false, Ordering::Relaxed);
    }

    /// How many times the container was started (a new life resets the failure count).
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }

    /// Whether the daemon holds the container still.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// The container was just started: give it `grace` to answer.
    pub fn started(&self, grace: Duration) {
        self.starts.fetch_add(1, Ordering::Relaxed);
        let grace = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.booting_until_ms
            .store(now_ms().saturating_add(grace).max(1), Ordering::Relaxed);
    }

    /// Whether this probe's result counts (a success also ends the boot grace).
    pub fn counts(&self, ok: bool) -> bool {
        if ok {
            self.booting_until_ms.store(0, Ordering::Relaxed);
        }
        counts(
            self.held.load(Ordering::Relaxed),
            self.booting_until_ms.load(Ordering::Relaxed),
            now_ms(),
            ok,
        )
    }
}

/// The rule, apart from clocks and atomics.
fn counts(held: bool, booting_until_ms: u64, now_ms: u64, ok: bool) -> bool {
    if held {
        return false;
    }
    ok || booting_until_ms == 0 || now_ms >= booting_until_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_only_when_the_app_is_neither_held_nor_booting() {
        // (held, booting until, now, probe ok) -> counts
        let cases = [
            ((false, 0, 5_000, false), true),
            ((false, 0, 5_000, true), true),
            ((true, 0, 5_000, false), false),
            ((true, 0, 5_000, true), false),
            ((false, 10_000, 5_000, false), false),
            ((false, 10_000, 10_000, false), true),
            ((false, 10_000, 5_000, true), true),
        ];
        for ((held, until, now, ok), expected) in cases {
            assert_eq!(counts(held, until, now, ok), expected, "{held} {until} {now} {ok}");
        }
    }

    #[test]
    fn a_success_ends_the_boot_grace() {
        let gate = HealthGate::default();
        gate.started(Duration::from_secs(3600));
        assert!(!gate.counts(false));
        assert!(gate.counts(true));
        assert!(gate.counts(false), "after a success, a failure counts again");
        gate.hold();
        assert!(!gate.counts(false));
        gate.release();
        assert!(gate.counts(false));
    }
}
