//! Shared test harness: a real S3 server (s3s-fs) in the test process on 127.0.0.1, a config
//! file per test, the real `spotkeeper` binary, and tree comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use sha2::{Digest, Sha256};

pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "testsecret";
/// The repository password of every world (`World::password_file`).
pub const PASSWORD: &str = "correct-horse-battery-staple-2026";

/// A world under prefix `lab` (format 2, as every world). Returns the password file too (stock
/// restic reads it).
pub fn format2_world(s3: &S3Server, bucket: &str) -> (World, PathBuf) {
    let world = World::new(s3, bucket, "lab");
    let password_file = world.password_file.clone().expect("a world has a password");
    (world, password_file)
}

/// A prefix of format 1 written by the last spotkeeper that wrote format 1 (tests/fixtures/format1,
/// see its README): two snapshots, the second `latest/`. Puts its objects under `prefix` in
/// `bucket` through the S3 API, with their content types and metadata. Returns their ids, oldest
/// first.
pub fn load_format1_fixture(s3: &S3Server, bucket: &str, prefix: &str) -> [String; 2] {
    let root = repo_root().join("tests/fixtures/format1");
    let objects: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&fs::read(root.join("objects.json")).expect("objects.json")).expect("objects.json");
    s3.bucket(bucket);
    for (key, meta) in &objects {
        let body = fs::read(root.join("objects").join(key)).expect("fixture object");
        let metadata: BTreeMap<String, String> =
            serde_json::from_value(meta["metadata"].clone()).expect("fixture metadata");
        let full = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}/{key}")
        };
        s3.put_object_with(bucket, &full, &body, meta["content_type"].as_str(), &metadata);
    }
    let listed: Vec<serde_json::Value> =
        serde_json::from_slice(&fs::read(root.join("list.json")).expect("list.json")).expect("list.json");
    let ids: Vec<String> = listed
        .iter()
        .rev()
        .map(|row| row["id"].as_str().expect("id").to_string())
        .collect();
    [ids[0].clone(), ids[1].clone()]
}

/// The tree the fixture's snapshot `n` (1 or 2) restores to, as `shape` sees it.
pub fn format1_fixture_shape(n: u8) -> TreeShape {
    let path = repo_root().join(format!("tests/fixtures/format1/state-{n}.json"));
    let rows: BTreeMap<String, (String, String, String, String)> =
        serde_json::from_slice(&fs::read(path).expect("fixture shape")).expect("fixture shape");
    rows.into_iter()
        .map(|(path, (kind, mode, mtime, content))| {
            let kind = kind.chars().next().expect("kind");
            let mode = u32::from_str_radix(&mode, 8).expect("mode");
            (path, (kind, mode, mtime.parse().expect("mtime"), content))
        })
        .collect()
}

/// The snapshot `list` marks latest (the head), if any.
pub fn head_id(world: &World) -> Option<String> {
    let listed = world.json(&["list", "--json"]);
    listed
        .as_array()
        .expect("list --json is an array")
        .iter()
        .find(|row| row["latest"] == serde_json::json!(true))
        .map(|row| row["id"].as_str().expect("id").to_string())
}

/// The head is a complete snapshot that `verify` passes; returns its id (`None`: no head yet).
pub fn assert_head_verifies(world: &World) -> Option<String> {
    let id = head_id(world)?;
    world.ok(&["verify", "--snapshot", &id]);
    Some(id)
}

/// Stock restic (Debian's; .ci/run installs it) run on this world's repository, read-only.
pub fn restic(world: &World, args: &[&str]) -> std::process::Output {
    let password_file = world.password_file.as_ref().expect("a world with a repository");
    let prefix = if world.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", world.prefix)
    };
    let repository = format!("s3:{}/{}/{prefix}repo", world.endpoint, world.bucket);
    let out = std::process::Command::new("restic")
        .args(["-r", &repository, "--no-cache", "--no-lock"])
        .args(args)
        .env("RESTIC_PASSWORD_FILE", password_file)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", &world.secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output();
    match out {
        Ok(out) => out,
        Err(e) => panic!("cannot run restic ({e}): install Debian's restic (`apt-get install restic`; .ci/run does)"),
    }
}

/// The entries (path, reason) the newest snapshot lists as skipped (`list --json`, which reads
/// them from the snapshot's encrypted description).
pub fn newest_skipped(world: &World) -> Vec<(String, String)> {
    let listed = world.json(&["list", "--json"]);
    let newest = &listed.as_array().expect("list --json is an array")[0];
    newest["skipped"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["path"].as_str().unwrap_or_default().to_string(),
                        e["reason"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An S3 client of the SDK for `endpoint` (path-style, the tests' credentials): for what a test
/// does to a bucket behind spotkeeper's back.
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let credentials = aws_sdk_s3::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "tests");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

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
        self.put_object_with(bucket, key, body, None, &BTreeMap::new());
    }

    /// Puts an object with a content type and user metadata.
    pub fn put_object_with(
        &self,
        bucket: &str,
        key: &str,
        body: &[u8],
        content_type: Option<&str>,
        metadata: &BTreeMap<String, String>,
    ) {
        let endpoint = self.endpoint();
        let (bucket, key, body) = (bucket.to_string(), key.to_string(), body.to_vec());
        let (content_type, metadata) = (content_type.map(str::to_string), metadata.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            s3_client(&endpoint)
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into())
                .set_content_type(content_type)
                .set_metadata(Some(metadata.into_iter().collect()))
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
    /// Extra keys for the [s3] section.
    pub s3_extra: String,
    /// `[[state.paths]]` entries written instead of `[state] dir` (see `use_three_paths`).
    pub state_paths: Option<String>,
    /// The repository password's file (0600, outside the state), named by `[repository]
    /// password_file` in every config `write_config` writes; `None` after `without_repository`.
    pub password_file: Option<PathBuf>,
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
        let password_file = dir.path().join("repository-password");
        write(&password_file, format!("{PASSWORD}\n").as_bytes(), 0o600);
        let world = World {
            password_file: Some(password_file),
            config: dir.path().join("spotkeeper.toml"),
            dir,
            state,
            work,
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            secret: SECRET_KEY.to_string(),
            s3_extra: String::new(),
            state_paths: None,
        };
        world.write_config("");
        world
    }

    /// Writes the config, with `extra` TOML appended. Spot and metrics are off unless `extra`
    /// configures them: tests never reach for the real IMDS address or CloudWatch. The control
    /// socket is the world's own unless `extra` has a `[daemon]` section: the default one is
    /// shared by every daemon (and every test) on the machine.
    pub fn write_config(&self, extra: &str) {
        let mut extra = extra.to_string();
        let s3_extra = &self.s3_extra;
        if !extra.contains("[spot]") {
            extra.push_str("\n[spot]\nenabled = false\n");
        }
        if !extra.contains("[metrics]") {
            extra.push_str("\n[metrics]\nenabled = false\n");
        }
        if !extra.contains("[daemon]") {
            extra.push_str(&format!("\n[daemon]\nsocket = {:?}\n", self.socket()));
        }
        if let Some(password_file) = &self.password_file
            && !extra.contains("[repository]")
        {
            extra.push_str(&format!("\n[repository]\npassword_file = {password_file:?}\n"));
        }
        let state = match &self.state_paths {
            Some(paths) => format!("[state]\nwork_dir = {:?}\n\n{paths}", self.work),
            None => format!("[state]\ndir = {:?}\nwork_dir = {:?}\n", self.state, self.work),
        };
        let text = format!(
            "{state}\n[s3]\nbucket = {:?}\nprefix = {:?}\nregion = \"us-east-1\"\nendpoint = {:?}\n{s3_extra}{extra}",
            self.bucket, self.prefix, self.endpoint
        );
        fs::write(&self.config, text).expect("config");
    }

    /// From now on the config has no `[repository]`: it can only read format 1 (and `snapshot`
    /// and `run` refuse). Rewrites the config without extras.
    pub fn without_repository(&mut self) {
        self.password_file = None;
        self.write_config("");
    }

    /// This world's control socket (what `write_config` and `configure_daemon` name).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/spotkeeper/control.sock")
    }

    /// A second machine on the same repository: own state and work dirs (and the same state
    /// paths layout, under its own directory).
    pub fn sibling(&self) -> World {
        let mut sibling = World::with_endpoint(&self.endpoint, &self.bucket, &self.prefix);
        if self.state_paths.is_some() {
            sibling.use_three_paths();
        }
        sibling
    }

    /// OpenClaw's layout: `config` (the state dir, mounted at /home/node/.openclaw),
    /// `workspace` (mounted inside it) and `auth` (/home/node/.config/openclaw), each its own
    /// host directory. The next `write_config` writes them. Returns the three directories.
    pub fn use_three_paths(&mut self) -> [PathBuf; 3] {
        let dirs = self.three_dirs();
        let mut text = String::new();
        for (name, dir, mount) in [
            ("config", &dirs[0], "/home/node/.openclaw"),
            ("workspace", &dirs[1], "/home/node/.openclaw/workspace"),
            ("auth", &dirs[2], "/home/node/.config/openclaw"),
        ] {
            text.push_str(&format!(
                "[[state.paths]]\nname = {name:?}\ndir = {dir:?}\nmount = {mount:?}\n\n"
            ));
        }
        self.state_paths = Some(text);
        dirs
    }

    /// The three directories of `use_three_paths`: the state dir, `workspace`, `auth`.
    pub fn three_dirs(&self) -> [PathBuf; 3] {
        [
            self.state.clone(),
            self.dir.path().join("workspace"),
            self.dir.path().join("auth"),
        ]
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
        // A live app's temp files can vanish between the listing and the look.
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).expect("link").to_string_lossy().into_owned();
            out.insert(rel, ('l', 0, mtime, target));
        } else if meta.is_dir() {
            out.insert(rel, ('d', mode, mtime, String::new()));
            walk_shape(root, &path, out);
        } else {
            let Ok(body) = fs::read(&path) else { continue };
            let hash = hex::encode(Sha256::digest(body));
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

/// One HTTP/1.0 request to 127.0.0.1:`port`: the status code and the body, `None` when nothing
/// answered within 3 s.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(stream, "{head}\r\n{body}").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// LocalStack serving CloudWatch on 127.0.0.1 until dropped (it speaks the current SDK's
/// protocol; moto does not).
pub struct LocalStack {
    pub port: u16,
    child: std::process::Child,
}

impl LocalStack {
    pub fn start() -> LocalStack {
        let setup = Command::new(repo_root().join("testing/start-localstack.sh"))
            .status()
            .expect("localstack venv");
        assert!(setup.success(), "LocalStack venv setup failed");
        let port = free_port();
        let child = Command::new(repo_root().join("testing/start-localstack.sh"))
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start localstack");
        let ls = LocalStack { port, child };
        let ready = wait_for(Duration::from_secs(60), || {
            http_get(port, "/_localstack/health").is_some_and(|b| b.contains("cloudwatch"))
        });
        assert!(ready, "LocalStack did not start on port {port}");
        ls
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Names of the metrics in `namespace` that have a datapoint with dimension Stack=`stack`,
    /// with the sum of their values over the last hour.
    pub fn metric_sums(&self, namespace: &str, stack: &str, names: &[&str]) -> BTreeMap<String, f64> {
        let endpoint = self.endpoint();
        let (namespace, stack) = (namespace.to_string(), stack.to_string());
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
            let credentials = aws_sdk_cloudwatch::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "tests");
            let config = aws_sdk_cloudwatch::config::Builder::new()
                .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
                .region(aws_sdk_cloudwatch::config::Region::new("us-east-1"))
                .credentials_provider(credentials)
                .endpoint_url(endpoint)
                .build();
            let client = aws_sdk_cloudwatch::Client::from_conf(config);
            let listed = client
                .list_metrics()
                .namespace(&namespace)
                .send()
                .await
                .expect("list metrics");
            let mut sums = BTreeMap::new();
            for (i, name) in names.iter().enumerate() {
                let Some(metric) = listed.metrics().iter().find(|m| {
                    m.metric_name() == Some(name.as_str())
                        && m.dimensions()
                            .iter()
                            .any(|d| d.name() == Some("Stack") && d.value() == Some(stack.as_str()))
                }) else {
                    continue;
                };
                let dims: Vec<Dimension> = metric.dimensions().to_vec();
                let query = MetricDataQuery::builder()
                    .id(format!("m{i}"))
                    .metric_stat(
                        MetricStat::builder()
                            .metric(
                                Metric::builder()
                                    .namespace(&namespace)
                                    .metric_name(name)
                                    .set_dimensions(Some(dims))
                                    .build(),
                            )
                            .period(60)
                            .stat("Sum")
                            .build(),
                    )
                    .build();
                let now = std::time::SystemTime::now();
                let data = client
                    .get_metric_data()
                    .metric_data_queries(query)
                    .start_time(aws_sdk_cloudwatch::primitives::DateTime::from(
                        now - Duration::from_secs(3600),
                    ))
                    .end_time(aws_sdk_cloudwatch::primitives::DateTime::from(
                        now + Duration::from_secs(600),
                    ))
                    .send()
                    .await
                    .expect("get metric data");
                let sum: f64 = data.metric_data_results().iter().flat_map(|r| r.values().iter()).sum();
                sums.insert(name.clone(), sum);
            }
            sums
        })
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small IMDSv2 server (there is no packaged emulator): token PUT with the TTL header,
/// token-checked GETs, and Spot notices the test sets.
pub struct FakeImds {
    pub port: u16,
    pub state: std::sync::Arc<std::sync::Mutex<ImdsState>>,
}

#[derive(Default)]
pub struct ImdsState {
    pub instance_action: Option<String>,
    pub rebalance: Option<String>,
    pub tokens_issued: u32,
    pub gets: u32,
}

impl FakeImds {
    pub fn start() -> FakeImds {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind imds");
        let port = listener.local_addr().expect("addr").port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ImdsState::default()));
        let shared = std::sync::Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = std::sync::Arc::clone(&shared);
                std::thread::spawn(move || serve_imds(stream, &shared));
            }
        });
        FakeImds { port, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_instance_action(&self, action: &str, at: chrono::DateTime<chrono::Utc>) {
        self.state.lock().expect("imds state").instance_action = Some(format!(
            "{{\"action\":\"{action}\",\"time\":\"{}\"}}",
            at.format("%Y-%m-%dT%H:%M:%SZ")
        ));
    }

    pub fn set_rebalance(&self, at: chrono::DateTime<chrono::Utc>) {
        self.state.lock().expect("imds state").rebalance =
            Some(format!("{{\"noticeTime\":\"{}\"}}", at.format("%Y-%m-%dT%H:%M:%SZ")));
    }
}

const IMDS_TOKEN: &str = "fake-imds-token";

fn serve_imds(stream: std::net::TcpStream, state: &std::sync::Mutex<ImdsState>) {
    use std::io::{BufRead, BufReader, Write};
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            headers.push(line.to_ascii_lowercase());
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let has_token = headers
            .iter()
            .any(|h| h.starts_with("x-aws-ec2-metadata-token:") && h.contains(IMDS_TOKEN));
        let (status, extra, body) = match (method, path) {
            ("PUT", "/latest/api/token") => {
                state.lock().expect("state").tokens_issued += 1;
                (
                    "200 OK",
                    "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n",
                    IMDS_TOKEN.to_string(),
                )
            }
            (_, _) if !has_token => ("401 Unauthorized", "", String::new()),
            ("GET", path) => {
                let mut s = state.lock().expect("state");
                s.gets += 1;
                match path {
                    "/latest/meta-data/instance-id" => ("200 OK", "", "i-0123456789abcdef0".to_string()),
                    "/latest/meta-data/spot/instance-action" => match &s.instance_action {
                        Some(body) => ("200 OK", "", body.clone()),
                        None => ("404 Not Found", "", String::new()),
                    },
                    "/latest/meta-data/events/recommendations/rebalance" => match &s.rebalance {
                        Some(body) => ("200 OK", "", body.clone()),
                        None => ("404 Not Found", "", String::new()),
                    },
                    _ => ("404 Not Found", "", String::new()),
                }
            }
            _ => ("405 Method Not Allowed", "", String::new()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n{extra}\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A field of /proc/PID/status in KiB (`VmHWM`, `RssAnon`), if the process is still there.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A running daemon; stopped (SIGTERM) or killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Daemon {
    pub fn start(world: &World) -> Daemon {
        Daemon::start_with(world, &[])
    }

    /// `start` with more environment variables (the unit's `Environment=`, say).
    pub fn start_with(world: &World, env: &[(String, String)]) -> Daemon {
        let log = world.dir.path().join(format!("daemon-{}.log", free_port()));
        let file = fs::File::create(&log).expect("log file");
        let child = world
            .command(&["run"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn daemon");
        Daemon {
            child: Some(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|child| child.id())
    }

    /// `proc_status_kib` of the daemon, if it still runs.
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        proc_status_kib(self.pid()?, field)
    }

    /// SIGKILL, as a power cut of the daemon alone; waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (bounded) for the daemon to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_for(limit, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let mut status = None;
        let done = wait_for(Duration::from_secs(120), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if !done {
            let _ = child.kill();
            panic!("daemon did not stop within 120 s; log:\n{}", self.log());
        }
        status.expect("exited")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn status(world: &World) -> Option<serde_json::Value> {
    let out = world.run(&["status", "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn remove_container(name: &str) {
    let _ = Command::new("docker").args(["rm", "-f", name]).output();
}

pub struct Setup {
    pub s3: S3Server,
    pub moto: Moto,
    pub world: World,
    pub container: String,
    pub port: u16,
    pub ssm_path: String,
}

impl Setup {
    /// Rewrites the config through `f`.
    pub fn edit_config(&self, f: impl FnOnce(&str) -> String) {
        let config = fs::read_to_string(&self.world.config).expect("config");
        fs::write(&self.world.config, f(&config)).expect("config");
    }

    /// Adds `line` (KEY = "value") to `[container.environment]`.
    pub fn container_env(&self, line: &str) {
        self.edit_config(|config| config.replace("DRAIN_MS = \"300\"\n", &format!("DRAIN_MS = \"300\"\n{line}\n")));
    }
}

impl Drop for Setup {
    /// A failed test must not leave its container behind.
    fn drop(&mut self) {
        remove_container(&self.container);
    }
}

/// A world for the daemon: S3, SSM, a fake OpenClaw container; `extra_container` goes in
/// [container], `extra` at the end of the config.
pub fn setup(name: &str, extra_container: &str, extra: &str) -> Setup {
    let s3 = S3Server::start();
    let moto = Moto::start();
    let world = World::new(&s3, "daemon", name);
    let (container, port) = configure_daemon(&world, &moto, name, extra_container, extra);
    Setup {
        s3,
        moto,
        world,
        container,
        port,
        ssm_path: format!("/openclaw/{name}/"),
    }
}

/// Writes a daemon config into `world` (SSM path `/openclaw/NAME/`); returns the container name
/// and the published port.
pub fn configure_daemon(world: &World, moto: &Moto, name: &str, extra_container: &str, extra: &str) -> (String, u16) {
    let container = format!("spotkeeper-test-{name}-{}", std::process::id());
    remove_container(&container);
    let port = free_port();
    let ssm_path = format!("/openclaw/{name}/");
    let config = format!(
        "[snapshot]\ninterval = \"3s\"\n\n\
         [secrets]\nssm_path = {ssm_path:?}\nenv_file = {env:?}\nrefresh = \"2s\"\nendpoint = {moto:?}\n\n\
         [container]\nname = {container:?}\nimage = {image:?}\nports = [\"127.0.0.1:{port}:18789\"]\n\
         health_url = \"http://127.0.0.1:{port}/healthz\"\nstartup_url = \"http://127.0.0.1:{port}/startupz\"\n\
         health_interval = \"1s\"\nstop_timeout = \"20s\"\n\
         start_timeout = \"60s\"\nlog_driver = \"json-file\"\n{extra_container}\n\
         [container.environment]\nWRITE_INTERVAL_MS = \"20\"\nDRAIN_MS = \"300\"\n\n\
         [daemon]\nsocket = {socket:?}\n{extra}",
        env = world.dir.path().join("run/openclaw/.env"),
        moto = moto.endpoint(),
        image = fake_image(),
        socket = world.socket(),
    );
    world.write_config(&config);
    (container, port)
}

/// What the S3 proxy does with new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Forward,
    /// Accept, then close at once.
    Reset,
    /// Answer every request with 500.
    Error500,
    /// Accept and never answer.
    Stall,
}

/// A TCP proxy in front of S3 whose behaviour the test switches (fault drills).
pub struct FaultProxy {
    pub port: u16,
    mode: std::sync::Arc<std::sync::Mutex<ProxyMode>>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FaultProxy {
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let mode = std::sync::Arc::new(std::sync::Mutex::new(ProxyMode::Forward));
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (m, g) = (std::sync::Arc::clone(&mode), std::sync::Arc::clone(&generation));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let current = *m.lock().expect("mode");
                let born = g.load(std::sync::atomic::Ordering::SeqCst);
                let g = std::sync::Arc::clone(&g);
                std::thread::spawn(move || proxy_connection(client, upstream, current, born, &g));
            }
        });
        FaultProxy { port, mode, generation }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Switches the mode; open connections are cut so the client reconnects into the new mode.
    pub fn set(&self, mode: ProxyMode) {
        *self.mode.lock().expect("mode") = mode;
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn proxy_connection(
    client: std::net::TcpStream,
    upstream: u16,
    mode: ProxyMode,
    born: u64,
    generation: &std::sync::atomic::AtomicU64,
) {
    use std::io::{Read, Write};
    let alive = || generation.load(std::sync::atomic::Ordering::SeqCst) == born;
    match mode {
        ProxyMode::Reset => drop(client),
        ProxyMode::Stall => {
            // Hold the connection (bounded) until the mode changes.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while alive() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        ProxyMode::Error500 => {
            let mut client = client;
            let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 65536];
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while alive() && std::time::Instant::now() < deadline {
                match client.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") => {
                        let body = "<Error><Code>InternalError</Code><Message>drill</Message></Error>";
                        let response = format!(
                            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = client.write_all(response.as_bytes());
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => {}
                }
            }
        }
        ProxyMode::Forward => {
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                })
            };
            let up = pipe(client.try_clone().expect("clone"), server.try_clone().expect("clone"));
            let down = pipe(server.try_clone().expect("clone"), client.try_clone().expect("clone"));
            // Cut the connection when the mode changes.
            while alive() && !up.is_finished() && !down.is_finished() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !alive() {
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = server.shutdown(std::net::Shutdown::Both);
            }
            let _ = up.join();
            let _ = down.join();
        }
    }
}

/// One injected fault: answer `status` to the next `times` requests whose method is `method`
/// and whose path contains `path`.
struct DockerFault {
    method: String,
    path: String,
    times: u32,
    status: u16,
}

/// A Unix-socket proxy in front of the real Docker Engine. It reads each request's head, answers
/// the ones a test chose with an error (a real engine with one call failing, not a fake of its
/// API), and passes everything else through, one request per connection (it asks the engine to
/// close after each answer, so every request is seen). `cut` ends every open connection (the
/// daemon's events stream among them) as an engine restart would.
pub struct DockerProxy {
    pub path: PathBuf,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    faults: std::sync::Arc<std::sync::Mutex<Vec<DockerFault>>>,
    /// Request lines answered with an injected error.
    served: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Every request line seen.
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl DockerProxy {
    pub fn start(dir: &Path) -> DockerProxy {
        use std::os::unix::net::UnixListener;
        let path = dir.join("docker-proxy.sock");
        let listener = UnixListener::bind(&path).expect("bind docker proxy");
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let faults = std::sync::Arc::new(std::sync::Mutex::new(Vec::<DockerFault>::new()));
        let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (g, f, s, a) = (
            std::sync::Arc::clone(&generation),
            std::sync::Arc::clone(&faults),
            std::sync::Arc::clone(&served),
            std::sync::Arc::clone(&seen),
        );
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let born = g.load(std::sync::atomic::Ordering::SeqCst);
                let (g, f, s, a) = (
                    std::sync::Arc::clone(&g),
                    std::sync::Arc::clone(&f),
                    std::sync::Arc::clone(&s),
                    std::sync::Arc::clone(&a),
                );
                std::thread::spawn(move || docker_connection(client, born, &g, &f, &s, &a));
            }
        });
        DockerProxy {
            path,
            generation,
            faults,
            served,
            seen,
        }
    }

    /// `docker_host` for the daemon's config.
    pub fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Ends every connection open now.
    pub fn cut(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answers 500 to the next `times` requests `METHOD` whose path contains `path`.
    pub fn fail(&self, method: &str, path: &str, times: u32) {
        self.faults.lock().expect("faults").push(DockerFault {
            method: method.to_string(),
            path: path.to_string(),
            times,
            status: 500,
        });
    }

    /// Removes every fault not yet used up.
    pub fn heal(&self) {
        self.faults.lock().expect("faults").clear();
    }

    /// How many injected errors were served for requests matching `method` and `path`.
    pub fn failed(&self, method: &str, path: &str) -> usize {
        count_requests(&self.served, method, path)
    }

    /// Every request line the proxy saw, in order (for failure messages).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("request log").clone()
    }

    /// How many requests matching `method` and `path` the proxy saw, failed or passed on.
    pub fn requests(&self, method: &str, path: &str) -> usize {
        count_requests(&self.seen, method, path)
    }
}

fn count_requests(lines: &std::sync::Mutex<Vec<String>>, method: &str, path: &str) -> usize {
    let wanted = format!("{method} ");
    lines
        .lock()
        .expect("request log")
        .iter()
        .filter(|line| line.starts_with(&wanted) && line.contains(path))
        .count()
}

fn docker_connection(
    mut client: std::os::unix::net::UnixStream,
    born: u64,
    generation: &std::sync::atomic::AtomicU64,
    faults: &std::sync::Mutex<Vec<DockerFault>>,
    served: &std::sync::Mutex<Vec<String>>,
    seen: &std::sync::Mutex<Vec<String>>,
) {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    // The request head, byte by byte up to the blank line (heads are small).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) if head.len() < 64 * 1024 => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let request_line = text.lines().next().unwrap_or_default().to_string();
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    seen.lock().expect("seen").push(request_line.clone());
    let injected = {
        let mut faults = faults.lock().expect("faults");
        faults
            .iter_mut()
            .find(|f| f.times > 0 && f.method == method && path.contains(&f.path))
            .map(|f| {
                f.times -= 1;
                f.status
            })
    };
    if let Some(status) = injected {
        served.lock().expect("served").push(request_line.clone());
        let body = "{\"message\":\"fault injected by the test's Docker proxy\"}";
        let response = format!(
            "HTTP/1.1 {status} Injected\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(response.as_bytes());
        return;
    }
    let Ok(engine) = UnixStream::connect("/var/run/docker.sock") else {
        return;
    };
    // One request per connection: the engine closes after answering, so the client opens a new
    // connection (and this proxy sees) every request.
    let mut forwarded = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    if (&engine).write_all(forwarded.as_bytes()).is_err() {
        return;
    }
    let pipe = |mut from: UnixStream, mut to: UnixStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
    };
    let up = pipe(client.try_clone().expect("clone"), engine.try_clone().expect("clone"));
    let down = pipe(engine.try_clone().expect("clone"), client.try_clone().expect("clone"));
    let alive = || generation.load(std::sync::atomic::Ordering::SeqCst) == born;
    while alive() && !down.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = engine.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
    let _ = down.join();
}

/// Sends SIGKILL to a process.
pub fn kill9(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

/// Counts lines of `log` containing `needle`.
pub fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Swaps two names with `renameat2(RENAME_EXCHANGE)` in a loop on a thread of its own, as a
/// hostile app would, until stopped (or `MAX_SWAPS`). Needs no privilege beyond write access.
pub struct Swapper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Swapper {
    /// A bound on any swap loop, whatever the test does.
    pub const MAX_SWAPS: u64 = 20_000_000;

    pub fn start(a: &Path, b: &Path) -> Swapper {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, b, flag) = (a.to_path_buf(), b.to_path_buf(), std::sync::Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut swaps = 0;
            while !flag.load(Ordering::Relaxed) && swaps < Swapper::MAX_SWAPS {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &a,
                    rustix::fs::CWD,
                    &b,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .expect("renameat2(RENAME_EXCHANGE)");
                swaps += 1;
                if swaps % 64 == 0 {
                    std::thread::yield_now();
                }
            }
            swaps
        });
        Swapper {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the loop; returns how many swaps it made.
    pub fn stop(mut self) -> u64 {
        self.halt()
    }

    fn halt(&mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().expect("swapper thread"))
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Runs `cmd` to completion, killing it (and failing the test) if it is still running after
/// `limit`: a hang is a failure, not a stuck suite.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let finished = wait_for(limit, || matches!(child.try_wait(), Ok(Some(_))));
    if !finished {
        let _ = child.kill();
        let out = child.wait_with_output().expect("output");
        panic!(
            "still running after {limit:?} (killed)\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().expect("output")
}

/// True when `marker` occurs in any object of `bucket`, archives decompressed first.
pub fn bucket_contains(s3: &S3Server, bucket: &str, marker: &[u8]) -> bool {
    s3.keys(bucket).iter().any(|key| {
        let raw = s3.object(bucket, key);
        let body = if key.ends_with(".zst") {
            zstd::decode_all(raw.as_slice()).expect("archive decompresses")
        } else {
            raw
        };
        body.windows(marker.len()).any(|w| w == marker)
    })
}

/// True when `marker` occurs in a regular file under `root` (links are not followed).
pub fn tree_contains(root: &Path, marker: &[u8]) -> bool {
    let Ok(entries) = fs::read_dir(root) else { return false };
    entries.flatten().any(|entry| {
        let path = entry.path();
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => tree_contains(&path, marker),
            Ok(meta) if meta.is_file() => fs::read(&path).is_ok_and(|b| b.windows(marker.len()).any(|w| w == marker)),
            _ => false,
        }
    })
}

/// `cmd` run through `program prefix... -- spotkeeper args...` with the same environment: under
/// `setpriv` as another user, or under `sh -c 'umask 022; exec "$0" "$@"'`.
pub fn wrapped(cmd: &Command, program: &str, prefix: &[&str]) -> Command {
    let mut outer = Command::new(program);
    outer.args(prefix).arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => outer.env(key, value),
            None => outer.env_remove(key),
        };
    }
    outer
}

/// `cmd` as the unprivileged user 65534 (needs root and setpriv).
pub fn as_nobody(cmd: &Command) -> Command {
    let mut outer = wrapped(
        cmd,
        "/usr/bin/setpriv",
        &["--reuid=65534", "--regid=65534", "--clear-groups", "--"],
    );
    outer.env("HOME", "/nonexistent");
    outer
}

/// `cmd` under umask 022 (a person's shell), whatever the test's own umask.
pub fn under_umask_022(cmd: &Command) -> Command {
    wrapped(cmd, "/bin/sh", &["-c", "umask 022; exec \"$0\" \"$@\""])
}
