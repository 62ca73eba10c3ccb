//! A worker's connections for the echo and fan-out benches: one epoll instance, a slab of
//! [`ClientConn`]s each with caller state, and a bounded connect phase. Owns sockets and
//! readiness; never decides what to send (the bench passes hooks) and never retries a failed
//! connect.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use slab::Slab;

use super::BenchError;
use super::client::{ClientConn, ConnEvent, ConnState, FailReason, Readiness, SplitMix64};
use super::connect::{FD_HEADROOM, FailureCounts, auto_source_ips};
use super::stats::Histogram;
use super::url::WsUrl;

/// Most epoll events handled per wait. Bounds one tick's work; more wait for the next.
const EVENTS_PER_WAIT_MAX: usize = 1024;

/// Longest sleep in one wait, so deadlines and phase changes are noticed promptly.
pub const TICK_MAX: Duration = Duration::from_millis(10);

/// Where and how a pool connects.
#[derive(Debug, Clone)]
pub struct Target {
    /// Request target and `Host` header.
    pub url: WsUrl,
    /// Resolved server address.
    pub addr: SocketAddr,
    /// Source addresses, used round-robin by connection serial (empty: the kernel picks).
    pub source_ips: Vec<IpAddr>,
}

/// Most sockets one bench process opens. Default 19,000: under the 20,000-connection budget a
/// host gives each load process, with room for the server's own listeners. Over it the run is
/// refused with [`BenchError::InvalidArgument`]: run several processes instead.
pub const SOCKETS_PER_PROCESS_MAX: u32 = 19_000;

impl Target {
    /// Parses and resolves `url`, checks that `sockets` (set by `--{flag}`) fit the per-process budget and
    /// RLIMIT_NOFILE, and spreads source addresses over 127.0.0.x for loopback targets (see
    /// [`auto_source_ips`]).
    pub fn for_run(url: &str, sockets: u32, flag: &'static str) -> Result<Self, BenchError> {
        let url = WsUrl::parse(url)?;
        let addr = url.resolve()?;
        if sockets > SOCKETS_PER_PROCESS_MAX {
            return Err(BenchError::InvalidArgument {
                name: flag,
                reason: format!(
                    "{sockets} sockets are over {SOCKETS_PER_PROCESS_MAX} per bench process: \
                     run several processes"
                ),
            });
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let needed = u64::from(sockets) + FD_HEADROOM;
        if let Some(soft_limit) = limit.current
            && needed > soft_limit
        {
            return Err(BenchError::OpenFileLimit {
                connections: sockets,
                needed,
                soft_limit,
                hard_limit: limit.maximum,
            });
        }
        Ok(Self {
            source_ips: auto_source_ips(addr, sockets),
            url,
            addr,
        })
    }
}

/// One connection and the bench's state for it.
#[derive(Debug)]
pub struct Member<T> {
    /// The connection.
    pub conn: ClientConn,
    /// The bench's per-connection state.
    pub state: T,
    /// Global connection index.
    pub serial: u32,
    opened: bool,
}

/// What the connect phase counted.
#[derive(Debug, Clone, Default)]
pub struct ConnectTally {
    /// Connections that got a verified 101.
    pub opened: u64,
    /// Connections that did not, by reason.
    pub failed: FailureCounts,
    /// Upgraded connections that ended during the connect phase.
    pub dropped: u64,
    /// Handshake latency, microseconds.
    pub latency_us: Histogram,
}

impl ConnectTally {
    /// Adds another worker's counts.
    pub fn merge(&mut self, other: &Self) {
        self.opened += other.opened;
        self.failed.merge(&other.failed);
        self.dropped += other.dropped;
        self.latency_us.merge(&other.latency_us);
    }
}

/// A worker's connections. See the module docs.
pub struct Pool<T> {
    target: Target,
    epoll: OwnedFd,
    members: Slab<Member<T>>,
    events: Vec<epoll::Event>,
    ready: Vec<(usize, Readiness)>,
    scratch: Vec<u8>,
    rng: SplitMix64,
}

impl<T> Pool<T> {
    /// An empty pool on `epoll` (from [`create_epoll`]). Build it on the thread that uses it:
    /// the event buffer is not `Send`.
    pub fn new(target: Target, epoll: OwnedFd, seed: u64) -> Self {
        Self {
            target,
            epoll,
            members: Slab::new(),
            events: Vec::with_capacity(EVENTS_PER_WAIT_MAX),
            ready: Vec::with_capacity(EVENTS_PER_WAIT_MAX),
            scratch: Vec::with_capacity(super::client::READ_CHUNK_BYTES),
            rng: SplitMix64::new(seed),
        }
    }

    /// Live (upgraded, not yet ended) connections after the connect phase.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// No live connections.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// All live members, for priming sends or final tallies.
    pub fn members_mut(&mut self) -> impl Iterator<Item = &mut Member<T>> {
        self.members.iter_mut().map(|(_, m)| m)
    }

    /// Consumes the pool, returning the members' states.
    pub fn into_states(self) -> Vec<T> {
        self.members.into_iter().map(|(_, m)| m.state).collect()
    }

    /// Opens connections `serials`, keeping at most `in_flight_max` handshakes in flight, and
    /// returns when each has upgraded or failed. Handshakes older than `handshake_timeout`, or
    /// still running at `deadline`, fail as timeouts. `make` builds each connection's state.
    pub fn connect_all(
        &mut self,
        serials: impl IntoIterator<Item = u32>,
        in_flight_max: usize,
        handshake_timeout: Duration,
        deadline: Instant,
        make: impl FnMut(u32) -> T,
    ) -> ConnectTally {
        self.connect_all_with(
            serials,
            in_flight_max,
            handshake_timeout,
            deadline,
            make,
            |_, _, _| {},
            |_| {},
        )
    }

    /// [`Pool::connect_all`] for protocols that talk as soon as a connection is upgraded (the
    /// server's greeting can arrive with the 101): `on_event` gets every event of an upgraded
    /// connection (messages, closes, failures after the upgrade; they are counted in the tally
    /// too), and `after` gets each member after its events, as in [`Pool::poll`].
    #[allow(clippy::too_many_arguments)] // connect_all's five plus the two hooks of `poll`.
    pub fn connect_all_with(
        &mut self,
        serials: impl IntoIterator<Item = u32>,
        in_flight_max: usize,
        handshake_timeout: Duration,
        deadline: Instant,
        mut make: impl FnMut(u32) -> T,
        mut on_event: impl FnMut(&mut MemberState<'_, T>, ConnEvent<'_>, Instant),
        mut after: impl FnMut(&mut Member<T>),
    ) -> ConnectTally {
        let mut tally = ConnectTally::default();
        let mut serials = serials.into_iter().peekable();
        let mut handshakes: VecDeque<(usize, u32)> = VecDeque::new();
        let mut in_flight = 0usize;
        loop {
            while in_flight < in_flight_max
                && let Some(serial) = serials.next()
            {
                let now = Instant::now();
                match self.open(serial, now, make(serial)) {
                    Ok(key) => {
                        handshakes.push_back((key, serial));
                        in_flight += 1;
                    }
                    Err(reason) => tally.failed.count(&reason),
                }
            }
            if in_flight == 0 && serials.peek().is_none() {
                return tally;
            }
            let now = Instant::now();
            // Expire old handshakes (all of them at the deadline).
            while let Some(&(key, serial)) = handshakes.front() {
                let live = self
                    .members
                    .get_mut(key)
                    .filter(|m| m.serial == serial && !m.opened);
                let Some(member) = live else {
                    handshakes.pop_front();
                    continue;
                };
                if now < deadline && now < member.conn.started() + handshake_timeout {
                    break;
                }
                handshakes.pop_front();
                let mut reason = None;
                member.conn.expire(&mut |e| {
                    if let ConnEvent::Failed(r) = e {
                        reason = Some(r);
                    }
                });
                tally.failed.count(&reason.unwrap_or(FailReason::Timeout));
                in_flight -= 1;
                self.members.remove(key);
            }
            if in_flight == 0 && serials.peek().is_none() {
                return tally;
            }
            self.poll(
                TICK_MAX.min(deadline.saturating_duration_since(now)),
                |_, member, event, at| match event {
                    ConnEvent::Opened { latency } => {
                        *member.opened = true;
                        in_flight -= 1;
                        tally.opened += 1;
                        tally.latency_us.record(latency.as_micros() as u64);
                    }
                    ConnEvent::Failed(reason) if !*member.opened => {
                        in_flight -= 1;
                        tally.failed.count(&reason);
                    }
                    ConnEvent::Failed(_) | ConnEvent::Closed { .. } => {
                        tally.dropped += 1;
                        on_event(member, event, at);
                    }
                    ConnEvent::Message { .. } | ConnEvent::PeerClose { .. } => {
                        on_event(member, event, at)
                    }
                },
                &mut after,
            );
        }
    }

    /// Waits up to `timeout` for readiness, then for each ready connection: hands its events to
    /// `on_event` (with the member's serial, the member minus its connection, and the time its
    /// read started), then calls `after` with the whole member (to send). Connections that end
    /// are removed after `after` has seen them in state [`ConnState::Done`].
    pub fn poll(
        &mut self,
        timeout: Duration,
        mut on_event: impl FnMut(u32, &mut MemberState<'_, T>, ConnEvent<'_>, Instant),
        mut after: impl FnMut(&mut Member<T>),
    ) {
        self.wait(timeout);
        for index in 0..self.ready.len() {
            // A clock read per connection (vDSO, tens of ns), not per wait: a batch can take long
            // enough that one timestamp would skew the latency of the connections read last.
            let now = Instant::now();
            let (key, ready) = self.ready[index];
            // A key removed earlier in this batch is stale; new connections are opened only
            // between batches, so a key is never reused within one.
            let Some(member) = self.members.get_mut(key) else {
                continue;
            };
            let Member {
                conn,
                state,
                serial,
                opened,
            } = &mut *member;
            let mut view = MemberState { state, opened };
            conn.handle_ready(ready, now, &mut self.scratch, &mut |event| {
                on_event(*serial, &mut view, event, now)
            });
            after(member);
            if member.conn.state() == ConnState::Done {
                self.members.remove(key);
            }
        }
    }

    /// Starts the closing handshake on every live connection. The bench has measured what it
    /// needed, so it does not wait for the server's reply: dropping the pool closes the sockets.
    pub fn close_all(&mut self) {
        for (_, member) in self.members.iter_mut() {
            // RFC 6455 §7.4.1: 1000, normal closure.
            member.conn.start_close(1000, &mut |_| {});
        }
    }

    fn open(&mut self, serial: u32, now: Instant, state: T) -> Result<usize, FailReason> {
        let source = match self.target.source_ips.len() {
            0 => None,
            n => Some(self.target.source_ips[serial as usize % n]),
        };
        let seed = self.rng.next_u64();
        let conn = ClientConn::connect(self.target.addr, source, &self.target.url, seed, now)
            .map_err(|e| FailReason::from_io(&e))?;
        let entry = self.members.vacant_entry();
        let key = entry.key();
        let flags = epoll::EventFlags::IN
            | epoll::EventFlags::OUT
            | epoll::EventFlags::RDHUP
            | epoll::EventFlags::ET;
        epoll::add(
            &self.epoll,
            conn.socket(),
            epoll::EventData::new_u64(key as u64),
            flags,
        )
        .map_err(|e| FailReason::from_io(&e.into()))?;
        entry.insert(Member {
            conn,
            state,
            serial,
            opened: false,
        });
        Ok(key)
    }

    fn wait(&mut self, timeout: Duration) {
        wait_for_events(&self.epoll, &mut self.events, timeout);
        self.ready.clear();
        for event in &self.events {
            let flags = event.flags;
            let error = flags.intersects(epoll::EventFlags::ERR | epoll::EventFlags::HUP);
            self.ready.push((
                event.data.u64() as usize,
                Readiness {
                    readable: error
                        || flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::RDHUP),
                    writable: error || flags.contains(epoll::EventFlags::OUT),
                },
            ));
        }
    }
}

/// A new epoll instance for one pool.
pub fn create_epoll() -> Result<OwnedFd, BenchError> {
    epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| BenchError::Epoll(e.into()))
}

/// A member's state as seen from inside [`Pool::poll`]'s event hook (its connection is busy).
pub struct MemberState<'a, T> {
    /// The bench's per-connection state.
    pub state: &'a mut T,
    opened: &'a mut bool,
}

impl<T> MemberState<'_, T> {
    /// The connection finished its upgrade.
    pub fn opened(&self) -> bool {
        *self.opened
    }
}

/// Wakes every `TICK_MAX` until `done` returns true or `deadline` passes; true if `done`.
pub fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1).min(deadline - now));
    }
}

/// Waits up to `timeout` for epoll events into `events` (cleared first); EINTR is no event.
pub(crate) fn wait_for_events(
    epoll: &std::os::fd::OwnedFd,
    events: &mut Vec<epoll::Event>,
    timeout: Duration,
) {
    let timespec = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    events.clear();
    match epoll::wait(
        epoll,
        rustix::buffer::spare_capacity(events),
        Some(&timespec),
    ) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        // EBADF/EINVAL would be a bug in the bench; nothing can be recovered from it.
        Err(e) => panic!("epoll_wait failed: {e}"),
    }
}
