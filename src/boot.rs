//! The boot decision (DESIGN.md, "Restore decision"), pure: what is local, what the repository
//! says, and what to do, every refusal included. No I/O: the daemon gathers the facts (retrying S3
//! until it has an answer; an error is never "no snapshot") and carries the decision out.

use crate::restore::TargetState;
use crate::snapshot_id::SnapshotId;

/// What the repository said about `latest/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LatestView {
    /// `latest/` was read; whether the local state descends from it (the lineage guard's answer).
    Readable { id: SnapshotId, local_descends: bool },
    /// There is no `latest/`; the newest complete snapshot a listing found, if any.
    Absent { newest_complete: Option<SnapshotId> },
    /// `latest/` exists but cannot be read or trusted (`why`); the newest complete snapshot a
    /// listing found, and whether the local state descends from that one.
    Unreadable {
        why: String,
        newest_complete: Option<SnapshotId>,
        local_descends: bool,
    },
}

/// What the daemon does with the local state at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootAction {
    /// Nothing local: restore this snapshot.
    Restore(SnapshotId),
    /// Nothing local and a listing that found no snapshot: a genuinely new repository.
    StartFresh,
    /// Local state that is the same as or newer than the repository's, or nothing to compare with.
    KeepLocal,
    /// Local state that does not descend from `latest/`: move it aside, then restore.
    DisplaceAndRestore(SnapshotId),
}

/// Why the daemon will not start: each case needs a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootRefusal {
    #[error(
        "{repository} has no latest/manifest.json but holds complete snapshots, the newest {newest}; this machine \
         has no local state, and starting fresh could later replace them; refusing to guess: restore one with \
         `spotkeeper restore --snapshot ID`, then start spotkeeper again"
    )]
    LatestMissing { repository: String, newest: SnapshotId },
    #[error(
        "latest/ in {repository} cannot be read ({why}) and {detail}; refusing to guess: look with `spotkeeper \
         list`, restore a snapshot with `spotkeeper restore --snapshot ID --force`, then start spotkeeper again"
    )]
    LatestUnreadable {
        repository: String,
        why: String,
        detail: String,
    },
}

/// What the state paths hold together: local state in any path makes the set local (nothing is
/// restored over it); the set is absent only when every path is.
pub fn set_state(paths: &[TargetState]) -> TargetState {
    if paths.contains(&TargetState::NonEmpty) {
        TargetState::NonEmpty
    } else if paths.iter().all(|s| *s == TargetState::Absent) {
        TargetState::Absent
    } else {
        TargetState::Empty
    }
}

/// The decision. `repository` only names the place in a refusal.
pub fn decide(local: TargetState, latest: &LatestView, repository: &str) -> Result<BootAction, BootRefusal> {
    let has_local = local == TargetState::NonEmpty;
    match latest {
        LatestView::Readable { id, .. } if !has_local => Ok(BootAction::Restore(*id)),
        LatestView::Readable {
            local_descends: true, ..
        } => Ok(BootAction::KeepLocal),
        LatestView::Readable { id, .. } => Ok(BootAction::DisplaceAndRestore(*id)),
        // With local state and no latest/ there is nothing to decide: it is kept and nothing is
        // overwritten (a first snapshot killed between its manifest and latest/ leaves this).
        LatestView::Absent { .. } if has_local => Ok(BootAction::KeepLocal),
        LatestView::Absent { newest_complete: None } => Ok(BootAction::StartFresh),
        LatestView::Absent {
            newest_complete: Some(newest),
        } => Err(BootRefusal::LatestMissing {
            repository: repository.to_string(),
            newest: *newest,
        }),
        LatestView::Unreadable {
            newest_complete: Some(newest),
            ..
        } if !has_local => Ok(BootAction::Restore(*newest)),
        LatestView::Unreadable {
            local_descends: true, ..
        } if has_local => Ok(BootAction::KeepLocal),
        LatestView::Unreadable {
            newest_complete: None, ..
        } if has_local => Ok(BootAction::KeepLocal),
        LatestView::Unreadable {
            why, newest_complete, ..
        } => Err(BootRefusal::LatestUnreadable {
            repository: repository.to_string(),
            why: why.clone(),
            detail: match newest_complete {
                Some(newest) => format!(
                    "the local state does not descend from the newest complete snapshot, {newest}; restoring it would \
                     move the local state aside on a guess"
                ),
                None => "no complete snapshot was found to fall back on, and this machine has no local state".into(),
            },
        }),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn local_state_in_any_path_makes_the_set_local() {
        use TargetState::{Absent, Empty, NonEmpty};
        let cases = [
            (vec![Absent], Absent),
            (vec![Empty], Empty),
            (vec![NonEmpty], NonEmpty),
            (vec![Absent, Absent, Absent], Absent),
            (vec![Absent, Empty, Absent], Empty),
            (vec![NonEmpty, Absent, Absent], NonEmpty),
            (vec![Empty, Empty, NonEmpty], NonEmpty),
        ];
        for (paths, want) in cases {
            assert_eq!(set_state(&paths), want, "{paths:?}");
        }
    }

    use super::*;

    #[test]
    fn the_decision_table() {
        let a: SnapshotId = "2026-02-27-14-00".parse().expect("id");
        let b: SnapshotId = "2026-02-27-14-20".parse().expect("id");
        use BootAction::*;
        use TargetState::*;
        let readable = |descends| LatestView::Readable {
            id: b,
            local_descends: descends,
        };
        let absent = |newest| LatestView::Absent {
            newest_complete: newest,
        };
        let unreadable = |newest, descends| LatestView::Unreadable {
            why: "not valid JSON".into(),
            newest_complete: newest,
            local_descends: descends,
        };
        type Row = (TargetState, LatestView, Result<BootAction, &'static str>);
        let rows: Vec<Row> = vec![
            (Absent, readable(false), Ok(Restore(b))),
            (Empty, readable(true), Ok(Restore(b))),
            (NonEmpty, readable(true), Ok(KeepLocal)),
            (NonEmpty, readable(false), Ok(DisplaceAndRestore(b))),
            (Empty, absent(None), Ok(StartFresh)),
            (Absent, absent(None), Ok(StartFresh)),
            (NonEmpty, absent(None), Ok(KeepLocal)),
            (NonEmpty, absent(Some(a)), Ok(KeepLocal)),
            (Empty, absent(Some(a)), Err("latest-missing")),
            // latest/ unreadable: fall back on the newest complete snapshot, lineage checked.
            (Empty, unreadable(Some(a), false), Ok(Restore(a))),
            (NonEmpty, unreadable(Some(a), true), Ok(KeepLocal)),
            (NonEmpty, unreadable(Some(a), false), Err("latest-unreadable")),
            (NonEmpty, unreadable(None, false), Ok(KeepLocal)),
            (Empty, unreadable(None, false), Err("latest-unreadable")),
        ];
        for (local, latest, expected) in rows {
            let got = decide(local, &latest, "s3://b/p").map_err(|e| match e {
                BootRefusal::LatestMissing { .. } => "latest-missing",
                BootRefusal::LatestUnreadable { .. } => "latest-unreadable",
            });
            assert_eq!(got, expected, "{local:?} {latest:?}");
        }
    }

    #[test]
    fn refusals_name_the_repository_and_the_way_out() {
        let a: SnapshotId = "2026-02-27-14-00".parse().expect("id");
        let text = decide(
            TargetState::Empty,
            &LatestView::Absent {
                newest_complete: Some(a),
            },
            "s3://bucket/lab",
        )
        .expect_err("refused")
        .to_string();
        assert!(text.contains("s3://bucket/lab") && text.contains("2026-02-27-14-00") && text.contains("--snapshot"));
    }
}
