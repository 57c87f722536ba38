//! The storage edge's contract (Litestream's `ReplicaClient` tests, kopia's `VerifyStorage`): one
//! function per property of `ObjectStore`, each written once and run against every S3 server in
//! the list at the bottom (`contract_on!`), as `SERVER::PROPERTY` tests.
//!
//! A third server is one line there, `contract_on!(name);`, plus `Server::name()` below that
//! starts it and gives its endpoint. The properties reach the store through `Server::store`,
//! which hands out an `impl ObjectStore`: only the trait is under test. The retry properties are
//! the S3 edge's own and use `Store`; the one without any server (a closed port) runs once.
//!
//! Differences between the servers that the code must tolerate are written where they bite.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ACCESS_KEY, FaultProxy, Moto, ProxyMode, S3Server, SECRET_KEY, free_port, noise};
use futures::{StreamExt, TryStreamExt};
use spotkeeper::config::S3Config;
use spotkeeper::store::{Fetched, ObjectStore, Problem, Put, PutCondition, Store, StoreError, is_transient};

/// Every property's bucket (each test starts its own server).
const BUCKET: &str = "contract";
/// S3's page: a listing of more keys than this needs a second page, a delete a second batch.
const S3_PAGE: usize = 1000;
/// Keys for the pagination and batch properties: past one page and one batch.
const MANY: usize = S3_PAGE + 3;
/// Puts in flight while a property fills a bucket.
const FILL_CONCURRENCY: usize = 16;
/// The longest a request that is retried to exhaustion may take here: five attempts with the
/// SDK's backoff from 200 ms (at most 0.2 + 0.4 + 0.8 + 1.6 s of sleep) and fast failures.
const RETRIES_BOUND: Duration = Duration::from_secs(20);
/// Ample time for the fault proxy to apply a new mode to open connections (it polls at 20 ms).
const PROXY_SWITCH: Duration = Duration::from_millis(200);

/// A running S3 server with its endpoint; stopped when dropped.
struct Server {
    endpoint: String,
    port: u16,
    _running: Box<dyn Send>,
}

impl Server {
    /// s3s-fs in the test process, as the other tests run it.
    fn s3s_fs() -> Server {
        let server = S3Server::start();
        Server {
            endpoint: server.endpoint(),
            port: server.port,
            _running: Box::new(server),
        }
    }

    /// moto's S3 at the version `testing/start-moto.sh` pins (the same port serves SSM).
    fn moto() -> Server {
        let server = Moto::start();
        Server {
            endpoint: server.endpoint(),
            port: server.port,
            _running: Box::new(server),
        }
    }

    /// The store under `prefix` in this server's bucket, seen only through the trait.
    async fn store(&self, prefix: &str) -> impl ObjectStore {
        self.create_bucket().await;
        store_at(&self.endpoint, prefix)
    }

    async fn create_bucket(&self) {
        let credentials = aws_credential_types::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "tests");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .build();
        let created = aws_sdk_s3::Client::from_conf(config)
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await;
        if let Err(e) = created {
            let code = e
                .as_service_error()
                .and_then(|e| aws_sdk_s3::error::ProvideErrorMetadata::code(e));
            assert!(
                code.is_some_and(|c| c.starts_with("BucketAlready")),
                "create bucket: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            );
        }
    }
}

/// spotkeeper's own `Store` on `endpoint`, as `[s3] endpoint` configures it.
fn store_at(endpoint: &str, prefix: &str) -> Store {
    let config = S3Config {
        bucket: BUCKET.to_string(),
        prefix: prefix.to_string(),
        region: None,
        endpoint: Some(endpoint.to_string()),
        timeout: Duration::from_secs(5),
    };
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "tests"),
        ))
        .build();
    Store::connect(&config, &sdk)
}

async fn put(store: &impl ObjectStore, key: &str, body: &[u8], condition: PutCondition) -> Put {
    store
        .put(key, Bytes::copy_from_slice(body), condition)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"))
}

/// The ETag of a put that must have written.
async fn written(store: &impl ObjectStore, key: &str, body: &[u8]) -> String {
    match put(store, key, body, PutCondition::None).await {
        Put::Written { etag: Some(etag) } => etag,
        other => panic!("put {key}: {other:?}"),
    }
}

async fn get(store: &impl ObjectStore, key: &str) -> Option<Fetched> {
    store.get(key).await.unwrap_or_else(|e| panic!("get {key}: {e}"))
}

async fn body(store: &impl ObjectStore, key: &str) -> Vec<u8> {
    get(store, key)
        .await
        .unwrap_or_else(|| panic!("{key} must exist"))
        .body
        .to_vec()
}

/// Puts `keys` (each holding its own name, so its size is its length), a few at a time.
async fn fill(store: &impl ObjectStore, keys: &[String]) {
    futures::stream::iter(keys)
        .map(|key| async move {
            store
                .put(key, Bytes::from(key.clone()), PutCondition::None)
                .await
                .map_err(|e| format!("put {key}: {e}"))
        })
        .buffer_unordered(FILL_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await
        .expect("fill the bucket");
}

fn keys(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i:05}")).collect()
}

// ---- the properties ----

/// What is put is what is got, byte for byte: empty, one byte, every byte value, several MiB;
/// the ETag of the put is the ETag of the get and of the head; a plain put overwrites.
async fn put_then_get_round_trips_bytes(server: &Server) {
    let store = server.store("lab").await;
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    let bodies: [(&str, Vec<u8>); 4] = [
        ("empty", Vec::new()),
        ("one-byte", vec![0]),
        ("binary", every_byte),
        ("multi-mib", noise(5 * 1024 * 1024 + 3, 21)),
    ];
    for (key, bytes) in &bodies {
        let etag = written(&store, key, bytes).await;
        let fetched = get(&store, key).await.unwrap_or_else(|| panic!("{key} must exist"));
        assert_eq!(fetched.body.len(), bytes.len(), "{key}: length");
        assert!(fetched.body == bytes.as_slice(), "{key}: the bytes came back changed");
        assert_eq!(fetched.etag.as_deref(), Some(etag.as_str()), "{key}: the get's ETag");
        let head = store.head(key).await.expect("head").expect("head finds it");
        assert_eq!(head.size, bytes.len() as u64, "{key}: the head's size");
        assert_eq!(head.etag.as_deref(), Some(etag.as_str()), "{key}: the head's ETag");
    }
    let first = written(&store, "one-byte", b"x").await;
    let second = written(&store, "one-byte", b"y").await;
    assert_ne!(first, second, "a new body, a new ETag");
    assert_eq!(body(&store, "one-byte").await, b"y", "a plain put overwrites");
}

/// `If-None-Match: *` writes a new key and refuses an existing one, leaving it as it was.
async fn if_none_match_writes_a_new_key_and_refuses_an_existing_one(server: &Server) {
    let store = server.store("lab").await;
    let created = put(&store, "head/pointer", b"first", PutCondition::Absent).await;
    assert!(matches!(created, Put::Written { etag: Some(_) }), "{created:?}");
    assert_eq!(body(&store, "head/pointer").await, b"first");
    let again = put(&store, "head/pointer", b"second", PutCondition::Absent).await;
    assert_eq!(again, Put::Refused, "an existing key must refuse If-None-Match: *");
    assert_eq!(
        body(&store, "head/pointer").await,
        b"first",
        "the refused write changed the object"
    );
}

/// `If-Match` with the current ETag writes; with a stale one, or on a key that is gone, it is
/// refused (`Put::Refused`, not an error) and nothing is written.
async fn if_match_writes_over_the_current_etag_and_refuses_a_stale_one(server: &Server) {
    let store = server.store("lab").await;
    let first = written(&store, "head/pointer", b"one").await;
    let second = match put(&store, "head/pointer", b"two", PutCondition::Matches(first.clone())).await {
        Put::Written { etag: Some(etag) } => etag,
        other => panic!("If-Match with the current ETag: {other:?}"),
    };
    assert_ne!(first, second);
    assert_eq!(body(&store, "head/pointer").await, b"two");
    let stale = put(&store, "head/pointer", b"three", PutCondition::Matches(first.clone())).await;
    assert_eq!(stale, Put::Refused, "a stale ETag must be refused");
    let now = get(&store, "head/pointer").await.expect("still there");
    assert_eq!(now.body.as_ref(), b"two", "the refused write changed the object");
    assert_eq!(now.etag.as_deref(), Some(second.as_str()));
    // S3 and moto answer 404 NoSuchKey here, s3s-fs 412: `Store` makes both a refusal.
    let gone = put(&store, "head/never-written", b"four", PutCondition::Matches(second)).await;
    assert_eq!(gone, Put::Refused, "If-Match on a missing key must be refused");
    assert!(
        get(&store, "head/never-written").await.is_none(),
        "the refused write created the key"
    );
}

/// A ranged get returns exactly the bytes asked for: the first, a middle run, the last, all of
/// them, none. A range the object does not hold in full is an error that no retry fixes.
async fn ranged_get_returns_exactly_the_range(server: &Server) {
    let store = server.store("lab").await;
    let len = 100_000u64;
    let bytes = noise(len as usize, 7);
    written(&store, "pack", &bytes).await;
    let range = |offset: u64, length: u64| {
        let store = &store;
        async move {
            store
                .get_range("pack", offset, length)
                .await
                .map(|r| r.map(|b| b.to_vec()))
        }
    };
    for (offset, length) in [(0, 1), (40_000, 17), (len - 1, 1), (0, len), (123, 0)] {
        let got = range(offset, length)
            .await
            .unwrap_or_else(|e| panic!("{offset}+{length}: {e}"))
            .expect("the key exists");
        let (start, end) = (offset as usize, (offset + length) as usize);
        assert!(
            got == bytes[start..end],
            "{offset}+{length}: wrong bytes ({} long)",
            got.len()
        );
    }
    // Past the end: both servers answer 416 InvalidRange, classed as S3's answer, not transient.
    let past = range(len, 1).await.expect_err("a range past the end must fail");
    assert!(
        matches!(past.problem(), Some(Problem::Other { status: Some(416), .. })),
        "past the end: {past:?}"
    );
    assert!(!is_transient(&past), "no retry fixes a range past the end");
    // Across the end: the servers answer the bytes there are (206); fewer than asked is refused.
    let across = range(len - 5, 10).await.expect_err("a range across the end must fail");
    assert!(
        matches!(across.problem(), Some(Problem::Other { status: None, .. })),
        "across the end: {across:?}"
    );
    assert!(across.to_string().contains("asked for 10 bytes"), "{across}");
    assert!(!is_transient(&across));
    assert_eq!(range(0, 1).await.expect("missing key").as_deref(), Some(&bytes[..1]));
}

/// A capped get returns an object of up to `cap` bytes and refuses a larger one by name.
async fn capped_get_refuses_an_object_over_the_cap(server: &Server) {
    let store = server.store("lab").await;
    let bytes = noise(4096, 3);
    written(&store, "manifest.json", &bytes).await;
    written(&store, "empty.json", b"").await;
    let at_cap = store.get_capped("manifest.json", 4096).await.expect("at the cap");
    assert!(
        at_cap.is_some_and(|f| f.body == bytes.as_slice()),
        "an object of exactly the cap"
    );
    let over = store
        .get_capped("manifest.json", 4095)
        .await
        .expect_err("one byte over the cap must be refused");
    match &over {
        StoreError::TooLarge { key, cap, .. } => {
            assert_eq!(*cap, 4095);
            assert!(key.ends_with("lab/manifest.json"), "{key}");
        }
        other => panic!("over the cap: {other:?}"),
    }
    assert!(!is_transient(&over));
    let empty = store.get_capped("empty.json", 0).await.expect("an empty object");
    assert!(empty.is_some_and(|f| f.body.is_empty()));
    assert!(store.get_capped("absent.json", 10).await.expect("missing").is_none());
}

/// A key that does not exist is "not found" (`None`) for every read, never an error.
async fn a_missing_key_is_not_found(server: &Server) {
    let store = server.store("lab").await;
    written(&store, "present", b"here").await;
    assert!(get(&store, "absent").await.is_none(), "get");
    assert!(store.get_capped("absent", 1).await.expect("capped get").is_none());
    assert!(store.get_range("absent", 0, 1).await.expect("ranged get").is_none());
    assert!(store.head("absent").await.expect("head").is_none());
    assert!(store.list("absent/").await.expect("list").is_empty());
    // The other reads of the same store still find what exists.
    assert_eq!(body(&store, "present").await, b"here");
    assert!(store.head("present").await.expect("head").is_some());
}

/// A listing returns every key under the prefix exactly once, across pages; the prefix is a
/// string prefix (`a/` never lists `ab/`, `a` lists both), and a sibling store's prefix (`lab`
/// and `lab2`) never mixes into it.
async fn listing_returns_every_key_once_across_pages_and_only_under_the_prefix(server: &Server) {
    let store = server.store("lab").await;
    let sibling = server.store("lab2").await;
    let many = keys("a/", MANY);
    fill(&store, &many).await;
    fill(&store, &["ab/0".to_string(), "ab/1".to_string(), "b/0".to_string()]).await;
    fill(&sibling, &["a/00000".to_string(), "a/sibling".to_string()]).await;

    let mut pages = Vec::new();
    let mut continuation = None;
    loop {
        let page = store.list_page("a/", continuation).await.expect("a page");
        assert!(page.objects.len() <= S3_PAGE, "a page of {}", page.objects.len());
        pages.push(page.objects);
        match page.next {
            Some(next) => continuation = Some(next),
            None => break,
        }
        assert!(pages.len() <= MANY, "the pages never end");
    }
    assert!(
        pages.len() >= 2,
        "{MANY} keys in {} page(s): pagination not exercised",
        pages.len()
    );
    let listed: Vec<String> = pages.iter().flatten().map(|o| o.key.clone()).collect();
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a key listed twice across pages");
    assert_eq!(listed.len(), MANY, "keys lost or added across pages");
    assert!(
        unique.iter().zip(&many).all(|(a, b)| *a == b),
        "a key not put, or outside a/"
    );
    for object in pages.iter().flatten() {
        assert_eq!(object.size, object.key.len() as u64, "{}: size", object.key);
    }

    let all: Vec<String> = store
        .list("a/")
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(all.len(), MANY, "the complete listing");
    let ab: BTreeSet<String> = store
        .list("ab/")
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(ab, BTreeSet::from(["ab/0".to_string(), "ab/1".to_string()]));
    let a = store.list("a").await.expect("list");
    assert_eq!(a.len(), MANY + 2, "`a` is a string prefix: a/ and ab/");
    let everything = store.list("").await.expect("list");
    assert_eq!(everything.len(), MANY + 3, "the whole prefix, nothing of lab2");
    assert!(
        everything.iter().all(|o| o.key != "a/sibling"),
        "lab2's key listed under lab"
    );
    let theirs: BTreeSet<String> = sibling
        .list("")
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(theirs, BTreeSet::from(["a/00000".to_string(), "a/sibling".to_string()]));
}

/// A batched delete removes exactly the keys named (more than one batch of them), missing keys
/// included without complaint, and nothing else: not a key beside them, not a sibling prefix's.
async fn batched_delete_removes_exactly_the_named_keys(server: &Server) {
    let store = server.store("lab").await;
    let sibling = server.store("lab2").await;
    let doomed = keys("d/", MANY);
    fill(&store, &doomed).await;
    fill(&store, &["d/kept".to_string(), "e/0".to_string()]).await;
    fill(&sibling, &["d/00000".to_string()]).await;

    let mut named = doomed.clone();
    named.push("d/never-existed".to_string());
    let failed = store.delete(&named).await.expect("delete");
    assert!(failed.is_empty(), "keys not deleted: {failed:?}");
    let left: Vec<String> = store.list("").await.expect("list").into_iter().map(|o| o.key).collect();
    assert_eq!(left, ["d/kept", "e/0"], "exactly the named keys must go");
    assert!(get(&store, "d/00000").await.is_none());
    assert_eq!(
        body(&sibling, "d/00000").await,
        b"d/00000",
        "the sibling prefix's key went too"
    );

    let again = store.delete(&named).await.expect("deleting what is gone");
    assert!(again.is_empty(), "{again:?}");
    assert!(store.delete(&[]).await.expect("nothing to delete").is_empty());
}

/// A server that answers 500 is retried a bounded number of times, then the failure is classed
/// as S3's answer and transient; when it recovers, the same store reads the same object.
async fn a_server_answering_500_is_retried_then_classed(server: &Server) {
    server.create_bucket().await;
    let proxy = FaultProxy::start(server.port);
    let store = store_at(&proxy.endpoint(), "lab");
    store
        .put_bytes("k", Bytes::from_static(b"kept"), "text/plain", &[], PutCondition::None)
        .await
        .expect("put through the proxy");
    proxy.set(ProxyMode::Error500);
    // The proxy cuts the pooled connection within its 20 ms poll; until then a request could
    // still reach the server through it.
    tokio::time::sleep(PROXY_SWITCH).await;
    let before = store.requests();
    let started = Instant::now();
    let failed = store.get_bytes("k").await.expect_err("500s must fail the get");
    let elapsed = started.elapsed();
    let StoreError::Request(request) = &failed else {
        panic!("not a request's failure: {failed:?}")
    };
    assert!(
        matches!(&request.problem, Problem::Other { status: Some(500), code: Some(code), .. } if code == "InternalError"),
        "{failed:?}"
    );
    assert!(is_transient(&failed), "a 500 is worth retrying later");
    let attempts = store.requests() - before;
    assert!(request.context.attempts > 1, "no retries configured");
    assert_eq!(attempts, u64::from(request.context.attempts), "attempts made");
    assert!(elapsed < RETRIES_BOUND, "the retries took {elapsed:?}");
    assert!(failed.to_string().contains("HTTP 500"), "{failed}");

    proxy.set(ProxyMode::Forward);
    let back = store.get_bytes("k").await.expect("after recovery").expect("the object");
    assert_eq!(back.0.as_ref(), b"kept");
}

/// No server at all: a closed port is classed as unreachable, transient, after a bounded number
/// of attempts. Nothing here depends on a server, so it runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_retried_then_classed() {
    let closed = free_port();
    let store = store_at(&format!("http://127.0.0.1:{closed}"), "lab");
    let started = Instant::now();
    let failed = store.get_bytes("k").await.expect_err("nothing listens");
    let elapsed = started.elapsed();
    let StoreError::Request(request) = &failed else {
        panic!("not a request's failure: {failed:?}")
    };
    assert!(
        matches!(&request.problem, Problem::Unreachable { cause } if cause.contains("refused")),
        "{failed:?}"
    );
    assert!(is_transient(&failed));
    assert!(request.context.attempts > 1, "no retries configured");
    assert_eq!(store.requests(), u64::from(request.context.attempts), "attempts made");
    assert!(elapsed < RETRIES_BOUND, "the retries took {elapsed:?}");
    assert!(failed.to_string().contains(&format!("127.0.0.1:{closed}")), "{failed}");
}

// ---- the servers ----

/// Every property as a test in a module named for the server: `SERVER::PROPERTY`.
macro_rules! contract_on {
    ($server:ident) => {
        mod $server {
            contract_on!(@each $server:
                put_then_get_round_trips_bytes,
                if_none_match_writes_a_new_key_and_refuses_an_existing_one,
                if_match_writes_over_the_current_etag_and_refuses_a_stale_one,
                ranged_get_returns_exactly_the_range,
                capped_get_refuses_an_object_over_the_cap,
                a_missing_key_is_not_found,
                listing_returns_every_key_once_across_pages_and_only_under_the_prefix,
                batched_delete_removes_exactly_the_named_keys,
                a_server_answering_500_is_retried_then_classed,
            );
        }
    };
    (@each $server:ident: $($property:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $property() {
                let server = super::Server::$server();
                super::$property(&server).await;
            }
        )*
    };
}

contract_on!(s3s_fs);
contract_on!(moto);
