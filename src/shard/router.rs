//! The HTTP front's routes: which requests upgrade to WebSocket and what the others get back.
//!
//! Pure functions of a parsed request and the server's configuration; no I/O.

use crate::broker::topic::TopicId;
use crate::broker::{TOPIC_NAME_BYTES_MAX, is_valid_topic_name};
use crate::config::ServerConfig;
use crate::proto::handshake::{self, Accept, HandshakeError};
use crate::proto::http::RequestHead;
use crate::shard::pusher::PusherConn;

/// What a WebSocket connection is attached to.
#[derive(Debug)]
pub enum Endpoint {
    /// Every message comes back with its opcode.
    Echo,
    /// Subscribed to a topic; `slot` is its place in the topic's subscriber list.
    Topic { id: TopicId, slot: u32 },
    /// A Pusher protocol connection (`/app/{key}`); its state lives out of line, so idle raw
    /// connections do not pay for it.
    Pusher(Box<PusherConn>),
}

/// Where an accepted upgrade goes.
#[derive(Debug, PartialEq, Eq)]
pub enum UpgradeTo<'a> {
    Echo,
    Topic(&'a str),
    /// `/app/{key}?protocol=7...`: the path, the query and the `Origin` header.
    Pusher {
        path: &'a str,
        query: &'a str,
        origin: Option<&'a str>,
    },
}

/// The answer to one request.
pub enum Routed<'a> {
    /// Switch protocols: answer 101 with this accept value, then speak WebSocket.
    Upgrade(UpgradeTo<'a>, Accept),
    /// An upgrade request that failed validation: answer and close.
    Reject(HandshakeError),
    /// Publish `body` to `topic` (authorised and within limits); the shard answers 202 or 503.
    Publish { topic: &'a str, body: &'a [u8] },
    /// A Pusher HTTP API request (`/apps/...`); the shard authenticates and serves it.
    Api {
        method: &'a str,
        path: &'a str,
        query: &'a str,
        body: &'a [u8],
    },
    /// A plain HTTP response.
    Respond(Response),
}

pub struct Response {
    pub status: u16,
    pub headers: &'static [(&'static str, &'static str)],
    pub body: &'static [u8],
}

const TEXT: &[(&str, &str)] = &[("Content-Type", "text/plain; charset=utf-8")];
const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];

fn respond(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
) -> Routed<'static> {
    Routed::Respond(Response {
        status,
        headers,
        body,
    })
}

/// Routes one complete request (head and body). `draining`: the server received SIGTERM and is
/// closing connections (health turns 503 so load balancers stop sending).
pub fn route<'a>(
    head: &RequestHead<'_, 'a>,
    body: &'a [u8],
    config: &ServerConfig,
    draining: bool,
) -> Routed<'a> {
    let path = head.path;
    if path == "/health" {
        return match head.method {
            "GET" if draining => respond(503, TEXT, b"draining"),
            "GET" => respond(200, TEXT, b"ok"),
            _ => method_not_allowed("GET"),
        };
    }
    if path == "/echo" && config.echo {
        return upgrade(head, UpgradeTo::Echo);
    }
    if path.starts_with("/app/") {
        return pusher_upgrade(head, config);
    }
    if path.starts_with("/apps/") {
        return Routed::Api {
            method: head.method,
            path,
            query: head.query.unwrap_or(""),
            body,
        };
    }
    if let Some(name) = path.strip_prefix("/topics/") {
        if !is_valid_topic_name(name) {
            return respond(
                400,
                JSON,
                b"{\"error\":\"bad topic name: 1 to 164 characters of A-Z a-z 0-9 _ - = @ , . ;\"}",
            );
        }
        debug_assert!(name.len() <= TOPIC_NAME_BYTES_MAX);
        return match head.method {
            "GET" => upgrade(head, UpgradeTo::Topic(name)),
            "POST" => publish(head, name, body, config),
            _ => method_not_allowed("GET, POST"),
        };
    }
    respond(404, TEXT, b"not found")
}

/// `/app/{key}`: the Pusher endpoint. Pusher reports its refusals (unknown app, bad version)
/// after the handshake, as close codes, so only a browser from an origin the app does not allow
/// is refused here (403, before the upgrade).
fn pusher_upgrade<'a>(head: &RequestHead<'_, 'a>, config: &ServerConfig) -> Routed<'a> {
    let origin = head
        .header("origin")
        .and_then(|o| std::str::from_utf8(o).ok());
    let key = head.path["/app/".len()..].trim_end_matches('/');
    if let Some(app) = config.apps.by_key(key)
        && !app.allows_origin(origin)
    {
        return respond(
            403,
            JSON,
            b"{\"error\":\"this Origin is not in the app's allowed_origins\"}",
        );
    }
    let query = head.query.unwrap_or("");
    upgrade(
        head,
        UpgradeTo::Pusher {
            path: head.path,
            query,
            origin,
        },
    )
}

fn upgrade<'a>(head: &RequestHead<'_, 'a>, to: UpgradeTo<'a>) -> Routed<'a> {
    match handshake::validate(head) {
        Ok(accept) => Routed::Upgrade(to, accept),
        Err(e) => Routed::Reject(e),
    }
}

fn publish<'a>(
    head: &RequestHead<'_, 'a>,
    topic: &'a str,
    body: &'a [u8],
    config: &ServerConfig,
) -> Routed<'a> {
    let Some(token) = config.publish_token.as_deref() else {
        return respond(
            403,
            JSON,
            b"{\"error\":\"HTTP publishing is disabled: set publish_token (--publish-token or RINGCAST_PUBLISH_TOKEN) to enable it\"}",
        );
    };
    let given = head
        .header("authorization")
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .map(|v| v.trim_ascii());
    match given {
        Some(given) if constant_time_eq(given, token.as_bytes()) => {}
        _ => {
            return respond(
                401,
                &[
                    ("Content-Type", "application/json"),
                    ("WWW-Authenticate", "Bearer"),
                ],
                b"{\"error\":\"missing or wrong bearer token\"}",
            );
        }
    }
    if body.len() as u64 > config.limits.message_bytes_max {
        return respond(
            413,
            JSON,
            b"{\"error\":\"message larger than max_message_bytes\"}",
        );
    }
    Routed::Publish { topic, body }
}

/// Compares secrets without an early exit, so timing does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn method_not_allowed(allow: &'static str) -> Routed<'static> {
    let headers: &'static [(&'static str, &'static str)] = match allow {
        "GET" => &[
            ("Allow", "GET"),
            ("Content-Type", "text/plain; charset=utf-8"),
        ],
        _ => &[
            ("Allow", "GET, POST"),
            ("Content-Type", "text/plain; charset=utf-8"),
        ],
    };
    respond(405, headers, b"method not allowed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::proto::http::{HEADER_COUNT_CEILING, HttpLimits, parse_head};

    fn config(token: Option<&str>) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            echo: true,
            io: crate::driver::IoMode::Auto,
            allow_client_publish: false,
            publish_token: token.map(String::from),
            apps: std::sync::Arc::new(
                crate::pusher::app::Apps::new(vec![crate::pusher::app::App::default_dev()])
                    .unwrap(),
            ),
            limits: Limits {
                message_bytes_max: 8,
                ..Limits::default()
            },
        }
    }

    fn status_of(req: &[u8], cfg: &ServerConfig) -> u16 {
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        let head = parse_head(req, &mut headers, &HttpLimits::DEFAULT)
            .unwrap()
            .unwrap();
        let body = &req[head.head_len..head.head_len + head.content_length];
        match route(&head, body, cfg, false) {
            Routed::Respond(r) => r.status,
            Routed::Publish { .. } => 202,
            Routed::Api { .. } => 200,
            Routed::Upgrade(..) => 101,
            Routed::Reject(e) => e.status(),
        }
    }

    #[test]
    fn publish_needs_the_configured_bearer_token() {
        let post = |auth: &str, body: &str| {
            format!(
                "POST /topics/t HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let cfg = config(Some("s3cret"));
        assert_eq!(
            status_of(
                post("Authorization: Bearer s3cret\r\n", "hi").as_bytes(),
                &cfg
            ),
            202
        );
        assert_eq!(
            status_of(
                post("Authorization: Bearer s3cre7\r\n", "hi").as_bytes(),
                &cfg
            ),
            401
        );
        assert_eq!(status_of(post("", "hi").as_bytes(), &cfg), 401);
        assert_eq!(
            status_of(
                post("Authorization: Bearer s3cret\r\n", "123456789").as_bytes(),
                &cfg
            ),
            413
        );
        assert_eq!(
            status_of(
                post("Authorization: Bearer s3cret\r\n", "hi").as_bytes(),
                &config(None)
            ),
            403
        );
    }

    #[test]
    fn bad_topic_names_get_400_before_the_upgrade() {
        let cfg = config(None);
        assert_eq!(
            status_of(b"GET /topics/a%20b HTTP/1.1\r\nHost: x\r\n\r\n", &cfg),
            400
        );
        assert_eq!(
            status_of(b"GET /topics/ HTTP/1.1\r\nHost: x\r\n\r\n", &cfg),
            400
        );
        let long = format!(
            "GET /topics/{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(165)
        );
        assert_eq!(status_of(long.as_bytes(), &cfg), 400);
        assert_eq!(
            status_of(b"DELETE /topics/a HTTP/1.1\r\nHost: x\r\n\r\n", &cfg),
            405
        );
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
