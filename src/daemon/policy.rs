//! The supervisor's policy, pure: what the container is doing as far as spotkeeper is concerned,
//! what was observed, and what to do about it. No Docker, no clock: time comes in as an argument,
//! so every rule is a row in a table test. The executor (`supervise.rs`) carries decisions out.
//!
//! The rules an operator relies on:
//! - a stop spotkeeper asked for (a `stop`-consistency snapshot, a manual restore, new secrets)
//!   is never a crash, and neither is a death Docker reports late, from before the last start;
//! - a container removed behind spotkeeper's back is recreated from the config, not counted;
//! - a clean exit (code 0) that spotkeeper did not ask for is the app restarting itself (OpenClaw
//!   does a "full process restart" after a config or auth change and, with a supervisor, expects
//!   it to start the process again): started again at once, not counted, unless it happens more
//!   than `SELF_RESTART_LIMIT` times within the window (a command that exits at once), when it
//!   counts as a failure;
//! - real failures restart with exponential backoff, and too many within the window stop the
//!   restarts (a crash loop) until an operator acts;
//! - once the machine is going away (SIGTERM, a Spot notice) nothing restarts.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Where supervision stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Supervised {
    /// Running (or meant to be), watched.
    Watching,
    /// spotkeeper stopped it on purpose and will start it again.
    PlannedStop,
    /// It failed; a restart is due at the given time.
    BackingOff,
    /// It failed too often; nothing restarts until an operator acts.
    CrashLoop,
    /// The machine is going away (SIGTERM, Spot notice): nothing restarts.
    Finishing,
}

/// Something the executor saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Docker reported the container's death (`die`) at `at`, with its exit code if reported.
    Died { at: DateTime<Utc>, exit_code: Option<i64> },
    /// The container is not running, seen by inspecting it (no event, e.g. after the events
    /// stream reconnected).
    FoundStopped,
    /// The container no longer exists (`destroy` event at `at`, or Docker answered 404).
    Missing { at: DateTime<Utc> },
    /// Health probes failed past the threshold, judged at `at` (the verdict may wait in the
    /// event queue while the daemon snapshots; one from before the last start is stale).
    Unhealthy { at: DateTime<Utc> },
    /// A (re)start or recreation failed.
    StartFailed,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing; the reason is logged at debug.
    Ignore(&'static str),
    /// Start it again after `after`; stop it first when it still runs (unhealthy).
    Restart { after: Duration, stop_first: bool },
    /// The app exited cleanly on its own (a self-restart): start it again now, not a failure.
    StartAgain,
    /// Create it again from the config, now.
    Recreate,
    /// Too many failures within the window: stop restarting.
    GiveUp { failures: usize },
}

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Clean exits within the restart window that are taken as self-restarts; beyond this they count
/// as failures. Ten config edits in a minute are well inside it; a command that exits 0 at once
/// reaches it in seconds and then backs off into the crash loop like any failure.
pub const SELF_RESTART_LIMIT: usize = 30;

/// The supervisor's memory.
#[derive(Debug, Clone)]
pub struct Supervision {
    limit: u32,
    window: Duration,
    failures: Vec<DateTime<Utc>>,
    self_restarts: Vec<DateTime<Utc>>,
    planned_stop: bool,
    started_at: Option<DateTime<Utc>>,
    restart_due: Option<DateTime<Utc>>,
    crash_loop: bool,
    finishing: bool,
}

impl Supervision {
    /// At most `limit` failures within `window` before giving up.
    pub fn new(limit: u32, window: Duration) -> Self {
        Supervision {
            limit: limit.max(1),
            window,
            failures: Vec::new(),
            self_restarts: Vec::new(),
            planned_stop: false,
            started_at: None,
            restart_due: None,
            crash_loop: false,
            finishing: false,
        }
    }

    pub fn state(&self) -> Supervised {
        if self.finishing {
            Supervised::Finishing
        } else if self.crash_loop {
            Supervised::CrashLoop
        } else if self.restart_due.is_some() {
            Supervised::BackingOff
        } else if self.planned_stop {
            Supervised::PlannedStop
        } else {
            Supervised::Watching
        }
    }

    /// spotkeeper is about to stop the container on purpose.
    pub fn stopping_on_purpose(&mut self) {
        self.planned_stop = true;
    }

    /// The container was started (or created and started) at `at`: deaths reported from before
    /// belong to an earlier life; a planned stop is over.
    pub fn started(&mut self, at: DateTime<Utc>) {
        self.planned_stop = false;
        self.restart_due = None;
        self.started_at = Some(at);
    }

    /// A planned stop did not happen (the stop call failed): deaths count again.
    pub fn stop_abandoned(&mut self) {
        self.planned_stop = false;
    }

    /// The machine is going away: nothing restarts from now on.
    pub fn finish(&mut self) {
        self.finishing = true;
        self.restart_due = None;
    }

    /// An operator acted (a manual restore): forget failures and the crash loop.
    pub fn reset(&mut self) {
        self.failures.clear();
        self.self_restarts.clear();
        self.crash_loop = false;
    }

    /// When a restart is due, if one is.
    pub fn restart_due(&self) -> Option<DateTime<Utc>> {
        self.restart_due
    }

    /// The due restart is being carried out.
    pub fn restart_taken(&mut self) {
        self.restart_due = None;
    }

    /// Failures within the window.
    pub fn recent_failures(&self) -> usize {
        self.failures.len()
    }

    pub fn observe(&mut self, observed: Observed, now: DateTime<Utc>) -> Decision {
        if self.finishing {
            return Decision::Ignore("the machine is going away; nothing restarts");
        }
        if self.crash_loop {
            return Decision::Ignore("crash loop: waiting for an operator");
        }
        match observed {
            Observed::Missing { .. } if self.planned_stop => Decision::Ignore("removed during a planned stop"),
            // Recreating removes the old container: its `destroy` arrives after the new one started.
            Observed::Missing { at } if self.started_at.is_some_and(|started| at < started) => {
                Decision::Ignore("removed before the last start")
            }
            Observed::Missing { .. } => {
                self.restart_due = None;
                Decision::Recreate
            }
            _ if self.planned_stop => Decision::Ignore("spotkeeper stopped it on purpose"),
            Observed::Died { at, .. } if self.started_at.is_some_and(|started| at < started) => {
                Decision::Ignore("a death from before the last start")
            }
            Observed::Unhealthy { at } if self.started_at.is_some_and(|started| at < started) => {
                Decision::Ignore("an unhealthy verdict from before the last start")
            }
            Observed::Died { .. } | Observed::FoundStopped | Observed::Unhealthy { .. }
                if self.restart_due.is_some() =>
            {
                Decision::Ignore("a restart is already scheduled")
            }
            Observed::Died { exit_code: Some(0), .. } => {
                let window = TimeDelta::from_std(self.window).unwrap_or(TimeDelta::MAX);
                self.self_restarts.retain(|t| now - *t < window);
                if self.self_restarts.len() >= SELF_RESTART_LIMIT {
                    return self.failed(now, false);
                }
                self.self_restarts.push(now);
                Decision::StartAgain
            }
            Observed::Unhealthy { .. } => self.failed(now, true),
            Observed::Died { .. } | Observed::FoundStopped | Observed::StartFailed => self.failed(now, false),
        }
    }

    fn failed(&mut self, now: DateTime<Utc>, stop_first: bool) -> Decision {
        let window = TimeDelta::from_std(self.window).unwrap_or(TimeDelta::MAX);
        self.failures.retain(|t| now - *t < window);
        self.failures.push(now);
        let count = u32::try_from(self.failures.len()).unwrap_or(u32::MAX);
        if count >= self.limit {
            self.crash_loop = true;
            self.restart_due = None;
            return Decision::GiveUp {
                failures: self.failures.len(),
            };
        }
        let after = MIN_BACKOFF.saturating_mul(1 << (count - 1).min(16)).min(MAX_BACKOFF);
        self.restart_due = Some(now + TimeDelta::from_std(after).unwrap_or(TimeDelta::MAX));
        Decision::Restart { after, stop_first }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("time")
    }

    /// A death at `at` with exit code `code`.
    fn died(at: i64, code: i64) -> Observed {
        Observed::Died {
            at: t(at),
            exit_code: Some(code),
        }
    }

    fn restart(secs: u64) -> Decision {
        Decision::Restart {
            after: Duration::from_secs(secs),
            stop_first: false,
        }
    }

    /// Each row: steps applied in order to a fresh supervisor (limit 4 in 10 minutes, started at
    /// t=0), and the decision of the last observation.
    #[test]
    fn decisions_table() {
        enum Step {
            See(Observed, i64),
            PlannedStop,
            Started(i64),
            Abandon,
            Finish,
            Reset,
            Taken,
        }
        use Observed::*;
        use Step::*;
        let rows: Vec<(&str, Vec<Step>, Decision)> = vec![
            ("a death is a failure", vec![See(died(5, 1), 5)], restart(1)),
            (
                "an oom during a planned stop is not",
                vec![PlannedStop, See(died(5, 1), 5)],
                Decision::Ignore("spotkeeper stopped it on purpose"),
            ),
            (
                "a planned stop's death reported after the restart is not",
                vec![PlannedStop, Started(10), See(died(9, 1), 11)],
                Decision::Ignore("a death from before the last start"),
            ),
            (
                "five planned stops in a row never make a crash loop",
                vec![
                    PlannedStop,
                    Started(10),
                    See(died(9, 1), 11),
                    PlannedStop,
                    Started(20),
                    See(died(19, 1), 21),
                    PlannedStop,
                    Started(30),
                    See(died(29, 1), 31),
                    PlannedStop,
                    Started(40),
                    See(died(39, 1), 41),
                    PlannedStop,
                    Started(50),
                    See(died(51, 1), 52),
                ],
                restart(1),
            ),
            (
                "a failed stop makes deaths count again",
                vec![PlannedStop, Abandon, See(died(5, 1), 5)],
                restart(1),
            ),
            (
                "a removed container is recreated, not counted",
                vec![See(Missing { at: t(5) }, 5)],
                Decision::Recreate,
            ),
            (
                "removed during a planned stop (recreation) is expected",
                vec![PlannedStop, See(Missing { at: t(5) }, 5)],
                Decision::Ignore("removed during a planned stop"),
            ),
            (
                "the old container's removal reported after the recreation started the new one",
                vec![PlannedStop, Started(10), See(Missing { at: t(9) }, 11)],
                Decision::Ignore("removed before the last start"),
            ),
            (
                "unhealthy: stop it, then restart",
                vec![See(Unhealthy { at: t(5) }, 5)],
                Decision::Restart {
                    after: Duration::from_secs(1),
                    stop_first: true,
                },
            ),
            (
                "one failure schedules one restart",
                vec![See(died(5, 1), 5), See(Unhealthy { at: t(6) }, 6)],
                Decision::Ignore("a restart is already scheduled"),
            ),
            (
                "backoff doubles",
                vec![
                    See(died(5, 1), 5),
                    Taken,
                    Started(7),
                    See(died(8, 1), 8),
                    Taken,
                    Started(11),
                    See(StartFailed, 12),
                ],
                restart(4),
            ),
            (
                "the fourth failure in the window is a crash loop",
                vec![
                    See(died(5, 1), 5),
                    Taken,
                    See(StartFailed, 7),
                    Taken,
                    See(StartFailed, 10),
                    Taken,
                    See(StartFailed, 15),
                ],
                Decision::GiveUp { failures: 4 },
            ),
            (
                "a crash loop ignores everything until reset",
                vec![
                    See(StartFailed, 1),
                    Taken,
                    See(StartFailed, 2),
                    Taken,
                    See(StartFailed, 3),
                    Taken,
                    See(StartFailed, 4),
                    See(Missing { at: t(5) }, 5),
                ],
                Decision::Ignore("crash loop: waiting for an operator"),
            ),
            (
                "a reset after a crash loop restarts again",
                vec![
                    See(StartFailed, 1),
                    Taken,
                    See(StartFailed, 2),
                    Taken,
                    See(StartFailed, 3),
                    Taken,
                    See(StartFailed, 4),
                    Reset,
                    Started(10),
                    See(died(11, 1), 11),
                ],
                restart(1),
            ),
            (
                "failures outside the window are forgotten",
                vec![
                    See(StartFailed, 1),
                    Taken,
                    See(StartFailed, 2),
                    Taken,
                    See(StartFailed, 3),
                    Taken,
                    See(FoundStopped, 3600),
                ],
                restart(1),
            ),
            (
                "an unhealthy verdict that waited in the queue past a restart is stale",
                vec![See(died(5, 0), 5), Started(6), See(Unhealthy { at: t(5) }, 7)],
                Decision::Ignore("an unhealthy verdict from before the last start"),
            ),
            (
                "a clean exit is a self-restart: started again at once, not counted",
                vec![See(died(5, 0), 5)],
                Decision::StartAgain,
            ),
            (
                "ten self-restarts in a minute, then a crash: the first failure",
                (0..10)
                    .flat_map(|i| [See(died(6 * i + 5, 0), 6 * i + 5), Started(6 * i + 6)])
                    .chain([See(died(65, 1), 65)])
                    .collect(),
                restart(1),
            ),
            (
                "a clean exit during a planned stop is the stop",
                vec![PlannedStop, See(died(5, 0), 5)],
                Decision::Ignore("spotkeeper stopped it on purpose"),
            ),
            (
                "an exit without a code is a failure",
                vec![See(
                    Died {
                        at: t(5),
                        exit_code: None,
                    },
                    5,
                )],
                restart(1),
            ),
            (
                "a command that exits 0 at once counts once past the self-restart limit",
                (0..SELF_RESTART_LIMIT as i64)
                    .flat_map(|i| [See(died(i + 1, 0), i + 1), Started(i + 1)])
                    .chain([See(died(40, 0), 40)])
                    .collect(),
                restart(1),
            ),
            (
                "self-restarts outside the window are forgotten",
                (0..SELF_RESTART_LIMIT as i64)
                    .flat_map(|i| [See(died(i + 1, 0), i + 1), Started(i + 1)])
                    .chain([See(died(700, 0), 700)])
                    .collect(),
                Decision::StartAgain,
            ),
            (
                "nothing restarts once the machine is going away",
                vec![Finish, See(died(5, 1), 5)],
                Decision::Ignore("the machine is going away; nothing restarts"),
            ),
        ];
        for (name, steps, expected) in rows {
            let mut s = Supervision::new(4, Duration::from_secs(600));
            s.started(t(0));
            let mut last = None;
            for step in steps {
                match step {
                    See(observed, at) => last = Some(s.observe(observed, t(at))),
                    PlannedStop => s.stopping_on_purpose(),
                    Started(at) => s.started(t(at)),
                    Abandon => s.stop_abandoned(),
                    Finish => s.finish(),
                    Reset => s.reset(),
                    Taken => s.restart_taken(),
                }
            }
            assert_eq!(last, Some(expected), "{name}");
        }
    }

    #[test]
    fn state_follows_the_decisions() {
        let mut s = Supervision::new(2, Duration::from_secs(600));
        assert_eq!(s.state(), Supervised::Watching);
        s.stopping_on_purpose();
        assert_eq!(s.state(), Supervised::PlannedStop);
        s.started(t(1));
        assert_eq!(s.observe(died(2, 1), t(2)), restart(1));
        assert_eq!(s.state(), Supervised::BackingOff);
        assert_eq!(s.restart_due(), Some(t(3)));
        s.restart_taken();
        assert_eq!(s.observe(Observed::StartFailed, t(4)), Decision::GiveUp { failures: 2 });
        assert_eq!(s.state(), Supervised::CrashLoop);
        s.finish();
        assert_eq!(s.state(), Supervised::Finishing);
    }
}
