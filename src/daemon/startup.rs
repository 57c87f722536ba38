//! Start-up, in order: thaw a container left frozen, secrets, the boot restore decision, image,
//! container, healthy.

use super::*;

impl Daemon {
    /// Start-up, in order. Every step that talks to S3 or SSM retries transient errors with
    /// backoff; nothing starts without its secrets, and nothing starts fresh on an error.
    pub(super) async fn start(&mut self) -> Result<(), DaemonError> {
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
                self.metrics.add_dimension("InstanceId", &id);
                self.update(|s| s.instance_id = Some(id.clone()));
                self.instance_id = Some(id);
            }
            Err(e) => {
                tracing::info!(error = %e, "not on EC2 (IMDS unreachable); Spot notices will not be watched");
            }
        }
    }

    pub(super) async fn load_secrets_with_retry(&mut self) -> Result<(), DaemonError> {
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
    pub(super) async fn retry_s3<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RepositoryError>
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

    pub(super) async fn boot_restore(&mut self) -> Result<(), DaemonError> {
        let state_dir = self.config.state.dir.clone();
        let local = restore::inspect(&state_dir)?;
        let store = self.store.clone();
        let latest = self.retry_s3("reading latest/", || repository::latest(&store)).await?;
        // No latest/ and nothing local: starting fresh is only right when the repository is new.
        // (With local state there is nothing to decide: it is kept, and nothing is overwritten. A
        // first snapshot killed between its manifest and latest/ leaves exactly that.)
        if latest.is_none() && local != restore::TargetState::NonEmpty {
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

    pub(super) async fn restore_into_state(
        &mut self,
        snapshot: Option<SnapshotId>,
        force: bool,
    ) -> Result<restore::RestoreReport, DaemonError> {
        let request = RestoreRequest {
            snapshot,
            target: self.config.state.dir.clone(),
            is_state_dir: true,
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
        record::remember(
            &self.config.state.work_dir,
            &self.repository,
            &self.config.state.dir,
            report.id,
            report.latest.unwrap_or(report.id),
        )?;
        tracing::info!(snapshot_id = %report.id, files = report.files, duration_ms = report.duration_ms, "restored");
        self.metrics
            .record(names::RESTORE_DURATION, report.duration_ms as f64, Unit::Milliseconds);
        self.last_snapshot_id = report.latest.or(Some(report.id));
        // The mirror no longer matches the state.
        self.pending_upload = true;
        Ok(report)
    }

    pub(super) async fn recreate_container(&mut self) -> Result<(), DaemonError> {
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

    pub(super) async fn wait_healthy(&mut self) -> Result<(), DaemonError> {
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
}
