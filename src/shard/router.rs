//! The HTTP front's routes: which requests upgrade to WebSocket and what the others get back.
//!
//! Pure functions of a parsed request and the server's configuration; no I/O.

use crate::config::ServerConfig;
use crate::proto::handshake::{self, Accept, HandshakeError};
use crate::proto::http::RequestHead;

/// What a WebSocket connection is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Every message comes back with its opcode.
    Echo,
}

/// The answer to one request.
pub enum Routed {
    /// Switch protocols: answer 101 with this accept value, then speak WebSocket.
    Upgrade(Endpoint, Accept),
    /// An upgrade request that failed validation: answer and close.
    Reject(HandshakeError),
    /// A plain HTTP response.
    Respond(Response),
}

pub struct Response {
    pub status: u16,
    pub headers: &'static [(&'static str, &'static str)],
    pub body: &'static [u8],
}

const TEXT: &[(&str, &str)] = &[("Content-Type", "text/plain; charset=utf-8")];

/// Routes one complete request (head and body).
/// `draining`: the server received SIGTERM and is closing connections (health turns 503 so
/// load balancers stop sending).
pub fn route(
    head: &RequestHead<'_, '_>,
    _body: &[u8],
    config: &ServerConfig,
    draining: bool,
) -> Routed {
    match head.path {
        "/health" => match head.method {
            "GET" if draining => Routed::Respond(Response {
                status: 503,
                headers: TEXT,
                body: b"draining",
            }),
            "GET" => Routed::Respond(Response {
                status: 200,
                headers: TEXT,
                body: b"ok",
            }),
            _ => method_not_allowed(),
        },
        "/echo" if config.echo => match handshake::validate(head) {
            Ok(accept) => Routed::Upgrade(Endpoint::Echo, accept),
            Err(e) => Routed::Reject(e),
        },
        _ => Routed::Respond(Response {
            status: 404,
            headers: TEXT,
            body: b"not found",
        }),
    }
}

fn method_not_allowed() -> Routed {
    Routed::Respond(Response {
        status: 405,
        headers: &[
            ("Allow", "GET"),
            ("Content-Type", "text/plain; charset=utf-8"),
        ],
        body: b"method not allowed",
    })
}
