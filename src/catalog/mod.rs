//! One read model of a prefix: the head (`latest.json`, else format 1's `latest/`), format 1's
//! snapshots and format 2's, read once (`read`), and the questions the commands ask of them
//! (`model`, pure). `list`, `restore`, `verify`, `prune` and the daemon's boot decision read a
//! prefix through it; the writer (`snapshot`) keeps its own reads.

use futures::stream::{self, StreamExt};

use crate::format2::pointer::{self, POINTER_KEY, Pointer, PointerError};
use crate::format2::{self, Engine};
use crate::repository::{self, Head, RepositoryError};
use crate::store::Store;

mod model;

pub use model::{Catalog, Format, Found, HeadRead, Meta, Snapshot};

/// HEAD requests in flight while reading format 1's manifest metadata.
const HEADS_IN_FLIGHT: usize = 16;

/// How much `read` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// The head and the listings.
    Listing,
    /// Also each complete format-1 snapshot's totals (one HEAD of its manifest each), for `list`.
    Totals,
}

/// Reads the prefix: format 1's listing, format 2's when there is an `engine` (the password),
/// then the head, authenticated with the engine. A head that cannot be read or trusted is part
/// of the catalog (`HeadRead`), for each command to judge; only S3 and the repository's own
/// errors fail the read. Without an engine format 1 is read as usual and format 2 is not listed
/// (`Catalog::require_format2` says what is missing).
pub async fn read(store: &Store, engine: Option<&Engine>, detail: Detail) -> Result<Catalog, RepositoryError> {
    let format1 = repository::list(store).await?;
    let format2 = match engine {
        Some(engine) => Some(repository::list_format2(engine).await?),
        None => None,
    };
    let (head, pointer_found) = read_head(store, engine, format2.as_deref()).await?;
    let repository = store.url("").trim_end_matches('/').to_string();
    let mut catalog = Catalog::new(
        repository,
        store.full_key(POINTER_KEY),
        head,
        pointer_found,
        format1,
        format2,
    );
    if detail == Detail::Totals {
        let complete: Vec<_> = catalog.format1().filter(|s| s.complete).map(|s| s.id).collect();
        let read: Vec<_> = stream::iter(complete)
            .map(|id| async move {
                let metadata = store.head_metadata(&repository::manifest_key(&id)).await?;
                Ok::<_, RepositoryError>((id, metadata.map(|m| Meta::parse(&m)).unwrap_or_default()))
            })
            .buffered(HEADS_IN_FLIGHT)
            .collect()
            .await;
        for result in read {
            let (id, meta) = result?;
            catalog.set_meta(id, meta);
        }
    }
    Ok(catalog)
}

/// The head and whether `latest.json` exists. `latest.json` wins over format 1's `latest/`; an
/// unreadable `latest.json` is `Unreadable`, never a silent fall back to the older format. With
/// `engine` its MAC is checked against `format2` (the listing says whether a missing MAC can
/// only be a stripped one).
async fn read_head(
    store: &Store,
    engine: Option<&Engine>,
    format2: Option<&[format2::Listed]>,
) -> Result<(HeadRead, bool), RepositoryError> {
    let got = match pointer::get(store).await {
        Ok(got) => got,
        Err(PointerError::Manifest(e)) => return Ok((HeadRead::Unreadable(e), true)),
        Err(e) => return Err(e.into()),
    };
    let Some((bytes, _)) = got else {
        let head = match repository::latest(store).await {
            Ok(Some((manifest, _))) => HeadRead::Found(Head::One(manifest)),
            Ok(None) => HeadRead::Absent,
            Err(RepositoryError::Manifest(e)) => HeadRead::Unreadable(e),
            Err(e) => return Err(e),
        };
        return Ok((head, false));
    };
    let full_key = store.full_key(POINTER_KEY);
    let (pointer, mac) = match Pointer::decode(&bytes, &full_key) {
        Ok(decoded) => decoded,
        Err(e) => return Ok((HeadRead::Unreadable(e), true)),
    };
    let Some((engine, format2)) = engine.zip(format2) else {
        return Ok((HeadRead::Found(Head::Two(pointer)), true));
    };
    let key = engine.pointer_key().await.map_err(RepositoryError::from)?;
    let authenticity = pointer.authenticity(mac.as_deref(), &key);
    let sealed_seen = format2.iter().any(|s| s.sealed_head);
    let head = match pointer::trust(pointer.clone(), authenticity, sealed_seen, &full_key) {
        Ok(pointer) => HeadRead::Found(Head::Two(pointer)),
        Err(error) => HeadRead::Untrusted {
            error,
            claimed: Box::new(pointer),
        },
    };
    Ok((head, true))
}
