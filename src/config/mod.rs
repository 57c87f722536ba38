//! `/etc/spotkeeper/spotkeeper.toml`: parsed with unknown keys rejected, then validated into typed
//! values. Every error names the file, the key and the bad value.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use chrono::Weekday;
use serde::{Deserialize, Serialize};

use crate::duration;

mod diagnose;
use crate::exclude::Excludes;
use crate::retention::RetentionPolicy;

/// Where the config is read from when neither `--config` nor `SPOTKEEPER_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/spotkeeper/spotkeeper.toml";
/// The directory that is snapshotted and restored.
pub const DEFAULT_STATE_DIR: &str = "/opt/openclaw/.openclaw";
/// spotkeeper's own files: the local record, the snapshot mirror, the drill scratch dir.
pub const DEFAULT_WORK_DIR: &str = "/var/lib/spotkeeper";
/// Never archived: the secrets file, locks, temp files, sockets, pid files, dependencies.
/// No plugin tree is excluded: OpenClaw keeps installed plugins in its state (`npm/`, `git/`,
/// `extensions/`, with their `node_modules/`) and does not reinstall them at start.
pub const DEFAULT_EXCLUDES: [&str; 5] = ["/.env", "*.lock", "*.tmp", "*.sock", "*.pid"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {path}: {}{}",
        plain_io(source),
        if source.kind() == std::io::ErrorKind::NotFound { missing_file_hint(path) } else { String::new() }
    )]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    /// `value` is shown as TOML writes it: strings quoted, numbers bare.
    #[error("config file {path}: {key} = {value} is not valid: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
    #[error("config file {path}: {key} is required: {what}")]
    Missing {
        path: PathBuf,
        key: String,
        what: &'static str,
    },
    #[error(
        "`spotkeeper {command}` writes snapshots in format 2, an encrypted repository, and this config has no \
         [repository] section. Add one with `password_ssm = \"/spotkeeper/NAME/repository-password\"` and run \
         `spotkeeper init --create-password`, or with `password_file = \"/path/to/a-0600-file\"` (docs/format.md). \
         Format 1 snapshots on this prefix stay readable without it: list, verify, restore and prune work on them"
    )]
    NoRepository { command: &'static str },
}

/// `No such file or directory`, without `(os error 2)`.
fn plain_io(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Where a missing config file was looked for, and how to point elsewhere.
fn missing_file_hint(path: &Path) -> String {
    let from = if std::env::var_os("SPOTKEEPER_CONFIG").is_some_and(|v| Path::new(&v) == path) {
        "named by SPOTKEEPER_CONFIG"
    } else if path == Path::new(DEFAULT_CONFIG_PATH) {
        "the default path"
    } else {
        "named by --config"
    };
    format!(
        " ({from}). Name another with --config PATH or SPOTKEEPER_CONFIG; `make install` puts an example at \
         /etc/spotkeeper/spotkeeper.toml.example (also docs/spotkeeper.example.toml); `spotkeeper check-config` \
         checks a file"
    )
}

/// A request that gets no answer from S3 for this long is retried (a stalled connection).
pub const DEFAULT_S3_TIMEOUT: Duration = Duration::from_secs(30);
/// Where secrets are written, on tmpfs.
pub const DEFAULT_ENV_FILE: &str = "/run/openclaw/.env";
/// The daemon's control socket.
pub const DEFAULT_SOCKET: &str = "/run/spotkeeper/control.sock";
/// Snapshot every 20 minutes, at :00, :20 and :40 UTC.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// zstd level: fast, about 3x on chat-like text.
/// After a change, a snapshot within a minute: the window of loss on a hard crash.
pub const DEFAULT_FOLLOW: Duration = Duration::from_secs(60);
/// The longest the container may stay frozen; past it the freeze is undone and the tick fails.
pub const DEFAULT_FREEZE_CAP: Duration = Duration::from_secs(10);
pub const DEFAULT_SECRETS_REFRESH: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_CONTAINER_NAME: &str = "openclaw";
pub const DEFAULT_STATE_MOUNT: &str = "/home/node/.openclaw";
pub const DEFAULT_ENV_MOUNT: &str = "/home/node/.openclaw/.env";
/// OpenClaw drains on SIGTERM; Docker's default of 10 s kills it mid-drain.
/// OpenClaw drains for up to 90 s when it believes a systemd unit supervises it but cannot read
/// the unit's stop timeout: how it runs under spotkeeper's supervisor hint
/// (`runtime::SUPERVISOR_HINT`), in a container without `systemctl`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(90);
/// OpenClaw's gateway as its compose file and Fleet run it: listening on the container's
/// network (the image's own command binds loopback, so a published port would be dead).
pub const DEFAULT_COMMAND: [&str; 7] = ["node", "dist/index.js", "gateway", "--bind", "lan", "--port", "18789"];
/// The container's fixed hostname (OpenClaw's owner lease is keyed by it).
pub const DEFAULT_HOSTNAME: &str = "openclaw";
/// Fleet's hardened profile: every capability dropped, at most 512 processes.
pub const DEFAULT_CAP_DROP: [&str; 1] = ["ALL"];
pub const DEFAULT_PIDS_LIMIT: i64 = 512;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How often IMDS is asked for Spot notices.
pub const DEFAULT_SPOT_POLL: Duration = Duration::from_secs(5);
pub const DEFAULT_METRICS_NAMESPACE: &str = "Spotkeeper";
/// spotkeeper's own log lines held for CloudWatch Logs at most; past it the oldest are dropped.
pub const DEFAULT_LOGS_BUFFER_EVENTS: usize = 10_000;
/// The most `[logs] buffer_events` may be.
pub const MAX_LOGS_BUFFER_EVENTS: usize = 100_000;
/// How often spotkeeper's own log lines are sent to CloudWatch Logs.
pub const DEFAULT_LOGS_FLUSH: Duration = Duration::from_secs(5);
/// Between the :00 and :20 snapshots, at night in Europe and evening in America.
pub const DEFAULT_VERIFY_AT: &str = "04:10";
/// After this many failures within `restart_window`, stop restarting (crash loop).
pub const DEFAULT_RESTART_LIMIT: u32 = 5;
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub state: StateConfig,
    pub s3: S3Config,
    #[serde(serialize_with = "serialize_policy")]
    pub retention: RetentionPolicy,
    pub snapshot: SnapshotConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerConfig>,
    pub daemon: DaemonConfig,
    pub spot: SpotConfig,
    pub metrics: MetricsConfig,
    /// spotkeeper's own log lines shipped to CloudWatch Logs; `None`: not shipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogsConfig>,
    pub verify: VerifyConfig,
    /// Format 2 (an encrypted restic repository under `PREFIX/repo/`) when present; without it
    /// spotkeeper reads and writes format 1 and says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<RepositoryConfig>,
}

/// Where format 2's repository password comes from: exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PasswordSource {
    /// An SSM Parameter Store SecureString (its name).
    #[serde(rename = "password_ssm")]
    Ssm(String),
    /// A 0600 file (local use).
    #[serde(rename = "password_file")]
    File(PathBuf),
}

#[derive(Debug, Clone, Serialize)]
pub struct RepositoryConfig {
    #[serde(flatten)]
    pub password: PasswordSource,
    /// The SSM endpoint for `password_ssm` (tests); default `[secrets] endpoint`, else AWS's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssm_endpoint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpotConfig {
    pub enabled: bool,
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides it.
    pub imds_endpoint: String,
    #[serde(serialize_with = "serialize_duration")]
    pub poll: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub namespace: String,
    /// Added to every datum; `InstanceId` is added automatically when known.
    pub dimensions: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// `[logs]`: where `spotkeeper run` ships its own log lines (the container's go through Docker's
/// awslogs driver).
#[derive(Debug, Clone, Serialize)]
pub struct LogsConfig {
    /// The CloudWatch Logs group (created beforehand, by Pulumi).
    pub group: String,
    /// The stream in it; spotkeeper creates it when missing.
    pub stream: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Lines held while CloudWatch Logs is unreachable; past it the oldest are dropped (counted).
    pub buffer_events: usize,
    /// How often the held lines are sent.
    #[serde(serialize_with = "serialize_duration")]
    pub flush: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyConfig {
    /// Run the restore drill once a day.
    pub daily: bool,
    /// UTC time of day, `HH:MM`; the default sits between snapshot ticks.
    pub at: String,
    #[serde(skip)]
    pub at_offset: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotConfig {
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    /// `compression_level` was set: format 1's zstd level, ignored since format 1 is no longer
    /// written (check-config warns; refusing it would stop an upgraded machine from booting).
    #[serde(skip)]
    pub ignored_compression_level: bool,
    #[serde(serialize_with = "serialize_duration")]
    pub freeze_cap: Duration,
    /// After the app changes something, a snapshot within this long (debounced from the first
    /// change); `None`: off. Format 2 only (format 1 uploads the whole state each time).
    #[serde(serialize_with = "serialize_follow")]
    pub follow: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretsConfig {
    /// Every parameter under this SSM path, recursive, decrypted.
    pub ssm_path: String,
    pub env_file: PathBuf,
    #[serde(serialize_with = "serialize_duration")]
    pub refresh: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// How a probe's answer is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// OpenClaw's contract: a 2xx whose body is JSON with `"ok": true` (liveness, startup) or
    /// `"ready": true` (readiness). A catch-all 200 (the Control UI's page on images from
    /// before the probes) is not healthy.
    Openclaw,
    /// Any 2xx (another app).
    Http,
}

/// The container's memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    /// The machine's memory less `MEMORY_RESERVE` for the system and spotkeeper (at least half
    /// of it), read when the container is created.
    Auto,
    Bytes(u64),
    Off,
}

impl Serialize for MemoryLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MemoryLimit::Auto => s.serialize_str("auto"),
            MemoryLimit::Off => s.serialize_str("off"),
            MemoryLimit::Bytes(bytes) => s.serialize_str(&format!("{}MiB", bytes / (1 << 20))),
        }
    }
}

/// What `memory_limit = "auto"` leaves to the system and spotkeeper.
pub const MEMORY_RESERVE: u64 = 512 << 20;

impl MemoryLimit {
    /// `auto`, `off`, or a size with a binary unit (`1536MiB`, `1.5GiB`, at least 64 MiB).
    pub fn parse(text: &str) -> Result<MemoryLimit, &'static str> {
        let text = text.trim();
        match text {
            "auto" => return Ok(MemoryLimit::Auto),
            "off" => return Ok(MemoryLimit::Off),
            _ => {}
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or("expected a unit: MiB or GiB (or \"auto\", \"off\")")?;
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| "expected a number before the unit")?;
        let scale = match unit.trim() {
            "MiB" => 1u64 << 20,
            "GiB" => 1u64 << 30,
            _ => return Err("expected a unit: MiB or GiB (or \"auto\", \"off\")"),
        };
        let bytes = (number * scale as f64) as u64;
        if bytes < 64 << 20 {
            return Err("at least 64MiB: less would not run OpenClaw's gateway");
        }
        Ok(MemoryLimit::Bytes(bytes))
    }

    /// The limit in bytes on a machine with `total` bytes of memory; `None`: no limit.
    pub fn bytes(self, total: u64) -> Option<u64> {
        match self {
            MemoryLimit::Off => None,
            MemoryLimit::Bytes(bytes) => Some(bytes),
            MemoryLimit::Auto if total == 0 => None,
            MemoryLimit::Auto => Some(total.saturating_sub(MEMORY_RESERVE).max(total / 2)),
        }
    }
}

/// How the container is kept consistent while a snapshot copies its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Pause (cgroup freezer) while changed files are copied to the mirror.
    Freeze,
    /// Stop the container for the copy (slow; for apps that cannot be frozen).
    Stop,
    /// Copy while it runs (files may be torn).
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    /// The container's command (OpenClaw's own by default: `DEFAULT_COMMAND`); empty: the
    /// image's.
    pub command: Vec<String>,
    /// Docker's init as PID 1 (reaps the app's children, forwards signals), as OpenClaw's compose
    /// and Fleet run it.
    pub init: bool,
    /// The container's hostname: fixed, because OpenClaw keys its gateway owner lease by
    /// hostname and a container id changes at every create.
    pub hostname: String,
    /// Capabilities dropped (`["ALL"]`) and added back.
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    /// `no-new-privileges`: no setuid binary in the image gains privileges.
    pub no_new_privileges: bool,
    /// The most processes the container may hold; `None`: no limit (written `0`).
    #[serde(serialize_with = "serialize_pids_limit")]
    pub pids_limit: Option<i64>,
    /// The container's memory limit.
    pub memory_limit: MemoryLimit,
    /// The one-path form's mount (`[state] dir`); the effective mounts are `StatePath::mount`.
    #[serde(skip)]
    pub state_mount: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_mount: Option<String>,
    pub ports: Vec<String>,
    /// Liveness, probed while it runs (OpenClaw's `/healthz`): failures past a threshold restart it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_url: Option<String>,
    /// Answers once the app finished starting (OpenClaw's `/startupz`): READY waits for it, or
    /// for liveness where the image has no such endpoint (404).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_url: Option<String>,
    /// Readiness (OpenClaw's `/readyz`): a failure is reported as a degraded app (a channel
    /// that cannot connect), never a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_url: Option<String>,
    /// How probe answers are read: OpenClaw's JSON bodies, or any 2xx.
    pub probe: ProbeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(serialize_with = "serialize_duration")]
    pub stop_timeout: Duration,
    pub consistency: Consistency,
    #[serde(serialize_with = "serialize_duration")]
    pub health_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub start_timeout: Duration,
    pub restart_limit: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub restart_window: Duration,
    /// Extra environment (not secrets: those go in the env file).
    pub environment: std::collections::BTreeMap<String, String>,
    /// Docker log driver; journald puts the container's logs next to spotkeeper's.
    pub log_driver: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateConfig {
    /// spotkeeper's own files: local record, writer id, snapshot mirror, drill scratch dir.
    pub work_dir: PathBuf,
    /// The directories snapshotted and restored together (at least one; names unique, no
    /// directory inside another). `[state] dir` is the one-path form, named `state`.
    pub paths: Vec<StatePath>,
}

/// One directory of the state: `[[state.paths]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatePath {
    /// A stable identifier: the path's top-level directory in every snapshot.
    pub name: String,
    /// The host directory.
    pub dir: PathBuf,
    /// Its mount point in the container (`[container] state_mount` for the one-path form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// gitignore-syntax patterns, relative to `dir`.
    pub exclude: Vec<String>,
}

/// The name of the one path `[state] dir` configures; format 1 and format-2 snapshots taken
/// before `[[state.paths]]` hold only this path.
pub const SHORTHAND_PATH_NAME: &str = "state";

impl StateConfig {
    /// The first path: the one format 1 stores, and whose owner the secrets file takes.
    pub fn primary(&self) -> &StatePath {
        &self.paths[0]
    }

    /// The path named `name`.
    pub fn path(&self, name: &str) -> Option<&StatePath> {
        self.paths.iter().find(|p| p.name == name)
    }

    /// The path named `name`, or the refusal that names the paths there are (`restore --path`).
    pub fn require_path(&self, name: &str) -> Result<&StatePath, String> {
        self.path(name).ok_or_else(|| {
            let names: Vec<&str> = self.paths.iter().map(|p| p.name.as_str()).collect();
            format!(
                "the config has no state path named {name:?} (it has: {})",
                names.join(", ")
            )
        })
    }

    /// Every path's directory, in config order.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.paths.iter().map(|p| p.dir.clone()).collect()
    }

    /// True when `file` is inside one of the state's directories.
    pub fn contains(&self, file: &Path) -> Option<&StatePath> {
        self.paths.iter().find(|p| file.starts_with(&p.dir))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct S3Config {
    pub bucket: String,
    /// Normalised: no leading or trailing `/`; empty means the bucket root.
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// How long a request may wait for S3 to answer before it is retried.
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    state: RawState,
    s3: Option<RawS3>,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    snapshot: RawSnapshot,
    secrets: Option<RawSecrets>,
    container: Option<RawContainer>,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    spot: RawSpot,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    logs: RawLogs,
    #[serde(default)]
    verify: RawVerify,
    repository: Option<RawRepository>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepository {
    password_ssm: Option<String>,
    password_file: Option<PathBuf>,
    ssm_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpot {
    enabled: Option<bool>,
    imds_endpoint: Option<String>,
    poll: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    enabled: Option<bool>,
    namespace: Option<String>,
    dimensions: Option<std::collections::BTreeMap<String, String>>,
    endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogs {
    group: Option<String>,
    stream: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    buffer_events: Option<i64>,
    flush: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    daily: Option<bool>,
    at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshot {
    interval: Option<String>,
    compression_level: Option<i32>,
    freeze_cap: Option<String>,
    follow: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    ssm_path: Option<String>,
    env_file: Option<PathBuf>,
    refresh: Option<String>,
    endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    name: Option<String>,
    image: Option<String>,
    command: Option<Vec<String>>,
    init: Option<bool>,
    hostname: Option<String>,
    cap_drop: Option<Vec<String>>,
    cap_add: Option<Vec<String>>,
    no_new_privileges: Option<bool>,
    pids_limit: Option<i64>,
    memory_limit: Option<String>,
    startup_url: Option<String>,
    probe: Option<ProbeKind>,
    state_mount: Option<String>,
    env_mount: Option<String>,
    ports: Option<Vec<String>>,
    health_url: Option<String>,
    ready_url: Option<String>,
    user: Option<String>,
    stop_timeout: Option<String>,
    consistency: Option<Consistency>,
    health_interval: Option<String>,
    start_timeout: Option<String>,
    restart_limit: Option<u32>,
    restart_window: Option<String>,
    environment: Option<std::collections::BTreeMap<String, String>>,
    log_driver: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    socket: Option<PathBuf>,
    docker_host: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    exclude: Option<Vec<String>>,
    paths: Option<Vec<RawStatePath>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatePath {
    name: Option<String>,
    dir: Option<PathBuf>,
    mount: Option<String>,
    exclude: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    bucket: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_all_within: Option<String>,
    daily_within: Option<String>,
    weekly_within: Option<String>,
    week_starts: Option<String>,
    incomplete_grace: Option<String>,
    follow_keep: Option<String>,
}

impl Config {
    /// The repository a writer (`snapshot`, `run`) writes to: format 2 is the only format
    /// written, so a config without `[repository]` is refused for them (exit 3).
    pub fn writer_repository(&self, command: &'static str) -> Result<&RepositoryConfig, ConfigError> {
        self.repository.as_ref().ok_or(ConfigError::NoRepository { command })
    }

    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: diagnose::parse_error(text, &e),
        })?;
        let v = Validator { path };
        let state_mount_given = raw.container.as_ref().is_some_and(|c| c.state_mount.is_some());
        let (mut state, shorthand) = v.state(raw.state)?;
        let s3 = v.s3(raw.s3)?;
        let mut retention = v.retention(raw.retention)?;
        let snapshot = v.snapshot(raw.snapshot)?;
        // The schedule's ticks are the history follow snapshots stand in for.
        retention.interval = snapshot.interval;
        let secrets = raw.secrets.map(|r| v.secrets(r)).transpose()?;
        let container = raw.container.map(|r| v.container(r)).transpose()?;
        let daemon = v.daemon(raw.daemon)?;
        let spot = v.spot(raw.spot)?;
        let metrics = v.metrics(raw.metrics)?;
        let logs = v.logs(raw.logs)?;
        let verify = v.verify(raw.verify)?;
        let repository = raw.repository.map(|r| v.repository(r, secrets.as_ref())).transpose()?;
        v.state_with(
            &mut state,
            shorthand,
            state_mount_given,
            container.as_ref(),
            repository.as_ref(),
        )?;
        if let Some(RepositoryConfig {
            password: PasswordSource::File(file),
            ..
        }) = &repository
            && let Some(inside) = state.contains(file)
        {
            return Err(v.invalid(
                "repository.password_file",
                file.display().to_string(),
                format!(
                    "must not be inside state path {:?} ({}): the password would be in every snapshot",
                    inside.name,
                    inside.dir.display()
                ),
            ));
        }
        if let Some(secrets) = &secrets
            && let Some(inside) = state.contains(&secrets.env_file)
        {
            return Err(v.invalid(
                "secrets.env_file",
                secrets.env_file.display().to_string(),
                format!(
                    "must not be inside state path {:?} ({}): secrets never go into snapshots",
                    inside.name,
                    inside.dir.display()
                ),
            ));
        }
        Ok(Config {
            state,
            s3,
            retention,
            snapshot,
            secrets,
            container,
            daemon,
            spot,
            metrics,
            logs,
            verify,
            repository,
        })
    }

    /// The effective configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// `s3://bucket/prefix`, for messages and the local record.
    pub fn repository_url(&self) -> String {
        if self.s3.prefix.is_empty() {
            format!("s3://{}", self.s3.bucket)
        } else {
            format!("s3://{}/{}", self.s3.bucket, self.s3.prefix)
        }
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    /// A string value that is wrong (shown quoted, as in TOML).
    fn invalid(&self, key: impl Into<String>, value: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            value: format!("{:?}", value.into()),
            reason: reason.into(),
        }
    }

    /// A number that is wrong (shown bare, as in TOML).
    fn invalid_number(
        &self,
        key: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// A key that must be there and is not.
    fn missing(&self, key: impl Into<String>, what: &'static str) -> ConfigError {
        ConfigError::Missing {
            path: self.path.to_path_buf(),
            key: key.into(),
            what,
        }
    }

    /// `[state]`: the work dir and the paths, `[[state.paths]]` or the one-path shorthand
    /// (`dir`, `exclude`). Returns whether the shorthand was used (its mount is
    /// `[container] state_mount`).
    fn state(&self, raw: RawState) -> Result<(StateConfig, bool), ConfigError> {
        let work_dir = raw.work_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_WORK_DIR));
        self.absolute_clean("state.work_dir", &work_dir)?;
        let default_excludes = || DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (raw_paths, shorthand) = match raw.paths {
            Some(paths) => {
                if let Some(dir) = raw.dir {
                    return Err(self.invalid(
                        "state.dir",
                        dir.display().to_string(),
                        "give either [state] dir (one directory) or [[state.paths]] entries, not both",
                    ));
                }
                if raw.exclude.is_some() {
                    return Err(self.invalid(
                        "state.exclude",
                        "[...]",
                        "with [[state.paths]], give each path's exclude in its own entry",
                    ));
                }
                if paths.is_empty() {
                    return Err(self.missing("state.paths", "at least one [[state.paths]] entry"));
                }
                (paths, false)
            }
            None => (
                vec![RawStatePath {
                    name: Some(SHORTHAND_PATH_NAME.to_string()),
                    dir: Some(raw.dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))),
                    mount: None,
                    exclude: raw.exclude,
                }],
                true,
            ),
        };
        let mut paths: Vec<StatePath> = Vec::with_capacity(raw_paths.len());
        for (i, raw) in raw_paths.into_iter().enumerate() {
            // Errors name the key as written: `state.dir` for the shorthand.
            let key = |field: &str| {
                if shorthand {
                    format!("state.{field}")
                } else {
                    format!("state.paths[{i}].{field}")
                }
            };
            let name = raw
                .name
                .ok_or_else(|| self.missing(key("name"), "a stable name for the path, such as \"workspace\""))?;
            if let Err(reason) = check_path_name(&name) {
                return Err(self.invalid(key("name"), name, reason));
            }
            if let Some(other) = paths.iter().find(|p| p.name == name) {
                return Err(self.invalid(
                    key("name"),
                    name,
                    format!("two paths are named so (the other is {})", other.dir.display()),
                ));
            }
            let dir = raw
                .dir
                .ok_or_else(|| self.missing(key("dir"), "the host directory of the path"))?;
            self.absolute_clean(&key("dir"), &dir)?;
            if dir == Path::new("/") {
                return Err(self.invalid(key("dir"), "/", "the state directory cannot be the filesystem root"));
            }
            if let Some(other) = paths
                .iter()
                .find(|p| p.dir.starts_with(&dir) || dir.starts_with(&p.dir))
            {
                return Err(self.invalid(
                    key("dir"),
                    dir.display().to_string(),
                    format!(
                        "overlaps path {:?} ({}): one directory may not be inside another, or a file would \
                         be in two paths",
                        other.name,
                        other.dir.display()
                    ),
                ));
            }
            // A restore keeps a path's previous content in `<dir>.displaced/` beside it.
            let displaced = |d: &Path| {
                let name = d
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                d.with_file_name(format!("{name}.displaced"))
            };
            if let Some(other) = paths
                .iter()
                .find(|p| dir.starts_with(displaced(&p.dir)) || p.dir.starts_with(displaced(&dir)))
            {
                return Err(self.invalid(
                    key("dir"),
                    dir.display().to_string(),
                    format!(
                        "overlaps where a restore keeps path {:?}'s previous content ({})",
                        other.name,
                        displaced(&other.dir).display()
                    ),
                ));
            }
            if work_dir.starts_with(&dir) || dir.starts_with(&work_dir) {
                return Err(self.invalid(
                    "state.work_dir",
                    work_dir.display().to_string(),
                    format!("must not contain or lie inside {} ({})", key("dir"), dir.display()),
                ));
            }
            if let Some(mount) = &raw.mount
                && !mount.starts_with('/')
            {
                return Err(self.invalid(key("mount"), mount.clone(), "must be an absolute path in the container"));
            }
            if let Some(mount) = &raw.mount
                && let Some(other) = paths.iter().find(|p| p.mount.as_deref() == Some(mount.as_str()))
            {
                return Err(self.invalid(
                    key("mount"),
                    mount.clone(),
                    format!("path {:?} is mounted there too", other.name),
                ));
            }
            let exclude = raw.exclude.unwrap_or_else(default_excludes);
            if let Err(e) = Excludes::new(&dir, &exclude) {
                return Err(self.invalid(key("exclude"), e.pattern().to_string(), e.to_string()));
            }
            paths.push(StatePath {
                name,
                dir,
                mount: raw.mount,
                exclude,
            });
        }
        Ok((StateConfig { work_dir, paths }, shorthand))
    }

    /// What the paths need from the other sections: mounts when there is a container (the
    /// shorthand's is `[container] state_mount`), format 2 for more than one path.
    fn state_with(
        &self,
        state: &mut StateConfig,
        shorthand: bool,
        state_mount_given: bool,
        container: Option<&ContainerConfig>,
        repository: Option<&RepositoryConfig>,
    ) -> Result<(), ConfigError> {
        if shorthand {
            state.paths[0].mount = container.map(|c| c.state_mount.clone());
        } else {
            if state_mount_given {
                return Err(self.invalid(
                    "container.state_mount",
                    container.map(|c| c.state_mount.clone()).unwrap_or_default(),
                    "with [[state.paths]], give each path's mount in its own entry",
                ));
            }
            if container.is_some()
                && let Some(i) = state.paths.iter().position(|p| p.mount.is_none())
            {
                return Err(self.missing(
                    format!("state.paths[{i}].mount"),
                    "the path's mount point in the container, when [container] is present",
                ));
            }
        }
        if state.paths.len() > 1 && repository.is_none() {
            return Err(self.invalid(
                "state.paths",
                state
                    .paths
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                "more than one path needs format 2 (a [repository] section with a password): format 1 \
                 stores one directory per snapshot",
            ));
        }
        Ok(())
    }

    fn absolute_clean(&self, key: &str, path: &Path) -> Result<(), ConfigError> {
        let shown = path.display().to_string();
        if !path.is_absolute() {
            return Err(self.invalid(key, shown, "must be an absolute path"));
        }
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(self.invalid(key, shown, "must not contain `.` or `..`"));
        }
        Ok(())
    }

    fn s3(&self, raw: Option<RawS3>) -> Result<S3Config, ConfigError> {
        let raw = raw.ok_or_else(|| self.missing("s3", "a [s3] section with the bucket that holds the snapshots"))?;
        let bucket = raw
            .bucket
            .ok_or_else(|| self.missing("s3.bucket", "the bucket that holds the snapshots"))?;
        if let Err(reason) = check_bucket_name(&bucket) {
            return Err(self.invalid("s3.bucket", bucket, reason));
        }
        let prefix_text = raw.prefix.unwrap_or_default();
        let prefix = prefix_text.trim_matches('/').to_string();
        if prefix.split('/').any(|seg| seg == ".." || seg == ".")
            || prefix.contains("//")
            || prefix.chars().any(char::is_control)
        {
            return Err(self.invalid(
                "s3.prefix",
                prefix_text,
                "segments must not be empty, `.` or `..`, and control characters are not allowed",
            ));
        }
        if let Some(region) = &raw.region
            && (region.is_empty() || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(self.invalid("s3.region", region.clone(), "expected a region name such as us-east-1"));
        }
        if let Some(endpoint) = &raw.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(self.invalid("s3.endpoint", endpoint.clone(), "expected an http:// or https:// URL"));
        }
        let timeout = self.duration("s3.timeout", raw.timeout, DEFAULT_S3_TIMEOUT)?;
        if timeout.is_zero() {
            return Err(self.invalid("s3.timeout", "0s", "must be longer than 0s"));
        }
        Ok(S3Config {
            bucket,
            prefix,
            region: raw.region,
            endpoint: raw.endpoint,
            timeout,
        })
    }

    fn duration(&self, key: &'static str, text: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
        match text {
            None => Ok(default),
            Some(text) => duration::parse(&text).map_err(|e| self.invalid(key, text, e.to_string())),
        }
    }

    fn retention(&self, raw: RawRetention) -> Result<RetentionPolicy, ConfigError> {
        let defaults = RetentionPolicy::default();
        let week_starts = match raw.week_starts {
            None => defaults.week_starts,
            Some(text) => text.parse::<Weekday>().map_err(|_| {
                self.invalid(
                    "retention.week_starts",
                    text,
                    "expected a day of the week such as \"friday\"",
                )
            })?,
        };
        let policy = RetentionPolicy {
            keep_all_within: self.duration(
                "retention.keep_all_within",
                raw.keep_all_within,
                defaults.keep_all_within,
            )?,
            daily_within: self.duration("retention.daily_within", raw.daily_within, defaults.daily_within)?,
            weekly_within: self.duration("retention.weekly_within", raw.weekly_within, defaults.weekly_within)?,
            week_starts,
            incomplete_grace: self.duration(
                "retention.incomplete_grace",
                raw.incomplete_grace,
                defaults.incomplete_grace,
            )?,
            follow_keep: self.duration("retention.follow_keep", raw.follow_keep, defaults.follow_keep)?,
            interval: defaults.interval,
        };
        policy.validate().map_err(|e| ConfigError::Parse {
            path: self.path.to_path_buf(),
            message: format!("[retention]: {e}"),
        })?;
        Ok(policy)
    }
}

impl Validator<'_> {
    fn snapshot(&self, raw: RawSnapshot) -> Result<SnapshotConfig, ConfigError> {
        let interval = self.duration("snapshot.interval", raw.interval, DEFAULT_INTERVAL)?;
        if interval < Duration::from_secs(1) {
            return Err(self.invalid("snapshot.interval", duration::format(interval), "must be at least 1s"));
        }
        let freeze_cap = self.duration("snapshot.freeze_cap", raw.freeze_cap, DEFAULT_FREEZE_CAP)?;
        if freeze_cap.is_zero() {
            return Err(self.invalid("snapshot.freeze_cap", "0s", "must be longer than 0s"));
        }
        let follow = match raw.follow.as_deref() {
            Some("off") => None,
            // The schedule alone is already more frequent than the default.
            None if interval <= DEFAULT_FOLLOW => None,
            None => Some(DEFAULT_FOLLOW),
            Some(text) => {
                let follow = self.duration("snapshot.follow", Some(text.to_string()), DEFAULT_FOLLOW)?;
                if follow < Duration::from_secs(1) || follow >= interval {
                    return Err(self.invalid(
                        "snapshot.follow",
                        duration::format(follow),
                        format!(
                            "must be at least 1s and shorter than snapshot.interval ({}), or \"off\"",
                            duration::format(interval)
                        ),
                    ));
                }
                Some(follow)
            }
        };
        Ok(SnapshotConfig {
            interval,
            ignored_compression_level: raw.compression_level.is_some(),
            freeze_cap,
            follow,
        })
    }

    fn repository(&self, raw: RawRepository, secrets: Option<&SecretsConfig>) -> Result<RepositoryConfig, ConfigError> {
        let password = match (raw.password_ssm, raw.password_file) {
            (Some(_), Some(file)) => {
                return Err(self.invalid(
                    "repository.password_file",
                    file.display().to_string(),
                    "give either repository.password_ssm or repository.password_file, not both",
                ));
            }
            (None, None) => {
                return Err(self.missing(
                    "repository.password_ssm",
                    "the SSM SecureString that holds the repository password (or repository.password_file), \
                     when [repository] is present",
                ));
            }
            (Some(name), None) => {
                if !name.starts_with('/') || name.ends_with('/') || name.contains("//") {
                    return Err(self.invalid(
                        "repository.password_ssm",
                        name,
                        "must be a full parameter name starting with / (for example \"/openclaw-repository/prod/password\")",
                    ));
                }
                // Everything under the secrets path goes into the container's environment.
                if let Some(secrets) = secrets
                    && name.starts_with(&format!("{}/", secrets.ssm_path.trim_end_matches('/')))
                {
                    return Err(self.invalid(
                        "repository.password_ssm",
                        name,
                        format!(
                            "must not be under secrets.ssm_path ({}): every parameter there is written into the \
                             container's environment, and the repository password never leaves spotkeeper",
                            secrets.ssm_path
                        ),
                    ));
                }
                PasswordSource::Ssm(name)
            }
            (None, Some(file)) => {
                self.absolute_clean("repository.password_file", &file)?;
                PasswordSource::File(file)
            }
        };
        let ssm_endpoint = raw.ssm_endpoint.or_else(|| secrets.and_then(|s| s.endpoint.clone()));
        if let Some(endpoint) = &ssm_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(self.invalid(
                "repository.ssm_endpoint",
                endpoint.clone(),
                "expected an http:// or https:// URL",
            ));
        }
        Ok(RepositoryConfig { password, ssm_endpoint })
    }

    fn secrets(&self, raw: RawSecrets) -> Result<SecretsConfig, ConfigError> {
        let ssm_path = raw.ssm_path.ok_or_else(|| {
            self.missing(
                "secrets.ssm_path",
                "the SSM Parameter Store path to read secrets from, when [secrets] is present",
            )
        })?;
        if !ssm_path.starts_with('/') || ssm_path.contains("//") {
            return Err(self.invalid(
                "secrets.ssm_path",
                ssm_path,
                "must start with / (for example \"/openclaw/lab/\")",
            ));
        }
        let env_file = raw.env_file.unwrap_or_else(|| PathBuf::from(DEFAULT_ENV_FILE));
        self.absolute_clean("secrets.env_file", &env_file)?;
        let refresh = self.duration("secrets.refresh", raw.refresh, DEFAULT_SECRETS_REFRESH)?;
        if refresh < Duration::from_secs(1) {
            return Err(self.invalid("secrets.refresh", duration::format(refresh), "must be at least 1s"));
        }
        if let Some(endpoint) = &raw.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(self.invalid(
                "secrets.endpoint",
                endpoint.clone(),
                "expected an http:// or https:// URL",
            ));
        }
        Ok(SecretsConfig {
            ssm_path,
            env_file,
            refresh,
            endpoint: raw.endpoint,
        })
    }

    fn container(&self, raw: RawContainer) -> Result<ContainerConfig, ConfigError> {
        let name = raw.name.unwrap_or_else(|| DEFAULT_CONTAINER_NAME.to_string());
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(self.invalid(
                "container.name",
                name,
                "may contain only letters, digits, `_`, `.` and `-`",
            ));
        }
        let image = raw
            .image
            .ok_or_else(|| self.missing("container.image", "the image to run, when [container] is present"))?;
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            return Err(self.invalid(
                "container.image",
                image,
                "expected an image reference such as repo/name:tag",
            ));
        }
        let state_mount = raw.state_mount.unwrap_or_else(|| DEFAULT_STATE_MOUNT.to_string());
        if !state_mount.starts_with('/') {
            return Err(self.invalid(
                "container.state_mount",
                state_mount,
                "must be an absolute path in the container",
            ));
        }
        let env_mount = match raw.env_mount {
            Some(m) if m.is_empty() => None,
            Some(m) if !m.starts_with('/') => {
                return Err(self.invalid("container.env_mount", m, "must be an absolute path in the container"));
            }
            Some(m) => Some(m),
            None => Some(DEFAULT_ENV_MOUNT.to_string()),
        };
        let ports = raw.ports.unwrap_or_default();
        for port in &ports {
            if let Err(reason) = crate::ports::parse(port) {
                return Err(self.invalid("container.ports", port.clone(), reason));
            }
        }
        if let Some(url) = &raw.health_url
            && !url.starts_with("http://")
        {
            return Err(self.invalid("container.health_url", url.clone(), "expected an http:// URL"));
        }
        for (key, url) in [
            ("container.ready_url", &raw.ready_url),
            ("container.startup_url", &raw.startup_url),
        ] {
            if let Some(url) = url
                && !url.starts_with("http://")
            {
                return Err(self.invalid(key, url.clone(), "expected an http:// URL"));
            }
        }
        let hostname = raw.hostname.unwrap_or_else(|| DEFAULT_HOSTNAME.to_string());
        if !is_hostname(&hostname) {
            return Err(self.invalid(
                "container.hostname",
                hostname,
                "expected a host name: 1 to 63 letters, digits and `-`, not starting or ending with `-`",
            ));
        }
        let cap_drop = raw
            .cap_drop
            .unwrap_or_else(|| DEFAULT_CAP_DROP.iter().map(|c| c.to_string()).collect());
        let cap_add = raw.cap_add.unwrap_or_default();
        for (key, caps) in [("container.cap_drop", &cap_drop), ("container.cap_add", &cap_add)] {
            if let Some(cap) = caps.iter().find(|c| !is_capability(c)) {
                return Err(self.invalid(
                    key,
                    cap.clone(),
                    "expected a capability name such as ALL, NET_BIND_SERVICE or CAP_CHOWN",
                ));
            }
        }
        let pids_limit = match raw.pids_limit {
            None => Some(DEFAULT_PIDS_LIMIT),
            Some(0) => None,
            Some(n) if n < 16 => {
                return Err(self.invalid_number(
                    "container.pids_limit",
                    n,
                    "at least 16 (0 for no limit): OpenClaw's gateway and its tools need processes",
                ));
            }
            Some(n) => Some(n),
        };
        let memory_limit = match &raw.memory_limit {
            None => MemoryLimit::Auto,
            Some(text) => MemoryLimit::parse(text)
                .map_err(|reason| self.invalid("container.memory_limit", text.clone(), reason))?,
        };
        let restart_limit = raw.restart_limit.unwrap_or(DEFAULT_RESTART_LIMIT);
        if restart_limit == 0 {
            return Err(self.invalid_number("container.restart_limit", 0, "must be at least 1"));
        }
        let environment = raw.environment.unwrap_or_default();
        if let Some(key) = environment.keys().find(|k| !is_env_name(k)) {
            return Err(self.invalid(
                "container.environment",
                key.clone(),
                "not a valid environment variable name",
            ));
        }
        Ok(ContainerConfig {
            name,
            image,
            command: raw
                .command
                .unwrap_or_else(|| DEFAULT_COMMAND.iter().map(|s| s.to_string()).collect()),
            init: raw.init.unwrap_or(true),
            hostname,
            cap_drop,
            cap_add,
            no_new_privileges: raw.no_new_privileges.unwrap_or(true),
            pids_limit,
            memory_limit,
            startup_url: raw.startup_url,
            probe: raw.probe.unwrap_or(ProbeKind::Openclaw),
            state_mount,
            env_mount,
            ports,
            health_url: raw.health_url,
            ready_url: raw.ready_url,
            user: raw.user,
            stop_timeout: self.duration("container.stop_timeout", raw.stop_timeout, DEFAULT_STOP_TIMEOUT)?,
            consistency: raw.consistency.unwrap_or(Consistency::Freeze),
            health_interval: self.duration(
                "container.health_interval",
                raw.health_interval,
                DEFAULT_HEALTH_INTERVAL,
            )?,
            start_timeout: self.duration("container.start_timeout", raw.start_timeout, DEFAULT_START_TIMEOUT)?,
            restart_limit,
            restart_window: self.duration("container.restart_window", raw.restart_window, DEFAULT_RESTART_WINDOW)?,
            environment,
            log_driver: raw.log_driver.unwrap_or_else(|| "journald".to_string()),
        })
    }

    fn daemon(&self, raw: RawDaemon) -> Result<DaemonConfig, ConfigError> {
        let socket = raw.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        self.absolute_clean("daemon.socket", &socket)?;
        Ok(DaemonConfig {
            socket,
            docker_host: match raw.docker_host {
                Some(host) if host.starts_with("unix:///") || host.starts_with('/') => Some(host),
                Some(host) => {
                    return Err(self.invalid(
                        "daemon.docker_host",
                        host,
                        "expected a Unix socket: unix:///path or /path (TCP to the engine is not supported)",
                    ));
                }
                None => None,
            },
        })
    }
}

impl Validator<'_> {
    fn spot(&self, raw: RawSpot) -> Result<SpotConfig, ConfigError> {
        let imds_endpoint = raw
            .imds_endpoint
            .unwrap_or_else(|| crate::spot::DEFAULT_IMDS_ENDPOINT.to_string());
        if !imds_endpoint.starts_with("http://") {
            return Err(self.invalid("spot.imds_endpoint", imds_endpoint, "expected an http:// URL"));
        }
        let poll = self.duration("spot.poll", raw.poll, DEFAULT_SPOT_POLL)?;
        if poll.is_zero() || poll > Duration::from_secs(60) {
            return Err(self.invalid(
                "spot.poll",
                duration::format(poll),
                "must be between 1s and 60s: the notice comes two minutes ahead",
            ));
        }
        Ok(SpotConfig {
            enabled: raw.enabled.unwrap_or(true),
            imds_endpoint,
            poll,
        })
    }

    fn metrics(&self, raw: RawMetrics) -> Result<MetricsConfig, ConfigError> {
        let namespace = raw.namespace.unwrap_or_else(|| DEFAULT_METRICS_NAMESPACE.to_string());
        if namespace.is_empty() || namespace.starts_with("AWS/") || namespace.len() > 255 {
            return Err(self.invalid(
                "metrics.namespace",
                namespace,
                "must be 1-255 characters and not start with AWS/",
            ));
        }
        let dimensions = raw.dimensions.unwrap_or_default();
        if dimensions.len() > 29 {
            return Err(self.invalid(
                "metrics.dimensions",
                dimensions.len().to_string(),
                "at most 29 (InstanceId is added)",
            ));
        }
        if let Some(endpoint) = &raw.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(self.invalid(
                "metrics.endpoint",
                endpoint.clone(),
                "expected an http:// or https:// URL",
            ));
        }
        Ok(MetricsConfig {
            enabled: raw.enabled.unwrap_or(true),
            namespace,
            dimensions,
            endpoint: raw.endpoint,
        })
    }

    fn logs(&self, raw: RawLogs) -> Result<Option<LogsConfig>, ConfigError> {
        let buffer_events = raw.buffer_events.unwrap_or(DEFAULT_LOGS_BUFFER_EVENTS as i64);
        if !(1..=MAX_LOGS_BUFFER_EVENTS as i64).contains(&buffer_events) {
            return Err(self.invalid_number("logs.buffer_events", buffer_events, "must be between 1 and 100000"));
        }
        let flush = self.duration("logs.flush", raw.flush, DEFAULT_LOGS_FLUSH)?;
        if flush < Duration::from_secs(1) || flush > Duration::from_secs(60) {
            return Err(self.invalid("logs.flush", duration::format(flush), "must be between 1s and 60s"));
        }
        if let Some(endpoint) = &raw.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(self.invalid("logs.endpoint", endpoint.clone(), "expected an http:// or https:// URL"));
        }
        if let Some(region) = &raw.region
            && region.is_empty()
        {
            return Err(self.invalid("logs.region", region.clone(), "must not be empty"));
        }
        let group = match raw.group {
            None if raw.stream.is_some() => {
                return Err(self.missing("logs.group", "the CloudWatch Logs group `logs.stream` is in"));
            }
            None => return Ok(None),
            Some(group) => group,
        };
        // CloudWatch Logs' own rules for names.
        if group.is_empty()
            || group.len() > 512
            || !group.chars().all(|c| c.is_ascii_alphanumeric() || "_-/.#".contains(c))
        {
            return Err(self.invalid(
                "logs.group",
                group,
                "must be 1-512 characters of letters, digits and _ - / . #",
            ));
        }
        let Some(stream) = raw.stream else {
            return Err(self.missing("logs.stream", "the log stream spotkeeper's lines go to"));
        };
        if stream.is_empty() || stream.len() > 512 || stream.contains(':') || stream.contains('*') {
            return Err(self.invalid("logs.stream", stream, "must be 1-512 characters, without : or *"));
        }
        Ok(Some(LogsConfig {
            group,
            stream,
            region: raw.region,
            endpoint: raw.endpoint,
            buffer_events: buffer_events as usize,
            flush,
        }))
    }

    fn verify(&self, raw: RawVerify) -> Result<VerifyConfig, ConfigError> {
        let at = raw.at.unwrap_or_else(|| DEFAULT_VERIFY_AT.to_string());
        let parsed = at
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<u64>().ok()?, m.parse::<u64>().ok()?)))
            .filter(|(h, m)| *h < 24 && *m < 60 && at.len() == 5);
        let Some((hours, minutes)) = parsed else {
            return Err(self.invalid("verify.at", at, "expected a UTC time of day as HH:MM"));
        };
        Ok(VerifyConfig {
            daily: raw.daily.unwrap_or(true),
            at,
            at_offset: Duration::from_secs(hours * 3600 + minutes * 60),
        })
    }
}

fn serialize_pids_limit<S: serde::Serializer>(value: &Option<i64>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_i64(value.unwrap_or(0))
}

fn serialize_duration<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&duration::format(*value))
}

/// A path name: a stable identifier, the path's directory name in snapshots (and in
/// `restore --to DIR`), so plain, short and portable.
pub fn check_path_name(name: &str) -> Result<(), String> {
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !first_ok
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err("expected 1 to 32 of a-z, 0-9, `_` and `-`, starting with a letter or digit".into());
    }
    Ok(())
}

/// A valid environment variable name (a `[container] environment` key, the last segment of an
/// SSM parameter's name): `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An RFC 1123 label: what Docker accepts as a hostname and `hostname()` returns in the container.
fn is_hostname(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `ALL` or a capability name, with or without `CAP_` (Docker takes both).
fn is_capability(name: &str) -> bool {
    let bare = name.strip_prefix("CAP_").unwrap_or(name);
    !bare.is_empty()
        && bare
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// S3's bucket naming rules, so a typo fails here rather than as a signature error later.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("must be 3 to 63 characters long".into());
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("may contain only lowercase letters, digits, `-` and `.`".into());
    }
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !edge_ok(bucket.bytes().next()) || !edge_ok(bucket.bytes().last()) {
        return Err("must begin and end with a letter or digit".into());
    }
    Ok(())
}

fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "monday",
        Weekday::Tue => "tuesday",
        Weekday::Wed => "wednesday",
        Weekday::Thu => "thursday",
        Weekday::Fri => "friday",
        Weekday::Sat => "saturday",
        Weekday::Sun => "sunday",
    }
}

fn serialize_follow<S: serde::Serializer>(follow: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match follow {
        Some(follow) => serializer.serialize_str(&duration::format(*follow)),
        None => serializer.serialize_str("off"),
    }
}

fn serialize_policy<S: serde::Serializer>(policy: &RetentionPolicy, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut s = serializer.serialize_struct("retention", 6)?;
    s.serialize_field("keep_all_within", &duration::format(policy.keep_all_within))?;
    s.serialize_field("daily_within", &duration::format(policy.daily_within))?;
    s.serialize_field("weekly_within", &duration::format(policy.weekly_within))?;
    s.serialize_field("week_starts", weekday_name(policy.week_starts))?;
    s.serialize_field("incomplete_grace", &duration::format(policy.incomplete_grace))?;
    s.serialize_field("follow_keep", &duration::format(policy.follow_keep))?;
    s.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/spotkeeper/test.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("config should be rejected").to_string()
    }

    #[test]
    fn minimal_config_takes_the_defaults() {
        let config = parse("[s3]\nbucket = \"openclaw-backup-dev\"\n").expect("valid");
        assert_eq!(config.state.paths.len(), 1);
        assert_eq!(config.state.primary().name, SHORTHAND_PATH_NAME);
        assert_eq!(config.state.primary().dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(config.state.work_dir, Path::new(DEFAULT_WORK_DIR));
        assert_eq!(config.state.primary().exclude, DEFAULT_EXCLUDES);
        assert_eq!(config.s3.prefix, "");
        assert_eq!(config.repository_url(), "s3://openclaw-backup-dev");
        assert_eq!(config.retention.keep_all_within, Duration::from_secs(86_400));
    }

    #[test]
    fn the_container_defaults_run_openclaw_as_its_compose_and_fleet_do() {
        let config = parse("[s3]\nbucket = \"b-1\"\n[container]\nimage = \"ghcr.io/openclaw/openclaw@sha256:ab\"\n")
            .expect("valid");
        let c = config.container.expect("container");
        assert_eq!(c.command, DEFAULT_COMMAND);
        assert!(c.init && c.no_new_privileges);
        assert_eq!(c.hostname, "openclaw");
        assert_eq!(c.cap_drop, ["ALL"]);
        assert!(c.cap_add.is_empty());
        assert_eq!(c.pids_limit, Some(512));
        assert_eq!(c.memory_limit, MemoryLimit::Auto);
        assert_eq!(c.stop_timeout, Duration::from_secs(90));
        assert_eq!(c.probe, ProbeKind::Openclaw);
        // `[]` keeps the image's command; 0 lifts the pids limit.
        let config = parse(
            "[s3]\nbucket = \"b-1\"\n[container]\nimage = \"x\"\ncommand = []\npids_limit = 0\nmemory_limit = \"off\"\n",
        )
        .expect("valid");
        let c = config.container.expect("container");
        assert!(c.command.is_empty());
        assert_eq!(c.pids_limit, None);
        assert_eq!(c.memory_limit, MemoryLimit::Off);
        for (text, key) in [
            ("hostname = \"-bad\"", "container.hostname"),
            ("hostname = \"a.b\"", "container.hostname"),
            ("cap_drop = [\"all caps\"]", "container.cap_drop"),
            ("cap_add = [\"\"]", "container.cap_add"),
            ("pids_limit = 3", "container.pids_limit"),
            ("memory_limit = \"2GB\"", "container.memory_limit"),
            ("memory_limit = \"10MiB\"", "container.memory_limit"),
            ("startup_url = \"127.0.0.1/startupz\"", "container.startup_url"),
            ("probe = \"tcp\"", "probe"),
        ] {
            let msg = error(&format!("[s3]\nbucket = \"b-1\"\n[container]\nimage = \"x\"\n{text}\n"));
            assert!(msg.contains(key), "{text}: {msg}");
        }
    }

    #[test]
    fn memory_limits_parse_and_auto_leaves_the_system_its_share() {
        let gib = 1u64 << 30;
        assert_eq!(MemoryLimit::parse("1536MiB"), Ok(MemoryLimit::Bytes(1536 << 20)));
        assert_eq!(MemoryLimit::parse("1.5GiB"), Ok(MemoryLimit::Bytes(1536 << 20)));
        assert_eq!(MemoryLimit::parse("auto"), Ok(MemoryLimit::Auto));
        assert!(MemoryLimit::parse("1.5").is_err());
        assert!(MemoryLimit::parse("GiB").is_err());
        // (total, limit): a 2 GiB t4g.small leaves 512 MiB; a tiny machine keeps half.
        for (total, limit) in [(2 * gib, Some(gib + gib / 2)), (gib / 2, Some(gib / 4)), (0, None)] {
            assert_eq!(MemoryLimit::Auto.bytes(total), limit, "{total}");
        }
        assert_eq!(MemoryLimit::Off.bytes(2 * gib), None);
        assert_eq!(MemoryLimit::Bytes(gib).bytes(2 * gib), Some(gib));
    }

    #[test]
    fn prefix_is_normalised() {
        let config = parse("[s3]\nbucket = \"b-1\"\nprefix = \"/lab/one/\"\n").expect("valid");
        assert_eq!(config.s3.prefix, "lab/one");
        assert_eq!(config.repository_url(), "s3://b-1/lab/one");
    }

    #[test]
    fn unknown_keys_are_named() {
        let msg = error("[s3]\nbucket = \"b-1\"\nbukket = \"x\"\n");
        assert!(msg.contains("bukket"), "{msg}");
        let msg = error("[s3]\nbucket = \"b-1\"\n[stat]\ndir = \"/x\"\n");
        assert!(msg.contains("stat"), "{msg}");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let cases = [
            ("[s3]\nprefix = \"x\"\n", "s3.bucket"),
            ("[state]\ndir = \"/x\"\n", "s3"),
            ("[s3]\nbucket = \"Bad_Bucket\"\n", "\"Bad_Bucket\""),
            ("[s3]\nbucket = \"b-1\"\nprefix = \"a/../b\"\n", "s3.prefix"),
            (
                "[s3]\nbucket = \"b-1\"\nendpoint = \"127.0.0.1:9000\"\n",
                "\"127.0.0.1:9000\"",
            ),
            ("[s3]\nbucket = \"b-1\"\n[state]\ndir = \"relative/dir\"\n", "state.dir"),
            (
                "[s3]\nbucket = \"b-1\"\n[state]\ndir = \"/var/lib/spotkeeper/state\"\n",
                "state.work_dir",
            ),
            (
                "[s3]\nbucket = \"b-1\"\n[retention]\ndaily_within = \"7days\"\n",
                "\"7days\"",
            ),
            (
                "[s3]\nbucket = \"b-1\"\n[retention]\nweek_starts = \"fri-day\"\n",
                "retention.week_starts",
            ),
            (
                "[s3]\nbucket = \"b-1\"\n[retention]\nkeep_all_within = \"8d\"\n",
                "retention.keep_all_within",
            ),
        ];
        for (text, expected) in cases {
            let msg = error(text);
            assert!(msg.contains(expected), "{text:?}: {msg}");
            assert!(msg.contains("/etc/spotkeeper/test.toml"), "{msg}");
        }
    }

    #[test]
    fn the_repository_password_has_one_source_and_never_reaches_the_container() {
        let base =
            "[s3]\nbucket = \"b-1\"\n[secrets]\nssm_path = \"/openclaw/prod/\"\nendpoint = \"http://127.0.0.1:5000\"\n";
        let ok = parse(&format!(
            "{base}[repository]\npassword_ssm = \"/openclaw-repository/prod/password\"\n"
        ))
        .expect("valid");
        let repository = ok.repository.expect("repository");
        assert_eq!(
            repository.password,
            PasswordSource::Ssm("/openclaw-repository/prod/password".into())
        );
        // The SSM endpoint defaults to the secrets' (the same emulator or VPC endpoint).
        assert_eq!(repository.ssm_endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        // The effective config names the source, in the keys a person writes.
        assert!(
            parse(&format!("{base}[repository]\npassword_ssm = \"/r/p\"\n"))
                .expect("valid")
                .to_toml()
                .contains("password_ssm = \"/r/p\"")
        );
        for (section, needle) in [
            (
                "password_ssm = \"/openclaw/prod/repository\"",
                "container's environment",
            ),
            ("password_ssm = \"/openclaw/prod/deep/er\"", "container's environment"),
            ("password_ssm = \"relative\"", "repository.password_ssm"),
            ("password_ssm = \"/a\"\npassword_file = \"/etc/p\"", "not both"),
            ("ssm_endpoint = \"http://x\"", "repository.password_ssm is required"),
            ("password_file = \"/opt/openclaw/.openclaw/pw\"", "every snapshot"),
            ("password_file = \"etc/p\"", "absolute"),
        ] {
            let msg = error(&format!("{base}[repository]\n{section}\n"));
            assert!(msg.contains(needle), "{section}: {msg}");
        }
        // A sibling path that merely starts with the same letters is not under the secrets path.
        assert!(
            parse(&format!(
                "{base}[repository]\npassword_ssm = \"/openclaw/prod-repository/pw\"\n"
            ))
            .is_ok()
        );
    }

    #[test]
    fn state_paths_are_named_apart_and_never_overlap() {
        let repo = "[repository]\npassword_file = \"/etc/spotkeeper/pw\"\n";
        let path = |name: &str, dir: &str, mount: &str| {
            format!("[[state.paths]]\nname = {name:?}\ndir = {dir:?}\nmount = {mount:?}\n")
        };
        let container = "[container]\nimage = \"openclaw:1\"\n";
        let three = format!(
            "{}{}{}",
            path("config", "/opt/openclaw/.openclaw", "/home/node/.openclaw"),
            path("workspace", "/opt/openclaw/workspace", "/home/node/.openclaw/workspace"),
            path("auth", "/opt/openclaw/auth-profiles", "/home/node/.config/openclaw"),
        );
        let config = parse(&format!("[s3]\nbucket = \"b-1\"\n{repo}{container}{three}")).expect("three paths");
        let names: Vec<&str> = config.state.paths.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["config", "workspace", "auth"]);
        assert_eq!(
            config.state.paths[1].mount.as_deref(),
            Some("/home/node/.openclaw/workspace")
        );
        assert_eq!(config.state.paths[2].exclude, DEFAULT_EXCLUDES);
        // The effective config parses back to the same paths.
        let again = Config::parse(&config.to_toml(), Path::new("effective.toml")).expect("round trip");
        assert_eq!(again.state.paths, config.state.paths);
        // The shorthand's mount is [container] state_mount.
        let one = parse(&format!("[s3]\nbucket = \"b-1\"\n{container}")).expect("shorthand");
        assert_eq!(one.state.primary().mount.as_deref(), Some(DEFAULT_STATE_MOUNT));

        // (config text, a piece of the error)
        let cases = [
            (
                format!("{repo}{}{}", path("a", "/srv/a", "/a"), path("b", "/srv/a/b", "/b")),
                "state.paths[1].dir = \"/srv/a/b\" is not valid: overlaps path \"a\" (/srv/a)",
            ),
            (
                format!("{repo}{}{}", path("a", "/srv/a/b", "/a"), path("b", "/srv/a", "/b")),
                "overlaps path \"a\" (/srv/a/b)",
            ),
            (
                format!("{repo}{}{}", path("a", "/srv/a", "/a"), path("a", "/srv/b", "/b")),
                "state.paths[1].name = \"a\" is not valid: two paths are named so",
            ),
            (
                format!("{repo}{}", path("Bad/Name", "/srv/a", "/a")),
                "state.paths[0].name = \"Bad/Name\"",
            ),
            (
                format!("{repo}{}{}", path("a", "/srv/a", "/m"), path("b", "/srv/b", "/m")),
                "state.paths[1].mount = \"/m\" is not valid: path \"a\" is mounted there too",
            ),
            (
                format!("{}{}", path("a", "/srv/a", "/a"), path("b", "/srv/b", "/b")),
                "more than one path needs format 2",
            ),
            (
                format!("[state]\ndir = \"/srv/x\"\n{repo}{}", path("a", "/srv/a", "/a")),
                "give either [state] dir (one directory) or [[state.paths]] entries, not both",
            ),
            (
                format!("{repo}{container}state_mount = \"/x\"\n{}", path("a", "/srv/a", "/a")),
                "container.state_mount = \"/x\" is not valid: with [[state.paths]]",
            ),
            (
                format!("{repo}{container}[[state.paths]]\nname = \"a\"\ndir = \"/srv/a\"\n"),
                "state.paths[0].mount is required",
            ),
            (
                format!(
                    "[state]\nwork_dir = \"/srv/a/work\"\n{repo}{}",
                    path("a", "/srv/a", "/a")
                ),
                "state.work_dir = \"/srv/a/work\" is not valid: must not contain or lie inside state.paths[0].dir",
            ),
            (
                format!(
                    "[repository]\npassword_file = \"/srv/b/pw\"\n{}{}",
                    path("a", "/srv/a", "/a"),
                    path("b", "/srv/b", "/b")
                ),
                "must not be inside state path \"b\" (/srv/b)",
            ),
            (format!("{repo}[state]\npaths = []\n"), "state.paths is required"),
        ];
        for (text, want) in cases {
            let err = error(&format!("[s3]\nbucket = \"b-1\"\n{text}"));
            assert!(err.contains(want), "{text}\n-> {err}\nwanted: {want}");
        }
    }

    #[test]
    fn effective_config_round_trips() {
        let config = parse(
            "[state]\ndir = \"/srv/state\"\nwork_dir = \"/srv/spotkeeper\"\nexclude = [\"*.log\"]\n\
             [s3]\nbucket = \"b-1\"\nprefix = \"lab\"\nendpoint = \"http://127.0.0.1:9000\"\n\
             [retention]\nweekly_within = \"6w\"\n\
             [container]\nimage = \"x\"\npids_limit = 0\nmemory_limit = \"1.5GiB\"\ncap_add = [\"CHOWN\"]\n",
        )
        .expect("valid");
        let rendered = config.to_toml();
        let again = parse(&rendered).expect("rendered config parses");
        assert_eq!(again.to_toml(), rendered);
        assert!(rendered.contains("weekly_within = \"42d\""), "{rendered}");
    }

    #[test]
    fn logs_ship_only_with_a_group_and_take_their_defaults() {
        let base = "[s3]\nbucket = \"backups\"\n";
        assert!(parse(base).expect("valid").logs.is_none());
        // Tuning without a group: shipping stays off.
        assert!(
            parse(&format!("{base}[logs]\nbuffer_events = 5\n"))
                .expect("valid")
                .logs
                .is_none()
        );
        let config = parse(&format!(
            "{base}[logs]\ngroup = \"/spotkeeper/dev\"\nstream = \"openclaw/spotkeeper\"\n"
        ))
        .expect("valid");
        let logs = config.logs.as_ref().expect("shipping on");
        assert_eq!(
            (logs.group.as_str(), logs.stream.as_str()),
            ("/spotkeeper/dev", "openclaw/spotkeeper")
        );
        assert_eq!(logs.buffer_events, DEFAULT_LOGS_BUFFER_EVENTS);
        assert_eq!(logs.flush, DEFAULT_LOGS_FLUSH);
        assert_eq!((logs.region.as_deref(), logs.endpoint.as_deref()), (None, None));
        let shown = config.to_toml();
        assert!(
            shown.contains("[logs]") && shown.contains("flush = \"5s\"") && shown.contains("buffer_events = 10000"),
            "{shown}"
        );
    }

    #[test]
    fn logs_settings_are_validated_by_key() {
        let base = "[s3]\nbucket = \"backups\"\n[logs]\n";
        let ok = "group = \"g\"\nstream = \"s\"\n";
        // (the [logs] body, what the error says; "" when valid)
        let table = [
            (format!("{ok}buffer_events = 1\nflush = \"1s\"\n"), ""),
            (
                format!(
                    "{ok}buffer_events = 100000\nflush = \"60s\"\nregion = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:4566\"\n"
                ),
                "",
            ),
            (
                format!("{ok}buffer_events = 0\n"),
                "logs.buffer_events = 0 is not valid: must be between 1 and 100000",
            ),
            (
                format!("{ok}buffer_events = 100001\n"),
                "logs.buffer_events = 100001 is not valid",
            ),
            (format!("{ok}flush = \"500ms\"\n"), "logs.flush"),
            (
                format!("{ok}flush = \"61s\"\n"),
                "logs.flush = \"61s\" is not valid: must be between 1s and 60s",
            ),
            (format!("{ok}flush = \"soon\"\n"), "logs.flush = \"soon\" is not valid"),
            (format!("{ok}endpoint = \"127.0.0.1:4566\"\n"), "logs.endpoint"),
            (format!("{ok}region = \"\"\n"), "logs.region"),
            ("group = \"g\"\n".to_string(), "logs.stream is required"),
            ("stream = \"s\"\n".to_string(), "logs.group is required"),
            (
                "group = \"a b\"\nstream = \"s\"\n".to_string(),
                "logs.group = \"a b\" is not valid",
            ),
            (
                "group = \"g\"\nstream = \"a:b\"\n".to_string(),
                "logs.stream = \"a:b\" is not valid",
            ),
            (format!("{ok}level = \"debug\"\n"), "level"),
        ];
        for (body, expected) in table {
            let text = format!("{base}{body}");
            match parse(&text) {
                Ok(_) => assert_eq!(expected, "", "{body} should be refused"),
                Err(e) => {
                    assert!(!expected.is_empty(), "{body}: {e}");
                    assert!(e.to_string().contains(expected), "{body}: {e}");
                }
            }
        }
    }
}
