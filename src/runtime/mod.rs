//! The container runtime edge: what the daemon needs of a container engine, as a small trait,
//! with Docker (`docker.rs`, through bollard) as its implementation. The supervisor's policy sees
//! `RunState` and `ContainerEvent`, never Docker's strings or status codes.

mod docker;
pub mod probe;

pub use docker::{Container, ContainerSpec, FALLBACK_LOG_DRIVER, MANAGED_LABEL, SUPERVISOR_HINT, connect};

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

/// A health probe that takes longer than this failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot reach the Docker Engine at {host}: {source}")]
    Connect {
        host: String,
        source: bollard::errors::Error,
    },
    #[error("Docker failed to {op} container {container}: {source}")]
    Container {
        op: &'static str,
        container: String,
        source: bollard::errors::Error,
    },
    #[error("Docker failed to pull image {image}: {source}")]
    Pull {
        image: String,
        source: bollard::errors::Error,
    },
    #[error(
        "a container named {container} exists but was not created by spotkeeper (no {MANAGED_LABEL} label); \
         remove or rename it, spotkeeper will not touch it"
    )]
    Foreign { container: String },
    #[error("container {container} is still frozen after {attempts} attempts to thaw it: {last}")]
    StillFrozen {
        container: String,
        attempts: u32,
        last: String,
    },
}

impl RuntimeError {
    /// The engine answered that the container does not exist.
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            RuntimeError::Container {
                source: bollard::errors::Error::DockerResponseServerError { status_code: 404, .. },
                ..
            }
        )
    }
}

/// What the engine says about the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Missing,
    Created,
    Running,
    Paused,
    Exited,
}

/// A lifecycle event of the container, with the engine's time for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEvent {
    Started,
    /// It died (exited, was killed, or was stopped) at `at`, with the exit code the engine
    /// reported (`None`: not reported).
    Died {
        at: DateTime<Utc>,
        exit_code: Option<i64>,
    },
    /// The kernel's OOM killer hit it; a death follows.
    OutOfMemory,
    Paused,
    Unpaused,
    /// Removed at `at`.
    Destroyed {
        at: DateTime<Utc>,
    },
    /// Anything else (exec, attach, health_status, …).
    Other,
}

impl ContainerEvent {
    /// Maps an engine's action name, time (nanoseconds since the epoch) and the `exitCode`
    /// attribute of a `die` to an event.
    pub fn from_engine(action: &str, time_nano: Option<i64>, exit_code: Option<&str>) -> ContainerEvent {
        let at = time_nano.map(DateTime::from_timestamp_nanos).unwrap_or_else(Utc::now);
        match action {
            "start" | "restart" => ContainerEvent::Started,
            "die" => ContainerEvent::Died {
                at,
                exit_code: exit_code.and_then(|code| code.trim().parse().ok()),
            },
            "oom" => ContainerEvent::OutOfMemory,
            "pause" => ContainerEvent::Paused,
            "unpause" => ContainerEvent::Unpaused,
            "destroy" => ContainerEvent::Destroyed { at },
            _ => ContainerEvent::Other,
        }
    }
}

/// What the daemon does with its one container. Each call is one request to the engine; the
/// caller decides what a failure means.
pub trait ContainerRuntime: Clone + Send + Sync + 'static {
    /// The container's name (for logs and errors).
    fn name(&self) -> &str;
    /// The container's state; `Missing` when there is none.
    fn state(&self) -> impl Future<Output = Result<RunState, RuntimeError>> + Send;
    /// Creates it afresh from `spec` (removing an earlier spotkeeper-made one).
    fn create(&self, spec: &ContainerSpec<'_>) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    fn start(&self) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// SIGTERM, then SIGKILL after `timeout`. Not running is fine.
    fn stop(&self, timeout: Duration) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// SIGKILL now. Not running is fine.
    fn kill(&self) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Freezes every process (cgroup freezer).
    fn pause(&self) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Thaws. Not paused is fine.
    fn unpause(&self) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Lifecycle events since `since`; the stream ends when the engine goes away.
    fn events(&self, since: DateTime<Utc>) -> BoxStream<'static, Result<ContainerEvent, RuntimeError>>;
}

/// Makes sure the container is not frozen: unpauses, then checks that the engine no longer
/// reports it paused (after our own freeze this ends the freeze with the first call); an unpause
/// refused because there is nothing to thaw (stopped, gone) is fine once the engine confirms it.
/// `attempts` tries, backing off from 100 ms to 2 s. A container that stays frozen is an error the
/// caller reports.
pub async fn thaw<R: ContainerRuntime>(runtime: &R, attempts: u32) -> Result<(), RuntimeError> {
    let mut delay = Duration::from_millis(100);
    let mut last = String::from("no attempt made");
    for attempt in 1..=attempts.max(1) {
        let unpaused = runtime.unpause().await;
        match runtime.state().await {
            Ok(RunState::Paused) => {
                last = match unpaused {
                    Err(e) => e.to_string(),
                    Ok(()) => "the engine still reports it paused".into(),
                }
            }
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tracing::warn!(container = runtime.name(), attempt, error = %last, "thaw failed; retrying");
        if attempt < attempts {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
    Err(RuntimeError::StillFrozen {
        container: runtime.name().to_string(),
        attempts,
        last,
    })
}

/// What one GET of a probe URL answered: the status and the start of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The most of a probe's body read: OpenClaw's answers are a few hundred bytes.
const PROBE_BODY_LIMIT: usize = 64 * 1024;

/// One GET of `url` within the probe timeout, with `bearer` as the `Authorization` when `url`
/// is on this machine (OpenClaw gives the details of a failing probe to a caller holding its
/// gateway token); `Err` names what failed (refused, timed out, …). Nothing of the token is ever
/// part of an error.
pub async fn fetch(url: &str, bearer: Option<&str>) -> Result<Answer, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let uri = url.parse::<hyper::Uri>().map_err(|e| format!("not a URL: {e}"))?;
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    // The token goes only to this machine: a probe URL elsewhere over plain HTTP would carry the
    // gateway's credential across a network.
    let local = uri
        .host()
        .is_some_and(|host| matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1"));
    let mut request = hyper::Request::get(uri);
    if let Some(token) = bearer.filter(|_| local) {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::new())
        .map_err(|_| "cannot build the probe request".to_string())?;
    let answer = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        // A body larger than the limit is cut there: its start is enough to judge it.
        let mut body = Vec::new();
        let mut limited = Limited::new(response.into_body(), PROBE_BODY_LIMIT);
        while let Some(frame) = limited.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        body.extend_from_slice(data);
                    }
                }
                Err(_) => break,
            }
        }
        Ok(Answer { status, body })
    };
    tokio::time::timeout(PROBE_TIMEOUT, answer)
        .await
        .map_err(|_| format!("no answer within {}s", PROBE_TIMEOUT.as_secs()))?
}
