//! ringcast: a real-time WebSocket server on Linux io_uring, built for massive fan-out.
//!
//! Module map (dependencies point one way, see ../shared/STYLE.md):
//! - [`proto`]: sans-IO RFC 6455 and HTTP/1.1 request parsing. No sockets, no clocks, no unsafe.
//! - [`config`]: every limit, with its default and what happens when it is hit.
//! - [`buf`]: memory shared with the kernel (the provided-buffer ring). `unsafe` allowed.
//! - [`driver`]: per-shard I/O (io_uring). Moves bytes, nothing else. `unsafe` allowed.
//! - [`shard`]: the thread-per-core loop: connections, timers, HTTP routes, WebSocket state.
//! - [`server`]: listeners, shard threads, signals.
//! - [`admin`]: the admin listener (`/stats`, `/ready`), off the public port.
//! - [`broker`]: per-core pub/sub: topic registries and the mesh of SPSC rings between shards.
//! - [`bench`]: the `ringcast bench` load generator (client side).
//! - [`pusher`]: sans-IO Pusher Channels v7: apps, channels, auth, presence, the session.
//! - [`http_api`]: sans-IO Pusher HTTP API: request signing, routes, responses, webhook bodies.
//! - [`ops`]: operations; [`ops::doctor`] checks the host against `tuning/README.md`.

pub mod admin;
pub mod bench;
pub mod broker;
#[allow(unsafe_code)]
pub mod buf;
pub mod config;
#[allow(unsafe_code)]
pub mod driver;
pub mod http_api;
pub mod hub;
pub mod ops;
pub mod proto;
pub mod pusher;
pub mod server;
pub mod settings;
pub mod shard;
pub mod webhook;

#[cfg(test)]
mod test_rng;
