//! `spotkeeper verify`: format 1 downloads a snapshot and checks it against its manifest,
//! extracting nothing; format 2 checks the repository's structure (every snapshot's trees, the
//! index, every pack present with its size). `--deep` is the restore drill, and for format 2 first
//! a full read check of every pack (`restic check --read-data`).

use serde::Serialize;

use super::{CommandError, print_json};
use crate::catalog::{self, Detail};
use crate::cli::VerifyArgs;
use crate::config::Config;
use crate::restore;
use crate::snapshot_id::SnapshotId;
use crate::store::Store;

#[derive(Debug, Serialize)]
struct Verified {
    id: SnapshotId,
    ok: bool,
    files: u64,
    bytes: u64,
    archive_bytes: u64,
    archive_key: String,
}

pub async fn run(
    config: &Config,
    store: &Store,
    engine: Option<&crate::format2::Engine>,
    args: &VerifyArgs,
) -> Result<(), CommandError> {
    let repository = config.repository_url();
    let catalog = catalog::read(store, engine, Detail::Listing).await?;
    if args.deep {
        if let Some(engine) = engine
            && catalog.holds_format2()
        {
            engine
                .with(|repo| repo.check(true))
                .await
                .map_err(crate::repository::RepositoryError::from)?;
            if !args.json {
                println!("{}: every pack read back, every blob's hash checked", engine.location());
            }
        }
        let report = crate::drill::run(store, engine, &config.state.work_dir, &repository, args.snapshot).await?;
        if args.json {
            return print_json(&report);
        }
        println!(
            "{} ok: restored {} files into a scratch dir, every checksum verified, {} SQLite database(s) pass integrity_check{}",
            report.id,
            report.files,
            report.databases.len(),
            if report.databases.is_empty() {
                String::new()
            } else {
                format!(": {}", report.databases.join(", "))
            }
        );
        return Ok(());
    }
    let (chosen, _) = restore::choose(catalog, store, args.snapshot, &repository).await?;
    let manifest = match chosen {
        restore::Chosen::One(manifest) => *manifest,
        restore::Chosen::Two(two) => return verify_format2(engine, two, args.json).await,
    };
    let (full_key, stream) = restore::open_archive(store, &manifest, args.snapshot.is_none()).await?;
    let checked = restore::unpack_stream(stream, &manifest, None, full_key.clone()).await?;
    let result = Verified {
        id: manifest.id,
        ok: true,
        files: checked.files,
        bytes: checked.bytes,
        archive_bytes: checked.archive_bytes,
        archive_key: full_key,
    };
    if args.json {
        return print_json(&result);
    }
    println!(
        "{} ok: archive {} and all {} files match the manifest",
        result.id, result.archive_key, result.files
    );
    Ok(())
}

#[derive(Debug, Serialize)]
struct Verified2 {
    id: SnapshotId,
    ok: bool,
    restic_id: String,
    repository: String,
    read_data: bool,
    /// The state paths the snapshot holds.
    paths: Vec<crate::mirror::PathTotals>,
}

/// Format 2: the repository's structure, every snapshot included (rustic_core checks them
/// together; it is how the snapshot named is reached too).
async fn verify_format2(
    engine: Option<&crate::format2::Engine>,
    two: restore::Chosen2,
    json: bool,
) -> Result<(), CommandError> {
    let Some(engine) = engine else {
        return Err(CommandError::Usage("format 2 needs [repository]".into()));
    };
    engine
        .with(|repo| repo.check(false))
        .await
        .map_err(crate::repository::RepositoryError::from)?;
    let (restic_id, tag) = (two.restic_id.clone(), two.id.to_string());
    let paths = engine
        .with(move |repo| repo.layout(&restic_id, &tag))
        .await
        .map_err(crate::repository::RepositoryError::from)?
        .into_iter()
        .map(|p| crate::mirror::PathTotals {
            name: p.name,
            files: p.files,
            bytes: p.bytes,
        })
        .collect();
    let result = Verified2 {
        id: two.id,
        ok: true,
        restic_id: two.restic_id,
        repository: engine.location(),
        read_data: false,
        paths,
    };
    if json {
        return print_json(&result);
    }
    println!(
        "{} ok (restic {}): {} is consistent: every snapshot's trees, the index and every pack present; \
         `verify --deep` also reads every pack back",
        result.id,
        &result.restic_id[..8],
        result.repository
    );
    for path in &result.paths {
        println!(
            "  {:<12} {} files, {}",
            path.name,
            path.files,
            super::human_bytes(path.bytes)
        );
    }
    Ok(())
}
