//! OpenClaw's variables as the gateway sees them: the process environment first,
//! then the global dotenv file (`~/.openclaw/.env`, here ENV_FILE), which OpenClaw
//! loads without overriding what the process already has.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

/// `KEY=value` pairs of a dotenv file, in file order. `export ` prefixes, comments,
/// blank lines and lines without `=` are skipped; a value in matching quotes is unquoted.
pub fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (key, value) = l.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then(|| (key.to_string(), unquote(value.trim()).to_string()))
        })
        .collect()
}

fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return &value[1..value.len() - 1];
        }
    }
    value
}

/// The pairs of a dotenv file; `None` when it does not exist.
pub fn read_dotenv(path: &Path) -> io::Result<Option<Vec<(String, String)>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(parse_dotenv(&String::from_utf8_lossy(&bytes)))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// OpenClaw's `isTruthyEnvValue`.
pub fn is_truthy(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// The variables OpenClaw reads (token, password, supervisor hints), resolved at start.
pub struct OpenClawEnv {
    file: HashMap<String, String>,
}

impl OpenClawEnv {
    /// Reads the env file once; an unreadable file is logged and treated as empty.
    pub fn load(env_file: &Path) -> OpenClawEnv {
        let pairs = match read_dotenv(env_file) {
            Ok(pairs) => pairs.unwrap_or_default(),
            Err(e) => {
                eprintln!("fake-openclaw: cannot read {}: {e}; ignoring it", env_file.display());
                Vec::new()
            }
        };
        OpenClawEnv {
            // the last assignment of a key wins, as in dotenv
            file: pairs.into_iter().collect(),
        }
    }

    /// The process's value if it has the variable at all, else the file's.
    pub fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().or_else(|| self.file.get(name).cloned())
    }

    /// Non-empty value of `name`.
    pub fn non_empty(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_pairs() {
        let text = "# c\nZED=1\nexport API_KEY=secret\n\nAPI_KEY=\"again\"\nBAD LINE\nq\"=x\nT='a b'\nE=\n=v\n";
        let pairs = parse_dotenv(text);
        let want: Vec<(String, String)> = [
            ("ZED", "1"),
            ("API_KEY", "secret"),
            ("API_KEY", "again"),
            ("q\"", "x"),
            ("T", "a b"),
            ("E", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(pairs, want);
    }

    #[test]
    fn truthy_values() {
        for v in ["1", "true", "TRUE", " yes ", "on"] {
            assert!(is_truthy(v), "{v:?}");
        }
        for v in ["", "0", "false", "no", "off", "2"] {
            assert!(!is_truthy(v), "{v:?}");
        }
    }
}
