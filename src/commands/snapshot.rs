//! `spotkeeper snapshot`: snapshot the state directory now (without a daemon: no freeze).

use chrono::Utc;

use super::{CommandError, human_bytes, print_json};
use crate::cli::SnapshotArgs;
use crate::config::Config;
use crate::control::Reply;
use crate::manifest::Host;
use crate::record;
use crate::snapshot::{self, SnapshotOutcome, SnapshotRequest};

pub async fn run(config: &Config, args: &SnapshotArgs) -> Result<(), CommandError> {
    // A running daemon owns the state: it freezes the container and keeps its own bookkeeping.
    if !args.force
        && let Some(reply) = super::via_daemon(config, &crate::control::Request::Snapshot).await?
    {
        let Reply::Snapshot(outcome) = reply else {
            return Err(super::unexpected(&reply));
        };
        return print_outcome(&outcome, args.json, " (taken by the daemon)");
    }
    // Format 2's metadata cache is the daemon's, in work_dir: only one of the two snapshots at a
    // time (through the daemon when it runs), and a snapshot after a small change then reads its
    // parent's trees from disk instead of S3.
    // Format 2 is the only format written: without [repository], refuse before touching anything.
    config.writer_repository("snapshot")?;
    let cache = config.state.work_dir.join(crate::daemon::REPO_CACHE_DIR);
    let (store, engine) = super::open_with_cache(config, Some(cache)).await?;
    let engine = engine.ok_or(crate::config::ConfigError::NoRepository { command: "snapshot" })?;
    let store = &store;
    let repository = config.repository_url();
    // A restore killed between its swaps is completed first: never snapshot half a set.
    let dirs: Vec<std::path::PathBuf> = config.state.paths.iter().map(|p| p.dir.clone()).collect();
    if let Some(id) = crate::restore::recover(&config.state.work_dir, &dirs)? {
        tracing::warn!(snapshot_id = %id, "completed a restore that was interrupted between its swaps");
    }
    let local = record::load(&config.state.work_dir)?;
    let primary = config.state.primary();
    let base = local
        .as_ref()
        .and_then(|r| r.base_for_set(&repository, &config.state.dirs()));
    // The engine walks by path: it reads mirrors that spotkeeper's own walker (by descriptor, no
    // link followed) filled, never the live state directories. The head and the snapshots are
    // read (and the key derived) meanwhile: they do not depend on the state. The lock comes
    // first, so that two of these never create one repository twice.
    let lock = lock_mirrors(config)?;
    // After the lock, which makes work_dir: a first snapshot writes the writer id there.
    let writer = record::current_writer_id(&config.state.work_dir)?;
    let (filled, prepared) = tokio::join!(
        fill_mirrors(config, &lock),
        snapshot::prepare(store, &engine, base, Some(&writer), args.force)
    );
    // As when the two ran one after the other: the state's error first.
    let (paths, also_skipped) = filled?;
    let prepared = prepared?;
    let request = SnapshotRequest {
        source: lock.mirror_dir.clone(),
        paths,
        host: Host {
            hostname: snapshot::hostname(),
            instance_id: None,
            writer: Some(writer),
        },
        base,
        force: args.force,
        now: Utc::now(),
        also_skipped,
        image: None,
        follow: false,
    };
    let report = snapshot::take_prepared(store, &engine, prepared, request).await?;
    record::remember(&config.state.work_dir, &repository, &primary.dir, report.id, report.id)?;
    print_outcome(&report.outcome(0), args.json, "")
}

/// The mirrors a snapshot without the daemon reads (the daemon keeps its own): one directory
/// per state path under it.
pub const CLI_MIRROR_DIR: &str = "snapshot-mirrors";
/// Their indexes.
const CLI_MIRROR_INDEX_DIR: &str = "snapshot-mirror-indexes";
/// The one mirror of before `[[state.paths]]`, removed when found.
const LEGACY_CLI_MIRROR_DIR: &str = "snapshot-mirror";

/// The CLI's mirrors, held: `work_dir/snapshot-mirrors/` and the locks that keep two
/// `spotkeeper snapshot`s (this version's or an older one's) from sharing them.
struct MirrorsLock {
    mirror_dir: std::path::PathBuf,
    _lock: std::fs::File,
    _legacy_lock: std::fs::File,
}

/// Takes the mirrors' locks (refusing while another snapshot holds them) and removes the mirror
/// of before `[[state.paths]]`.
fn lock_mirrors(config: &Config) -> Result<MirrorsLock, CommandError> {
    let work_dir = &config.state.work_dir;
    let mirror_dir = work_dir.join(CLI_MIRROR_DIR);
    crate::private_fs::create_dir_all(work_dir)?;
    let lock_path = work_dir.join(format!("{CLI_MIRROR_DIR}.lock"));
    let lock = crate::private_fs::open_lock(&lock_path)?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(CommandError::Refused(format!(
            "another `spotkeeper snapshot` is filling {} (it holds {}); wait for it",
            mirror_dir.display(),
            lock_path.display()
        )));
    }
    // An older spotkeeper's `snapshot` holds its own lock while it reads its mirror.
    let legacy_lock = crate::private_fs::open_lock(&work_dir.join(format!("{LEGACY_CLI_MIRROR_DIR}.lock")))?;
    if rustix::fs::flock(&legacy_lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(CommandError::Refused(
            "an older `spotkeeper snapshot` is running on this machine; wait for it".into(),
        ));
    }
    for legacy in [
        work_dir.join(LEGACY_CLI_MIRROR_DIR),
        work_dir.join(format!("{LEGACY_CLI_MIRROR_DIR}.index")),
    ] {
        let _ = if legacy.is_dir() {
            std::fs::remove_dir_all(&legacy)
        } else {
            std::fs::remove_file(&legacy)
        };
    }
    Ok(MirrorsLock {
        mirror_dir,
        _lock: lock,
        _legacy_lock: legacy_lock,
    })
}

/// Brings the locked mirrors up to date with the state paths (copying only what changed since
/// the last such snapshot). Returns each path's totals and what was skipped.
async fn fill_mirrors(
    config: &Config,
    held: &MirrorsLock,
) -> Result<(Vec<crate::mirror::PathTotals>, Vec<crate::tree::Skipped>), CommandError> {
    let work_dir = &config.state.work_dir;
    let paths = config.state.paths.clone();
    let index_dir = work_dir.join(CLI_MIRROR_INDEX_DIR);
    let root = held.mirror_dir.clone();
    let state_work_dir = work_dir.clone();
    tokio::task::spawn_blocking(move || {
        // No restore swaps a path in while the paths are copied: the mirrors hold one moment.
        let _restore_lock = crate::state_lock::hold(&state_work_dir, "snapshot", crate::state_lock::COMMAND_WAIT)?;
        let mut mirrors = crate::mirror::MirrorSet::open(&paths, &root, &index_dir)?;
        let synced = mirrors.sync(&std::sync::atomic::AtomicBool::new(false), None);
        mirrors.save()?;
        synced?;
        Ok::<_, CommandError>((mirrors.totals(), mirrors.skipped()))
    })
    .await
    .map_err(|e| CommandError::Output(std::io::Error::other(e.to_string())))?
}

/// The result, once: the same schema with or without the daemon.
fn print_outcome(outcome: &SnapshotOutcome, json: bool, how: &str) -> Result<(), CommandError> {
    if json {
        return print_json(outcome);
    }
    match outcome {
        SnapshotOutcome::Unchanged { since, .. } => println!("unchanged since {since} (no upload){how}"),
        SnapshotOutcome::Uploaded {
            id,
            files,
            bytes,
            archive_bytes,
            duration_ms,
            freeze_ms,
            requests,
            skipped,
            restic_id,
            ..
        } => {
            let (stored, listed_in) = match restic_id {
                Some(restic_id) => (
                    format!(
                        "{} new data (format 2, restic {})",
                        human_bytes(*archive_bytes),
                        &restic_id[..8]
                    ),
                    "`spotkeeper list --json`",
                ),
                None => (
                    format!("{} archive", human_bytes(*archive_bytes)),
                    "the snapshot's manifest (snapshots/ID/manifest.json)",
                ),
            };
            println!(
                "{id}  {files} files, {} -> {stored}, {duration_ms} ms, freeze {freeze_ms} ms, {requests} S3 requests{how}",
                human_bytes(*bytes),
            );
            if *skipped > 0 {
                println!("{skipped} entries could not be copied: {listed_in} lists them");
            }
        }
    }
    Ok(())
}
