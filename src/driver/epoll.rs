//! The epoll driver: the fallback where io_uring is unavailable (disabled by sysctl, blocked by
//! a container's seccomp profile, or an old kernel).
//!
//! It emulates the completion interface of the io_uring driver over readiness: sockets are
//! registered edge-triggered for both directions; when one is readable the driver reads it into
//! one shard-wide scratch buffer (so, as with io_uring's buffer ring, an idle connection holds no
//! receive buffer) and reports `Received`; a send is written at once, and what the socket would
//! not take waits, owned by the driver, for the next EPOLLOUT. All system calls go through
//! rustix's safe wrappers.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::buf::OutBuf;
use rustix::event::epoll;
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags, SocketFlags};

use super::{ConnKey, Event, RecvStop};

const KIND_ACCEPT: u64 = 1;
const KIND_CONN: u64 = 2;
/// The shard's eventfd, written by other shards to wake it.
const KIND_WAKE: u64 = 3;

/// Reads per readable socket per turn before it yields to the others (bounded work per turn);
/// a socket cut short is revisited on the next turn without waiting.
const READS_PER_TURN: usize = 8;
/// Accepts per turn.
const ACCEPTS_PER_TURN: usize = 256;
/// Buffer lists kept for reuse after a send; beyond this they are freed.
const SPARE_SENDS_MAX: usize = 64;

fn event_data(kind: u64, key: ConnKey) -> u64 {
    super::pack_tag(kind, key.generation, key.index)
}

#[derive(Debug, Clone, Copy)]
pub struct EpollConfig {
    pub recv_buffer_bytes: u32,
    pub send_iovecs_max: usize,
}

/// A send that the socket did not take whole: it waits here, owning its buffers.
struct ParkedSend {
    fd: RawFd,
    bufs: Vec<OutBuf>,
    written: usize,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    fd: RawFd,
    registered: bool,
    recv_active: bool,
    /// Boxed: most slots never park a send, and the slot table has one entry per connection.
    parked: Option<Box<ParkedSend>>,
}

enum Pending {
    Sent {
        key: ConnKey,
        result: io::Result<usize>,
        bufs: Vec<OutBuf>,
    },
}

pub struct EpollDriver {
    epoll: OwnedFd,
    /// Other shards write to it to wake this one.
    wake_fd: OwnedFd,
    events: Vec<epoll::Event>,
    scratch: Vec<u8>,
    slots: Vec<Slot>,
    pending: VecDeque<Pending>,
    /// Connections whose reads were cut short by READS_PER_TURN.
    again: Vec<ConnKey>,
    listener: Option<RawFd>,
    accept_armed: bool,
    send_iovecs_max: usize,
    spare_bufs: Vec<Vec<OutBuf>>,
}

impl EpollDriver {
    pub fn new(cfg: EpollConfig) -> io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let wake_fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        epoll::add(
            &epoll,
            &wake_fd,
            epoll::EventData::new_u64(KIND_WAKE << 56),
            epoll::EventFlags::IN,
        )?;
        Ok(Self {
            epoll,
            wake_fd,
            events: Vec::with_capacity(1024),
            scratch: vec![0; cfg.recv_buffer_bytes.max(4096) as usize],
            slots: Vec::new(),
            pending: VecDeque::new(),
            again: Vec::new(),
            listener: None,
            accept_armed: false,
            send_iovecs_max: cfg.send_iovecs_max.clamp(1, 1024),
            spare_bufs: Vec::new(),
        })
    }

    pub fn accept_armed(&self) -> bool {
        self.accept_armed
    }

    /// A descriptor other shards can wake this one through (a duplicate of its eventfd).
    pub fn wake_handle(&self) -> io::Result<OwnedFd> {
        self.wake_fd.try_clone()
    }

    /// Wakes the shard behind `target` (another shard's `wake_handle`).
    pub fn wake(&mut self, target: RawFd) -> io::Result<()> {
        match rustix::io::write(borrow(target), &1u64.to_ne_bytes()) {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn arm_accept(&mut self, listener: RawFd) -> io::Result<()> {
        if self.accept_armed {
            return Ok(());
        }
        let fd = borrow(listener);
        // Level-triggered: a backlog left after ACCEPTS_PER_TURN is reported again.
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(KIND_ACCEPT << 56),
            epoll::EventFlags::IN,
        )?;
        self.listener = Some(listener);
        self.accept_armed = true;
        Ok(())
    }

    pub fn cancel_accept(&mut self) {
        self.disarm_accept();
        self.listener = None;
    }

    fn disarm_accept(&mut self) {
        if let Some(l) = self.listener {
            let _ = epoll::delete(&self.epoll, borrow(l));
        }
        self.accept_armed = false;
    }

    fn slot(&mut self, key: ConnKey, fd: RawFd) -> &mut Slot {
        let i = key.index as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, Slot::default);
        }
        let slot = &mut self.slots[i];
        if slot.generation != key.generation || slot.fd != fd {
            debug_assert!(slot.parked.is_none() || slot.generation == key.generation);
            *slot = Slot {
                generation: key.generation,
                fd,
                ..Slot::default()
            };
        }
        slot
    }

    fn register(&mut self, key: ConnKey, fd: RawFd) -> io::Result<()> {
        self.slot(key, fd);
        let slot = &mut self.slots[key.index as usize];
        if slot.registered {
            return Ok(());
        }
        epoll::add(
            &self.epoll,
            borrow(fd),
            epoll::EventData::new_u64(event_data(KIND_CONN, key)),
            epoll::EventFlags::IN
                | epoll::EventFlags::OUT
                | epoll::EventFlags::RDHUP
                | epoll::EventFlags::ET,
        )?;
        slot.registered = true;
        Ok(())
    }

    pub fn arm_recv(&mut self, key: ConnKey, fd: RawFd) -> io::Result<()> {
        self.register(key, fd)?;
        let slot = self.slot(key, fd);
        slot.recv_active = true;
        // Data may have arrived before registration; edge-triggered epoll reports the current
        // state on add, but look once anyway so nothing waits on an edge that already passed.
        self.again.push(key);
        Ok(())
    }

    pub fn send(
        &mut self,
        key: ConnKey,
        fd: RawFd,
        next: &mut dyn FnMut() -> Option<OutBuf>,
    ) -> io::Result<()> {
        self.register(key, fd)?;
        let mut bufs = self.spare_bufs.pop().unwrap_or_default();
        while bufs.len() < self.send_iovecs_max {
            let Some(b) = next() else { break };
            if !b.is_empty() {
                bufs.push(b);
            }
        }
        if bufs.is_empty() {
            if self.spare_bufs.len() < SPARE_SENDS_MAX {
                self.spare_bufs.push(bufs);
            }
            return Ok(());
        }
        let mut op = ParkedSend {
            fd,
            bufs,
            written: 0,
        };
        match write_some(&mut op) {
            Ok(true) => {
                self.pending.push_back(Pending::Sent {
                    key,
                    result: Ok(op.written),
                    bufs: op.bufs,
                });
            }
            Ok(false) => self.slot(key, fd).parked = Some(Box::new(op)),
            Err(e) => self.pending.push_back(Pending::Sent {
                key,
                result: Err(e),
                bufs: op.bufs,
            }),
        }
        Ok(())
    }

    pub fn poll(
        &mut self,
        timeout: Duration,
        max: usize,
        handler: &mut dyn FnMut(Event<'_>),
    ) -> io::Result<()> {
        let busy = !self.pending.is_empty() || !self.again.is_empty();
        let ts = rustix::event::Timespec {
            tv_sec: if busy { 0 } else { timeout.as_secs() as i64 },
            tv_nsec: if busy {
                0
            } else {
                i64::from(timeout.subsec_nanos())
            },
        };
        self.events.clear();
        self.events.reserve(max.clamp(1, 4096));
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut self.events),
            Some(&ts),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        while let Some(p) = self.pending.pop_front() {
            self.deliver(p, handler);
        }
        let again = std::mem::take(&mut self.again);
        for key in &again {
            self.readable(*key, handler);
        }
        let mut events = std::mem::take(&mut self.events);
        for ev in events.drain(..) {
            let data = ev.data.u64();
            let kind = data >> 56;
            if kind == KIND_ACCEPT {
                self.accept(handler);
                continue;
            }
            if kind == KIND_WAKE {
                // Reset the counter; the shard looks at its mesh rings every turn anyway.
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&self.wake_fd, &mut buf);
                continue;
            }
            let (_, generation, index) = super::unpack_tag(data);
            let key = ConnKey { index, generation };
            let flags = ev.flags;
            if flags.intersects(
                epoll::EventFlags::OUT | epoll::EventFlags::ERR | epoll::EventFlags::HUP,
            ) {
                self.writable(key);
            }
            if flags.intersects(
                epoll::EventFlags::IN
                    | epoll::EventFlags::RDHUP
                    | epoll::EventFlags::ERR
                    | epoll::EventFlags::HUP,
            ) {
                self.readable(key, handler);
            }
        }
        self.events = events;
        while let Some(p) = self.pending.pop_front() {
            self.deliver(p, handler);
        }
        Ok(())
    }

    fn deliver(&mut self, p: Pending, handler: &mut dyn FnMut(Event<'_>)) {
        match p {
            Pending::Sent {
                key,
                result,
                mut bufs,
            } => {
                handler(Event::Sent {
                    key,
                    result,
                    unsent: &mut bufs,
                });
                bufs.clear();
                if self.spare_bufs.len() < SPARE_SENDS_MAX {
                    self.spare_bufs.push(bufs);
                }
            }
        }
    }

    fn accept(&mut self, handler: &mut dyn FnMut(Event<'_>)) {
        let Some(listener) = self.listener else {
            return;
        };
        for _ in 0..ACCEPTS_PER_TURN {
            match rustix::net::accept_with(
                borrow(listener),
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            ) {
                Ok(fd) => handler(Event::Accepted(Ok(fd))),
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::CONNABORTED | rustix::io::Errno::INTR) => {}
                Err(e) => {
                    // EMFILE and friends: stop watching the listener (it stays readable and would
                    // spin); the shard re-arms after its back-off.
                    self.disarm_accept();
                    handler(Event::Accepted(Err(e.into())));
                    return;
                }
            }
        }
    }

    fn live_slot(&mut self, key: ConnKey) -> Option<&mut Slot> {
        let slot = self.slots.get_mut(key.index as usize)?;
        (slot.generation == key.generation).then_some(slot)
    }

    fn writable(&mut self, key: ConnKey) {
        let Some(slot) = self.live_slot(key) else {
            return;
        };
        let Some(mut op) = slot.parked.take() else {
            return;
        };
        match write_some(&mut op) {
            Ok(true) => self.pending.push_back(Pending::Sent {
                key,
                result: Ok(op.written),
                bufs: op.bufs,
            }),
            Ok(false) => slot.parked = Some(op),
            Err(e) => self.pending.push_back(Pending::Sent {
                key,
                result: Err(e),
                bufs: op.bufs,
            }),
        }
    }

    fn readable(&mut self, key: ConnKey, handler: &mut dyn FnMut(Event<'_>)) {
        let Some(slot) = self.live_slot(key) else {
            return;
        };
        if !slot.recv_active {
            return;
        }
        let fd = slot.fd;
        for _ in 0..READS_PER_TURN {
            match rustix::net::recv(borrow(fd), &mut self.scratch[..], RecvFlags::empty()) {
                Ok((0, _)) => {
                    self.stop_recv(key, RecvStop::Eof, handler);
                    return;
                }
                Ok((n, _)) => {
                    handler(Event::Received {
                        key,
                        data: &mut self.scratch[..n],
                    });
                    // The handler may have shut the socket down; keep reading until EOF so the
                    // shard sees the receive end, as with io_uring.
                }
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    self.stop_recv(key, RecvStop::Error(e.into()), handler);
                    return;
                }
            }
        }
        self.again.push(key);
    }

    fn stop_recv(&mut self, key: ConnKey, why: RecvStop, handler: &mut dyn FnMut(Event<'_>)) {
        if let Some(slot) = self.live_slot(key) {
            slot.recv_active = false;
        }
        handler(Event::RecvStopped { key, why });
    }
}

/// Writes as much of `op` as the socket takes. Ok(true) when everything is written, Ok(false)
/// when the socket is full (wait for EPOLLOUT).
fn write_some(op: &mut ParkedSend) -> io::Result<bool> {
    loop {
        let empty: &[u8] = &[];
        let mut iov = [IoSlice::new(empty); 64];
        let mut n_iov = 0;
        for b in op.bufs.iter().filter(|b| !b.is_empty()).take(iov.len()) {
            iov[n_iov] = IoSlice::new(b.as_slice());
            n_iov += 1;
        }
        if n_iov == 0 {
            return Ok(true);
        }
        match rustix::net::sendmsg(
            borrow(op.fd),
            &iov[..n_iov],
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL,
        ) {
            Ok(mut n) => {
                op.written += n;
                for b in op.bufs.iter_mut() {
                    let take = n.min(b.len());
                    b.advance(take);
                    n -= take;
                    if n == 0 {
                        break;
                    }
                }
                op.bufs.retain(|b| !b.is_empty());
            }
            Err(rustix::io::Errno::AGAIN) => return Ok(false),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn borrow<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // The shard owns every descriptor the driver is handed and keeps it open while any
    // operation on it is pending (the kernel-ownership rule), so borrowing it here is sound.
    // BorrowedFd::borrow_raw is unsafe only because the compiler cannot check that.
    // SAFETY: see above: `fd` is open for as long as the driver uses this borrow.
    unsafe { BorrowedFd::borrow_raw(fd) }
}
