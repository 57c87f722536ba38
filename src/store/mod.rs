//! S3 through the real SDK: gets and puts (conditional ones too), ranged and capped gets,
//! complete listings, batched deletes. Keys passed in are relative to the configured prefix.
//! Every error names the bucket and key; `is_transient` is the one place that decides what a
//! retry can fix. `ObjectStore` (object_store.rs) is the edge as a trait, with its contract in
//! `tests/storage_contract.rs`; the callers still hold a `Store`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::interceptors::{BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;

use crate::config::S3Config;

mod object_store;
pub mod problem;

pub use object_store::{Fetched, Head, ListPage, ObjectStore, Put};
pub use problem::{Context, Failure, Problem, failure_of};

/// S3's limit for one DeleteObjects call.
const DELETE_BATCH: usize = 1000;
/// Attempts per request, counting the first; the SDK backs off exponentially between them.
const MAX_ATTEMPTS: u32 = 5;
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A body's buffer is allocated at its announced or asked length up to this, and grows with the
/// bytes that come beyond it: a lying `Content-Length` or a damaged index must not become one
/// allocation of gigabytes.
const PREALLOCATED_AT_MOST: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A request failed; the message names what, where, why and what to do.
    #[error("{}", problem::message(&.0.problem, &.0.context))]
    Request(Box<Failed>),
    #[error("s3://{bucket}/{key} is larger than {cap} bytes, the cap for this object; refusing to read it")]
    TooLarge { bucket: String, key: String, cap: u64 },
    #[error("upload of s3://{bucket}/{key} stopped: {reason}")]
    UploadAborted {
        bucket: String,
        key: String,
        reason: String,
    },
}

/// A failed request: its class and what it was doing.
#[derive(Debug)]
pub struct Failed {
    pub problem: Problem,
    pub context: Context,
}

impl StoreError {
    pub fn request(problem: Problem, context: Context) -> StoreError {
        StoreError::Request(Box::new(Failed { problem, context }))
    }

    /// The class of a failed request (`None` for the errors that are not a request's).
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            StoreError::Request(failed) => Some(&failed.problem),
            _ => None,
        }
    }
}

/// True when trying again later may succeed: the network, timeouts, throttling, 5xx.
pub fn is_transient(error: &StoreError) -> bool {
    error.problem().is_some_and(Problem::is_transient)
}

/// Metadata of one listed object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Relative to the prefix.
    pub key: String,
    pub size: u64,
}

/// Counts HTTP attempts, so commands and benchmarks can report what an operation cost: all of
/// them, and by S3's price classes.
#[derive(Debug, Clone, Default)]
struct RequestCounter(Arc<AtomicU64>, Arc<[AtomicU64; 4]>);

/// Requests by S3's price classes, retries included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestCounts {
    /// PUT, POST and COPY (S3 bills them with LIST).
    pub put: u64,
    /// LIST (ListObjectsV2).
    pub list: u64,
    /// GET and HEAD.
    pub get: u64,
    /// DELETE (free at S3).
    pub delete: u64,
}

impl RequestCounts {
    /// The requests made since `before`.
    pub fn since(&self, before: &RequestCounts) -> RequestCounts {
        RequestCounts {
            put: self.put - before.put,
            list: self.list - before.list,
            get: self.get - before.get,
            delete: self.delete - before.delete,
        }
    }
}

/// The price class of an S3 operation (the SDK's operation name).
fn price_class(operation: &str) -> usize {
    match operation {
        "ListObjectsV2" | "ListObjects" => 1,
        "GetObject" | "HeadObject" | "HeadBucket" => 2,
        "DeleteObject" | "DeleteObjects" => 3,
        // PutObject, CopyObject, the multipart calls.
        _ => 0,
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map_or("", |m| m.name());
        self.1[price_class(operation)].fetch_add(1, Ordering::Relaxed);
        if tracing::enabled!(tracing::Level::TRACE) {
            let uri = context.request().uri();
            tracing::trace!(operation, target = uri.split('?').next().unwrap_or(uri), "S3 request");
        }
        Ok(())
    }
}

/// The bucket and prefix of one repository.
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
    bucket: String,
    prefix: String,
    requests: RequestCounter,
    /// The longest one request can take with its retries (`[s3] timeout` per attempt): while
    /// within it, a slow request counts as progress for the watchdog.
    request_bound: Duration,
    /// `host:port` of the endpoint, for messages.
    endpoint: String,
    /// `[s3] timeout`, for messages.
    timeout: Duration,
}

impl Store {
    /// Builds a client from the shared SDK configuration (`crate::aws`) plus the `[s3]` section.
    /// A custom endpoint (config or `AWS_ENDPOINT_URL[_S3]`) implies path-style addressing.
    pub fn connect(config: &S3Config, sdk_config: &aws_config::SdkConfig) -> Store {
        let requests = RequestCounter::default();
        let mut builder = aws_sdk_s3::config::Builder::from(sdk_config)
            .interceptor(requests.clone())
            .interceptor(RetryLog {
                timeout: config.timeout,
            })
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(INITIAL_BACKOFF),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(config.timeout)
                    .build(),
            );
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .filter(|e| !e.is_empty());
        let shown = match &endpoint {
            Some(url) => host_and_port(url),
            None => format!(
                "s3.{}.amazonaws.com:443",
                sdk_config.region().map_or(crate::aws::DEFAULT_REGION, |r| r.as_ref())
            ),
        };
        if let Some(endpoint) = endpoint {
            builder = builder.endpoint_url(endpoint).force_path_style(true);
        }
        Store {
            endpoint: shown,
            timeout: config.timeout,
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            requests,
            request_bound: (config.timeout + CONNECT_TIMEOUT) * MAX_ATTEMPTS,
        }
    }

    /// The bucket name, for messages.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// HTTP requests sent so far by this store, retries included.
    pub fn requests(&self) -> u64 {
        self.requests.0.load(Ordering::Relaxed)
    }

    /// `requests`, by S3's price classes.
    pub fn request_counts(&self) -> RequestCounts {
        let load = |i: usize| self.requests.1[i].load(Ordering::Relaxed);
        RequestCounts {
            put: load(0),
            list: load(1),
            get: load(2),
            delete: load(3),
        }
    }

    /// The full key of `relative`.
    pub fn full_key(&self, relative: &str) -> String {
        if self.prefix.is_empty() {
            relative.to_string()
        } else {
            format!("{}/{}", self.prefix, relative)
        }
    }

    /// `s3://bucket/full-key` of `relative`, for messages.
    pub fn url(&self, relative: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full_key(relative))
    }

    fn relative_key<'a>(&self, full: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.prefix)
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(full)
        }
    }

    fn error<E>(
        &self,
        op: &'static str,
        relative: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        // The whole chain, for -vv; the person reads the classified one-liner.
        tracing::debug!(op, key = %self.full_key(relative), error = %DisplayErrorContext(&err), "S3 request failed");
        StoreError::request(
            problem::classify(&problem::failure_of(&err)),
            self.context(op, relative),
        )
    }

    /// What a message about `op` on `relative` needs to know.
    fn context(&self, op: &'static str, relative: &str) -> Context {
        Context {
            op,
            bucket: self.bucket.clone(),
            key: self.full_key(relative),
            endpoint: self.endpoint.clone(),
            timeout: self.timeout,
            attempts: MAX_ATTEMPTS,
        }
    }

    /// A body that broke off while it was read.
    fn interrupted(&self, relative: &str, cause: &(dyn std::error::Error + 'static)) -> StoreError {
        StoreError::request(
            Problem::Interrupted {
                cause: problem::innermost_cause(cause),
            },
            self.context("read", relative),
        )
    }

    /// The whole object, or `None` when the key does not exist.
    pub async fn get_bytes(&self, relative: &str) -> Result<Option<(Bytes, Option<String>)>, StoreError> {
        self.get_bytes_capped(relative, u64::MAX).await
    }

    /// Runs `call` (a whole GET) again when its answer broke off while its body was read: the
    /// SDK retries a request, not a body that fails after the answer began. A GET can always be
    /// repeated; each retry is a WARN line, as the SDK's own are.
    /// (A closure returning a future, not an async closure: the futures of `ObjectStore` must be
    /// `Send`, which the compiler cannot yet prove through an async closure.)
    async fn again_if_broken<T, F>(&self, call: impl Fn() -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Err(e) if attempt < MAX_ATTEMPTS && matches!(e.problem(), Some(Problem::Interrupted { .. })) => {
                    attempt += 1;
                    tracing::warn!("{e}; retrying, attempt {attempt} of {MAX_ATTEMPTS}");
                    tokio::time::sleep(INITIAL_BACKOFF * attempt).await;
                }
                other => return other,
            }
        }
    }

    /// Like `get_bytes`, for objects of at most `cap` bytes (manifests, pointers): a larger one
    /// is refused from its Content-Length before its body is read, or as soon as the body passes
    /// the cap, and the body is gathered into one buffer, never copied again.
    pub async fn get_bytes_capped(
        &self,
        relative: &str,
        cap: u64,
    ) -> Result<Option<(Bytes, Option<String>)>, StoreError> {
        self.again_if_broken(|| self.get_bytes_capped_once(relative, cap)).await
    }

    async fn get_bytes_capped_once(
        &self,
        relative: &str,
        cap: u64,
    ) -> Result<Option<(Bytes, Option<String>)>, StoreError> {
        let key = self.full_key(relative);
        let too_large = || StoreError::TooLarge {
            bucket: self.bucket.clone(),
            key: key.clone(),
            cap,
        };
        let mut output = match self.client.get_object().bucket(&self.bucket).key(&key).send().await {
            Ok(output) => output,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(err) => return Err(self.error("get", relative, err)),
        };
        let announced = output.content_length().and_then(|n| u64::try_from(n).ok());
        if announced.is_some_and(|n| n > cap) {
            return Err(too_large());
        }
        let etag = output.e_tag().map(str::to_string);
        // The announced length is the server's word: allocated up to a bound, grown beyond it.
        let announced = usize::try_from(announced.unwrap_or(0)).unwrap_or(0);
        let mut buffer = Vec::with_capacity(announced.min(PREALLOCATED_AT_MOST));
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        if !self.gather(relative, &mut output.body, &mut buffer, cap).await? {
            return Err(too_large());
        }
        Ok(Some((Bytes::from(buffer), etag)))
    }

    /// Appends `body` to `buffer` as it arrives; `false` (and the rest left unread) as soon as
    /// `buffer` would pass `cap` bytes.
    async fn gather(
        &self,
        relative: &str,
        body: &mut ByteStream,
        buffer: &mut Vec<u8>,
        cap: usize,
    ) -> Result<bool, StoreError> {
        while let Some(chunk) = body.try_next().await.map_err(|e| self.interrupted(relative, &e))? {
            if buffer.len() + chunk.len() > cap {
                return Ok(false);
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(true)
    }

    /// `length` bytes of the object from `offset` (a ranged GET), or `None` when the key does not
    /// exist. Fewer bytes than asked (the object is shorter) is an error: a reader of packs asks
    /// for exactly what its index says is there.
    pub async fn get_range(&self, relative: &str, offset: u64, length: u64) -> Result<Option<Bytes>, StoreError> {
        let read = self.get_range_into(relative, offset, length, Vec::new()).await?;
        Ok(read.map(Bytes::from))
    }

    /// `get_range`, the bytes gathered into `buffer` (emptied first): a reader that gives its
    /// buffers back and takes them again faults their pages in once, not once per read. Only
    /// `length` bytes are ever taken: a body longer than asked is an error, not a larger buffer.
    pub async fn get_range_into(
        &self,
        relative: &str,
        offset: u64,
        length: u64,
        buffer: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        // The buffer goes to the first attempt; a retry (rare) gathers into a new one.
        let buffer = std::sync::Mutex::new(Some(buffer));
        self.again_if_broken(|| {
            let buffer = buffer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .unwrap_or_default();
            self.get_range_once(relative, offset, length, buffer)
        })
        .await
    }

    async fn get_range_once(
        &self,
        relative: &str,
        offset: u64,
        length: u64,
        mut buffer: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        buffer.clear();
        if length == 0 {
            return Ok(Some(buffer));
        }
        let wrong_length = |why: String| {
            StoreError::request(
                Problem::Other {
                    status: None,
                    code: None,
                    message: format!("asked for {length} bytes at offset {offset}, {why}"),
                },
                self.context("get", relative),
            )
        };
        let wanted = usize::try_from(length).map_err(|_| wrong_length("more than this machine can address".into()))?;
        let range = format!("bytes={offset}-{}", offset + length - 1);
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(relative))
            .range(range)
            .send();
        let mut output = match crate::liveness::alive_while(self.request_bound, request).await {
            Ok(output) => output,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(err) => return Err(self.error("get", relative, err)),
        };
        // What was asked for, up to a bound: a length beyond it grows with the bytes that come.
        buffer.reserve_exact(wanted.min(PREALLOCATED_AT_MOST));
        if !self.gather(relative, &mut output.body, &mut buffer, wanted).await? {
            return Err(wrong_length(
                "got more: the server sent more than the range (did it ignore `Range`?)".into(),
            ));
        }
        if buffer.len() != wanted {
            return Err(wrong_length(format!(
                "got {}: the object is shorter than its index says",
                buffer.len()
            )));
        }
        Ok(Some(buffer))
    }

    /// A streaming body, or `None` when the key does not exist.
    pub async fn get_stream(&self, relative: &str) -> Result<Option<ByteStream>, StoreError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(relative))
            .send()
            .await
        {
            Ok(output) => Ok(Some(output.body)),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(err) => Err(self.error("get", relative, err)),
        }
    }

    /// User metadata of an object, or `None` when it does not exist.
    pub async fn head_metadata(
        &self,
        relative: &str,
    ) -> Result<Option<std::collections::HashMap<String, String>>, StoreError> {
        Ok(self
            .head_request(relative)
            .await?
            .map(|output| output.metadata.unwrap_or_default()))
    }

    /// Size and ETag of an object, or `None` when it does not exist.
    pub async fn head_object(&self, relative: &str) -> Result<Option<Head>, StoreError> {
        Ok(self.head_request(relative).await?.map(|output| Head {
            size: output.content_length.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
            etag: output.e_tag,
        }))
    }

    /// One HEAD request; `None` when the object does not exist.
    async fn head_request(
        &self,
        relative: &str,
    ) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(relative))
            .send()
            .await
        {
            Ok(output) => Ok(Some(output)),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(err) => Err(self.error("head", relative, err)),
        }
    }

    /// Puts a small object. `condition` makes the write conditional (see [`PutCondition`]).
    pub async fn put_bytes(
        &self,
        relative: &str,
        body: Bytes,
        content_type: &str,
        metadata: &[(&str, String)],
        condition: PutCondition,
    ) -> Result<Option<String>, StoreError> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(relative))
            .content_type(content_type)
            .body(ByteStream::from(body));
        for (name, value) in metadata {
            request = request.metadata(*name, value);
        }
        let must_exist = matches!(condition, PutCondition::Matches(_));
        request = match condition {
            PutCondition::None => request,
            PutCondition::Absent => request.if_none_match("*"),
            PutCondition::Matches(etag) => request.if_match(etag),
        };
        match crate::liveness::alive_while(self.request_bound, request.send()).await {
            Ok(output) => Ok(output.e_tag),
            // If-Match on a key that is gone: S3 (and moto) answer 404 NoSuchKey where s3s-fs
            // answers 412. Either way the object is no longer the one named: the same refusal.
            Err(err) if must_exist && err.code() == Some("NoSuchKey") => Err(StoreError::request(
                Problem::PreconditionFailed,
                self.context("put", relative),
            )),
            Err(err) => Err(self.error("put", relative, err)),
        }
    }

    fn aborted(&self, relative: &str, reason: &str) -> StoreError {
        StoreError::UploadAborted {
            bucket: self.bucket.clone(),
            key: self.full_key(relative),
            reason: reason.to_string(),
        }
    }

    /// Every object under `relative_prefix`, following continuation tokens to the end. An error
    /// on any page fails the whole listing: a partial listing must never look like a complete one.
    pub async fn list(&self, relative_prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        ObjectStore::list(self, relative_prefix).await
    }

    /// One page of the listing under `relative_prefix` (S3's page: up to 1,000 keys), from
    /// `continuation`. A page that says it is truncated but gives no token is an error.
    pub async fn list_page(&self, relative_prefix: &str, continuation: Option<String>) -> Result<ListPage, StoreError> {
        let output = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.full_key(relative_prefix))
            .set_continuation_token(continuation)
            .send()
            .await
            .map_err(|e| self.error("list", relative_prefix, e))?;
        let objects = output
            .contents()
            .iter()
            .filter_map(|object| {
                Some(ObjectInfo {
                    key: self.relative_key(object.key()?).to_string(),
                    size: object.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                })
            })
            .collect();
        match (output.is_truncated(), output.next_continuation_token) {
            (Some(true), Some(next)) => Ok(ListPage {
                objects,
                next: Some(next),
            }),
            (Some(true), None) => Err(StoreError::request(
                Problem::Other {
                    status: None,
                    code: None,
                    message: "the listing is truncated but S3 gave no continuation token".into(),
                },
                self.context("list", relative_prefix),
            )),
            _ => Ok(ListPage { objects, next: None }),
        }
    }

    /// Deletes `keys` in order, in batches. Returns the keys S3 reported it could not delete,
    /// each with S3's reason; a failed request is an error.
    pub async fn delete(&self, keys: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        let mut failed = Vec::new();
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.full_key(k)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.aborted(&batch[0], &e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| self.aborted(&batch[0], &e.to_string()))?;
            let output = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.error("delete", &batch[0], e))?;
            for error in output.errors() {
                let key = error
                    .key()
                    .map(|k| self.relative_key(k).to_string())
                    .unwrap_or_default();
                let reason = format!(
                    "{}: {}",
                    error.code().unwrap_or("error"),
                    error.message().unwrap_or("no message")
                );
                failed.push((key, reason));
            }
        }
        Ok(failed)
    }
}

/// How a put may overwrite.
#[derive(Debug, Clone)]
pub enum PutCondition {
    /// Unconditional.
    None,
    /// Only if the key does not exist yet (`If-None-Match: *`).
    Absent,
    /// Only if the current object has this ETag (`If-Match`).
    Matches(String),
}

/// `host:port` of an endpoint URL, for messages.
fn host_and_port(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
    {
        authority.to_string()
    } else {
        let port = if scheme == "http" { 80 } else { 443 };
        format!("{authority}:{port}")
    }
}

/// Logs each retry of a request at WARN, with what went wrong the time before: a person sees
/// why a command waits instead of a silent pause (the SDK makes `MAX_ATTEMPTS` attempts).
#[derive(Debug)]
struct RetryLog {
    timeout: Duration,
}

/// What the previous attempt of the current request met.
#[derive(Debug, Clone)]
struct LastAttempt(String);

impl aws_smithy_types::config_bag::Storable for LastAttempt {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl Intercept for RetryLog {
    fn name(&self) -> &'static str {
        "RetryLog"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let failed = match context.output_or_error() {
            Some(Err(e)) if e.is_timeout_error() || e.as_connector_error().is_some_and(|c| c.is_timeout()) => {
                Some(format!("S3 did not answer within {} s", self.timeout.as_secs()))
            }
            Some(Err(e)) if e.is_connector_error() => Some(format!("cannot connect: {}", problem::innermost_cause(e))),
            Some(Err(_)) => Some(match context.response() {
                Some(response) => format!("S3 answered HTTP {}", response.status().as_u16()),
                None => "the request failed".to_string(),
            }),
            _ => None,
        };
        if let Some(failed) = failed {
            cfg.interceptor_state().store_put(LastAttempt(failed));
        }
        Ok(())
    }

    /// Before transmit, not before attempt: only then does the request carry its full URI.
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let attempt = cfg
            .load::<aws_smithy_runtime_api::client::retries::RequestAttempts>()
            .map_or(1, |a| a.attempts());
        if attempt > 1 {
            let operation = cfg
                .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
                .map_or("request", |m| m.name());
            let uri = context.request().uri();
            let target = uri.split('?').next().unwrap_or(uri);
            let why = cfg
                .load::<LastAttempt>()
                .map_or("the previous attempt failed", |l| l.0.as_str());
            tracing::warn!("S3 {operation} {target}: {why}; retrying, attempt {attempt} of {MAX_ATTEMPTS}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_shown_as_host_and_port() {
        assert_eq!(host_and_port("http://127.0.0.1:9000"), "127.0.0.1:9000");
        assert_eq!(host_and_port("https://minio.lan/base"), "minio.lan:443");
        assert_eq!(host_and_port("http://user:pw@minio.lan/"), "minio.lan:80");
    }
}
