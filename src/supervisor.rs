//! The container through the Docker Engine API (bollard): image, create, start, stop, pause,
//! health, events. The restart policy (backoff, crash-loop limit) is pure and lives at the end.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder, InspectContainerOptions,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};

use crate::config::ContainerConfig;
use crate::ports;

/// Label that marks containers spotkeeper created; it never touches a container without it.
pub const MANAGED_LABEL: &str = "io.spotkeeper.managed";
/// Timeout of Docker API calls other than stop (which gets stop_timeout on top).
const API_TIMEOUT: Duration = Duration::from_secs(120);
/// A health probe that takes longer than this failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
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
}

/// What Docker says about the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Missing,
    Created,
    Running,
    Paused,
    Exited,
}

/// One spotkeeper-managed container.
#[derive(Debug, Clone)]
pub struct Container {
    docker: Docker,
    pub name: String,
}

/// Connects to `host` (`unix:///path` or a path), or to `DOCKER_HOST`/the default socket, and
/// negotiates the API version with the engine.
pub async fn connect(host: Option<&str>) -> Result<Docker, SupervisorError> {
    let shown = host
        .map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let connect_error = |source| SupervisorError::Connect {
        host: shown.clone(),
        source,
    };
    let docker = match host {
        Some(host) => {
            let path = host.strip_prefix("unix://").unwrap_or(host);
            Docker::connect_with_unix(path, API_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
        }
        None => Docker::connect_with_local_defaults(),
    }
    .map_err(connect_error)?;
    docker.negotiate_version().await.map_err(connect_error)
}

impl Container {
    pub fn new(docker: Docker, name: &str) -> Container {
        Container {
            docker,
            name: name.to_string(),
        }
    }

    fn error(&self, op: &'static str) -> impl FnOnce(bollard::errors::Error) -> SupervisorError + '_ {
        move |source| SupervisorError::Container {
            op,
            container: self.name.clone(),
            source,
        }
    }

    /// Pulls `image` unless present; returns its digest (`repo@sha256:…`) or id.
    pub async fn ensure_image(&self, image: &str) -> Result<String, SupervisorError> {
        if let Ok(found) = self.docker.inspect_image(image).await {
            return Ok(image_digest(&found).unwrap_or_else(|| image.to_string()));
        }
        tracing::info!(image, "pulling image");
        let (repo, tag) = split_reference(image);
        let options = CreateImageOptionsBuilder::new().from_image(repo).tag(tag).build();
        let credentials = match crate::ecr::registry_of(image) {
            Some((registry, region)) => {
                Some(
                    crate::ecr::credentials(&registry, &region)
                        .await
                        .map_err(|e| SupervisorError::Pull {
                            image: image.to_string(),
                            source: bollard::errors::Error::DockerStreamError { error: e.to_string() },
                        })?,
                )
            }
            None => None,
        };
        let mut progress = self.docker.create_image(Some(options), None, credentials);
        while let Some(step) = progress.next().await {
            step.map_err(|source| SupervisorError::Pull {
                image: image.to_string(),
                source,
            })?;
        }
        let found = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|source| SupervisorError::Pull {
                image: image.to_string(),
                source,
            })?;
        Ok(image_digest(&found).unwrap_or_else(|| image.to_string()))
    }

    /// The container's state, `Missing` when there is none. Refuses foreign containers.
    pub async fn state(&self) -> Result<RunState, SupervisorError> {
        let inspected = match self
            .docker
            .inspect_container(&self.name, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspected) => inspected,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                return Ok(RunState::Missing);
            }
            Err(e) => return Err(self.error("inspect")(e)),
        };
        let managed = inspected
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .is_some_and(|l| l.contains_key(MANAGED_LABEL));
        if !managed {
            return Err(SupervisorError::Foreign {
                container: self.name.clone(),
            });
        }
        let state = inspected.state.unwrap_or_default();
        Ok(if state.paused == Some(true) {
            RunState::Paused
        } else if state.running == Some(true) {
            RunState::Running
        } else if state.started_at.as_deref().is_none_or(|s| s.starts_with("0001")) {
            RunState::Created
        } else {
            RunState::Exited
        })
    }

    /// Creates the container afresh (removing a previous spotkeeper-made one).
    pub async fn create(&self, spec: &ContainerSpec<'_>) -> Result<(), SupervisorError> {
        if self.state().await? != RunState::Missing {
            self.remove().await?;
        }
        let body = spec.body();
        let options = CreateContainerOptionsBuilder::new().name(&self.name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(self.error("create"))?;
        Ok(())
    }

    pub async fn start(&self) -> Result<(), SupervisorError> {
        self.docker
            .start_container(&self.name, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(self.error("start"))
    }

    /// SIGTERM, then SIGKILL after `timeout`. A container that is not running is fine.
    pub async fn stop(&self, timeout: Duration) -> Result<(), SupervisorError> {
        let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(seconds).build();
        // The client's own timeout must outlast Docker's grace period.
        let docker = self.docker.clone().with_timeout(timeout + API_TIMEOUT);
        match docker.stop_container(&self.name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404, ..
            }) => Ok(()),
            Err(e) => Err(self.error("stop")(e)),
        }
    }

    pub async fn remove(&self) -> Result<(), SupervisorError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(&self.name, Some(options)).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(self.error("remove")(e)),
        }
    }

    /// Freezes every process of the container (cgroup freezer).
    pub async fn pause(&self) -> Result<(), SupervisorError> {
        self.docker
            .pause_container(&self.name)
            .await
            .map_err(self.error("pause"))
    }

    /// Thaws the container. Already running is fine.
    pub async fn unpause(&self) -> Result<(), SupervisorError> {
        match self.docker.unpause_container(&self.name).await {
            Ok(()) => Ok(()),
            // "is not paused": 409 on recent engines, 500 on 20.10.
            Err(bollard::errors::Error::DockerResponseServerError { status_code, message })
                if status_code == 409 || message.contains("is not paused") =>
            {
                Ok(())
            }
            Err(e) => Err(self.error("unpause")(e)),
        }
    }

    /// Lifecycle events of this container (`start`, `die`, `oom`, `kill`, …). The stream ends when
    /// the engine goes away; the caller reconnects.
    pub fn events(&self, since: DateTime<Utc>) -> impl Stream<Item = Result<String, bollard::errors::Error>> + use<> {
        let mut filters = HashMap::new();
        filters.insert("type", vec!["container"]);
        filters.insert("container", vec![self.name.as_str()]);
        let since = since.timestamp().to_string();
        let options = EventsOptionsBuilder::new().since(&since).filters(&filters).build();
        // A long-lived stream: no request timeout.
        let docker = self
            .docker
            .clone()
            .with_timeout(Duration::from_secs(u64::from(u32::MAX)));
        docker
            .events(Some(options))
            .map(|event| event.map(|e| e.action.unwrap_or_default()))
    }
}

/// Everything the container is created with.
#[derive(Debug)]
pub struct ContainerSpec<'a> {
    pub config: &'a ContainerConfig,
    pub state_dir: &'a Path,
    pub env_file: Option<&'a Path>,
    pub log_driver: &'a str,
}

impl ContainerSpec<'_> {
    fn body(&self) -> ContainerCreateBody {
        let c = self.config;
        let mut binds = vec![format!("{}:{}:rw", self.state_dir.display(), c.state_mount)];
        // Secrets reach the container as a read-only file, never as environment: environment
        // shows in `docker inspect`.
        if let (Some(env_file), Some(env_mount)) = (self.env_file, &c.env_mount) {
            binds.push(format!("{}:{}:ro", env_file.display(), env_mount));
        }
        let mut exposed = HashMap::new();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for text in &c.ports {
            // Validated with the config.
            if let Ok(mapping) = ports::parse(text) {
                exposed.insert(mapping.container_key(), HashMap::new());
                bindings
                    .entry(mapping.container_key())
                    .or_insert_with(|| Some(Vec::new()))
                    .get_or_insert_with(Vec::new)
                    .push(PortBinding {
                        host_ip: Some(mapping.host_ip.clone()),
                        host_port: Some(mapping.host_port.to_string()),
                    });
            }
        }
        let mut labels = HashMap::new();
        labels.insert(MANAGED_LABEL.to_string(), "true".to_string());
        ContainerCreateBody {
            image: Some(c.image.clone()),
            cmd: (!c.command.is_empty()).then(|| c.command.clone()),
            user: c.user.clone(),
            env: Some(c.environment.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            exposed_ports: Some(exposed),
            labels: Some(labels),
            stop_timeout: i64::try_from(c.stop_timeout.as_secs()).ok(),
            host_config: Some(HostConfig {
                binds: Some(binds),
                port_bindings: Some(bindings),
                // spotkeeper supervises; Docker must not restart behind its back.
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                log_config: Some(HostConfigLogConfig {
                    typ: Some(self.log_driver.to_string()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn image_digest(image: &bollard::models::ImageInspect) -> Option<String> {
    image
        .repo_digests
        .as_ref()
        .and_then(|d| d.first().cloned())
        .or_else(|| image.id.clone())
}

/// `repo:tag` -> (`repo`, `tag`), minding registry ports (`host:5000/repo`) and digests.
fn split_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// Probes `url` with one GET: healthy means a 2xx answer within the probe timeout.
pub async fn probe(url: &str) -> bool {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return false;
    };
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, client.get(uri)).await,
        Ok(Ok(response)) if response.status().is_success()
    )
}

/// When to restart a failed container, and when to give up: exponential backoff from 1 s to
/// 5 min, and at most `limit` failures within `window` (a crash loop).
#[derive(Debug, Clone)]
pub struct RestartPolicyState {
    limit: u32,
    window: Duration,
    failures: Vec<DateTime<Utc>>,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    RestartIn(Duration),
    GiveUp,
}

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl RestartPolicyState {
    pub fn new(limit: u32, window: Duration) -> Self {
        RestartPolicyState {
            limit,
            window,
            failures: Vec::new(),
        }
    }

    /// Records a failure at `now` and decides.
    pub fn failed(&mut self, now: DateTime<Utc>) -> AfterFailure {
        let window = chrono::TimeDelta::from_std(self.window).unwrap_or(chrono::TimeDelta::MAX);
        self.failures.retain(|t| now - *t < window);
        self.failures.push(now);
        let count = u32::try_from(self.failures.len()).unwrap_or(u32::MAX);
        if count >= self.limit {
            return AfterFailure::GiveUp;
        }
        let backoff = MIN_BACKOFF.saturating_mul(1 << (count - 1).min(16)).min(MAX_BACKOFF);
        AfterFailure::RestartIn(backoff)
    }

    /// Failures within the window.
    pub fn recent(&self) -> usize {
        self.failures.len()
    }

    /// Forgets failures (after an operator action, or a new container).
    pub fn reset(&mut self) {
        self.failures.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn references_split_into_repo_and_tag() {
        assert_eq!(
            split_reference("ghcr.io/openclaw/openclaw:2026.9.5"),
            ("ghcr.io/openclaw/openclaw", "2026.9.5")
        );
        assert_eq!(split_reference("localhost:5000/app"), ("localhost:5000/app", "latest"));
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("repo@sha256:abc"), ("repo@sha256:abc", ""));
    }

    #[test]
    fn backoff_doubles_then_gives_up_on_a_crash_loop() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let mut policy = RestartPolicyState::new(4, Duration::from_secs(600));
        assert_eq!(policy.failed(start), AfterFailure::RestartIn(Duration::from_secs(1)));
        assert_eq!(
            policy.failed(start + TimeDelta::seconds(5)),
            AfterFailure::RestartIn(Duration::from_secs(2))
        );
        assert_eq!(
            policy.failed(start + TimeDelta::seconds(10)),
            AfterFailure::RestartIn(Duration::from_secs(4))
        );
        assert_eq!(policy.failed(start + TimeDelta::seconds(20)), AfterFailure::GiveUp);
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let mut policy = RestartPolicyState::new(3, Duration::from_secs(60));
        policy.failed(start);
        policy.failed(start + TimeDelta::seconds(10));
        // Long after: the loop is over; start counting again.
        assert_eq!(
            policy.failed(start + TimeDelta::seconds(600)),
            AfterFailure::RestartIn(Duration::from_secs(1))
        );
        assert_eq!(policy.recent(), 1);
    }
}
