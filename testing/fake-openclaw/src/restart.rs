//! What OpenClaw's "full process restart" (after a config or auth change) does, decided
//! from the environment as `resolveGatewayRestartDecision` does
//! (`src/infra/process-respawn.ts`, `gateway-supervision.ts`, `supervisor-markers.ts`).

use crate::env::is_truthy;

/// Variables whose non-empty value marks a systemd supervisor.
const SYSTEMD_HINTS: [&str; 4] = [
    "OPENCLAW_SYSTEMD_UNIT",
    "INVOCATION_ID",
    "SYSTEMD_EXEC_PID",
    "JOURNAL_STREAM",
];

/// `OPENCLAW_SUPERVISOR_MODE` values that mean another process manager owns the
/// gateway (`external`; newer builds also accept the presets `docker` and `clawctl`).
const EXTERNAL_MODES: [&str; 3] = ["external", "docker", "clawctl"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartMode {
    /// `OPENCLAW_NO_RESPAWN` truthy: restart inside the process, which keeps running.
    InProcess,
    /// A supervisor hint (the variable named): exit 0 and let the supervisor start it again.
    Supervised(&'static str),
    /// No hint: spawn a detached copy and exit 0, as older builds do; in a
    /// container the copy dies with the container.
    Detached,
}

impl RestartMode {
    pub fn name(&self) -> &'static str {
        match self {
            RestartMode::InProcess => "in-process",
            RestartMode::Supervised(_) => "supervised",
            RestartMode::Detached => "detached",
        }
    }

    /// The stdout line that tells a test which path ran.
    pub fn stdout_line(&self) -> &'static str {
        match self {
            RestartMode::InProcess => "restarted in-process",
            RestartMode::Supervised(_) => "restarting",
            RestartMode::Detached => "respawning detached",
        }
    }
}

/// The decision, from a variable lookup (process environment, then the env file).
pub fn restart_mode(var: impl Fn(&str) -> Option<String>) -> RestartMode {
    if var("OPENCLAW_NO_RESPAWN").is_some_and(|v| is_truthy(&v)) {
        return RestartMode::InProcess;
    }
    let mode = var("OPENCLAW_SUPERVISOR_MODE").unwrap_or_default();
    if EXTERNAL_MODES.contains(&mode.trim().to_ascii_lowercase().as_str()) {
        return RestartMode::Supervised("OPENCLAW_SUPERVISOR_MODE");
    }
    for hint in SYSTEMD_HINTS {
        if var(hint).is_some_and(|v| !v.trim().is_empty()) {
            return RestartMode::Supervised(hint);
        }
    }
    RestartMode::Detached
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        use RestartMode::*;
        let cases: &[(&[(&str, &str)], RestartMode)] = &[
            (&[], Detached),
            (&[("OPENCLAW_NO_RESPAWN", "1")], InProcess),
            (&[("OPENCLAW_NO_RESPAWN", "true"), ("INVOCATION_ID", "x")], InProcess),
            (&[("OPENCLAW_NO_RESPAWN", "0")], Detached),
            (
                &[("OPENCLAW_NO_RESPAWN", "0"), ("INVOCATION_ID", "x")],
                Supervised("INVOCATION_ID"),
            ),
            (
                &[("OPENCLAW_SUPERVISOR_MODE", "external")],
                Supervised("OPENCLAW_SUPERVISOR_MODE"),
            ),
            (
                &[("OPENCLAW_SUPERVISOR_MODE", " External ")],
                Supervised("OPENCLAW_SUPERVISOR_MODE"),
            ),
            (
                &[("OPENCLAW_SUPERVISOR_MODE", "docker")],
                Supervised("OPENCLAW_SUPERVISOR_MODE"),
            ),
            (&[("OPENCLAW_SUPERVISOR_MODE", "auto")], Detached),
            (
                &[("OPENCLAW_SYSTEMD_UNIT", "openclaw.service")],
                Supervised("OPENCLAW_SYSTEMD_UNIT"),
            ),
            (&[("OPENCLAW_SYSTEMD_UNIT", "x")], Supervised("OPENCLAW_SYSTEMD_UNIT")),
            (&[("SYSTEMD_EXEC_PID", "7")], Supervised("SYSTEMD_EXEC_PID")),
            (&[("JOURNAL_STREAM", "8:123")], Supervised("JOURNAL_STREAM")),
            (&[("INVOCATION_ID", "")], Detached),
            (&[("INVOCATION_ID", "  ")], Detached),
            // not a hint OpenClaw reads
            (&[("OPENCLAW_SUPERVISOR", "external")], Detached),
        ];
        for (vars, want) in cases {
            let got = restart_mode(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()));
            assert_eq!(&got, want, "env {vars:?}");
        }
    }

    #[test]
    fn lines() {
        assert_eq!(RestartMode::InProcess.stdout_line(), "restarted in-process");
        assert_eq!(RestartMode::Supervised("INVOCATION_ID").stdout_line(), "restarting");
        assert_eq!(RestartMode::Detached.stdout_line(), "respawning detached");
    }
}
