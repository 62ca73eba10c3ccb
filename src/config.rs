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
    /// Most frames in one fragmented message. Default 65,536. Over it: close 1009.
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
    /// Most iovecs gathered into one send. Default 64 (IOV_MAX is 1024). Bounds per-send work.
    pub send_iovecs_max: usize,
    /// Receive buffers in a shard's provided-buffer ring (a power of two). Default 256.
    /// When all are in use the kernel ends multishot receives (ENOBUFS) and they are re-armed
    /// once buffers return, so this bounds receive memory per shard, not per connection.
    pub recv_buffer_count: u16,
    /// Size of each receive buffer, bytes. Default 16 KiB.
    pub recv_buffer_bytes: u32,
    /// Connections one shard holds at once. Default 16,384. Beyond it: accepted sockets are
    /// closed at once (the engine issue turns this into a 503).
    pub connections_per_shard_max: u32,
    /// Completions handled per loop turn before timers and flushes run. Default 4096.
    pub completions_per_turn_max: usize,
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
            send_iovecs_max: 64,
            recv_buffer_count: 256,
            recv_buffer_bytes: 16 * 1024,
            connections_per_shard_max: 16_384,
            completions_per_turn_max: 4096,
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

impl Limits {
    /// Checks the relations between limits. Called once at startup.
    pub fn validate(&self) -> Result<(), LimitError> {
        fn err(key: &'static str, reason: impl Into<String>) -> Result<(), LimitError> {
            Err(LimitError { key, reason: reason.into() })
        }
        if self.frame_bytes_max == 0 {
            return err("max_frame_bytes", "must be at least 1");
        }
        if self.message_bytes_max == 0 {
            return err("max_message_bytes", "must be at least 1");
        }
        if self.message_fragments_max == 0 {
            return err("max_message_fragments", "must be at least 1");
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
        if self.connections_per_shard_max == 0 {
            return err("max_connections_per_shard", "must be at least 1");
        }
        for (key, v) in [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("http_idle_timeout_ms", self.http_idle_timeout_ms),
            ("http_body_timeout_ms", self.http_body_timeout_ms),
            ("close_timeout_ms", self.close_timeout_ms),
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
    fn zero_timeout_is_rejected_by_name() {
        let l = Limits { close_timeout_ms: 0, ..Limits::default() };
        assert_eq!(l.validate().unwrap_err().key, "close_timeout_ms");
    }

    #[test]
    fn non_power_of_two_buffer_count_is_rejected() {
        let l = Limits { recv_buffer_count: 300, ..Limits::default() };
        assert_eq!(l.validate().unwrap_err().key, "recv_buffer_count");
    }
}
