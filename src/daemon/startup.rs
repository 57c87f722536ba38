//! Start-up, in order: thaw a container left frozen, secrets, the boot restore decision, image,
//! container, healthy.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{
    Daemon, DaemonError, EXTEND_STEP, GATEWAY_TOKEN_KEY, REPO_CACHE_DIR, STARTUP_RETRY_MAX, STARTUP_RETRY_MIN,
    THAW_ATTEMPTS, show,
};
use crate::boot::{self, BootAction, BootRefusal};
use crate::catalog::{self, HeadRead};
use crate::manifest::ImageInfo;
use crate::manifest::ManifestError;
use crate::metrics::{Unit, names};
use crate::repository::{self, RepositoryError};
use crate::restore::{self, RestoreError, RestoreRequest};
use crate::runtime::probe::{self, Probe, Verdict};
use crate::runtime::{self, ContainerRuntime, ContainerSpec, RunState};
use crate::secrets::{self, Secrets};
use crate::snapshot;
use crate::snapshot_id::SnapshotId;
use crate::spot::SpotWatcher;
use crate::{liveness, record};

impl Daemon {
    /// Start-up, in order. Every step that talks to S3 or SSM retries transient errors with
    /// backoff; nothing starts without its secrets, and nothing starts fresh on an error.
    pub(super) async fn start(&mut self) -> Result<(), DaemonError> {
        // A container left frozen by a crash of ours must not stay frozen.
        match self.workload.container.state().await? {
            RunState::Paused => {
                tracing::warn!(container = %self.workload.container.name, "container was left frozen; thawing it");
                runtime::thaw(&self.workload.container, THAW_ATTEMPTS).await?;
            }
            RunState::Missing | RunState::Created | RunState::Running | RunState::Exited => {}
        }
        if self.config.spot.enabled {
            self.probe_instance().await;
        }
        let identity = record::machine_identity(self.snapshots.instance_id.as_deref());
        self.snapshots.writer = record::writer_id(&self.config.state.work_dir, &identity)?;
        if self.config.secrets.is_some() {
            self.say("reading secrets from SSM");
            self.load_secrets_with_retry().await?;
        }
        self.load_repository().await?;
        self.say("deciding whether to restore");
        self.boot_restore().await?;
        self.say("preparing the container image");
        self.edges.notifier.extend(EXTEND_STEP);
        let digest = self
            .workload
            .container
            .ensure_image(&self.container_config.image)
            .await?;
        self.workload.image = Some(ImageInfo {
            reference: self.container_config.image.clone(),
            digest: Some(digest.clone()),
        });
        self.update(|s| s.container.image_digest = Some(digest));
        self.choose_log_driver().await;
        self.recreate_container().await?;
        self.say("waiting for the container to become healthy");
        self.wait_healthy().await?;
        self.update(|s| s.phase = "running".into());
        let ready = format!("running; {} healthy", self.workload.container.name);
        tracing::info!("{ready}");
        self.edges.notifier.ready(&ready);
        Ok(())
    }

    /// Asks IMDS for the instance id. Not on EC2: say so once and carry on without the watcher.
    pub(super) async fn probe_instance(&mut self) {
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
                self.edges.metrics.add_dimension("InstanceId", &id);
                self.update(|s| s.instance_id = Some(id.clone()));
                self.snapshots.instance_id = Some(id);
            }
            Err(e) => {
                tracing::info!(error = %e, "not on EC2 (IMDS unreachable); Spot notices will not be watched");
            }
        }
    }

    pub(super) async fn load_secrets_with_retry(&mut self) -> Result<(), DaemonError> {
        let (Some(config), Some(client)) = (self.config.secrets.clone(), self.edges.secrets_client.clone()) else {
            return Ok(());
        };
        let mut delay = STARTUP_RETRY_MIN;
        let secrets = loop {
            match secrets::fetch(&client, &config.ssm_path).await {
                Ok(secrets) => break secrets,
                Err(e) if e.is_transient() => {
                    liveness::mark();
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "SSM not reachable; the container waits for its secrets");
                    self.edges.notifier.extend(delay + EXTEND_STEP);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(STARTUP_RETRY_MAX);
                }
                Err(e) => return Err(e.into()),
            }
        };
        secrets::write_env_file(&config.env_file, &secrets)?;
        tracing::info!(count = secrets.len(), keys = ?secrets.keys(), env_file = %config.env_file.display(), "secrets written");
        self.update(|s| s.secrets = Some(secrets.len()));
        self.remember_gateway_token(&secrets);
        self.workload.secrets = Some(secrets);
        Ok(())
    }

    /// Reads the repository password (SSM errors that may pass are retried with
    /// backoff, as the secrets are), and when the prefix holds `latest.json`, opens the
    /// repository now: a wrong or missing password stops the start-up (exit 3) instead of letting
    /// the app run while every snapshot, the final one included, fails.
    pub(super) async fn load_repository(&mut self) -> Result<(), DaemonError> {
        {
            let repository = self.config.writer_repository("run")?.clone();
            self.say("reading the repository password");
            let mut delay = STARTUP_RETRY_MIN;
            let password = loop {
                match crate::format2::load_password(&repository, &self.edges.sdk_config).await {
                    Ok(password) => break password,
                    Err(e @ crate::format2::PasswordError::Ssm { transient: true, .. }) => {
                        liveness::mark();
                        tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "repository password: SSM not reachable, retrying");
                        self.edges
                            .notifier
                            .status("reading the repository password: waiting for SSM");
                        self.edges.notifier.extend(delay + EXTEND_STEP);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(STARTUP_RETRY_MAX);
                    }
                    Err(e) => return Err(RepositoryError::from(e).into()),
                }
            };
            let cache = self.config.state.work_dir.join(REPO_CACHE_DIR);
            self.edges.engine = Some(crate::format2::Engine::new(
                self.edges.store.clone(),
                password,
                Some(cache),
            ));
        }
        let store = self.edges.store.clone();
        if !self
            .retry_s3("looking for latest.json", || repository::has_pointer(&store))
            .await?
        {
            return Ok(());
        }
        let Some(engine) = self.edges.engine.clone() else {
            return Err(RepositoryError::NeedsPassword {
                repository: self.snapshots.repository.clone(),
            }
            .into());
        };
        self.say("opening the format-2 repository");
        self.retry_s3("opening the format-2 repository", || async {
            engine.with(|_| Ok(())).await.map_err(RepositoryError::from)
        })
        .await?;
        Ok(())
    }

    /// Calls `op` until it succeeds or fails permanently, backing off on transient S3 errors.
    pub(super) async fn retry_s3<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RepositoryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RepositoryError>>,
    {
        let mut delay = STARTUP_RETRY_MIN;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_transient() => {
                    liveness::mark();
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "{what}: S3 not reachable, retrying (never starting fresh on an error)");
                    self.edges.notifier.status(&format!("{what}: waiting for S3"));
                    self.edges.notifier.extend(delay + EXTEND_STEP);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(STARTUP_RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// What the repository says about its head (`latest.json`, else format 1's `latest/`), S3
    /// errors retried; a head that cannot be read falls back on the newest complete snapshot of
    /// either format, lineage checked.
    /// `origin`: the snapshot the local state descends from (the local record's), to tell local
    /// state newer than the head.
    async fn latest_view(
        &self,
        base: Option<SnapshotId>,
        origin: Option<SnapshotId>,
    ) -> Result<(boot::LatestView, Option<DateTime<Utc>>), DaemonError> {
        let store = self.edges.store.clone();
        let engine = self.edges.engine.clone();
        let descends = |lineage: (SnapshotId, Option<SnapshotId>, Option<&str>)| {
            snapshot::check_lineage(Some(lineage), base, &self.snapshots.writer, false).is_ok()
        };
        let catalog = self
            .retry_s3("reading the repository", || {
                catalog::read(&store, engine.as_ref(), catalog::Detail::Listing)
            })
            .await?;
        let why = match catalog.head() {
            // latest.json is authentic; whether it moved backwards, the history tells.
            HeadRead::Found(head) => {
                return Ok((
                    boot::LatestView::Readable {
                        id: head.id(),
                        local_descends: descends(head.lineage()),
                        newer_published: catalog.newer_published(),
                        local_newer: catalog.local_newer(origin),
                    },
                    Some(head.created_at()),
                ));
            }
            HeadRead::Untrusted { error, claimed } => {
                let view = match error {
                    crate::format2::head::HeadError::Unauthenticated { .. } => boot::LatestView::Unauthenticated {
                        local_descends: descends((claimed.id, claimed.parent, claimed.writer.as_deref())),
                        why: error.to_string(),
                    },
                    _ => boot::LatestView::Forged { why: error.to_string() },
                };
                return Ok((view, None));
            }
            HeadRead::Absent => {
                let newest_complete = catalog.newest_complete().map(catalog::Snapshot::id);
                return Ok((boot::LatestView::Absent { newest_complete }, None));
            }
            // Another version's pointer: never guessed around.
            HeadRead::Unreadable(ManifestError::PointerFormat { key, found }) => {
                let (key, found) = (key.clone(), *found);
                return Err(RepositoryError::Manifest(ManifestError::PointerFormat { key, found }).into());
            }
            HeadRead::Unreadable(e) => e.to_string(),
        };
        tracing::error!(error = %why, "the latest pointer cannot be read; falling back on the newest complete snapshot");
        let mut local_descends = false;
        let mut created_at = None;
        let newest = catalog
            .newest_complete()
            .map(|newest| (newest.id(), newest.format(), newest.created_at()));
        match newest {
            // Format 2's snapshots carry no lineage of their own: only a state that is exactly
            // that snapshot descends from it.
            Some((id, catalog::Format::Two, time)) => {
                local_descends = base == Some(id);
                created_at = Some(time);
            }
            Some((id, catalog::Format::One, _)) => {
                match self
                    .retry_s3("reading the newest snapshot's manifest", || {
                        repository::manifest(&store, &id)
                    })
                    .await
                {
                    Ok(Some(manifest)) => {
                        local_descends = descends((manifest.id, manifest.parent, manifest.host.writer.as_deref()));
                        created_at = Some(manifest.created_at);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(snapshot_id = %id, error = %e, "cannot read the newest snapshot's manifest either")
                    }
                }
            }
            None => {}
        }
        Ok((
            boot::LatestView::Unreadable {
                why,
                newest_complete: newest.map(|(id, _, _)| id),
                local_descends,
            },
            created_at,
        ))
    }

    pub(super) async fn boot_restore(&mut self) -> Result<(), DaemonError> {
        // A restore killed between its swaps is completed before anything looks at the paths.
        let dirs: Vec<PathBuf> = self.config.state.paths.iter().map(|p| p.dir.clone()).collect();
        if let Some(id) = restore::recover(&self.config.state.work_dir, &dirs)? {
            tracing::warn!(snapshot_id = %id, "completed a restore that was interrupted between its swaps");
        }
        let mut states = Vec::with_capacity(self.config.state.paths.len());
        for path in &self.config.state.paths {
            let state = restore::inspect(&path.dir)?;
            tracing::info!(path = %path.name, dir = %path.dir.display(), ?state, "state path at boot");
            states.push(state);
        }
        // The paths are one set: local state in any of them makes the set local.
        let local = boot::set_state(&states);
        let record = record::load(&self.config.state.work_dir)?;
        let base = record
            .as_ref()
            .and_then(|r| r.base_for_set(&self.snapshots.repository, &self.config.state.dirs()));
        let origin = record
            .as_ref()
            .filter(|r| {
                r.base_for_set(&self.snapshots.repository, &self.config.state.dirs())
                    .is_some()
            })
            .map(|r| r.snapshot_id);
        let (latest, created_at) = self.latest_view(base, origin).await?;
        self.snapshots.protection.head_found(created_at);
        let action = match boot::decide(local, &latest, &self.snapshots.repository) {
            Ok(action) => action,
            Err(refusal) => {
                self.refuse_boot(&refusal).await;
                return Err(refusal.into());
            }
        };
        tracing::info!(?action, ?local, ?latest, base = %show(base), "boot restore decision");
        match action {
            BootAction::KeepLocal => {
                // A path that is absent next to local ones starts empty: the set is local.
                for (path, state) in self.config.state.paths.iter().zip(&states) {
                    if *state != restore::TargetState::NonEmpty && states.contains(&restore::TargetState::NonEmpty) {
                        let text = format!(
                            "state path {:?} ({}) was empty or absent at boot while others held local state: the set is \
                             local, nothing was restored, it starts empty. If it should not be empty (a volume not \
                             mounted?), `spotkeeper restore --path {} --snapshot ID` brings it back from a snapshot",
                            path.name,
                            path.dir.display(),
                            path.name
                        );
                        tracing::warn!("{text}");
                        self.update(|s| s.warnings.push(text.clone()));
                    }
                }
                self.create_absent_paths()?;
                if let boot::LatestView::Readable { id, .. } = latest {
                    self.snapshots.protection.kept_local(id);
                }
                Ok(())
            }
            BootAction::StartFresh => self.create_absent_paths(),
            BootAction::Restore(id) | BootAction::DisplaceAndRestore(id) => {
                if matches!(
                    self.workload.container.state().await?,
                    RunState::Running | RunState::Paused
                ) {
                    self.workload.supervision.stopping_on_purpose();
                    runtime::thaw(&self.workload.container, THAW_ATTEMPTS).await?;
                    self.workload.container.stop(self.container_config.stop_timeout).await?;
                }
                self.say(&format!("restoring the state from snapshot {id}"));
                self.edges.notifier.extend(EXTEND_STEP);
                let report = self
                    .restore_into_state(Some(id), None, matches!(action, BootAction::DisplaceAndRestore(_)))
                    .await?;
                if let Some(place) = &report.displaced {
                    tracing::warn!(displaced = %place.display(), "local state did not descend from latest/; kept it aside");
                }
                // Paths the snapshot does not hold (configured after it was taken) start empty.
                self.create_absent_paths()
            }
        }
    }

    /// Says why the app does not start: the journal (with the snapshot ids), `status` and the
    /// systemd status line, and a metric sent before the daemon exits. systemd starts the daemon
    /// again (Restart=on-failure), and each start judges the head again: once a person has fixed
    /// it, the app starts without anyone restarting anything.
    async fn refuse_boot(&mut self, refusal: &BootRefusal) {
        let text = refusal.to_string();
        match refusal {
            BootRefusal::LocalNewer { head, local, .. } => {
                tracing::error!(head_snapshot_id = %head, local_snapshot_id = %local, "local state is newer than the head; the app is not started: {text}");
            }
            BootRefusal::HeadReplayed { head, newer, .. } => {
                tracing::error!(head_snapshot_id = %head, newer_snapshot_id = %newer, "the head moved backwards; the app is not started: {text}");
            }
            _ => tracing::error!("the app is not started: {text}"),
        }
        if matches!(
            refusal,
            BootRefusal::LocalNewer { .. } | BootRefusal::HeadReplayed { .. } | BootRefusal::HeadUntrusted { .. }
        ) {
            self.edges.metrics.record(names::HEAD_REFUSED, 1.0, Unit::Count);
            self.edges.metrics.flush(Duration::from_secs(5)).await;
        }
        self.update(|s| {
            s.phase = "refused".into();
            s.warnings.push(text.clone());
        });
        self.edges.notifier.status(&format!("refused: {text}"));
    }

    /// Creates the state paths that do not exist, each with the owner and mode of the first
    /// path that does (the container's user must be able to write it; Docker would otherwise
    /// create a bind-mount source as root).
    fn create_absent_paths(&self) -> Result<(), DaemonError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let template = self
            .config
            .state
            .paths
            .iter()
            .find_map(|p| std::fs::metadata(&p.dir).ok().filter(|m| m.is_dir()));
        for path in &self.config.state.paths {
            if std::fs::symlink_metadata(&path.dir).is_ok() {
                continue;
            }
            let io = |source| RestoreError::Io {
                path: path.dir.clone(),
                source,
            };
            std::fs::create_dir_all(&path.dir).map_err(io)?;
            if let Some(template) = &template {
                std::fs::set_permissions(&path.dir, std::fs::Permissions::from_mode(template.mode() & 0o1777))
                    .map_err(io)?;
                if rustix::process::geteuid().is_root() {
                    std::os::unix::fs::chown(&path.dir, Some(template.uid()), Some(template.gid())).map_err(io)?;
                }
            }
            tracing::info!(path = %path.name, dir = %path.dir.display(), "created the state path empty");
        }
        Ok(())
    }

    /// Uses the configured log driver when the engine has it, else `local`, with a warning in
    /// the log and in `status` (Docker without journald, as on many hosts, would fail every start).
    pub(super) async fn choose_log_driver(&mut self) {
        let wanted = self.container_config.log_driver.clone();
        let chosen = match self.workload.container.log_drivers().await {
            Some(available) if !available.iter().any(|d| d == &wanted) => {
                let text = format!(
                    "log driver {wanted:?} is not available on this Docker Engine (it offers {}); using {:?} instead. Set [container] log_driver to silence this",
                    available.join(", "),
                    runtime::FALLBACK_LOG_DRIVER
                );
                tracing::warn!("{text}");
                self.update(|s| s.warnings.push(text.clone()));
                runtime::FALLBACK_LOG_DRIVER.to_string()
            }
            _ => wanted,
        };
        self.update(|s| s.container.log_driver = chosen.clone());
        self.workload.log_driver = chosen;
    }

    /// Removes old copies of displaced local state (`displaced::KEEP` newest stay).
    pub(super) fn prune_displaced(&self) {
        for path in &self.config.state.paths {
            crate::displaced::prune(&path.dir, crate::displaced::KEEP);
        }
    }

    pub(super) async fn restore_into_state(
        &mut self,
        snapshot: Option<SnapshotId>,
        only: Option<String>,
        force: bool,
    ) -> Result<restore::RestoreReport, DaemonError> {
        let request = RestoreRequest {
            snapshot,
            destination: restore::Destination::State {
                paths: self
                    .config
                    .state
                    .paths
                    .iter()
                    .map(|p| (p.name.clone(), p.dir.clone()))
                    .collect(),
                work_dir: self.config.state.work_dir.clone(),
            },
            only,
            force,
            origin: None,
            repository: self.snapshots.repository.clone(),
            now: Utc::now(),
        };
        let store = self.edges.store.clone();
        let mut delay = STARTUP_RETRY_MIN;
        let report = loop {
            match restore::restore(&store, self.edges.engine.as_ref(), &request).await {
                Ok(report) => break report,
                Err(RestoreError::Repository(e)) if e.is_transient() => {
                    liveness::mark();
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "restore: S3 not reachable, retrying");
                    self.edges.notifier.extend(delay + EXTEND_STEP);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(STARTUP_RETRY_MAX);
                }
                Err(RestoreError::Download { key, source }) => {
                    liveness::mark();
                    tracing::warn!(key, error = %source, retry_in_s = delay.as_secs(), "restore: download failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(STARTUP_RETRY_MAX);
                }
                Err(e) => return Err(e.into()),
            }
        };
        tracing::info!(snapshot_id = %report.id, files = report.files, duration_ms = report.duration_ms, "restored");
        self.edges
            .metrics
            .record(names::RESTORE_DURATION, report.duration_ms as f64, Unit::Milliseconds);
        // The mirror no longer matches the state, and a tracker watches the directory that was
        // moved aside.
        self.protect(|p| p.restored(report.latest.unwrap_or(report.id)));
        if self.snapshots.tracker.is_some() {
            self.start_tracker();
        }
        Ok(report)
    }

    /// Creates the container afresh from the config and starts it (stopping a running one
    /// first): at start-up, when secrets change, and when it was removed behind our back.
    pub(super) async fn recreate_container(&mut self) -> Result<(), DaemonError> {
        self.workload.supervision.stopping_on_purpose();
        let result = self.recreate_steps().await;
        match &result {
            Ok(at) => {
                self.workload.supervision.started(*at);
                self.workload.health.started(self.container_config.start_timeout);
                self.update(|s| s.container.state = "running".into());
                tracing::info!(container = %self.workload.container.name, "container started");
            }
            Err(_) => self.workload.supervision.stop_abandoned(),
        }
        result.map(|_| ())
    }

    async fn recreate_steps(&mut self) -> Result<DateTime<Utc>, DaemonError> {
        match self.workload.container.state().await? {
            RunState::Paused => {
                runtime::thaw(&self.workload.container, THAW_ATTEMPTS).await?;
                self.workload.container.stop(self.container_config.stop_timeout).await?;
            }
            RunState::Running => self.workload.container.stop(self.container_config.stop_timeout).await?,
            RunState::Missing | RunState::Created | RunState::Exited => {}
        }
        let env_file: Option<PathBuf> = self.config.secrets.as_ref().map(|s| s.env_file.clone());
        if let Some(env_file) = &env_file {
            // The container reads it as its own user: give it the state directory's owner.
            secrets::give_to_owner_of(env_file, &self.config.state.primary().dir)?;
        }
        let spec = ContainerSpec {
            config: &self.container_config,
            paths: &self.config.state.paths,
            env_file: env_file.as_deref(),
            log_driver: &self.workload.log_driver,
        };
        self.workload.container.create(&spec).await?;
        let at = Utc::now();
        self.workload.container.start().await?;
        Ok(at)
    }

    /// Keeps the gateway token for the readiness probe.
    pub(super) fn remember_gateway_token(&self, secrets: &Secrets) {
        if let Ok(mut token) = self.workload.probe_token.lock() {
            *token = secrets.get(GATEWAY_TOKEN_KEY).map(str::to_string);
        }
    }

    /// READY waits for the app to finish starting: OpenClaw's `/startupz` (`startup_url`), or
    /// liveness (`health_url`) where there is no startup endpoint or the image answers 404 there
    /// (builds before it). Readiness (`/readyz`) never gates READY: one channel account that
    /// cannot log in would hold a working gateway back until systemd gives up. An answer that
    /// is not OpenClaw's contract (a catch-all page) never passes: the error says why.
    pub(super) async fn wait_healthy(&mut self) -> Result<(), DaemonError> {
        let kind = self.container_config.probe;
        let live = self.container_config.health_url.clone();
        let (mut url, mut asking) = match (self.container_config.startup_url.clone(), live.clone()) {
            (Some(url), _) => (url, Probe::Startup),
            (None, Some(url)) => (url, Probe::Live),
            (None, None) => return Ok(()),
        };
        let deadline = Instant::now() + self.container_config.start_timeout;
        let mut last: String;
        loop {
            liveness::mark();
            let verdict = match runtime::fetch(&url, None).await {
                Ok(answer) => probe::judge(kind, asking, &answer),
                Err(e) => Verdict::Fail(e),
            };
            match verdict {
                Verdict::Pass => {
                    tracing::info!(url, "the app has started");
                    self.update(|s| s.container.healthy = Some(true));
                    return Ok(());
                }
                Verdict::NoEndpoint if asking == Probe::Startup && live.is_some() => {
                    tracing::info!(
                        url,
                        "the image has no startup endpoint (404); READY waits for liveness instead"
                    );
                    url = live.clone().unwrap_or_default();
                    asking = Probe::Live;
                    continue;
                }
                Verdict::NoEndpoint => last = "answered 404: the image has no such endpoint".into(),
                Verdict::Fail(reason) => last = reason,
            }
            if Instant::now() >= deadline {
                return Err(DaemonError::Unhealthy {
                    after: self.container_config.start_timeout,
                    url,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
