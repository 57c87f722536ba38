//! Exit codes, documented in the README. Scripts and systemd rely on them: keep them stable.
//!
//! One type, and one mapping from each module's errors to it. The CLI and the daemon both use
//! it: a command that goes through the daemon exits with the code the daemon computed with these
//! same functions, so a failure has one code whichever path it took.

use serde::{Deserialize, Serialize};

use crate::manifest::ManifestError;
use crate::repository::RepositoryError;
use crate::restore::RestoreError;
use crate::snapshot::SnapshotError;
use crate::store::{Problem, StoreError};

/// The process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// An error that fits no other class (a bug, or an unexpected local failure).
    Failure = 1,
    /// Bad command line (clap uses 2 as well).
    Usage = 2,
    /// The config file is missing or invalid. systemd does not restart on it.
    Config = 3,
    /// The snapshot, repository content or bucket asked for does not exist.
    NotFound = 4,
    /// An archive or manifest failed verification.
    Integrity = 5,
    /// S3, SSM, Docker or the local disk failed (after retries).
    Io = 6,
    /// Refused to protect data.
    Refused = 7,
    /// Some objects could not be deleted by `prune`.
    Partial = 8,
}

impl Exit {
    /// Every code, in order (the README's table is tested against it).
    pub const ALL: [Exit; 9] = [
        Exit::Ok,
        Exit::Failure,
        Exit::Usage,
        Exit::Config,
        Exit::NotFound,
        Exit::Integrity,
        Exit::Io,
        Exit::Refused,
        Exit::Partial,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// A stable one-word name, for `--json` errors and logs.
    pub fn kind(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Failure => "failure",
            Exit::Usage => "usage",
            Exit::Config => "config",
            Exit::NotFound => "not-found",
            Exit::Integrity => "integrity",
            Exit::Io => "io",
            Exit::Refused => "refused",
            Exit::Partial => "partial",
        }
    }

    /// The code a daemon sent over the control socket (unknown codes are failures).
    pub fn from_code(code: u8) -> Exit {
        Exit::ALL
            .into_iter()
            .find(|e| e.code() == code)
            .unwrap_or(Exit::Failure)
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

/// S3 errors.
pub fn of_store(error: &StoreError) -> Exit {
    if error.problem() == Some(&Problem::NoSuchBucket) {
        Exit::NotFound
    } else {
        Exit::Io
    }
}

/// Manifest errors: all of them mean the repository content cannot be trusted as it is.
pub fn of_manifest(_error: &ManifestError) -> Exit {
    Exit::Integrity
}

pub fn of_repository(error: &RepositoryError) -> Exit {
    match error {
        RepositoryError::Store(e) => of_store(e),
        RepositoryError::Manifest(e) => of_manifest(e),
        RepositoryError::Head(_) => Exit::Integrity,
        RepositoryError::Format2(e) => of_format2(e),
        RepositoryError::Password(
            crate::format2::PasswordError::Invalid { .. } | crate::format2::PasswordError::Exposed { .. },
        ) => Exit::Config,
        RepositoryError::Password(_) => Exit::Io,
        RepositoryError::NeedsPassword { .. } => Exit::Config,
    }
}

pub fn of_format2(error: &crate::format2::Format2Error) -> Exit {
    use crate::format2::Format2Error;
    if let Some(store) = error.store_error() {
        return of_store(store);
    }
    match error {
        _ if error.is_wrong_password() => Exit::Config,
        _ if error.is_damage() => Exit::Integrity,
        Format2Error::Check { .. }
        | Format2Error::Unsafe { .. }
        | Format2Error::Damaged { .. }
        | Format2Error::ConfigMissing { .. }
        | Format2Error::ConfigUnreadable { .. } => Exit::Integrity,
        Format2Error::Missing { .. } | Format2Error::NoSnapshot { .. } => Exit::NotFound,
        Format2Error::Exists { .. } => Exit::Refused,
        Format2Error::Task(_) => Exit::Failure,
        Format2Error::Repository { .. } | Format2Error::Source { .. } | Format2Error::Write { .. } => Exit::Io,
    }
}

pub fn of_restore(error: &RestoreError) -> Exit {
    match error {
        RestoreError::Repository(e) => of_repository(e),
        RestoreError::Archive(e) if e.is_integrity() => Exit::Integrity,
        RestoreError::Archive(_) | RestoreError::Download { .. } | RestoreError::Io { .. } => Exit::Io,
        RestoreError::NoSnapshot { .. }
        | RestoreError::SnapshotNotFound { .. }
        | RestoreError::ArchiveMissing { .. } => Exit::NotFound,
        RestoreError::Refused { .. }
        | RestoreError::LatestMissing { .. }
        | RestoreError::Ambiguous { .. }
        | RestoreError::Paths { .. }
        | RestoreError::Journal { .. } => Exit::Refused,
        RestoreError::Unsafe { .. } => Exit::Integrity,
        RestoreError::Task(_) => Exit::Failure,
    }
}

pub fn of_snapshot(error: &SnapshotError) -> Exit {
    match error {
        SnapshotError::Repository(e) => of_repository(e),
        SnapshotError::Root { .. } => Exit::Io,
        SnapshotError::Diverged { .. } | SnapshotError::LatestMoved { .. } => Exit::Refused,
        SnapshotError::Task(_) => Exit::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's "Exit codes" table lists exactly these codes, in order, and no other.
    #[test]
    fn every_code_is_documented_in_the_readme() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
        let section = readme
            .split("## Exit codes")
            .nth(1)
            .expect("README has an Exit codes section");
        let documented: Vec<u8> = section
            .lines()
            .skip_while(|l| !l.starts_with("| code"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.trim_start_matches('|')
                    .split('|')
                    .next()
                    .and_then(|c| c.trim().parse().ok())
                    .expect("a numeric code")
            })
            .collect();
        let ours: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(documented, ours);
        for exit in Exit::ALL {
            assert_eq!(Exit::from_code(exit.code()), exit);
        }
        assert_eq!(Exit::from_code(200), Exit::Failure);
    }

    #[test]
    fn errors_map_to_the_same_code_on_every_path() {
        use crate::snapshot_id::SnapshotId;
        let id: SnapshotId = "2026-02-27-14-00".parse().expect("id");
        let repository = "s3://b/p".to_string();
        let context = crate::store::Context {
            op: "get",
            bucket: "b".into(),
            key: "k".into(),
            endpoint: "127.0.0.1:9".into(),
            timeout: std::time::Duration::from_secs(30),
            attempts: 5,
        };
        let no_bucket = StoreError::request(Problem::NoSuchBucket, context.clone());
        let unreachable = StoreError::request(
            Problem::Unreachable {
                cause: "connection refused".into(),
            },
            context,
        );
        let cases: Vec<(Exit, Exit)> = vec![
            (of_store(&no_bucket), Exit::NotFound),
            (of_store(&unreachable), Exit::Io),
            (
                of_restore(&RestoreError::NoSnapshot {
                    repository: repository.clone(),
                }),
                Exit::NotFound,
            ),
            (
                of_restore(&RestoreError::SnapshotNotFound {
                    repository: repository.clone(),
                    id,
                }),
                Exit::NotFound,
            ),
            (
                of_restore(&RestoreError::ArchiveMissing {
                    repository: repository.clone(),
                    id,
                    keys: String::new(),
                }),
                Exit::NotFound,
            ),
            (
                of_restore(&RestoreError::Repository(RepositoryError::Store(no_bucket))),
                Exit::NotFound,
            ),
            (
                of_restore(&RestoreError::LatestMissing {
                    repository: repository.clone(),
                    newest: id,
                    count: 1,
                }),
                Exit::Refused,
            ),
            (
                of_snapshot(&SnapshotError::Diverged {
                    repository: repository.clone(),
                    latest: id,
                    origin: String::new(),
                }),
                Exit::Refused,
            ),
            (
                of_snapshot(&SnapshotError::Repository(RepositoryError::Store(unreachable))),
                Exit::Io,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
