//! Per-shard I/O drivers: they move bytes between sockets and the shard, nothing else.
//!
//! A driver is completion based: the shard asks it to accept, receive, send and shut down, and
//! [`Driver::poll`] reports what finished as [`Event`]s. The io_uring driver does this natively;
//! the interface is shaped so an epoll driver can emulate it (a proactor over readiness).
//! Drivers never parse protocol bytes and never decide when a connection closes.

pub mod epoll;
pub mod uring;

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Duration;

use crate::buf::OutBuf;

/// Identifies a connection slot and the generation of its current occupant, so a completion
/// that arrives for an earlier occupant of a reused slot is recognised and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub index: u32,
    /// Only the low 24 bits travel in io_uring user data.
    pub generation: u32,
}

/// Generations travel in 24 bits of the 64-bit tag a driver attaches to each operation.
pub const GEN_MASK: u32 = 0x00ff_ffff;

/// Packs an operation kind (8 bits), a connection generation (24 bits) and a slot index (32
/// bits) into the 64-bit tag io_uring user data and epoll event data carry.
pub fn pack_tag(kind: u64, generation: u32, index: u32) -> u64 {
    (kind << 56) | (u64::from(generation & GEN_MASK) << 32) | u64::from(index)
}

/// The inverse of [`pack_tag`]: (kind, generation, index).
pub fn unpack_tag(tag: u64) -> (u64, u32, u32) {
    (tag >> 56, ((tag >> 32) as u32) & GEN_MASK, tag as u32)
}

/// Why a multishot receive stopped producing data.
#[derive(Debug)]
pub enum RecvStop {
    /// The peer closed its side (a read of 0 bytes).
    Eof,
    /// The receive ended without an error (buffers ran out, or the kernel ended the multishot):
    /// re-arm it if the connection still wants bytes.
    Rearm,
    /// The receive was cancelled by us.
    Canceled,
    /// A socket error (ECONNRESET and friends).
    Error(io::Error),
}

/// One finished operation.
pub enum Event<'a> {
    /// A new connection from the listener, or an accept error (EMFILE, ENFILE, ...).
    Accepted(io::Result<OwnedFd>),
    /// Bytes arrived. The slice is only valid during the callback (it is a kernel buffer that goes
    /// straight back to the ring), so the shard consumes or copies what it needs.
    Received { key: ConnKey, data: &'a mut [u8] },
    /// The connection's receive is no longer armed.
    RecvStopped { key: ConnKey, why: RecvStop },
    /// A send finished: `result` is the byte count written or the error, and `unsent` holds the
    /// buffers (already advanced past what was written) that the shard must put back at the
    /// front of its queue, in order.
    Sent {
        key: ConnKey,
        result: io::Result<usize>,
        unsent: &'a mut Vec<OutBuf>,
    },
}

/// Which driver runs a shard. One per shard, so the size difference between variants is moot.
#[allow(clippy::large_enum_variant)]
pub enum Driver {
    Uring(uring::UringDriver),
    Epoll(epoll::EpollDriver),
}

/// The `--io` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring when the probe passes, else epoll (with one warning saying why).
    Auto,
    /// io_uring or nothing.
    Uring,
    /// epoll, even where io_uring works.
    Epoll,
}

/// Sizes a driver needs.
#[derive(Debug, Clone, Copy)]
pub struct DriverConfig {
    pub recv_buffer_count: u16,
    pub recv_buffer_bytes: u32,
    pub send_iovecs_max: usize,
}

/// Why io_uring cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UringUnavailable(pub String);

/// Probes io_uring once: sets up a ring and checks every opcode and feature the driver uses.
/// Explains a failure in terms an operator can act on.
pub fn probe_uring() -> Result<(), UringUnavailable> {
    let cfg = DriverConfig {
        recv_buffer_count: 2,
        recv_buffer_bytes: 512,
        send_iovecs_max: 1,
    };
    uring_driver(&cfg, 8).map(drop)
}

fn uring_driver(
    cfg: &DriverConfig,
    sq_entries: u32,
) -> Result<uring::UringDriver, UringUnavailable> {
    uring::UringDriver::new(uring::UringConfig {
        sq_entries,
        recv_buffer_count: cfg.recv_buffer_count,
        recv_buffer_bytes: cfg.recv_buffer_bytes,
        send_iovecs_max: cfg.send_iovecs_max,
    })
    .map_err(|e| UringUnavailable(explain_uring_error(&e)))
}

fn explain_uring_error(e: &io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|s| s.trim().to_string());
    match e.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring_setup returned ENOSYS: the kernel was built without \
             io_uring (or it is older than 5.1)"
            .to_string(),
        Some(libc::EPERM) if disabled.as_deref().is_some_and(|d| d != "0") => format!(
            "io_uring_setup returned EPERM: kernel.io_uring_disabled = {}",
            disabled.unwrap_or_default()
        ),
        Some(libc::EPERM) => "io_uring_setup returned EPERM: blocked by a seccomp filter \
             (Docker's and containerd's default profiles deny io_uring) or by \
             kernel.io_uring_group"
            .to_string(),
        _ => format!("io_uring setup failed: {e}"),
    }
}

impl Driver {
    /// Creates the driver for `mode` on the calling thread (rings are single-issuer).
    pub fn open(mode: IoMode, cfg: &DriverConfig) -> Result<Driver, UringUnavailable> {
        match mode {
            IoMode::Epoll => Ok(Driver::Epoll(epoll_driver(cfg)?)),
            IoMode::Uring => Ok(Driver::Uring(uring_driver(cfg, 4096)?)),
            // The server resolves Auto once with `probe_uring`, so shards agree; a shard handed
            // Auto anyway takes io_uring when it works.
            IoMode::Auto => match uring_driver(cfg, 4096) {
                Ok(d) => Ok(Driver::Uring(d)),
                Err(_) => Ok(Driver::Epoll(epoll_driver(cfg)?)),
            },
        }
    }

    /// A descriptor other shards pass to [`Driver::wake`] to wake this shard.
    pub fn wake_handle(&self) -> io::Result<OwnedFd> {
        match self {
            Driver::Uring(d) => d.wake_handle(),
            Driver::Epoll(d) => d.wake_handle(),
        }
    }

    /// Wakes the shard whose `wake_handle` is `target` (all shards run the same driver).
    pub fn wake(&mut self, target: RawFd) -> io::Result<()> {
        match self {
            Driver::Uring(d) => d.wake(target),
            Driver::Epoll(d) => d.wake(target),
        }
    }

    pub fn accept_armed(&self) -> bool {
        match self {
            Driver::Uring(d) => d.accept_armed(),
            Driver::Epoll(d) => d.accept_armed(),
        }
    }

    /// Starts accepting on `listener`.
    pub fn arm_accept(&mut self, listener: RawFd) -> io::Result<()> {
        match self {
            Driver::Uring(d) => d.arm_accept(listener),
            Driver::Epoll(d) => d.arm_accept(listener),
        }
    }

    /// Stops accepting (draining). The accept's last completion may still arrive.
    pub fn cancel_accept(&mut self) -> io::Result<()> {
        match self {
            Driver::Uring(d) => d.cancel_accept(),
            Driver::Epoll(d) => {
                d.cancel_accept();
                Ok(())
            }
        }
    }

    /// Starts (or restarts) receiving on `fd`.
    pub fn arm_recv(&mut self, key: ConnKey, fd: RawFd) -> io::Result<()> {
        match self {
            Driver::Uring(d) => d.arm_recv(key, fd),
            Driver::Epoll(d) => d.arm_recv(key, fd),
        }
    }

    /// Sends the buffers `next` yields (the front of a connection's queue), up to the driver's
    /// iovec limit, taking them out of the queue: the in-flight operation owns them until its
    /// [`Event::Sent`], which hands back what was not written. On an error nothing is in flight
    /// and the taken buffers are dropped (the caller closes the connection).
    pub fn send(
        &mut self,
        key: ConnKey,
        fd: RawFd,
        next: &mut dyn FnMut() -> Option<OutBuf>,
    ) -> io::Result<()> {
        match self {
            Driver::Uring(d) => d.send(key, fd, next),
            Driver::Epoll(d) => d.send(key, fd, next),
        }
    }

    /// Waits up to `timeout` for completions and hands each to `handler`, at most `max` per call.
    pub fn poll(
        &mut self,
        timeout: Duration,
        max: usize,
        handler: &mut dyn FnMut(Event<'_>),
    ) -> io::Result<()> {
        match self {
            Driver::Uring(d) => d.poll(timeout, max, handler),
            Driver::Epoll(d) => d.poll(timeout, max, handler),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Driver::Uring(_) => "io_uring",
            Driver::Epoll(_) => "epoll",
        }
    }
}

fn epoll_driver(cfg: &DriverConfig) -> Result<epoll::EpollDriver, UringUnavailable> {
    epoll::EpollDriver::new(epoll::EpollConfig {
        recv_buffer_bytes: cfg.recv_buffer_bytes,
        send_iovecs_max: cfg.send_iovecs_max,
    })
    .map_err(|e| UringUnavailable(format!("epoll setup failed: {e}")))
}
