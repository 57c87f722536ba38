//! The control socket between the CLI and a running daemon: one JSON request per connection,
//! one JSON response. The socket is 0600 in a 0700 directory (root only).

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::daemon::Status;
use crate::exit::Exit;
use crate::restore::RestoreReport;
use crate::snapshot::SnapshotOutcome;
use crate::snapshot_id::SnapshotId;

/// Longest a request may take: a restore of a large state through the daemon.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("another spotkeeper daemon is already running (it answers on {path})")]
    AlreadyRunning { path: PathBuf },
    #[error("the daemon sent an answer that is not valid JSON: {0}")]
    Protocol(String),
    #[error(
        "the daemon on {path} closed the connection without answering: it may have stopped or crashed \
         (`systemctl status spotkeeper`, `journalctl -u spotkeeper`)"
    )]
    Hangup { path: PathBuf },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Snapshot,
    Restore {
        snapshot: Option<SnapshotId>,
        /// Only this state path (`restore --path NAME`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
}

/// The daemon's answer: one variant per request, or an error with the exit code the CLI uses.
/// Both sides use these types, so the `--json` output is the same with or without the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Status(Box<Status>),
    Snapshot(SnapshotOutcome),
    Restore(ManualRestore),
    Error(ErrorReply),
}

/// A failure, as the daemon classified it (`crate::exit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: u8,
    pub kind: String,
    pub message: String,
}

/// What a restore through the daemon did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManualRestore {
    pub restored: RestoreReport,
    /// The snapshot of the state that the restore replaced, taken first.
    pub safety_snapshot: SnapshotOutcome,
}

impl Reply {
    pub fn error(message: String, exit: Exit) -> Self {
        Reply::Error(ErrorReply {
            code: exit.code(),
            kind: exit.kind().to_string(),
            message,
        })
    }
}

/// Binds the socket, refusing when a live daemon already answers on it; a stale socket file
/// from a crash is replaced.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io_error = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::AlreadyRunning {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io_error)?;
    }
    let listener = UnixListener::bind(path).map_err(io_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_error)?;
    Ok(listener)
}

/// Reads one request from a connection.
pub async fn read_request(stream: &mut UnixStream) -> io::Result<Request> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one reply.
pub async fn write_reply(stream: &mut UnixStream, response: &Reply) -> io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(io::Error::other)?;
    text.push('\n');
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await
}

/// Sends `request` to the daemon at `path`. `Ok(None)` when no daemon is running there.
pub async fn call(path: &Path, request: &Request) -> Result<Option<Reply>, ControlError> {
    let io_error = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    let mut text = serde_json::to_string(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    text.push('\n');
    stream.write_all(text.as_bytes()).await.map_err(io_error)?;
    let mut line = String::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, BufReader::new(&mut stream).read_line(&mut line)).await;
    match read {
        Ok(Ok(0)) => Err(ControlError::Hangup {
            path: path.to_path_buf(),
        }),
        Ok(Ok(_)) => serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| ControlError::Protocol(format!("{e}: {line:?}"))),
        Ok(Err(e)) => Err(io_error(e)),
        Err(_) => Err(io_error(io::Error::new(
            io::ErrorKind::TimedOut,
            "the daemon did not answer",
        ))),
    }
}
