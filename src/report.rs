//! How a failure reaches a person: one line on stderr (`error: …`), and with `--json` the same
//! failure on stdout as `{"error": {"code": N, "kind": "...", "message": "..."}}` (the daemon's
//! error reply has the same fields), with the same exit code.

use std::process::ExitCode;

use crate::control::ErrorReply;
use crate::exit::Exit;

/// The JSON document a `--json` command prints on failure.
pub fn json_document(exit: Exit, message: &str) -> serde_json::Value {
    serde_json::json!({
        "error": ErrorReply {
            code: exit.code(),
            kind: exit.kind().to_string(),
            message: message.to_string(),
        }
    })
}

/// Prints the `--json` failure document on stdout.
pub fn json_error(exit: Exit, message: &str) {
    println!("{}", json_document(exit, message));
}

/// Reports a failed command and gives its exit code.
pub fn failure(json: bool, exit: Exit, message: &str) -> ExitCode {
    eprintln!("error: {message}");
    if json {
        json_error(exit, message);
    }
    exit.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_failure_has_the_code_kind_and_message() {
        let doc = json_document(Exit::NotFound, "no snapshot 2026-01-01-00-00 in s3://b/lab");
        assert_eq!(
            doc,
            serde_json::json!({"error": {"code": 4, "kind": "not-found", "message": "no snapshot 2026-01-01-00-00 in s3://b/lab"}})
        );
    }
}
