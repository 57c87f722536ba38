//! Change tracking with inotify (filled in below).

use std::collections::BTreeSet;

/// Paths that changed since the last `take`, relative to the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Entries to sync: a file or link for its content, a directory with everything under it.
    pub paths: BTreeSet<String>,
    /// Directories to refresh for their own mode, owner and mtime only ("" is the root).
    pub dirs: BTreeSet<String>,
}

/// What a tracker reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    Paths(ChangeSet),
    FullWalk { reason: String },
}
