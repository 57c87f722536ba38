//! `spotkeeper run`: wires every part together. Start-up in order (secrets, restore decision,
//! image, container, healthy, READY), then one loop that owns all decisions: snapshots on the
//! UTC-aligned schedule, daily prune, secret refresh, restarts with backoff, control requests,
//! and on SIGTERM/SIGINT a graceful stop with a final snapshot.
//!
//! `startup` holds the start-up steps, `policy` the pure supervisor (observations in, decisions
//! out), `supervise` the watchers and the executor of those decisions, `timetable` what is due
//! when (pure), `jobs` the periodic work (snapshot, prune, secrets, drill), `protection` the window
//! of loss (pure), `requests` what comes from outside (control requests, Spot notices, signals).
//! What `spotkeeper status` shows is part of the control protocol (`control::Status`).

mod health;
mod jobs;
pub mod policy;
mod protection;
mod requests;
mod startup;
mod supervise;
mod timetable;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::boot::BootRefusal;
use crate::config::{Config, ContainerConfig};
use crate::control::{self, ContainerStatus, Reply, Request, Status};
use crate::exit::{self, Exit};
use crate::liveness;
use crate::logship::LogShipper;
use crate::manifest::ImageInfo;
use crate::metrics::Metrics;
use crate::mirror::{MirrorError, MirrorSet, TrackerSet};
use crate::record::RecordError;
use crate::repository::RepositoryError;
use crate::restore::RestoreError;
use crate::runtime::{self, Container, ContainerEvent, ContainerRuntime, RuntimeError};
use crate::secrets::{self, Secrets, SecretsError};
use crate::snapshot::{self, SnapshotError};
use crate::snapshot_id::SnapshotId;
use crate::spot::{InstanceAction, Rebalance};
use crate::store::Store;
use crate::systemd::{self, Notifier};
use policy::Supervision;
use protection::Protection;
use timetable::{Job, Plan, Timetable};

/// Folder in `work_dir` holding the frozen copy that snapshots are packed from.
pub const MIRROR_DIR: &str = "mirrors";
/// The reason of a snapshot taken to follow changes (`[snapshot] follow`): tagged `follow`.
pub const FOLLOW_REASON: &str = "follow";
/// The mirrors' indexes, in `work_dir` (never inside `MIRROR_DIR`, which snapshots store).
pub const MIRROR_INDEX_DIR: &str = "mirror-indexes";
/// Where one mirror of the one state directory lived before `[[state.paths]]`: removed at start.
const LEGACY_MIRROR_DIR: &str = "mirror";
/// rustic_core's metadata cache for format 2 (encrypted, as in the repository), in work_dir.
pub const REPO_CACHE_DIR: &str = "repo-cache";
/// The longest the loop sleeps before looking at the wall clock (catches suspends).
const MAX_NAP: Duration = Duration::from_secs(30);
/// Retry bounds for start-up calls to S3 and SSM: never start fresh on an error.
const STARTUP_RETRY_MIN: Duration = Duration::from_secs(1);
const STARTUP_RETRY_MAX: Duration = Duration::from_secs(60);
/// The last flush of spotkeeper's own lines to CloudWatch Logs never delays the exit longer.
const LOGS_FINAL_FLUSH: Duration = Duration::from_secs(2);
/// Extra start/stop time asked of systemd before each long step.
const EXTEND_STEP: Duration = Duration::from_secs(300);
/// The secret OpenClaw's gateway authenticates with; its probes give details to its holder.
const GATEWAY_TOKEN_KEY: &str = "OPENCLAW_GATEWAY_TOKEN";
/// Consecutive failed probes before the container counts as unhealthy.
const UNHEALTHY_AFTER: u32 = 3;
/// Attempts at thawing the container before it is reported stuck (then retried every loop).
const THAW_ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the [container] section is required for `spotkeeper run`")]
    NoContainer,
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Boot(#[from] BootRefusal),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("the container did not finish starting within {}: {url} {last}", crate::duration::format(*after))]
    Unhealthy { after: Duration, url: String, last: String },
    #[error("stopped by a second signal before the final snapshot completed")]
    Aborted,
    #[error("task failed: {0}")]
    Task(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    StateLock(#[from] crate::state_lock::StateLockError),
}

impl DaemonError {
    /// Exit code for this error: the same mapping as the CLI's (`crate::exit`).
    pub fn exit(&self) -> Exit {
        match self {
            DaemonError::NoContainer | DaemonError::Config(_) => Exit::Config,
            DaemonError::Boot(e) => e.exit(),
            DaemonError::Refused(_) | DaemonError::StateLock(crate::state_lock::StateLockError::Busy { .. }) => {
                Exit::Refused
            }
            DaemonError::StateLock(crate::state_lock::StateLockError::Io { .. }) => Exit::Io,
            DaemonError::Restore(e) => exit::of_restore(e),
            DaemonError::Snapshot(e) => exit::of_snapshot(e),
            DaemonError::Repository(e) => exit::of_repository(e),
            DaemonError::Aborted | DaemonError::Task(_) | DaemonError::Unhealthy { .. } => Exit::Failure,
            DaemonError::Secrets(_)
            | DaemonError::Runtime(_)
            | DaemonError::Record(_)
            | DaemonError::Mirror(_)
            | DaemonError::Control(_) => Exit::Io,
        }
    }
}

enum Event {
    Interruption(InstanceAction),
    Rebalance(Rebalance),
    Container(ContainerEvent),
    EventsReconnected,
    /// The liveness verdict changed (healthy or not), judged at that time.
    Health(bool, DateTime<Utc>),
    /// The app's readiness: `Some(reason)` while it reports itself not ready.
    Readiness(Option<String>),
    Control(Request, oneshot::Sender<Reply>),
    Signal,
}

/// Runs the daemon until a signal stops it.
pub async fn run(config: Config, notifier: Notifier) -> Result<(), DaemonError> {
    let container_config = config.container.clone().ok_or(DaemonError::NoContainer)?;
    // Format 2 is the only format written: without [repository], refuse before anything starts.
    config.writer_repository("run")?;
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
    systemd::spawn_watchdog(notifier);
    crate::progress::spawn_status(notifier);
    // The socket first: a second daemon on this machine must fail before touching anything.
    let listener = control::bind(&config.daemon.socket).await?;
    spawn_control(
        listener,
        control::Identity::of(&config),
        config.daemon.socket.clone(),
        events_tx.clone(),
        Arc::clone(&status),
    );
    prepare_work_dir(&config);

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
            daemon.edges.notifier.stopping("stopping during start-up");
            let _ = daemon.workload.container.stop(daemon.container_config.stop_timeout).await;
            daemon.remove_env_file();
            let _ = std::fs::remove_file(&daemon.config.daemon.socket);
            daemon.flush_logs().await;
            return Ok(());
        }
    };
    if let Err(e) = outcome {
        let _ = std::fs::remove_file(&daemon.config.daemon.socket);
        return Err(e);
    }
    daemon.spawn_watchers(events_tx.clone());
    daemon.prune_displaced();
    daemon.start_tracker();
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
                let _ = reply.send(Reply::error(
                    "the daemon is starting; try again shortly".into(),
                    Exit::Failure,
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

/// work_dir and format 2's cache are spotkeeper's own: 0700 whatever the umask, and closed
/// again when an earlier version (or a by-hand run) left them open. A failure is logged: the
/// step that writes there reports it.
fn prepare_work_dir(config: &Config) {
    let work_dir = &config.state.work_dir;
    if let Err(e) = crate::private_fs::create_dir_all(work_dir) {
        tracing::warn!(path = %work_dir.display(), error = %e, "cannot create work_dir");
    }
    let mut own = vec![work_dir.join(MIRROR_DIR), work_dir.join(MIRROR_INDEX_DIR)];
    if config.repository.is_some() {
        own.push(work_dir.join(REPO_CACHE_DIR));
    }
    for dir in own {
        if let Err(e) = crate::private_fs::ensure_dir(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "cannot make this directory 0700");
        }
    }
}

/// Answers the control socket: a request whose sender names another repository or other state
/// paths (`control::Identity::admit`) is refused here, before the main loop sees it.
fn spawn_control(
    listener: tokio::net::UnixListener,
    identity: control::Identity,
    socket: PathBuf,
    events: mpsc::Sender<Event>,
    status: Arc<Mutex<Status>>,
) {
    let identity = Arc::new(identity);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let events = events.clone();
            let status = Arc::clone(&status);
            let identity = Arc::clone(&identity);
            let socket = socket.clone();
            tokio::spawn(async move {
                let call = match control::read_call(&mut stream).await {
                    Ok(call) => call,
                    Err(e) => {
                        let _ =
                            control::write_reply(&mut stream, &Reply::error(format!("bad request ({e})"), Exit::Usage))
                                .await;
                        return;
                    }
                };
                if let Err(why) = identity.admit(&call, &socket) {
                    tracing::warn!(sender = %call.sender.describe(), "control request refused: {why}");
                    let _ = control::write_reply(&mut stream, &Reply::error(why, Exit::Refused)).await;
                    return;
                }
                let response = match call.request {
                    Request::Status => {
                        let mut snapshot = status.lock().map(|s| s.clone()).unwrap_or_default();
                        snapshot.logs = crate::logship::counters();
                        Reply::Status(Box::new(snapshot))
                    }
                    request => {
                        let (reply, answer) = oneshot::channel();
                        if events.send(Event::Control(request, reply)).await.is_err() {
                            Reply::error("the daemon is shutting down".into(), Exit::Failure)
                        } else {
                            answer
                                .await
                                .unwrap_or_else(|_| Reply::error("the daemon is shutting down".into(), Exit::Failure))
                        }
                    }
                };
                let _ = control::write_reply(&mut stream, &response).await;
            });
        }
    });
}

/// The daemon's state, grouped by what it is. Its `impl` is spread over the files of this folder,
/// one per kind of work.
struct Daemon {
    config: Config,
    container_config: ContainerConfig,
    edges: Edges,
    workload: Workload,
    snapshots: Snapshots,
}

/// What the daemon talks to: S3 (and format 2's engine on it), SSM, CloudWatch, systemd, and the
/// status the control socket answers with. Docker is reached through `Workload::container`.
struct Edges {
    store: Store,
    /// Format 2's repository, kept open between snapshots; `None`: format 1 (or not loaded yet:
    /// the password is read during start-up, after a frozen container is thawed).
    engine: Option<crate::format2::Engine>,
    sdk_config: aws_config::SdkConfig,
    secrets_client: Option<aws_sdk_ssm::Client>,
    notifier: Notifier,
    metrics: Metrics,
    /// spotkeeper's own lines to CloudWatch Logs (`[logs]`); flushed once on the way out.
    logs: Option<LogShipper>,
    status: Arc<Mutex<Status>>,
}

/// The container and what keeps it running: its supervision, health, secrets and image.
struct Workload {
    container: Container,
    /// The pure supervisor: planned stops, backoff, crash loop, finishing.
    supervision: Supervision,
    /// The log driver the container is created with (the configured one, or the fallback).
    log_driver: String,
    /// Set while frozen: health probes that time out then are not failures.
    frozen: Arc<AtomicBool>,
    /// When a failed health probe counts (not while stopped for a snapshot, nor while booting).
    health: Arc<health::HealthGate>,
    /// The gateway token from the secrets (`OPENCLAW_GATEWAY_TOKEN`): the readiness probe
    /// presents it, so that OpenClaw says which channels fail.
    probe_token: Arc<Mutex<Option<String>>>,
    /// A thaw failed: the container may still be frozen; the loop keeps thawing it.
    stuck_frozen: bool,
    secrets: Option<Secrets>,
    image: Option<ImageInfo>,
}

/// What snapshots are taken from and what they protect: the mirrors, the change trackers, the
/// window of loss, and the repository and writer they are written as.
struct Snapshots {
    /// The repository's URL, as requests and the local record name it.
    repository: String,
    /// The mirrors snapshots are taken from (one per state path), with their indexes; `None`
    /// while a sync holds them.
    mirror: Option<MirrorSet>,
    /// What changed in each state path since the last sync (inotify).
    tracker: Option<TrackerSet>,
    /// What the head holds of the state, and since when it does not hold everything.
    protection: Protection,
    hostname: String,
    /// This daemon's writer id (see `record::writer_id`); set once the instance is known.
    writer: String,
    instance_id: Option<String>,
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
        let docker = runtime::connect(config.daemon.docker_host.as_deref()).await?;
        let container = Container::new(docker, &container_config.name);
        let metrics = Metrics::start(&config.metrics, sdk_config);
        let logs = crate::logship::start(config.logs.as_ref(), sdk_config);
        let secrets_client = config
            .secrets
            .as_ref()
            .map(|secrets| secrets::client(secrets, sdk_config));
        Ok(Daemon {
            edges: Edges {
                store,
                engine: None,
                sdk_config: sdk_config.clone(),
                secrets_client,
                notifier,
                metrics,
                logs,
                status,
            },
            workload: Workload {
                container,
                supervision: Supervision::new(container_config.restart_limit, container_config.restart_window),
                log_driver: container_config.log_driver.clone(),
                frozen: Arc::new(AtomicBool::new(false)),
                health: Arc::new(health::HealthGate::default()),
                probe_token: Arc::new(Mutex::new(None)),
                stuck_frozen: false,
                secrets: None,
                image: None,
            },
            snapshots: Snapshots {
                repository: config.repository_url(),
                mirror: None,
                tracker: None,
                protection: Protection::default(),
                hostname: snapshot::hostname(),
                writer: String::new(),
                instance_id: None,
            },
            config,
            container_config,
        })
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut status) = self.edges.status.lock() {
            f(&mut status);
        }
    }

    /// Sends spotkeeper's buffered lines to CloudWatch Logs, within `LOGS_FINAL_FLUSH`.
    async fn flush_logs(&self) {
        if let Some(logs) = &self.edges.logs {
            logs.flush(LOGS_FINAL_FLUSH).await;
        }
    }

    fn say(&self, text: &str) {
        tracing::info!("{text}");
        self.edges.notifier.status(text);
    }

    /// Removes the secrets file: nothing reads it once the container is stopped for good.
    fn remove_env_file(&self) {
        if let Some(secrets) = &self.config.secrets {
            match std::fs::remove_file(&secrets.env_file) {
                Ok(()) => tracing::info!(env_file = %secrets.env_file.display(), "secrets file removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(env_file = %secrets.env_file.display(), error = %e, "cannot remove the secrets file")
                }
            }
        }
    }

    /// Runs what is due, else waits for an event (at most the timetable's nap), until a signal.
    async fn main_loop(&mut self, events: &mut mpsc::Receiver<Event>) -> Result<(), DaemonError> {
        let started = Utc::now();
        let follow = self.follow_interval();
        let mut timetable = Timetable::new(self.plan(follow), started);
        self.update(|s| s.next_snapshot = timetable.next_snapshot());
        if follow.is_some() {
            self.protect(|p| p.following_from(started));
        }
        loop {
            liveness::mark();
            let now = Utc::now();
            self.note_changes();
            timetable.unprotected_since(self.snapshots.protection.unprotected_since());
            timetable.restart_due(self.workload.supervision.restart_due());
            timetable.stuck_frozen(self.workload.stuck_frozen, now);
            if self.workload.supervision.state() == policy::Supervised::Finishing {
                timetable.finish();
            }
            if let Some(job) = timetable.due(now) {
                let ok = self.run_job(job, now).await;
                timetable.done(job, ok, Utc::now());
                if job == Job::Snapshot {
                    self.update(|s| s.next_snapshot = timetable.next_snapshot());
                }
                continue;
            }
            let event = tokio::select! {
                event = events.recv() => event,
                _ = tokio::time::sleep(timetable.nap(now)) => continue,
            };
            match event {
                None => return Ok(()),
                Some(Event::Signal) => return self.shutdown(events).await,
                Some(event) => self.on_event(event).await,
            }
        }
    }

    /// What the configuration asks of the timetable. The loop must come round at least every
    /// half `WatchdogSec` to show it is alive (the watchdog task pings systemd only while
    /// something shows progress), and every `MAX_NAP` to notice a suspend.
    fn plan(&self, follow: Option<Duration>) -> Plan {
        Plan {
            snapshot_every: self.config.snapshot.interval,
            follow,
            secrets_every: self.config.secrets.as_ref().map(|s| s.refresh),
            verify_at: self.config.verify.daily.then_some(self.config.verify.at_offset),
            max_nap: systemd::watchdog_interval().map_or(MAX_NAP, |every| (every / 2).min(MAX_NAP)),
        }
    }

    /// Runs one job of the timetable; `false` when it failed (the timetable retries it).
    async fn run_job(&mut self, job: Job, now: DateTime<Utc>) -> bool {
        match job {
            Job::Gauges => self.publish_gauges(now),
            Job::Thaw => return self.thaw().await,
            Job::Snapshot => return self.snapshot_tick("scheduled").await.is_some(),
            Job::Follow => return self.snapshot_tick(FOLLOW_REASON).await.is_some(),
            Job::Prune => self.prune_tick().await,
            Job::Secrets => self.secrets_tick().await,
            Job::Verify => self.verify_tick().await,
            Job::Restart => {
                self.workload.supervision.restart_taken();
                self.restart_container("backoff elapsed").await;
            }
        }
        true
    }

    /// One event from outside (a signal ends the loop before it gets here).
    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Signal => {}
            Event::Interruption(action) => self.on_interruption(action).await,
            Event::Rebalance(notice) => {
                tracing::warn!(notice_time = %notice.notice_time, "rebalance recommendation: taking an extra snapshot now");
                if self.workload.supervision.state() != policy::Supervised::Finishing {
                    self.snapshot_tick("rebalance recommendation").await;
                }
            }
            Event::Container(event) => self.on_container_event(event).await,
            Event::EventsReconnected => self.on_events_reconnected().await,
            Event::Health(healthy, at) => self.on_health(healthy, at).await,
            Event::Readiness(degraded) => self.on_readiness(degraded),
            Event::Control(request, reply) => {
                let response = self.on_control(request).await;
                let _ = reply.send(response);
            }
        }
    }

    /// Applies one event to the window of loss (`protection.rs`) and shows the result in `status`.
    fn protect(&mut self, event: impl FnOnce(&mut Protection)) {
        let before = self.snapshots.protection.unprotected_since();
        event(&mut self.snapshots.protection);
        let after = self.snapshots.protection.unprotected_since();
        if after != before {
            self.update(|s| s.unprotected_since = after);
        }
    }
}

/// An optional id for logs: the id, or `none`.
fn show(id: Option<SnapshotId>) -> String {
    id.map_or_else(|| "none".to_string(), |id| id.to_string())
}
