//! What spotkeeper reads of OpenClaw's own configuration (`openclaw.json`, JSON5, in the config
//! directory): the agent directories and workspaces it names. OpenClaw's own backup follows
//! them even outside its state directory (`docs/install/backups.md`); spotkeeper backs up only
//! its configured state paths, so `check-config` warns about any that lies outside them. Pure
//! apart from reading the file.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::config::{Config, StatePath};

/// OpenClaw's config file, in the directory mounted at the container's `~/.openclaw`.
pub const CONFIG_FILE: &str = "openclaw.json";
/// `~` in the container (the image's `node` user).
pub const CONTAINER_HOME: &str = "/home/node";
/// Where OpenClaw's config directory is mounted in the container.
pub const CONFIG_MOUNT: &str = "/home/node/.openclaw";

/// A directory `openclaw.json` names that no state path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outside {
    /// The key, as `agents.list[2].workspace`.
    pub key: String,
    /// The path as written.
    pub path: String,
}

/// Reads `openclaw.json` from the state path mounted at `CONFIG_MOUNT` and lists the agent
/// directories and workspaces it names outside every state path's mount. `Ok(None)`: no such
/// path or no such file. `Err`: the file exists but cannot be read or parsed (named).
pub fn check(config: &Config) -> Result<Option<Vec<Outside>>, String> {
    let Some(dir) = config_dir(
        &config.state.paths,
        config.container.as_ref().map(|c| c.state_mount.as_str()),
    ) else {
        return Ok(None);
    };
    let file = dir.join(CONFIG_FILE);
    let Some(text) = read_untrusted(&file)? else {
        return Ok(None);
    };
    let doc = parse(&file, &text)?;
    let mounts: Vec<String> = config
        .state
        .paths
        .iter()
        .filter_map(|p| mount_of(p, config.container.as_ref().map(|c| c.state_mount.as_str())))
        .collect();
    Ok(Some(outside(&doc, &mounts)))
}

/// Parses `text` (JSON5). The error names the place, never the text: the file is the app's to
/// write, and json5's own message quotes the line.
fn parse(file: &Path, text: &str) -> Result<Value, String> {
    json5::from_str(text).map_err(|e| match e {
        json5::Error::Message { location: Some(at), .. } => {
            format!(
                "{} is not valid JSON5 (line {}, column {})",
                file.display(),
                at.line,
                at.column
            )
        }
        json5::Error::Message { location: None, .. } => format!("{} is not valid JSON5", file.display()),
    })
}

/// The most of `openclaw.json` read: OpenClaw's is a few KiB.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Reads `file`, which lies in the state directory (the app's to write): its last component is
/// opened without following a link and without blocking on a FIFO, and only a regular file of at
/// most `MAX_CONFIG_BYTES` is read. `Ok(None)`: there is none.
fn read_untrusted(file: &Path) -> Result<Option<String>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(file);
    let handle = match opened {
        Ok(handle) => handle,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(format!("{} is a link; not followed", file.display()));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let meta = handle
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", file.display()));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!("{} is larger than {MAX_CONFIG_BYTES} bytes", file.display()));
    }
    let mut text = String::new();
    handle
        .take(MAX_CONFIG_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    Ok(Some(text))
}

fn mount_of(path: &StatePath, default_mount: Option<&str>) -> Option<String> {
    path.mount.clone().or_else(|| default_mount.map(str::to_string))
}

/// The host directory of the state path mounted at `CONFIG_MOUNT`.
fn config_dir(paths: &[StatePath], default_mount: Option<&str>) -> Option<PathBuf> {
    paths
        .iter()
        .find(|p| mount_of(p, default_mount).is_some_and(|m| m.trim_end_matches('/') == CONFIG_MOUNT))
        .map(|p| p.dir.clone())
}

/// The agent directories and workspaces of `doc` (`agents.defaults.workspace`,
/// `agents.defaults.agentDir`, `agents.list[].workspace`, `agents.list[].agentDir`) that lie
/// under none of `mounts` (container paths).
pub fn outside(doc: &Value, mounts: &[String]) -> Vec<Outside> {
    let mut named: Vec<(String, &str)> = Vec::new();
    let agents = doc.get("agents");
    if let Some(defaults) = agents.and_then(|a| a.get("defaults")) {
        for key in ["workspace", "agentDir"] {
            if let Some(path) = defaults.get(key).and_then(Value::as_str) {
                named.push((format!("agents.defaults.{key}"), path));
            }
        }
    }
    if let Some(list) = agents.and_then(|a| a.get("list")).and_then(Value::as_array) {
        for (i, agent) in list.iter().enumerate() {
            for key in ["workspace", "agentDir"] {
                if let Some(path) = agent.get(key).and_then(Value::as_str) {
                    named.push((format!("agents.list[{i}].{key}"), path));
                }
            }
        }
    }
    named
        .into_iter()
        .filter(|(_, path)| {
            let resolved = resolve(path);
            !mounts.iter().any(|m| resolved.starts_with(Path::new(m)))
        })
        .map(|(key, path)| Outside {
            key,
            path: path.to_string(),
        })
        .collect()
}

/// A path as the gateway resolves it in the container: `~` is its home, a relative path is
/// relative to its config directory; `.` and `..` are folded.
fn resolve(path: &str) -> PathBuf {
    let joined = if let Some(rest) = path.strip_prefix("~/") {
        Path::new(CONTAINER_HOME).join(rest)
    } else if path == "~" {
        PathBuf::from(CONTAINER_HOME)
    } else if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(CONFIG_MOUNT).join(path)
    };
    let mut out = PathBuf::from("/");
    for part in joined.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_link_fifo_or_garbage_is_refused_without_reading_or_echoing_it() {
        let dir = tempfile::tempdir().expect("dir");
        let secret = dir.path().join("outside.json");
        std::fs::write(&secret, "{ agents: { list: [ { workspace: \"/srv/TOP-SECRET\" } ] } }").expect("write");
        let file = dir.path().join(CONFIG_FILE);
        // A link to a file outside: not followed.
        std::os::unix::fs::symlink(&secret, &file).expect("link");
        let err = read_untrusted(&file).expect_err("a link");
        assert!(err.contains("link") && !err.contains("TOP-SECRET"), "{err}");
        std::fs::remove_file(&file).expect("rm");
        // A FIFO: refused at once, no blocking open.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &file,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("fifo");
        let err = read_untrusted(&file).expect_err("a fifo");
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_file(&file).expect("rm");
        // Not JSON5: the place is named, the content is not.
        std::fs::write(&file, "TOP-SECRET-LINE = not json\n").expect("write");
        let text = read_untrusted(&file).expect("read").expect("present");
        let err = parse(&file, &text).expect_err("invalid");
        assert!(err.contains("line 1") && !err.contains("TOP-SECRET"), "{err}");
        assert_eq!(read_untrusted(&dir.path().join("absent.json")), Ok(None));
    }

    #[test]
    fn agent_directories_outside_the_mounts_are_named() {
        let mounts = vec![
            "/home/node/.openclaw".to_string(),
            "/home/node/.openclaw/workspace".to_string(),
            "/home/node/.config/openclaw".to_string(),
        ];
        let doc: Value = json5::from_str(
            r#"{
              // JSON5, as OpenClaw writes it
              agents: {
                defaults: { workspace: "~/.openclaw/workspace", },
                list: [
                  { id: "main" },
                  { id: "ops", workspace: "/srv/ops", agentDir: "~/.openclaw/agents/ops" },
                  { id: "rel", workspace: "workspace-rel", agentDir: "../elsewhere" },
                  { id: "sneaky", workspace: "~/.openclaw/../outside" },
                  { id: "home", agentDir: "~" },
                ],
              },
            }"#,
        )
        .expect("json5");
        let found: Vec<(String, String)> = outside(&doc, &mounts).into_iter().map(|o| (o.key, o.path)).collect();
        assert_eq!(
            found,
            vec![
                ("agents.list[1].workspace".to_string(), "/srv/ops".to_string()),
                ("agents.list[2].agentDir".to_string(), "../elsewhere".to_string()),
                (
                    "agents.list[3].workspace".to_string(),
                    "~/.openclaw/../outside".to_string()
                ),
                ("agents.list[4].agentDir".to_string(), "~".to_string()),
            ]
        );
        assert!(outside(&serde_json::json!({}), &mounts).is_empty());
        assert!(outside(&serde_json::json!({"agents": {"list": "not a list"}}), &mounts).is_empty());
    }
}
