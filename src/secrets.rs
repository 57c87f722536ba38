//! Secrets from SSM Parameter Store, written as `KEY=value` lines to one file on tmpfs, mode 0600
//! in a 0700 directory, through a temp file and a rename. Values are never logged, never written
//! anywhere else, and never passed to Docker as environment (they would show in `docker inspect`).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_sdk_ssm::Client;
use aws_sdk_ssm::error::DisplayErrorContext;

use crate::config::{SecretsConfig, is_env_name};
use crate::store::Problem;
use crate::store::problem;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read SSM parameters under {path}: {message}")]
    Ssm {
        path: String,
        message: String,
        transient: bool,
    },
    #[error("SSM parameter {name} cannot be an environment variable: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("SSM parameters {first} and {second} both map to {key}")]
    Duplicate { first: String, second: String, key: String },
    #[error("SSM parameter {name} has a value with a newline, which a KEY=value env file cannot hold")]
    Multiline { name: String },
    #[error("cannot write secrets file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl SecretsError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SecretsError::Ssm { transient: true, .. })
    }
}

/// The secrets: env name -> value. `Debug` shows keys only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secrets(BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Secrets {
    /// Names only, for logs.
    pub fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One secret's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The values, for scanning logs and archives in tests and drills.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(String::as_str)
    }

    /// Builds from (parameter name, value) pairs: the key is the name's last path segment.
    pub fn from_parameters(parameters: Vec<(String, String)>) -> Result<Secrets, SecretsError> {
        let mut map: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (name, value) in parameters {
            let key = name.rsplit('/').next().unwrap_or(&name).to_string();
            if !is_env_name(&key) {
                return Err(SecretsError::BadName {
                    name,
                    reason: "its last segment must be letters, digits and _, not starting with a digit",
                });
            }
            if value.contains('\n') || value.contains('\r') {
                return Err(SecretsError::Multiline { name });
            }
            if let Some((first, _)) = map.get(&key) {
                return Err(SecretsError::Duplicate {
                    first: first.clone(),
                    second: name,
                    key,
                });
            }
            map.insert(key, (name, value));
        }
        Ok(Secrets(map.into_iter().map(|(k, (_, v))| (k, v)).collect()))
    }

    /// The env file's text.
    fn render(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }
}

/// An SSM client from the shared SDK configuration; `endpoint` overrides it (tests).
pub fn client(config: &SecretsConfig, sdk_config: &aws_config::SdkConfig) -> Client {
    let mut builder = aws_sdk_ssm::config::Builder::from(sdk_config);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    Client::from_conf(builder.build())
}

/// Every parameter under `path`, recursive, decrypted, all pages.
pub async fn fetch(client: &Client, path: &str) -> Result<Secrets, SecretsError> {
    let mut parameters = Vec::new();
    let mut token = None;
    loop {
        let output = client
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .with_decryption(true)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| {
                // The whole chain for -vv; the journal gets one line with the next step.
                tracing::debug!(path, error = %DisplayErrorContext(&e), "SSM request failed");
                let problem = problem::classify(&problem::failure_of(&e));
                SecretsError::Ssm {
                    path: path.to_string(),
                    message: ssm_message(&problem, path),
                    transient: problem.is_transient(),
                }
            })?;
        for parameter in output.parameters() {
            if let (Some(name), Some(value)) = (parameter.name(), parameter.value()) {
                parameters.push((name.to_string(), value.to_string()));
            }
        }
        match output.next_token {
            Some(next) if !next.is_empty() => token = Some(next),
            _ => break,
        }
    }
    Secrets::from_parameters(parameters)
}

/// The words for a failed SSM read of `path` (the S3 classes, with SSM's permission).
pub fn ssm_message(problem: &Problem, path: &str) -> String {
    match problem {
        Problem::NoCredentials => problem::NO_CREDENTIALS.to_string(),
        Problem::CredentialsRejected { code } => {
            format!(
                "SSM rejected the credentials ({code}): check the access key and secret, or renew the session token"
            )
        }
        Problem::ClockSkew => {
            "this machine's clock is too far from AWS's: set it right (systemd-timesyncd or chrony)".into()
        }
        Problem::AccessDenied => format!(
            "access denied: the credentials in use need ssm:GetParametersByPath on {path} (and kms:Decrypt for \
             SecureString parameters)"
        ),
        Problem::Unreachable { cause } | Problem::Interrupted { cause } => {
            format!("cannot connect to SSM: {cause}: check the network, any proxy and [secrets] endpoint")
        }
        Problem::TimedOut => "SSM did not answer in time: check the network".into(),
        Problem::Throttled { code } => format!("SSM is throttling requests ({code}): it is retried with backoff"),
        Problem::Other { status, code, message } => format!(
            "SSM answered{}{}: {message}",
            status.map(|s| format!(" HTTP {s}")).unwrap_or_default(),
            code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
        ),
        // S3's own classes; SSM has no buckets and no conditional writes.
        Problem::NoSuchBucket | Problem::PreconditionFailed => "SSM answered with an unexpected error".into(),
    }
}

/// Writes the env file: 0700 directory, 0600 temp file in it, fsync, rename. Returns whether the
/// content changed.
pub fn write_env_file(path: &Path, secrets: &Secrets) -> Result<bool, SecretsError> {
    let write_error = |source| SecretsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let text = secrets.render();
    if let Ok(existing) = fs::read_to_string(path)
        && existing == text
    {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_error)?;
    }
    let temp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = fs::remove_file(&temp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(write_error)?;
    // The mode given to open() is masked by the umask; make sure.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(write_error)?;
    file.write_all(text.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    fs::rename(&temp, path).map_err(write_error)?;
    Ok(true)
}

/// Makes `owner_of`'s owner the owner of the env file (when running as root), keeping 0600.
pub fn give_to_owner_of(env_file: &Path, owner_of: &Path) -> Result<(), SecretsError> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let write_error = |source| SecretsError::Write {
        path: env_file.to_path_buf(),
        source,
    };
    let owner = fs::metadata(owner_of).map_err(write_error)?;
    std::os::unix::fs::chown(env_file, Some(owner.uid()), Some(owner.gid())).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn keys_are_the_last_path_segment_and_must_be_env_names() {
        let s = Secrets::from_parameters(params(&[
            ("/openclaw/lab/API_KEY", "a"),
            ("/openclaw/lab/telegram/BOT_TOKEN", "b"),
        ]))
        .expect("valid");
        assert_eq!(s.keys(), ["API_KEY", "BOT_TOKEN"]);
        assert!(matches!(
            Secrets::from_parameters(params(&[("/p/bad-name", "x")])),
            Err(SecretsError::BadName { .. })
        ));
        assert!(matches!(
            Secrets::from_parameters(params(&[("/p/a/K", "x"), ("/p/b/K", "y")])),
            Err(SecretsError::Duplicate { .. })
        ));
        assert!(matches!(
            Secrets::from_parameters(params(&[("/p/K", "x\ny")])),
            Err(SecretsError::Multiline { .. })
        ));
        assert!(is_env_name("_A1") && !is_env_name("1A") && !is_env_name("") && !is_env_name("A-B"));
    }

    #[test]
    fn debug_never_shows_values() {
        let s = Secrets::from_parameters(params(&[("/p/API_KEY", "super-secret-value")])).expect("valid");
        let shown = format!("{s:?}");
        assert!(
            shown.contains("API_KEY") && !shown.contains("super-secret-value"),
            "{shown}"
        );
    }

    #[test]
    fn env_file_is_private_and_rewritten_only_on_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/openclaw/.env");
        let s = Secrets::from_parameters(params(&[("/p/B", "2"), ("/p/A", "1")])).expect("valid");
        assert!(write_env_file(&path, &s).expect("written"));
        assert_eq!(fs::read_to_string(&path).expect("read"), "A=1\nB=2\n");
        assert_eq!(fs::metadata(&path).expect("meta").mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().expect("dir")).expect("meta").mode() & 0o777,
            0o700
        );
        assert!(
            !write_env_file(&path, &s).expect("same"),
            "unchanged content is not rewritten"
        );
        let changed = Secrets::from_parameters(params(&[("/p/A", "3")])).expect("valid");
        assert!(write_env_file(&path, &changed).expect("changed"));
        assert_eq!(fs::read_to_string(&path).expect("read"), "A=3\n");
    }
}
