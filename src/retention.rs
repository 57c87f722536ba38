//! Which snapshots to keep: every snapshot of the last day, the earliest of each day for a
//! week, the earliest of each week for a month, nothing older.
//!
//! Pure: the caller lists the snapshots and passes `now`; this module reads no clock, no
//! disk and no network, so every rule can be tested with made-up ids.
//!
//! Ages of complete snapshots are measured from the newest complete snapshot (the
//! "reference"), not from the clock: a machine that was off for weeks must not erase its
//! history the moment it boots. Only the grace for incomplete snapshots uses `now`, since
//! the question there is whether an upload may still be running.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Datelike, Days, NaiveDate, TimeDelta, Utc, Weekday};
use serde::Serialize;

use crate::duration;
use crate::snapshot_id::SnapshotId;

/// How far ahead of `now` an id may be before it counts as future-dated: clocks drift, and a
/// snapshot started a minute "in the future" by another host's clock is not suspicious.
const FUTURE_TOLERANCE_MINUTES: i64 = 5;

const NEWEST_REASON: &str = "newest complete snapshot";
const FUTURE_REASON: &str = "future-dated: id is after now, kept (check the clock)";

/// How long snapshots are kept, tier by tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Every complete snapshot younger than this is kept.
    pub keep_all_within: Duration,
    /// Up to this age, the earliest complete snapshot of each UTC day is kept.
    pub daily_within: Duration,
    /// Up to this age, the earliest complete snapshot of each week is kept.
    pub weekly_within: Duration,
    /// The day weeks start on, at 00:00 UTC.
    pub week_starts: Weekday,
    /// An incomplete snapshot younger than this (by the clock) may still be uploading.
    pub incomplete_grace: Duration,
    /// A snapshot taken to follow changes (`[snapshot] follow`) older than this (before the
    /// newest) is deleted unless it holds the state at a tick of `interval` (no snapshot was
    /// taken between it and that tick) or a tier keeps it as its day's or week's earliest.
    pub follow_keep: Duration,
    /// The schedule's interval (`[snapshot] interval`): its ticks are the history.
    pub interval: Duration,
}

impl Default for RetentionPolicy {
    /// 24h, 7d, 30d, weeks from Friday, 6h grace.
    fn default() -> Self {
        const HOUR: u64 = 3_600;
        const DAY: u64 = 24 * HOUR;
        RetentionPolicy {
            keep_all_within: Duration::from_secs(DAY),
            daily_within: Duration::from_secs(7 * DAY),
            weekly_within: Duration::from_secs(30 * DAY),
            week_starts: Weekday::Fri,
            incomplete_grace: Duration::from_secs(6 * HOUR),
            follow_keep: Duration::from_secs(2 * HOUR),
            interval: Duration::from_secs(20 * 60),
        }
    }
}

/// A policy whose tiers do not strictly increase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `daily_within` is not longer than `keep_all_within`.
    #[error(
        "retention.daily_within ({}) must be longer than retention.keep_all_within ({})",
        duration::format(*.daily_within),
        duration::format(*.keep_all_within)
    )]
    DailyNotLonger {
        daily_within: Duration,
        keep_all_within: Duration,
    },
    /// `weekly_within` is not longer than `daily_within`.
    #[error(
        "retention.weekly_within ({}) must be longer than retention.daily_within ({})",
        duration::format(*.weekly_within),
        duration::format(*.daily_within)
    )]
    WeeklyNotLonger {
        weekly_within: Duration,
        daily_within: Duration,
    },
}

impl RetentionPolicy {
    /// Checks that `keep_all_within < daily_within < weekly_within`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        // A tier that is not longer than the one before it would be empty, which is
        // almost certainly a typo in the config rather than an intent.
        if self.daily_within <= self.keep_all_within {
            return Err(PolicyError::DailyNotLonger {
                daily_within: self.daily_within,
                keep_all_within: self.keep_all_within,
            });
        }
        if self.weekly_within <= self.daily_within {
            return Err(PolicyError::WeeklyNotLonger {
                weekly_within: self.weekly_within,
                daily_within: self.daily_within,
            });
        }
        Ok(())
    }
}

/// One stored snapshot as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// The snapshot's id; its time is the snapshot's time.
    pub id: SnapshotId,
    /// Whether the snapshot has its manifest, i.e. finished uploading.
    pub complete: bool,
    /// Taken to follow changes rather than on the schedule (`RetentionPolicy::follow_keep`).
    pub follow: bool,
}

/// What to do with one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Leave the snapshot in place.
    Keep,
    /// Remove the snapshot.
    Delete,
}

/// The planner's verdict on one snapshot, with the reason shown to the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The snapshot decided on.
    pub id: SnapshotId,
    /// Whether the snapshot was complete.
    pub complete: bool,
    /// Keep or delete.
    pub action: Action,
    /// Why, in words that stay the same from run to run.
    pub reason: String,
}

/// Decides every snapshot's fate; one decision per input, newest first.
pub fn plan(snapshots: &[SnapshotSummary], policy: &RetentionPolicy, now: DateTime<Utc>) -> Vec<Decision> {
    let mut sorted = snapshots.to_vec();
    sorted.sort_by(newest_first);
    let verdicts = judge(&sorted, policy, now);
    sorted
        .into_iter()
        .zip(verdicts)
        .map(|(snapshot, (action, reason))| Decision {
            id: snapshot.id,
            complete: snapshot.complete,
            action,
            reason,
        })
        .collect()
}

/// Newest first (descending id order): the order an operator reads a listing in.
fn newest_first(a: &SnapshotSummary, b: &SnapshotSummary) -> Ordering {
    b.id.cmp(&a.id)
}

/// Where one snapshot falls, before the per-day and per-week earliest are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class<'a> {
    /// Its id is after `now` (beyond the tolerance).
    Future,
    /// It has no manifest; only the grace rule applies.
    Incomplete,
    /// The reference itself.
    Newest,
    /// Younger than `keep_all_within`; carries the reference for the reason.
    Recent(&'a SnapshotId),
    /// In the daily tier, on this UTC day.
    Daily(NaiveDate),
    /// In the weekly tier, in the week starting on this day.
    Weekly(NaiveDate),
    /// Older than `weekly_within`; carries the reference for the reason.
    Expired(&'a SnapshotId),
}

/// The action and reason for each of `sorted`, in the same order.
fn judge(sorted: &[SnapshotSummary], policy: &RetentionPolicy, now: DateTime<Utc>) -> Vec<(Action, String)> {
    let reference = reference(sorted, now);
    let classes: Vec<Class<'_>> = sorted
        .iter()
        .map(|snapshot| classify(snapshot, reference, policy, now))
        .collect();
    // Grouping only sees each tier's own members, so a week split across the daily/weekly
    // boundary keeps an earliest on each side, and a day or week whose usual first
    // snapshot is missing still keeps whichever one it has.
    let days = earliest_per_group(sorted, &classes, |class| match class {
        Class::Daily(day) => Some(day),
        _ => None,
    });
    let weeks = earliest_per_group(sorted, &classes, |class| match class {
        Class::Weekly(week) => Some(week),
        _ => None,
    });
    sorted
        .iter()
        .enumerate()
        .zip(&classes)
        .map(|((at, snapshot), class)| match *class {
            Class::Future => (Action::Keep, FUTURE_REASON.to_string()),
            Class::Recent(reference)
                if snapshot.follow
                    && age(snapshot, reference) >= policy.follow_keep
                    && let Some(tick) = holds_tick(sorted, at, policy.interval) =>
            {
                (
                    Action::Keep,
                    format!("follow: holds the state at the {} tick", tick.format("%Y-%m-%d %H:%M")),
                )
            }
            Class::Incomplete => incomplete_verdict(snapshot, policy, now),
            Class::Newest => (Action::Keep, NEWEST_REASON.to_string()),
            Class::Recent(reference) if snapshot.follow && age(snapshot, reference) >= policy.follow_keep => (
                Action::Delete,
                format!(
                    "follow: taken to follow changes, older than {} before newest {reference}",
                    duration::format(policy.follow_keep)
                ),
            ),
            Class::Recent(reference) => (
                Action::Keep,
                format!(
                    "recent: within {} of newest {reference}",
                    duration::format(policy.keep_all_within)
                ),
            ),
            Class::Daily(day) => daily_verdict(&snapshot.id, day, &days),
            Class::Weekly(week) => weekly_verdict(&snapshot.id, week, &weeks),
            Class::Expired(reference) => (
                Action::Delete,
                format!(
                    "expired: older than {} before newest {reference}",
                    duration::format(policy.weekly_within)
                ),
            ),
        })
        .collect()
}

/// The schedule's tick whose state `sorted[at]` holds: the first tick after it, when no
/// complete snapshot newer than it was taken by then (newest first, so those sit before `at`).
fn holds_tick(sorted: &[SnapshotSummary], at: usize, interval: Duration) -> Option<DateTime<Utc>> {
    let tick = crate::schedule::next_tick(sorted[at].id.time(), interval);
    let newer = sorted[..at].iter().rev().find(|s| s.complete && s.id > sorted[at].id);
    match newer {
        Some(newer) if newer.id.time() <= tick => None,
        _ => Some(tick),
    }
}

/// How much older than `reference` a snapshot is (never negative).
fn age(snapshot: &SnapshotSummary, reference: &SnapshotId) -> Duration {
    reference
        .time()
        .signed_duration_since(snapshot.id.time())
        .to_std()
        .unwrap_or_default()
}

/// The newest complete snapshot that is not future-dated; if every complete one is
/// future-dated, the newest of those; `None` without complete snapshots.
fn reference(sorted: &[SnapshotSummary], now: DateTime<Utc>) -> Option<&SnapshotId> {
    let complete = || sorted.iter().filter(|s| s.complete).map(|s| &s.id);
    // A wrong clock on one host must not make every real snapshot look ancient.
    complete()
        .filter(|id| !is_future(id, now))
        .max()
        .or_else(|| complete().max())
}

/// Places one snapshot in its tier, or in one of the special cases.
fn classify<'a>(
    snapshot: &'a SnapshotSummary,
    reference: Option<&'a SnapshotId>,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Class<'a> {
    if is_future(&snapshot.id, now) {
        return Class::Future;
    }
    if !snapshot.complete {
        return Class::Incomplete;
    }
    let reference = reference.expect("a complete snapshot that is not future-dated makes a reference exist");
    if snapshot.id == *reference {
        return Class::Newest;
    }
    // Never negative: the reference is the newest complete snapshot that is not
    // future-dated, and this one is such a snapshot. Zero would be the safe side anyway.
    let age = reference
        .time()
        .signed_duration_since(snapshot.id.time())
        .to_std()
        .unwrap_or_default();
    let day = snapshot.id.time().date_naive();
    if age < policy.keep_all_within {
        Class::Recent(reference)
    } else if age < policy.daily_within {
        Class::Daily(day)
    } else if age < policy.weekly_within {
        Class::Weekly(week_start(day, policy.week_starts))
    } else {
        Class::Expired(reference)
    }
}

/// Whether the id is later than `now` by more than the tolerance.
fn is_future(id: &SnapshotId, now: DateTime<Utc>) -> bool {
    id.time().signed_duration_since(now) > TimeDelta::minutes(FUTURE_TOLERANCE_MINUTES)
}

/// The first day of the week (starting on `starts`) that `day` is in.
fn week_start(day: NaiveDate, starts: Weekday) -> NaiveDate {
    let back = Days::new(u64::from(day.weekday().days_since(starts)));
    // Only fails within a week of the earliest date chrono can hold; the day itself is
    // then as good a label as any.
    day.checked_sub_days(back).unwrap_or(day)
}

/// The earliest id of each group, for the classes `group_of` puts in a group.
fn earliest_per_group<'a>(
    sorted: &'a [SnapshotSummary],
    classes: &[Class<'_>],
    group_of: impl Fn(Class<'_>) -> Option<NaiveDate>,
) -> BTreeMap<NaiveDate, &'a SnapshotId> {
    let mut earliest: BTreeMap<NaiveDate, &SnapshotId> = BTreeMap::new();
    for (snapshot, class) in sorted.iter().zip(classes) {
        if let Some(group) = group_of(*class) {
            let id = &snapshot.id;
            // By id order, so an unsuffixed id beats its `-2` from the same minute.
            earliest
                .entry(group)
                .and_modify(|kept| *kept = (*kept).min(id))
                .or_insert(id);
        }
    }
    earliest
}

/// Keep if `id` is its day's earliest in the daily tier, else delete.
fn daily_verdict(id: &SnapshotId, day: NaiveDate, days: &BTreeMap<NaiveDate, &SnapshotId>) -> (Action, String) {
    match days.get(&day) {
        Some(kept) if *kept != id => (Action::Delete, format!("daily: {kept} kept for this day")),
        // The map was built from these very snapshots, so the day is there; if it were
        // not, keeping is the safe side.
        _ => (Action::Keep, format!("daily: earliest of {day}")),
    }
}

/// Keep if `id` is its week's earliest in the weekly tier, else delete.
fn weekly_verdict(id: &SnapshotId, week: NaiveDate, weeks: &BTreeMap<NaiveDate, &SnapshotId>) -> (Action, String) {
    match weeks.get(&week) {
        Some(kept) if *kept != id => (Action::Delete, format!("weekly: {kept} kept for week starting {week}")),
        // As for days: the week is there, and keeping is the safe side if not.
        _ => (Action::Keep, format!("weekly: earliest of week starting {week}")),
    }
}

/// Keep an incomplete snapshot while its upload may still be running, by the clock.
fn incomplete_verdict(snapshot: &SnapshotSummary, policy: &RetentionPolicy, now: DateTime<Utc>) -> (Action, String) {
    let grace = duration::format(policy.incomplete_grace);
    // Negative when the id is slightly ahead of `now` (within the tolerance): just started.
    let young = match now.signed_duration_since(snapshot.id.time()).to_std() {
        Ok(elapsed) => elapsed < policy.incomplete_grace,
        Err(_) => true,
    };
    if young {
        (
            Action::Keep,
            format!("incomplete: in progress or interrupted less than {grace} ago"),
        )
    } else {
        (Action::Delete, format!("incomplete: no manifest, older than {grace}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const HOUR: u64 = 3_600;
    const DAY: u64 = 24 * HOUR;

    fn id(text: &str) -> SnapshotId {
        text.parse().expect("test ids are well-formed")
    }

    fn at(text: &str) -> DateTime<Utc> {
        id(text).time()
    }

    fn strings(ids: &[&str]) -> Vec<String> {
        ids.iter().map(ToString::to_string).collect()
    }

    /// `count` ids `step_minutes` apart, starting at `first`.
    fn every(first: &str, step_minutes: i64, count: i64) -> Vec<String> {
        let start = at(first);
        (0..count)
            .map(|i| SnapshotId::new(start + TimeDelta::minutes(i * step_minutes), 1).to_string())
            .collect()
    }

    /// A scenario and exactly the ids it must keep.
    struct Case {
        name: &'static str,
        complete: Vec<String>,
        incomplete: Vec<String>,
        now: &'static str,
        policy: RetentionPolicy,
        kept: Vec<String>,
    }

    impl Case {
        fn snapshots(&self) -> Vec<SnapshotSummary> {
            let complete = self.complete.iter().map(|s| (s, true));
            let incomplete = self.incomplete.iter().map(|s| (s, false));
            complete
                .chain(incomplete)
                .map(|(s, complete)| SnapshotSummary {
                    id: id(s),
                    complete,
                    follow: false,
                })
                .collect()
        }
    }

    /// The 40-day, every-20-minutes history shared by two cases: 2026-01-19 to 2026-02-27.
    fn forty_days() -> Vec<String> {
        every("2026-01-19-00-00", 20, 40 * 72)
    }

    /// What the default policy keeps of `forty_days`, however late `now` is.
    fn forty_days_kept() -> Vec<String> {
        let mut kept = every("2026-02-27-00-00", 20, 72);
        kept.extend(every("2026-02-21-00-00", 24 * 60, 6));
        // 2026-01-29 is the first day of the weekly tier; its week began on Friday 01-23.
        kept.extend(strings(&[
            "2026-01-29-00-00",
            "2026-01-30-00-00",
            "2026-02-06-00-00",
            "2026-02-13-00-00",
            "2026-02-20-00-00",
        ]));
        kept
    }

    fn cases() -> Vec<Case> {
        let default = RetentionPolicy::default();
        vec![
            Case {
                name: "twenty-minute schedule over 40 days",
                complete: forty_days(),
                incomplete: vec![],
                now: "2026-02-28-00-05",
                policy: default,
                kept: forty_days_kept(),
            },
            Case {
                name: "newest complete is months before now: history kept",
                complete: forty_days(),
                incomplete: strings(&["2026-02-28-00-00"]),
                now: "2026-06-01-12-00",
                policy: default,
                kept: forty_days_kept(),
            },
            Case {
                name: "gap across midnight keeps the day's 07:40",
                complete: strings(&[
                    "2026-02-27-14-00",
                    "2026-02-23-00-00",
                    "2026-02-23-22-00",
                    "2026-02-23-23-40",
                    "2026-02-24-07-40",
                    "2026-02-24-08-00",
                    "2026-02-24-20-00",
                    "2026-02-25-00-00",
                ]),
                // Earlier in the day than 07:40, but incomplete ones never count for a tier.
                incomplete: strings(&["2026-02-24-03-00"]),
                now: "2026-02-27-14-05",
                policy: default,
                kept: strings(&[
                    "2026-02-27-14-00",
                    "2026-02-23-00-00",
                    "2026-02-24-07-40",
                    "2026-02-25-00-00",
                ]),
            },
            Case {
                name: "week without its Friday keeps its earliest",
                complete: strings(&[
                    "2026-02-27-14-00",
                    "2026-02-05-23-40",
                    "2026-02-07-03-00",
                    "2026-02-07-03-20",
                    "2026-02-08-00-00",
                    "2026-02-12-23-40",
                    "2026-02-13-00-00",
                    "2026-02-13-00-20",
                ]),
                incomplete: vec![],
                now: "2026-02-27-14-05",
                policy: default,
                kept: strings(&[
                    "2026-02-27-14-00",
                    "2026-02-05-23-40",
                    "2026-02-07-03-00",
                    "2026-02-13-00-00",
                ]),
            },
            Case {
                name: "week split across the daily/weekly boundary",
                complete: strings(&[
                    "2026-02-27-14-00",
                    "2026-02-20-00-00",
                    "2026-02-20-12-00",
                    // Exactly 7d before the newest: the weekly tier starts here.
                    "2026-02-20-14-00",
                    "2026-02-20-14-20",
                    "2026-02-20-18-00",
                    "2026-02-21-00-00",
                    "2026-02-21-00-20",
                ]),
                incomplete: vec![],
                now: "2026-02-27-14-05",
                policy: default,
                kept: strings(&[
                    "2026-02-27-14-00",
                    "2026-02-20-00-00",
                    "2026-02-20-14-20",
                    "2026-02-21-00-00",
                ]),
            },
            Case {
                name: "single snapshot",
                complete: strings(&["2025-11-02-03-40"]),
                incomplete: vec![],
                now: "2026-02-27-14-00",
                policy: default,
                kept: strings(&["2025-11-02-03-40"]),
            },
            Case {
                name: "only incomplete snapshots: young kept, old deleted",
                complete: vec![],
                incomplete: strings(&[
                    "2026-02-27-13-40",
                    "2026-02-27-08-20",
                    // Exactly the grace old: no longer within it.
                    "2026-02-27-08-00",
                    "2026-02-20-00-00",
                ]),
                now: "2026-02-27-14-00",
                policy: default,
                kept: strings(&["2026-02-27-13-40", "2026-02-27-08-20"]),
            },
            Case {
                name: "same-minute suffixes: the unsuffixed id is earliest",
                complete: strings(&[
                    "2026-02-27-14-00-2",
                    "2026-02-27-14-00",
                    "2026-02-27-10-00-2",
                    "2026-02-27-10-00",
                    "2026-02-24-00-00-2",
                    "2026-02-24-00-00",
                    "2026-02-24-00-00-3",
                    "2026-02-13-05-00-3",
                    "2026-02-13-05-00-2",
                ]),
                incomplete: vec![],
                now: "2026-02-27-14-05",
                policy: default,
                kept: strings(&[
                    "2026-02-27-14-00-2",
                    "2026-02-27-14-00",
                    "2026-02-27-10-00-2",
                    "2026-02-27-10-00",
                    "2026-02-24-00-00",
                    "2026-02-13-05-00-2",
                ]),
            },
            Case {
                name: "future-dated ids are kept and are not the reference",
                complete: strings(&[
                    // Within the 5-minute tolerance: the reference.
                    "2026-02-27-14-05",
                    "2026-02-27-14-06",
                    "2027-01-01-00-00",
                    // Recent when measured from 14:05, expired if measured from 2027.
                    "2026-02-26-15-00",
                    "2026-02-21-00-00",
                    "2026-02-21-06-00",
                    "2026-01-01-00-00",
                ]),
                incomplete: strings(&["2026-03-01-00-00"]),
                now: "2026-02-27-14-00",
                policy: default,
                kept: strings(&[
                    "2026-02-27-14-05",
                    "2026-02-27-14-06",
                    "2027-01-01-00-00",
                    "2026-02-26-15-00",
                    "2026-02-21-00-00",
                    "2026-03-01-00-00",
                ]),
            },
            Case {
                name: "every complete snapshot future-dated",
                complete: strings(&["2027-01-01-00-00", "2027-01-01-00-20"]),
                incomplete: strings(&["2026-02-27-07-00", "2026-02-27-13-00"]),
                now: "2026-02-27-14-00",
                policy: default,
                kept: strings(&["2027-01-01-00-00", "2027-01-01-00-20", "2026-02-27-13-00"]),
            },
            Case {
                name: "weeks starting on Monday",
                complete: {
                    let mut ids = every("2026-01-29-12-00", 24 * 60, 30);
                    ids.push("2026-02-27-14-00".to_string());
                    ids
                },
                incomplete: vec![],
                now: "2026-02-27-14-05",
                policy: RetentionPolicy {
                    week_starts: Weekday::Mon,
                    ..default
                },
                kept: {
                    let mut ids = strings(&["2026-02-27-14-00", "2026-02-27-12-00"]);
                    ids.extend(every("2026-02-21-12-00", 24 * 60, 6));
                    ids.extend(strings(&[
                        "2026-01-29-12-00",
                        "2026-02-02-12-00",
                        "2026-02-09-12-00",
                        "2026-02-16-12-00",
                    ]));
                    ids
                },
            },
        ]
    }

    #[test]
    fn cases_keep_exactly_the_expected_ids() {
        let mut failures = Vec::new();
        for case in cases() {
            let decisions = plan(&case.snapshots(), &case.policy, at(case.now));
            let kept: BTreeSet<SnapshotId> = decisions
                .into_iter()
                .filter(|d| d.action == Action::Keep)
                .map(|d| d.id)
                .collect();
            let expected: BTreeSet<SnapshotId> = case.kept.iter().map(|s| id(s)).collect();
            if kept != expected {
                let show = |ids: Vec<&SnapshotId>| -> Vec<String> { ids.iter().map(ToString::to_string).collect() };
                failures.push(format!(
                    "{}: kept but not expected {:?}, expected but not kept {:?}",
                    case.name,
                    show(kept.difference(&expected).collect()),
                    show(expected.difference(&kept).collect()),
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn reasons_are_stable_and_readable() {
        let complete = [
            "2026-02-27-14-00",
            "2026-02-27-10-00",
            "2026-02-21-00-00",
            "2026-02-21-00-00-2",
            "2026-02-20-00-00",
            "2026-02-20-06-00",
            "2026-01-20-00-00",
            "2027-01-01-00-00",
        ];
        let incomplete = ["2026-02-27-13-00", "2026-02-27-01-00"];
        let snapshots: Vec<SnapshotSummary> = complete
            .iter()
            .map(|s| (s, true))
            .chain(incomplete.iter().map(|s| (s, false)))
            .map(|(s, complete)| SnapshotSummary {
                id: id(s),
                complete,
                follow: false,
            })
            .collect();
        let decisions = plan(&snapshots, &RetentionPolicy::default(), at("2026-02-27-14-05"));
        let got: Vec<(String, Action, String)> = decisions
            .into_iter()
            .map(|d| (d.id.to_string(), d.action, d.reason))
            .collect();
        let keep = |id: &str, reason: &str| (id.to_string(), Action::Keep, reason.to_string());
        let delete = |id: &str, reason: &str| (id.to_string(), Action::Delete, reason.to_string());
        let expected = vec![
            keep(
                "2027-01-01-00-00",
                "future-dated: id is after now, kept (check the clock)",
            ),
            keep("2026-02-27-14-00", "newest complete snapshot"),
            keep(
                "2026-02-27-13-00",
                "incomplete: in progress or interrupted less than 6h ago",
            ),
            keep("2026-02-27-10-00", "recent: within 1d of newest 2026-02-27-14-00"),
            delete("2026-02-27-01-00", "incomplete: no manifest, older than 6h"),
            delete("2026-02-21-00-00-2", "daily: 2026-02-21-00-00 kept for this day"),
            keep("2026-02-21-00-00", "daily: earliest of 2026-02-21"),
            delete(
                "2026-02-20-06-00",
                "weekly: 2026-02-20-00-00 kept for week starting 2026-02-20",
            ),
            keep("2026-02-20-00-00", "weekly: earliest of week starting 2026-02-20"),
            delete(
                "2026-01-20-00-00",
                "expired: older than 30d before newest 2026-02-27-14-00",
            ),
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn follow_snapshots_go_after_follow_keep_unless_they_hold_a_tick_or_a_tier_keeps_them() {
        let policy = RetentionPolicy::default();
        // (id, follow, wanted action)
        let cases = [
            ("2026-02-27-14-00", true, Action::Keep),   // the newest, follow or not
            ("2026-02-27-13-59", true, Action::Keep),   // within follow_keep (2h)
            ("2026-02-27-12-01", true, Action::Keep),   // 1h59m before the newest
            ("2026-02-27-12-00", true, Action::Delete), // 2h before it; 12-01 was taken before 12:20
            ("2026-02-27-11-40", false, Action::Keep),  // scheduled: recent for keep_all_within
            // Nothing was taken between it and the 09:20 tick: it is the history at 09:20.
            ("2026-02-27-09-13", true, Action::Keep),
            ("2026-02-27-09-05", true, Action::Delete), // 09-13 holds the 09:20 tick
            // A day in the daily tier whose earliest is a follow snapshot: the tier keeps it.
            ("2026-02-24-00-01", true, Action::Keep),
            ("2026-02-24-00-20", false, Action::Delete),
        ];
        let input: Vec<SnapshotSummary> = cases
            .iter()
            .map(|(s, follow, _)| SnapshotSummary {
                id: id(s),
                complete: true,
                follow: *follow,
            })
            .collect();
        let decisions = plan(&input, &policy, at("2026-02-27-14-05"));
        for (s, _, want) in cases {
            let decision = decisions.iter().find(|d| d.id == id(s)).expect("decided");
            assert_eq!(decision.action, want, "{s}: {}", decision.reason);
        }
    }

    #[test]
    fn plan_returns_one_decision_per_snapshot_newest_first() {
        assert!(plan(&[], &RetentionPolicy::default(), at("2026-02-27-14-00")).is_empty());
        let input: Vec<SnapshotSummary> = [
            ("2026-02-21-00-00", true),
            ("2026-02-27-14-00-2", false),
            ("2026-02-27-14-00", true),
            ("2026-01-01-00-00", true),
            ("2026-02-25-09-20", false),
        ]
        .iter()
        .map(|(s, complete)| SnapshotSummary {
            id: id(s),
            follow: false,
            complete: *complete,
        })
        .collect();
        let decisions = plan(&input, &RetentionPolicy::default(), at("2026-02-27-14-05"));
        let got: Vec<(String, bool)> = decisions.iter().map(|d| (d.id.to_string(), d.complete)).collect();
        let expected: Vec<(String, bool)> = [
            ("2026-02-27-14-00-2", false),
            ("2026-02-27-14-00", true),
            ("2026-02-25-09-20", false),
            ("2026-02-21-00-00", true),
            ("2026-01-01-00-00", true),
        ]
        .iter()
        .map(|(s, complete)| (s.to_string(), *complete))
        .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn validate_rejects_non_increasing_tiers_naming_the_keys() {
        let default = RetentionPolicy::default();
        assert_eq!(default.validate(), Ok(()));
        let daily_too_short = RetentionPolicy {
            keep_all_within: Duration::from_secs(8 * DAY),
            ..default
        };
        assert_eq!(
            daily_too_short
                .validate()
                .map_err(|e| e.to_string())
                .expect_err("daily_within 7d < keep_all_within 8d"),
            "retention.daily_within (7d) must be longer than retention.keep_all_within (8d)"
        );
        let weekly_equal = RetentionPolicy {
            daily_within: Duration::from_secs(30 * DAY),
            keep_all_within: Duration::from_secs(36 * HOUR),
            ..default
        };
        assert_eq!(
            weekly_equal
                .validate()
                .map_err(|e| e.to_string())
                .expect_err("weekly_within equal to daily_within"),
            "retention.weekly_within (30d) must be longer than retention.daily_within (30d)"
        );
        let daily_equal = RetentionPolicy {
            daily_within: Duration::from_secs(DAY),
            ..default
        };
        assert!(matches!(
            daily_equal.validate(),
            Err(PolicyError::DailyNotLonger { .. })
        ));
    }

    /// SplitMix64: a few lines of deterministic pseudo-randomness, no extra crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    fn random_policy(rng: &mut Rng) -> RetentionPolicy {
        const WEEKDAYS: [Weekday; 7] = [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ];
        let keep_all = (1 + rng.below(48)) * HOUR;
        let daily = keep_all + (1 + rng.below(10)) * DAY;
        let weekly = daily + (1 + rng.below(30)) * DAY;
        let week_starts = WEEKDAYS
            .get(usize::try_from(rng.below(7)).expect("below 7 fits a usize"))
            .copied()
            .unwrap_or(Weekday::Fri);
        RetentionPolicy {
            keep_all_within: Duration::from_secs(keep_all),
            daily_within: Duration::from_secs(daily),
            weekly_within: Duration::from_secs(weekly),
            week_starts,
            incomplete_grace: Duration::from_secs((1 + rng.below(12)) * HOUR),
            follow_keep: Duration::from_secs((1 + rng.below(6)) * HOUR),
            interval: Duration::from_secs((1 + rng.below(60)) * 60),
        }
    }

    /// Up to 150 snapshots over 60 days, some incomplete, some suffixed, and a `now` that
    /// may fall before some of them.
    fn random_set(rng: &mut Rng) -> (Vec<SnapshotSummary>, DateTime<Utc>) {
        let base = at("2026-01-01-00-00");
        let minutes = |n: u64| TimeDelta::minutes(i64::try_from(n).expect("small test offsets"));
        let mut ids = BTreeSet::new();
        for _ in 0..rng.below(150) {
            let time = base + minutes(rng.below(60 * 24 * 60));
            let seq = if rng.chance(10) { 2 + rng.below(2) } else { 1 };
            ids.insert(SnapshotId::new(time, u32::try_from(seq).expect("seq is tiny")));
        }
        let snapshots = ids
            .into_iter()
            .map(|id| SnapshotSummary {
                id,
                follow: rng.chance(50),
                complete: rng.chance(85),
            })
            .collect();
        (snapshots, base + minutes(rng.below(100 * 24 * 60)))
    }

    /// The property checks, for one random set: `Ok` with how many daily-tier days were
    /// checked (so the test can tell it did not pass vacuously), `Err` with what broke.
    fn check_invariants(
        snapshots: &[SnapshotSummary],
        policy: &RetentionPolicy,
        now: DateTime<Utc>,
    ) -> Result<usize, String> {
        let decisions = plan(snapshots, policy, now);
        let kept: BTreeSet<&SnapshotId> = decisions
            .iter()
            .filter(|d| d.action == Action::Keep)
            .map(|d| &d.id)
            .collect();
        let input: BTreeSet<&SnapshotId> = snapshots.iter().map(|s| &s.id).collect();
        let output: BTreeSet<&SnapshotId> = decisions.iter().map(|d| &d.id).collect();
        if decisions.len() != snapshots.len() || input != output {
            return Err("not one decision per snapshot".into());
        }
        if decisions.windows(2).any(|w| w[0].id <= w[1].id) {
            return Err("not sorted newest first".into());
        }
        let tolerance = TimeDelta::minutes(FUTURE_TOLERANCE_MINUTES);
        let present = |s: &&SnapshotSummary| s.complete && s.id.time() <= now + tolerance;
        if let Some(newest) = snapshots.iter().filter(|s| s.complete).map(|s| &s.id).max()
            && !kept.contains(newest)
        {
            return Err(format!("newest complete {newest} deleted"));
        }
        let Some(reference) = snapshots.iter().filter(present).map(|s| &s.id).max() else {
            return Ok(0);
        };
        let mut days: BTreeMap<NaiveDate, Vec<&SnapshotId>> = BTreeMap::new();
        for snapshot in snapshots.iter().filter(present) {
            let age = reference.time() - snapshot.id.time();
            let age = age.to_std().map_err(|_| "age before the reference")?;
            // A follow snapshot past follow_keep may go (its own rule, in the table test).
            let follow_expired = snapshot.follow && age >= policy.follow_keep;
            if age < policy.keep_all_within && !kept.contains(&snapshot.id) && !follow_expired {
                return Err(format!("recent {} deleted", snapshot.id));
            }
            if age >= policy.keep_all_within && age < policy.daily_within {
                days.entry(snapshot.id.time().date_naive())
                    .or_default()
                    .push(&snapshot.id);
            }
        }
        for (day, ids) in &days {
            let kept_that_day: Vec<&&SnapshotId> = ids.iter().filter(|id| kept.contains(**id)).collect();
            if kept_that_day.len() != 1 || kept_that_day.first() != ids.iter().min().as_ref() {
                return Err(format!("{day} kept {kept_that_day:?} of {ids:?}"));
            }
        }
        Ok(days.len())
    }

    #[test]
    fn random_sets_keep_the_invariants() {
        let mut rng = Rng(0x5107_4EE9_E125_0001);
        let mut days_checked = 0;
        for round in 0..500 {
            let policy = random_policy(&mut rng);
            let (snapshots, now) = random_set(&mut rng);
            match check_invariants(&snapshots, &policy, now) {
                Ok(days) => days_checked += days,
                Err(broken) => {
                    panic!("round {round}: {broken}\npolicy {policy:?}\nnow {now}\n{snapshots:?}")
                }
            }
        }
        assert!(days_checked > 500, "only {days_checked} daily-tier days checked");
    }
}
