//! The manifest: a versioned JSON record of one snapshot, written after its archive. Its presence
//! marks a snapshot complete; restore and verify check the archive and every file against it.
//! Pure: types, encoding, validation and the diff between two manifests.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Component, Path};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::snapshot_id::SnapshotId;
use crate::tree::{Owner, Skipped};

/// The format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Largest manifest (or other metadata object: `latest/`'s pointer, the mirror's index) read,
/// in bytes. About 250,000 entries; a bigger one is refused before it is read, not parsed into
/// memory several times over.
pub const MAX_METADATA_BYTES: u64 = 64 * 1024 * 1024;
/// Symlinks followed while resolving one link against the snapshot's tree (Linux's own limit).
const MAX_LINK_HOPS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{key} is larger than {cap} bytes, the cap on metadata objects (MAX_METADATA_BYTES); refusing to read it")]
    TooLarge { key: String, cap: u64 },
    #[error("manifest {key} is not valid JSON for format {FORMAT_VERSION}: {source}")]
    Decode { key: String, source: serde_json::Error },
    #[error(
        "manifest {key} has format {found}; this spotkeeper reads format {FORMAT_VERSION} and older: upgrade spotkeeper"
    )]
    UnsupportedFormat { key: String, found: u32 },
    #[error("the latest pointer {key} is not valid: {reason}")]
    Pointer { key: String, reason: String },
    #[error("the latest pointer {key} has format {found}; this spotkeeper reads format 2: upgrade spotkeeper")]
    PointerFormat { key: String, found: u32 },
    #[error("manifest {key} is for snapshot {found}, expected {expected}")]
    WrongId {
        key: String,
        expected: SnapshotId,
        found: SnapshotId,
    },
    #[error("manifest {key}: entry {path:?} is unsafe: {reason}")]
    UnsafeEntry {
        key: String,
        path: String,
        reason: &'static str,
    },
}

/// One snapshot's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: SnapshotId,
    pub created_at: DateTime<Utc>,
    /// The snapshot `latest/` pointed to when this one was taken (lineage).
    pub parent: Option<SnapshotId>,
    pub host: Host,
    pub archive: ArchiveInfo,
    pub totals: Totals,
    /// Mode and owner of the state directory itself.
    pub root: Owner,
    /// Every directory, file and symlink in walk order: each directory's entries sorted by name,
    /// a directory before its contents.
    pub files: Vec<FileEntry>,
    /// Paths the walk met but could not archive (sockets, fifos, devices, non-UTF-8 names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// Container image the state belonged to, when the daemon knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub hostname: String,
    pub instance_id: Option<String>,
    /// The writer: a random id kept in the writer's `work_dir` (one per `work_dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    /// Relative to the repository prefix.
    pub key: String,
    /// Compressed size in bytes.
    pub bytes: u64,
    /// SHA-256 of the compressed bytes, lowercase hex.
    pub sha256: String,
    /// `tar+zstd`.
    #[serde(default = "default_encoding")]
    pub encoding: String,
}

fn default_encoding() -> String {
    ARCHIVE_ENCODING.to_string()
}

/// The archive encoding this build writes.
pub const ARCHIVE_ENCODING: &str = "tar+zstd";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Regular files.
    pub files: u64,
    /// Bytes in regular files (uncompressed).
    pub bytes: u64,
    #[serde(default)]
    pub dirs: u64,
    #[serde(default)]
    pub symlinks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One archived path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the state directory, `/`-separated, UTF-8.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Content length for files, 0 otherwise.
    pub bytes: u64,
    /// Modification time with nanoseconds.
    pub mtime: DateTime<Utc>,
    /// Content hash of files, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlink target, as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// For a file stored sparse: the bytes of data it holds (its holes are not stored). `bytes`
    /// stays its apparent size; `sha256` then covers the archive member's data (the sparse map
    /// followed by the data segments), see docs/format.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<u64>,
}

impl FileEntry {
    /// An entry with only what `escaping_links` looks at (path, kind, link target): for judging
    /// trees that are not archives, such as a staged restore or a format-2 snapshot's tree.
    pub fn for_links(path: String, kind: EntryKind, target: Option<String>) -> FileEntry {
        FileEntry {
            path,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            bytes: 0,
            mtime: DateTime::default(),
            sha256: None,
            target,
            sparse: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub reference: String,
    pub digest: Option<String>,
}

impl Manifest {
    /// Decodes and checks a manifest read from `key`; `expected` is the id the key implies.
    pub fn decode(bytes: &[u8], key: &str, expected: Option<SnapshotId>) -> Result<Manifest, ManifestError> {
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(ManifestError::TooLarge {
                key: key.to_string(),
                cap: MAX_METADATA_BYTES,
            });
        }
        #[derive(Deserialize)]
        struct VersionOnly {
            format: u32,
        }
        // Skims the document without building it: no second copy in memory.
        let version: VersionOnly = serde_json::from_slice(bytes).map_err(|source| ManifestError::Decode {
            key: key.to_string(),
            source,
        })?;
        if version.format > FORMAT_VERSION || version.format == 0 {
            return Err(ManifestError::UnsupportedFormat {
                key: key.to_string(),
                found: version.format,
            });
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|source| ManifestError::Decode {
            key: key.to_string(),
            source,
        })?;
        if let Some(expected) = expected
            && manifest.id != expected
        {
            return Err(ManifestError::WrongId {
                key: key.to_string(),
                expected,
                found: manifest.id,
            });
        }
        manifest.check_paths(key)?;
        Ok(manifest)
    }

    /// Pretty JSON: manifests are read by people too.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Refuses entries that could write outside the target: absolute paths, `..`, duplicates,
    /// and symlinks whose target leaves the tree.
    pub fn check_paths(&self, key: &str) -> Result<(), ManifestError> {
        let unsafe_entry = |path: &str, reason| ManifestError::UnsafeEntry {
            key: key.to_string(),
            path: path.to_string(),
            reason,
        };
        let mut seen = std::collections::HashSet::with_capacity(self.files.len());
        for entry in &self.files {
            check_relative_path(&entry.path).map_err(|reason| unsafe_entry(&entry.path, reason))?;
            if !seen.insert(entry.path.as_str()) {
                return Err(unsafe_entry(&entry.path, "listed twice"));
            }
            match (entry.kind, &entry.target) {
                (EntryKind::Symlink, Some(target)) => {
                    check_link_target(&entry.path, target).map_err(|reason| unsafe_entry(&entry.path, reason))?
                }
                (EntryKind::Symlink, None) => return Err(unsafe_entry(&entry.path, "symlink without a target")),
                (EntryKind::File, _) if entry.sha256.is_none() => {
                    return Err(unsafe_entry(&entry.path, "file without a sha256"));
                }
                _ => {}
            }
        }
        if let Some((path, reason)) = escaping_links(&self.files).into_iter().next() {
            return Err(unsafe_entry(&path, reason));
        }
        Ok(())
    }

    /// Entries by path.
    pub fn by_path(&self) -> BTreeMap<&str, &FileEntry> {
        self.files.iter().map(|e| (e.path.as_str(), e)).collect()
    }
}

/// A relative, normal path: no root, no `.`/`..`, no empty segments, no NUL.
pub fn check_relative_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.contains('\0') {
        return Err("contains a NUL byte");
    }
    if path.starts_with('/') {
        return Err("absolute path");
    }
    if path.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err("contains `..`, `.` or an empty segment");
    }
    if Path::new(path).components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err("not a plain relative path");
    }
    Ok(())
}

/// A symlink at `link_path` may point anywhere inside the tree, never outside or absolute.
pub fn check_link_target(link_path: &str, target: &str) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("symlink with an empty target");
    }
    if target.starts_with('/') {
        return Err("symlink to an absolute path");
    }
    // Depth of the directory holding the link, then walk the target lexically.
    let mut depth: i64 = link_path.split('/').count() as i64 - 1;
    for segment in target.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err("symlink pointing outside the state directory");
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// The symlinks of `files` that leave the tree, each with the reason, judged the way the kernel
/// would resolve them in the restored tree: component by component from the link's directory,
/// following the other links recorded here (chains included, at most `MAX_LINK_HOPS`), `..`
/// applied to where resolution actually is. A link whose resolution stops inside (a file used
/// as a directory, a loop) cannot leave; past a missing component the rest is judged lexically.
pub fn escaping_links(files: &[FileEntry]) -> Vec<(String, &'static str)> {
    if !files.iter().any(|e| e.kind == EntryKind::Symlink) {
        return Vec::new();
    }
    let tree: HashMap<&str, &FileEntry> = files.iter().map(|e| (e.path.as_str(), e)).collect();
    files
        .iter()
        .filter_map(|entry| {
            let target = entry.target.as_deref()?;
            (entry.kind == EntryKind::Symlink)
                .then(|| resolve_link(&tree, &entry.path, target).err())
                .flatten()
                .map(|reason| (entry.path.clone(), reason))
        })
        .collect()
}

/// Resolves the link at `link_path` with `target` against `tree`. `Err` when it leaves.
fn resolve_link(tree: &HashMap<&str, &FileEntry>, link_path: &str, target: &str) -> Result<(), &'static str> {
    const OUTSIDE: &str = "symlink pointing outside the state directory (resolved through the snapshot's links)";
    if target.starts_with('/') {
        return Err("symlink to an absolute path");
    }
    let mut current: Vec<&str> = link_path.split('/').collect();
    current.pop();
    // Components still to resolve, the next one last.
    let mut pending: Vec<&str> = target.split('/').rev().collect();
    let mut hops = 0;
    let mut lexical = false;
    while let Some(component) = pending.pop() {
        match component {
            "" | "." => {}
            ".." => {
                if current.pop().is_none() {
                    return Err(OUTSIDE);
                }
            }
            name => {
                current.push(name);
                if lexical {
                    continue;
                }
                let here = current.join("/");
                match tree.get(here.as_str()) {
                    None => lexical = true,
                    Some(entry) => match entry.kind {
                        EntryKind::Dir => {}
                        EntryKind::File if pending.iter().all(|c| c.is_empty() || *c == ".") => {}
                        // A file used as a directory: resolution fails there (ENOTDIR).
                        EntryKind::File => return Ok(()),
                        EntryKind::Symlink => {
                            hops += 1;
                            if hops > MAX_LINK_HOPS {
                                return Ok(()); // ELOOP: resolves to nothing
                            }
                            let next = entry.target.as_deref().unwrap_or_default();
                            if next.starts_with('/') {
                                return Err("symlink resolving through a link to an absolute path");
                            }
                            current.pop();
                            pending.extend(next.split('/').rev());
                        }
                    },
                }
            }
        }
    }
    Ok(())
}

/// Reads and parses one JSON metadata object of at most `MAX_METADATA_BYTES` from `reader`
/// (a file, a response body), in one pass and without keeping the text: `key` names it in the
/// error.
pub fn read_json_capped<T: serde::de::DeserializeOwned>(reader: impl Read, key: &str) -> Result<T, ManifestError> {
    let mut limited = std::io::BufReader::new(reader.take(MAX_METADATA_BYTES + 1));
    let value: T = serde_json::from_reader(&mut limited).map_err(|source| {
        if limited.get_ref().limit() == 0 {
            ManifestError::TooLarge {
                key: key.to_string(),
                cap: MAX_METADATA_BYTES,
            }
        } else {
            ManifestError::Decode {
                key: key.to_string(),
                source,
            }
        }
    })?;
    Ok(value)
}

/// What differs between two manifests, by path.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ManifestDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl ManifestDiff {
    /// True when both manifests describe the same tree.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares two file lists: kind, content, mode, owner, mtime and link target.
pub fn diff(old: &[FileEntry], new: &[FileEntry]) -> ManifestDiff {
    let old_map: BTreeMap<&str, &FileEntry> = old.iter().map(|e| (e.path.as_str(), e)).collect();
    let new_map: BTreeMap<&str, &FileEntry> = new.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut result = ManifestDiff::default();
    for (path, new_entry) in &new_map {
        match old_map.get(path) {
            None => result.added.push(path.to_string()),
            Some(old_entry) if old_entry != new_entry => result.changed.push(path.to_string()),
            Some(_) => {}
        }
    }
    for path in old_map.keys() {
        if !new_map.contains_key(path) {
            result.removed.push(path.to_string());
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> FileEntry {
        FileEntry {
            path: path.to_string(),
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            bytes: 0,
            mtime: DateTime::from_timestamp(1_772_200_000, 5).expect("valid time"),
            sha256: (kind == EntryKind::File).then(|| "e3b0".to_string()),
            target: (kind == EntryKind::Symlink).then(|| "b.txt".to_string()),
            sparse: None,
        }
    }

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            id: "2026-02-27-14-00".parse().expect("valid id"),
            created_at: DateTime::from_timestamp(1_772_200_803, 0).expect("valid time"),
            parent: Some("2026-02-27-13-40".parse().expect("valid id")),
            host: Host {
                hostname: "ip-10-0-0-5".into(),
                instance_id: None,
                writer: None,
            },
            archive: ArchiveInfo {
                key: "snapshots/2026-02-27-14-00/state.tar.zst".into(),
                bytes: 10,
                sha256: "ab".into(),
                encoding: ARCHIVE_ENCODING.into(),
            },
            totals: Totals::default(),
            root: Owner {
                mode: 0o700,
                uid: 1000,
                gid: 1000,
            },
            files,
            skipped: vec![],
            image: None,
        }
    }

    #[test]
    fn encodes_and_decodes_with_the_documented_field_names() {
        let m = manifest(vec![
            entry("a", EntryKind::Dir),
            entry("a/b.txt", EntryKind::File),
            entry("a/l", EntryKind::Symlink),
        ]);
        let bytes = m.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(json["format"], 1);
        assert_eq!(json["id"], "2026-02-27-14-00");
        assert_eq!(json["parent"], "2026-02-27-13-40");
        assert_eq!(json["files"][1]["type"], "file");
        assert_eq!(json["files"][2]["target"], "b.txt");
        assert_eq!(json["files"][0]["mtime"], "2026-02-27T13:46:40.000000005Z");
        let back = Manifest::decode(&bytes, "k", Some(m.id)).expect("decodes");
        assert_eq!(back, m);
    }

    #[test]
    fn refuses_newer_formats_and_wrong_ids() {
        let mut m = manifest(vec![]);
        m.format = 2;
        let err = Manifest::decode(&m.encode(), "lab/latest/manifest.json", None).expect_err("format 2");
        assert!(err.to_string().contains("format 2"), "{err}");
        m.format = 1;
        let other = "2026-02-27-14-20".parse().expect("valid id");
        let err = Manifest::decode(&m.encode(), "k", Some(other)).expect_err("wrong id");
        assert!(err.to_string().contains("2026-02-27-14-20"), "{err}");
    }

    #[test]
    fn refuses_unsafe_entries() {
        let cases: Vec<(FileEntry, &str)> = vec![
            (entry("/etc/passwd", EntryKind::File), "absolute"),
            (entry("a/../../x", EntryKind::File), ".."),
            (entry("a//b", EntryKind::File), "empty segment"),
            (entry("./a", EntryKind::File), "`.`"),
            (
                FileEntry {
                    target: Some("../../etc".into()),
                    ..entry("a/l", EntryKind::Symlink)
                },
                "outside",
            ),
            (
                FileEntry {
                    target: Some("/etc/passwd".into()),
                    ..entry("l", EntryKind::Symlink)
                },
                "absolute",
            ),
            (
                FileEntry {
                    sha256: None,
                    ..entry("f", EntryKind::File)
                },
                "sha256",
            ),
        ];
        for (bad, reason) in cases {
            let path = bad.path.clone();
            let err = manifest(vec![bad]).check_paths("k").expect_err(&path);
            assert!(err.to_string().contains(reason), "{path}: {err}");
            assert!(err.to_string().contains(&format!("{path:?}")), "{err}");
        }
        let dup = manifest(vec![entry("x", EntryKind::File), entry("x", EntryKind::File)]);
        assert!(dup.check_paths("k").is_err());
    }

    #[test]
    fn link_targets_inside_the_tree_are_allowed() {
        assert!(check_link_target("a/b/l", "../c").is_ok());
        assert!(check_link_target("a/b/l", "../../c").is_ok());
        assert!(check_link_target("a/b/l", "../../../c").is_err());
        assert!(check_link_target("l", "x/../y").is_ok());
        assert!(check_link_target("l", "x/../../y").is_err());
    }

    fn link(path: &str, target: &str) -> FileEntry {
        FileEntry {
            target: Some(target.to_string()),
            ..entry(path, EntryKind::Symlink)
        }
    }

    #[test]
    fn link_chains_are_resolved_against_the_tree() {
        // `a/b -> ..` stays inside; `c -> a/b/..` looks inside lexically but resolves to the
        // parent of the root.
        let tree = vec![entry("a", EntryKind::Dir), link("a/b", ".."), link("c", "a/b/..")];
        let escaping = escaping_links(&tree);
        assert_eq!(escaping.len(), 1, "{escaping:?}");
        assert_eq!(escaping[0].0, "c");
        let err = manifest(tree).check_paths("k").expect_err("refused");
        assert!(err.to_string().contains("\"c\""), "{err}");
        // Chains that stay inside, loops and dangling links are fine.
        let fine = vec![
            entry("d", EntryKind::Dir),
            entry("d/e", EntryKind::Dir),
            link("d/e/up", ".."),
            link("x", "d/e/up/e/up/.."),
            link("loop1", "loop2"),
            link("loop2", "loop1/.."),
            link("dangling", "nowhere/../d"),
            entry("f", EntryKind::File),
            link("through-file", "f/../../.."),
        ];
        assert!(escaping_links(&fine).is_empty(), "{:?}", escaping_links(&fine));
        // A link that leads to an absolute link.
        let abs = vec![link("abs", "/etc"), link("via", "abs/passwd")];
        assert_eq!(escaping_links(&abs).len(), 2);
        // Past a missing component the rest is lexical.
        assert_eq!(escaping_links(&[link("m", "missing/../..")]).len(), 1);
    }

    #[test]
    fn metadata_past_the_cap_is_refused_without_reading_it_all() {
        let huge = std::io::repeat(b' ').take(MAX_METADATA_BYTES + 10);
        let err = read_json_capped::<serde_json::Value>(huge, "lab/latest/manifest.json").expect_err("too large");
        assert!(matches!(err, ManifestError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("lab/latest/manifest.json"), "{err}");
        assert!(err.to_string().contains(&MAX_METADATA_BYTES.to_string()), "{err}");
        let small: serde_json::Value = read_json_capped(&b"{\"a\": 1}"[..], "k").expect("small");
        assert_eq!(small["a"], 1);
    }

    #[test]
    fn diff_reports_added_removed_and_changed() {
        let old = vec![
            entry("a", EntryKind::File),
            entry("b", EntryKind::File),
            entry("c", EntryKind::File),
        ];
        let mut changed = entry("b", EntryKind::File);
        changed.sha256 = Some("ffff".into());
        let new = vec![entry("a", EntryKind::File), changed, entry("d", EntryKind::File)];
        let d = diff(&old, &new);
        assert_eq!(d.added, ["d"]);
        assert_eq!(d.removed, ["c"]);
        assert_eq!(d.changed, ["b"]);
        assert!(!d.is_empty());
        assert!(diff(&old, &old).is_empty());
        let mut touched = entry("a", EntryKind::File);
        touched.mtime = DateTime::from_timestamp(1_772_200_001, 0).expect("valid time");
        assert_eq!(diff(&old[..1], &[touched]).changed, ["a"]);
    }
}
