//! Configuration: every bound the server enforces, with its default, unit and rationale.
//!
//! This module owns the numbers; it never performs I/O beyond what `main` hands it.

use crate::proto::decoder::DecoderLimits;
use crate::proto::http::{HEADER_COUNT_CEILING, HttpLimits};

/// Every limit of the server. Each field says its unit, default and what happens when it is hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket message after reassembly, bytes. Default 1 MiB. Over it: close 1009.
    pub message_bytes_max: u64,
    /// Largest single WebSocket frame payload, bytes. Default 1 MiB. Over it: close 1009.
    pub frame_bytes_max: u64,
    /// Most continuation frames in one fragmented message. Default 65,536. Over it: close 1009.
    pub message_fragments_max: u32,
    /// Largest HTTP request head (request line and headers), bytes. Default 8 KiB. Over it: 431.
    pub header_bytes_max: usize,
    /// Most header lines in an HTTP request head. Default 64. Over it: 431.
    pub header_count_max: usize,
    /// Largest HTTP request body, bytes. Default 1 MiB. Over it: 413 and the connection closes.
    pub body_bytes_max: usize,
    /// Time allowed from accept to a complete first request head, ms. Default 10 s. Hit: TCP close.
    pub handshake_timeout_ms: u32,
    /// Time a keep-alive HTTP connection may sit between requests, ms. Default 30 s. Hit: TCP close.
    pub http_idle_timeout_ms: u32,
    /// Time allowed to receive a request body once its head arrived, ms. Default 10 s. Hit: TCP close.
    pub http_body_timeout_ms: u32,
    /// Time the server waits for the peer's close frame after sending its own, ms. Default 5 s.
    /// Hit: TCP close without the handshake.
    pub close_timeout_ms: u32,
    /// Outbound bytes queued for one connection, bytes. Default 1 MiB. Over it: the connection is
    /// closed (1008 for WebSocket), because a reader that far behind would grow memory unbounded.
    pub outbound_bytes_max: usize,
    /// Most buffers gathered into one send. Default 1024 (IOV_MAX): every frame queued for a
    /// subscriber leaves in one send, because the kernel's cost per send (about 1 µs on
    /// loopback) dwarfs the rest of a delivery. Bounds per-send work.
    pub send_iovecs_max: usize,
    /// Receive buffers in a shard's provided-buffer ring (a power of two). Default 256.
    /// When all are in use the kernel ends multishot receives (ENOBUFS) and they are re-armed
    /// once buffers return, so this bounds receive memory per shard, not per connection.
    pub recv_buffer_count: u16,
    /// Size of each receive buffer, bytes. Default 16 KiB.
    pub recv_buffer_bytes: u32,
    /// Connections the whole server holds at once. Default: the open-file limit minus a reserve
    /// for listeners, rings and rejections (see [`Limits::for_host`]). Beyond it (or beyond
    /// the per-shard share): HTTP 503 before any upgrade, then close.
    pub connections_max: u32,
    /// Connections one shard holds at once. Default: `connections_max` divided by the shard
    /// count, rounded up. Beyond it: 503 as above.
    pub connections_per_shard_max: u32,
    /// Connections a shard accepts past its limit only to answer 503 (or 429) and close them;
    /// more than this are closed without an answer. Default 256.
    pub reject_overflow_max: u32,
    /// Concurrent connections from one IP address per shard. Default 0 = off (behind a proxy
    /// every client shares one address). Over it: 429 before the upgrade, then close.
    pub connections_per_ip_max: u32,
    /// New connections per second from one IP address per shard. Default 0 = off. Over it: 429.
    pub handshakes_per_ip_per_s: u32,
    /// A WebSocket connection silent this long gets a ping, ms. Default 60 s.
    pub idle_ping_ms: u32,
    /// Time a pinged connection has to answer (any inbound traffic counts), ms. Default 30 s.
    /// Hit: TCP close.
    pub pong_timeout_ms: u32,
    /// On SIGTERM/SIGINT: time to wait for connections to finish their close handshakes, ms.
    /// Default 10 s. Going-away closes are spread over the first half. Hit: exit anyway.
    pub drain_timeout_ms: u32,
    /// Bytes a shard may hold for queued outbound data and message reassembly together.
    /// Default 256 MiB. Over it: the connections holding the most are closed first until the
    /// shard is back under budget (counted as `budget_closes`).
    pub memory_budget_bytes: u64,
    /// Completions handled per loop turn before timers and flushes run. Default 4096.
    pub completions_per_turn_max: usize,
    /// Messages each shard-to-shard ring holds. Default 8192. Full: a publish that needs it is
    /// refused (HTTP 503 with Retry-After, or close 1013 for a WebSocket publisher), counted.
    pub mesh_ring_capacity: u32,
    /// Messages taken from the mesh rings per loop turn. Default 4096; the rest wait a turn.
    pub mesh_messages_per_turn_max: u32,
    /// Messages each ring between a shard and the hub holds (both directions). Default 8192;
    /// full: messages wait in a backlog.
    pub hub_ring_capacity: u32,
    /// Messages a ring's backlog holds. Default 65,536. Full: the message is dropped, counted
    /// (`hub_dropped`) and logged.
    pub hub_backlog_max: u32,
    /// Deliveries (frames queued to subscribers) per loop turn. Default 4,096: a larger
    /// fan-out continues on the next turn, so one hot topic cannot starve the shard, and a
    /// publish arriving meanwhile joins the walk sooner (lower latency at steady rates).
    pub fanout_deliveries_per_turn_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            message_bytes_max: 1 << 20,
            frame_bytes_max: 1 << 20,
            message_fragments_max: 65_536,
            header_bytes_max: 8 * 1024,
            header_count_max: 64,
            body_bytes_max: 1 << 20,
            handshake_timeout_ms: 10_000,
            http_idle_timeout_ms: 30_000,
            http_body_timeout_ms: 10_000,
            close_timeout_ms: 5_000,
            outbound_bytes_max: 1 << 20,
            send_iovecs_max: 1024,
            recv_buffer_count: 256,
            recv_buffer_bytes: 16 * 1024,
            connections_max: 16_384,
            connections_per_shard_max: 16_384,
            reject_overflow_max: 256,
            connections_per_ip_max: 0,
            handshakes_per_ip_per_s: 0,
            idle_ping_ms: 60_000,
            pong_timeout_ms: 30_000,
            drain_timeout_ms: 10_000,
            memory_budget_bytes: 256 << 20,
            completions_per_turn_max: 4096,
            mesh_ring_capacity: 8192,
            mesh_messages_per_turn_max: 4096,
            hub_ring_capacity: 8192,
            hub_backlog_max: 65_536,
            fanout_deliveries_per_turn_max: 4096,
        }
    }
}

/// A limit that cannot work, named by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for {key}: {reason}")]
pub struct LimitError {
    pub key: &'static str,
    pub reason: String,
}

/// Descriptors kept back from connections: stdio, logs, the admin listener, and per shard its
/// listener, ring or epoll instance and eventfd.
pub const FD_RESERVE_BASE: u64 = 64;
pub const FD_RESERVE_PER_SHARD: u64 = 8;

impl Limits {
    /// Defaults for this host: the connection limits follow from the open-file limit `nofile`
    /// (RLIMIT_NOFILE soft) so that the server starts cleanly anywhere and never runs out of
    /// descriptors for its own use. Returns the limits and a sentence saying how the connection
    /// limit was derived, for the startup log.
    pub fn for_host(nofile: u64, shards: u32) -> (Self, String) {
        let base = Self::default();
        let shards64 = u64::from(shards.max(1));
        let reserve = FD_RESERVE_BASE
            + shards64 * (FD_RESERVE_PER_SHARD + u64::from(base.reject_overflow_max));
        let total = nofile.saturating_sub(reserve).clamp(1, u64::from(u32::MAX)) as u32;
        let why = format!(
            "connection limit {total} = open-file limit {nofile} - reserve {reserve} \
             ({FD_RESERVE_BASE} + {shards} shards x ({FD_RESERVE_PER_SHARD} + {} reject slots))",
            base.reject_overflow_max
        );
        (
            Self {
                connections_max: total,
                ..base
            }
            .with_per_shard_share(shards),
            why,
        )
    }

    /// Sets the per-shard share of `connections_max`.
    pub fn with_per_shard_share(self, shards: u32) -> Self {
        let per = self.connections_max.div_ceil(shards.max(1)).max(1);
        Self {
            connections_per_shard_max: per,
            ..self
        }
    }

    /// Checks the relations between limits. Called once at startup.
    pub fn validate(&self) -> Result<(), LimitError> {
        fn err(key: &'static str, reason: impl Into<String>) -> Result<(), LimitError> {
            Err(LimitError {
                key,
                reason: reason.into(),
            })
        }
        if self.frame_bytes_max == 0 {
            return err("max_frame_bytes", "must be at least 1");
        }
        if self.message_bytes_max == 0 {
            return err("max_message_bytes", "must be at least 1");
        }
        if self.header_bytes_max < 64 {
            return err("max_header_bytes", "must be at least 64");
        }
        if self.header_count_max == 0 || self.header_count_max > HEADER_COUNT_CEILING {
            return err(
                "max_headers",
                format!("must be between 1 and {HEADER_COUNT_CEILING}"),
            );
        }
        if !self.recv_buffer_count.is_power_of_two() || self.recv_buffer_count > 32_768 {
            return err("recv_buffer_count", "must be a power of two up to 32768");
        }
        if self.recv_buffer_bytes < 512 {
            return err("recv_buffer_bytes", "must be at least 512");
        }
        if self.send_iovecs_max == 0 || self.send_iovecs_max > 1024 {
            return err("send_iovecs_max", "must be between 1 and 1024 (IOV_MAX)");
        }
        if self.outbound_bytes_max < 256 {
            return err("max_outbound_bytes", "must be at least 256");
        }
        if self.mesh_ring_capacity < 16 {
            return err("mesh_ring_capacity", "must be at least 16");
        }
        if self.hub_ring_capacity < 16 {
            return err("hub_ring_capacity", "must be at least 16");
        }
        if self.mesh_messages_per_turn_max == 0 {
            return err("mesh_messages_per_turn_max", "must be at least 1");
        }
        if self.fanout_deliveries_per_turn_max == 0 {
            return err("fanout_deliveries_per_turn_max", "must be at least 1");
        }
        if self.connections_max == 0 {
            return err("max_connections", "must be at least 1");
        }
        if self.connections_per_shard_max == 0 {
            return err("max_connections_per_shard", "must be at least 1");
        }
        if self.connections_per_shard_max > self.connections_max {
            return err(
                "max_connections_per_shard",
                "must not exceed max_connections",
            );
        }
        if self.memory_budget_bytes < self.outbound_bytes_max as u64 {
            return err("memory_budget_bytes", "must be at least max_outbound_bytes");
        }
        for (key, v) in [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("http_idle_timeout_ms", self.http_idle_timeout_ms),
            ("http_body_timeout_ms", self.http_body_timeout_ms),
            ("close_timeout_ms", self.close_timeout_ms),
            ("idle_ping_ms", self.idle_ping_ms),
            ("pong_timeout_ms", self.pong_timeout_ms),
            ("drain_timeout_ms", self.drain_timeout_ms),
        ] {
            if v == 0 {
                return err(key, "must be at least 1 ms");
            }
        }
        Ok(())
    }

    pub fn decoder(&self) -> DecoderLimits {
        DecoderLimits {
            frame_bytes_max: self.frame_bytes_max,
            message_bytes_max: self.message_bytes_max,
            message_fragments_max: self.message_fragments_max,
        }
    }

    pub fn http(&self) -> HttpLimits {
        HttpLimits {
            header_bytes_max: self.header_bytes_max,
            header_count_max: self.header_count_max,
            body_bytes_max: self.body_bytes_max,
        }
    }
}

/// What a server serves, beside its limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: std::net::SocketAddr,
    /// `/echo` endpoint on (each message comes back with its opcode).
    pub echo: bool,
    /// Which I/O driver the shards use.
    pub io: crate::driver::IoMode,
    /// A message a `/topics/{name}` subscriber sends goes to the topic's other subscribers.
    /// Off: such a message closes the connection with 1008.
    pub allow_client_publish: bool,
    /// Bearer token `POST /topics/{name}` requires. None: publishing over HTTP is refused (403).
    pub publish_token: Option<String>,
    /// Pusher apps served at `/app/{key}` and `/apps/{id}/...`.
    pub apps: std::sync::Arc<crate::pusher::app::Apps>,
    pub limits: Limits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_valid() {
        Limits::default().validate().unwrap();
    }

    #[test]
    fn host_defaults_leave_a_descriptor_reserve() {
        let (l, why) = Limits::for_host(20_000, 2);
        assert_eq!(l.connections_max, 20_000 - 64 - 2 * (8 + 256));
        assert_eq!(l.connections_per_shard_max, l.connections_max.div_ceil(2));
        assert!(why.contains("20000"));
        l.validate().unwrap();
    }

    #[test]
    fn tiny_open_file_limit_still_gives_a_valid_limit() {
        let (l, _) = Limits::for_host(10, 4);
        assert_eq!(l.connections_max, 1);
        l.validate().unwrap();
    }

    #[test]
    fn zero_timeout_is_rejected_by_name() {
        let l = Limits {
            close_timeout_ms: 0,
            ..Limits::default()
        };
        assert_eq!(l.validate().unwrap_err().key, "close_timeout_ms");
    }

    #[test]
    fn non_power_of_two_buffer_count_is_rejected() {
        let l = Limits {
            recv_buffer_count: 300,
            ..Limits::default()
        };
        assert_eq!(l.validate().unwrap_err().key, "recv_buffer_count");
    }
}
