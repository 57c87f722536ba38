//! The repository password: from SSM Parameter Store (a SecureString) or a file, held in memory
//! only, never logged (its Debug is redacted) and never on a command line. The same text must
//! open the repository in spotkeeper, restic (which trims the file) and rustic (which reads its
//! first line): one trailing newline is dropped, and any other surrounding whitespace or line
//! break is refused rather than guessed at.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A repository password.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the repository password from {source_name} {problem}")]
    Invalid { source_name: String, problem: &'static str },
    #[error("cannot read the repository password file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "the repository password file {path} can be read by other users (mode {mode:o}): `chmod 600 {path}` \
         (refusing to use it)"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot read the repository password from SSM parameter {name}: {message}")]
    Ssm {
        name: String,
        message: String,
        /// Trying again later may work (the network, a timeout, throttling, a 5xx).
        transient: bool,
    },
}

impl Password {
    /// Checks `text` read from `source_name` (a file path or an SSM parameter name).
    pub fn new(text: &str, source_name: &str) -> Result<Password, PasswordError> {
        let invalid = |problem| PasswordError::Invalid {
            source_name: source_name.to_string(),
            problem,
        };
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(text);
        if text.is_empty() {
            return Err(invalid("is empty"));
        }
        if text.contains(['\n', '\r']) {
            return Err(invalid(
                "has more than one line: restic and rustic would read different passwords",
            ));
        }
        if text.trim() != text {
            return Err(invalid(
                "starts or ends with whitespace: restic would trim it and read a different password",
            ));
        }
        Ok(Password(text.to_string()))
    }

    /// The password, for rustic_core only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a password file, refusing one that other users can read.
    pub fn from_file(path: &Path) -> Result<Password, PasswordError> {
        let read = |source| PasswordError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PasswordError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Password::new(&text, &path.display().to_string())
    }

    /// Reads a SecureString parameter, decrypted.
    pub async fn from_ssm(client: &aws_sdk_ssm::Client, name: &str) -> Result<Password, PasswordError> {
        let output = client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| {
                let problem = crate::store::problem::classify(&crate::store::problem::failure_of(&e));
                let transient = problem.is_transient();
                let message = if e.as_service_error().is_some_and(|s| s.is_parameter_not_found()) {
                    "it does not exist: create it (`spotkeeper init --create-password`) or fix the name".to_string()
                } else {
                    crate::secrets::ssm_message(&problem, name)
                };
                PasswordError::Ssm {
                    name: name.to_string(),
                    message,
                    transient,
                }
            })?;
        let value = output.parameter().and_then(|p| p.value()).unwrap_or_default();
        Password::new(value, &format!("SSM parameter {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_dropped_and_anything_ambiguous_refused() {
        let cases = [
            ("s3cret", Some("s3cret")),
            ("s3cret\n", Some("s3cret")),
            ("s3cret\r\n", Some("s3cret")),
            ("", None),
            ("\n", None),
            ("s3cret\n\n", None),
            ("two\nlines", None),
            (" s3cret", None),
            ("s3cret \n", None),
        ];
        for (text, expected) in cases {
            let got = Password::new(text, "test").ok();
            assert_eq!(got.as_ref().map(Password::expose), expected, "{text:?}");
        }
    }

    #[test]
    fn the_password_never_shows_in_debug_or_errors() {
        let password = Password::new("hunter2-correct-horse", "test").expect("valid");
        assert!(!format!("{password:?}").contains("hunter2"));
        let error = Password::new("hunter2 ", "test").expect_err("refused");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = Password::from_file(&path).expect_err("exposed");
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(Password::from_file(&path).expect("ok").expose(), "s3cret");
    }
}
