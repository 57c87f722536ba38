//! Local state that a restore moved aside (`<state dir>.displaced/<time>/`) is kept, never
//! deleted silently, but not forever: every copy is a full state on the root disk. The newest
//! `KEEP` copies stay; older ones are removed, each with a log line naming it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::restore::displaced_root;

/// Displaced copies kept per state directory (the newest ones).
pub const KEEP: usize = 2;

/// Which of `names` (folder names under the displaced root, which sort by time:
/// `2026-02-27T15-02-11Z`) to remove so that the newest `keep` remain. Pure.
pub fn plan(names: &[String], keep: usize) -> Vec<String> {
    // `2026-02-27T15-02-11Z`, then `…Z-2`, `…Z-3` for restores within the same second.
    let order = |name: &String| match name.split_once("Z-") {
        Some((stamp, n)) => (stamp.to_string(), n.parse::<u32>().unwrap_or(u32::MAX)),
        None => (name.trim_end_matches('Z').to_string(), 1),
    };
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort_by_key(|name| order(name));
    let excess = sorted.len().saturating_sub(keep.max(1));
    sorted.into_iter().take(excess).cloned().collect()
}

/// Removes old displaced copies of `state_dir`; returns what was removed. Errors are logged
/// and skipped: this is housekeeping, never a reason to fail.
pub fn prune(state_dir: &Path, keep: usize) -> Vec<PathBuf> {
    let root = displaced_root(state_dir);
    let Ok(entries) = fs::read_dir(&root) else {
        return Vec::new();
    };
    // A holder left empty (a restore killed before its swaps, or one undone) keeps nothing and
    // must not count against the copies that do: removed (only if still empty).
    let names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| fs::remove_dir(e.path()).is_err())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let mut removed = Vec::new();
    for name in plan(&names, keep) {
        let path = root.join(&name);
        match fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), kept = keep, "removed an old copy of displaced local state");
                removed.push(path);
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove an old displaced copy"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_copies() {
        let names: Vec<String> = [
            "2026-02-27T15-02-11Z",
            "2026-02-25T09-00-00Z",
            "2026-02-28T00-00-01Z",
            "2026-02-26T12-30-00Z",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(plan(&names, 2), vec!["2026-02-25T09-00-00Z", "2026-02-26T12-30-00Z"]);
        assert!(plan(&names, 4).is_empty());
        assert!(plan(&[], 2).is_empty());
        let same_second: Vec<String> = [
            "2026-02-27T15-02-11Z-10",
            "2026-02-27T15-02-11Z",
            "2026-02-27T15-02-11Z-2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            plan(&same_second, 1),
            vec!["2026-02-27T15-02-11Z", "2026-02-27T15-02-11Z-2"]
        );
        // The newest is always kept.
        assert_eq!(plan(&names, 0).len(), 3);
    }

    #[test]
    fn prune_removes_only_old_copies_beside_the_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let root = displaced_root(&state);
        for name in ["2026-01-01T00-00-00Z", "2026-01-02T00-00-00Z", "2026-01-03T00-00-00Z"] {
            fs::create_dir_all(root.join(name).join("state")).expect("mkdir");
            fs::write(root.join(name).join("state/f"), b"x").expect("write");
        }
        let removed = prune(&state, 2);
        assert_eq!(removed, vec![root.join("2026-01-01T00-00-00Z")]);
        assert!(root.join("2026-01-02T00-00-00Z/state/f").exists());
        assert!(root.join("2026-01-03T00-00-00Z/state/f").exists());
        assert!(prune(&dir.path().join("nothing-here"), 2).is_empty());
    }
}
