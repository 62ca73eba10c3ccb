//! `ws://` URL parsing for the load generator. Owns only string handling; never resolves names
//! (see [`WsUrl::resolve`]) and never accepts `wss://` (no TLS in the bench client).

use std::net::{SocketAddr, ToSocketAddrs};

/// A parsed `ws://HOST[:PORT][/PATH][?QUERY]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// Host as written, without brackets for IPv6 literals.
    pub host: String,
    /// TCP port; 80 when the URL has none (RFC 6455 §3).
    pub port: u16,
    /// Request target: path plus query, always starting with `/`.
    pub path: String,
}

/// Why a `--url` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Only `ws://` is supported; `wss://` would need TLS.
    #[error("unsupported scheme in {0:?}: only ws:// is supported (no TLS in the bench client)")]
    UnsupportedScheme(String),
    /// Nothing between `ws://` and the path.
    #[error("missing host")]
    MissingHost,
    /// The port is not a number in 1..=65535.
    #[error("bad port {0:?}")]
    BadPort(String),
    /// An IPv6 literal without its closing `]`.
    #[error("unterminated IPv6 literal")]
    UnterminatedIpv6,
    /// RFC 6455 §3: fragment identifiers are meaningless in WebSocket URIs and must not be used.
    #[error("fragment (#...) not allowed in a WebSocket URL")]
    Fragment,
    /// The name did not resolve to any address.
    #[error("cannot resolve {host}:{port}: {reason}")]
    Unresolved {
        /// Host that failed.
        host: String,
        /// Port that was asked for.
        port: u16,
        /// Resolver message.
        reason: String,
    },
}

impl WsUrl {
    /// Parses `ws://HOST[:PORT][/PATH]`. The scheme is case-insensitive (RFC 3986 §3.1).
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let rest = match url.get(..5) {
            Some(scheme) if scheme.eq_ignore_ascii_case("ws://") => &url[5..],
            _ => return Err(UrlError::UnsupportedScheme(url.to_owned())),
        };
        if rest.contains('#') {
            return Err(UrlError::Fragment);
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(authority_end);
        let path = if target.is_empty() {
            "/".to_owned()
        } else if target.starts_with('?') {
            format!("/{target}")
        } else {
            target.to_owned()
        };
        // Drop userinfo (`user@`): browsers do not send it in the handshake either.
        let authority = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        let (host, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
            let close = bracketed.find(']').ok_or(UrlError::UnterminatedIpv6)?;
            let after = &bracketed[close + 1..];
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(UrlError::BadPort(after.to_owned())),
            };
            (&bracketed[..close], port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        let port = match port_text {
            None => 80,
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(UrlError::BadPort(text.to_owned())),
            },
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// The `Host` header value (RFC 7230 §5.4): the port is omitted when it is the default 80.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Resolves the host once, before any worker starts. Prefers IPv4.
    pub fn resolve(&self) -> Result<SocketAddr, UrlError> {
        let unresolved = |reason: String| UrlError::Unresolved {
            host: self.host.clone(),
            port: self.port,
            reason,
        };
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| unresolved(e.to_string()))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| unresolved("no addresses".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, path: &str) -> WsUrl {
        WsUrl {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        }
    }

    #[test]
    fn host_port_and_path_are_split() {
        assert_eq!(
            WsUrl::parse("ws://127.0.0.1:6001/echo").unwrap(),
            url("127.0.0.1", 6001, "/echo")
        );
        assert_eq!(
            WsUrl::parse("WS://localhost:9/a/b?x=1&y").unwrap(),
            url("localhost", 9, "/a/b?x=1&y")
        );
    }

    #[test]
    fn missing_port_is_80_and_missing_path_is_slash() {
        assert_eq!(
            WsUrl::parse("ws://example").unwrap(),
            url("example", 80, "/")
        );
        assert_eq!(WsUrl::parse("ws://h:81?q").unwrap(), url("h", 81, "/?q"));
    }

    #[test]
    fn ipv6_literal_keeps_brackets_only_in_host_header() {
        let u = WsUrl::parse("ws://[::1]:7000/x").unwrap();
        assert_eq!(u, url("::1", 7000, "/x"));
        assert_eq!(u.host_header(), "[::1]:7000");
        assert_eq!(WsUrl::parse("ws://[::1]/").unwrap().port, 80);
        assert_eq!(WsUrl::parse("ws://[::1"), Err(UrlError::UnterminatedIpv6));
    }

    #[test]
    fn host_header_omits_default_port() {
        assert_eq!(WsUrl::parse("ws://h/").unwrap().host_header(), "h");
        assert_eq!(
            WsUrl::parse("ws://h:8080/").unwrap().host_header(),
            "h:8080"
        );
    }

    #[test]
    fn bad_urls_are_rejected_with_the_broken_rule() {
        assert!(matches!(
            WsUrl::parse("wss://h/"),
            Err(UrlError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            WsUrl::parse("http://h/"),
            Err(UrlError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            WsUrl::parse("ws"),
            Err(UrlError::UnsupportedScheme(_))
        ));
        assert_eq!(WsUrl::parse("ws:///path"), Err(UrlError::MissingHost));
        assert_eq!(WsUrl::parse("ws://:80/"), Err(UrlError::MissingHost));
        assert_eq!(
            WsUrl::parse("ws://h:0/"),
            Err(UrlError::BadPort("0".into()))
        );
        assert_eq!(
            WsUrl::parse("ws://h:99999/"),
            Err(UrlError::BadPort("99999".into()))
        );
        assert_eq!(
            WsUrl::parse("ws://h:x/"),
            Err(UrlError::BadPort("x".into()))
        );
        assert_eq!(WsUrl::parse("ws://h/#frag"), Err(UrlError::Fragment));
    }

    #[test]
    fn loopback_literal_resolves_without_dns() {
        let addr = WsUrl::parse("ws://127.0.0.1:6001/")
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(addr, "127.0.0.1:6001".parse().unwrap());
    }
}
