//! rustic_core's storage backend over spotkeeper's own S3 client (`Store`): one S3 stack, with
//! the AWS credential chain, `[s3] timeout`, retries and custom endpoints. The repository lives
//! under `PREFIX/repo/` in restic's layout (`config`, `keys/`, `snapshots/`, `index/`,
//! `data/<2 hex>/<id>`), so stock `restic -r s3:.../PREFIX/repo` reads it.
//!
//! rustic_core is synchronous and calls the backend from its own threads (rayon, packers):
//! every call blocks on the tokio runtime through `handle`. Callers must therefore run
//! rustic_core inside `spawn_blocking` (or another thread that drives no async task), never
//! directly from async code.

use std::future::Future;

use bytes::Bytes;
use rustic_core::{BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend};

use crate::store::{PutCondition, Store, StoreError};

/// Where the repository lives under the configured prefix.
pub const REPO_DIR: &str = "repo";

/// The backend: a `Store` and the runtime its calls run on.
#[derive(Clone)]
pub struct S3Backend {
    store: Store,
    handle: tokio::runtime::Handle,
    root: String,
    /// What this backend wrote of a repository's identity (keys, whether `config`), so that an
    /// `init` that lost the race for `config` can take its key back.
    written: std::sync::Arc<std::sync::Mutex<Written>>,
    budget: std::sync::Arc<Budget>,
    index_memo: std::sync::Arc<std::sync::Mutex<IndexMemo>>,
}

/// The listing of `index/` as this backend knows it, kept between backups so that a backup in
/// the steady state lists nothing: the first listing is S3's, then each index file this backend
/// writes or removes is added or taken out. Only a backup uses it (`S3Backend::memo_index`);
/// every other operation lists S3 again. An index file another writer adds meanwhile is not
/// seen by the next backups: they may store again a blob that writer stored (never a missing
/// one), and that writer's pointer move fails the next `latest.json` write, which clears it all.
#[derive(Debug, Default)]
struct IndexMemo {
    in_use: bool,
    listed: Option<Vec<(Id, u32)>>,
    /// When `listed` came from S3: it is listed again after `INDEX_MEMO_TTL`, well within
    /// prune's grace for marked packs (`prune::PACK_GRACE`), so that a prune run by another
    /// process (a person's `spotkeeper prune`) is seen before a pack it marked can go.
    listed_at: Option<std::time::Instant>,
}

/// How long the memo of `index/` is trusted: one LIST an hour in the steady state.
pub const INDEX_MEMO_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Bytes of pack data that ranged reads may hold at once. rustic_core restores (and checks) with
/// 20 reader threads of up to 40 MiB each and queues what it read for writing: unbounded, a
/// restore's memory grew with the state (1,476 MB peak for a 1.5 GB state). Each read takes its
/// length from this budget, and gives it back when rustic_core drops the bytes.
pub const READ_BUDGET: u64 = 96 * 1024 * 1024;

/// A counting budget of bytes; a read larger than the whole budget waits until it is all free.
#[derive(Debug)]
struct Budget {
    used: std::sync::Mutex<u64>,
    freed: std::sync::Condvar,
    limit: u64,
}

impl Budget {
    fn take(self: &std::sync::Arc<Self>, bytes: u64) -> Lease {
        let bytes = bytes.min(self.limit);
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *used + bytes > self.limit {
            used = self.freed.wait(used).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *used += bytes;
        Lease {
            budget: std::sync::Arc::clone(self),
            bytes,
        }
    }
}

/// Part of the budget, returned on drop.
struct Lease {
    budget: std::sync::Arc<Budget>,
    bytes: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut used = self
            .budget
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// A ranged read's bytes, with the budget they hold.
struct Leased {
    body: Bytes,
    _lease: Lease,
}

impl AsRef<[u8]> for Leased {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

#[derive(Debug, Default)]
pub struct Written {
    pub keys: Vec<Id>,
    pub config: bool,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Backend({})", self.location())
    }
}

impl S3Backend {
    /// The repository under `PREFIX/repo/` of `store`; calls block on `handle`.
    pub fn new(store: Store, handle: tokio::runtime::Handle) -> S3Backend {
        S3Backend {
            store,
            handle,
            root: REPO_DIR.to_string(),
            written: std::sync::Arc::default(),
            index_memo: std::sync::Arc::default(),
            budget: std::sync::Arc::new(Budget {
                used: std::sync::Mutex::new(0),
                freed: std::sync::Condvar::new(),
                limit: READ_BUDGET,
            }),
        }
    }

    /// While `on`, `index/` is listed from the memo (see `IndexMemo`); turning it off keeps the
    /// memo for the next backup, `forget_index_listing` drops it.
    pub fn memo_index(&self, on: bool) {
        self.index_memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .in_use = on;
    }

    /// The next listing of `index/` asks S3.
    pub fn forget_index_listing(&self) {
        self.index_memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .listed = None;
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, IndexMemo> {
        self.index_memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keys written by this backend (and its clones), and whether it wrote `config`.
    pub fn written(&self) -> (Vec<Id>, bool) {
        let written = self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (written.keys.clone(), written.config)
    }

    /// The store the repository is on.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The key (relative to the store's prefix) of a repository file.
    pub fn key(&self, tpe: FileType, id: &Id) -> String {
        key_of(&self.root, tpe, id)
    }

    /// `length` bytes of pack `id` from `offset`, gathered into `buffer` (see
    /// `Store::get_range_into`), for spotkeeper's own restorer, which bounds what it holds by
    /// itself (`READ_BUDGET` is for rustic_core's reads).
    pub fn read_pack_range_into(&self, id: &Id, offset: u64, length: u64, buffer: Vec<u8>) -> RusticResult<Vec<u8>> {
        let key = self.key(FileType::Pack, id);
        let read = self.block("get", &key, move |store, key| async move {
            store.get_range_into(&key, offset, length, buffer).await
        })?;
        read.ok_or_else(|| self.missing(&key))
    }

    /// Runs one request, `call(store, key)`, as a task of the runtime and waits for it.
    ///
    /// Not on the calling thread: a body's chunks then pass between the runtime's own tasks, and
    /// the caller is woken once, when the request is done. Driven from the caller, a 4 MiB read
    /// woke it for every chunk (a medium restore: 18,000 context switches instead of 6,000, and a
    /// sixth more CPU).
    fn block<T, F>(&self, op: &'static str, key: &str, call: impl FnOnce(Store, String) -> F) -> RusticResult<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        // Aborted if this thread unwinds before the request is done (`block_on` called from
        // async code panics): no request runs on for a caller that is gone.
        let mut task =
            tokio_util::task::AbortOnDropHandle::new(self.handle.spawn(call(self.store.clone(), key.to_string())));
        crate::liveness::mark();
        let joined = self.handle.block_on(&mut task);
        crate::liveness::mark();
        match joined {
            Ok(result) => result.map_err(|e| self.failed(op, key, e)),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(RusticError::new(
                ErrorKind::Backend,
                "S3 {op} of {key} stopped: spotkeeper is shutting down",
            )
            .attach_context("op", op)
            .attach_context("key", self.store.url(key))),
        }
    }

    fn failed(&self, op: &'static str, key: &str, e: StoreError) -> Box<RusticError> {
        RusticError::with_source(ErrorKind::Backend, "S3 {op} of {key} failed", e)
            .attach_context("op", op)
            .attach_context("key", self.store.url(key))
    }

    fn missing(&self, key: &str) -> Box<RusticError> {
        RusticError::new(ErrorKind::Backend, "{key} does not exist").attach_context("key", self.store.url(key))
    }
}

/// restic's layout: `config`, `data/<first two hex>/<id>`, `<type dir>/<id>`.
pub fn key_of(root: &str, tpe: FileType, id: &Id) -> String {
    let hex = id.to_hex();
    let hex = hex.as_str();
    match tpe {
        FileType::Config => format!("{root}/config"),
        FileType::Pack => format!("{root}/data/{}/{hex}", &hex[..2]),
        _ => format!("{root}/{}/{hex}", tpe.dirname()),
    }
}

impl ReadBackend for S3Backend {
    fn location(&self) -> String {
        format!("s3:{}", self.store.url(&self.root))
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        if tpe == FileType::Config {
            // rustic_core expects the config as one entry with the zero id, or none.
            let key = self.key(tpe, &Id::default());
            let listed = self.block("list", &key, |store, key| async move { store.list(&key).await })?;
            return Ok(listed
                .iter()
                .find(|o| o.key == key)
                .map(|o| vec![(Id::default(), u32::try_from(o.size).unwrap_or(u32::MAX))])
                .unwrap_or_default());
        }
        if tpe == FileType::Index {
            let memo = self.memo();
            if memo.in_use
                && let Some(listed) = &memo.listed
                && memo.listed_at.is_some_and(|at| at.elapsed() < INDEX_MEMO_TTL)
            {
                return Ok(listed.clone());
            }
        }
        // The trailing slash keeps `data/` from matching `database/`; packs sit one level down.
        let prefix = format!("{}/{}/", self.root, tpe.dirname());
        let listed = self.block(
            "list",
            &prefix,
            |store, prefix| async move { store.list(&prefix).await },
        )?;
        let listed: Vec<(Id, u32)> = listed
            .into_iter()
            .filter_map(|o| {
                let name = o.key.rsplit('/').next()?;
                let id = Id::parse_some(name, tpe)?;
                // A name that parses but sits in the wrong place is not restic's: skip it.
                (self.key(tpe, &id) == o.key).then_some((id, u32::try_from(o.size).ok()?))
            })
            .collect();
        if tpe == FileType::Index {
            let mut memo = self.memo();
            memo.listed = memo.in_use.then(|| listed.clone());
            memo.listed_at = memo.in_use.then(std::time::Instant::now);
        }
        Ok(listed)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let key = self.key(tpe, id);
        match self.block("get", &key, |store, key| async move { store.get_bytes(&key).await })? {
            Some((body, _)) => Ok(body),
            None => Err(self.missing(&key)),
        }
    }

    fn read_partial(&self, tpe: FileType, id: &Id, _cacheable: bool, offset: u32, length: u32) -> RusticResult<Bytes> {
        let key = self.key(tpe, id);
        // Held until rustic_core drops what it read (see `READ_BUDGET`).
        let lease = self.budget.take(u64::from(length));
        let (offset, length) = (u64::from(offset), u64::from(length));
        match self.block("get", &key, move |store, key| async move {
            store.get_range(&key, offset, length).await
        })? {
            Some(body) => Ok(Bytes::from_owner(Leased { body, _lease: lease })),
            None => Err(self.missing(&key)),
        }
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.store.full_key(&self.key(tpe, id))
    }
}

impl WriteBackend for S3Backend {
    fn write_bytes(&self, tpe: FileType, id: &Id, _cacheable: bool, content: BytesList) -> RusticResult<()> {
        let key = self.key(tpe, id);
        let parts = content.into_vec();
        let body = if parts.len() == 1 {
            parts.into_iter().next().unwrap_or_default()
        } else {
            Bytes::from(parts.concat())
        };
        // Every file but `config` is named by the hash of its bytes, so writing it again writes
        // the same bytes: an unconditional PUT is safe (also when the SDK retries one whose
        // answer was lost). `config` is written once, only if absent (spotkeeper never changes
        // it): two machines creating the repository at once cannot both win.
        if tpe == FileType::Config {
            let put = self.handle.block_on(self.store.put_bytes(
                &key,
                body.clone(),
                "application/octet-stream",
                &[],
                PutCondition::Absent,
            ));
            match put {
                Ok(_) => {}
                // Ours, if a retry of a PUT whose answer was lost found our own bytes.
                Err(e) if e.problem() == Some(&crate::store::Problem::PreconditionFailed) => {
                    let existing = self.block("get", &key, |store, key| async move { store.get_bytes(&key).await })?;
                    if existing.map(|(bytes, _)| bytes) != Some(body) {
                        return Err(RusticError::new(
                            ErrorKind::Backend,
                            "{key} was created by another writer at the same moment; this one stands back",
                        )
                        .attach_context("key", self.store.url(&key)));
                    }
                }
                Err(e) => {
                    return Err(
                        RusticError::with_source(ErrorKind::Backend, "S3 put of {key} failed", e)
                            .attach_context("key", self.store.url(&key)),
                    );
                }
            }
            self.written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .config = true;
            return Ok(());
        }
        let size = u32::try_from(body.len()).unwrap_or(u32::MAX);
        self.block("put", &key, |store, key| async move {
            store
                .put_bytes(&key, body, "application/octet-stream", &[], PutCondition::None)
                .await
        })?;
        if tpe == FileType::Index
            && let Some(listed) = &mut self.memo().listed
            && !listed.iter().any(|(known, _)| known == id)
        {
            listed.push((*id, size));
        }
        if tpe == FileType::Key {
            self.written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .keys
                .push(*id);
        }
        Ok(())
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        let key = self.key(tpe, id);
        if tpe == FileType::Index
            && let Some(listed) = &mut self.memo().listed
        {
            listed.retain(|(known, _)| known != id);
        }
        let refused = self.block("delete", &key, |store, key| async move {
            store.delete(std::slice::from_ref(&key)).await
        })?;
        match refused.into_iter().next() {
            None => Ok(()),
            Some((key, why)) => Err(
                RusticError::new(ErrorKind::Backend, "S3 refused to delete {key}: {why}")
                    .attach_context("key", self.store.url(&key))
                    .attach_context("why", why),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wait_for_the_budget_and_get_it_back_when_the_bytes_are_dropped() {
        let budget = std::sync::Arc::new(Budget {
            used: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
            limit: 100,
        });
        let first = Bytes::from_owner(Leased {
            body: Bytes::from_static(b"x"),
            _lease: budget.take(60),
        });
        let waiter = {
            let budget = std::sync::Arc::clone(&budget);
            std::thread::spawn(move || {
                // 60 + 60 > 100: waits until the first read's bytes are gone; larger than the
                // whole budget counts as all of it.
                drop(budget.take(60));
                drop(budget.take(1_000));
            })
        };
        let clone = first.clone();
        drop(first);
        assert!(
            !waiter.is_finished(),
            "60 + 60 > 100 must wait while a clone holds the bytes"
        );
        drop(clone);
        waiter.join().expect("the waiter got the budget");
        assert_eq!(*budget.used.lock().expect("lock"), 0);
    }

    #[test]
    fn the_layout_is_restics() {
        let id: Id = "b56cc31bd6a7a1f5e2e1a5e08ea9e1c0c1f9f06c8a3a0b6e3f1a2b3c4d5e6f70"
            .parse()
            .expect("id");
        let hex = "b56cc31bd6a7a1f5e2e1a5e08ea9e1c0c1f9f06c8a3a0b6e3f1a2b3c4d5e6f70";
        assert_eq!(key_of("repo", FileType::Config, &Id::default()), "repo/config");
        assert_eq!(key_of("repo", FileType::Pack, &id), format!("repo/data/b5/{hex}"));
        assert_eq!(key_of("repo", FileType::Index, &id), format!("repo/index/{hex}"));
        assert_eq!(key_of("repo", FileType::Snapshot, &id), format!("repo/snapshots/{hex}"));
        assert_eq!(key_of("repo", FileType::Key, &id), format!("repo/keys/{hex}"));
    }
}
