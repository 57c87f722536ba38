//! `spotkeeper run`: wires every part together. Start-up in order (secrets, restore decision,
//! image, container, healthy, READY), then one loop that owns all decisions: snapshots on the
//! UTC-aligned schedule, daily prune, secret refresh, restarts with backoff, control requests,
//! and on SIGTERM/SIGINT a graceful stop with a final snapshot.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, Consistency, ContainerConfig};
use crate::control::{self, Request, Response};
use crate::exclude::Excludes;
use crate::manifest::{Host, ImageInfo};
use crate::metrics::{Metrics, Unit, names};
use crate::mirror::{self, MirrorError, SyncStats};
use crate::record::{self, LocalRecord, RecordError};
use crate::repository::{self, RepositoryError};
use crate::restore::{self, BootAction, RestoreError, RestoreRequest};
use crate::secrets::{self, Secrets, SecretsError};
use crate::snapshot::{self, SnapshotError, SnapshotRequest};
use crate::snapshot_id::SnapshotId;
use crate::spot::{InstanceAction, Rebalance, SpotWatcher};
use crate::store::{self, Store};
use crate::supervisor::{self, AfterFailure, Container, ContainerSpec, RestartPolicyState, RunState, SupervisorError};
use crate::systemd::{self, Notifier};
use crate::{drill, exit, prune, schedule};

/// Folder in `work_dir` holding the frozen copy that snapshots are packed from.
pub const MIRROR_DIR: &str = "mirror";
/// The longest the loop sleeps before looking at the wall clock (catches suspends).
const MAX_NAP: Duration = Duration::from_secs(30);
/// Retry bounds for start-up calls to S3 and SSM: never start fresh on an error.
const STARTUP_RETRY_MIN: Duration = Duration::from_secs(1);
const STARTUP_RETRY_MAX: Duration = Duration::from_secs(60);
/// Extra start/stop time asked of systemd before each long step.
const EXTEND_STEP: Duration = Duration::from_secs(300);
/// Prune runs daily at this offset after UTC midnight (clear of the :00 snapshot).
const PRUNE_OFFSET: Duration = Duration::from_secs(7 * 60);
/// Consecutive failed probes before the container counts as unhealthy.
const UNHEALTHY_AFTER: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the [container] section is required for `spotkeeper run`")]
    NoContainer,
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("the container did not become healthy within {0:?}")]
    Unhealthy(Duration),
    #[error("stopped by a second signal before the final snapshot completed")]
    Aborted,
    #[error("task failed: {0}")]
    Task(String),
}

impl DaemonError {
    /// Exit code of the daemon process for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::NoContainer => exit::CONFIG,
            DaemonError::Restore(RestoreError::Refused { .. } | RestoreError::LatestMissing { .. })
            | DaemonError::Snapshot(SnapshotError::Diverged { .. } | SnapshotError::LatestMoved { .. }) => {
                exit::REFUSED
            }
            DaemonError::Restore(RestoreError::Archive(e)) if e.is_integrity() => exit::INTEGRITY,
            DaemonError::Aborted | DaemonError::Task(_) | DaemonError::Unhealthy(_) => exit::FAILURE,
            _ => exit::IO,
        }
    }
}

/// What `spotkeeper status` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub phase: String,
    pub container: ContainerStatus,
    pub last_snapshot: Option<SnapshotStatus>,
    pub next_snapshot: Option<DateTime<Utc>>,
    pub unchanged_since: Option<SnapshotId>,
    pub last_prune: Option<PruneStatus>,
    pub last_error: Option<String>,
    pub secrets: Option<usize>,
    pub started_at: Option<DateTime<Utc>>,
    pub instance_id: Option<String>,
    pub spot_notice: Option<InstanceAction>,
    pub last_verify: Option<VerifyStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyStatus {
    pub at: DateTime<Utc>,
    pub id: Option<SnapshotId>,
    pub ok: bool,
    pub databases: usize,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub state: String,
    pub healthy: Option<bool>,
    pub restarts: u64,
    pub image: String,
    pub image_digest: Option<String>,
    pub crash_loop: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotStatus {
    pub id: SnapshotId,
    pub at: DateTime<Utc>,
    pub duration_ms: u64,
    pub freeze_ms: u64,
    pub archive_bytes: u64,
    pub files: u64,
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneStatus {
    pub at: DateTime<Utc>,
    pub deleted: usize,
    pub kept: usize,
    pub error: Option<String>,
}

/// What one snapshot attempt did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum SnapshotOutcome {
    Uploaded {
        id: SnapshotId,
        files: u64,
        archive_bytes: u64,
        duration_ms: u64,
        freeze_ms: u64,
        requests: u64,
    },
    Unchanged {
        since: SnapshotId,
        freeze_ms: u64,
    },
}

enum Event {
    Interruption(InstanceAction),
    Rebalance(Rebalance),
    Container(String),
    EventsReconnected,
    Health(bool),
    Control(Request, oneshot::Sender<Response>),
    Signal,
}

/// Runs the daemon until a signal stops it.
pub async fn run(config: Config, notifier: Notifier) -> Result<(), DaemonError> {
    let container_config = config.container.clone().ok_or(DaemonError::NoContainer)?;
    let status = Arc::new(Mutex::new(Status {
        phase: "starting".into(),
        started_at: Some(Utc::now()),
        container: ContainerStatus {
            name: container_config.name.clone(),
            image: container_config.image.clone(),
            ..Default::default()
        },
        ..Default::default()
    }));
    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    spawn_signals(events_tx.clone());
    // The socket first: a second daemon on this machine must fail before touching anything.
    let listener = control::bind(&config.daemon.socket).await?;
    spawn_control(listener, events_tx.clone(), Arc::clone(&status));

    let store = Store::connect(&config.s3).await;
    let mut daemon = Daemon::new(config, container_config, store, notifier, Arc::clone(&status)).await?;
    let outcome = tokio::select! {
        result = daemon.start() => result,
        event = wait_for_signal(&mut events) => {
            let _ = event;
            tracing::warn!("stopped during start-up");
            daemon.notifier.stopping("stopping during start-up");
            let _ = daemon.container.stop(daemon.container_config.stop_timeout).await;
            let _ = std::fs::remove_file(&daemon.config.daemon.socket);
            return Ok(());
        }
    };
    if let Err(e) = outcome {
        let _ = std::fs::remove_file(&daemon.config.daemon.socket);
        return Err(e);
    }
    daemon.spawn_watchers(events_tx.clone());
    let result = daemon.main_loop(&mut events).await;
    let _ = std::fs::remove_file(&daemon.config.daemon.socket);
    result
}

async fn wait_for_signal(events: &mut mpsc::Receiver<Event>) -> Option<()> {
    loop {
        match events.recv().await {
            Some(Event::Signal) => return Some(()),
            Some(Event::Control(_, reply)) => {
                let _ = reply.send(Response::error(
                    "the daemon is starting; try again shortly".into(),
                    exit::FAILURE,
                ));
            }
            Some(_) => {}
            None => return None,
        }
    }
}

fn spawn_signals(events: mpsc::Sender<Event>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            if events.send(Event::Signal).await.is_err() {
                return;
            }
        }
    });
}

fn spawn_control(listener: tokio::net::UnixListener, events: mpsc::Sender<Event>, status: Arc<Mutex<Status>>) {
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let events = events.clone();
            let status = Arc::clone(&status);
            tokio::spawn(async move {
                let response = match control::read_request(&mut stream).await {
                    Ok(Request::Status) => {
                        let snapshot = status.lock().map(|s| s.clone()).unwrap_or_default();
                        Response::ok(serde_json::to_value(snapshot).unwrap_or_default())
                    }
                    Ok(request) => {
                        let (reply, answer) = oneshot::channel();
                        if events.send(Event::Control(request, reply)).await.is_err() {
                            Response::error("the daemon is shutting down".into(), exit::FAILURE)
                        } else {
                            answer.await.unwrap_or_else(|_| {
                                Response::error("the daemon is shutting down".into(), exit::FAILURE)
                            })
                        }
                    }
                    Err(e) => Response::error(format!("bad request: {e}"), exit::USAGE),
                };
                let _ = control::write_response(&mut stream, &response).await;
            });
        }
    });
}

struct Daemon {
    config: Config,
    container_config: ContainerConfig,
    store: Store,
    notifier: Notifier,
    status: Arc<Mutex<Status>>,
    container: Container,
    excludes: Excludes,
    repository: String,
    secrets_client: Option<aws_sdk_ssm::Client>,
    secrets: Option<Secrets>,
    image: Option<ImageInfo>,
    restarts: RestartPolicyState,
    /// Set while we stop or recreate the container on purpose: its death is not a failure.
    expecting_stop: bool,
    /// Set while frozen: health probes that time out then are not failures.
    frozen: Arc<AtomicBool>,
    restart_at: Option<Instant>,
    crash_loop: bool,
    /// The mirror holds changes that no snapshot has uploaded yet.
    pending_upload: bool,
    last_snapshot_id: Option<SnapshotId>,
    /// When the newest complete snapshot was taken (for SecondsSinceLastSnapshot).
    last_complete_at: Option<DateTime<Utc>>,
    last_snapshot_duration: Duration,
    hostname: String,
    /// This daemon's writer id (see `record::writer_id`).
    writer: String,
    instance_id: Option<String>,
    metrics: Metrics,
    /// A Spot interruption was handled: the instance is going away; nothing restarts.
    interrupted: bool,
}

impl Daemon {
    async fn new(
        config: Config,
        container_config: ContainerConfig,
        store: Store,
        notifier: Notifier,
        status: Arc<Mutex<Status>>,
    ) -> Result<Daemon, DaemonError> {
        let docker = supervisor::connect(config.daemon.docker_host.as_deref()).await?;
        let container = Container::new(docker, &container_config.name);
        let excludes =
            Excludes::new(&config.state.dir, &config.state.exclude).map_err(|e| DaemonError::Task(e.to_string()))?;
        let metrics = Metrics::start(&config.metrics, config.s3.region.as_deref()).await;
        let config_work_dir = config.state.work_dir.clone();
        let secrets_client = match &config.secrets {
            Some(secrets) => Some(secrets::client(secrets, config.s3.region.as_deref()).await),
            None => None,
        };
        Ok(Daemon {
            repository: config.repository_url(),
            restarts: RestartPolicyState::new(container_config.restart_limit, container_config.restart_window),
            config,
            container_config,
            store,
            notifier,
            status,
            container,
            excludes,
            secrets_client,
            secrets: None,
            image: None,
            expecting_stop: false,
            frozen: Arc::new(AtomicBool::new(false)),
            restart_at: None,
            crash_loop: false,
            pending_upload: true,
            last_snapshot_id: None,
            last_complete_at: None,
            last_snapshot_duration: Duration::ZERO,
            hostname: snapshot::hostname(),
            writer: record::writer_id(&config_work_dir)?,
            instance_id: None,
            metrics,
            interrupted: false,
        })
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut status) = self.status.lock() {
            f(&mut status);
        }
    }

    fn say(&self, text: &str) {
        tracing::info!("{text}");
        self.notifier.status(text);
    }

    /// Start-up, in order. Every step that talks to S3 or SSM retries transient errors with
    /// backoff; nothing starts without its secrets, and nothing starts fresh on an error.
    async fn start(&mut self) -> Result<(), DaemonError> {
        // A container left frozen by a crash of ours must not stay frozen.
        match self.container.state().await? {
            RunState::Paused => {
                tracing::warn!(container = %self.container.name, "container was left frozen; thawing it");
                self.container.unpause().await?;
            }
            RunState::Missing | RunState::Created | RunState::Running | RunState::Exited => {}
        }
        if self.config.spot.enabled {
            self.probe_instance().await;
        }
        if self.config.secrets.is_some() {
            self.say("reading secrets from SSM");
            self.load_secrets_with_retry().await?;
        }
        self.say("deciding whether to restore");
        self.boot_restore().await?;
        self.say("preparing the container image");
        self.notifier.extend(EXTEND_STEP);
        let digest = self.container.ensure_image(&self.container_config.image).await?;
        self.image = Some(ImageInfo {
            reference: self.container_config.image.clone(),
            digest: Some(digest.clone()),
        });
        self.update(|s| s.container.image_digest = Some(digest));
        self.recreate_container().await?;
        self.say("waiting for the container to become healthy");
        self.wait_healthy().await?;
        self.update(|s| s.phase = "running".into());
        let ready = format!("running; {} healthy", self.container.name);
        tracing::info!("{ready}");
        self.notifier.ready(&ready);
        Ok(())
    }

    /// Asks IMDS for the instance id. Not on EC2: say so once and carry on without the watcher.
    async fn probe_instance(&mut self) {
        let watcher = match SpotWatcher::new(&self.config.spot.imds_endpoint) {
            Ok(watcher) => watcher,
            Err(e) => {
                tracing::warn!(error = %e, "Spot watcher disabled");
                return;
            }
        };
        match watcher.instance_id().await {
            Ok(id) => {
                tracing::info!(instance_id = %id, imds = watcher.endpoint(), "on EC2; watching for Spot notices");
                self.metrics.add_dimension("InstanceId", &id);
                self.update(|s| s.instance_id = Some(id.clone()));
                self.instance_id = Some(id);
            }
            Err(e) => {
                tracing::info!(error = %e, "not on EC2 (IMDS unreachable); Spot notices will not be watched");
            }
        }
    }

    async fn load_secrets_with_retry(&mut self) -> Result<(), DaemonError> {
        let (Some(config), Some(client)) = (self.config.secrets.clone(), self.secrets_client.clone()) else {
            return Ok(());
        };
        let mut delay = STARTUP_RETRY_MIN;
        let secrets = loop {
            match secrets::fetch(&client, &config.ssm_path).await {
                Ok(secrets) => break secrets,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "SSM not reachable; the container waits for its secrets");
                    self.notifier.extend(delay + EXTEND_STEP);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(STARTUP_RETRY_MAX);
                }
                Err(e) => return Err(e.into()),
            }
        };
        secrets::write_env_file(&config.env_file, &secrets)?;
        tracing::info!(count = secrets.len(), keys = ?secrets.keys(), env_file = %config.env_file.display(), "secrets written");
        self.update(|s| s.secrets = Some(secrets.len()));
        self.secrets = Some(secrets);
        Ok(())
    }

    /// Calls `op` until it succeeds or fails permanently, backing off on transient S3 errors.
    async fn retry_s3<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RepositoryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RepositoryError>>,
    {
        let mut delay = STARTUP_RETRY_MIN;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(RepositoryError::Store(e)) if store::is_transient(&e) => {
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "{what}: S3 not reachable, retrying (never starting fresh on an error)");
                    self.notifier.status(&format!("{what}: waiting for S3"));
                    self.notifier.extend(delay + EXTEND_STEP);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(STARTUP_RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn boot_restore(&mut self) -> Result<(), DaemonError> {
        let state_dir = self.config.state.dir.clone();
        let local = restore::inspect(&state_dir)?;
        let store = self.store.clone();
        let latest = self.retry_s3("reading latest/", || repository::latest(&store)).await?;
        if latest.is_none() {
            // No latest/: make sure that is because the repository is new.
            let listing = self.retry_s3("listing snapshots", || repository::list(&store)).await?;
            if let Some(newest) = listing.snapshots.iter().rev().find(|s| s.complete) {
                return Err(RestoreError::LatestMissing {
                    repository: self.repository.clone(),
                    newest: newest.id,
                    count: listing.snapshots.iter().filter(|s| s.complete).count(),
                }
                .into());
            }
        }
        let record = record::load(&self.config.state.work_dir)?;
        let base = record.as_ref().and_then(|r| r.base_for(&self.repository, &state_dir));
        let latest_lineage = latest.as_ref().map(|(m, _)| (m.id, m.parent, m.host.writer.as_deref()));
        let descends = latest.is_some() && snapshot::check_lineage(latest_lineage, base, &self.writer, false).is_ok();
        let latest_id = latest.as_ref().map(|(m, _)| m.id);
        self.last_complete_at = latest.as_ref().map(|(m, _)| m.created_at);
        let action = restore::boot_action(local, latest_id, descends);
        tracing::info!(?action, ?local, latest = %show(latest_id), base = %show(base), "boot restore decision");
        match action {
            BootAction::KeepLocal => {
                self.last_snapshot_id = latest_id;
                Ok(())
            }
            BootAction::StartFresh => {
                std::fs::create_dir_all(&state_dir).map_err(|source| RestoreError::Io {
                    path: state_dir.clone(),
                    source,
                })?;
                Ok(())
            }
            BootAction::Restore | BootAction::DisplaceAndRestore => {
                if self.container.state().await? == RunState::Running {
                    self.expecting_stop = true;
                    self.container.stop(self.container_config.stop_timeout).await?;
                }
                self.say("restoring the state from latest/");
                self.notifier.extend(EXTEND_STEP);
                let report = self
                    .restore_into_state(None, action == BootAction::DisplaceAndRestore)
                    .await?;
                if let Some(place) = &report.displaced {
                    tracing::warn!(displaced = %place.display(), "local state did not descend from latest/; kept it aside");
                }
                Ok(())
            }
        }
    }

    async fn restore_into_state(
        &mut self,
        snapshot: Option<SnapshotId>,
        force: bool,
    ) -> Result<restore::RestoreReport, DaemonError> {
        let request = RestoreRequest {
            snapshot,
            target: self.config.state.dir.clone(),
            is_state_dir: true,
            work_dir: self.config.state.work_dir.clone(),
            force,
            origin: None,
            repository: self.repository.clone(),
            now: Utc::now(),
        };
        let store = self.store.clone();
        let mut delay = STARTUP_RETRY_MIN;
        let report = loop {
            match restore::restore(&store, &request).await {
                Ok(report) => break report,
                Err(RestoreError::Repository(RepositoryError::Store(e))) if store::is_transient(&e) => {
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "restore: S3 not reachable, retrying");
                    self.notifier.extend(delay + EXTEND_STEP);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(STARTUP_RETRY_MAX);
                }
                Err(RestoreError::Download { key, source }) => {
                    tracing::warn!(key, error = %source, retry_in_s = delay.as_secs(), "restore: download failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(STARTUP_RETRY_MAX);
                }
                Err(e) => return Err(e.into()),
            }
        };
        record::save(
            &self.config.state.work_dir,
            &LocalRecord {
                repository: self.repository.clone(),
                state_dir: self.config.state.dir.clone(),
                snapshot_id: report.id,
                latest_id: report.latest.unwrap_or(report.id),
                updated_at: Utc::now(),
            },
        )?;
        tracing::info!(snapshot_id = %report.id, files = report.files, duration_ms = report.duration_ms, "restored");
        self.metrics
            .record(names::RESTORE_DURATION, report.duration_ms as f64, Unit::Milliseconds);
        self.last_snapshot_id = report.latest.or(Some(report.id));
        // The mirror no longer matches the state.
        self.pending_upload = true;
        Ok(report)
    }

    async fn recreate_container(&mut self) -> Result<(), DaemonError> {
        self.expecting_stop = true;
        match self.container.state().await? {
            RunState::Paused => {
                self.container.unpause().await?;
                self.container.stop(self.container_config.stop_timeout).await?;
            }
            RunState::Running => self.container.stop(self.container_config.stop_timeout).await?,
            RunState::Missing | RunState::Created | RunState::Exited => {}
        }
        let env_file: Option<PathBuf> = self.config.secrets.as_ref().map(|s| s.env_file.clone());
        if let Some(env_file) = &env_file {
            // The container reads it as its own user: give it the state directory's owner.
            secrets::give_to_owner_of(env_file, &self.config.state.dir)?;
        }
        let spec = ContainerSpec {
            config: &self.container_config,
            state_dir: &self.config.state.dir,
            env_file: env_file.as_deref(),
            log_driver: &self.container_config.log_driver,
        };
        self.container.create(&spec).await?;
        self.container.start().await?;
        self.expecting_stop = false;
        self.update(|s| s.container.state = "running".into());
        tracing::info!(container = %self.container.name, "container started");
        Ok(())
    }

    async fn wait_healthy(&mut self) -> Result<(), DaemonError> {
        let Some(url) = self.container_config.health_url.clone() else {
            return Ok(());
        };
        let deadline = Instant::now() + self.container_config.start_timeout;
        loop {
            if supervisor::probe(&url).await {
                self.update(|s| s.container.healthy = Some(true));
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DaemonError::Unhealthy(self.container_config.start_timeout));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn spawn_watchers(&self, events: mpsc::Sender<Event>) {
        // Docker events, reconnecting when the stream ends (engine restart).
        let container = self.container.clone();
        let tx = events.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut since = Utc::now();
            let mut delay = Duration::from_millis(200);
            loop {
                let mut stream = Box::pin(container.events(since));
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(action) => {
                            since = Utc::now();
                            delay = Duration::from_millis(200);
                            if tx.send(Event::Container(action)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Docker events stream failed");
                            break;
                        }
                    }
                }
                tracing::warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "Docker events stream ended; reconnecting"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                if tx.send(Event::EventsReconnected).await.is_err() {
                    return;
                }
            }
        });
        // Spot notices, only when IMDS answered at start.
        if self.instance_id.is_some()
            && let Ok(watcher) = SpotWatcher::new(&self.config.spot.imds_endpoint)
        {
            let poll = self.config.spot.poll;
            let tx = events.clone();
            tokio::spawn(async move {
                let mut interruption_sent = false;
                let mut last_rebalance = None;
                loop {
                    if !interruption_sent {
                        match watcher.instance_action().await {
                            Ok(Some(action)) => {
                                interruption_sent = true;
                                if tx.send(Event::Interruption(action)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => {}
                            Err(e) => tracing::debug!(error = %e, "Spot instance-action poll failed"),
                        }
                    }
                    match watcher.rebalance().await {
                        Ok(Some(notice)) if last_rebalance != Some(notice.notice_time) => {
                            last_rebalance = Some(notice.notice_time);
                            if tx.send(Event::Rebalance(notice)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "rebalance poll failed"),
                    }
                    tokio::time::sleep(poll).await;
                }
            });
        }
        // Health probes; a probe during a freeze does not count.
        if let Some(url) = self.container_config.health_url.clone() {
            let interval = self.container_config.health_interval;
            let frozen = Arc::clone(&self.frozen);
            tokio::spawn(async move {
                let mut failures = 0u32;
                let mut healthy = true;
                loop {
                    tokio::time::sleep(interval).await;
                    let ok = supervisor::probe(&url).await;
                    if frozen.load(Ordering::Relaxed) {
                        continue;
                    }
                    failures = if ok { 0 } else { failures + 1 };
                    let now_healthy = ok || failures < UNHEALTHY_AFTER;
                    if now_healthy != healthy {
                        healthy = now_healthy;
                        if events.send(Event::Health(healthy)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }

    async fn main_loop(&mut self, events: &mut mpsc::Receiver<Event>) -> Result<(), DaemonError> {
        let interval = self.config.snapshot.interval;
        let mut next_snapshot = schedule::next_tick(Utc::now(), interval);
        let day = Duration::from_secs(86_400);
        // Prune once at start, then daily.
        let mut next_prune = Utc::now();
        let mut next_secrets = self
            .config
            .secrets
            .as_ref()
            .map(|s| Utc::now() + chrono::TimeDelta::from_std(s.refresh).unwrap_or_default());
        let watchdog = systemd::watchdog_interval();
        let mut next_watchdog = Instant::now();
        let verify_offset = chrono::TimeDelta::from_std(self.config.verify.at_offset).unwrap_or_default();
        let mut next_verify = self.config.verify.daily.then(|| next_daily(Utc::now(), verify_offset));
        let mut next_gauges = Utc::now();
        self.update(|s| s.next_snapshot = Some(next_snapshot));
        loop {
            let now = Utc::now();
            if let Some(every) = watchdog
                && Instant::now() >= next_watchdog
            {
                self.notifier.watchdog();
                next_watchdog = Instant::now() + every;
            }
            if schedule::is_due(now, next_gauges) {
                self.publish_gauges(now);
                next_gauges = now + chrono::TimeDelta::seconds(60);
            }
            if self.interrupted {
                // The instance is going away: no more scheduled work; wait for the end.
                next_snapshot = now + chrono::TimeDelta::days(1);
                next_prune = next_snapshot;
                next_secrets = None;
                next_verify = None;
                self.restart_at = None;
            }
            if schedule::is_due(now, next_snapshot) {
                self.snapshot_tick("scheduled").await;
                next_snapshot = schedule::next_tick(Utc::now(), interval);
                self.update(|s| s.next_snapshot = Some(next_snapshot));
                continue;
            }
            if schedule::is_due(now, next_prune) {
                self.prune_tick().await;
                next_prune = schedule::next_tick(Utc::now(), day)
                    + chrono::TimeDelta::from_std(PRUNE_OFFSET).unwrap_or_default();
                continue;
            }
            if let Some(due) = next_secrets
                && schedule::is_due(now, due)
            {
                self.secrets_tick().await;
                next_secrets = self
                    .config
                    .secrets
                    .as_ref()
                    .map(|s| Utc::now() + chrono::TimeDelta::from_std(s.refresh).unwrap_or_default());
                continue;
            }
            if let Some(due) = next_verify
                && schedule::is_due(now, due)
            {
                self.verify_tick().await;
                next_verify = Some(next_daily(Utc::now(), verify_offset));
                continue;
            }
            if let Some(at) = self.restart_at
                && Instant::now() >= at
            {
                self.restart_at = None;
                self.restart_container("backoff elapsed").await;
                continue;
            }
            let mut wake = schedule::nap(now, next_snapshot, MAX_NAP).min(schedule::nap(now, next_prune, MAX_NAP));
            for due in [next_secrets, next_verify, Some(next_gauges)].into_iter().flatten() {
                wake = wake.min(schedule::nap(now, due, MAX_NAP));
            }
            if let Some(at) = self.restart_at {
                wake = wake.min(at.saturating_duration_since(Instant::now()));
            }
            if watchdog.is_some() {
                wake = wake.min(next_watchdog.saturating_duration_since(Instant::now()));
            }
            let event = tokio::select! {
                event = events.recv() => event,
                _ = tokio::time::sleep(wake) => continue,
            };
            match event {
                None => return Ok(()),
                Some(Event::Signal) => return self.shutdown(events).await,
                Some(Event::Interruption(action)) => self.on_interruption(action).await,
                Some(Event::Rebalance(notice)) => {
                    tracing::warn!(notice_time = %notice.notice_time, "rebalance recommendation: taking an extra snapshot now");
                    if !self.interrupted {
                        self.snapshot_tick("rebalance recommendation").await;
                    }
                }
                Some(Event::Container(action)) => self.on_container_event(&action).await,
                Some(Event::EventsReconnected) => self.on_events_reconnected().await,
                Some(Event::Health(healthy)) => self.on_health(healthy).await,
                Some(Event::Control(request, reply)) => {
                    let response = self.on_control(request).await;
                    let _ = reply.send(response);
                }
            }
        }
    }

    async fn on_container_event(&mut self, action: &str) {
        tracing::debug!(container = %self.container.name, action, "container event");
        match action {
            "die" | "oom" if !self.expecting_stop && !self.interrupted => {
                self.container_failed(&format!("container event {action}"))
            }
            "start" | "unpause" => self.update(|s| s.container.state = "running".into()),
            "pause" => self.update(|s| s.container.state = "paused".into()),
            "die" | "stop" => self.update(|s| s.container.state = "exited".into()),
            _ => {}
        }
    }

    /// The event stream was down for a while: look at the container to catch a missed death.
    async fn on_events_reconnected(&mut self) {
        tracing::info!("Docker events stream reconnected");
        match self.container.state().await {
            Ok(RunState::Running | RunState::Paused) => {}
            Ok(state) if !self.expecting_stop && self.restart_at.is_none() && !self.crash_loop => {
                self.container_failed(&format!(
                    "container found {state:?} after the events stream reconnected"
                ));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot inspect the container"),
        }
    }

    async fn on_health(&mut self, healthy: bool) {
        self.update(|s| s.container.healthy = Some(healthy));
        self.metrics
            .record(names::CONTAINER_HEALTHY, if healthy { 1.0 } else { 0.0 }, Unit::Count);
        if healthy {
            tracing::info!(container = %self.container.name, "container healthy again");
            return;
        }
        if self.expecting_stop || self.crash_loop || self.restart_at.is_some() || self.interrupted {
            return;
        }
        tracing::warn!(container = %self.container.name, "container unhealthy; restarting it");
        self.expecting_stop = true;
        if let Err(e) = self.container.stop(self.container_config.stop_timeout).await {
            tracing::warn!(error = %e, "cannot stop the unhealthy container");
        }
        self.expecting_stop = false;
        self.container_failed("health check failed");
    }

    fn container_failed(&mut self, why: &str) {
        self.update(|s| s.container.state = "exited".into());
        match self.restarts.failed(Utc::now()) {
            AfterFailure::RestartIn(delay) => {
                tracing::warn!(container = %self.container.name, why, restart_in_ms = delay.as_millis() as u64, "container failed; restarting after backoff");
                self.notifier
                    .status(&format!("container failed ({why}); restarting in {}s", delay.as_secs()));
                self.restart_at = Some(Instant::now() + delay);
            }
            AfterFailure::GiveUp => {
                let text = format!(
                    "container {} failed {} times within {}; not restarting it (crash loop). Fix it, then `systemctl restart spotkeeper`",
                    self.container.name,
                    self.restarts.recent(),
                    crate::duration::format(self.container_config.restart_window)
                );
                tracing::error!("{text}");
                self.notifier.status(&text);
                self.crash_loop = true;
                self.restart_at = None;
                self.update(|s| {
                    s.container.crash_loop = true;
                    s.phase = "crash-loop".into();
                    s.last_error = Some(text.clone());
                });
            }
        }
    }

    async fn restart_container(&mut self, why: &str) {
        tracing::info!(container = %self.container.name, why, "starting the container again");
        self.update(|s| s.container.restarts += 1);
        self.metrics.record(names::CONTAINER_RESTARTS, 1.0, Unit::Count);
        match self.container.start().await {
            Ok(()) => self.update(|s| s.container.state = "running".into()),
            Err(e) => {
                tracing::warn!(error = %e, "restart failed");
                self.container_failed("restart failed");
            }
        }
    }

    /// One scheduled (or requested) snapshot; a failure is logged and retried at the next tick.
    async fn snapshot_tick(&mut self, reason: &str) -> Option<SnapshotOutcome> {
        match self.snapshot_now(reason).await {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                self.metrics.record(names::SNAPSHOT_SUCCESS, 0.0, Unit::Count);
                if matches!(
                    e,
                    DaemonError::Snapshot(SnapshotError::Diverged { .. } | SnapshotError::LatestMoved { .. })
                ) {
                    self.metrics.record(names::LINEAGE_CONFLICT, 1.0, Unit::Count);
                }
                tracing::error!(error = %e, reason, "snapshot failed; retrying at the next tick");
                self.notifier.status(&format!("snapshot failed: {e}"));
                self.update(|s| s.last_error = Some(format!("snapshot failed: {e}")));
                None
            }
        }
    }

    /// Freeze, copy what changed into the mirror, thaw; then pack and upload from the mirror.
    async fn snapshot_now(&mut self, reason: &str) -> Result<SnapshotOutcome, DaemonError> {
        let (stats, freeze) = self.sync_mirror().await?;
        let freeze_ms = u64::try_from(freeze.as_millis()).unwrap_or(u64::MAX);
        if stats.changed() {
            self.pending_upload = true;
        }
        if !self.pending_upload
            && let Some(since) = self.last_snapshot_id
        {
            tracing::info!(since = %since, freeze_ms, "state unchanged; no upload");
            self.update(|s| s.unchanged_since = Some(since));
            self.notifier.status(&format!("running; unchanged since {since}"));
            return Ok(SnapshotOutcome::Unchanged { since, freeze_ms });
        }
        let report = self.upload_mirror().await?;
        self.pending_upload = false;
        self.last_snapshot_id = Some(report.id);
        self.last_complete_at = Some(report.manifest.created_at);
        self.last_snapshot_duration = Duration::from_millis(report.duration_ms);
        self.metrics.record(names::SNAPSHOT_SUCCESS, 1.0, Unit::Count);
        self.metrics
            .record(names::SNAPSHOT_DURATION, report.duration_ms as f64, Unit::Milliseconds);
        self.metrics
            .record(names::ARCHIVE_BYTES, report.archive_bytes as f64, Unit::Bytes);
        self.metrics
            .record(names::FREEZE_WINDOW, freeze_ms as f64, Unit::Milliseconds);
        tracing::info!(snapshot_id = %report.id, reason, files = report.files, archive_bytes = report.archive_bytes,
            duration_ms = report.duration_ms, freeze_ms, requests = report.requests, "snapshot complete");
        self.notifier.status(&format!("running; last snapshot {}", report.id));
        self.update(|s| {
            s.last_snapshot = Some(SnapshotStatus {
                id: report.id,
                at: Utc::now(),
                duration_ms: report.duration_ms,
                freeze_ms,
                archive_bytes: report.archive_bytes,
                files: report.files,
                requests: report.requests,
            });
            s.unchanged_since = None;
            s.last_error = None;
        });
        Ok(SnapshotOutcome::Uploaded {
            id: report.id,
            files: report.files,
            archive_bytes: report.archive_bytes,
            duration_ms: report.duration_ms,
            freeze_ms,
            requests: report.requests,
        })
    }

    /// Brings the mirror up to date, with the container frozen (or stopped) as configured.
    /// Returns the sync stats and how long the container was frozen.
    async fn sync_mirror(&mut self) -> Result<(SyncStats, Duration), DaemonError> {
        let running = matches!(self.container.state().await, Ok(RunState::Running));
        let consistency = self.container_config.consistency;
        let source = self.config.state.dir.clone();
        let mirror_dir = self.config.state.work_dir.join(MIRROR_DIR);
        let excludes = self.excludes.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let cap = self.config.snapshot.freeze_cap;
        let started = Instant::now();
        let mut guard = None;
        if running {
            match consistency {
                Consistency::Freeze => {
                    self.frozen.store(true, Ordering::Relaxed);
                    if let Err(e) = self.container.pause().await {
                        self.frozen.store(false, Ordering::Relaxed);
                        return Err(e.into());
                    }
                    guard = Some(ThawGuard::new(self.container.clone(), Arc::clone(&self.frozen)));
                }
                Consistency::Stop => {
                    self.expecting_stop = true;
                    self.container.stop(self.container_config.stop_timeout).await?;
                }
                Consistency::None => {}
            }
        }
        let worker_cancel = Arc::clone(&cancel);
        let mut worker =
            tokio::task::spawn_blocking(move || mirror::sync(&source, &mirror_dir, &excludes, &worker_cancel));
        let result = tokio::select! {
            joined = &mut worker => Some(joined),
            _ = tokio::time::sleep(cap), if guard.is_some() => None,
        };
        // Thaw first, on every path.
        if let Some(guard) = guard.take() {
            guard.thaw().await;
        }
        let freeze = started.elapsed();
        if running && consistency == Consistency::Stop {
            let started_again = self.container.start().await;
            self.expecting_stop = false;
            started_again?;
        }
        let joined = match result {
            Some(joined) => joined,
            None => {
                cancel.store(true, Ordering::Relaxed);
                let _ = worker.await;
                self.pending_upload = true;
                return Err(MirrorError::Cancelled.into());
            }
        };
        let stats = joined.map_err(|e| DaemonError::Task(e.to_string()))??;
        tracing::debug!(?stats, freeze_ms = freeze.as_millis() as u64, "mirror synced");
        Ok((stats, freeze))
    }

    async fn upload_mirror(&mut self) -> Result<snapshot::SnapshotReport, DaemonError> {
        let record = record::load(&self.config.state.work_dir)?;
        let base = record
            .as_ref()
            .and_then(|r| r.base_for(&self.repository, &self.config.state.dir));
        let request = SnapshotRequest {
            source: self.config.state.work_dir.join(MIRROR_DIR),
            excludes: self.excludes.clone(),
            compression_level: self.config.snapshot.compression_level,
            host: Host {
                hostname: self.hostname.clone(),
                instance_id: self.instance_id.clone(),
                writer: Some(self.writer.clone()),
            },
            image: self.image.clone(),
            base,
            force: false,
            now: Utc::now(),
        };
        let report = snapshot::take(&self.store, request).await?;
        record::save(
            &self.config.state.work_dir,
            &LocalRecord {
                repository: self.repository.clone(),
                state_dir: self.config.state.dir.clone(),
                snapshot_id: report.id,
                latest_id: report.id,
                updated_at: Utc::now(),
            },
        )?;
        Ok(report)
    }

    async fn prune_tick(&mut self) {
        let result = prune::prune(&self.store, &self.config.retention, Utc::now(), false).await;
        let status = match result {
            Ok(outcomes) => {
                let (deleted, failed) = prune::counts(&outcomes);
                tracing::info!(
                    deleted = deleted - failed,
                    failed,
                    kept = outcomes.len() - deleted,
                    "prune complete"
                );
                self.metrics
                    .record(names::PRUNE_DELETIONS, (deleted - failed) as f64, Unit::Count);
                PruneStatus {
                    at: Utc::now(),
                    deleted: deleted - failed,
                    kept: outcomes.len() - deleted,
                    error: (failed > 0).then(|| format!("{failed} snapshot(s) could not be deleted")),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "prune failed; retrying at the next daily run");
                PruneStatus {
                    at: Utc::now(),
                    deleted: 0,
                    kept: 0,
                    error: Some(e.to_string()),
                }
            }
        };
        self.update(|s| s.last_prune = Some(status));
    }

    /// Re-reads secrets; when they changed, rewrites the env file and recreates the container.
    async fn secrets_tick(&mut self) {
        let (Some(config), Some(client)) = (self.config.secrets.clone(), self.secrets_client.clone()) else {
            return;
        };
        let fresh = match secrets::fetch(&client, &config.ssm_path).await {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::warn!(error = %e, "secret refresh failed; keeping the current secrets");
                return;
            }
        };
        if self.secrets.as_ref() == Some(&fresh) {
            return;
        }
        if let Err(e) = secrets::write_env_file(&config.env_file, &fresh) {
            tracing::error!(error = %e, "cannot write the new secrets");
            return;
        }
        tracing::info!(count = fresh.len(), keys = ?fresh.keys(), "secrets changed; recreating the container");
        self.update(|s| s.secrets = Some(fresh.len()));
        self.secrets = Some(fresh);
        if self.crash_loop || self.interrupted {
            return;
        }
        if let Err(e) = self.recreate_container().await {
            tracing::error!(error = %e, "cannot recreate the container with the new secrets");
            self.container_failed("recreate failed");
        }
    }

    async fn on_control(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::ok(serde_json::Value::Null),
            Request::Snapshot => match self.snapshot_now("requested").await {
                Ok(outcome) => Response::ok(serde_json::to_value(outcome).unwrap_or_default()),
                Err(e) => Response::error(e.to_string(), e.exit_code()),
            },
            Request::Restore { snapshot } => match self.manual_restore(snapshot).await {
                Ok(value) => Response::ok(value),
                Err(e) => Response::error(e.to_string(), e.exit_code()),
            },
        }
    }

    /// A restore asked for while running: stop the container, keep a safety snapshot of what is
    /// about to be replaced, restore (the replaced state is kept in `<state dir>.displaced/`), start again.
    async fn manual_restore(&mut self, snapshot: Option<SnapshotId>) -> Result<serde_json::Value, DaemonError> {
        self.say("manual restore: stopping the container");
        self.expecting_stop = true;
        self.container.stop(self.container_config.stop_timeout).await?;
        let safety = self.snapshot_now("safety before manual restore").await;
        let safety = match safety {
            Ok(outcome) => outcome,
            Err(e) => {
                // Without a safety copy the restore would risk the only copy of recent changes.
                let _ = self.container.start().await;
                self.expecting_stop = false;
                return Err(e);
            }
        };
        let restored = self.restore_into_state(snapshot, true).await;
        let start = self.container.start().await;
        self.expecting_stop = false;
        let report = restored?;
        start?;
        self.restarts.reset();
        self.crash_loop = false;
        self.say(&format!("running; restored {}", report.id));
        Ok(serde_json::json!({ "restored": report, "safety_snapshot": safety }))
    }

    /// A Spot interruption: stop the container within a budget taken from the notice's time,
    /// take the final snapshot, update `latest/`, report each step; then wait for the end.
    async fn on_interruption(&mut self, action: InstanceAction) {
        let noticed = Utc::now();
        let text = format!(
            "Spot {} scheduled for {}: stopping the container and taking a final snapshot",
            action.action, action.time
        );
        tracing::warn!(action = %action.action, time = %action.time, "{text}");
        self.notifier.status(&text);
        self.metrics.record(names::SPOT_NOTICE, 1.0, Unit::Count);
        self.interrupted = true;
        self.restart_at = None;
        self.update(|s| {
            s.phase = "interrupted".into();
            s.spot_notice = Some(action.clone());
        });
        let upload_estimate = self.last_snapshot_duration * 3 + Duration::from_secs(10);
        let stop_timeout = crate::spot::stop_budget(
            noticed,
            action.time,
            self.container_config.stop_timeout,
            upload_estimate,
        );
        let stop_started = Instant::now();
        self.expecting_stop = true;
        let _ = self.container.unpause().await;
        if let Err(e) = self.container.stop(stop_timeout).await {
            tracing::error!(error = %e, "cannot stop the container; snapshotting what is on disk");
        }
        let stop_ms = stop_started.elapsed().as_millis() as u64;
        let snapshot_started = Instant::now();
        let outcome = self.snapshot_tick("spot interruption").await;
        let snapshot_ms = snapshot_started.elapsed().as_millis() as u64;
        let left = (action.time - Utc::now()).num_seconds();
        match outcome {
            Some(outcome) => {
                let done = format!(
                    "interrupted: final snapshot done; container stop {stop_ms} ms, snapshot {snapshot_ms} ms, {left} s before the deadline"
                );
                tracing::warn!(stop_ms, snapshot_ms, seconds_left = left, stop_budget_ms = stop_timeout.as_millis() as u64,
                    outcome = %serde_json::to_string(&outcome).unwrap_or_default(), "{done}");
                self.notifier.status(&done);
            }
            None => {
                tracing::error!(
                    stop_ms,
                    snapshot_ms,
                    seconds_left = left,
                    "interrupted: the final snapshot FAILED"
                );
            }
        }
        self.metrics.flush(Duration::from_secs(5)).await;
    }

    /// Gauges published every minute, so an alarm fires when backups stop.
    fn publish_gauges(&self, now: DateTime<Utc>) {
        if let Some(at) = self.last_complete_at {
            let seconds = (now - at).num_seconds().max(0);
            self.metrics
                .record(names::SECONDS_SINCE_LAST_SNAPSHOT, seconds as f64, Unit::Seconds);
        }
        let healthy = self
            .status
            .lock()
            .ok()
            .and_then(|s| s.container.healthy)
            .unwrap_or(false);
        self.metrics
            .record(names::CONTAINER_HEALTHY, if healthy { 1.0 } else { 0.0 }, Unit::Count);
    }

    /// The daily restore drill; a failure is loud (error log, STATUS, metric).
    async fn verify_tick(&mut self) {
        let result = drill::run(&self.store, &self.config.state.work_dir, &self.repository, None).await;
        let status = match result {
            Ok(report) => {
                tracing::info!(snapshot_id = %report.id, files = report.files, databases = report.databases.len(),
                    duration_ms = report.duration_ms, "restore drill passed");
                self.metrics.record(names::BACKUP_VERIFIED, 1.0, Unit::Count);
                VerifyStatus {
                    at: Utc::now(),
                    id: Some(report.id),
                    ok: true,
                    databases: report.databases.len(),
                    error: None,
                }
            }
            Err(e) => {
                let text = format!("RESTORE DRILL FAILED: {e}");
                tracing::error!("{text}");
                self.notifier.status(&text);
                self.metrics.record(names::BACKUP_VERIFIED, 0.0, Unit::Count);
                self.update(|s| s.last_error = Some(text));
                VerifyStatus {
                    at: Utc::now(),
                    id: None,
                    ok: false,
                    databases: 0,
                    error: Some(e.to_string()),
                }
            }
        };
        self.update(|s| s.last_verify = Some(status));
    }

    /// SIGTERM/SIGINT: stop the container gracefully, take a final snapshot, exit. A second
    /// signal aborts the final snapshot.
    async fn shutdown(&mut self, events: &mut mpsc::Receiver<Event>) -> Result<(), DaemonError> {
        self.update(|s| s.phase = "stopping".into());
        self.notifier.stopping("stopping the container");
        self.notifier.extend(self.container_config.stop_timeout + EXTEND_STEP);
        tracing::info!(container = %self.container.name, "stopping: container first, then the final snapshot");
        let work = async {
            self.expecting_stop = true;
            self.container.unpause().await.ok();
            self.container.stop(self.container_config.stop_timeout).await?;
            self.notifier.status("taking the final snapshot");
            self.snapshot_now("final").await
        };
        let aborted = async {
            loop {
                if let Some(Event::Signal) | None = events.recv().await {
                    return;
                }
            }
        };
        tokio::select! {
            result = work => {
                self.metrics.flush(Duration::from_secs(5)).await;
                let outcome = result?;
                tracing::info!(outcome = %serde_json::to_string(&outcome).unwrap_or_default(), "final snapshot done; exiting");
                Ok(())
            }
            _ = aborted => {
                tracing::error!("second signal: final snapshot aborted");
                Err(DaemonError::Aborted)
            }
        }
    }
}

/// Thaws the container when dropped without `thaw` (panic, cancellation): the freeze is undone
/// on every path.
struct ThawGuard {
    container: Option<Container>,
    frozen: Arc<AtomicBool>,
}

impl ThawGuard {
    fn new(container: Container, frozen: Arc<AtomicBool>) -> Self {
        ThawGuard {
            container: Some(container),
            frozen,
        }
    }

    async fn thaw(mut self) {
        if let Some(container) = self.container.take() {
            if let Err(e) = container.unpause().await {
                tracing::error!(error = %e, container = %container.name, "cannot thaw the container");
            }
            self.frozen.store(false, Ordering::Relaxed);
        }
    }
}

impl Drop for ThawGuard {
    fn drop(&mut self) {
        if let Some(container) = self.container.take() {
            let frozen = Arc::clone(&self.frozen);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = container.unpause().await;
                    frozen.store(false, Ordering::Relaxed);
                });
            }
        }
    }
}

/// An optional id for logs: the id, or `none`.
fn show(id: Option<SnapshotId>) -> String {
    id.map_or_else(|| "none".to_string(), |id| id.to_string())
}

/// The next time of day `offset` after UTC midnight that is after `now`.
fn next_daily(now: DateTime<Utc>, offset: chrono::TimeDelta) -> DateTime<Utc> {
    let midnight = schedule::next_tick(now, Duration::from_secs(86_400)) - chrono::TimeDelta::days(1);
    let today = midnight + offset;
    if today > now {
        today
    } else {
        today + chrono::TimeDelta::days(1)
    }
}
