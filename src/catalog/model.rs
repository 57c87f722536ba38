//! The catalog's pure half: a prefix as read (the head, format 1's listing, format 2's) and the
//! questions the commands ask of it. No I/O: `catalog::read` fills it, the tests build it by hand.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::format2::head::{self, HeadError};
use crate::format2::pointer::Pointer;
use crate::format2::{Listed as Listed2, PathRecord};
use crate::manifest::ManifestError;
use crate::repository::{Head, Listed as Listed1, Listing, META_BYTES, META_CREATED_AT, META_FILES, RepositoryError};
use crate::retention::SnapshotSummary;
use crate::snapshot_id::SnapshotId;

/// What reading the head gave: `latest.json` when it exists, else format 1's `latest/`.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per command, and a head is what a prefix usually has
pub enum HeadRead {
    /// Neither exists.
    Absent,
    /// Read, and for `latest.json` read with the password, authenticated (not yet judged against
    /// the history: see `Catalog::newer_published`).
    Found(Head),
    /// It exists but cannot be read (too large, not valid, another version's).
    Unreadable(ManifestError),
    /// `latest.json` failed its authentication; `claimed` is what it says, never followed.
    Untrusted { error: HeadError, claimed: Box<Pointer> },
}

/// Which format holds a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// An archive and its manifest under `snapshots/<id>/`.
    One,
    /// A restic snapshot under `repo/`.
    Two,
}

impl Format {
    /// 1 or 2, as `list` and `prune` print it.
    pub fn number(self) -> u8 {
        match self {
            Format::One => 1,
            Format::Two => 2,
        }
    }
}

/// Format 1's totals, from user metadata on the manifest object (`None`: not read, or absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    pub files: Option<u64>,
    pub bytes: Option<u64>,
    pub created_at: Option<DateTime<Utc>>,
}

impl Meta {
    /// Parses the manifest object's metadata; a value that does not parse is left out.
    pub fn parse(metadata: &HashMap<String, String>) -> Meta {
        Meta {
            files: metadata.get(META_FILES).and_then(|v| v.parse().ok()),
            bytes: metadata.get(META_BYTES).and_then(|v| v.parse().ok()),
            created_at: metadata
                .get(META_CREATED_AT)
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// One snapshot of either format.
#[derive(Debug, Clone)]
pub enum Snapshot {
    /// Format 1, as the listing of `snapshots/<id>/` found it, with its manifest's totals.
    One { listed: Listed1, meta: Meta },
    /// Format 2, as restic listed it (always with a spotkeeper id).
    Two { id: SnapshotId, listed: Listed2 },
}

impl Snapshot {
    pub fn id(&self) -> SnapshotId {
        match self {
            Snapshot::One { listed, .. } => listed.id,
            Snapshot::Two { id, .. } => *id,
        }
    }

    pub fn format(&self) -> Format {
        match self {
            Snapshot::One { .. } => Format::One,
            Snapshot::Two { .. } => Format::Two,
        }
    }

    /// Format 1: its manifest exists. Format 2: always (restic writes the snapshot file last).
    pub fn complete(&self) -> bool {
        match self {
            Snapshot::One { listed, .. } => listed.complete,
            Snapshot::Two { .. } => true,
        }
    }

    /// Taken to follow changes (format 2's tag `follow`), kept `retention.follow_keep`.
    pub fn follow(&self) -> bool {
        matches!(self, Snapshot::Two { listed, .. } if listed.follow)
    }

    /// Format 2: restic's id (`restic restore RESTIC_ID`).
    pub fn restic_id(&self) -> Option<&str> {
        match self {
            Snapshot::One { .. } => None,
            Snapshot::Two { listed, .. } => Some(&listed.restic_id),
        }
    }

    /// Format 2: restic's time. Format 1: its manifest's metadata, else its id's minute.
    pub fn created_at(&self) -> DateTime<Utc> {
        match self {
            Snapshot::One { listed, meta } => meta.created_at.unwrap_or_else(|| listed.id.time()),
            Snapshot::Two { listed, .. } => listed.time,
        }
    }

    /// Regular files in the state.
    pub fn files(&self) -> Option<u64> {
        match self {
            Snapshot::One { meta, .. } => meta.files,
            Snapshot::Two { listed, .. } => listed.files,
        }
    }

    /// Bytes in regular files (uncompressed).
    pub fn bytes(&self) -> Option<u64> {
        match self {
            Snapshot::One { meta, .. } => meta.bytes,
            Snapshot::Two { listed, .. } => listed.bytes,
        }
    }

    /// What it stores: format 1 its archive's size, format 2 the data it added (packed).
    pub fn stored(&self) -> Option<u64> {
        match self {
            Snapshot::One { listed, .. } => listed.archive_bytes,
            Snapshot::Two { listed, .. } => listed.data_added,
        }
    }

    /// Format 2: its state paths, as its description records them.
    pub fn paths(&self) -> Option<&[PathRecord]> {
        match self {
            Snapshot::One { .. } => None,
            Snapshot::Two { listed, .. } => listed.paths.as_deref(),
        }
    }

    /// Format 2: what the snapshot could not copy, and why. Format 1 lists them in its manifest,
    /// which a listing does not read.
    pub fn skipped(&self) -> &[crate::tree::Skipped] {
        match self {
            Snapshot::One { .. } => &[],
            Snapshot::Two { listed, .. } => &listed.skipped,
        }
    }

    /// Format 2: the image the app ran when the daemon took it. Format 1 records it in its
    /// manifest, which a listing does not read.
    pub fn image(&self) -> Option<&crate::manifest::ImageInfo> {
        match self {
            Snapshot::One { .. } => None,
            Snapshot::Two { listed, .. } => listed.image.as_ref(),
        }
    }
}

/// What `find` found for an id.
#[derive(Debug, PartialEq)]
pub enum Found<'a> {
    /// `latest.json` names it: the restic snapshot it names (another writer's snapshot that took
    /// the same id in the same minute never stands in for it).
    Head(&'a Pointer),
    /// One format-2 snapshot has it.
    Two(&'a Listed2),
    /// A complete format-1 snapshot has it (its manifest is read next).
    One,
    /// Several format-2 snapshots have it (two writers in one minute): their restic ids.
    Ambiguous(Vec<&'a str>),
    /// None has it, or only an incomplete format-1 one.
    Missing,
}

/// One prefix, read once: the head, format 1's snapshots and format 2's.
#[derive(Debug)]
pub struct Catalog {
    /// `s3://bucket/prefix`, for messages.
    repository: String,
    /// `latest.json`'s full key, for messages.
    pointer_key: String,
    head: HeadRead,
    /// `latest.json` exists, readable or not.
    pointer_found: bool,
    /// Both formats, by id; on one id format 1 first, format 2's in listing order.
    snapshots: Vec<Snapshot>,
    /// Keys under `snapshots/` that belong to no snapshot id.
    foreign: Vec<String>,
    /// Format 2's listing, restic snapshots without a spotkeeper id included; `None` when it was
    /// not listed (no password).
    format2: Option<Vec<Listed2>>,
}

impl Catalog {
    /// `format2`: `None` when format 2 was not listed (no password).
    pub fn new(
        repository: String,
        pointer_key: String,
        head: HeadRead,
        pointer_found: bool,
        format1: Listing,
        format2: Option<Vec<Listed2>>,
    ) -> Catalog {
        let mut snapshots: Vec<Snapshot> = format1
            .snapshots
            .into_iter()
            .map(|listed| Snapshot::One {
                listed,
                meta: Meta::default(),
            })
            .collect();
        snapshots.extend(format2.iter().flatten().filter_map(|listed| {
            Some(Snapshot::Two {
                id: listed.id?,
                listed: listed.clone(),
            })
        }));
        // Stable: format 2's snapshots of one id stay in listing order.
        snapshots.sort_by_key(|s| (s.id(), s.format()));
        Catalog {
            repository,
            pointer_key,
            head,
            pointer_found,
            snapshots,
            foreign: format1.foreign,
            format2,
        }
    }

    /// Sets format-1 snapshot `id`'s totals (read from its manifest's metadata).
    pub fn set_meta(&mut self, id: SnapshotId, meta: Meta) {
        for snapshot in &mut self.snapshots {
            if let Snapshot::One { listed, meta: slot } = snapshot
                && listed.id == id
            {
                *slot = meta;
            }
        }
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn head(&self) -> &HeadRead {
        &self.head
    }

    /// Every snapshot of both formats, oldest first; on one id format 1's first.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// Format 1's snapshots, complete or not, oldest first.
    pub fn format1(&self) -> impl Iterator<Item = &Listed1> {
        self.snapshots.iter().filter_map(|s| match s {
            Snapshot::One { listed, .. } => Some(listed),
            Snapshot::Two { .. } => None,
        })
    }

    /// Format 2's listing, restic snapshots without a spotkeeper id included (empty when not
    /// listed).
    pub fn format2(&self) -> &[Listed2] {
        self.format2.as_deref().unwrap_or_default()
    }

    /// Keys under `snapshots/` that belong to no snapshot id (left alone, reported).
    pub fn foreign_keys(&self) -> &[String] {
        &self.foreign
    }

    /// Restic snapshots tagged spotkeeper without a spotkeeper id (left alone, reported).
    pub fn foreign_format2(&self) -> impl Iterator<Item = &Listed2> {
        self.format2().iter().filter(|l| l.id.is_none())
    }

    /// The prefix holds format 2 (`latest.json`) and it was not listed: there is no password.
    pub fn format2_unlisted(&self) -> bool {
        self.pointer_found && self.format2.is_none()
    }

    /// The error that says format 2 needs the password, when it does.
    pub fn require_format2(&self) -> Result<(), RepositoryError> {
        if self.format2_unlisted() {
            return Err(RepositoryError::NeedsPassword {
                repository: self.repository.clone(),
            });
        }
        Ok(())
    }

    /// Format 2 was listed and holds at least one snapshot (any writer's).
    pub fn holds_format2(&self) -> bool {
        !self.format2().is_empty()
    }

    /// The head's id, when it was read (whether or not it moved backwards).
    pub fn head_id(&self) -> Option<SnapshotId> {
        match &self.head {
            HeadRead::Found(head) => Some(head.id()),
            _ => None,
        }
    }

    /// The id the head names, trusted or not: what prune never deletes (a forged one could only
    /// keep one snapshot more).
    pub fn claimed_head_id(&self) -> Option<SnapshotId> {
        match &self.head {
            HeadRead::Found(head) => Some(head.id()),
            HeadRead::Untrusted { claimed, .. } => Some(claimed.id),
            HeadRead::Absent | HeadRead::Unreadable(_) => None,
        }
    }

    /// The newest snapshot that the lineage published after `latest.json`'s and that it does not
    /// descend from (`format2::head::newer_published`): `Some` means the head moved backwards.
    /// Only known when format 2 was listed.
    pub fn newer_published(&self) -> Option<SnapshotId> {
        match (&self.head, &self.format2) {
            (HeadRead::Found(Head::Two(pointer)), Some(listed)) => {
                head::newer_published(&pointer.restic_id, pointer.id, listed)
            }
            _ => None,
        }
    }

    /// `origin` (what local state descends from) when it is newer than `latest.json`'s snapshot
    /// (`format2::head::local_is_newer`). Only known when format 2 was listed.
    pub fn local_newer(&self, origin: Option<SnapshotId>) -> Option<SnapshotId> {
        match (&self.head, &self.format2) {
            (HeadRead::Found(Head::Two(pointer)), Some(listed)) => {
                origin.filter(|local| head::local_is_newer(*local, &pointer.restic_id, pointer.id, listed))
            }
            _ => None,
        }
    }

    /// Why the head cannot be trusted: not authentic, or moved backwards.
    pub fn distrust(&self) -> Option<HeadError> {
        match &self.head {
            HeadRead::Untrusted { error, .. } => Some(error.clone()),
            HeadRead::Found(Head::Two(pointer)) => self.newer_published().map(|newer| HeadError::Replayed {
                key: self.pointer_key.clone(),
                head: pointer.id,
                newer,
            }),
            _ => None,
        }
    }

    /// This catalog when its head could be read (trusted or not) or there is none, else the
    /// error that says why not.
    pub fn readable(self) -> Result<Catalog, RepositoryError> {
        match self.head {
            HeadRead::Unreadable(error) => Err(error.into()),
            _ => Ok(self),
        }
    }

    /// This catalog when its head can be followed (absent, or read and trusted), else why not:
    /// not authentic, moved backwards, unreadable.
    pub fn followable(self) -> Result<Catalog, RepositoryError> {
        match self.distrust() {
            Some(error) => Err(error.into()),
            None => self.readable(),
        }
    }

    /// Whether `snapshot` is the head a reader follows: format 1's `latest/` by id, `latest.json`
    /// by restic id (never another writer's snapshot of the same minute); none when the head
    /// cannot be trusted.
    pub fn is_head(&self, snapshot: &Snapshot) -> bool {
        if self.distrust().is_some() {
            return false;
        }
        match (&self.head, snapshot) {
            (HeadRead::Found(Head::One(manifest)), Snapshot::One { listed, .. }) => manifest.id == listed.id,
            (HeadRead::Found(Head::Two(pointer)), Snapshot::Two { listed, .. }) => {
                pointer.restic_id == listed.restic_id
            }
            _ => false,
        }
    }

    /// Snapshot `id`: format 2 first (when listed), then a complete format-1 one.
    pub fn find(&self, id: SnapshotId) -> Found<'_> {
        if self.format2.is_some() {
            if let HeadRead::Found(Head::Two(pointer)) = &self.head
                && pointer.id == id
            {
                return Found::Head(pointer);
            }
            let found: Vec<&Listed2> = self
                .snapshots
                .iter()
                .filter_map(|s| match s {
                    Snapshot::Two { id: of, listed } if *of == id => Some(listed),
                    _ => None,
                })
                .collect();
            match found.as_slice() {
                [] => {}
                [one] => return Found::Two(one),
                many => return Found::Ambiguous(many.iter().map(|l| l.restic_id.as_str()).collect()),
            }
        }
        let complete1 = self
            .snapshots
            .iter()
            .any(|s| s.format() == Format::One && s.id() == id && s.complete());
        if complete1 { Found::One } else { Found::Missing }
    }

    /// The newest complete snapshot of either format. On one id format 1's (its manifest carries
    /// the lineage the guard judges), then the latest format-2 one.
    pub fn newest_complete(&self) -> Option<&Snapshot> {
        self.snapshots.iter().filter(|s| s.complete()).max_by(|a, b| {
            a.id()
                .cmp(&b.id())
                .then_with(|| b.format().cmp(&a.format()))
                .then_with(|| a.created_at().cmp(&b.created_at()))
        })
    }

    /// How many complete snapshots there are, both formats.
    pub fn complete_count(&self) -> usize {
        self.snapshots.iter().filter(|s| s.complete()).count()
    }

    /// What the retention policy judges: every format-1 snapshot, and each format-2 one whose id
    /// format 1 does not hold (that id is judged once, as format 1's).
    pub fn retention_input(&self) -> Vec<SnapshotSummary> {
        self.snapshots
            .iter()
            .filter(|s| s.format() == Format::One || !self.format1().any(|one| one.id == s.id()))
            .map(|s| SnapshotSummary {
                id: s.id(),
                complete: s.complete(),
                follow: s.follow(),
            })
            .collect()
    }

    /// The format a decision on `id` acts on: 2 when format 2 holds it.
    pub fn format_of(&self, id: SnapshotId) -> Format {
        if self.format2().iter().any(|l| l.id == Some(id)) {
            Format::Two
        } else {
            Format::One
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format2::pointer::POINTER_FORMAT;
    use crate::manifest::{ArchiveInfo, FORMAT_VERSION, Host, Manifest, Totals};
    use crate::tree::Owner;

    /// `2026-12-01-10-MM`, or with a same-minute suffix `MM-N`.
    fn id(minute: &str) -> SnapshotId {
        format!("2026-12-01-10-{minute}").parse().expect("id")
    }

    /// A format-1 snapshot as listed.
    fn one(minute: &str, complete: bool) -> Listed1 {
        let id = id(minute);
        let mut keys = vec![format!("snapshots/{id}/state.tar.zst")];
        if complete {
            keys.push(format!("snapshots/{id}/manifest.json"));
        }
        Listed1 {
            id,
            complete,
            archive_bytes: Some(100),
            keys,
        }
    }

    /// A format-2 snapshot `name` (its restic id is the letter repeated) with id `minute`, taken
    /// `second`s into it, on the head `parent`.
    fn two(name: char, minute: &str, second: i64, parent: Option<char>, follow: bool) -> Listed2 {
        let id = id(minute);
        Listed2 {
            restic_id: restic(name),
            id: Some(id),
            time: id.time() + chrono::Duration::seconds(second),
            hostname: "spotkeeper".into(),
            files: Some(3),
            bytes: Some(42),
            data_added: Some(7),
            paths: None,
            follow,
            skipped: Vec::new(),
            image: None,
            parent: parent.map(restic),
            sealed_head: true,
        }
    }

    fn restic(name: char) -> String {
        name.to_string().repeat(64)
    }

    /// A restic snapshot tagged spotkeeper by someone else: no spotkeeper id.
    fn foreign(name: char) -> Listed2 {
        Listed2 {
            id: None,
            ..two(name, "00", 0, None, false)
        }
    }

    fn manifest(minute: &str) -> Manifest {
        let id = id(minute);
        Manifest {
            format: FORMAT_VERSION,
            id,
            created_at: id.time(),
            parent: None,
            host: Host {
                hostname: "h".into(),
                instance_id: None,
                writer: Some("w".into()),
            },
            archive: ArchiveInfo {
                key: format!("snapshots/{id}/state.tar.zst"),
                bytes: 100,
                sha256: "0".repeat(64),
                encoding: "tar+zstd".into(),
            },
            totals: Totals::default(),
            root: Owner {
                mode: 0o700,
                uid: 0,
                gid: 0,
            },
            files: Vec::new(),
            skipped: Vec::new(),
            image: None,
        }
    }

    fn pointer(name: char, minute: &str) -> Pointer {
        let id = id(minute);
        Pointer {
            format: POINTER_FORMAT,
            id,
            restic_id: restic(name),
            parent: None,
            writer: Some("w".into()),
            hostname: "h".into(),
            created_at: id.time(),
            files: 3,
            bytes: 42,
            skipped: 0,
        }
    }

    /// The heads a catalog can hold, by name.
    #[derive(Debug, Clone, Copy)]
    enum H {
        Absent,
        One(&'static str),
        /// `latest.json` naming restic snapshot `char` with id `minute`.
        Two(char, &'static str),
        Forged(char, &'static str),
        Unreadable,
    }

    fn head(h: H) -> HeadRead {
        match h {
            H::Absent => HeadRead::Absent,
            H::One(minute) => HeadRead::Found(Head::One(manifest(minute))),
            H::Two(name, minute) => HeadRead::Found(Head::Two(pointer(name, minute))),
            H::Forged(name, minute) => HeadRead::Untrusted {
                error: HeadError::Forged {
                    key: "lab/latest.json".into(),
                },
                claimed: Box::new(pointer(name, minute)),
            },
            H::Unreadable => HeadRead::Unreadable(ManifestError::Pointer {
                key: "lab/latest.json".into(),
                reason: "not JSON".into(),
            }),
        }
    }

    /// A catalog with head `h`, format 1's `ones` and format 2's `twos` (`None`: not listed).
    fn catalog(h: H, ones: Vec<Listed1>, twos: Option<Vec<Listed2>>) -> Catalog {
        let pointer_found = matches!(h, H::Two(..) | H::Forged(..) | H::Unreadable);
        Catalog::new(
            "s3://b/lab".into(),
            "lab/latest.json".into(),
            head(h),
            pointer_found,
            Listing {
                snapshots: ones,
                foreign: vec!["snapshots/notes.txt".into()],
            },
            twos,
        )
    }

    /// `find`'s answer, as text.
    fn found(catalog: &Catalog, minute: &str) -> String {
        match catalog.find(id(minute)) {
            Found::Head(p) => format!("head {}", &p.restic_id[..1]),
            Found::Two(l) => format!("two {}", &l.restic_id[..1]),
            Found::One => "one".into(),
            Found::Ambiguous(ids) => format!(
                "ambiguous {}",
                ids.iter().map(|i| &i[..1]).collect::<Vec<_>>().join(",")
            ),
            Found::Missing => "missing".into(),
        }
    }

    #[test]
    fn find_takes_format_2_first_the_head_by_restic_id_and_refuses_to_guess() {
        let both = || {
            (
                vec![one("00", true), one("20", false), one("40", true)],
                vec![
                    two('a', "40", 0, None, false),
                    two('b', "50", 1, Some('a'), false),
                    two('c', "50", 9, Some('a'), true),
                    foreign('f'),
                ],
            )
        };
        let rows: Vec<(&str, Catalog, &str, &str)> = vec![
            (
                "a complete format-1 snapshot",
                catalog(H::One("00"), both().0, Some(both().1)),
                "00",
                "one",
            ),
            (
                "an incomplete format-1 snapshot is not found",
                catalog(H::One("00"), both().0, Some(both().1)),
                "20",
                "missing",
            ),
            (
                "an id of both formats: format 2's",
                catalog(H::Absent, both().0, Some(both().1)),
                "40",
                "two a",
            ),
            (
                "same minute, no head naming it",
                catalog(H::One("00"), both().0, Some(both().1)),
                "50",
                "ambiguous b,c",
            ),
            (
                "same minute, latest.json names one",
                catalog(H::Two('c', "50"), both().0, Some(both().1)),
                "50",
                "head c",
            ),
            (
                "a head whose snapshot is not listed",
                catalog(H::Two('z', "55"), both().0, Some(both().1)),
                "55",
                "head z",
            ),
            (
                "a forged head never stands in",
                catalog(H::Forged('c', "50"), both().0, Some(both().1)),
                "50",
                "ambiguous b,c",
            ),
            (
                "never taken",
                catalog(H::Two('c', "50"), both().0, Some(both().1)),
                "59",
                "missing",
            ),
            (
                "no password: format 2 unseen",
                catalog(H::Two('c', "50"), both().0, None),
                "50",
                "missing",
            ),
            (
                "no password: format 1 found",
                catalog(H::Two('c', "50"), both().0, None),
                "40",
                "one",
            ),
        ];
        for (why, catalog, minute, want) in rows {
            assert_eq!(found(&catalog, minute), want, "{why}");
        }
    }

    #[test]
    fn newest_complete_skips_incomplete_and_prefers_format_1_on_one_id() {
        // (why, format 1, format 2, newest as "format minute restic", complete count)
        type Row = (
            &'static str,
            Vec<Listed1>,
            Option<Vec<Listed2>>,
            Option<&'static str>,
            usize,
        );
        let rows: Vec<Row> = vec![
            ("nothing at all", vec![], Some(vec![]), None, 0),
            ("only incomplete", vec![one("00", false)], None, None, 0),
            (
                "an incomplete newest is skipped",
                vec![one("00", true), one("20", false)],
                None,
                Some("1 00"),
                1,
            ),
            (
                "format 2 newer",
                vec![one("00", true)],
                Some(vec![two('a', "20", 0, None, false)]),
                Some("2 20 a"),
                2,
            ),
            (
                "format 1 newer",
                vec![one("40", true)],
                Some(vec![two('a', "20", 0, None, false)]),
                Some("1 40"),
                2,
            ),
            (
                "one id in both formats: format 1's carries the lineage",
                vec![one("20", true)],
                Some(vec![two('a', "20", 0, None, false)]),
                Some("1 20"),
                2,
            ),
            (
                "same minute in format 2: the later one",
                vec![],
                Some(vec![two('b', "20", 9, None, false), two('a', "20", 1, None, false)]),
                Some("2 20 b"),
                2,
            ),
            (
                "follow snapshots count",
                vec![],
                Some(vec![two('a', "20", 0, None, true)]),
                Some("2 20 a"),
                1,
            ),
            ("format 2 not listed", vec![one("00", true)], None, Some("1 00"), 1),
            (
                "foreign restic snapshots do not count",
                vec![],
                Some(vec![foreign('f')]),
                None,
                0,
            ),
        ];
        for (why, ones, twos, want, count) in rows {
            let catalog = catalog(H::Absent, ones, twos);
            let got = catalog.newest_complete().map(|s| {
                let mut text = format!("{} {}", s.format().number(), &s.id().to_string()[14..]);
                if let Some(restic) = s.restic_id() {
                    text.push_str(&format!(" {}", &restic[..1]));
                }
                text
            });
            assert_eq!(got.as_deref(), want, "{why}");
            assert_eq!(catalog.complete_count(), count, "{why}");
        }
    }

    #[test]
    fn only_the_followed_head_is_marked() {
        let ones = || vec![one("00", true), one("20", true)];
        // a <- b published; c taken on b in b's minute by another writer.
        let twos = || {
            vec![
                two('a', "40", 0, None, false),
                two('b', "50", 0, Some('a'), false),
                two('c', "50", 5, Some('a'), false),
                two('d', "55", 0, Some('b'), false),
            ]
        };
        // (why, head, format 2 listed, marked as "format minute [restic]")
        let rows: Vec<(&str, H, bool, Vec<&str>)> = vec![
            ("latest/ by id", H::One("20"), true, vec!["1 20"]),
            ("latest/ whose snapshot was pruned", H::One("10"), true, vec![]),
            (
                "latest.json by restic id, not its same-minute twin",
                H::Two('c', "50"),
                true,
                vec!["2 50 c"],
            ),
            (
                "latest.json that moved backwards (b was published after a)",
                H::Two('a', "40"),
                true,
                vec![],
            ),
            (
                "latest.json whose snapshot is not listed",
                H::Two('z', "59"),
                true,
                vec![],
            ),
            (
                "latest.json without the password: nothing listed to mark",
                H::Two('c', "50"),
                false,
                vec![],
            ),
            ("a forged latest.json", H::Forged('d', "55"), true, vec![]),
            ("an unreadable head", H::Unreadable, true, vec![]),
            ("no head", H::Absent, true, vec![]),
        ];
        for (why, h, listed, want) in rows {
            let catalog = catalog(h, ones(), listed.then(twos));
            let marked: Vec<String> = catalog
                .snapshots()
                .iter()
                .filter(|s| catalog.is_head(s))
                .map(|s| {
                    let minute = &s.id().to_string()[14..];
                    match s.restic_id() {
                        Some(r) => format!("2 {minute} {}", &r[..1]),
                        None => format!("1 {minute}"),
                    }
                })
                .collect();
            assert_eq!(marked, want, "{why}");
        }
    }

    #[test]
    fn what_each_command_makes_of_the_head() {
        // a <- b <- c published.
        let twos = || {
            vec![
                two('a', "00", 0, None, false),
                two('b', "20", 0, Some('a'), false),
                two('c', "40", 0, Some('b'), false),
            ]
        };
        // (why, head, format 2 listed, distrusted, followable, readable, head_id, claimed id)
        type Row = (
            &'static str,
            H,
            bool,
            bool,
            bool,
            bool,
            Option<&'static str>,
            Option<&'static str>,
        );
        let rows: Vec<Row> = vec![
            ("no head", H::Absent, true, false, true, true, None, None),
            (
                "format 1's latest/",
                H::One("20"),
                true,
                false,
                true,
                true,
                Some("20"),
                Some("20"),
            ),
            (
                "latest.json, the real head",
                H::Two('c', "40"),
                true,
                false,
                true,
                true,
                Some("40"),
                Some("40"),
            ),
            (
                "latest.json moved back two steps",
                H::Two('a', "00"),
                true,
                true,
                false,
                true,
                Some("00"),
                Some("00"),
            ),
            (
                "the same without the password: unknown",
                H::Two('a', "00"),
                false,
                false,
                true,
                true,
                Some("00"),
                Some("00"),
            ),
            (
                "a forged latest.json",
                H::Forged('c', "40"),
                true,
                true,
                false,
                true,
                None,
                Some("40"),
            ),
            (
                "an unreadable head",
                H::Unreadable,
                true,
                false,
                false,
                false,
                None,
                None,
            ),
        ];
        for (why, h, listed, distrusted, followable, readable, head_id, claimed) in rows {
            let make = || catalog(h, vec![], listed.then(twos));
            assert_eq!(make().distrust().is_some(), distrusted, "{why}");
            assert_eq!(make().followable().is_ok(), followable, "{why}");
            assert_eq!(make().readable().is_ok(), readable, "{why}");
            assert_eq!(make().head_id(), head_id.map(id), "{why}");
            assert_eq!(make().claimed_head_id(), claimed.map(id), "{why}");
        }
        // The replay names the key and the newer head.
        let replayed = catalog(H::Two('a', "00"), vec![], Some(twos()))
            .distrust()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            replayed.contains("lab/latest.json") && replayed.contains(&id("20").to_string()),
            "{replayed}"
        );
    }

    #[test]
    fn local_state_newer_than_the_head_is_told_only_from_a_listing() {
        let twos = || vec![two('a', "00", 0, None, false), two('b', "20", 0, Some('a'), false)];
        // (why, head, format 2 listed, origin, local newer)
        type Row = (&'static str, H, bool, Option<&'static str>, Option<&'static str>);
        let rows: Vec<Row> = vec![
            ("the head itself", H::Two('b', "20"), true, Some("20"), None),
            ("an ancestor of the head", H::Two('b', "20"), true, Some("00"), None),
            (
                "newer than the head, not in its lineage",
                H::Two('a', "00"),
                true,
                Some("20"),
                Some("20"),
            ),
            ("no local record", H::Two('a', "00"), true, None, None),
            ("not listed: never guessed", H::Two('a', "00"), false, Some("20"), None),
            (
                "format 1's head: not format 2's question",
                H::One("00"),
                true,
                Some("20"),
                None,
            ),
        ];
        for (why, h, listed, origin, want) in rows {
            let catalog = catalog(h, vec![], listed.then(twos));
            assert_eq!(catalog.local_newer(origin.map(id)), want.map(id), "{why}");
        }
        assert_eq!(catalog(H::Two('a', "00"), vec![], Some(twos())).newer_published(), None);
        assert_eq!(catalog(H::Two('a', "00"), vec![], None).newer_published(), None);
    }

    #[test]
    fn format_2_without_the_password_is_named() {
        // (why, head, format 2 listed, unlisted)
        let rows: Vec<(&str, H, bool, bool)> = vec![
            ("latest.json and no password", H::Two('a', "00"), false, true),
            ("an unreadable latest.json and no password", H::Unreadable, false, true),
            ("latest.json with the password", H::Two('a', "00"), true, false),
            ("format 1 only, no password", H::One("00"), false, false),
            ("nothing, no password", H::Absent, false, false),
        ];
        for (why, h, listed, unlisted) in rows {
            let catalog = catalog(h, vec![], listed.then(Vec::new));
            assert_eq!(catalog.format2_unlisted(), unlisted, "{why}");
            match catalog.require_format2() {
                Ok(()) => assert!(!unlisted, "{why}"),
                Err(e) => {
                    assert!(unlisted, "{why}");
                    assert!(
                        e.to_string().contains("s3://b/lab") && e.to_string().contains("password_ssm"),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn retention_sees_each_id_once_with_completeness_and_follow_tags() {
        let catalog = catalog(
            H::Absent,
            vec![one("00", true), one("20", false), one("40", true)],
            Some(vec![
                two('a', "40", 0, None, false),
                two('b', "50", 0, None, true),
                two('c', "50", 5, None, false),
                foreign('f'),
            ]),
        );
        let input: Vec<(String, bool, bool)> = catalog
            .retention_input()
            .iter()
            .map(|s| (s.id.to_string()[14..].to_string(), s.complete, s.follow))
            .collect();
        let want: Vec<(String, bool, bool)> = [
            ("00", true, false),
            ("20", false, false),
            ("40", true, false),
            ("50", true, true),
            ("50", true, false),
        ]
        .iter()
        .map(|(m, c, f)| (m.to_string(), *c, *f))
        .collect();
        assert_eq!(input, want);
        // A decision on an id format 2 holds acts on format 2.
        let formats: Vec<u8> = ["00", "20", "40", "50"]
            .iter()
            .map(|m| catalog.format_of(id(m)).number())
            .collect();
        assert_eq!(formats, [1, 1, 2, 2]);
        assert_eq!(catalog.foreign_format2().count(), 1);
        assert_eq!(catalog.format2().len(), 4);
        assert!(catalog.holds_format2());
        assert_eq!(catalog.foreign_keys(), ["snapshots/notes.txt"]);
        assert_eq!(catalog.format1().count(), 3);
    }

    #[test]
    fn snapshots_are_by_id_format_1_first_and_carry_their_totals() {
        let mut catalog = catalog(
            H::Absent,
            vec![one("20", true), one("40", true)],
            Some(vec![
                two('b', "40", 9, None, false),
                two('a', "40", 1, None, false),
                two('c', "00", 0, None, true),
            ]),
        );
        let order: Vec<String> = catalog
            .snapshots()
            .iter()
            .map(|s| {
                format!(
                    "{} {}{}",
                    s.format().number(),
                    &s.id().to_string()[14..],
                    s.restic_id().map(|r| format!(" {}", &r[..1])).unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(order, ["2 00 c", "1 20", "1 40", "2 40 b", "2 40 a"]);
        let created = "2026-12-01T11:00:00Z".parse().expect("time");
        let metadata: HashMap<String, String> = [
            (META_FILES, "12"),
            (META_BYTES, "not a number"),
            (META_CREATED_AT, "2026-12-01T11:00:00Z"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        catalog.set_meta(id("40"), Meta::parse(&metadata));
        type Totals1 = (Option<u64>, Option<u64>, DateTime<Utc>, Option<u64>);
        let format1: Vec<Totals1> = catalog
            .snapshots()
            .iter()
            .filter(|s| s.format() == Format::One)
            .map(|s| (s.files(), s.bytes(), s.created_at(), s.stored()))
            .collect();
        assert_eq!(
            format1,
            [
                (None, None, id("20").time(), Some(100)),
                (Some(12), None, created, Some(100))
            ]
        );
        let follow: Vec<bool> = catalog.snapshots().iter().map(Snapshot::follow).collect();
        assert_eq!(follow, [true, false, false, false, false]);
        let c = &catalog.snapshots()[0];
        assert_eq!(
            (c.files(), c.bytes(), c.stored(), c.complete()),
            (Some(3), Some(42), Some(7), true)
        );
    }
}
