//! One connection's record in its shard's slab: compact, with large or rare state out of line.
//!
//! It never performs I/O itself: the shard moves bytes through the driver and calls in here.

use std::os::fd::OwnedFd;

use super::router::Endpoint;
use super::sendq::QueueRef;
use super::timer::Tick;
use crate::proto::decoder::Decoder;

/// Bit flags of a connection's I/O state.
pub mod flag {
    /// A multishot receive is in flight.
    pub const RECV_ARMED: u16 = 1 << 0;
    /// A send is in flight (its buffers are owned by the driver).
    pub const SEND_INFLIGHT: u16 = 1 << 1;
    /// The socket has been shut down; the slot is freed once no operation is in flight.
    pub const SHUTDOWN: u16 = 1 << 2;
    /// Close the socket once the outbound queue has drained.
    pub const CLOSE_AFTER_FLUSH: u16 = 1 << 3;
    /// Queued on the shard's dirty list for this loop turn.
    pub const DIRTY: u16 = 1 << 4;
    /// Stop reading: input after this point is ignored (after a reject, a close, an error).
    pub const READ_DONE: u16 = 1 << 5;
    /// The peer closed its side (a read returned 0): never re-arm the receive.
    pub const PEER_EOF: u16 = 1 << 6;
    /// Our write side is shut (FIN sent after the last queued byte).
    pub const WRITE_SHUT: u16 = 1 << 7;
    /// Accepted over a connection limit only to be told so (503/429) and closed; it does not
    /// count against the limit.
    pub const REJECTING: u16 = 1 << 8;
    /// The server is draining: this connection's timer sends the going-away close.
    pub const DRAINING: u16 = 1 << 9;
    /// REJECTING for capacity: its first request is read so that a Pusher client (`/app/`)
    /// is told 4100 (over capacity) in its own protocol; anything else gets the 503.
    pub const OVER_CAPACITY: u16 = 1 << 10;
}

/// HTTP/1.1 state before an upgrade (and for plain requests).
pub struct Http {
    /// Bytes of an incomplete request, kept only while one is incomplete.
    pub pending: Option<Box<Vec<u8>>>,
    /// The head of the pending request is complete and its body is being read.
    pub awaiting_body: bool,
    /// At least one request was answered on this connection (idle vs. handshake timeout).
    pub answered: bool,
    /// A request was handed to the hub; its answer arrives as a message. Later requests wait
    /// in `pending` until then, so answers keep request order.
    pub awaiting_reply: bool,
    /// Whether the connection stays open after that answer.
    pub reply_keep_alive: bool,
}

/// WebSocket state after an upgrade.
pub struct WebSocket {
    pub decoder: Decoder,
    pub endpoint: Endpoint,
    pub close_sent: bool,
    pub close_received: bool,
    /// A liveness ping was sent and no traffic has arrived since.
    pub ping_outstanding: bool,
}

/// Inline rather than boxed: an upgraded idle connection then costs its slab record and nothing
/// else (the decoder keeps partial messages out of line only while they exist).
pub enum Phase {
    Http(Http),
    WebSocket(WebSocket),
}

pub struct Conn {
    pub fd: OwnedFd,
    pub generation: u32,
    pub flags: u16,
    /// The last tick bytes arrived (for the idle ping).
    pub last_activity: Tick,
    /// When this connection's timer fires (0: no timer).
    pub deadline: Tick,
    /// The tick of this connection's live wheel entry (0: none queued).
    pub queued_tick: Tick,
    /// Bytes in `outq` not yet handed to the driver plus those in flight.
    pub outq_bytes: u32,
    pub outq: QueueRef,
    pub phase: Phase,
}

impl Conn {
    pub fn new(fd: OwnedFd, generation: u32) -> Self {
        Self {
            fd,
            generation,
            flags: 0,
            last_activity: 0,
            deadline: 0,
            queued_tick: 0,
            outq_bytes: 0,
            outq: QueueRef::EMPTY,
            phase: Phase::Http(Http {
                pending: None,
                awaiting_body: false,
                answered: false,
                awaiting_reply: false,
                reply_keep_alive: false,
            }),
        }
    }

    /// A Pusher connection (`/app/{key}`): Pusher close codes apply to it.
    pub fn is_pusher(&self) -> bool {
        matches!(&self.phase, Phase::WebSocket(ws) if matches!(ws.endpoint, Endpoint::Pusher(_)))
    }

    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub fn set(&mut self, f: u16) {
        self.flags |= f;
    }

    pub fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connection_record_is_at_most_128_bytes() {
        assert!(
            std::mem::size_of::<Conn>() <= 128,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }

    #[test]
    fn record_size_is_reported() {
        eprintln!("size_of::<Conn>() = {}", std::mem::size_of::<Conn>());
    }
}
