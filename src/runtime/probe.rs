//! OpenClaw's probe contract, pure: what an answer of `/healthz`, `/startupz` or `/readyz` means.
//! The gateway answers JSON (`src/gateway/server/readiness.ts`):
//! - `/healthz`: 200 `{"ok":true,"status":"live"}`, also while it drains;
//! - `/startupz`: 200 `{"ok":true,"status":"started"}`, else 503 with `"starting"` or `"draining"`;
//! - `/readyz`: 200 `{"ready":true}`, else 503 `{"ready":false}` (with `failing`, the failing
//!   channels, for a caller that presents the gateway token).
//!
//! Images from before 2026-03-02 (openclaw/openclaw#31272) have no probes: their Control UI
//! answers every path with a 200 page, so "any 2xx" would call a missing route healthy forever.
//! `/startupz` arrived later (openclaw/openclaw#122477): a 404 there means "use liveness".

use serde_json::Value;

use super::Answer;
use crate::config::ProbeKind;

/// Which question a probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Is the process alive and serving? (`/healthz`)
    Live,
    /// Has it finished starting? (`/startupz`)
    Startup,
    /// Is every part of it working? (`/readyz`: channels)
    Ready,
}

/// What an answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The app answered no; the reason is for people.
    Fail(String),
    /// The image has no such endpoint (404).
    NoEndpoint,
}

/// Judges one answer to `probe`.
pub fn judge(kind: ProbeKind, probe: Probe, answer: &Answer) -> Verdict {
    if answer.status == 404 {
        return Verdict::NoEndpoint;
    }
    let success = (200..300).contains(&answer.status);
    if kind == ProbeKind::Http {
        return if success {
            Verdict::Pass
        } else {
            Verdict::Fail(format!("answered {}", answer.status))
        };
    }
    let Some(body) = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .filter(Value::is_object)
    else {
        return Verdict::Fail(if success {
            format!(
                "answered {} with a body that is not OpenClaw's JSON: a catch-all page, as images from before \
                 2026-03-02 give (they have no probes, openclaw/openclaw#31272); pin a newer image",
                answer.status
            )
        } else {
            format!("answered {}", answer.status)
        });
    };
    let flag = |name: &str| body.get(name).and_then(Value::as_bool) == Some(true);
    let text = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_string);
    match probe {
        Probe::Live | Probe::Startup if success && flag("ok") => Verdict::Pass,
        Probe::Ready if success && flag("ready") => Verdict::Pass,
        Probe::Live | Probe::Startup => {
            let mut reason = format!("answered {}", answer.status);
            if let Some(status) = text("status") {
                reason.push_str(&format!(", {status}"));
            }
            if let Some(pending) = text("pendingReason") {
                reason.push_str(&format!(" ({pending})"));
            }
            Verdict::Fail(reason)
        }
        Probe::Ready => {
            let failing: Vec<String> = body
                .get("failing")
                .and_then(Value::as_array)
                .map(|items| items.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default();
            Verdict::Fail(if failing.is_empty() {
                format!("not ready (answered {})", answer.status)
            } else {
                format!("not ready: failing {}", failing.join(", "))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_are_judged_by_openclaws_contract() {
        use Probe::*;
        use ProbeKind::*;
        let pass = || Verdict::Pass;
        let fail = |text: &str| Verdict::Fail(text.to_string());
        let html = "<!doctype html><html><body>OpenClaw</body></html>";
        let rows: Vec<(ProbeKind, Probe, Answer, Verdict)> = vec![
            (Openclaw, Live, answer(200, r#"{"ok":true,"status":"live"}"#), pass()),
            (Openclaw, Live, answer(200, r#"{"ok":false}"#), fail("answered 200")),
            (
                Openclaw,
                Live,
                answer(503, r#"{"live":false,"phase":"shutting_down"}"#),
                fail("answered 503"),
            ),
            (Openclaw, Live, answer(404, "not found"), Verdict::NoEndpoint),
            (
                Openclaw,
                Startup,
                answer(200, r#"{"ok":true,"status":"started"}"#),
                pass(),
            ),
            (
                Openclaw,
                Startup,
                answer(
                    503,
                    r#"{"ok":false,"status":"starting","pendingReason":"startup-sidecars"}"#,
                ),
                fail("answered 503, starting (startup-sidecars)"),
            ),
            (
                Openclaw,
                Startup,
                answer(503, r#"{"ok":false,"status":"draining"}"#),
                fail("answered 503, draining"),
            ),
            (Openclaw, Startup, answer(404, ""), Verdict::NoEndpoint),
            (Openclaw, Ready, answer(200, r#"{"ready":true}"#), pass()),
            (
                Openclaw,
                Ready,
                answer(503, r#"{"ready":false}"#),
                fail("not ready (answered 503)"),
            ),
            (
                Openclaw,
                Ready,
                answer(503, r#"{"ready":false,"failing":["telegram","discord"]}"#),
                fail("not ready: failing telegram, discord"),
            ),
            // A JSON answer of the wrong shape is not healthy.
            (
                Openclaw,
                Ready,
                answer(200, r#"{"ok":true}"#),
                fail("not ready (answered 200)"),
            ),
            (Openclaw, Live, answer(200, "[true]"), fail(&not_json(200))),
            (Openclaw, Live, answer(500, "oops"), fail("answered 500")),
            // Images from before the probes: a 200 page for every path.
            (Openclaw, Live, answer(200, html), fail(&not_json(200))),
            (Openclaw, Startup, answer(200, html), fail(&not_json(200))),
            (Openclaw, Ready, answer(200, html), fail(&not_json(200))),
            // Another app: any 2xx.
            (Http, Live, answer(204, ""), pass()),
            (Http, Live, answer(200, html), pass()),
            (Http, Startup, answer(503, ""), fail("answered 503")),
            (Http, Startup, answer(404, ""), Verdict::NoEndpoint),
        ];
        for (kind, probe, answer, expected) in rows {
            assert_eq!(judge(kind, probe, &answer), expected, "{kind:?} {probe:?} {answer:?}");
        }
    }

    fn not_json(status: u16) -> String {
        format!(
            "answered {status} with a body that is not OpenClaw's JSON: a catch-all page, as images from before \
             2026-03-02 give (they have no probes, openclaw/openclaw#31272); pin a newer image"
        )
    }
}
