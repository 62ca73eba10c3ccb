//! The io_uring driver (Linux 6.0+ for multishot receive with provided buffers).
//!
//! Multishot accept (5.19) on the shard's listener; one multishot receive (6.0) per connection
//! drawing from the shard's provided-buffer ring (5.19), so an idle connection pins no receive
//! buffer; `SENDMSG` (5.3) with an iovec per queued buffer, so every frame queued for a
//! connection leaves in one send. All SQEs are queued and submitted together once per loop turn.
//!
//! The kernel-ownership rule: once a buffer's address is in an SQE, the op table (`sends`) owns
//! that buffer until the CQE is reaped, even if the connection closes first.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::buf::OutBuf;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;

use super::{ConnKey, Event, RecvStop};
use crate::buf::BufRing;

const KIND_ACCEPT: u64 = 1;
const KIND_RECV: u64 = 2;
const KIND_SEND: u64 = 3;
const KIND_CANCEL: u64 = 4;
/// A wake-up posted into this ring by another shard (IORING_OP_MSG_RING, Linux 5.18+).
const KIND_WAKE: u64 = 5;

/// IORING_MSG_RING_CQE_SKIP (Linux 6.0): post no completion on the sending ring.
const MSG_RING_CQE_SKIP: u32 = 1;

/// Finished send ops kept for reuse (each holds two small vectors); beyond this they are freed.
const SPARE_SENDS_MAX: usize = 64;

use super::{pack_tag as user_data, unpack_tag as split_user_data};

/// Sizes of the driver's own structures.
#[derive(Debug, Clone, Copy)]
pub struct UringConfig {
    /// Submission queue entries; the completion queue gets twice as many.
    pub sq_entries: u32,
    pub recv_buffer_count: u16,
    pub recv_buffer_bytes: u32,
    /// Most buffers gathered into one SENDMSG.
    pub send_iovecs_max: usize,
}

/// One in-flight SENDMSG. Boxed so `msg` and `iov` keep their addresses while the kernel holds
/// them.
struct SendOp {
    key: ConnKey,
    /// The buffers the iovecs point into; owned here until the completion.
    bufs: Vec<OutBuf>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

pub struct UringDriver {
    // Declared first so it drops first: the kernel may read the buffer ring and the send ops
    // until the ring is torn down.
    ring: IoUring,
    bufs: BufRing,
    sends: Slab<Box<SendOp>>,
    #[allow(clippy::vec_box)] // Boxed: the kernel holds pointers into a SendOp while in flight.
    spare: Vec<Box<SendOp>>,
    send_iovecs_max: usize,
    cqes: Vec<(u64, i32, u32)>,
    accept_armed: bool,
}

impl UringDriver {
    /// Sets up a ring and checks every opcode and feature the driver uses. An error says which
    /// one is missing, so the caller can report it and fall back.
    pub fn new(cfg: UringConfig) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(cfg.sq_entries * 2)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(cfg.sq_entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(cfg.sq_entries * 2)
                    .build(cfg.sq_entries)
            })?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
            (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
            (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
            (opcode::Send::CODE, "IORING_OP_SEND"),
            (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
            (opcode::MsgRingData::CODE, "IORING_OP_MSG_RING"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring opcode {name} is not supported by this kernel"),
                ));
            }
        }
        if !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_NODROP (Linux 5.5+)",
            ));
        }
        let bufs = BufRing::new(cfg.recv_buffer_count, cfg.recv_buffer_bytes, 0)?;
        // SAFETY: the ring of entries lives in `bufs`, which this driver owns and drops after
        // `ring` (field order), so it stays valid for as long as it is registered.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.entries_addr(),
                bufs.count(),
                bufs.group(),
                0,
            )
        }
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("io_uring provided buffer rings (Linux 5.19+): {e}"),
            )
        })?;
        Ok(Self {
            ring,
            bufs,
            sends: Slab::with_capacity(256),
            spare: Vec::new(),
            send_iovecs_max: cfg.send_iovecs_max,
            cqes: Vec::with_capacity(cfg.sq_entries as usize * 2),
            accept_armed: false,
        })
    }

    pub fn accept_armed(&self) -> bool {
        self.accept_armed
    }

    /// A descriptor other shards can post wake-ups to: a duplicate of the ring's, so the ring
    /// file outlives this driver while anyone may still post to it.
    pub fn wake_handle(&self) -> io::Result<OwnedFd> {
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: the ring's descriptor is open for as long as `self.ring` lives, which covers
        // this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) };
        fd.try_clone_to_owned()
    }

    /// Posts a wake-up completion into the ring behind `target` (another shard's
    /// `wake_handle`), so a shard sleeping in io_uring_enter sees its mesh rings.
    pub fn wake(&mut self, target: RawFd) -> io::Result<()> {
        let e = opcode::MsgRingData::new(types::Fd(target), 0, user_data(KIND_WAKE, 0, 0), None)
            .opcode_flags(MSG_RING_CQE_SKIP)
            .build()
            .user_data(user_data(KIND_WAKE, 0, 1));
        self.push(e)
    }

    pub fn arm_accept(&mut self, listener: RawFd) -> io::Result<()> {
        if self.accept_armed {
            return Ok(());
        }
        let e = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(KIND_ACCEPT, 0, 0));
        self.push(e)?;
        self.accept_armed = true;
        Ok(())
    }

    pub fn arm_recv(&mut self, key: ConnKey, fd: RawFd) -> io::Result<()> {
        let e = opcode::RecvMulti::new(types::Fd(fd), self.bufs.group())
            .build()
            .user_data(user_data(KIND_RECV, key.generation, key.index));
        self.push(e)
    }

    /// Cancels the multishot accept; its final completion reports ECANCELED.
    pub fn cancel_accept(&mut self) -> io::Result<()> {
        if !self.accept_armed {
            return Ok(());
        }
        let e = opcode::AsyncCancel::new(user_data(KIND_ACCEPT, 0, 0))
            .build()
            .user_data(user_data(KIND_CANCEL, 0, 0));
        self.push(e)?;
        // Submit now: the listener is closed right after this returns.
        self.ring.submit()?;
        Ok(())
    }

    /// Cancels the multishot receive of `key`; its final completion reports `Canceled`.
    pub fn cancel_recv(&mut self, key: ConnKey) -> io::Result<()> {
        let target = user_data(KIND_RECV, key.generation, key.index);
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data(KIND_CANCEL, key.generation, key.index));
        self.push(e)
    }

    pub fn send(
        &mut self,
        key: ConnKey,
        fd: RawFd,
        next: &mut dyn FnMut() -> Option<OutBuf>,
    ) -> io::Result<()> {
        let mut op = self.spare.pop().unwrap_or_else(|| {
            Box::new(SendOp {
                key,
                bufs: Vec::new(),
                iov: Vec::new(),
                // SAFETY: msghdr is a plain C struct for which all-zero bytes is a valid value.
                msg: unsafe { std::mem::zeroed() },
            })
        });
        op.key = key;
        op.bufs.clear();
        op.iov.clear();
        while op.bufs.len() < self.send_iovecs_max {
            let Some(b) = next() else { break };
            if b.is_empty() {
                continue;
            }
            op.iov.push(libc::iovec {
                iov_base: b.as_slice().as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            });
            op.bufs.push(b);
        }
        if op.bufs.is_empty() {
            self.recycle(op);
            return Ok(());
        }
        op.msg.msg_iov = op.iov.as_mut_ptr();
        op.msg.msg_iovlen = op.iov.len();
        let msg_ptr: *const libc::msghdr = &op.msg;
        let single =
            (op.iov.len() == 1).then(|| (op.iov[0].iov_base as *const u8, op.iov[0].iov_len));
        let index = self.sends.insert(op);
        // One buffer (steady fan-out, replies): IORING_OP_SEND (5.6) skips copying a msghdr
        // and an iovec array in the kernel. Several: SENDMSG gathers them into one send.
        let e = match single {
            Some((ptr, len)) => opcode::Send::new(types::Fd(fd), ptr, len as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
            None => opcode::SendMsg::new(types::Fd(fd), msg_ptr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build(),
        }
        .user_data(user_data(KIND_SEND, 0, index as u32));
        if let Err(err) = self.push(e) {
            // Never submitted: nothing references the buffers, drop them.
            let mut op = self.sends.remove(index);
            op.bufs.clear();
            self.recycle(op);
            return Err(err);
        }
        Ok(())
    }

    pub fn poll(
        &mut self,
        timeout: Duration,
        max: usize,
        handler: &mut dyn FnMut(Event<'_>),
    ) -> io::Result<()> {
        let want = if self.ring.completion().is_empty() {
            1
        } else {
            0
        };
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.cqes.clear();
        self.cqes.extend(
            self.ring
                .completion()
                .take(max)
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for i in 0..self.cqes.len() {
            let (data, res, flags) = self.cqes[i];
            self.complete(data, res, flags, handler);
        }
        Ok(())
    }

    /// Submits queued SQEs without waiting.
    pub fn flush(&mut self) -> io::Result<()> {
        self.ring.submit().map(drop)
    }

    fn complete(&mut self, data: u64, res: i32, flags: u32, handler: &mut dyn FnMut(Event<'_>)) {
        let (kind, generation, index) = split_user_data(data);
        let key = ConnKey { index, generation };
        match kind {
            KIND_ACCEPT => {
                if !cqueue::more(flags) {
                    self.accept_armed = false;
                }
                if res >= 0 {
                    // SAFETY: a non-negative accept result is a new descriptor that nothing else
                    // owns; wrapping it makes this the one owner.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    handler(Event::Accepted(Ok(fd)));
                } else {
                    handler(Event::Accepted(Err(io::Error::from_raw_os_error(-res))));
                }
            }
            KIND_RECV => {
                let more = cqueue::more(flags);
                let bid = cqueue::buffer_select(flags);
                if res > 0 {
                    if let Some(bid) = bid {
                        let data = self.bufs.buffer_mut(bid, res as usize);
                        handler(Event::Received { key, data });
                        self.bufs.recycle(bid);
                    }
                    if !more {
                        handler(Event::RecvStopped {
                            key,
                            why: RecvStop::Rearm,
                        });
                    }
                    return;
                }
                if let Some(bid) = bid {
                    self.bufs.recycle(bid);
                }
                let why = match res {
                    0 => RecvStop::Eof,
                    e if -e == libc::ENOBUFS => RecvStop::Rearm,
                    e if -e == libc::ECANCELED => RecvStop::Canceled,
                    e => RecvStop::Error(io::Error::from_raw_os_error(-e)),
                };
                if more {
                    // An error CQE that keeps the multishot alive carries nothing to act on.
                    return;
                }
                handler(Event::RecvStopped { key, why });
            }
            KIND_SEND => {
                let Some(mut op) = self.sends.try_remove(index as usize) else {
                    debug_assert!(false, "send completion for unknown op {index}");
                    return;
                };
                let result = if res >= 0 {
                    let mut written = res as usize;
                    let mut keep = 0;
                    // Drop what was written, advance the partial buffer, keep the rest in order.
                    for i in 0..op.bufs.len() {
                        let len = op.bufs[i].len();
                        if written >= len {
                            written -= len;
                        } else {
                            op.bufs[i].advance(written);
                            written = 0;
                            op.bufs.swap(keep, i);
                            keep += 1;
                        }
                    }
                    op.bufs.truncate(keep);
                    Ok(res as usize)
                } else {
                    Err(io::Error::from_raw_os_error(-res))
                };
                op.iov.clear();
                let key = op.key;
                handler(Event::Sent {
                    key,
                    result,
                    unsent: &mut op.bufs,
                });
                op.bufs.clear();
                self.recycle(op);
            }
            _ => {}
        }
    }

    /// Keeps a finished op for reuse, up to [`SPARE_SENDS_MAX`]; a burst of concurrent sends
    /// must not leave its peak in memory for good.
    fn recycle(&mut self, op: Box<SendOp>) {
        if self.spare.len() < SPARE_SENDS_MAX {
            self.spare.push(op);
        }
    }

    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        // SAFETY: every address in an entry built by this driver is either the provided-buffer
        // ring (registered and owned by self) or a SendOp boxed in `self.sends`, which stays
        // there until the entry's completion is reaped in `complete`.
        if unsafe { self.ring.submission().push(&e) }.is_ok() {
            return Ok(());
        }
        self.ring.submit()?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(&e) }
            .map_err(|_| io::Error::new(io::ErrorKind::WouldBlock, "submission queue full"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let d = user_data(KIND_RECV, 0x00ab_cdef, 0xdead_beef);
        assert_eq!(split_user_data(d), (KIND_RECV, 0x00ab_cdef, 0xdead_beef));
        let d = user_data(KIND_SEND, 0xffff_ffff, 7);
        assert_eq!(split_user_data(d), (KIND_SEND, super::super::GEN_MASK, 7));
    }
}
