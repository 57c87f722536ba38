//! Exit codes, documented in the README. Scripts and systemd rely on them: keep them stable.

/// Success.
pub const OK: u8 = 0;
/// An error that fits no other class (a bug, or an unexpected local failure).
pub const FAILURE: u8 = 1;
/// Bad command line (clap uses 2 as well).
pub const USAGE: u8 = 2;
/// The config file is missing or invalid. systemd does not restart on it.
pub const CONFIG: u8 = 3;
/// The snapshot, repository content or bucket asked for does not exist.
pub const NOT_FOUND: u8 = 4;
/// An archive or manifest failed verification.
pub const INTEGRITY: u8 = 5;
/// S3 or the local disk failed (after retries).
pub const IO: u8 = 6;
/// Refused to protect data: a non-empty restore target, or a state that does not descend from `latest/`.
pub const REFUSED: u8 = 7;
/// Some objects could not be deleted by `prune`.
pub const PARTIAL: u8 = 8;
