//! ringcast: a real-time WebSocket server on Linux io_uring, built for massive fan-out.
//!
//! Module map (dependencies point one way, see ../shared/STYLE.md):
//! - [`proto`]: sans-IO RFC 6455 and HTTP/1.1 request parsing. No sockets, no clocks, no unsafe.

pub mod bench;
pub mod proto;
