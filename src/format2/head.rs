//! Whether the head (`latest.json`) can be trusted. Its MAC (`pointer`) proves that someone with
//! the password wrote it, not that it is the newest one: a genuine older `latest.json` put back
//! (a replay) opens as well. The repository's own history tells: every snapshot spotkeeper takes
//! records the head it was taken on as its restic `parent`, and snapshot files are encrypted and
//! authenticated, so each snapshot that is some snapshot's parent was once the published head.
//! A head older than one of those, and not descending from it, moved backwards. Pure: the
//! snapshots come in as listed.

use std::collections::{HashMap, HashSet};

use crate::format2::Listed;
use crate::format2::pointer::Pointer;
use crate::snapshot_id::SnapshotId;

/// Why the head is not followed. Each names the object; each is an integrity error (exit 5).
#[derive(Debug, Clone, thiserror::Error)]
pub enum HeadError {
    #[error(
        "{key} failed its authentication: its MAC does not match its content under this repository's key (it was \
         edited, or copied from another repository); refusing to follow it, nothing was changed. `spotkeeper list` \
         shows the snapshots: restore one with `spotkeeper restore --snapshot ID`; the next snapshot writes an \
         authenticated {key}"
    )]
    Forged { key: String },
    #[error(
        "{key} carries no MAC, while this repository holds snapshots taken by a spotkeeper that authenticates it: \
         the MAC was stripped, so it cannot be trusted to choose what to restore; nothing was changed. `spotkeeper list` shows the snapshots: restore one with \
         `spotkeeper restore --snapshot ID`; the next snapshot writes an authenticated {key}"
    )]
    Unauthenticated { key: String, pointer: Box<Pointer> },
    #[error(
        "{key} names snapshot {head}, but the repository's authenticated history shows that a newer head, {newer}, \
         was published after it: {key} was moved backwards (an older copy put back); refusing to restore it, \
         nothing was changed. Restore {newer} (or another snapshot) with `spotkeeper restore --snapshot ID`; the \
         next snapshot writes a new head"
    )]
    Replayed {
        key: String,
        head: SnapshotId,
        newer: SnapshotId,
    },
}

/// The restic ids of `head` and of every snapshot it descends from, through the parents that
/// are still in `snapshots` (a forgotten one ends the walk).
fn lineage<'a>(head: &'a str, snapshots: &'a [Listed]) -> HashSet<&'a str> {
    let parent_of: HashMap<&str, &str> = snapshots
        .iter()
        .filter_map(|s| Some((s.restic_id.as_str(), s.parent.as_deref()?)))
        .collect();
    let mut seen = HashSet::from([head]);
    let mut at = head;
    // Bounded by the number of snapshots: a crafted cycle ends the walk.
    for _ in 0..=snapshots.len() {
        match parent_of.get(at) {
            Some(parent) if seen.insert(parent) => at = parent,
            _ => break,
        }
    }
    seen
}

/// The newest snapshot that was published as the head after the head `head_restic_id` (spotkeeper
/// id `head_id`) and that the head does not descend from: `Some` means the head moved backwards.
/// A snapshot counts as published when another one names it as its parent; an orphan (a snapshot
/// whose pointer write failed) is nobody's parent and never counts. Compared by spotkeeper id
/// (its time); a head whose clock ran behind still descends from the one it was taken on.
pub fn newer_published(head_restic_id: &str, head_id: SnapshotId, snapshots: &[Listed]) -> Option<SnapshotId> {
    let parents: HashSet<&str> = snapshots.iter().filter_map(|s| s.parent.as_deref()).collect();
    let ancestors = lineage(head_restic_id, snapshots);
    snapshots
        .iter()
        .filter(|s| parents.contains(s.restic_id.as_str()) && !ancestors.contains(s.restic_id.as_str()))
        .filter_map(|s| s.id)
        .filter(|id| *id > head_id)
        .max()
}

/// Whether local state that descends from snapshot `local` (the local record's) is newer than
/// the head: `local` is later than the head and the head does not descend from it. Such state is
/// never displaced by the head.
pub fn local_is_newer(local: SnapshotId, head_restic_id: &str, head_id: SnapshotId, snapshots: &[Listed]) -> bool {
    if local <= head_id {
        return false;
    }
    let ancestors = lineage(head_restic_id, snapshots);
    !snapshots
        .iter()
        .any(|s| s.id == Some(local) && ancestors.contains(s.restic_id.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot `name` (one letter; its restic id is the letter repeated) taken at minute
    /// `minute` on the parent `parent`.
    fn snap(name: char, minute: u32, parent: Option<char>) -> Listed {
        let id: SnapshotId = format!("2026-12-01-10-{minute:02}").parse().expect("id");
        Listed {
            restic_id: name.to_string().repeat(64),
            id: Some(id),
            time: id.time(),
            hostname: "spotkeeper".into(),
            files: None,
            bytes: None,
            data_added: None,
            paths: None,
            follow: false,
            skipped: Vec::new(),
            image: None,
            parent: parent.map(|p| p.to_string().repeat(64)),
            sealed_head: true,
        }
    }

    fn id_of(minute: u32) -> SnapshotId {
        format!("2026-12-01-10-{minute:02}").parse().expect("id")
    }

    #[test]
    fn a_head_older_than_a_published_one_moved_backwards() {
        // a <- b <- c, published in turn: each head's snapshot is the next one's parent.
        let chain = vec![snap('a', 0, None), snap('b', 20, Some('a')), snap('c', 40, Some('b'))];
        // An orphan: taken on c, its pointer write failed; and one on a forked head.
        let mut with_orphan = chain.clone();
        with_orphan.push(snap('o', 50, Some('c')));
        // A head taken on c by a machine whose clock ran behind (its id is older than c's).
        let mut skewed = chain.clone();
        skewed.push(snap('s', 30, Some('c')));
        // b forgotten by prune: c's parent is gone, a is still older than c.
        let pruned = vec![snap('a', 0, None), snap('c', 40, Some('b')), snap('d', 50, Some('c'))];
        // A cycle in crafted parents must end.
        let cycle = vec![snap('x', 0, Some('y')), snap('y', 20, Some('x'))];
        type Row<'a> = (&'a str, &'a [Listed], char, u32, Option<u32>);
        let rows: Vec<Row> = vec![
            ("the real head", &chain, 'c', 40, None),
            // Only b's child c proves that b was published: c may be an orphan, so b passes.
            ("one step back cannot be told from an orphan", &chain, 'b', 20, None),
            ("two steps back", &chain, 'a', 0, Some(20)),
            ("an orphan is nobody's parent", &with_orphan, 'c', 40, None),
            ("an orphan never counts", &with_orphan, 'b', 20, Some(40)),
            ("a head behind in time that descends from c", &skewed, 's', 30, None),
            ("replayed to a with a skewed head published", &skewed, 'a', 0, Some(40)),
            ("prune broke the chain", &pruned, 'a', 0, Some(40)),
            ("prune broke the chain, the real head", &pruned, 'd', 50, None),
            ("a cycle ends the walk", &cycle, 'x', 0, None),
            ("no snapshot listed", &[], 'c', 40, None),
        ];
        for (why, snapshots, head, minute, want) in rows {
            let got = newer_published(&head.to_string().repeat(64), id_of(minute), snapshots);
            assert_eq!(got, want.map(id_of), "{why}");
        }
    }

    #[test]
    fn local_state_newer_than_the_head_is_told_apart() {
        let chain = vec![snap('a', 0, None), snap('b', 20, Some('a')), snap('c', 40, Some('b'))];
        let mut skewed = chain.clone();
        skewed.push(snap('s', 30, Some('c')));
        type Row<'a> = (&'a str, &'a [Listed], u32, char, u32, bool);
        let rows: Vec<Row> = vec![
            ("local at c, head replayed to a", &chain, 40, 'a', 0, true),
            ("local at c, head replayed to b", &chain, 40, 'b', 20, true),
            ("local at a, head c", &chain, 0, 'c', 40, false),
            ("local is the head", &chain, 40, 'c', 40, false),
            (
                "head taken on c by a machine whose clock is behind",
                &skewed,
                40,
                's',
                30,
                false,
            ),
            (
                "local newer and not in the listing (its snapshot forgotten)",
                &chain,
                50,
                'c',
                40,
                true,
            ),
        ];
        for (why, snapshots, local, head, minute, want) in rows {
            let got = local_is_newer(id_of(local), &head.to_string().repeat(64), id_of(minute), snapshots);
            assert_eq!(got, want, "{why}");
        }
    }
}
