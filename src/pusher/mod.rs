//! Pusher Channels protocol v7, sans-IO: apps, channels, signatures, frames, presence and the
//! per-connection session. Never touches a socket, a clock or `unsafe`.

pub mod app;
pub mod auth;
pub mod channel;
pub mod path;
pub mod presence;
pub mod protocol;
pub mod session;
