//! Shared test harness: a real S3 server (s3s-fs) in the test process on 127.0.0.1, a config
//! file per test, the real `spotkeeper` binary, and tree comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use sha2::{Digest, Sha256};

pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "testsecret";

/// s3s-fs serving a fresh directory until dropped.
pub struct S3Server {
    pub port: u16,
    pub root: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().expect("s3 root");
        let fs_root = root.path().to_path_buf();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let fs = s3s_fs::FileSystem::new(&fs_root).expect("s3s-fs");
                let mut builder = s3s::service::S3ServiceBuilder::new(fs);
                builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                let service = builder.build();
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
                port_tx
                    .send(listener.local_addr().expect("addr").port())
                    .expect("send port");
                let mut shutdown_rx = shutdown_rx;
                loop {
                    tokio::select! {
                        _ = &mut shutdown_rx => break,
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let _ = socket.set_nodelay(true);
                            let service = service.clone();
                            tokio::spawn(async move {
                                let _ = ConnBuilder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(socket), service)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        let port = port_rx.recv_timeout(Duration::from_secs(10)).expect("s3s-fs started");
        S3Server {
            port,
            root,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (a directory, for s3s-fs).
    pub fn bucket(&self, name: &str) -> PathBuf {
        let path = self.root.path().join(name);
        fs::create_dir_all(&path).expect("bucket dir");
        path
    }

    /// Every object key in `bucket` (files, minus s3s-fs's sidecars), sorted.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let base = self.root.path().join(bucket);
        let mut keys = Vec::new();
        collect_files(&base, &base, &mut keys);
        keys.retain(|k| !k.contains(".s3s") && !k.starts_with('.'));
        keys.sort();
        keys
    }

    /// The bytes of an object, read from the server's disk.
    pub fn object(&self, bucket: &str, key: &str) -> Vec<u8> {
        fs::read(self.root.path().join(bucket).join(key)).expect("object exists")
    }

    /// Puts an object through the S3 API (fixtures, tampering).
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) {
        let endpoint = self.endpoint();
        let (bucket, key, body) = (bucket.to_string(), key.to_string(), body.to_vec());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let credentials = aws_sdk_s3::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "tests");
            let config = aws_sdk_s3::config::Builder::new()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .credentials_provider(credentials)
                .endpoint_url(endpoint)
                .force_path_style(true)
                .build();
            aws_sdk_s3::Client::from_conf(config)
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into())
                .send()
                .await
                .expect("put object");
        });
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(base, &path, out);
        } else if let Ok(rel) = path.strip_prefix(base) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// One test's world: a state dir, a work dir, a config pointing at a bucket on `s3`.
pub struct World {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub work: PathBuf,
    pub config: PathBuf,
    pub endpoint: String,
    pub bucket: String,
    pub prefix: String,
    pub secret: String,
}

impl World {
    pub fn new(s3: &S3Server, bucket: &str, prefix: &str) -> World {
        s3.bucket(bucket);
        World::with_endpoint(&s3.endpoint(), bucket, prefix)
    }

    pub fn with_endpoint(endpoint: &str, bucket: &str, prefix: &str) -> World {
        let dir = tempfile::tempdir().expect("world dir");
        let state = dir.path().join("state");
        let work = dir.path().join("work");
        fs::create_dir_all(&state).expect("state dir");
        let world = World {
            config: dir.path().join("spotkeeper.toml"),
            dir,
            state,
            work,
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            secret: SECRET_KEY.to_string(),
        };
        world.write_config("");
        world
    }

    /// Writes the config, with `extra` TOML appended.
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "[state]\ndir = {:?}\nwork_dir = {:?}\n\n[s3]\nbucket = {:?}\nprefix = {:?}\nregion = \"us-east-1\"\nendpoint = {:?}\n{extra}",
            self.state, self.work, self.bucket, self.prefix, self.endpoint
        );
        fs::write(&self.config, text).expect("config");
    }

    /// A second machine on the same repository: own state and work dirs.
    pub fn sibling(&self) -> World {
        World::with_endpoint(&self.endpoint, &self.bucket, &self.prefix)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotkeeper"));
        cmd.arg("--config").arg(&self.config).args(args);
        for var in [
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "SPOTKEEPER_CONFIG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("SPOTKEEPER_LOG", "info");
        cmd
    }

    /// Runs the binary to completion (bounded by the binary's own retries and timeouts).
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run spotkeeper")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "spotkeeper {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and parses stdout as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {stdout}"))
    }

    /// The key of `relative` under this world's prefix.
    pub fn key(&self, relative: &str) -> String {
        if self.prefix.is_empty() {
            relative.to_string()
        } else {
            format!("{}/{relative}", self.prefix)
        }
    }
}

/// Exit code and stderr of a failed run.
pub fn failure(out: &Output) -> (i32, String) {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a tree looks like: path -> (kind, mode, mtime ns, content hash or link target).
pub type TreeShape = BTreeMap<String, (char, u32, i128, String)>;

pub fn shape(root: &Path) -> TreeShape {
    let mut out = BTreeMap::new();
    walk_shape(root, root, &mut out);
    out
}

fn walk_shape(root: &Path, dir: &Path, out: &mut TreeShape) {
    let mut entries: Vec<_> = fs::read_dir(dir).expect("read dir").flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(&path).expect("metadata");
        let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).expect("link").to_string_lossy().into_owned();
            out.insert(rel, ('l', 0, mtime, target));
        } else if meta.is_dir() {
            out.insert(rel, ('d', mode, mtime, String::new()));
            walk_shape(root, &path, out);
        } else {
            let hash = hex::encode(Sha256::digest(fs::read(&path).expect("read")));
            out.insert(rel, ('f', mode, mtime, hash));
        }
    }
}

/// Sets a file's mtime (and atime) to `secs` + `nanos`.
pub fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nanos);
    filetime::set_symlink_file_times(path, t, t).expect("set mtime");
}

pub fn write(path: &Path, body: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
    fs::write(path, body).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Waits for `condition` up to `limit`, polling; returns whether it became true.
pub fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    condition()
}

/// The repository root (for the testing/ scripts).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// True when the machine's Docker Engine answers. Under CI=true a missing engine fails the test
/// instead of skipping it.
pub fn docker_available() -> bool {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but the Docker Engine does not answer: these tests must run in CI");
    }
    if !ok {
        eprintln!("skipping: no Docker Engine");
    }
    ok
}

/// Builds the fake OpenClaw image once per test binary; returns its reference.
pub fn fake_image() -> String {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let out = Command::new(repo_root().join("testing/build-fake-image.sh"))
                .output()
                .expect("run build-fake-image.sh");
            assert!(
                out.status.success(),
                "building the fake image failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .clone()
}

/// moto serving SSM on 127.0.0.1 until dropped.
pub struct Moto {
    pub port: u16,
    child: std::process::Child,
}

impl Moto {
    pub fn start() -> Moto {
        let setup = Command::new(repo_root().join("testing/start-moto.sh"))
            .status()
            .expect("moto venv");
        assert!(setup.success(), "moto venv setup failed");
        let port = free_port();
        let child = Command::new(repo_root().join("testing/start-moto.sh"))
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto");
        let moto = Moto { port, child };
        let ready = wait_for(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(ready, "moto did not start on port {port}");
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Puts a SecureString parameter.
    pub fn put_parameter(&self, name: &str, value: &str) {
        let endpoint = self.endpoint();
        let (name, value) = (name.to_string(), value.to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let credentials = aws_sdk_ssm::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "tests");
            let config = aws_sdk_ssm::config::Builder::new()
                .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
                .region(aws_sdk_ssm::config::Region::new("us-east-1"))
                .credentials_provider(credentials)
                .endpoint_url(endpoint)
                .build();
            aws_sdk_ssm::Client::from_conf(config)
                .put_parameter()
                .name(name)
                .value(value)
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .overwrite(true)
                .send()
                .await
                .expect("put parameter");
        });
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP GET to 127.0.0.1 with a short timeout; the body on 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let ok = head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200");
    ok.then(|| body.to_string())
}
