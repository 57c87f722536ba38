//! The window of loss, pure: which changes of the state are safe in the head and which exist
//! only on this disk. One value, changed only by the events that move it (a change seen, a sync,
//! an upload, a failed attempt, a restore, what boot found), each a row of a table test. No
//! clock, no I/O: times come in as arguments. The daemon shows the result in `status` and in
//! two gauges (`UnprotectedSeconds`, `SecondsSinceLastSnapshot`).
//!
//! The rules a person relies on:
//! - a change copied into the mirror stays pending until an upload that contains it completes
//!   (a failed or partial sync may have changed the mirror, so it makes an upload pending too);
//! - a change is unprotected from the moment the trackers saw it (the oldest one counts) until
//!   an upload holds it; a failed attempt counts as unprotected from the attempt at the latest;
//! - a snapshot with nothing pending uploads nothing ("unchanged since" the last one);
//! - a restore replaces the state: the mirror no longer matches it, an upload is pending.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::snapshot_id::SnapshotId;

/// What the head holds of the state, and since when it does not hold everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    /// The mirror may hold changes no upload has; cleared only by a completed upload.
    pending_upload: bool,
    /// When the oldest change not yet in the head happened; `None`: the head holds every change
    /// the trackers saw.
    unprotected_since: Option<DateTime<Utc>>,
    /// The snapshot the state is known to match when nothing is pending (the head).
    last_snapshot: Option<SnapshotId>,
    /// When the newest complete snapshot was taken.
    last_complete_at: Option<DateTime<Utc>>,
    /// How long the last upload took (zero before the first): the Spot stop keeps a reserve for it.
    last_duration: Duration,
}

/// A completed upload, as the window of loss sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upload {
    pub id: SnapshotId,
    pub created_at: DateTime<Utc>,
    pub duration: Duration,
}

impl Default for Protection {
    /// At start nothing is known of the mirror: the first snapshot uploads.
    fn default() -> Self {
        Protection {
            pending_upload: true,
            unprotected_since: None,
            last_snapshot: None,
            last_complete_at: None,
            last_duration: Duration::ZERO,
        }
    }
}

impl Protection {
    /// The trackers saw a change at `at`: unprotected from the oldest change not in the head.
    pub fn changed(&mut self, at: DateTime<Utc>) {
        self.unprotected_since = Some(self.unprotected_since.map_or(at, |since| since.min(at)));
    }

    /// A sync of the mirror ended; `changed`: it may have changed the mirror (a failed or
    /// cancelled one may have, so the caller says `true` for those).
    pub fn synced(&mut self, changed: bool) {
        if changed {
            self.pending_upload = true;
        }
    }

    /// An upload of the mirror completed: the head holds everything synced. `since_sync`: the
    /// trackers' first change after the sync took its changes (those stay unprotected).
    pub fn uploaded(&mut self, upload: Upload, since_sync: Option<DateTime<Utc>>) {
        self.pending_upload = false;
        self.unprotected_since = since_sync;
        self.last_snapshot = Some(upload.id);
        self.last_complete_at = Some(upload.created_at);
        self.last_duration = upload.duration;
    }

    /// A snapshot found nothing to upload (`unchanged_since` was `Some`): the head already holds
    /// everything synced. `since_sync` as for `uploaded`.
    pub fn up_to_date(&mut self, since_sync: Option<DateTime<Utc>>) {
        self.unprotected_since = since_sync;
    }

    /// A snapshot attempt started at `at` failed, at whatever step: the mirror may hold changes
    /// no upload has, unprotected from the attempt at the latest.
    pub fn failed(&mut self, at: DateTime<Utc>) {
        self.pending_upload = true;
        self.unprotected_since.get_or_insert(at);
    }

    /// A restore replaced the state with snapshot `id` (the head it came from): the mirror no
    /// longer matches the state.
    pub fn restored(&mut self, id: SnapshotId) {
        self.last_snapshot = Some(id);
        self.pending_upload = true;
    }

    /// At boot: the head was taken at `created_at` (`None`: no readable head).
    pub fn head_found(&mut self, created_at: Option<DateTime<Utc>>) {
        self.last_complete_at = created_at;
    }

    /// At boot: the local state was kept, and it descends from the head `id`.
    pub fn kept_local(&mut self, id: SnapshotId) {
        self.last_snapshot = Some(id);
    }

    /// Following changes starts at `at` with an upload pending: local state kept at boot may hold
    /// changes no snapshot has (a hard crash), so they count as unprotected from now.
    pub fn following_from(&mut self, at: DateTime<Utc>) {
        if self.pending_upload && self.unprotected_since.is_none() {
            self.unprotected_since = Some(at);
        }
    }

    /// The snapshot the state still matches when nothing is pending: a snapshot now uploads
    /// nothing.
    pub fn unchanged_since(&self) -> Option<SnapshotId> {
        self.last_snapshot.filter(|_| !self.pending_upload)
    }

    /// When the oldest change not in the head happened.
    pub fn unprotected_since(&self) -> Option<DateTime<Utc>> {
        self.unprotected_since
    }

    /// `UnprotectedSeconds` at `now`: 0 when the head holds everything (and for a clock set back).
    pub fn unprotected_seconds(&self, now: DateTime<Utc>) -> i64 {
        self.unprotected_since
            .map_or(0, |since| (now - since).num_seconds().max(0))
    }

    /// `SecondsSinceLastSnapshot` at `now`; `None` before any complete snapshot is known.
    pub fn seconds_since_last_snapshot(&self, now: DateTime<Utc>) -> Option<i64> {
        self.last_complete_at.map(|at| (now - at).num_seconds().max(0))
    }

    /// How long the last upload took (zero before the first).
    pub fn last_duration(&self) -> Duration {
        self.last_duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("time")
    }

    fn id(seconds: i64) -> SnapshotId {
        SnapshotId::new(t(seconds), 1)
    }

    fn upload(at: i64, duration_s: u64) -> Upload {
        Upload {
            id: id(at),
            created_at: t(at),
            duration: Duration::from_secs(duration_s),
        }
    }

    /// What a person can read off the value at t=1000: (pending, unprotected since,
    /// unchanged since, UnprotectedSeconds, SecondsSinceLastSnapshot, last duration in s).
    type Seen = (bool, Option<DateTime<Utc>>, Option<SnapshotId>, i64, Option<i64>, u64);

    fn seen(p: &Protection) -> Seen {
        (
            p.pending_upload,
            p.unprotected_since(),
            p.unchanged_since(),
            p.unprotected_seconds(t(1000)),
            p.seconds_since_last_snapshot(t(1000)),
            p.last_duration().as_secs(),
        )
    }

    /// Each row: events applied in order to a fresh value, and what it then shows.
    #[test]
    fn transitions_table() {
        enum Step {
            Changed(i64),
            Synced(bool),
            /// At, took (s), the trackers' first change after the sync.
            Uploaded(i64, u64, Option<i64>),
            UpToDate(Option<i64>),
            Failed(i64),
            Restored(i64),
            HeadFound(Option<i64>),
            KeptLocal(i64),
            FollowingFrom(i64),
        }
        use Step::*;
        let rows: Vec<(&str, Vec<Step>, Seen)> = vec![
            (
                "at start the first snapshot uploads; nothing seen unprotected, no snapshot known",
                vec![],
                (true, None, None, 0, None, 0),
            ),
            (
                "a change is unprotected from when it happened",
                vec![Changed(400)],
                (true, Some(t(400)), None, 600, None, 0),
            ),
            (
                "the oldest change counts, whatever order they are told in",
                vec![Changed(400), Changed(700), Changed(300)],
                (true, Some(t(300)), None, 700, None, 0),
            ),
            (
                "an upload protects everything synced",
                vec![Changed(400), Synced(true), Uploaded(500, 1, None)],
                (false, None, Some(id(500)), 0, Some(500), 1),
            ),
            (
                "an upload leaves the changes seen after its sync unprotected",
                vec![Changed(400), Synced(true), Uploaded(500, 1, Some(450))],
                (false, Some(t(450)), Some(id(500)), 550, Some(500), 1),
            ),
            (
                "an upload's duration is kept for the Spot reserve",
                vec![Uploaded(500, 7, None)],
                (false, None, Some(id(500)), 0, Some(500), 7),
            ),
            (
                "a sync that copied something makes an upload pending again",
                vec![Uploaded(500, 1, None), Synced(true)],
                (true, None, None, 0, Some(500), 1),
            ),
            (
                "a sync that copied nothing leaves nothing pending: unchanged since the last",
                vec![Uploaded(500, 1, None), Synced(false)],
                (false, None, Some(id(500)), 0, Some(500), 1),
            ),
            (
                "a sync that copied nothing does not clear a pending upload",
                vec![Synced(false)],
                (true, None, None, 0, None, 0),
            ),
            (
                "nothing to upload: only changes seen since the sync stay unprotected",
                vec![Uploaded(500, 1, None), Changed(600), Synced(false), UpToDate(Some(650))],
                (false, Some(t(650)), Some(id(500)), 350, Some(500), 1),
            ),
            (
                "nothing to upload and nothing seen since: protected",
                vec![Uploaded(500, 1, None), Changed(600), Synced(false), UpToDate(None)],
                (false, None, Some(id(500)), 0, Some(500), 1),
            ),
            (
                "a failed attempt keeps the upload pending, unprotected from the attempt",
                vec![Uploaded(500, 1, None), Failed(800)],
                (true, Some(t(800)), None, 200, Some(500), 1),
            ),
            (
                "a failed attempt keeps an older unprotected change",
                vec![Uploaded(500, 1, None), Changed(600), Failed(800)],
                (true, Some(t(600)), None, 400, Some(500), 1),
            ),
            (
                "a failure then an upload: protected, the new snapshot known",
                vec![Failed(800), Uploaded(900, 2, None)],
                (false, None, Some(id(900)), 0, Some(100), 2),
            ),
            (
                "a restore makes an upload pending and knows the head it came from",
                vec![Uploaded(500, 1, None), Restored(300)],
                (true, None, None, 0, Some(500), 1),
            ),
            (
                "after a restore an empty sync does not make the state unchanged: the upload stays pending",
                vec![Restored(300), Synced(false)],
                (true, None, None, 0, None, 0),
            ),
            (
                "boot found the head's time: the gauge counts from it",
                vec![HeadFound(Some(100))],
                (true, None, None, 0, Some(900), 0),
            ),
            (
                "boot found no readable head: no gauge",
                vec![HeadFound(None)],
                (true, None, None, 0, None, 0),
            ),
            (
                "local state kept at boot still uploads first: it may hold changes the head lacks",
                vec![KeptLocal(100)],
                (true, None, None, 0, None, 0),
            ),
            (
                "kept local, then an empty sync after an upload: unchanged since that upload",
                vec![KeptLocal(100), Uploaded(200, 1, None), Synced(false)],
                (false, None, Some(id(200)), 0, Some(800), 1),
            ),
            (
                "following starts with an upload pending: unprotected from then",
                vec![FollowingFrom(900)],
                (true, Some(t(900)), None, 100, None, 0),
            ),
            (
                "following keeps an older unprotected change",
                vec![Changed(300), FollowingFrom(900)],
                (true, Some(t(300)), None, 700, None, 0),
            ),
            (
                "following with nothing pending marks nothing",
                vec![Uploaded(500, 1, None), FollowingFrom(900)],
                (false, None, Some(id(500)), 0, Some(500), 1),
            ),
            (
                "a clock set back shows 0, never a negative gauge",
                vec![Changed(2000), Uploaded(1500, 1, None), Changed(1800)],
                (false, Some(t(1800)), Some(id(1500)), 0, Some(0), 1),
            ),
        ];
        for (name, steps, expected) in rows {
            let mut p = Protection::default();
            for step in steps {
                match step {
                    Changed(at) => p.changed(t(at)),
                    Synced(changed) => p.synced(changed),
                    Uploaded(at, took, since) => p.uploaded(upload(at, took), since.map(t)),
                    UpToDate(since) => p.up_to_date(since.map(t)),
                    Failed(at) => p.failed(t(at)),
                    Restored(at) => p.restored(id(at)),
                    HeadFound(at) => p.head_found(at.map(t)),
                    KeptLocal(at) => p.kept_local(id(at)),
                    FollowingFrom(at) => p.following_from(t(at)),
                }
            }
            assert_eq!(seen(&p), expected, "{name}");
        }
    }
}
