//! Per-shard counters. The shard counts in plain integers on its own thread and publishes a
//! snapshot into relaxed atomics once per timer tick, so the hot path touches no shared memory;
//! readers (the admin listener) sum the snapshots at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// One shard's counters, owned and written by that shard only.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct ShardStats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        /// `(name, help text)` of every counter, for the Prometheus exposition.
        pub const HELP: &[(&str, &str)] = &[$((stringify!($name), concat!($($doc),*)),)*];

        /// The published copy of a shard's counters.
        #[derive(Debug, Default)]
        pub struct ShardCounters {
            $($name: AtomicU64,)*
        }

        impl ShardCounters {
            pub fn publish(&self, s: &ShardStats) {
                $(self.$name.store(s.$name, Ordering::Relaxed);)*
            }

            pub fn snapshot(&self) -> ShardStats {
                ShardStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl ShardStats {
            /// `(name, value)` pairs in declaration order, for JSON and metrics.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }

            /// Adds `other` field by field (totals over shards).
            pub fn add(&mut self, other: &ShardStats) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counters! {
    /// Connections open now (including those being refused).
    connections,
    /// Pusher connections admitted to an app (`/app/{key}`) since start.
    pusher_connections,
    /// Pusher connections refused after the handshake (close 4001-4009).
    pusher_refused,
    /// Pusher client events relayed.
    pusher_client_events,
    /// Pusher events published through the HTTP API (one per channel).
    pusher_events,
    /// Pusher connections closed by `terminate_connections`.
    pusher_terminated,
    /// Pusher subscriptions refused by an app's `max_channels`.
    pusher_channel_limit,
    /// Cache channels whose last event this shard keeps (a gauge).
    pusher_cache_entries,
    /// Cache channel events not kept because the shard's cache was full.
    pusher_cache_refused,
    /// Pusher HTTP API requests.
    api_requests,
    /// Pusher HTTP API requests refused (bad signature, malformed, over a limit).
    api_refused,
    /// Upgraded WebSocket connections open now.
    websockets,
    /// Connections accepted since start.
    accepted,
    /// Connections refused with 503 because a connection limit was reached.
    refused_over_limit,
    /// Connections refused with 429 by a per-IP limit.
    refused_per_ip,
    /// Connections closed without an answer because even the reject slots were full.
    refused_unanswered,
    /// accept() errors (EMFILE, ENFILE, ...).
    accept_errors,
    /// Completed WebSocket handshakes.
    handshakes,
    /// HTTP requests answered (not counting upgrades).
    http_requests,
    /// WebSocket data messages received.
    messages_in,
    /// Bytes received.
    bytes_in,
    /// Bytes handed to the kernel.
    bytes_out,
    /// Connections failed for a protocol error (close 1002/1007/1009).
    protocol_errors,
    /// Connections closed because their outbound queue passed its limit (slow readers).
    slow_consumer_closes,
    /// Connections closed to bring the shard back under its memory budget.
    budget_closes,
    /// Handshake, HTTP idle, body and close timeouts.
    timeouts,
    /// Liveness pings sent.
    pings_sent,
    /// Connections closed because a ping got no answer.
    pong_timeouts,
    /// Publishes accepted on this shard (WebSocket and HTTP).
    publishes,
    /// `POST /topics/{name}` requests.
    http_publishes,
    /// Frames queued to subscribers (one per subscriber per message).
    deliveries,
    /// Published frames received from other shards.
    mesh_in,
    /// Publishes refused because a shard-to-shard ring was full (503 or close 1013).
    mesh_full,
    /// Messages from /topics subscribers refused because client publishing is off (close 1008).
    client_publish_refused,
    /// Loop turns.
    loop_turns,
    /// Send operations submitted (each carries every frame queued for one connection, up to
    /// send_iovecs_max).
    sends,
    /// Loop turns that submitted at least one send (sends / send_batches = batch size).
    send_batches,
}

/// Counters that are levels, not running totals.
pub const GAUGES: &[&str] = &["connections", "websockets"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_snapshot_equals_the_counters() {
        let s = ShardStats {
            accepted: 3,
            bytes_in: 99,
            ..ShardStats::default()
        };
        let c = ShardCounters::default();
        c.publish(&s);
        assert_eq!(c.snapshot(), s);
    }

    #[test]
    fn totals_add_field_by_field() {
        let mut t = ShardStats {
            accepted: 1,
            ..ShardStats::default()
        };
        t.add(&ShardStats {
            accepted: 2,
            sends: 5,
            ..ShardStats::default()
        });
        assert_eq!((t.accepted, t.sends), (3, 5));
    }
}
