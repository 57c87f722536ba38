//! What went wrong with one S3 request, in words a person can act on. The SDK's error is first
//! boiled down to plain facts (`Failure`), then classified by a pure function (`classify`):
//! every class has one message naming the next step, tested as a table. The SDK's own chain of
//! errors goes to the debug log, never into a message.

use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// What a person is told when the credentials chain finds nothing (S3 and SSM alike).
pub const NO_CREDENTIALS: &str = "no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and \
     AWS_SECRET_ACCESS_KEY, or give the instance a role";

/// The facts of one failed request, taken from the SDK's error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failure {
    /// No answer in time (connect or read timeout).
    pub timed_out: bool,
    /// The request never got an HTTP answer (connection refused, DNS, TLS, reset).
    pub not_sent: bool,
    /// The credentials chain found nothing.
    pub no_credentials: bool,
    /// An answer began but broke off, or could not be read.
    pub broken: bool,
    /// The HTTP status, when S3 answered.
    pub status: Option<u16>,
    /// S3's error code (`NoSuchBucket`, `SlowDown`…), when it sent one.
    pub code: Option<String>,
    /// S3's error message, or the innermost cause of a failure to connect.
    pub message: Option<String>,
}

/// The class of a failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    NoCredentials,
    CredentialsRejected {
        code: String,
    },
    ClockSkew,
    AccessDenied,
    NoSuchBucket,
    PreconditionFailed,
    Unreachable {
        cause: String,
    },
    /// A download that had started broke off.
    Interrupted {
        cause: String,
    },
    TimedOut,
    Throttled {
        code: String,
    },
    Other {
        status: Option<u16>,
        code: Option<String>,
        message: String,
    },
}

/// Classifies a failed request.
pub fn classify(failure: &Failure) -> Problem {
    if failure.no_credentials {
        return Problem::NoCredentials;
    }
    if failure.timed_out {
        return Problem::TimedOut;
    }
    if failure.broken {
        return Problem::Interrupted {
            cause: failure.message.clone().unwrap_or_else(|| "the answer broke off".into()),
        };
    }
    if failure.not_sent {
        return Problem::Unreachable {
            cause: failure.message.clone().unwrap_or_else(|| "no answer".into()),
        };
    }
    let code = failure.code.as_deref();
    match (code, failure.status) {
        (Some("NoSuchBucket"), _) => Problem::NoSuchBucket,
        (
            Some(
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired",
            ),
            _,
        ) => Problem::CredentialsRejected {
            code: code.unwrap_or_default().to_string(),
        },
        (Some("RequestTimeTooSkewed"), _) => Problem::ClockSkew,
        (Some("AccessDenied" | "AllAccessDisabled"), _) | (None, Some(403)) => Problem::AccessDenied,
        (Some("PreconditionFailed"), _) | (_, Some(412)) => Problem::PreconditionFailed,
        (Some("SlowDown" | "Throttling" | "ThrottlingException" | "TooManyRequests" | "RequestLimitExceeded"), _)
        | (None, Some(429 | 503)) => Problem::Throttled {
            code: code.map_or_else(
                || format!("HTTP {}", failure.status.unwrap_or_default()),
                str::to_string,
            ),
        },
        _ => Problem::Other {
            status: failure.status,
            code: failure.code.clone(),
            message: failure.message.clone().unwrap_or_else(|| "no message".to_string()),
        },
    }
}

impl Problem {
    /// Whether trying again later may succeed: the network, timeouts, throttling, 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            Problem::Unreachable { .. }
            | Problem::Interrupted { .. }
            | Problem::TimedOut
            | Problem::Throttled { .. } => true,
            Problem::Other { status, code, .. } => {
                status.is_some_and(|s| s >= 500)
                    || matches!(
                        code.as_deref(),
                        Some("RequestTimeout" | "InternalError" | "ServiceUnavailable")
                    )
            }
            _ => false,
        }
    }
}

/// Where a request went and what it was for, to finish a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// `get`, `put`, `list`, `delete`, `copy`, `upload`, `read`.
    pub op: &'static str,
    pub bucket: String,
    pub key: String,
    /// `host:port` of the S3 endpoint.
    pub endpoint: String,
    /// `[s3] timeout` per attempt.
    pub timeout: Duration,
    pub attempts: u32,
}

/// The IAM action a person must grant for `op`.
fn action(op: &str) -> &'static str {
    match op {
        "list" => "s3:ListBucket",
        "put" | "upload" => "s3:PutObject",
        "delete" => "s3:DeleteObject",
        "copy" => "s3:GetObject and s3:PutObject",
        _ => "s3:GetObject",
    }
}

/// The one-line message for `problem` met while doing `context`.
pub fn message(problem: &Problem, context: &Context) -> String {
    let Context {
        op,
        bucket,
        key,
        endpoint,
        timeout,
        attempts,
    } = context;
    let what = format!("cannot {op} s3://{bucket}/{key}");
    match problem {
        Problem::NoCredentials => format!("{what}: {NO_CREDENTIALS}"),
        Problem::CredentialsRejected { code } => format!(
            "{what}: S3 rejected the credentials ({code}): check the access key and secret (AWS_PROFILE or \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or renew the session token"
        ),
        Problem::ClockSkew => format!(
            "{what}: this machine's clock is too far from S3's (RequestTimeTooSkewed): set it right \
             (systemd-timesyncd or chrony)"
        ),
        Problem::AccessDenied => format!(
            "{what}: access denied: the credentials in use need {} on bucket {bucket} (see the instance role's \
             policy in docs/deployment.md)",
            action(op)
        ),
        Problem::NoSuchBucket => {
            format!("{what}: bucket {bucket} does not exist: check [s3] bucket and [s3] region, or create it")
        }
        Problem::PreconditionFailed => {
            format!("{what}: the object was changed by someone else (a conditional request failed)")
        }
        Problem::Unreachable { cause } => format!(
            "{what}: cannot connect to S3 at {endpoint}: {cause} ({attempts} attempts): check [s3] endpoint, \
             the network and any proxy"
        ),
        Problem::Interrupted { cause } => {
            format!("{what}: the answer from S3 at {endpoint} broke off: {cause}: try again")
        }
        Problem::TimedOut => format!(
            "{what}: S3 at {endpoint} did not answer within {} s ({attempts} attempts): check the network, or \
             raise [s3] timeout",
            timeout.as_secs()
        ),
        Problem::Throttled { code } => format!(
            "{what}: S3 is throttling requests ({code}) and still was after {attempts} attempts: try again in a \
             few minutes"
        ),
        Problem::Other { status, code, message } => {
            let mut answer = String::from("S3 answered");
            if let Some(status) = status {
                answer.push_str(&format!(" HTTP {status}"));
            }
            if let Some(code) = code {
                answer.push_str(&format!(" {code}"));
            }
            format!("{what}: {answer}: {message}")
        }
    }
}

/// The plain facts of an AWS SDK error, S3's or SSM's (`classify` decides what they mean).
pub fn failure_of<E>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    // The chain found nothing (every source tried failed or was empty; off EC2 the last one
    // tried is the instance metadata service).
    let no_credentials = std::iter::successors(Some(err as &(dyn std::error::Error + 'static)), |e| e.source())
        .any(|e| e.is::<aws_credential_types::provider::error::CredentialsError>());
    match err {
        SdkError::DispatchFailure(dispatch) => Failure {
            timed_out: dispatch.is_timeout(),
            not_sent: true,
            no_credentials,
            message: Some(innermost_cause(err)),
            ..Failure::default()
        },
        SdkError::TimeoutError(_) => Failure {
            timed_out: true,
            not_sent: true,
            ..Failure::default()
        },
        SdkError::ResponseError(_) => Failure {
            broken: true,
            message: Some(innermost_cause(err)),
            ..Failure::default()
        },
        SdkError::ConstructionFailure(_) => Failure {
            not_sent: true,
            no_credentials,
            message: Some(innermost_cause(err)),
            ..Failure::default()
        },
        _ => Failure {
            no_credentials,
            status: err.raw_response().map(|r| r.status().as_u16()),
            code: err.code().map(str::to_string),
            message: err.message().map(str::to_string).or_else(|| Some(innermost_cause(err))),
            ..Failure::default()
        },
    }
}

/// The innermost cause of `error`, for a connection failure: `connection refused`, not the
/// SDK's wrapping of it. An `io::Error` in the chain speaks for itself.
pub fn innermost_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    let mut io = None;
    while let Some(next) = current.source() {
        if let Some(e) = next.downcast_ref::<std::io::Error>() {
            io = Some(plain_io(e));
        }
        current = next;
    }
    io.unwrap_or_else(|| current.to_string())
}

/// `connection refused`, from `Connection refused (os error 111)`.
fn plain_io(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Context {
        Context {
            op: "list",
            bucket: "backups".into(),
            key: "lab/snapshots/".into(),
            endpoint: "127.0.0.1:9".into(),
            timeout: Duration::from_secs(30),
            attempts: 5,
        }
    }

    fn answered(status: u16, code: Option<&str>) -> Failure {
        Failure {
            status: Some(status),
            code: code.map(str::to_string),
            message: Some("S3's own words".into()),
            ..Failure::default()
        }
    }

    /// Every class a person meets: its message, its exit code, whether a retry may fix it.
    #[test]
    fn a_connection_error_is_said_plainly() {
        let refused = std::io::Error::from_raw_os_error(111);
        assert_eq!(plain_io(&refused), "connection refused");
        let other = std::io::Error::other("failed to lookup address information: Name or service not known");
        assert_eq!(
            plain_io(&other),
            "failed to lookup address information: Name or service not known"
        );
    }

    #[test]
    fn each_class_has_one_message_naming_the_next_step() {
        use crate::exit::Exit;
        let cases: [(Failure, &str, Exit, bool); 13] = [
            (
                Failure {
                    no_credentials: true,
                    not_sent: true,
                    ..Failure::default()
                },
                "no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the instance a role",
                Exit::Io,
                false,
            ),
            (
                answered(403, Some("SignatureDoesNotMatch")),
                "S3 rejected the credentials (SignatureDoesNotMatch): check the access key and secret",
                Exit::Io,
                false,
            ),
            (
                answered(403, Some("InvalidAccessKeyId")),
                "S3 rejected the credentials (InvalidAccessKeyId)",
                Exit::Io,
                false,
            ),
            (
                answered(400, Some("ExpiredToken")),
                "renew the session token",
                Exit::Io,
                false,
            ),
            (
                answered(403, Some("RequestTimeTooSkewed")),
                "clock is too far from S3's",
                Exit::Io,
                false,
            ),
            (
                answered(403, Some("AccessDenied")),
                "access denied: the credentials in use need s3:ListBucket on bucket backups",
                Exit::Io,
                false,
            ),
            // HEAD answers carry no body, so no code.
            (answered(403, None), "access denied", Exit::Io, false),
            (
                answered(404, Some("NoSuchBucket")),
                "bucket backups does not exist: check [s3] bucket and [s3] region",
                Exit::NotFound,
                false,
            ),
            (
                Failure {
                    not_sent: true,
                    message: Some("connection refused".into()),
                    ..Failure::default()
                },
                "cannot connect to S3 at 127.0.0.1:9: connection refused (5 attempts): check [s3] endpoint",
                Exit::Io,
                true,
            ),
            (
                Failure {
                    timed_out: true,
                    not_sent: true,
                    ..Failure::default()
                },
                "S3 at 127.0.0.1:9 did not answer within 30 s (5 attempts): check the network, or raise [s3] timeout",
                Exit::Io,
                true,
            ),
            (
                Failure {
                    broken: true,
                    message: Some("connection reset by peer".into()),
                    ..Failure::default()
                },
                "the answer from S3 at 127.0.0.1:9 broke off: connection reset by peer: try again",
                Exit::Io,
                true,
            ),
            (
                answered(503, Some("SlowDown")),
                "S3 is throttling requests (SlowDown) and still was after 5 attempts",
                Exit::Io,
                true,
            ),
            (
                answered(500, Some("InternalError")),
                "S3 answered HTTP 500 InternalError: S3's own words",
                Exit::Io,
                true,
            ),
        ];
        for (failure, expected, exit, transient) in cases {
            let problem = classify(&failure);
            let text = message(&problem, &context());
            assert!(text.starts_with("cannot list s3://backups/lab/snapshots/: "), "{text}");
            assert!(text.contains(expected), "{failure:?}: {text}");
            assert!(
                !text.contains('{') && !text.contains("Error {"),
                "no debug dump: {text}"
            );
            let error = super::super::StoreError::request(problem.clone(), context());
            assert_eq!(crate::exit::of_store(&error), exit, "{failure:?}");
            assert_eq!(problem.is_transient(), transient, "{failure:?}");
        }
    }
}
