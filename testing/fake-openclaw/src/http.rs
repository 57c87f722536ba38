//! The HTTP side: OpenClaw's probe routes as `handleGatewayProbeRequest` answers them,
//! the pre-March Control UI catch-all (FAKE_PRE_PROBES), and the fake's own test routes.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::env::read_dotenv;
use crate::restart::RestartMode;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// What an OpenClaw image from before 2026-03-02 answers on any GET path.
const CONTROL_UI_HTML: &str =
    "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>OpenClaw Control</title></head>\
<body><div id=\"app\"></div></body></html>\n";

/// State shared between the write loop and the HTTP threads.
pub struct Shared {
    pub writes: AtomicU64,
    pub last_seq: AtomicU64,
    /// SIGTERM/SIGINT arrived: the gateway drains.
    pub signalled: Arc<AtomicBool>,
    /// A config change asked for an exit (supervised or detached restart).
    pub restart_requested: AtomicBool,
    pub failed_channels: Mutex<Vec<String>>,
    pub started: Instant,
}

impl Shared {
    pub fn phase(&self) -> Phase {
        if self.signalled.load(Ordering::SeqCst) {
            Phase::Draining
        } else if self.writes.load(Ordering::SeqCst) > 0 {
            // writes begin only once the lease is held
            Phase::Started
        } else {
            Phase::Starting
        }
    }

    fn failing_channels(&self) -> Vec<String> {
        self.failed_channels.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Fixed at start.
pub struct HttpConfig {
    pub env_file: PathBuf,
    /// OPENCLAW_GATEWAY_TOKEN and OPENCLAW_GATEWAY_PASSWORD: a matching Bearer gets probe details.
    pub secrets: Vec<String>,
    pub pre_probes: bool,
    pub restart: RestartMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the lease is held and the first write cycle is durable.
    Starting,
    Started,
    Draining,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Live,
    Ready,
    Startup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Probe(Probe),
    Stats,
    EnvKeys,
    Channels,
    ConfigChange,
    ControlUi,
    NotFound,
    MethodNotAllowed(&'static str),
}

fn route(method: &str, path: &str, pre_probes: bool) -> Route {
    let read = matches!(method, "GET" | "HEAD");
    let post = method == "POST";
    let probe = match path {
        "/health" | "/healthz" => Some(Probe::Live),
        "/ready" | "/readyz" => Some(Probe::Ready),
        "/startup" | "/startupz" => Some(Probe::Startup),
        _ => None,
    };
    match path {
        "/stats" if read => Route::Stats,
        "/env-keys" if read => Route::EnvKeys,
        "/stats" | "/env-keys" => Route::MethodNotAllowed("GET, HEAD"),
        "/fake/channels" if post => Route::Channels,
        "/fake/config-change" if post => Route::ConfigChange,
        "/fake/channels" | "/fake/config-change" => Route::MethodNotAllowed("POST"),
        _ if pre_probes && read => Route::ControlUi,
        _ if pre_probes => Route::MethodNotAllowed("GET, HEAD"),
        _ => match probe {
            Some(probe) if read => Route::Probe(probe),
            Some(_) => Route::MethodNotAllowed("GET, HEAD"),
            None if read => Route::NotFound,
            None => Route::MethodNotAllowed("GET, HEAD"),
        },
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub allow: Option<&'static str>,
    pub no_store: bool,
}

impl Reply {
    fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            allow: None,
            no_store: false,
        }
    }

    fn json(status: u16, body: &impl Serialize) -> Reply {
        let body = serde_json::to_string(body).expect("probe bodies are plain structs");
        Reply::new(status, "application/json", body)
    }
}

#[derive(Serialize)]
struct LiveBody {
    ok: bool,
    status: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StartupBody {
    ok: bool,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uptime_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending_reason: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReadyBody {
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    failing: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uptime_ms: Option<u64>,
}

/// A probe's answer. `details`: the caller sent a Bearer matching the gateway's token or password.
pub fn probe_reply(probe: Probe, phase: Phase, failed_channels: &[String], details: bool, uptime_ms: u64) -> Reply {
    let uptime_ms = details.then_some(uptime_ms);
    let mut reply = match probe {
        // public liveness stays 200 while draining
        Probe::Live => Reply::json(
            200,
            &LiveBody {
                ok: true,
                status: "live",
            },
        ),
        Probe::Startup => {
            let (ok, status) = match phase {
                Phase::Starting => (false, "starting"),
                Phase::Started => (true, "started"),
                Phase::Draining => (false, "draining"),
            };
            let body = StartupBody {
                ok,
                status,
                uptime_ms,
                pending_reason: (details && phase == Phase::Starting).then_some("startup-sidecars"),
            };
            Reply::json(if ok { 200 } else { 503 }, &body)
        }
        Probe::Ready => {
            let failing: Vec<String> = match phase {
                Phase::Starting => vec!["startup-sidecars".to_string()],
                Phase::Draining => vec!["gateway-draining".to_string()],
                Phase::Started => failed_channels.to_vec(),
            };
            let ready = failing.is_empty();
            let body = ReadyBody {
                ready,
                failing: details.then_some(failing),
                uptime_ms,
            };
            Reply::json(if ready { 200 } else { 503 }, &body)
        }
    };
    reply.no_store = true;
    reply
}

/// A comma list of channel names, trimmed, empty items and repeats dropped.
pub fn parse_channels(list: &str) -> Vec<String> {
    let mut channels: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !channels.iter().any(|c| c == name) {
            channels.push(name.to_string());
        }
    }
    channels
}

/// True when an `Authorization` header value is `Bearer <one of secrets>`.
fn authorized(header: Option<&str>, secrets: &[String]) -> bool {
    let Some(value) = header else { return false };
    let mut parts = value.trim().splitn(2, ' ');
    let scheme = parts.next().unwrap_or("");
    let credential = parts.next().unwrap_or("").trim();
    scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty() && secrets.iter().any(|s| s == credential)
}

pub fn serve(listener: TcpListener, shared: Arc<Shared>, cfg: Arc<HttpConfig>) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let shared = Arc::clone(&shared);
        let cfg = Arc::clone(&cfg);
        thread::spawn(move || {
            let _ = handle(stream, &shared, &cfg);
        });
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(stream: &mut TcpStream) -> io::Result<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
            break i + 2;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 || buf.len() > MAX_HEAD {
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut request = Request {
        method,
        path,
        headers,
        body: buf[head_end..].to_vec(),
    };
    let length = request
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    while request.body.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        request.body.extend_from_slice(&chunk[..n]);
    }
    request.body.truncate(length);
    Ok(request)
}

fn handle(mut stream: TcpStream, shared: &Shared, cfg: &HttpConfig) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let _ = stream.set_nodelay(true);
    let request = read_request(&mut stream)?;
    let route = route(&request.method, &request.path, cfg.pre_probes);
    let reply = match route {
        Route::Probe(probe) => probe_reply(
            probe,
            shared.phase(),
            &shared.failing_channels(),
            authorized(request.header("authorization"), &cfg.secrets),
            shared.started.elapsed().as_millis() as u64,
        ),
        Route::Stats => Reply::new(
            200,
            "application/json",
            format!(
                "{{\"writes\": {}, \"last_seq\": {}}}",
                shared.writes.load(Ordering::SeqCst),
                shared.last_seq.load(Ordering::SeqCst)
            ),
        ),
        Route::EnvKeys => env_keys_reply(cfg),
        Route::Channels => {
            let channels = parse_channels(&String::from_utf8_lossy(&request.body));
            eprintln!("fake-openclaw: failed channels now {channels:?}");
            if let Ok(mut failed) = shared.failed_channels.lock() {
                *failed = channels.clone();
            }
            Reply::json(200, &serde_json::json!({ "failing": channels }))
        }
        Route::ConfigChange => Reply::json(202, &serde_json::json!({ "ok": true, "restart": cfg.restart.name() })),
        Route::ControlUi => Reply::new(200, "text/html; charset=utf-8", CONTROL_UI_HTML),
        Route::NotFound => Reply::new(404, "text/plain", "not found"),
        Route::MethodNotAllowed(allow) => Reply {
            allow: Some(allow),
            ..Reply::new(405, "text/plain", "method not allowed")
        },
    };
    write_reply(&mut stream, &reply, request.method == "HEAD")?;
    drop(stream);
    if route == Route::ConfigChange {
        config_change(shared, &cfg.restart);
    }
    Ok(())
}

/// After the 202: the in-process path happens here; the others are carried out by the
/// write loop, which stops writing, releases the lease and exits 0.
fn config_change(shared: &Shared, mode: &RestartMode) {
    match mode {
        RestartMode::InProcess => {
            eprintln!("restart: in-process");
            crate::say(mode.stdout_line());
        }
        RestartMode::Supervised(hint) => {
            eprintln!("restart: full process restart (supervisor restart, hint {hint})");
            shared.restart_requested.store(true, Ordering::SeqCst);
        }
        RestartMode::Detached => {
            eprintln!("restart: no supervisor hint; spawning a detached copy and exiting");
            shared.restart_requested.store(true, Ordering::SeqCst);
        }
    }
}

fn write_reply(stream: &mut TcpStream, reply: &Reply, head_only: bool) -> io::Result<()> {
    let mut resp = format!(
        "HTTP/1.0 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reason_phrase(reply.status),
        reply.content_type,
        reply.body.len()
    );
    if let Some(allow) = reply.allow {
        resp.push_str(&format!("Allow: {allow}\r\n"));
    }
    if reply.no_store {
        resp.push_str("Cache-Control: no-store\r\n");
    }
    resp.push_str("\r\n");
    if !head_only {
        resp.push_str(&reply.body);
    }
    stream.write_all(resp.as_bytes())?;
    stream.flush()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn env_keys_reply(cfg: &HttpConfig) -> Reply {
    match read_dotenv(&cfg.env_file) {
        Ok(Some(pairs)) => Reply::new(200, "application/json", env_keys_json(&pairs)),
        Ok(None) => Reply::new(404, "application/json", "{\"error\": \"no env file\"}"),
        Err(_) => Reply::new(500, "application/json", "{\"error\": \"cannot read env file\"}"),
    }
}

/// Sorted, de-duplicated KEY names as a JSON array; values never reach the answer.
fn env_keys_json(pairs: &[(String, String)]) -> String {
    let mut keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort();
    keys.dedup();
    let items: Vec<String> = keys
        .iter()
        .map(|k| serde_json::to_string(k).expect("a string serializes"))
        .collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: &Reply) -> (u16, &str) {
        (r.status, r.body.as_str())
    }

    /// (probe, phase, failed channels, details, status, body)
    type ProbeCase<'a> = (Probe, Phase, &'a [String], bool, u16, &'a str);

    #[test]
    fn probe_answers() {
        use Phase::*;
        use Probe::*;
        let none: &[String] = &[];
        let telegram = &["telegram".to_string()];
        let two = &["telegram".to_string(), "discord".to_string()];
        let cases: &[ProbeCase] = &[
            (Live, Starting, none, false, 200, r#"{"ok":true,"status":"live"}"#),
            (Live, Started, telegram, false, 200, r#"{"ok":true,"status":"live"}"#),
            (Live, Draining, none, true, 200, r#"{"ok":true,"status":"live"}"#),
            (
                Startup,
                Starting,
                none,
                false,
                503,
                r#"{"ok":false,"status":"starting"}"#,
            ),
            (
                Startup,
                Starting,
                none,
                true,
                503,
                r#"{"ok":false,"status":"starting","uptimeMs":5,"pendingReason":"startup-sidecars"}"#,
            ),
            (Startup, Started, none, false, 200, r#"{"ok":true,"status":"started"}"#),
            // a failed channel does not touch startup
            (
                Startup,
                Started,
                telegram,
                false,
                200,
                r#"{"ok":true,"status":"started"}"#,
            ),
            (
                Startup,
                Started,
                none,
                true,
                200,
                r#"{"ok":true,"status":"started","uptimeMs":5}"#,
            ),
            (
                Startup,
                Draining,
                none,
                false,
                503,
                r#"{"ok":false,"status":"draining"}"#,
            ),
            (Ready, Starting, none, false, 503, r#"{"ready":false}"#),
            (
                Ready,
                Starting,
                none,
                true,
                503,
                r#"{"ready":false,"failing":["startup-sidecars"],"uptimeMs":5}"#,
            ),
            (Ready, Started, none, false, 200, r#"{"ready":true}"#),
            (
                Ready,
                Started,
                none,
                true,
                200,
                r#"{"ready":true,"failing":[],"uptimeMs":5}"#,
            ),
            (Ready, Started, telegram, false, 503, r#"{"ready":false}"#),
            (
                Ready,
                Started,
                two,
                true,
                503,
                r#"{"ready":false,"failing":["telegram","discord"],"uptimeMs":5}"#,
            ),
            (Ready, Draining, telegram, false, 503, r#"{"ready":false}"#),
            (
                Ready,
                Draining,
                telegram,
                true,
                503,
                r#"{"ready":false,"failing":["gateway-draining"],"uptimeMs":5}"#,
            ),
        ];
        for (probe, phase, failed, details, status, json) in cases {
            let reply = probe_reply(*probe, *phase, failed, *details, 5);
            assert_eq!(
                body(&reply),
                (*status, *json),
                "{probe:?} {phase:?} {failed:?} details={details}"
            );
            assert_eq!(reply.content_type, "application/json");
            assert!(reply.no_store);
        }
    }

    #[test]
    fn routes() {
        use Route::*;
        let cases: &[(&str, &str, bool, Route)] = &[
            ("GET", "/healthz", false, Probe(super::Probe::Live)),
            ("HEAD", "/health", false, Probe(super::Probe::Live)),
            ("GET", "/readyz", false, Probe(super::Probe::Ready)),
            ("GET", "/ready", false, Probe(super::Probe::Ready)),
            ("GET", "/startupz", false, Probe(super::Probe::Startup)),
            ("HEAD", "/startup", false, Probe(super::Probe::Startup)),
            ("POST", "/healthz", false, MethodNotAllowed("GET, HEAD")),
            ("DELETE", "/readyz", false, MethodNotAllowed("GET, HEAD")),
            ("GET", "/stats", false, Stats),
            ("GET", "/env-keys", false, EnvKeys),
            ("POST", "/stats", false, MethodNotAllowed("GET, HEAD")),
            ("POST", "/fake/channels", false, Channels),
            ("POST", "/fake/config-change", false, ConfigChange),
            ("GET", "/fake/config-change", false, MethodNotAllowed("POST")),
            ("GET", "/", false, NotFound),
            ("GET", "/healthz/x", false, NotFound),
            ("PUT", "/nope", false, MethodNotAllowed("GET, HEAD")),
            // before 2026-03-02: no probes, the Control UI answers every GET
            ("GET", "/healthz", true, ControlUi),
            ("GET", "/readyz", true, ControlUi),
            ("HEAD", "/startupz", true, ControlUi),
            ("GET", "/anything", true, ControlUi),
            ("GET", "/stats", true, Stats),
            ("GET", "/env-keys", true, EnvKeys),
            ("POST", "/fake/config-change", true, ConfigChange),
            ("POST", "/fake/channels", true, Channels),
            ("POST", "/healthz", true, MethodNotAllowed("GET, HEAD")),
        ];
        for (method, path, pre, want) in cases {
            assert_eq!(route(method, path, *pre), *want, "{method} {path} pre_probes={pre}");
        }
    }

    #[test]
    fn channel_lists() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("\n", &[]),
            ("telegram", &["telegram"]),
            ("telegram,discord", &["telegram", "discord"]),
            (" telegram , ,discord,telegram\n", &["telegram", "discord"]),
        ];
        for (list, want) in cases {
            assert_eq!(parse_channels(list), *want, "{list:?}");
        }
    }

    #[test]
    fn bearer_details() {
        let secrets = vec!["tok".to_string(), "pw".to_string()];
        let cases = [
            (None, false),
            (Some("Bearer tok"), true),
            (Some("bearer pw"), true),
            (Some("Bearer  tok "), true),
            (Some("Bearer wrong"), false),
            (Some("Basic tok"), false),
            (Some("Bearer "), false),
            (Some("tok"), false),
        ];
        for (header, want) in cases {
            assert_eq!(authorized(header, &secrets), want, "{header:?}");
        }
        assert!(!authorized(Some("Bearer "), &[String::new()]));
        assert!(!authorized(Some("Bearer tok"), &[]));
    }

    #[test]
    fn env_key_listing() {
        let pairs = crate::env::parse_dotenv("# c\nZED=1\nexport API_KEY=secret\n\nAPI_KEY=again\nBAD LINE\nq\"=x\n");
        assert_eq!(env_keys_json(&pairs), "[\"API_KEY\", \"ZED\", \"q\\\"\"]");
    }
}
