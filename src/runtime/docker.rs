//! The container through the Docker Engine API (bollard): image, create, start, stop, kill,
//! pause, events. The only module that speaks Docker; the rest of spotkeeper sees
//! `ContainerRuntime`, `RunState` and `ContainerEvent`.

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
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{ContainerEvent, ContainerRuntime, RunState, RuntimeError};
use crate::config::ContainerConfig;
use crate::ports;

/// Label that marks containers spotkeeper created; it never touches a container without it.
pub const MANAGED_LABEL: &str = "io.spotkeeper.managed";
/// Timeout of Docker API calls other than stop (which gets stop_timeout on top).
const API_TIMEOUT: Duration = Duration::from_secs(120);
/// The log driver used when the configured one is not available on this engine.
pub const FALLBACK_LOG_DRIVER: &str = "local";

/// One spotkeeper-managed container.
#[derive(Debug, Clone)]
pub struct Container {
    docker: Docker,
    pub name: String,
}

/// Connects to `host` (`unix:///path` or a path), or to `DOCKER_HOST`/the default socket, and
/// negotiates the API version with the engine.
pub async fn connect(host: Option<&str>) -> Result<Docker, RuntimeError> {
    let shown = host
        .map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let connect_error = |source| RuntimeError::Connect {
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

    fn error(&self, op: &'static str) -> impl FnOnce(bollard::errors::Error) -> RuntimeError + '_ {
        move |source| RuntimeError::Container {
            op,
            container: self.name.clone(),
            source,
        }
    }

    /// Pulls `image` unless present; returns its digest (`repo@sha256:…`) or id.
    pub async fn ensure_image(&self, image: &str) -> Result<String, RuntimeError> {
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
                        .map_err(|e| RuntimeError::Pull {
                            image: image.to_string(),
                            source: bollard::errors::Error::DockerStreamError { error: e.to_string() },
                        })?,
                )
            }
            None => None,
        };
        let mut progress = self.docker.create_image(Some(options), None, credentials);
        while let Some(step) = progress.next().await {
            crate::liveness::mark();
            step.map_err(|source| RuntimeError::Pull {
                image: image.to_string(),
                source,
            })?;
        }
        let found = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|source| RuntimeError::Pull {
                image: image.to_string(),
                source,
            })?;
        Ok(image_digest(&found).unwrap_or_else(|| image.to_string()))
    }

    pub async fn remove(&self) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(&self.name, Some(options)).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(self.error("remove")(e)),
        }
    }

    /// The log drivers this engine offers (`docker info`), `None` when it does not say.
    pub async fn log_drivers(&self) -> Option<Vec<String>> {
        let info = self.docker.info().await.ok()?;
        info.plugins.and_then(|p| p.log)
    }
}

impl ContainerRuntime for Container {
    fn name(&self) -> &str {
        &self.name
    }

    /// The container's state, `Missing` when there is none. Refuses foreign containers.
    async fn state(&self) -> Result<RunState, RuntimeError> {
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
            return Err(RuntimeError::Foreign {
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
    async fn create(&self, spec: &ContainerSpec<'_>) -> Result<(), RuntimeError> {
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

    async fn kill(&self) -> Result<(), RuntimeError> {
        match self
            .docker
            .kill_container(&self.name, None::<bollard::query_parameters::KillContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            // Not running (409 on recent engines, 500 "is not running" on 20.10) or gone.
            Err(bollard::errors::Error::DockerResponseServerError { status_code, message })
                if status_code == 404 || status_code == 409 || message.contains("is not running") =>
            {
                Ok(())
            }
            Err(e) => Err(self.error("kill")(e)),
        }
    }

    async fn start(&self) -> Result<(), RuntimeError> {
        self.docker
            .start_container(&self.name, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(self.error("start"))
    }

    /// SIGTERM, then SIGKILL after `timeout`. A container that is not running is fine.
    async fn stop(&self, timeout: Duration) -> Result<(), RuntimeError> {
        let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(seconds).build();
        // The client's own timeout must outlast Docker's grace period.
        let docker = self.docker.clone().with_timeout(timeout + API_TIMEOUT);
        // Docker's grace period can be long: waiting it out is not a hang (the watchdog).
        let stopped =
            crate::liveness::alive_while(timeout + API_TIMEOUT, docker.stop_container(&self.name, Some(options)));
        match stopped.await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404, ..
            }) => Ok(()),
            Err(e) => Err(self.error("stop")(e)),
        }
    }

    /// Freezes every process of the container (cgroup freezer).
    async fn pause(&self) -> Result<(), RuntimeError> {
        self.docker
            .pause_container(&self.name)
            .await
            .map_err(self.error("pause"))
    }

    /// Thaws the container. Already running is fine.
    async fn unpause(&self) -> Result<(), RuntimeError> {
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

    fn events(&self, since: DateTime<Utc>) -> BoxStream<'static, Result<ContainerEvent, RuntimeError>> {
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
        let name = self.name.clone();
        docker
            .events(Some(options))
            .map(move |event| match event {
                Ok(e) => Ok(ContainerEvent::from_engine(
                    e.action.as_deref().unwrap_or_default(),
                    e.time_nano,
                    e.actor
                        .as_ref()
                        .and_then(|actor| actor.attributes.as_ref())
                        .and_then(|attributes| attributes.get("exitCode"))
                        .map(String::as_str),
                )),
                Err(source) => Err(RuntimeError::Container {
                    op: "watch events of",
                    container: name.clone(),
                    source,
                }),
            })
            .boxed()
    }
}

/// Everything the container is created with.
#[derive(Debug)]
pub struct ContainerSpec<'a> {
    pub config: &'a ContainerConfig,
    /// The state's directories and their mounts (each `StatePath::mount` is set when there is
    /// a container: the config checks it).
    pub paths: &'a [crate::config::StatePath],
    pub env_file: Option<&'a Path>,
    pub log_driver: &'a str,
}

impl ContainerSpec<'_> {
    fn body(&self) -> ContainerCreateBody {
        let c = self.config;
        // Outer mounts first (OpenClaw's workspace is mounted inside its config directory).
        let mut mounts: Vec<(&Path, &str)> = self
            .paths
            .iter()
            .map(|p| (p.dir.as_path(), p.mount.as_deref().unwrap_or(c.state_mount.as_str())))
            .collect();
        mounts.sort_by_key(|(_, mount)| mount.trim_end_matches('/').matches('/').count());
        let mut binds: Vec<String> = mounts
            .iter()
            .map(|(dir, mount)| format!("{}:{}:rw", dir.display(), mount))
            .collect();
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
        // spotkeeper is the app's supervisor: OpenClaw then exits cleanly for a restart instead of
        // spawning a detached copy that would die with the container. The config may override it.
        let mut environment = c.environment.clone();
        for (key, value) in SUPERVISOR_HINT {
            environment.entry(key.to_string()).or_insert_with(|| value.to_string());
        }
        let memory = c
            .memory_limit
            .bytes(total_memory())
            .and_then(|bytes| i64::try_from(bytes).ok());
        ContainerCreateBody {
            image: Some(c.image.clone()),
            cmd: (!c.command.is_empty()).then(|| c.command.clone()),
            user: c.user.clone(),
            hostname: Some(c.hostname.clone()),
            env: Some(environment.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            exposed_ports: Some(exposed),
            labels: Some(labels),
            stop_timeout: i64::try_from(c.stop_timeout.as_secs()).ok(),
            host_config: Some(HostConfig {
                init: Some(c.init),
                cap_drop: Some(c.cap_drop.clone()),
                cap_add: (!c.cap_add.is_empty()).then(|| c.cap_add.clone()),
                security_opt: c.no_new_privileges.then(|| vec!["no-new-privileges:true".to_string()]),
                pids_limit: c.pids_limit,
                memory,
                // No swap beyond the limit: a gateway that outgrows it is killed and restarted,
                // not slowed to a crawl on a small instance.
                memory_swap: memory,
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

/// The supervisor hint OpenClaw reads (`src/infra/supervisor-markers.ts`, read by
/// `src/infra/process-respawn.ts`): with it, a "full process restart" after a config or auth
/// change exits 0 and leaves the start to its supervisor (spotkeeper starts it again at once);
/// without it, older builds spawn a detached copy that dies with the container. It also sets the
/// gateway's drain: it cannot read the unit's stop timeout from inside the container and drains
/// within its logged 90-second default (openclaw/openclaw#150954) instead of 330 s.
pub const SUPERVISOR_HINT: [(&str, &str); 1] = [("OPENCLAW_SYSTEMD_UNIT", "spotkeeper.service")];

/// The machine's memory in bytes (0 when unknown).
// `totalram` is a C `unsigned long`: 64 bits here, 32 on 32-bit targets.
#[allow(clippy::useless_conversion)]
fn total_memory() -> u64 {
    let info = rustix::system::sysinfo();
    u64::from(info.totalram).saturating_mul(u64::from(info.mem_unit))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_is_created_as_openclaw_runs_it() {
        let config = crate::config::Config::parse(
            "[s3]\nbucket = \"b-1\"\n[[state.paths]]\nname = \"config\"\ndir = \"/opt/openclaw/.openclaw\"\n\
             mount = \"/home/node/.openclaw\"\n[[state.paths]]\nname = \"workspace\"\ndir = \"/opt/openclaw/workspace\"\n\
             mount = \"/home/node/.openclaw/workspace\"\n[repository]\npassword_file = \"/etc/spotkeeper/pw\"\n\
             [container]\nimage = \"ghcr.io/openclaw/openclaw@sha256:ab\"\nmemory_limit = \"1GiB\"\n\
             [container.environment]\nNODE_ENV = \"production\"\n",
            Path::new("/etc/spotkeeper/test.toml"),
        )
        .expect("valid");
        let container = config.container.clone().expect("container");
        let spec = ContainerSpec {
            config: &container,
            paths: &config.state.paths,
            env_file: Some(Path::new("/run/openclaw/.env")),
            log_driver: "journald",
        };
        let body = spec.body();
        assert_eq!(
            body.cmd.as_deref(),
            Some(&["node", "dist/index.js", "gateway", "--bind", "lan", "--port", "18789"].map(String::from)[..])
        );
        assert_eq!(body.hostname.as_deref(), Some("openclaw"));
        let env = body.env.expect("env");
        assert!(
            env.contains(&"OPENCLAW_SYSTEMD_UNIT=spotkeeper.service".to_string()),
            "{env:?}"
        );
        assert!(env.contains(&"NODE_ENV=production".to_string()), "{env:?}");
        let host = body.host_config.expect("host config");
        assert_eq!(host.init, Some(true));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.cap_add, None);
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges:true".to_string()]));
        assert_eq!(host.pids_limit, Some(512));
        assert_eq!(host.memory, Some(1 << 30));
        assert_eq!(host.memory_swap, Some(1 << 30));
        // Nothing mounted but the state paths (outer first) and the env file, read-only.
        assert_eq!(
            host.binds,
            Some(vec![
                "/opt/openclaw/.openclaw:/home/node/.openclaw:rw".to_string(),
                "/opt/openclaw/workspace:/home/node/.openclaw/workspace:rw".to_string(),
                "/run/openclaw/.env:/home/node/.openclaw/.env:ro".to_string(),
            ])
        );
        // The config may override the hint.
        let mut overridden = container.clone();
        overridden
            .environment
            .insert("OPENCLAW_SYSTEMD_UNIT".into(), "other.service".into());
        let spec = ContainerSpec {
            config: &overridden,
            ..spec
        };
        let env = spec.body().env.expect("env");
        assert!(
            env.contains(&"OPENCLAW_SYSTEMD_UNIT=other.service".to_string()),
            "{env:?}"
        );
        assert_eq!(
            env.iter().filter(|e| e.starts_with("OPENCLAW_SYSTEMD_UNIT=")).count(),
            1
        );
    }

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
}
