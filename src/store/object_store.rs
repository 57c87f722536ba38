//! The storage edge as a trait: what spotkeeper needs of an object store, with no SDK type in it
//! (Litestream's `ReplicaClient`, rustic's backends). `Store` (S3 through the SDK) implements it;
//! `tests/storage_contract.rs` holds the contract, one function per property, run against every
//! S3 server in its list (s3s-fs and moto today).
//!
//! Adding a server to the contract is one line in that file (`contract_on!(name);`) plus a
//! `Server::name()` that starts it and returns its endpoint. Adding a second implementation (a
//! local directory, say) means implementing this trait and calling the same property functions
//! with it; the retry properties are the S3 edge's own and stay with `Store`.
//!
//! Keys are relative to the implementation's prefix. "Not found" is `Ok(None)`, never an error;
//! a refused conditional write is `Put::Refused`, never an error; every other failure is a
//! `StoreError` whose `problem()` is the class every retry asks (`Problem::is_transient`).

use std::future::Future;

use bytes::Bytes;

use super::{ObjectInfo, PutCondition, Store, StoreError};

/// What a put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// The object now holds the body; its new ETag when the server gave one.
    Written { etag: Option<String> },
    /// The condition did not hold (If-None-Match found an object; If-Match found another ETag or
    /// no object): nothing was written.
    Refused,
}

/// A whole object as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub body: Bytes,
    /// What a later `PutCondition::Matches` must name to replace exactly this object.
    pub etag: Option<String>,
}

/// What a HEAD tells of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes.
    pub size: u64,
    pub etag: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}

/// An object store as spotkeeper uses it. The futures are `Send` so a caller may spawn them.
pub trait ObjectStore: Send + Sync {
    /// Where `key` lives, for messages (`s3://bucket/prefix/key`).
    fn url(&self, key: &str) -> String;

    /// Writes `body` at `key` if `condition` holds.
    fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: PutCondition,
    ) -> impl Future<Output = Result<Put, StoreError>> + Send;

    /// The whole object if it has at most `cap` bytes (`u64::MAX`: no cap); a larger one is
    /// `StoreError::TooLarge`, refused before more than `cap` bytes are held. `None`: no such key.
    fn get_capped(&self, key: &str, cap: u64) -> impl Future<Output = Result<Option<Fetched>, StoreError>> + Send;

    /// Exactly `length` bytes from `offset`; a range the object does not hold in full is an
    /// error (never fewer bytes). `None`: no such key.
    fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;

    /// Size and ETag, or `None`: no such key.
    fn head(&self, key: &str) -> impl Future<Output = Result<Option<Head>, StoreError>> + Send;

    /// One page of the keys that start with `prefix` (a string prefix: `a` also lists `ab/x`),
    /// from `continuation` (a previous page's `next`).
    fn list_page(
        &self,
        prefix: &str,
        continuation: Option<String>,
    ) -> impl Future<Output = Result<ListPage, StoreError>> + Send;

    /// Deletes `keys` (missing ones are not an error), in as many requests as the store needs.
    /// Returns the keys the store reported it could not delete, each with its reason.
    fn delete(&self, keys: &[String]) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;

    /// The whole object. `None`: no such key.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Fetched>, StoreError>> + Send {
        self.get_capped(key, u64::MAX)
    }

    /// Every key under `prefix`, all pages. An error on any page fails the whole listing: a
    /// partial listing must never look like a complete one.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<ObjectInfo>, StoreError>> + Send {
        async move {
            let mut objects = Vec::new();
            let mut continuation = None;
            loop {
                let page = self.list_page(prefix, continuation).await?;
                objects.extend(page.objects);
                match page.next {
                    Some(next) => continuation = Some(next),
                    None => return Ok(objects),
                }
            }
        }
    }
}

impl ObjectStore for Store {
    fn url(&self, key: &str) -> String {
        Store::url(self, key)
    }

    async fn put(&self, key: &str, body: Bytes, condition: PutCondition) -> Result<Put, StoreError> {
        match self
            .put_bytes(key, body, "application/octet-stream", &[], condition)
            .await
        {
            Ok(etag) => Ok(Put::Written { etag }),
            Err(e) if e.problem() == Some(&super::Problem::PreconditionFailed) => Ok(Put::Refused),
            Err(e) => Err(e),
        }
    }

    async fn get_capped(&self, key: &str, cap: u64) -> Result<Option<Fetched>, StoreError> {
        Ok(self
            .get_bytes_capped(key, cap)
            .await?
            .map(|(body, etag)| Fetched { body, etag }))
    }

    async fn get_range(&self, key: &str, offset: u64, length: u64) -> Result<Option<Bytes>, StoreError> {
        Store::get_range(self, key, offset, length).await
    }

    async fn head(&self, key: &str) -> Result<Option<Head>, StoreError> {
        self.head_object(key).await
    }

    async fn list_page(&self, prefix: &str, continuation: Option<String>) -> Result<ListPage, StoreError> {
        Store::list_page(self, prefix, continuation).await
    }

    async fn delete(&self, keys: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        Store::delete(self, keys).await
    }
}
