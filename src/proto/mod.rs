//! Sans-IO protocol core: HTTP/1.1 request heads, the RFC 6455 handshake, frames, messages.
//!
//! Nothing here touches a socket, a clock or `unsafe`: callers hand in bytes and get back events,
//! the number of bytes consumed, and bytes to send.

pub mod close;
pub mod decoder;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod utf8;
