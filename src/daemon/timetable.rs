//! What the main loop runs when, pure: every periodic job with its deadline and its retry. No
//! clock, no tokio: `now` is always an argument, so every rule is a row of a table test (as
//! `policy.rs` is for the container). The loop asks `due(now)`, runs that job, reports it with
//! `done(job, ok, now)`, and when nothing is due waits for an event at most `nap(now)`. What other
//! parts decide comes in as facts: the oldest unprotected change (`protection.rs`), the restart
//! the supervisor scheduled (`policy.rs`), a container stuck frozen, the machine going away.
//!
//! The rules an operator relies on:
//! - the snapshot ticks on the UTC-aligned schedule (`schedule::next_tick`: :00, :20, :40); a
//!   failed tick is retried at the next tick;
//! - with `[snapshot] follow`, a snapshot `follow` after the oldest unprotected change; after a
//!   failed one, not again before `follow` has passed (no hot loop of freezes while S3 is down);
//! - prune once at start, then daily at 00:07 UTC (clear of the :00 snapshot); the restore drill
//!   daily at `verify.at`; secrets `refresh` after the last refresh; gauges every minute; a failure
//!   of any of them waits for its next run;
//! - a container stuck frozen is thawed at once, then every `THAW_RETRY` until it thaws;
//! - a restart is due when the supervisor's backoff says;
//! - a deadline long past (a suspend, the clock stepped forward) runs its job once, and the next
//!   deadline counts from then: missed runs are never made up one by one;
//! - once the machine is going away, the scheduled snapshot, prune, secrets and the drill stop;
//!   gauges, thaws and follow snapshots of changes not yet protected go on;
//! - ties go by priority, the order of `Job`;
//! - the loop never waits longer than `max_nap` (the watchdog's heartbeat, and a suspend is
//!   noticed soon after wake), nor longer than `FOLLOW_POLL` while follow waits for a change.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::schedule;

/// Gauges are published this often, so an alarm fires when backups stop.
pub const GAUGES_EVERY: Duration = Duration::from_secs(60);
/// Prune runs daily at this offset after UTC midnight (clear of the :00 snapshot).
pub const PRUNE_OFFSET: Duration = Duration::from_secs(7 * 60);
/// How often a container stuck frozen is thawed again.
pub const THAW_RETRY: Duration = Duration::from_secs(5);
/// While follow snapshots are on and nothing is unprotected, the loop looks at the trackers this
/// often (an atomic read), so that a change is seen within it; the debounce counts from the
/// change itself, which the tracker timestamps.
pub const FOLLOW_POLL: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);

/// A periodic job of the main loop, in priority order (the first wins a tie).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Job {
    /// Publish the gauges: cheap, and what an alarm reads.
    Gauges,
    /// Thaw a container left frozen: nothing else matters while the app is stopped by us.
    Thaw,
    /// The snapshot of the UTC-aligned schedule.
    Snapshot,
    /// A snapshot following changes (`[snapshot] follow`).
    Follow,
    /// Prune with the retention policy.
    Prune,
    /// Read the secrets again (recreating the container when they changed).
    Secrets,
    /// The restore drill.
    Verify,
    /// Start the container again after the supervisor's backoff.
    Restart,
}

impl Job {
    /// Every job, in priority order.
    pub const ALL: [Job; 8] = [
        Job::Gauges,
        Job::Thaw,
        Job::Snapshot,
        Job::Follow,
        Job::Prune,
        Job::Secrets,
        Job::Verify,
        Job::Restart,
    ];
}

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// `[snapshot] interval`, aligned to UTC.
    pub snapshot_every: Duration,
    /// `[snapshot] follow` when it can work (`None`: off).
    pub follow: Option<Duration>,
    /// `[secrets] refresh` (`None`: no secrets to refresh).
    pub secrets_every: Option<Duration>,
    /// `verify.at` as an offset after UTC midnight (`None`: no daily drill).
    pub verify_at: Option<Duration>,
    /// The longest the loop waits for an event before it looks at the clock again.
    pub max_nap: Duration,
}

/// The deadlines of every job, and the facts they depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timetable {
    plan: Plan,
    gauges: DateTime<Utc>,
    /// `None` below: the job is off (not configured, or the machine is going away).
    snapshot: Option<DateTime<Utc>>,
    prune: Option<DateTime<Utc>>,
    secrets: Option<DateTime<Utc>>,
    verify: Option<DateTime<Utc>>,
    thaw: Option<DateTime<Utc>>,
    restart: Option<DateTime<Utc>>,
    unprotected_since: Option<DateTime<Utc>>,
    follow_failed_at: Option<DateTime<Utc>>,
    finishing: bool,
}

impl Timetable {
    /// The timetable of a loop starting at `now`: gauges and prune at once, the rest at their
    /// first time after `now`.
    pub fn new(plan: Plan, now: DateTime<Utc>) -> Self {
        Timetable {
            plan,
            gauges: now,
            snapshot: Some(schedule::next_tick(now, plan.snapshot_every)),
            prune: Some(now),
            secrets: plan.secrets_every.map(|every| now + delta(every)),
            verify: plan.verify_at.map(|at| next_daily(now, at)),
            thaw: None,
            restart: None,
            unprotected_since: None,
            follow_failed_at: None,
            finishing: false,
        }
    }

    /// The oldest change not in the head (`Protection::unprotected_since`).
    pub fn unprotected_since(&mut self, since: Option<DateTime<Utc>>) {
        self.unprotected_since = since;
    }

    /// The restart the supervisor scheduled (`Supervision::restart_due`).
    pub fn restart_due(&mut self, at: Option<DateTime<Utc>>) {
        self.restart = at;
    }

    /// Whether the container is stuck frozen, seen at `now`: a thaw is due at once, unless a
    /// retry is already scheduled.
    pub fn stuck_frozen(&mut self, stuck: bool, now: DateTime<Utc>) {
        self.thaw = match (stuck, self.thaw) {
            (false, _) => None,
            (true, None) => Some(now),
            (true, retry) => retry,
        };
    }

    /// The machine is going away (SIGTERM, a Spot notice): no more scheduled work.
    pub fn finish(&mut self) {
        self.finishing = true;
        self.snapshot = None;
        self.prune = None;
        self.secrets = None;
        self.verify = None;
    }

    /// The next scheduled snapshot, for `status`.
    pub fn next_snapshot(&self) -> Option<DateTime<Utc>> {
        self.snapshot
    }

    /// When `job` is due next; `None`: not scheduled.
    pub fn deadline(&self, job: Job) -> Option<DateTime<Utc>> {
        match job {
            Job::Gauges => Some(self.gauges),
            Job::Thaw => self.thaw,
            Job::Snapshot => self.snapshot,
            Job::Follow => {
                let step = delta(self.plan.follow?);
                let due = self.unprotected_since? + step;
                Some(self.follow_failed_at.map_or(due, |failed| due.max(failed + step)))
            }
            Job::Prune => self.prune,
            Job::Secrets => self.secrets,
            Job::Verify => self.verify,
            Job::Restart => self.restart,
        }
    }

    /// Every job due at `now`, in priority order.
    pub fn due_all(&self, now: DateTime<Utc>) -> Vec<Job> {
        Job::ALL
            .into_iter()
            .filter(|job| self.deadline(*job).is_some_and(|due| schedule::is_due(now, due)))
            .collect()
    }

    /// The job to run now, if any.
    pub fn due(&self, now: DateTime<Utc>) -> Option<Job> {
        self.due_all(now).first().copied()
    }

    /// `job` finished at `now` (`ok`: it succeeded): its next deadline, counted from `now`.
    pub fn done(&mut self, job: Job, ok: bool, now: DateTime<Utc>) {
        let running = !self.finishing;
        match job {
            Job::Gauges => self.gauges = now + delta(GAUGES_EVERY),
            Job::Thaw => self.thaw = (!ok).then(|| now + delta(THAW_RETRY)),
            Job::Snapshot => self.snapshot = running.then(|| schedule::next_tick(now, self.plan.snapshot_every)),
            Job::Follow => self.follow_failed_at = (!ok).then_some(now),
            Job::Prune => self.prune = running.then(|| schedule::next_tick(now, DAY) + delta(PRUNE_OFFSET)),
            Job::Secrets => {
                self.secrets = self
                    .plan
                    .secrets_every
                    .filter(|_| running)
                    .map(|every| now + delta(every))
            }
            Job::Verify => self.verify = self.plan.verify_at.filter(|_| running).map(|at| next_daily(now, at)),
            // The supervisor schedules the next one, if any (`restart_due`).
            Job::Restart => self.restart = None,
        }
    }

    /// How long the loop may wait for an event at `now`: until the nearest deadline, at most
    /// `max_nap`; at most `FOLLOW_POLL` while follow waits for a change; zero when a job is due.
    pub fn nap(&self, now: DateTime<Utc>) -> Duration {
        let mut nap = self.plan.max_nap;
        for due in Job::ALL.into_iter().filter_map(|job| self.deadline(job)) {
            nap = nap.min(schedule::nap(now, due, self.plan.max_nap));
        }
        if self.plan.follow.is_some() && self.unprotected_since.is_none() {
            nap = nap.min(FOLLOW_POLL);
        }
        nap
    }
}

fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or_default()
}

/// The next time of day `offset` after UTC midnight that is after `now`.
fn next_daily(now: DateTime<Utc>, offset: Duration) -> DateTime<Utc> {
    let midnight = schedule::next_tick(now, DAY) - TimeDelta::days(1);
    let today = midnight + delta(offset);
    if today > now { today } else { today + TimeDelta::days(1) }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;

    use super::*;
    use Job::*;

    /// Day `d` of the test (0: Monday 2026-11-23), at h:m:s UTC.
    fn at(d: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23 + d, h, m, s).single().expect("valid")
    }

    /// The loop starts at 10:00:05 on day 0.
    fn start() -> DateTime<Utc> {
        at(0, 10, 0, 5)
    }

    /// Snapshots every 20 min, follow 60 s, secrets every hour, the drill at 04:10, naps of 30 s.
    fn plan() -> Plan {
        Plan {
            snapshot_every: Duration::from_secs(20 * 60),
            follow: Some(Duration::from_secs(60)),
            secrets_every: Some(Duration::from_secs(3600)),
            verify_at: Some(Duration::from_secs(4 * 3600 + 10 * 60)),
            max_nap: Duration::from_secs(30),
        }
    }

    fn quiet_plan() -> Plan {
        Plan {
            follow: None,
            secrets_every: None,
            verify_at: None,
            ..plan()
        }
    }

    enum Step {
        /// The loop ran everything due at this time, each successfully (and the world moved as
        /// the daemon's would: a snapshot protects, a thaw thaws, a restart is taken).
        Ran(DateTime<Utc>),
        Done(Job, bool, DateTime<Utc>),
        Unprotected(Option<DateTime<Utc>>),
        Stuck(bool, DateTime<Utc>),
        RestartAt(Option<DateTime<Utc>>),
        Finish,
    }
    use Step::*;

    /// A row of a table: its name, the plan, the steps, when to look, and what is expected then.
    type Row<T> = (&'static str, Plan, Vec<Step>, DateTime<Utc>, T);

    /// Runs what is due at `now` until nothing is, as the main loop does; returns how often each
    /// job ran. Bounded: more passes than jobs is a bug.
    fn run_due(table: &mut Timetable, now: DateTime<Utc>) -> BTreeMap<Job, usize> {
        let mut ran = BTreeMap::new();
        for _ in 0..=Job::ALL.len() * 2 {
            let Some(job) = table.due(now) else {
                return ran;
            };
            *ran.entry(job).or_default() += 1;
            table.done(job, true, now);
            match job {
                Snapshot | Follow => table.unprotected_since(None),
                Thaw => table.stuck_frozen(false, now),
                Restart => table.restart_due(None),
                Gauges | Prune | Secrets | Verify => {}
            }
        }
        panic!("the loop did not settle at {now}: {ran:?}");
    }

    fn apply(plan: Plan, steps: Vec<Step>) -> Timetable {
        let mut table = Timetable::new(plan, start());
        for step in steps {
            match step {
                Ran(now) => {
                    run_due(&mut table, now);
                }
                Done(job, ok, now) => table.done(job, ok, now),
                Unprotected(since) => table.unprotected_since(since),
                Stuck(stuck, now) => table.stuck_frozen(stuck, now),
                RestartAt(due) => table.restart_due(due),
                Finish => table.finish(),
            }
        }
        table
    }

    /// Each row: steps applied to a fresh timetable started at `start()`, then every job due at
    /// the given time, in priority order.
    #[test]
    fn due_table() {
        let rows: Vec<Row<Vec<Job>>> = vec![
            // Start and ties.
            (
                "at start: the gauges, then the prune (a tie goes by priority)",
                plan(),
                vec![],
                start(),
                vec![Gauges, Prune],
            ),
            (
                "after the start's run nothing is due within the minute",
                plan(),
                vec![Ran(start())],
                at(0, 10, 1, 4),
                vec![],
            ),
            (
                "gauges every minute",
                plan(),
                vec![Ran(start())],
                at(0, 10, 1, 5),
                vec![Gauges],
            ),
            (
                "every job due at once runs in priority order",
                plan(),
                vec![
                    Unprotected(Some(start())),
                    Stuck(true, start()),
                    RestartAt(Some(start())),
                ],
                at(1, 4, 10, 0),
                vec![Gauges, Thaw, Snapshot, Follow, Prune, Secrets, Verify, Restart],
            ),
            // The snapshot.
            (
                "no snapshot before the first aligned tick",
                plan(),
                vec![Ran(at(0, 10, 19, 0))],
                at(0, 10, 19, 59),
                vec![],
            ),
            (
                "the snapshot ticks at :20 UTC, not 20 minutes after the start",
                plan(),
                vec![Ran(at(0, 10, 19, 59))],
                at(0, 10, 20, 0),
                vec![Snapshot],
            ),
            (
                "after a tick the next is the next aligned one",
                plan(),
                vec![Ran(at(0, 10, 20, 0)), Ran(at(0, 10, 39, 59))],
                at(0, 10, 40, 0),
                vec![Snapshot],
            ),
            (
                "a failed tick is not retried before the next tick",
                plan(),
                vec![
                    Ran(at(0, 10, 19, 59)),
                    Done(Snapshot, false, at(0, 10, 20, 9)),
                    Ran(at(0, 10, 39, 0)),
                ],
                at(0, 10, 39, 59),
                vec![],
            ),
            (
                "a failed tick is retried at the next tick",
                plan(),
                vec![
                    Ran(at(0, 10, 19, 59)),
                    Done(Snapshot, false, at(0, 10, 20, 9)),
                    Ran(at(0, 10, 39, 59)),
                ],
                at(0, 10, 40, 0),
                vec![Snapshot],
            ),
            (
                "a snapshot that outlasted a tick runs again at the following one, not at once",
                plan(),
                vec![Ran(at(0, 10, 19, 59)), Done(Snapshot, true, at(0, 10, 41, 0))],
                at(0, 10, 41, 0),
                vec![Gauges],
            ),
            // Follow.
            (
                "follow: not before `follow` after the change",
                plan(),
                vec![Ran(start()), Unprotected(Some(at(0, 10, 0, 30)))],
                at(0, 10, 1, 29),
                vec![Gauges],
            ),
            (
                "follow: `follow` after the oldest unprotected change",
                plan(),
                vec![Ran(at(0, 10, 1, 10)), Unprotected(Some(at(0, 10, 0, 30)))],
                at(0, 10, 1, 30),
                vec![Follow],
            ),
            (
                "follow: after a failure, not again before `follow` has passed",
                plan(),
                vec![
                    Ran(at(0, 10, 1, 10)),
                    Unprotected(Some(at(0, 10, 0, 30))),
                    Done(Follow, false, at(0, 10, 1, 40)),
                ],
                at(0, 10, 2, 39),
                vec![Gauges],
            ),
            (
                "follow: after a failure, retried `follow` after it",
                plan(),
                vec![
                    Ran(at(0, 10, 2, 10)),
                    Unprotected(Some(at(0, 10, 0, 30))),
                    Done(Follow, false, at(0, 10, 1, 40)),
                ],
                at(0, 10, 2, 40),
                vec![Follow],
            ),
            (
                "follow: a success forgets the failure",
                plan(),
                vec![
                    Ran(at(0, 10, 4, 10)),
                    Done(Follow, false, at(0, 10, 4, 0)),
                    Done(Follow, true, at(0, 10, 4, 5)),
                    Unprotected(Some(at(0, 10, 3, 30))),
                ],
                at(0, 10, 4, 30),
                vec![Follow],
            ),
            (
                "follow: nothing unprotected, nothing due",
                plan(),
                vec![Ran(at(0, 10, 19, 0)), Unprotected(None)],
                at(0, 10, 19, 30),
                vec![],
            ),
            (
                "follow off: an unprotected change waits for the schedule",
                quiet_plan(),
                vec![Ran(at(0, 10, 19, 0)), Unprotected(Some(at(0, 10, 0, 30)))],
                at(0, 10, 19, 30),
                vec![],
            ),
            // Prune.
            (
                "prune: daily at 00:07 UTC after the one at start",
                plan(),
                vec![Ran(start()), Ran(at(1, 0, 6, 59))],
                at(1, 0, 7, 0),
                vec![Prune],
            ),
            (
                "prune: not twice a day",
                plan(),
                vec![Ran(at(1, 0, 7, 0))],
                at(1, 23, 59, 59),
                vec![Gauges, Snapshot, Secrets, Verify],
            ),
            (
                "prune: a failure waits for the next daily run",
                plan(),
                vec![
                    Ran(at(1, 0, 6, 0)),
                    Done(Prune, false, at(1, 0, 7, 30)),
                    Ran(at(2, 0, 6, 59)),
                ],
                at(2, 0, 7, 0),
                vec![Prune],
            ),
            // Secrets.
            (
                "secrets: `refresh` after the start",
                plan(),
                vec![Ran(at(0, 11, 0, 4))],
                at(0, 11, 0, 5),
                vec![Secrets],
            ),
            (
                "secrets: `refresh` after the last refresh, failed or not",
                plan(),
                vec![
                    Ran(start()),
                    Done(Secrets, false, at(0, 11, 30, 0)),
                    Ran(at(0, 12, 29, 59)),
                ],
                at(0, 12, 30, 0),
                vec![Secrets],
            ),
            (
                "secrets: none configured, never due",
                quiet_plan(),
                vec![Ran(at(0, 11, 0, 0))],
                at(3, 11, 0, 30),
                vec![Gauges, Snapshot, Prune],
            ),
            // The drill.
            (
                "verify: daily at verify.at",
                plan(),
                vec![Ran(start()), Ran(at(1, 4, 9, 59))],
                at(1, 4, 10, 0),
                vec![Verify],
            ),
            (
                "verify: a failed drill waits for the next day",
                plan(),
                vec![
                    Ran(at(1, 4, 9, 59)),
                    Done(Verify, false, at(1, 4, 12, 0)),
                    Ran(at(2, 4, 9, 59)),
                ],
                at(2, 4, 10, 0),
                vec![Verify],
            ),
            (
                "verify: off, never due",
                quiet_plan(),
                vec![Ran(at(1, 4, 9, 59))],
                at(1, 4, 10, 0),
                vec![],
            ),
            // Thaw.
            (
                "thaw: at once when stuck",
                plan(),
                vec![Ran(start()), Stuck(true, at(0, 10, 0, 20))],
                at(0, 10, 0, 20),
                vec![Thaw],
            ),
            (
                "thaw: a failed thaw is retried after THAW_RETRY, not before",
                plan(),
                vec![
                    Ran(start()),
                    Stuck(true, at(0, 10, 0, 20)),
                    Done(Thaw, false, at(0, 10, 0, 22)),
                    Stuck(true, at(0, 10, 0, 23)),
                ],
                at(0, 10, 0, 26),
                vec![],
            ),
            (
                "thaw: retried THAW_RETRY after the failed one",
                plan(),
                vec![
                    Ran(start()),
                    Stuck(true, at(0, 10, 0, 20)),
                    Done(Thaw, false, at(0, 10, 0, 22)),
                    Stuck(true, at(0, 10, 0, 23)),
                ],
                at(0, 10, 0, 27),
                vec![Thaw],
            ),
            (
                "thaw: thawed elsewhere (a later snapshot), no retry",
                plan(),
                vec![
                    Ran(start()),
                    Stuck(true, at(0, 10, 0, 20)),
                    Done(Thaw, false, at(0, 10, 0, 22)),
                    Stuck(false, at(0, 10, 0, 24)),
                ],
                at(0, 10, 0, 30),
                vec![],
            ),
            // Restart.
            (
                "restart: not before the backoff",
                plan(),
                vec![Ran(start()), RestartAt(Some(at(0, 10, 0, 9)))],
                at(0, 10, 0, 8),
                vec![],
            ),
            (
                "restart: when the backoff says",
                plan(),
                vec![Ran(start()), RestartAt(Some(at(0, 10, 0, 9)))],
                at(0, 10, 0, 9),
                vec![Restart],
            ),
            (
                "restart: taken, not again until the supervisor says",
                plan(),
                vec![
                    Ran(start()),
                    RestartAt(Some(at(0, 10, 0, 9))),
                    Done(Restart, true, at(0, 10, 0, 9)),
                ],
                at(0, 10, 0, 30),
                vec![],
            ),
            // Finishing.
            (
                "finishing: no scheduled snapshot, prune, secrets or drill",
                plan(),
                vec![Ran(start()), Finish],
                at(2, 4, 10, 0),
                vec![Gauges],
            ),
            (
                "finishing: a job that was running does not schedule itself again",
                plan(),
                vec![
                    Ran(at(0, 10, 19, 59)),
                    Finish,
                    Done(Snapshot, true, at(0, 10, 20, 5)),
                    Done(Prune, true, at(0, 10, 20, 5)),
                ],
                at(2, 4, 10, 0),
                vec![Gauges],
            ),
            (
                "finishing: changes not yet protected are still followed, a freeze still thawed",
                plan(),
                vec![
                    Ran(start()),
                    Finish,
                    Unprotected(Some(at(0, 10, 0, 10))),
                    Stuck(true, at(0, 10, 0, 10)),
                ],
                at(0, 10, 1, 10),
                vec![Gauges, Thaw, Follow],
            ),
            // Clock jumps.
            (
                "a suspend past every deadline: each job once, in priority order",
                plan(),
                vec![Ran(start()), Unprotected(Some(at(0, 10, 0, 30)))],
                at(3, 5, 0, 0),
                vec![Gauges, Snapshot, Follow, Prune, Secrets, Verify],
            ),
            (
                "after the catch-up run, the next deadlines count from the wake",
                plan(),
                vec![Ran(start()), Ran(at(3, 5, 0, 0))],
                at(3, 5, 19, 59),
                vec![Gauges],
            ),
        ];
        for (name, plan, steps, now, expected) in rows {
            let table = apply(plan, steps);
            assert_eq!(table.due_all(now), expected, "{name}");
            assert_eq!(table.due(now), expected.first().copied(), "{name}");
        }
    }

    /// Generated: from several starts, the clock jumps forward by anything from a second to a
    /// month with every fact set; the loop then runs each job at most once (never once per
    /// missed deadline), settles, and has nothing due until time moves.
    #[test]
    fn a_clock_jump_runs_each_job_once() {
        let starts = [
            start(),
            at(0, 23, 59, 59),
            at(1, 0, 7, 0),
            at(1, 4, 9, 59),
            at(2, 0, 0, 0),
        ];
        let jumps_s = [
            1,
            59,
            60,
            61,
            1199,
            1200,
            3599,
            3600,
            86_399,
            86_400,
            3 * 86_400 + 17,
            30 * 86_400,
        ];
        for begin in starts {
            for jump in jumps_s {
                let mut table = Timetable::new(plan(), begin);
                run_due(&mut table, begin);
                table.unprotected_since(Some(begin));
                table.restart_due(Some(begin + TimeDelta::seconds(1)));
                table.stuck_frozen(true, begin);
                let woke = begin + TimeDelta::seconds(jump);
                let expected = table.due_all(woke);
                let ran = run_due(&mut table, woke);
                let case = format!("start {begin}, jump {jump} s: {ran:?}");
                assert!(ran.values().all(|n| *n == 1), "{case}");
                // Everything due ran, except a follow snapshot the scheduled one made needless
                // (it protected the change), and nothing else.
                let absorbed = |job: &Job| *job == Follow && ran.contains_key(&Snapshot);
                let wanted: Vec<Job> = expected.iter().copied().filter(|job| !absorbed(job)).collect();
                assert_eq!(ran.keys().copied().collect::<Vec<_>>(), wanted, "{case}");
                assert!(ran.contains_key(&Thaw) && ran.contains_key(&Restart), "{case}");
                assert_eq!(table.due(woke), None, "{case}");
                for job in Job::ALL {
                    let Some(due) = table.deadline(job) else {
                        continue;
                    };
                    assert!(due > woke, "{job:?} next at {due}, not after the wake; {case}");
                    let period = match job {
                        Gauges => GAUGES_EVERY,
                        Snapshot => plan().snapshot_every,
                        Secrets => Duration::from_secs(3600),
                        Prune | Verify => DAY + PRUNE_OFFSET,
                        Follow => Duration::from_secs(60),
                        Thaw | Restart => Duration::ZERO,
                    };
                    assert!(
                        due - woke <= delta(period),
                        "{job:?} next at {due}: more than a period away; {case}"
                    );
                }
            }
        }
    }

    /// Each row: steps, then how long the loop may wait at the given time.
    #[test]
    fn nap_table() {
        let s = Duration::from_secs;
        let rows: Vec<Row<Duration>> = vec![
            ("something due: no wait", plan(), vec![], start(), s(0)),
            ("capped at max_nap", quiet_plan(), vec![Ran(start())], start(), s(30)),
            (
                "until the nearest deadline (the gauges)",
                quiet_plan(),
                vec![Ran(start())],
                at(0, 10, 0, 55),
                s(10),
            ),
            (
                "until the snapshot tick",
                quiet_plan(),
                vec![Ran(at(0, 10, 19, 50))],
                at(0, 10, 19, 50),
                s(10),
            ),
            (
                "follow on, nothing unprotected: look at the trackers every second",
                plan(),
                vec![Ran(start())],
                start(),
                s(1),
            ),
            (
                "follow on, a change: until `follow` after it",
                plan(),
                vec![Ran(start()), Unprotected(Some(at(0, 10, 0, 0)))],
                at(0, 10, 0, 52),
                s(8),
            ),
            (
                "stuck frozen after a failed thaw: until the retry",
                quiet_plan(),
                vec![Ran(start()), Stuck(true, start()), Done(Thaw, false, start())],
                start(),
                s(5),
            ),
            (
                "a restart in 3 s",
                quiet_plan(),
                vec![Ran(start()), RestartAt(Some(at(0, 10, 0, 8)))],
                start(),
                s(3),
            ),
            (
                "a deadline long past: no wait",
                quiet_plan(),
                vec![Ran(start())],
                at(5, 0, 0, 0),
                s(0),
            ),
            (
                "finishing: the gauges still bound the wait",
                quiet_plan(),
                vec![Ran(start()), Finish],
                at(0, 10, 0, 45),
                s(20),
            ),
        ];
        for (name, plan, steps, now, expected) in rows {
            assert_eq!(apply(plan, steps).nap(now), expected, "{name}");
        }
    }

    #[test]
    fn next_daily_is_strictly_after_now() {
        let offset = Duration::from_secs(4 * 3600 + 10 * 60);
        assert_eq!(next_daily(at(0, 4, 9, 59), offset), at(0, 4, 10, 0));
        assert_eq!(next_daily(at(0, 4, 10, 0), offset), at(1, 4, 10, 0));
        assert_eq!(next_daily(at(0, 23, 0, 0), offset), at(1, 4, 10, 0));
        assert_eq!(next_daily(at(0, 0, 0, 0), Duration::ZERO), at(1, 0, 0, 0));
    }
}
