//! The command line: OpenClaw's gateway command as the container runs it
//! (`node dist/index.js gateway --bind lan --port 18789`, all of it passed to the
//! fake's ENTRYPOINT), or the `healthcheck` subcommand.

use std::net::Ipv4Addr;

/// Words of OpenClaw's command that name the program, not an option.
const PROGRAM_WORDS: &[&str] = &["node", "dist/index.js", "openclaw", "gateway"];

/// Where the gateway listens (OpenClaw's `--bind` modes the fake can honour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// 127.0.0.1 only: the image's own command; a published port is dead.
    Loopback,
    /// 0.0.0.0 (`lan`, or `0.0.0.0`).
    Lan,
    /// 0.0.0.0: what OpenClaw's `auto` picks in a container.
    Auto,
}

impl Bind {
    fn parse(value: &str) -> Result<Bind, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "loopback" | "localhost" | "127.0.0.1" => Ok(Bind::Loopback),
            "lan" | "0.0.0.0" => Ok(Bind::Lan),
            "auto" => Ok(Bind::Auto),
            other => Err(format!(
                "--bind {other:?} is not supported by the fake (loopback, lan, auto)"
            )),
        }
    }

    /// The mode as OpenClaw names it in its messages.
    pub fn name(self) -> &'static str {
        match self {
            Bind::Loopback => "loopback",
            Bind::Lan => "lan",
            Bind::Auto => "auto",
        }
    }

    pub fn ip(self) -> Ipv4Addr {
        match self {
            Bind::Loopback => Ipv4Addr::LOCALHOST,
            Bind::Lan | Bind::Auto => Ipv4Addr::UNSPECIFIED,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct GatewayArgs {
    /// `--bind`; loopback when absent.
    pub bind: Bind,
    /// `--port`; overrides the PORT variable.
    pub port: Option<u16>,
    /// Arguments the fake does not model (logged, not fatal: OpenClaw has many options).
    pub ignored: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// `healthcheck [--port N]`: probe /healthz on 127.0.0.1.
    Healthcheck {
        port: Option<u16>,
    },
    /// `caps`: print this process's `CapEff:` line (what `docker exec` gets in the container).
    Caps,
    Gateway(GatewayArgs),
}

/// Parses argv without the program name. `--bind`/`--port` may appear anywhere,
/// as `--bind lan` or `--bind=lan`.
pub fn parse(args: &[String]) -> Result<Command, String> {
    if args.first().map(String::as_str) == Some("caps") {
        return Ok(Command::Caps);
    }
    let healthcheck = args.first().map(String::as_str) == Some("healthcheck");
    let rest = if healthcheck { &args[1..] } else { args };
    let mut bind = None;
    let mut port = None;
    let mut ignored = Vec::new();
    let mut words = rest.iter();
    while let Some(arg) = words.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        match flag {
            "--bind" | "--port" => {
                let value = match inline {
                    Some(value) => value,
                    None => words.next().cloned().ok_or_else(|| format!("{flag} needs a value"))?,
                };
                if flag == "--bind" {
                    bind = Some(Bind::parse(&value)?);
                } else {
                    port = Some(parse_port(&value)?);
                }
            }
            word if PROGRAM_WORDS.contains(&word) => {}
            _ => ignored.push(arg.clone()),
        }
    }
    if healthcheck {
        return Ok(Command::Healthcheck { port });
    }
    Ok(Command::Gateway(GatewayArgs {
        bind: bind.unwrap_or(Bind::Loopback),
        port,
        ignored,
    }))
}

fn parse_port(value: &str) -> Result<u16, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("--port {value:?} is not a port number (0-65535)"))
}

/// OpenClaw refuses a non-loopback bind with no shared secret (token or password).
pub fn refuses_without_auth(bind: Bind, has_secret: bool) -> bool {
    bind != Bind::Loopback && !has_secret
}

/// The line OpenClaw prints (to stderr) when it refuses.
pub fn refusal_message(bind: Bind) -> String {
    format!(
        "Refusing to bind gateway to {} without auth. Set OPENCLAW_GATEWAY_TOKEN or OPENCLAW_GATEWAY_PASSWORD.",
        bind.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    fn gateway(bind: Bind, port: Option<u16>, ignored: &[&str]) -> Command {
        Command::Gateway(GatewayArgs {
            bind,
            port,
            ignored: ignored.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn parses_openclaw_commands() {
        let cases: &[(&str, Command)] = &[
            ("", gateway(Bind::Loopback, None, &[])),
            (
                "node dist/index.js gateway --bind lan --port 18789",
                gateway(Bind::Lan, Some(18789), &[]),
            ),
            ("node dist/index.js gateway", gateway(Bind::Loopback, None, &[])),
            ("--port=9 gateway --bind=auto", gateway(Bind::Auto, Some(9), &[])),
            (
                "gateway --bind loopback --port 1",
                gateway(Bind::Loopback, Some(1), &[]),
            ),
            ("gateway --bind LAN", gateway(Bind::Lan, None, &[])),
            ("gateway --bind 0.0.0.0", gateway(Bind::Lan, None, &[])),
            ("gateway --bind lan --bind loopback", gateway(Bind::Loopback, None, &[])),
            (
                "node dist/index.js gateway --allow-unconfigured --bind lan",
                gateway(Bind::Lan, None, &["--allow-unconfigured"]),
            ),
            ("healthcheck", Command::Healthcheck { port: None }),
            ("healthcheck --port 18789", Command::Healthcheck { port: Some(18789) }),
            // `healthcheck` is the subcommand only as the first word
            ("gateway healthcheck", gateway(Bind::Loopback, None, &["healthcheck"])),
        ];
        for (line, want) in cases {
            assert_eq!(&parse(&argv(line)).unwrap(), want, "argv {line:?}");
        }
    }

    #[test]
    fn rejects_bad_values() {
        for line in [
            "gateway --bind",
            "gateway --port",
            "gateway --port x",
            "gateway --port 70000",
            "gateway --bind tailnet",
            "gateway --bind=custom",
        ] {
            assert!(parse(&argv(line)).is_err(), "argv {line:?} should fail");
        }
    }

    #[test]
    fn bind_addresses() {
        assert_eq!(Bind::Loopback.ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(Bind::Lan.ip(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(Bind::Auto.ip(), Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn auth_refusal() {
        let cases = [
            (Bind::Loopback, false, false),
            (Bind::Loopback, true, false),
            (Bind::Lan, false, true),
            (Bind::Lan, true, false),
            (Bind::Auto, false, true),
            (Bind::Auto, true, false),
        ];
        for (bind, has_secret, refuses) in cases {
            assert_eq!(
                refuses_without_auth(bind, has_secret),
                refuses,
                "{bind:?} secret={has_secret}"
            );
        }
        assert_eq!(
            refusal_message(Bind::Lan),
            "Refusing to bind gateway to lan without auth. Set OPENCLAW_GATEWAY_TOKEN or OPENCLAW_GATEWAY_PASSWORD."
        );
    }
}
