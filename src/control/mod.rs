//! The control socket between the CLI and a running daemon: one JSON request per connection,
//! one JSON response. The socket is 0600 in a 0700 directory (root only).
//!
//! Every request says who sends it (`Call`): the repository and the state paths of the config it
//! was sent with. A daemon acts only for a caller whose config names the same ones: two configs
//! that share one `[daemon] socket` must never have one's `restore --force` carried out on the
//! other's state. The protocol has a version; a daemon from before it finds no `command` at the
//! top of a `Call`, answers "bad request" and does nothing.
//!
//! `status` holds what a `status` request answers (what `spotkeeper status` shows).

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::config::Config;
use crate::exit::Exit;
use crate::restore::RestoreReport;
use crate::snapshot::SnapshotOutcome;
use crate::snapshot_id::SnapshotId;

mod status;
pub use status::{ContainerStatus, PruneStatus, SnapshotStatus, Status, VerifyStatus};

/// Longest a request may take: a restore of a large state through the daemon.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// The protocol's version: 2 added the sender's identity to every request. A daemon refuses
/// any other.
pub const PROTOCOL: u32 = 2;
/// How a daemon from before `PROTOCOL` answers a request it cannot parse (and does nothing).
const OLD_DAEMON_BAD_REQUEST: &str = "bad request: ";

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
    #[error(
        "cannot reach the control socket {path}: this user (uid {uid}) may not look into {dir}, so whether a \
         spotkeeper daemon runs there cannot be told; nothing was done. Run this command as root, or name another \
         `[daemon] socket` in the config"
    )]
    Unseen { path: PathBuf, dir: PathBuf, uid: u32 },
    #[error(
        "a spotkeeper daemon may be running on {path}, but this user (uid {uid}) may not connect to it; nothing was \
         done. Run this command as root, or, if that daemon is not this config's, name another `[daemon] socket` \
         in the config"
    )]
    Forbidden { path: PathBuf, uid: u32 },
    #[error(
        "the daemon on {path} did not understand this request ({message}): it is older than this spotkeeper and \
         cannot check that a request comes from its own config, so nothing was done. Restart it on this version \
         (`systemctl restart spotkeeper`)"
    )]
    OlderDaemon { path: PathBuf, message: String },
}

impl ControlError {
    /// `Unseen`, `Forbidden` and `OlderDaemon` refuse to go on without the daemon (it may be
    /// running); the rest are I/O failures.
    pub fn exit(&self) -> Exit {
        match self {
            ControlError::Unseen { .. } | ControlError::Forbidden { .. } | ControlError::OlderDaemon { .. } => {
                Exit::Refused
            }
            ControlError::Io { .. }
            | ControlError::AlreadyRunning { .. }
            | ControlError::Protocol(_)
            | ControlError::Hangup { .. } => Exit::Io,
        }
    }
}

/// What goes over the socket: a request and who sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// `PROTOCOL` of the sender.
    pub protocol: u32,
    pub sender: Identity,
    pub request: Request,
}

impl Call {
    /// `request`, sent with the identity of `config`.
    pub fn new(config: &Config, request: Request) -> Call {
        Call {
            protocol: PROTOCOL,
            sender: Identity::of(config),
            request,
        }
    }
}

/// What a daemon acts on: its repository and its state paths. A request is carried out only
/// when the sender's config names the same ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub bucket: String,
    pub prefix: String,
    /// The configured S3 endpoint, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Every state path, in config order.
    pub paths: Vec<NamedPath>,
}

/// One state path: its name and host directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPath {
    pub name: String,
    pub dir: PathBuf,
}

impl Identity {
    pub fn of(config: &Config) -> Identity {
        Identity {
            bucket: config.s3.bucket.clone(),
            prefix: config.s3.prefix.clone(),
            endpoint: config.s3.endpoint.clone(),
            paths: config
                .state
                .paths
                .iter()
                .map(|p| NamedPath {
                    name: p.name.clone(),
                    dir: p.dir.clone(),
                })
                .collect(),
        }
    }

    /// One line: `s3://bucket/prefix (endpoint URL), state paths name=dir, …`.
    pub fn describe(&self) -> String {
        let mut text = if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        };
        if let Some(endpoint) = &self.endpoint {
            text.push_str(&format!(" (endpoint {endpoint})"));
        }
        let paths: Vec<String> = self
            .paths
            .iter()
            .map(|p| format!("{}={}", p.name, p.dir.display()))
            .collect();
        text.push_str(&format!(", state paths {}", paths.join(", ")));
        text
    }

    /// Whether the daemon whose identity is `self`, on `socket`, may carry out `call`; the
    /// refusal names both sides and what to do.
    pub fn admit(&self, call: &Call, socket: &Path) -> Result<(), String> {
        if call.protocol != PROTOCOL {
            return Err(format!(
                "the daemon on {} speaks control protocol {PROTOCOL} and this request is protocol {}: the command \
                 and the daemon are different versions of spotkeeper; nothing was done. Run the command of the \
                 daemon's version, or restart the daemon on this one",
                socket.display(),
                call.protocol
            ));
        }
        if call.sender != *self {
            return Err(format!(
                "the daemon on {} serves {}, but this request comes from a config for {}; nothing was stopped, \
                 snapshotted or restored. Two configs share this control socket: give each its own `[daemon] \
                 socket`, or run the command with the daemon's config",
                socket.display(),
                self.describe(),
                call.sender.describe()
            ));
        }
        Ok(())
    }
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

/// Reads one call from a connection.
pub async fn read_call(stream: &mut UnixStream) -> io::Result<Call> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    serde_json::from_str(&line).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{e} (this daemon speaks control protocol {PROTOCOL}, in which every request names its sender's \
                 repository and state paths: a spotkeeper command older than the daemon cannot talk to it)"
            ),
        )
    })
}

/// Writes one reply.
pub async fn write_reply(stream: &mut UnixStream, response: &Reply) -> io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(io::Error::other)?;
    text.push('\n');
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await
}

/// Sends `call` to the daemon at `path`. `Ok(None)` when no daemon is running there. A socket
/// this user may not reach is an error, never "no daemon": one may be running.
pub async fn call(path: &Path, call: &Call) -> Result<Option<Reply>, ControlError> {
    let io_error = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(no_access(path)),
        Err(e) => return Err(io_error(e)),
    };
    let mut text = serde_json::to_string(call).map_err(|e| ControlError::Protocol(e.to_string()))?;
    text.push('\n');
    stream.write_all(text.as_bytes()).await.map_err(io_error)?;
    let mut line = String::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, BufReader::new(&mut stream).read_line(&mut line)).await;
    match read {
        Ok(Ok(0)) => Err(ControlError::Hangup {
            path: path.to_path_buf(),
        }),
        Ok(Ok(_)) => match serde_json::from_str(&line) {
            Ok(Reply::Error(e)) if e.kind == Exit::Usage.kind() && e.message.starts_with(OLD_DAEMON_BAD_REQUEST) => {
                Err(ControlError::OlderDaemon {
                    path: path.to_path_buf(),
                    message: e.message,
                })
            }
            Ok(reply) => Ok(Some(reply)),
            Err(e) => Err(ControlError::Protocol(format!("{e}: {line:?}"))),
        },
        Ok(Err(e)) => Err(io_error(e)),
        Err(_) => Err(io_error(io::Error::new(
            io::ErrorKind::TimedOut,
            "the daemon did not answer",
        ))),
    }
}

/// Why connecting to `path` was denied: the directory cannot be looked into (nothing can be told
/// about a daemon), or the socket is there and not this user's.
fn no_access(path: &Path) -> ControlError {
    let uid = rustix::process::geteuid().as_raw();
    match std::fs::symlink_metadata(path) {
        Ok(_) => ControlError::Forbidden {
            path: path.to_path_buf(),
            uid,
        },
        Err(_) => ControlError::Unseen {
            path: path.to_path_buf(),
            dir: path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/")),
            uid,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request type of a daemon from before `PROTOCOL` (what it parses every line as).
    #[derive(Debug, Deserialize)]
    #[serde(tag = "command", rename_all = "kebab-case")]
    #[allow(dead_code)]
    enum BeforeProtocol {
        Status,
        Snapshot,
        Restore {
            snapshot: Option<SnapshotId>,
            #[serde(default)]
            path: Option<String>,
        },
    }

    fn identity(prefix: &str) -> Identity {
        Identity {
            bucket: "b".into(),
            prefix: prefix.into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            paths: vec![NamedPath {
                name: "state".into(),
                dir: "/opt/openclaw/.openclaw".into(),
            }],
        }
    }

    #[test]
    fn a_daemon_from_before_the_protocol_cannot_parse_a_call() {
        for request in [
            Request::Status,
            Request::Snapshot,
            Request::Restore {
                snapshot: None,
                path: None,
            },
        ] {
            let call = Call {
                protocol: PROTOCOL,
                sender: identity("p"),
                request,
            };
            let line = serde_json::to_string(&call).expect("json");
            assert!(serde_json::from_str::<BeforeProtocol>(&line).is_err(), "{line}");
            let back: Call = serde_json::from_str(&line).expect("round trip");
            assert_eq!(back.sender, call.sender);
        }
    }

    #[test]
    fn a_request_from_another_config_or_version_is_refused_naming_both() {
        let daemon = identity("mine");
        let socket = Path::new("/run/spotkeeper/control.sock");
        let ours = Call {
            protocol: PROTOCOL,
            sender: identity("mine"),
            request: Request::Snapshot,
        };
        assert!(daemon.admit(&ours, socket).is_ok());
        let other = Call {
            sender: identity("theirs"),
            ..ours.clone()
        };
        let why = daemon.admit(&other, socket).expect_err("refused");
        assert!(why.contains("s3://b/mine") && why.contains("s3://b/theirs"), "{why}");
        assert!(why.contains("/run/spotkeeper/control.sock"), "{why}");
        let mut moved = identity("mine");
        moved.paths[0].dir = "/elsewhere".into();
        let why = daemon
            .admit(
                &Call {
                    sender: moved,
                    ..ours.clone()
                },
                socket,
            )
            .expect_err("refused");
        assert!(why.contains("state=/elsewhere"), "{why}");
        let newer = Call {
            protocol: PROTOCOL + 1,
            ..ours
        };
        assert!(daemon.admit(&newer, socket).expect_err("refused").contains("protocol"));
    }
}
