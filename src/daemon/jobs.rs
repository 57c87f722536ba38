//! The periodic work: snapshots through the frozen mirror, prune, secret refresh, the restore
//! drill, gauges.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::policy::{self, Observed};
use super::protection::Upload;
use super::{Daemon, DaemonError, FOLLOW_REASON, LEGACY_MIRROR_DIR, MIRROR_DIR, MIRROR_INDEX_DIR, THAW_ATTEMPTS};
use crate::config::Consistency;
use crate::control::{PruneStatus, SnapshotStatus, VerifyStatus};
use crate::manifest::Host;
use crate::metrics::{Unit, names};
use crate::mirror::{MirrorError, MirrorSet, SyncStats, TrackerSet};
use crate::runtime::{self, Container, ContainerRuntime, RunState, RuntimeError};
use crate::snapshot::{self, SnapshotError, SnapshotOutcome, SnapshotRequest};
use crate::{drill, prune, record, restore, secrets};

impl Daemon {
    /// `[snapshot] follow` when it can work: every path tracked (it must know when the app writes). Said once at start.
    pub(super) fn follow_interval(&self) -> Option<Duration> {
        let follow = self.config.snapshot.follow?;
        if !self.snapshots.tracker.as_ref().is_some_and(TrackerSet::complete) {
            tracing::warn!(
                "[snapshot] follow is inactive: a state path cannot be watched for changes (inotify); only the scheduled snapshots run"
            );
            return None;
        }
        tracing::info!(
            follow_s = follow.as_secs(),
            "following changes: a snapshot within this long of each change"
        );
        Some(follow)
    }

    /// Folds the trackers' first change into the window of loss (and `status`).
    pub(super) fn note_changes(&mut self) {
        if let Some(first) = self.first_change() {
            self.protect(|p| p.changed(first));
        }
    }

    /// The trackers' first change since the last sync took its changes.
    fn first_change(&self) -> Option<DateTime<Utc>> {
        self.snapshots
            .tracker
            .as_ref()
            .and_then(TrackerSet::first_change_at)
            .map(DateTime::<Utc>::from)
    }

    /// One scheduled (or requested) snapshot; a failure is logged and retried at the next tick.
    pub(super) async fn snapshot_tick(&mut self, reason: &str) -> Option<SnapshotOutcome> {
        match self.snapshot_now(reason, Hold::AsConfigured).await {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                tracing::error!(error = %e, reason, "snapshot failed; retrying at the next tick");
                self.edges.notifier.status(&format!("snapshot failed: {e}"));
                self.update(|s| s.last_error = Some(format!("snapshot failed: {e}")));
                None
            }
        }
    }

    /// Brings the mirror up to date (holding the container still as `hold` says), then packs and
    /// uploads it when anything is pending. Every attempt, whatever asked for it, is counted in
    /// the metrics.
    pub(super) async fn snapshot_now(&mut self, reason: &str, hold: Hold) -> Result<SnapshotOutcome, DaemonError> {
        let attempted_at = Utc::now();
        let result = self.snapshot_attempt(reason, hold).await;
        if let Err(e) = &result {
            // Whatever failed, the mirror may hold changes no upload has: never forget them,
            // and count them as unprotected from the attempt at the latest.
            self.protect(|p| p.failed(attempted_at));
            self.edges.metrics.record(names::SNAPSHOT_SUCCESS, 0.0, Unit::Count);
            if matches!(
                e,
                DaemonError::Snapshot(SnapshotError::Diverged { .. } | SnapshotError::LatestMoved { .. })
            ) {
                self.edges.metrics.record(names::LINEAGE_CONFLICT, 1.0, Unit::Count);
            }
        }
        result
    }

    async fn snapshot_attempt(&mut self, reason: &str, hold: Hold) -> Result<SnapshotOutcome, DaemonError> {
        // Never a snapshot of a set from two moments.
        if restore::journal_pending(&self.config.state.work_dir) {
            return Err(DaemonError::Refused(format!(
                "a restore is half done ({} in work_dir); no snapshot until the next start completes it",
                restore::JOURNAL_FILE
            )));
        }
        let (_, freeze) = self.sync_mirror(hold).await?;
        let freeze_ms = u64::try_from(freeze.as_millis()).unwrap_or(u64::MAX);
        if let Some(since) = self.snapshots.protection.unchanged_since() {
            tracing::info!(since = %since, freeze_ms, "state unchanged; no upload");
            let since_sync = self.first_change();
            self.protect(|p| p.up_to_date(since_sync));
            self.update(|s| s.unchanged_since = Some(since));
            self.edges.notifier.status(&format!("running; unchanged since {since}"));
            return Ok(SnapshotOutcome::Unchanged { since, freeze_ms });
        }
        let report = self.upload_mirror(reason == FOLLOW_REASON).await?;
        let upload = Upload {
            id: report.id,
            created_at: report.created_at,
            duration: Duration::from_millis(report.duration_ms),
        };
        let since_sync = self.first_change();
        self.protect(|p| p.uploaded(upload, since_sync));
        self.edges.metrics.record(names::SNAPSHOT_SUCCESS, 1.0, Unit::Count);
        self.edges
            .metrics
            .record(names::SNAPSHOT_DURATION, report.duration_ms as f64, Unit::Milliseconds);
        self.edges
            .metrics
            .record(names::ARCHIVE_BYTES, report.archive_bytes as f64, Unit::Bytes);
        self.edges
            .metrics
            .record(names::FREEZE_WINDOW, freeze_ms as f64, Unit::Milliseconds);
        self.edges
            .metrics
            .record(names::SKIPPED_ENTRIES, report.skipped.len() as f64, Unit::Count);
        if !report.skipped.is_empty() {
            tracing::warn!(snapshot_id = %report.id, skipped = report.skipped.len(),
                "entries of the state could not be archived; they are listed in the snapshot's manifest");
        }
        let counts = report.request_counts;
        tracing::info!(snapshot_id = %report.id, reason, files = report.files, archive_bytes = report.archive_bytes,
            duration_ms = report.duration_ms, freeze_ms, requests = report.requests, put = counts.put, list = counts.list,
            get = counts.get, "snapshot complete");
        self.edges
            .notifier
            .status(&format!("running; last snapshot {}", report.id));
        self.update(|s| {
            s.last_snapshot = Some(SnapshotStatus {
                id: report.id,
                at: Utc::now(),
                duration_ms: report.duration_ms,
                freeze_ms,
                archive_bytes: report.archive_bytes,
                files: report.files,
                requests: report.requests,
                skipped: report.skipped.len(),
                paths: report.paths.clone(),
                reason: reason.to_string(),
                request_counts: report.request_counts,
            });
            s.unchanged_since = None;
            s.last_error = None;
        });
        Ok(report.outcome(freeze_ms))
    }

    /// Copies the state into the mirror without freezing (after start-up), so that the first
    /// frozen sync only copies what changed since: a new machine's first snapshot would otherwise
    /// freeze the container for a full copy. Files written during it are copied again frozen.
    pub(super) async fn warm_mirror(&mut self) {
        let mut mirror = match self.take_mirror() {
            Ok(mirror) => mirror,
            Err(e) => {
                tracing::warn!(error = %e, "mirror warm-up failed; the first snapshot copies everything frozen");
                return;
            }
        };
        let restore_lock = match self.restore_lock().await {
            Ok(lock) => lock,
            Err(e) => {
                tracing::warn!(error = %e, "mirror warm-up skipped; the first snapshot copies everything frozen");
                self.snapshots.mirror = Some(mirror);
                return;
            }
        };
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let stats = mirror.sync(&AtomicBool::new(false), Some(std::time::SystemTime::now()));
            drop(restore_lock);
            (mirror, stats)
        })
        .await;
        match result {
            Ok((mirror, stats)) => {
                self.return_mirror(mirror);
                match stats {
                    Ok(stats) => tracing::info!(
                        copied = stats.copied,
                        copied_bytes = stats.copied_bytes,
                        duration_ms = started.elapsed().as_millis() as u64,
                        "mirror warmed up"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "mirror warm-up failed; the first snapshot copies everything frozen")
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "mirror warm-up task failed"),
        }
    }

    /// Watches the state directory for changes (inotify), so a sync copies only what changed
    /// and a tick with nothing changed freezes nothing. Started again after a restore swapped
    /// the directory. Without it (no inotify, a watch limit), every sync walks everything.
    pub(super) fn start_tracker(&mut self) {
        self.snapshots.tracker = None;
        self.snapshots.tracker = Some(TrackerSet::start(&self.config.state.paths));
    }

    /// The mirror, held across ticks so that its index is read once, not inside each freeze;
    /// opened (index read from disk) when it is not held, at the first use or after a failure.
    fn take_mirror(&mut self) -> Result<MirrorSet, MirrorError> {
        match self.snapshots.mirror.take() {
            Some(mirror) => Ok(mirror),
            None => {
                let work_dir = &self.config.state.work_dir;
                // The one mirror of before `[[state.paths]]` (and its index): copied again, once.
                for legacy in [
                    work_dir.join(LEGACY_MIRROR_DIR),
                    work_dir.join(format!("{LEGACY_MIRROR_DIR}.index")),
                ] {
                    let removed = if legacy.is_dir() {
                        std::fs::remove_dir_all(&legacy)
                    } else {
                        std::fs::remove_file(&legacy)
                    };
                    if removed.is_ok() {
                        tracing::info!(path = %legacy.display(), "removed the mirror of an earlier version");
                    }
                }
                MirrorSet::open(
                    &self.config.state.paths,
                    &work_dir.join(MIRROR_DIR),
                    &work_dir.join(MIRROR_INDEX_DIR),
                )
            }
        }
    }

    /// `work_dir/restore.lock` (`crate::state_lock`), held while the mirrors are filled; waited
    /// for (logged) at most `DAEMON_WAIT`, off the runtime's threads.
    async fn restore_lock(&self) -> Result<crate::state_lock::StateLock, DaemonError> {
        let work_dir = self.config.state.work_dir.clone();
        tokio::task::spawn_blocking(move || {
            crate::state_lock::hold(&work_dir, "snapshot", crate::state_lock::DAEMON_WAIT)
        })
        .await
        .map_err(|e| DaemonError::Task(e.to_string()))?
        .map_err(DaemonError::from)
    }

    /// Holds the mirror again and writes its index (outside any freeze: a stale index only
    /// makes the next sync copy more, so a failure to write it is logged, not fatal).
    fn return_mirror(&mut self, mirror: MirrorSet) {
        if let Err(e) = mirror.save() {
            tracing::warn!(error = %e, "cannot save the mirror index; the next start copies more");
        }
        self.snapshots.mirror = Some(mirror);
    }

    /// Brings the mirror up to date, holding the container still as `hold` says. Returns the
    /// sync stats and how long the container was held. Marks the upload pending as soon as the
    /// mirror may have changed, before anything else can fail.
    pub(super) async fn sync_mirror(&mut self, hold: Hold) -> Result<(SyncStats, Duration), DaemonError> {
        // The change tracker saw nothing since the last sync: nothing is frozen, nothing copied.
        if let Some(tracker) = &self.snapshots.tracker
            && !tracker.has_changes()
        {
            return Ok((SyncStats::default(), Duration::ZERO));
        }
        let consistency = self.container_config.consistency;
        let running = match hold {
            Hold::AlreadyQuiet => false,
            Hold::AsConfigured => {
                // An error is not "not running": never copy a live state by mistake.
                let mut state = self.workload.container.state().await?;
                if state == RunState::Paused {
                    tracing::warn!(container = %self.workload.container.name, "container found frozen before a snapshot; thawing it first");
                    if !self.thaw().await {
                        return Err(RuntimeError::StillFrozen {
                            container: self.workload.container.name.clone(),
                            attempts: THAW_ATTEMPTS,
                            last: "it was frozen before the snapshot and would not thaw".into(),
                        }
                        .into());
                    }
                    state = RunState::Running;
                }
                state == RunState::Running
            }
        };
        // Opened (or taken) before the freeze: reading the index is no work for a frozen app.
        let mut mirror = self.take_mirror()?;
        // Taken before the freeze too (a wait must not be frozen time): no restore swaps a path
        // in while the paths are copied, so the mirrors hold one moment.
        let restore_lock = match self.restore_lock().await {
            Ok(lock) => lock,
            Err(e) => {
                self.snapshots.mirror = Some(mirror);
                return Err(e);
            }
        };
        // What changed so far is copied while the app runs: what it then leaves alone (a SQLite
        // database after a checkpoint) costs the freeze a stat, not a copy.
        let mut presynced = SyncStats::default();
        if running
            && consistency != Consistency::None
            && let Some(changes) = self.snapshots.tracker.as_ref().map(TrackerSet::peek)
            && changes.iter().flatten().any(|set| !set.is_empty())
        {
            let presync = tokio::task::spawn_blocking(move || {
                let stats = mirror.presync(&changes, &AtomicBool::new(false));
                (mirror, stats)
            })
            .await;
            match presync {
                Ok((synced, stats)) => {
                    mirror = synced;
                    match stats {
                        Ok(stats) => {
                            tracing::debug!(?stats, "changes copied before the freeze");
                            presynced = stats;
                        }
                        Err(e) => {
                            // Nothing is lost: the frozen sync copies every path named here.
                            tracing::warn!(error = %e, "copying the changes before the freeze failed; the freeze copies them");
                            presynced.copied += 1; // the mirror may have changed
                        }
                    }
                }
                // The mirror is lost with the task: the next sync opens it again from disk.
                Err(e) => return Err(DaemonError::Task(e.to_string())),
            }
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let cap = self.config.snapshot.freeze_cap;
        let started = Instant::now();
        let mut guard = None;
        let mut stopped = false;
        if running {
            match consistency {
                Consistency::Freeze => {
                    self.workload.frozen.store(true, Ordering::Relaxed);
                    if let Err(e) = self.workload.container.pause().await {
                        // It may be frozen all the same (the answer was lost): make sure it is not.
                        self.thaw().await;
                        return Err(e.into());
                    }
                    guard = Some(ThawGuard::new(
                        self.workload.container.clone(),
                        Arc::clone(&self.workload.frozen),
                    ));
                }
                Consistency::Stop => {
                    self.workload.supervision.stopping_on_purpose();
                    self.workload.health.hold();
                    if let Err(e) = self.workload.container.stop(self.container_config.stop_timeout).await {
                        self.workload.supervision.stop_abandoned();
                        self.workload.health.release();
                        return Err(e.into());
                    }
                    stopped = true;
                }
                Consistency::None => {}
            }
        }
        // Taken while the app is held still: every change made before the freeze is in it.
        let changes = self.snapshots.tracker.as_ref().map(TrackerSet::take);
        let worker_cancel = Arc::clone(&cancel);
        let mut worker = tokio::task::spawn_blocking(move || {
            let stats = match changes {
                Some(changes) => mirror.sync_changes(changes, &worker_cancel),
                None => mirror.sync(&worker_cancel, None),
            };
            (mirror, stats)
        });
        let joined = tokio::select! {
            joined = &mut worker => Some(joined),
            _ = tokio::time::sleep(cap), if guard.is_some() => None,
        };
        // Thaw first, on every path.
        if let Some(guard) = guard.take() {
            guard.disarm();
            self.thaw().await;
        }
        let freeze = started.elapsed();
        let joined = match joined {
            Some(joined) => joined.map(|(mirror, stats)| (mirror, stats.map_err(DaemonError::from))),
            None => {
                cancel.store(true, Ordering::Relaxed);
                worker
                    .await
                    .map(|(mirror, _)| (mirror, Err(MirrorError::Cancelled.into())))
            }
        };
        let synced = match joined {
            Ok((mirror, stats)) => {
                self.return_mirror(mirror);
                stats
            }
            // The mirror is lost with the task: the next sync opens it again from disk.
            Err(e) => Err(DaemonError::Task(e.to_string())),
        };
        drop(restore_lock);
        let synced = synced.map(|stats| stats.after(presynced));
        // Anything that may have changed the mirror makes an upload pending.
        let changed = synced.as_ref().map_or(true, |stats| stats.changed());
        self.protect(|p| p.synced(changed));
        // The changes taken for a sync that did not complete are no longer in the tracker:
        // only a full walk is sure to copy them.
        if synced.is_err()
            && let Some(tracker) = &self.snapshots.tracker
        {
            tracker.request_full_walk("the previous sync did not complete");
        }
        if stopped {
            // The copy is consistent whether or not the start works; a failed start is the
            // supervisor's business (backoff), not a reason to lose the snapshot.
            self.start_container("after a snapshot copy").await;
            self.workload.health.release();
        }
        let stats = synced?;
        tracing::debug!(?stats, freeze_ms = freeze.as_millis() as u64, "mirror synced");
        Ok((stats, freeze))
    }

    pub(super) async fn upload_mirror(&mut self, follow: bool) -> Result<snapshot::SnapshotReport, DaemonError> {
        let record = record::load(&self.config.state.work_dir)?;
        let base = record
            .as_ref()
            .and_then(|r| r.base_for_set(&self.snapshots.repository, &self.config.state.dirs()));
        let mirror = self.take_mirror()?;
        let (source, paths, also_skipped) = (mirror.root().to_path_buf(), mirror.totals(), mirror.skipped());
        self.snapshots.mirror = Some(mirror);
        let request = SnapshotRequest {
            source,
            paths,
            also_skipped,
            image: self.workload.image.clone(),
            host: Host {
                hostname: self.snapshots.hostname.clone(),
                instance_id: self.snapshots.instance_id.clone(),
                writer: Some(self.snapshots.writer.clone()),
            },
            base,
            force: false,
            now: Utc::now(),
            follow,
        };
        // The engine is loaded at start-up, before the first snapshot can be due.
        let engine = self
            .edges
            .engine
            .clone()
            .ok_or_else(|| DaemonError::Task("the repository is not open yet".into()))?;
        let report = snapshot::take(&self.edges.store, &engine, request).await?;
        record::remember(
            &self.config.state.work_dir,
            &self.snapshots.repository,
            &self.config.state.primary().dir,
            report.id,
            report.id,
        )?;
        Ok(report)
    }

    pub(super) async fn prune_tick(&mut self) {
        // Daily: what inotify cannot see (writes through mmap) is caught by a full walk.
        if let Some(tracker) = &self.snapshots.tracker {
            tracker.request_full_walk("the daily full walk");
        }
        let result = prune::prune(
            &self.edges.store,
            self.edges.engine.as_ref(),
            &self.config.retention,
            Utc::now(),
            false,
        )
        .await;
        let status = match result {
            Ok(outcomes) => {
                let (deleted, failed) = prune::counts(&outcomes);
                tracing::info!(
                    deleted = deleted - failed,
                    failed,
                    kept = outcomes.len() - deleted,
                    "prune complete"
                );
                self.edges
                    .metrics
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
    pub(super) async fn secrets_tick(&mut self) {
        let (Some(config), Some(client)) = (self.config.secrets.clone(), self.edges.secrets_client.clone()) else {
            return;
        };
        let fresh = match secrets::fetch(&client, &config.ssm_path).await {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::warn!(error = %e, "secret refresh failed; keeping the current secrets");
                return;
            }
        };
        if self.workload.secrets.as_ref() == Some(&fresh) {
            return;
        }
        if let Err(e) = secrets::write_env_file(&config.env_file, &fresh) {
            tracing::error!(error = %e, "cannot write the new secrets");
            return;
        }
        tracing::info!(count = fresh.len(), keys = ?fresh.keys(), "secrets changed; recreating the container");
        self.update(|s| s.secrets = Some(fresh.len()));
        self.remember_gateway_token(&fresh);
        self.workload.secrets = Some(fresh);
        if matches!(
            self.workload.supervision.state(),
            policy::Supervised::CrashLoop | policy::Supervised::Finishing
        ) {
            return;
        }
        if let Err(e) = self.recreate_container().await {
            tracing::error!(error = %e, "cannot recreate the container with the new secrets");
            let decision = self.workload.supervision.observe(Observed::StartFailed, Utc::now());
            self.carry_out(decision, "recreate with new secrets failed").await;
        }
    }

    /// The daily restore drill; a failure is loud (error log, STATUS, metric).
    pub(super) async fn verify_tick(&mut self) {
        let result = drill::run(
            &self.edges.store,
            self.edges.engine.as_ref(),
            &self.config.state.work_dir,
            &self.snapshots.repository,
            None,
        )
        .await;
        let status = match result {
            Ok(report) => {
                tracing::info!(snapshot_id = %report.id, files = report.files, databases = report.databases.len(),
                    duration_ms = report.duration_ms, "restore drill passed");
                self.edges.metrics.record(names::BACKUP_VERIFIED, 1.0, Unit::Count);
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
                self.edges.notifier.status(&text);
                self.edges.metrics.record(names::BACKUP_VERIFIED, 0.0, Unit::Count);
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

    /// Gauges published every minute, so an alarm fires when backups stop.
    pub(super) fn publish_gauges(&self, now: DateTime<Utc>) {
        let protection = &self.snapshots.protection;
        if let Some(seconds) = protection.seconds_since_last_snapshot(now) {
            self.edges
                .metrics
                .record(names::SECONDS_SINCE_LAST_SNAPSHOT, seconds as f64, Unit::Seconds);
        }
        let unprotected = protection.unprotected_seconds(now);
        self.edges
            .metrics
            .record(names::UNPROTECTED_SECONDS, unprotected as f64, Unit::Seconds);
        // Without a health URL there is nothing to report.
        if let Some(healthy) = self.edges.status.lock().ok().and_then(|s| s.container.healthy) {
            self.edges
                .metrics
                .record(names::CONTAINER_HEALTHY, if healthy { 1.0 } else { 0.0 }, Unit::Count);
        }
        self.publish_log_drops();
    }

    /// spotkeeper's own log lines lost since the last datum (`[logs]` only).
    pub(super) fn publish_log_drops(&self) {
        if let Some(dropped) = crate::logship::unreported_drops() {
            self.edges
                .metrics
                .record(names::LOG_EVENTS_DROPPED, dropped as f64, Unit::Count);
        }
    }
}

/// How a snapshot holds the container still while the mirror is synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    /// As `[container] consistency` says (freeze, stop or none).
    AsConfigured,
    /// The caller already stopped, killed or froze it (the final snapshot).
    AlreadyQuiet,
}

/// Thaws the container when dropped while armed (a panic, a cancelled future): the freeze is
/// undone on every path. The normal path disarms it and thaws with retries itself.
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

    fn disarm(mut self) {
        self.container = None;
    }
}

impl Drop for ThawGuard {
    fn drop(&mut self) {
        if let Some(container) = self.container.take() {
            let frozen = Arc::clone(&self.frozen);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = runtime::thaw(&container, THAW_ATTEMPTS).await {
                        tracing::error!(error = %e, "cannot thaw the container after an interrupted snapshot");
                    }
                    frozen.store(false, Ordering::Relaxed);
                });
            }
        }
    }
}
