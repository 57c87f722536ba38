//! `spotkeeper verify`: download a snapshot and check it against its manifest, extracting nothing.

use serde::Serialize;

use super::{CommandError, print_json};
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

pub async fn run(config: &Config, store: &Store, args: &VerifyArgs) -> Result<(), CommandError> {
    let repository = config.repository_url();
    if args.deep {
        let report = crate::drill::run(store, &config.state.work_dir, &repository, args.snapshot).await?;
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
    let (manifest, _) = restore::resolve(store, args.snapshot, &repository).await?;
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
