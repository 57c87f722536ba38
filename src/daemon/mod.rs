//! `spotkeeper run`: wires every part together. Start-up in order (secrets, restore decision,
//! image, container, healthy, READY), then one loop that owns all decisions: snapshots on the
//! UTC-aligned schedule, daily prune, secret refresh, restarts with backoff, control requests,
//! and on SIGTERM/SIGINT a graceful stop with a final snapshot.
//!
//! `startup` holds the start-up steps, `supervise` the container watchers and restarts, `jobs` the
//! periodic work (snapshot, prune, secrets, drill), `requests` what comes from outside (control
//! requests, Spot notices, signals), `status` what `spotkeeper status` shows.

mod jobs;
mod requests;
mod startup;
mod status;
mod supervise;

pub use status::{ContainerStatus, PruneStatus, SnapshotOutcome, SnapshotStatus, Status, VerifyStatus};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, Consistency, ContainerConfig};
use crate::control::{self, Request, Response};
use crate::exclude::Excludes;
use crate::manifest::{Host, ImageInfo};
use crate::metrics::{Metrics, Unit, names};
use crate::mirror::{self, MirrorError, SyncStats};
use crate::record::{self, RecordError};
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

    let sdk_config = crate::aws::sdk_config(config.s3.region.as_deref()).await;
    let store = Store::connect(&config.s3, &sdk_config);
    let mut daemon = Daemon::new(
        config,
        container_config,
        store,
        &sdk_config,
        notifier,
        Arc::clone(&status),
    )
    .await?;
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
    daemon.warm_mirror().await;
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
        sdk_config: &aws_config::SdkConfig,
        notifier: Notifier,
        status: Arc<Mutex<Status>>,
    ) -> Result<Daemon, DaemonError> {
        let docker = supervisor::connect(config.daemon.docker_host.as_deref()).await?;
        let container = Container::new(docker, &container_config.name);
        let excludes =
            Excludes::new(&config.state.dir, &config.state.exclude).map_err(|e| DaemonError::Task(e.to_string()))?;
        let metrics = Metrics::start(&config.metrics, sdk_config);
        let config_work_dir = config.state.work_dir.clone();
        let secrets_client = config
            .secrets
            .as_ref()
            .map(|secrets| secrets::client(secrets, sdk_config));
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
