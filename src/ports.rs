//! Port mappings as written in the config: `[host_ip:]host_port:container_port[/proto]` or a bare
//! `container_port`. Pure.

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Empty means all interfaces (avoid: OpenClaw's gateway should stay on loopback).
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: &'static str,
}

impl PortMapping {
    /// Docker's key for the container side, e.g. `18789/tcp`.
    pub fn container_key(&self) -> String {
        format!("{}/{}", self.container_port, self.protocol)
    }
}

/// Parses one mapping; the error says what is wrong.
pub fn parse(text: &str) -> Result<PortMapping, &'static str> {
    let (rest, protocol) = match text.rsplit_once('/') {
        Some((rest, "tcp")) => (rest, "tcp"),
        Some((rest, "udp")) => (rest, "udp"),
        Some(_) => return Err("protocol must be tcp or udp"),
        None => (text, "tcp"),
    };
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or("ports must be numbers from 1 to 65535")
    };
    // An IPv6 host address is bracketed: [::1]:8080:80
    let (host_ip, ports) = if let Some(stripped) = rest.strip_prefix('[') {
        let (ip, after) = stripped.split_once("]:").ok_or("unterminated [ in IPv6 address")?;
        (ip.to_string(), after)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            1 | 2 => (String::new(), rest),
            3 => (parts[0].to_string(), &rest[parts[0].len() + 1..]),
            _ => return Err("expected [host_ip:]host_port:container_port[/tcp|udp]"),
        }
    };
    if !host_ip.is_empty() && host_ip.parse::<std::net::IpAddr>().is_err() {
        return Err("host address must be an IP address");
    }
    let (host_port, container_port) = match ports.split_once(':') {
        Some((host, container)) => (port(host)?, port(container)?),
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_docker_forms() {
        let m = parse("127.0.0.1:18789:18789").expect("valid");
        assert_eq!(
            (m.host_ip.as_str(), m.host_port, m.container_port, m.protocol),
            ("127.0.0.1", 18789, 18789, "tcp")
        );
        assert_eq!(m.container_key(), "18789/tcp");
        let m = parse("8080:80/udp").expect("valid");
        assert_eq!(
            (m.host_ip.as_str(), m.host_port, m.container_port, m.protocol),
            ("", 8080, 80, "udp")
        );
        let m = parse("[::1]:8080:80").expect("valid");
        assert_eq!(m.host_ip, "::1");
        assert_eq!(parse("443").expect("valid").host_port, 443);
    }

    #[test]
    fn rejects_what_docker_would_reject() {
        for bad in [
            "",
            "0",
            "70000",
            "a:b",
            "1.2.3:80:80",
            "127.0.0.1:80:80/sctp",
            "1:2:3:4",
            "[::1:80:80",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
