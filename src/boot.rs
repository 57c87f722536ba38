//! The boot decision (DESIGN.md, "Restore decision"), pure: what is local, what the repository
//! says, and what to do, every refusal included. No I/O: the daemon gathers the facts (retrying S3
//! until it has an answer; an error is never "no snapshot") and carries the decision out.

use crate::restore::plan::TargetState;
use crate::snapshot_id::SnapshotId;

/// What the repository said about `latest/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LatestView {
    /// `latest/` was read (and, for `latest.json`, authenticated); whether the local state
    /// descends from it (the lineage guard's answer); a snapshot the lineage published after it
    /// (the head moved backwards, `format2::head::newer_published`); the snapshot the local state
    /// descends from when that one is newer than the head (`format2::head::local_is_newer`).
    Readable {
        id: SnapshotId,
        local_descends: bool,
        newer_published: Option<SnapshotId>,
        local_newer: Option<SnapshotId>,
    },
    /// `latest.json` failed its authentication (`why` names it): never followed.
    Forged { why: String },
    /// `latest.json` carries no MAC (an older spotkeeper's, or stripped; `why` names it): only
    /// local state that descends from it is kept on its word, nothing is restored from it.
    Unauthenticated { local_descends: bool, why: String },
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
    /// `latest.json` is not authentic: `why` is the whole story (it names the object).
    #[error("{why}")]
    HeadUntrusted { why: String },
    #[error(
        "the head of {repository} is snapshot {head}, but the repository's authenticated history shows that a newer \
         head, {newer}, was published after it: latest.json was moved backwards (an older copy put back); refusing \
         to restore it, nothing was changed. Restore {newer} (or another snapshot) with `spotkeeper restore \
         --snapshot ID`, then start spotkeeper again"
    )]
    HeadReplayed {
        repository: String,
        head: SnapshotId,
        newer: SnapshotId,
    },
    #[error(
        "the local state descends from snapshot {local}, newer than the head of {repository}, {head}, which does not \
         descend from it (latest.json moved backwards, or another machine published an older state): refusing to \
         move the newer local state aside and run the app on the older one; nothing was changed. To keep the local \
         state, publish it with `spotkeeper snapshot --force`; to take a snapshot instead, `spotkeeper restore \
         --snapshot ID --force` (the local state is moved aside); then start spotkeeper again"
    )]
    LocalNewer {
        repository: String,
        head: SnapshotId,
        local: SnapshotId,
    },
}

impl BootRefusal {
    /// The exit code: a head that is not authentic or moved backwards is an integrity error;
    /// the rest refuse to guess.
    pub fn exit(&self) -> crate::exit::Exit {
        match self {
            BootRefusal::HeadUntrusted { .. } | BootRefusal::HeadReplayed { .. } => crate::exit::Exit::Integrity,
            BootRefusal::LatestMissing { .. }
            | BootRefusal::LatestUnreadable { .. }
            | BootRefusal::LocalNewer { .. } => crate::exit::Exit::Refused,
        }
    }
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
    let replayed = |head: SnapshotId, newer: SnapshotId| BootRefusal::HeadReplayed {
        repository: repository.to_string(),
        head,
        newer,
    };
    match latest {
        LatestView::Readable {
            id,
            newer_published: Some(newer),
            ..
        } if !has_local => Err(replayed(*id, *newer)),
        LatestView::Readable { id, .. } if !has_local => Ok(BootAction::Restore(*id)),
        LatestView::Readable {
            local_descends: true, ..
        } => Ok(BootAction::KeepLocal),
        // Newer local state is never displaced by an older head.
        LatestView::Readable {
            id,
            local_newer: Some(local),
            ..
        } => Err(BootRefusal::LocalNewer {
            repository: repository.to_string(),
            head: *id,
            local: *local,
        }),
        LatestView::Readable {
            id,
            newer_published: Some(newer),
            ..
        } => Err(replayed(*id, *newer)),
        LatestView::Readable { id, .. } => Ok(BootAction::DisplaceAndRestore(*id)),
        LatestView::Forged { why } => Err(BootRefusal::HeadUntrusted { why: why.clone() }),
        // Keeping local state is what a genuine pointer would say too: nothing is changed on the
        // word of a pointer that cannot be checked (the first snapshot writes an authenticated one).
        LatestView::Unauthenticated {
            local_descends: true, ..
        } if has_local => Ok(BootAction::KeepLocal),
        LatestView::Unauthenticated { why, .. } => Err(BootRefusal::HeadUntrusted { why: why.clone() }),
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
        let c: SnapshotId = "2026-02-27-14-40".parse().expect("id");
        let readable = |descends| LatestView::Readable {
            id: b,
            local_descends: descends,
            newer_published: None,
            local_newer: None,
        };
        // The head b moved backwards: c was published after it.
        let replayed = |descends, local_newer| LatestView::Readable {
            id: b,
            local_descends: descends,
            newer_published: Some(c),
            local_newer,
        };
        // Local state from c, the head b (b does not descend from c).
        let behind_local = LatestView::Readable {
            id: b,
            local_descends: false,
            newer_published: None,
            local_newer: Some(c),
        };
        let forged = LatestView::Forged { why: "MAC".into() };
        let unauthenticated = |descends| LatestView::Unauthenticated {
            local_descends: descends,
            why: "no MAC".into(),
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
            // A replayed head is never restored, and never displaces anything.
            (Absent, replayed(false, None), Err("replayed")),
            (Empty, replayed(false, None), Err("replayed")),
            (NonEmpty, replayed(true, None), Ok(KeepLocal)),
            (NonEmpty, replayed(false, None), Err("replayed")),
            (NonEmpty, replayed(false, Some(c)), Err("local-newer")),
            // Local state newer than the head stays, and the app does not run on the older one.
            (NonEmpty, behind_local, Err("local-newer")),
            // A forged pointer is never followed, whatever is local.
            (Absent, forged.clone(), Err("untrusted")),
            (NonEmpty, forged, Err("untrusted")),
            // A pointer without a MAC only keeps what descends from it.
            (NonEmpty, unauthenticated(true), Ok(KeepLocal)),
            (NonEmpty, unauthenticated(false), Err("untrusted")),
            (Empty, unauthenticated(true), Err("untrusted")),
            (Absent, unauthenticated(false), Err("untrusted")),
        ];
        for (local, latest, expected) in rows {
            let got = decide(local, &latest, "s3://b/p").map_err(|e| match e {
                BootRefusal::LatestMissing { .. } => "latest-missing",
                BootRefusal::LatestUnreadable { .. } => "latest-unreadable",
                BootRefusal::HeadUntrusted { .. } => "untrusted",
                BootRefusal::HeadReplayed { .. } => "replayed",
                BootRefusal::LocalNewer { .. } => "local-newer",
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
        let b: SnapshotId = "2026-02-27-14-20".parse().expect("id");
        let replayed = LatestView::Readable {
            id: a,
            local_descends: false,
            newer_published: Some(b),
            local_newer: None,
        };
        let refusal = decide(TargetState::Absent, &replayed, "s3://bucket/lab").expect_err("replayed");
        let text = refusal.to_string();
        assert!(
            text.contains("2026-02-27-14-20") && text.contains("--snapshot"),
            "{text}"
        );
        assert_eq!(refusal.exit(), crate::exit::Exit::Integrity);
        let behind = LatestView::Readable {
            id: a,
            local_descends: false,
            newer_published: None,
            local_newer: Some(b),
        };
        let refusal = decide(TargetState::NonEmpty, &behind, "s3://bucket/lab").expect_err("local newer");
        let text = refusal.to_string();
        assert!(
            text.contains("2026-02-27-14-20") && text.contains("2026-02-27-14-00"),
            "{text}"
        );
        assert_eq!(refusal.exit(), crate::exit::Exit::Refused);
    }
}
