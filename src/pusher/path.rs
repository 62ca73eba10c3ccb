//! The WebSocket request target `/app/{key}?protocol=7&client=js&version=8.4.0` and the checks
//! that admit a connection to an app; never reads a socket.
//!
//! Pusher protocol ("Connection"): the close codes 4001-4009 are sent after the WebSocket
//! handshake completes, as a `pusher:error` followed by a close frame with the same code, so
//! that clients can tell them apart from network failures.

use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::pusher::app::{App, Apps};
use crate::pusher::protocol::ErrorCode;

/// Protocol versions served. pusher-js 3..8 and the mobile SDKs send 7; 5 and 6 differ from 7
/// only in features this server also offers, so they are accepted rather than stranded.
pub const PROTOCOL_VERSIONS: RangeInclusive<u32> = 5..=7;

/// What a client asked for in its request target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectPath<'a> {
    pub app_key: &'a str,
    pub protocol: u32,
    /// The `client` parameter (`js`, `java`, ..), for metrics only.
    pub client: Option<&'a str>,
    /// The client library version, for metrics only.
    pub version: Option<&'a str>,
}

/// Parses a request target (path and query). Errors are the close code to send.
pub fn parse_path(target: &str) -> Result<ConnectPath<'_>, ErrorCode> {
    let target = target.split('#').next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let key = path.strip_prefix("/app/").ok_or(ErrorCode::PathNotFound)?;
    let key = key.strip_suffix('/').unwrap_or(key);
    if key.is_empty() || key.contains('/') {
        return Err(ErrorCode::PathNotFound);
    }
    let mut protocol = None;
    let mut client = None;
    let mut version = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "protocol" => protocol = Some(value),
            "client" => client = Some(value),
            "version" => version = Some(value),
            _ => {}
        }
    }
    let protocol = protocol.ok_or(ErrorCode::NoProtocolVersion)?;
    // At most 9 digits: a longer number is no version anyone speaks, and it cannot overflow.
    if protocol.is_empty() || protocol.len() > 9 || !protocol.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ErrorCode::InvalidVersionFormat);
    }
    let protocol: u32 = protocol
        .parse()
        .map_err(|_| ErrorCode::InvalidVersionFormat)?;
    if !PROTOCOL_VERSIONS.contains(&protocol) {
        return Err(ErrorCode::UnsupportedProtocolVersion);
    }
    Ok(ConnectPath {
        app_key: key,
        protocol,
        client,
        version,
    })
}

/// Decides whether a new connection may join an app, in Pusher's order: path, app, enabled,
/// origin, quota. `app_connection_count` is the app's open connections before this one.
pub fn admit(
    apps: &Apps,
    target: &str,
    origin: Option<&str>,
    app_connection_count: u32,
) -> Result<Arc<App>, ErrorCode> {
    let path = parse_path(target)?;
    let app = apps.by_key(path.app_key).ok_or(ErrorCode::AppNotFound)?;
    if !app.enabled {
        return Err(ErrorCode::AppDisabled);
    }
    if !app.allows_origin(origin) {
        return Err(ErrorCode::Unauthorized);
    }
    if app_connection_count >= app.max_connections {
        return Err(ErrorCode::OverConnectionQuota);
    }
    Ok(Arc::clone(app))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (request target, app key and protocol or the close code)
    type PathCase<'a> = (&'a str, Result<(&'a str, u32), ErrorCode>);
    /// (request target, Origin header, open connections, admitted app id or the close code)
    type AdmitCase<'a> = (&'a str, Option<&'a str>, u32, Result<&'a str, ErrorCode>);

    #[test]
    fn request_targets_parse_or_give_their_close_code() {
        let ok = |key, protocol| Ok((key, protocol));
        let cases: Vec<PathCase> = vec![
            (
                "/app/app-key?protocol=7&client=js&version=8.4.0&flash=false",
                ok("app-key", 7),
            ),
            ("/app/app-key/?protocol=7", ok("app-key", 7)),
            ("/app/k?client=js&protocol=5", ok("k", 5)),
            ("/app/k?protocol=7#frag", ok("k", 7)),
            ("/app/k?protocol=007", ok("k", 7)),
            ("/", Err(ErrorCode::PathNotFound)),
            ("/app/", Err(ErrorCode::PathNotFound)),
            ("/app", Err(ErrorCode::PathNotFound)),
            ("/apps/k?protocol=7", Err(ErrorCode::PathNotFound)),
            ("/app/k/extra?protocol=7", Err(ErrorCode::PathNotFound)),
            ("app/k?protocol=7", Err(ErrorCode::PathNotFound)),
            ("", Err(ErrorCode::PathNotFound)),
            ("/app/k", Err(ErrorCode::NoProtocolVersion)),
            ("/app/k?client=js", Err(ErrorCode::NoProtocolVersion)),
            ("/app/k?protocol", Err(ErrorCode::InvalidVersionFormat)),
            ("/app/k?protocol=", Err(ErrorCode::InvalidVersionFormat)),
            ("/app/k?protocol=7.0", Err(ErrorCode::InvalidVersionFormat)),
            ("/app/k?protocol=-7", Err(ErrorCode::InvalidVersionFormat)),
            (
                "/app/k?protocol=99999999999999999999",
                Err(ErrorCode::InvalidVersionFormat),
            ),
            (
                "/app/k?protocol=4",
                Err(ErrorCode::UnsupportedProtocolVersion),
            ),
            (
                "/app/k?protocol=8",
                Err(ErrorCode::UnsupportedProtocolVersion),
            ),
        ];
        for (target, want) in cases {
            let got = parse_path(target).map(|p| (p.app_key, p.protocol));
            assert_eq!(got, want, "{target:?}");
        }
    }

    #[test]
    fn client_and_version_are_reported() {
        let p = parse_path("/app/k?protocol=7&client=js&version=8.4.0").unwrap();
        assert_eq!((p.client, p.version), (Some("js"), Some("8.4.0")));
    }

    #[test]
    fn admission_checks_app_enabled_origin_and_quota_in_order() {
        let mut disabled = App::default_dev();
        disabled.id = "2".into();
        disabled.key = "off".into();
        disabled.enabled = false;
        let mut strict = App::default_dev();
        strict.id = "3".into();
        strict.key = "strict".into();
        strict.allowed_origins = vec!["https://a.example".into()];
        strict.max_connections = 2;
        let apps = Apps::new(vec![App::default_dev(), disabled, strict]).unwrap();
        let cases: Vec<AdmitCase> = vec![
            ("/app/app-key?protocol=7", None, 0, Ok("app-id")),
            ("/app/nope?protocol=7", None, 0, Err(ErrorCode::AppNotFound)),
            ("/app/off?protocol=7", None, 0, Err(ErrorCode::AppDisabled)),
            (
                "/app/off?protocol=1",
                None,
                0,
                Err(ErrorCode::UnsupportedProtocolVersion),
            ),
            (
                "/app/strict?protocol=7",
                Some("https://b.example"),
                0,
                Err(ErrorCode::Unauthorized),
            ),
            (
                "/app/strict?protocol=7",
                Some("https://a.example"),
                1,
                Ok("3"),
            ),
            (
                "/app/strict?protocol=7",
                Some("https://a.example"),
                2,
                Err(ErrorCode::OverConnectionQuota),
            ),
        ];
        for (target, origin, count, want) in cases {
            let got = admit(&apps, target, origin, count);
            assert_eq!(
                got.as_ref().map(|a| a.id.as_str()).map_err(|e| *e),
                want,
                "{target}"
            );
        }
    }
}
