//! A shard: one thread, one driver, one listener, one connection slab, one timer wheel.
//!
//! The shard owns everything it touches and shares nothing: connections never leave the shard
//! that accepted them. It turns driver completions into protocol calls (HTTP front, WebSocket
//! core) and protocol output into queued sends; it never blocks.

pub mod conn;
pub mod per_ip;
pub mod pusher;
pub mod router;
pub mod sendq;
pub mod stats;
pub mod timer;

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::buf::OutBuf;
use slab::Slab;
use socket2::{SockRef, Socket};

use crate::broker::fanout::{Fanout, Segment};
use crate::broker::mesh::{MeshMsg, MeshPort};
use crate::broker::topic::{TopicId, Topics};
use crate::config::{Limits, ServerConfig};
use crate::driver::{ConnKey, Driver, Event, RecvStop};
use crate::proto::close::{self, CloseFrame};
use crate::proto::decoder::Event as WsEvent;
use crate::proto::frame::{self, Opcode};
use crate::proto::handshake;
use crate::proto::http::{self, HEADER_COUNT_CEILING};
use conn::{Conn, Phase, WebSocket, flag};
use per_ip::PerIp;
use router::{Endpoint, Routed, UpgradeTo};
use sendq::SendQueues;
use stats::{ShardCounters, ShardStats};
use timer::{Tick, TimerWheel, ms_to_ticks, tick_reached};

/// Generations travel in 24 bits of io_uring user data.
const GENERATION_MASK: u32 = 0x00ff_ffff;

/// Most publishes of one topic walked together by the fan-out (see `broker::fanout`).
const FANOUT_RUN_MAX: usize = 1024;

/// How long accepting pauses after EMFILE/ENFILE, so a full descriptor table does not spin.
const ACCEPT_BACKOFF_MS: u32 = 100;

/// What the shards and the admin listener share: flags set by the main thread, counters
/// published by each shard.
pub struct Shared {
    /// Set on SIGTERM/SIGINT: readiness turns false and the shards drain.
    pub stop: Arc<AtomicBool>,
    pub counters: Vec<ShardCounters>,
    pub driver_name: std::sync::OnceLock<&'static str>,
    /// Each shard's wake handle (see [`Driver::wake`]), set once its driver exists.
    pub wakers: Vec<std::sync::OnceLock<OwnedFd>>,
    /// The hub's wake handle.
    pub hub_waker: std::sync::OnceLock<OwnedFd>,
    /// Open Pusher connections per app (index of the configuration), for `max_connections`.
    pub app_connections: std::sync::OnceLock<Vec<AtomicU32>>,
    /// Channels per app with local subscribers, summed over shards, for `max_channels`.
    pub app_channels: std::sync::OnceLock<Vec<AtomicU32>>,
    pub hub_counters: std::sync::OnceLock<Arc<crate::hub::HubCounters>>,
    pub webhook_counters: std::sync::OnceLock<Arc<crate::webhook::WebhookCounters>>,
}

impl Shared {
    pub fn new(stop: Arc<AtomicBool>, shards: usize) -> Self {
        Self {
            stop,
            counters: (0..shards).map(|_| ShardCounters::default()).collect(),
            driver_name: std::sync::OnceLock::new(),
            wakers: (0..shards).map(|_| std::sync::OnceLock::new()).collect(),
            hub_waker: std::sync::OnceLock::new(),
            app_connections: std::sync::OnceLock::new(),
            app_channels: std::sync::OnceLock::new(),
            hub_counters: std::sync::OnceLock::new(),
            webhook_counters: std::sync::OnceLock::new(),
        }
    }

    /// Open Pusher connections per app (empty until the server set the apps).
    pub fn app_connections(&self) -> &[AtomicU32] {
        self.app_connections.get().map_or(&[], Vec::as_slice)
    }

    /// Channels per app held by the shards (empty until the server set the apps).
    pub fn app_channels(&self) -> &[AtomicU32] {
        self.app_channels.get().map_or(&[], Vec::as_slice)
    }

    pub fn draining(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A shard's ends of what connects it to the rest of the server.
pub struct Links {
    /// The rings to and from the other shards.
    pub mesh: MeshPort,
    /// The rings to and from the hub.
    pub hub: crate::hub::ShardLink,
    /// The process's socket id nonce (see [`pusher::socket_id_nonce`]).
    pub socket_nonce: u64,
}

pub struct Shard {
    // Declared first so it drops first: in-flight operations reference memory the shard owns.
    driver: Driver,
    state: State,
}

struct State {
    id: usize,
    shared: Arc<Shared>,
    config: Arc<ServerConfig>,
    limits: Limits,
    listener: Option<Socket>,
    conns: Slab<Conn>,
    sendq: SendQueues,
    wheel: TimerWheel,
    epoch: Instant,
    now: Tick,
    next_generation: u32,
    dirty: Vec<u32>,
    due: Vec<(u32, Tick)>,
    accept_paused_until: Option<Tick>,
    accept_error_log: RateLimitedLog,
    /// Connections held only to be refused (flag REJECTING).
    rejecting: u32,
    per_ip: Option<PerIp>,
    /// Bytes held for message reassembly and incomplete HTTP requests, over all connections
    /// (queued outbound data is counted by the send queues themselves).
    held_bytes: u64,
    /// Set once draining began: when to give up waiting.
    drain_deadline: Option<Tick>,
    last_publish: Tick,
    stats: ShardStats,
    topics: Topics,
    mesh: MeshPort,
    /// Publishes being delivered to local subscribers (a walk may span loop turns).
    fanout: Fanout,
    /// The fan-out's current stretch (kept to reuse its buffers).
    segment: Segment,
    /// The rings to and from the hub (the Pusher control plane).
    hub: crate::hub::ShardLink,
    hub_inbox: Vec<crate::hub::ToShard>,
    /// Pusher topics whose local subscriber count changed this turn, with the new count.
    hub_counts: HashMap<Arc<str>, u32>,
    socket_nonce: u64,
    /// The last events of Pusher cache channels (every shard keeps a copy).
    cache: crate::broker::cache::ChannelCache,
    /// When expired cache entries were last swept.
    cache_swept: Tick,
}

/// A publish could not be queued for every interested shard (a mesh ring is full).
#[derive(Debug)]
struct MeshFull;

impl Shard {
    pub fn new(
        id: usize,
        driver: Driver,
        listener: Socket,
        config: Arc<ServerConfig>,
        shared: Arc<Shared>,
        links: Links,
    ) -> Self {
        let Links {
            mesh,
            hub,
            socket_nonce,
        } = links;
        let limits = config.limits;
        let per_ip = (limits.connections_per_ip_max > 0 || limits.handshakes_per_ip_per_s > 0)
            .then(|| {
                PerIp::new(
                    limits.connections_per_ip_max,
                    limits.handshakes_per_ip_per_s,
                )
            });
        Self {
            driver,
            state: State {
                id,
                shared,
                config,
                limits,
                listener: Some(listener),
                // Reserve the address space for the whole per-shard limit up front; pages are
                // only touched as connections arrive, so this costs no resident memory.
                conns: Slab::with_capacity(
                    (limits.connections_per_shard_max + limits.reject_overflow_max) as usize,
                ),
                sendq: SendQueues::new(),
                wheel: TimerWheel::new(),
                epoch: Instant::now(),
                now: 0,
                next_generation: 1,
                dirty: Vec::with_capacity(1024),
                due: Vec::new(),
                accept_paused_until: None,
                accept_error_log: RateLimitedLog::default(),
                rejecting: 0,
                per_ip,
                held_bytes: 0,
                drain_deadline: None,
                last_publish: 0,
                stats: ShardStats::default(),
                topics: Topics::new(),
                mesh,
                fanout: Fanout::new(FANOUT_RUN_MAX),
                segment: Segment::default(),
                hub,
                hub_inbox: Vec::new(),
                hub_counts: HashMap::new(),
                socket_nonce,
                cache: crate::broker::cache::ChannelCache::new(),
                cache_swept: 0,
            },
        }
    }

    pub fn driver_name(&self) -> &'static str {
        self.driver.name()
    }

    /// Runs until drained. Each turn: wait for completions (at most one timer tick), handle at
    /// most `completions_per_turn_max` of them, fire due timers, then submit the sends,
    /// receives and closes they produced in one batch.
    pub fn run(&mut self) -> io::Result<ShardStats> {
        let tick = Duration::from_millis(timer::TICK_MS);
        let max = self.state.limits.completions_per_turn_max;
        loop {
            if self.state.drain_deadline.is_none() && self.state.shared.draining() {
                self.state.begin_drain(&mut self.driver);
            }
            if let Some(deadline) = self.state.drain_deadline {
                if self.state.conns.is_empty() || tick_reached(deadline, self.state.now) {
                    break;
                }
            } else {
                self.state.resume_accept(&mut self.driver);
            }
            // Work left from the last turn (a fan-out cut short, mesh messages, interest changes
            // waiting for room) means no sleeping.
            let busy = !self.state.fanout.is_empty()
                || self.state.mesh.has_inbound()
                || self.state.mesh.has_backlog()
                || self.state.hub.has_inbound();
            let timeout = if busy { Duration::ZERO } else { tick };
            let state = &mut self.state;
            self.driver
                .poll(timeout, max, &mut |ev| state.on_event(ev))?;
            self.state.stats.loop_turns += 1;
            self.state.now =
                (self.state.epoch.elapsed().as_millis() as u64 / timer::TICK_MS) as Tick;
            self.state.drain_mesh();
            self.state.drain_hub();
            self.state.run_fanout();
            self.state.fire_timers();
            self.state.enforce_budget();
            self.state.flush_dirty(&mut self.driver);
            self.state.mesh.flush_backlog();
            self.state.flush_hub_counts();
            self.state.hub.flush_backlog();
            self.state.wake_peers(&mut self.driver);
            self.state.publish_stats();
        }
        if !self.state.conns.is_empty() {
            tracing::info!(
                shard = self.state.id,
                left = self.state.conns.len(),
                "drain timeout: closing the remaining connections"
            );
        }
        self.state.publish_now();
        Ok(self.state.stats.clone())
    }
}

impl State {
    fn resume_accept(&mut self, driver: &mut Driver) {
        if driver.accept_armed() {
            return;
        }
        let Some(listener) = &self.listener else {
            return;
        };
        if let Some(until) = self.accept_paused_until {
            if !tick_reached(until, self.now) {
                return;
            }
            self.accept_paused_until = None;
        }
        if let Err(e) = driver.arm_accept(listener.as_raw_fd()) {
            self.accept_error_log
                .warn(self.now, &format!("cannot arm accept: {e}"));
            self.accept_paused_until = Some(self.now.wrapping_add(ms_to_ticks(ACCEPT_BACKOFF_MS)));
        }
    }

    fn publish_stats(&mut self) {
        if self.last_publish != self.now {
            self.publish_now();
        }
    }

    fn publish_now(&mut self) {
        self.last_publish = self.now;
        self.stats.connections = self.conns.len() as u64;
        if tick_reached(self.cache_swept.wrapping_add(ms_to_ticks(10_000)), self.now) {
            self.cache_swept = self.now;
            self.cache.sweep(std::time::Instant::now());
        }
        self.stats.pusher_cache_entries = self.cache.len() as u64;
        self.stats.pusher_cache_refused = self.cache.refused;
        if let Some(c) = self.shared.counters.get(self.id) {
            c.publish(&self.stats);
        }
        if let Some(p) = &mut self.per_ip {
            p.sweep(self.now);
        }
    }

    /// SIGTERM/SIGINT: stop accepting, close idle HTTP connections, and send every WebSocket a
    /// going-away close, spread over the first half of the drain window so clients do not all
    /// reconnect in the same millisecond.
    fn begin_drain(&mut self, driver: &mut Driver) {
        let drain = ms_to_ticks(self.limits.drain_timeout_ms);
        self.drain_deadline = Some(self.now.wrapping_add(drain));
        if let Err(e) = driver.cancel_accept() {
            tracing::debug!("cancel accept: {e}");
        }
        // Closing our listener leaves the port to the other shards while they drain too; the
        // kernel stops queueing new connections to it.
        self.listener = None;
        let spread = (drain / 2).max(1);
        let indices: Vec<u32> = self.conns.iter().map(|(i, _)| i as u32).collect();
        let n = indices.len().max(1) as u64;
        for (k, index) in indices.into_iter().enumerate() {
            let conn = &mut self.conns[index as usize];
            if conn.has(flag::SHUTDOWN | flag::CLOSE_AFTER_FLUSH) {
                continue;
            }
            match &conn.phase {
                Phase::Http(_) => self.close_after_flush(index),
                Phase::WebSocket(ws) if !ws.close_sent => {
                    conn.set(flag::DRAINING);
                    let offset = (k as u64 * u64::from(spread) / n) as Tick;
                    self.set_deadline_exact(index, self.now.wrapping_add(offset));
                }
                Phase::WebSocket(_) => {}
            }
        }
        tracing::info!(shard = self.id, connections = self.conns.len(), "draining");
    }

    fn on_event(&mut self, ev: Event<'_>) {
        match ev {
            Event::Accepted(Ok(fd)) => self.on_accept(fd),
            Event::Accepted(Err(e)) => self.on_accept_error(e),
            Event::Received { key, data } => {
                if let Some(index) = self.live(key) {
                    self.stats.bytes_in += data.len() as u64;
                    self.on_bytes(index, data);
                }
            }
            Event::RecvStopped { key, why } => {
                let Some(index) = self.live(key) else { return };
                let conn = &mut self.conns[index as usize];
                conn.clear(flag::RECV_ARMED);
                match why {
                    RecvStop::Rearm | RecvStop::Canceled => {}
                    RecvStop::Eof => {
                        conn.set(flag::PEER_EOF | flag::READ_DONE | flag::CLOSE_AFTER_FLUSH);
                    }
                    RecvStop::Error(_) => self.abort(index),
                }
                self.mark_dirty(index);
            }
            Event::Sent {
                key,
                result,
                unsent,
            } => {
                let Some(index) = self.live(key) else { return };
                let conn = &mut self.conns[index as usize];
                conn.clear(flag::SEND_INFLIGHT);
                match result {
                    Ok(n) => {
                        self.stats.bytes_out += n as u64;
                        let done = (n as u64).min(u64::from(conn.outq_bytes));
                        conn.outq_bytes -= done as u32;
                        if !conn.has(flag::SHUTDOWN) {
                            for b in unsent.drain(..).rev() {
                                self.sendq.push_front(&mut conn.outq, b);
                            }
                        } else {
                            conn.outq_bytes = 0;
                        }
                    }
                    Err(_) => self.abort(index),
                }
                // In steady fan-out most completions leave nothing to do: skip the flush pass.
                let conn = &self.conns[index as usize];
                if !conn.outq.is_empty()
                    || conn.has(flag::SHUTDOWN | flag::CLOSE_AFTER_FLUSH)
                    || !conn.has(flag::RECV_ARMED)
                {
                    self.mark_dirty(index);
                }
            }
        }
    }

    /// The slab index of `key` if it still names the connection it was issued for.
    fn live(&self, key: ConnKey) -> Option<u32> {
        let conn = self.conns.get(key.index as usize)?;
        (conn.generation & GENERATION_MASK == key.generation & GENERATION_MASK).then_some(key.index)
    }

    fn mark_dirty(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        if !conn.has(flag::DIRTY) {
            conn.set(flag::DIRTY);
            self.dirty.push(index);
        }
    }

    fn on_accept(&mut self, fd: OwnedFd) {
        self.stats.accepted += 1;
        // Small frames must not wait for Nagle; failure only costs latency.
        let _ = SockRef::from(&fd).set_tcp_nodelay(true);
        let live = self.conns.len() as u32 - self.rejecting;
        let mut refusal = None;
        let mut peer: Option<IpAddr> = None;
        if self.drain_deadline.is_some() || live >= self.limits.connections_per_shard_max {
            refusal = Some(503);
        } else if let Some(per_ip) = &mut self.per_ip {
            match SockRef::from(&fd)
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket())
            {
                Some(addr) => {
                    if per_ip.admit(addr.ip(), self.now) {
                        peer = Some(addr.ip());
                    } else {
                        refusal = Some(429);
                    }
                }
                None => refusal = Some(503),
            }
        }
        if let Some(status) = refusal {
            if self.rejecting >= self.limits.reject_overflow_max {
                // Dropping the descriptor closes it.
                self.stats.refused_unanswered += 1;
                return;
            }
            if status == 429 {
                self.stats.refused_per_ip += 1;
            } else {
                self.stats.refused_over_limit += 1;
            }
            let index = self.insert(fd);
            self.conns[index as usize].set(flag::REJECTING);
            self.rejecting += 1;
            if status == 503 && self.drain_deadline.is_none() {
                // Read the request first (bounded by the handshake timeout): a Pusher client
                // is refused in its own protocol (see `refuse_over_capacity`).
                self.conns[index as usize].set(flag::OVER_CAPACITY);
                let at = self
                    .now
                    .wrapping_add(ms_to_ticks(self.limits.handshake_timeout_ms));
                self.set_deadline(index, at);
            } else {
                self.respond_error(index, status);
            }
            return;
        }
        let index = self.insert(fd);
        if let (Some(ip), Some(per_ip)) = (peer, &mut self.per_ip) {
            per_ip.bind(index, ip);
        }
        let at = self
            .now
            .wrapping_add(ms_to_ticks(self.limits.handshake_timeout_ms));
        self.set_deadline(index, at);
    }

    fn insert(&mut self, fd: OwnedFd) -> u32 {
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & GENERATION_MASK;
        if self.next_generation == 0 {
            self.next_generation = 1;
        }
        let index = self.conns.insert(Conn::new(fd, generation)) as u32;
        self.conns[index as usize].last_activity = self.now;
        self.mark_dirty(index);
        index
    }

    /// Frees a connection's slot (its descriptor closes with it). Only once no operation is in
    /// flight: the kernel may still own its buffers until then.
    fn release(&mut self, index: u32) {
        let conn = self.conns.remove(index as usize);
        debug_assert!(!conn.has(flag::RECV_ARMED | flag::SEND_INFLIGHT));
        debug_assert!(conn.outq.is_empty());
        let generation = conn.generation;
        let rejecting = conn.has(flag::REJECTING);
        if let Phase::WebSocket(ws) = conn.phase {
            self.held_bytes = self
                .held_bytes
                .saturating_sub(ws.decoder.buffered_bytes() as u64);
            self.stats.websockets = self.stats.websockets.saturating_sub(1);
            match ws.endpoint {
                Endpoint::Topic { id, slot } => self.unsubscribe(index, id, slot),
                Endpoint::Pusher(pc) => self.pusher_release(index, generation, *pc),
                Endpoint::Echo => {}
            }
        }
        if rejecting {
            self.rejecting -= 1;
        }
        if let Some(per_ip) = &mut self.per_ip {
            per_ip.unbind(index);
        }
    }

    fn on_accept_error(&mut self, e: io::Error) {
        self.stats.accept_errors += 1;
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                // Out of descriptors or memory: pause accepting instead of spinning on the
                // pending connection, and say so at most once a second.
                self.accept_paused_until =
                    Some(self.now.wrapping_add(ms_to_ticks(ACCEPT_BACKOFF_MS)));
                self.accept_error_log.warn(
                    self.now,
                    &format!("accept failed: {e}; pausing accepts for {ACCEPT_BACKOFF_MS} ms"),
                );
            }
            Some(libc::ECANCELED) => {}
            _ => tracing::debug!("accept failed: {e}"),
        }
    }

    fn on_bytes(&mut self, index: u32, data: &mut [u8]) {
        let now = self.now;
        let conn = &mut self.conns[index as usize];
        if conn.has(flag::READ_DONE) {
            return;
        }
        conn.last_activity = now;
        match &mut conn.phase {
            Phase::WebSocket(ws) => {
                ws.ping_outstanding = false;
                self.on_ws_bytes(index, data)
            }
            Phase::Http(h) if h.awaiting_reply => {
                // The answer to the previous request comes from the hub; later requests wait
                // (bounded like any incomplete request).
                let held = h.pending.as_ref().map_or(0, |p| p.len());
                let cap = 2 * self.limits.header_bytes_max + self.limits.body_bytes_max;
                if held + data.len() > cap {
                    self.respond_error(index, 431);
                    return;
                }
                h.pending
                    .get_or_insert_with(Default::default)
                    .extend_from_slice(data);
                self.held_bytes += data.len() as u64;
            }
            Phase::Http(h) => {
                if let Some(mut pending) = h.pending.take() {
                    self.held_bytes = self.held_bytes.saturating_sub(pending.len() as u64);
                    let cap = 2 * self.limits.header_bytes_max + self.limits.body_bytes_max;
                    if pending.len() + data.len() > cap {
                        // More than one maximal request is waiting while the first is still
                        // incomplete: the parser would refuse it anyway.
                        self.respond_error(index, 431);
                        return;
                    }
                    pending.extend_from_slice(data);
                    let consumed = self.on_http_bytes(index, &mut pending);
                    self.keep_pending(index, &pending[consumed..]);
                } else {
                    let consumed = self.on_http_bytes(index, data);
                    self.keep_pending(index, &data[consumed..]);
                }
            }
        }
    }

    /// Keeps the unparsed tail of an incomplete request for the next read.
    fn keep_pending(&mut self, index: u32, rest: &[u8]) {
        let conn = &mut self.conns[index as usize];
        if rest.is_empty() || conn.has(flag::READ_DONE) {
            return;
        }
        if let Phase::Http(h) = &mut conn.phase {
            self.held_bytes += rest.len() as u64;
            h.pending = Some(Box::new(rest.to_vec()));
        }
    }

    /// Parses and answers every complete request in `input`; returns the bytes consumed. After an
    /// upgrade the rest of `input` is WebSocket bytes and is handed to the decoder at once.
    fn on_http_bytes(&mut self, index: u32, input: &mut [u8]) -> usize {
        let http_limits = self.limits.http();
        let draining = self.drain_deadline.is_some();
        let mut pos = 0;
        loop {
            if self.conns[index as usize].has(flag::READ_DONE) {
                return input.len();
            }
            if pos == input.len() {
                return pos;
            }
            let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
            let outcome = match http::parse_head(&input[pos..], &mut headers, &http_limits) {
                Ok(None) => return pos,
                Err(e) => {
                    self.respond_error(index, e.status());
                    return input.len();
                }
                Ok(Some(head)) if self.conns[index as usize].has(flag::OVER_CAPACITY) => {
                    self.refuse_over_capacity(index, &head);
                    return input.len();
                }
                Ok(Some(head)) => {
                    let total = head.head_len + head.content_length;
                    if input.len() - pos < total {
                        self.await_body(index);
                        return pos;
                    }
                    let body = &input[pos + head.head_len..pos + total];
                    let routed = router::route(&head, body, &self.config, draining);
                    let mut out = Vec::with_capacity(256);
                    let keep_alive = head.keep_alive && !draining;
                    match routed {
                        Routed::Upgrade(to, accept) => {
                            handshake::write_accept(&accept, &mut out);
                            let mut refusal = None;
                            let endpoint = match to {
                                UpgradeTo::Echo => Endpoint::Echo,
                                UpgradeTo::Topic(name) => self.subscribe(index, name),
                                UpgradeTo::Pusher {
                                    path,
                                    query,
                                    origin,
                                } => match self.pusher_admit(index, path, query, origin) {
                                    Ok(pc) => Endpoint::Pusher(pc),
                                    Err(code) => {
                                        refusal = Some(code);
                                        Endpoint::Echo
                                    }
                                },
                            };
                            HttpOutcome::Upgrade(endpoint, total, out, refusal)
                        }
                        Routed::Api {
                            method,
                            path,
                            query,
                            body,
                        } => match self.api_request(index, method, path, query, body) {
                            pusher::ApiAnswer::Now(status, body, allow) => {
                                let mut headers = vec![("Content-Type", "application/json")];
                                if let Some(allow) = allow {
                                    headers.push(("Allow", allow));
                                }
                                if status == 503 {
                                    headers.push(("Retry-After", "1"));
                                }
                                http::write_response(
                                    status,
                                    &headers,
                                    body.as_bytes(),
                                    keep_alive,
                                    &mut out,
                                );
                                if keep_alive {
                                    HttpOutcome::Next(total, out)
                                } else {
                                    HttpOutcome::Close(out)
                                }
                            }
                            pusher::ApiAnswer::Later => HttpOutcome::Await(total, keep_alive),
                        },
                        Routed::Publish { topic, body } => {
                            let (status, body) = match self.publish_http(topic, body) {
                                Ok(()) => (202, &b"{\"ok\":true}"[..]),
                                Err(MeshFull) => (
                                    503,
                                    &b"{\"error\":\"a shard-to-shard queue is full; retry\"}"[..],
                                ),
                            };
                            let mut headers = vec![("Content-Type", "application/json")];
                            if status == 503 {
                                headers.push(("Retry-After", "1"));
                            }
                            http::write_response(status, &headers, body, keep_alive, &mut out);
                            if keep_alive {
                                HttpOutcome::Next(total, out)
                            } else {
                                HttpOutcome::Close(out)
                            }
                        }
                        Routed::Reject(e) => {
                            handshake::write_reject(&e, &mut out);
                            HttpOutcome::Close(out)
                        }
                        Routed::Respond(r) => {
                            http::write_response(r.status, r.headers, r.body, keep_alive, &mut out);
                            if keep_alive {
                                HttpOutcome::Next(total, out)
                            } else {
                                HttpOutcome::Close(out)
                            }
                        }
                    }
                }
            };
            match outcome {
                HttpOutcome::Next(total, out) => {
                    pos += total;
                    self.stats.http_requests += 1;
                    self.queue_control(index, Bytes::from(out));
                    let idle = self
                        .now
                        .wrapping_add(ms_to_ticks(self.limits.http_idle_timeout_ms));
                    if let Phase::Http(h) = &mut self.conns[index as usize].phase {
                        h.awaiting_body = false;
                        h.answered = true;
                    }
                    self.set_deadline_exact(index, idle);
                }
                HttpOutcome::Close(out) => {
                    self.stats.http_requests += 1;
                    self.queue_control(index, Bytes::from(out));
                    self.close_after_flush(index);
                    return input.len();
                }
                HttpOutcome::Await(total, keep_alive) => {
                    pos += total;
                    self.stats.http_requests += 1;
                    if let Phase::Http(h) = &mut self.conns[index as usize].phase {
                        h.awaiting_body = false;
                        h.awaiting_reply = true;
                        h.reply_keep_alive = keep_alive;
                    }
                    // The hub answers within a turn or two; a lost answer closes the connection.
                    let at = self
                        .now
                        .wrapping_add(ms_to_ticks(self.limits.http_body_timeout_ms));
                    self.set_deadline_exact(index, at);
                    return pos;
                }
                HttpOutcome::Upgrade(endpoint, total, out, refusal) => {
                    pos += total;
                    self.stats.handshakes += 1;
                    self.stats.websockets += 1;
                    self.queue_control(index, Bytes::from(out));
                    let pusher = matches!(endpoint, Endpoint::Pusher(_));
                    let conn = &mut self.conns[index as usize];
                    conn.phase = Phase::WebSocket(WebSocket {
                        decoder: Default::default(),
                        endpoint,
                        close_sent: false,
                        close_received: false,
                        ping_outstanding: false,
                    });
                    if let Some(code) = refusal {
                        self.pusher_refuse(index, code);
                        return input.len();
                    }
                    if pusher {
                        self.pusher_opened(index);
                    } else {
                        let at = self.now.wrapping_add(ms_to_ticks(self.limits.idle_ping_ms));
                        self.set_deadline_exact(index, at);
                    }
                    // Bytes after the request in the same read are the first frames.
                    if !self.conns[index as usize].has(flag::READ_DONE) {
                        self.on_ws_bytes(index, &mut input[pos..]);
                    }
                    return input.len();
                }
            }
        }
    }

    fn await_body(&mut self, index: u32) {
        let at = self
            .now
            .wrapping_add(ms_to_ticks(self.limits.http_body_timeout_ms));
        if let Phase::Http(h) = &mut self.conns[index as usize].phase
            && !h.awaiting_body
        {
            h.awaiting_body = true;
            self.set_deadline_exact(index, at);
        }
    }

    /// A connection accepted over the connection limit sent its request: a valid Pusher
    /// upgrade is completed and closed with `pusher:error` 4100 (over capacity: pusher-js waits
    /// and reconnects), anything else gets 503 with Retry-After.
    fn refuse_over_capacity(&mut self, index: u32, head: &http::RequestHead<'_, '_>) {
        let accept = head
            .path
            .starts_with("/app/")
            .then(|| handshake::validate(head).ok())
            .flatten();
        let Some(accept) = accept else {
            self.respond_error(index, 503);
            return;
        };
        let mut out = Vec::with_capacity(160);
        handshake::write_accept(&accept, &mut out);
        self.queue_control(index, Bytes::from(out));
        self.conns[index as usize].phase = Phase::WebSocket(WebSocket {
            decoder: Default::default(),
            endpoint: Endpoint::Echo,
            close_sent: false,
            close_received: false,
            ping_outstanding: false,
        });
        self.stats.websockets += 1;
        self.pusher_refuse(index, crate::pusher::protocol::ErrorCode::OverCapacity);
    }

    /// Answers with a bare status (a request that could not be parsed, a refusal), then closes.
    fn respond_error(&mut self, index: u32, status: u16) {
        let mut out = Vec::with_capacity(160);
        let body = http::reason_phrase(status).as_bytes();
        let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "text/plain; charset=utf-8")];
        if matches!(status, 429 | 503) {
            headers.push(("Retry-After", "1"));
        }
        http::write_response(status, &headers, body, false, &mut out);
        self.queue_control(index, Bytes::from(out));
        self.close_after_flush(index);
    }

    fn on_ws_bytes(&mut self, index: u32, input: &mut [u8]) {
        let limits = self.limits.decoder();
        let allow_publish = self.config.allow_client_publish;
        let mut to_publish: Vec<Bytes> = Vec::new();
        let mut pusher_texts: Vec<String> = Vec::new();
        let conn = &mut self.conns[index as usize];
        let Conn {
            phase,
            outq,
            outq_bytes,
            flags,
            ..
        } = conn;
        let sendq = &mut self.sendq;
        let Phase::WebSocket(ws) = phase else { return };
        let held_before = ws.decoder.buffered_bytes() as u64;
        let mut pos = 0;
        let mut failure: Option<u16> = None;
        let mut close_after = false;
        while pos < input.len() && failure.is_none() && !close_after {
            let (n, ev) = match ws.decoder.handle_bytes(&mut input[pos..], &limits) {
                Ok(r) => r,
                Err(e) => {
                    self.stats.protocol_errors += 1;
                    failure = Some(e.close_code());
                    break;
                }
            };
            pos += n;
            let Some(ev) = ev else { break };
            let text = matches!(ev, WsEvent::Text(_));
            match ev {
                WsEvent::Text(p) | WsEvent::Binary(p) if !ws.close_sent => {
                    self.stats.messages_in += 1;
                    let opcode = if text { Opcode::Text } else { Opcode::Binary };
                    match &ws.endpoint {
                        Endpoint::Pusher(_) if text => {
                            // The decoder validated the UTF-8 of a text message.
                            pusher_texts.push(String::from_utf8_lossy(p).into_owned());
                        }
                        Endpoint::Pusher(_) => {
                            // Pusher protocol messages are JSON text; binary is refused.
                            self.stats.protocol_errors += 1;
                            failure = Some(close::UNSUPPORTED_DATA);
                        }
                        Endpoint::Echo => {
                            let mut out = Vec::with_capacity(p.len() + frame::MAX_HEADER_BYTES);
                            frame::encode_frame(opcode, p, &mut out);
                            // Whether the reader keeps up is judged when sends are flushed.
                            push_unlimited(sendq, outq, outq_bytes, Bytes::from(out));
                        }
                        Endpoint::Topic { .. } if allow_publish => {
                            // Encoded once here; every subscriber on every shard gets these bytes.
                            let mut out = Vec::with_capacity(p.len() + frame::MAX_HEADER_BYTES);
                            frame::encode_frame(opcode, p, &mut out);
                            to_publish.push(Bytes::from(out));
                        }
                        Endpoint::Topic { .. } => {
                            // Client publishing is off: a defined refusal, not a silent drop.
                            self.stats.client_publish_refused += 1;
                            failure = Some(close::POLICY_VIOLATION);
                        }
                    }
                }
                WsEvent::Text(_) | WsEvent::Binary(_) => {}
                WsEvent::Ping(p) => {
                    if !ws.close_sent {
                        let mut out = Vec::with_capacity(p.len() + 2);
                        frame::encode_frame(Opcode::Pong, p, &mut out);
                        push_unlimited(sendq, outq, outq_bytes, Bytes::from(out));
                    }
                }
                WsEvent::Pong(_) => {}
                WsEvent::Close(CloseFrame { code, .. }) => {
                    // RFC 6455 §5.5.1: answer a close with a close (echoing its code), then the
                    // server closes TCP.
                    ws.close_received = true;
                    if !ws.close_sent {
                        ws.close_sent = true;
                        let mut out = Vec::with_capacity(4);
                        match code {
                            Some(code) => frame::encode_close(code, "", &mut out),
                            None => frame::encode_frame(Opcode::Close, &[], &mut out),
                        }
                        push_unlimited(sendq, outq, outq_bytes, Bytes::from(out));
                    }
                    close_after = true;
                }
            }
        }
        if let Some(code) = failure {
            // RFC 6455 §7.1.7: fail the connection: send a close with the code, then close TCP.
            if !ws.close_sent {
                ws.close_sent = true;
                let mut out = Vec::with_capacity(4);
                frame::encode_close(code, "", &mut out);
                push_unlimited(sendq, outq, outq_bytes, Bytes::from(out));
            }
            close_after = true;
        }
        let held_after = ws.decoder.buffered_bytes() as u64;
        self.held_bytes = (self.held_bytes + held_after).saturating_sub(held_before);
        let publish_to = match ws.endpoint {
            Endpoint::Topic { id, .. } if !to_publish.is_empty() => Some(id),
            _ => None,
        };

        if close_after {
            *flags |= flag::READ_DONE;
        }
        if !pusher_texts.is_empty() {
            self.pusher_texts(index, pusher_texts);
        }
        if let Some(id) = publish_to {
            let me = Some((self.id as u16, self.conn_key(index)));
            // The publisher is subscribed, so the topic outlives taking the mesh's messages.
            self.catch_up();
            for frame in to_publish {
                if self.publish(id, frame, me).is_err() {
                    // RFC 6455 §7.4.1 1013: try again later; the publisher learns its messages
                    // were not all taken, instead of losing them silently.
                    self.send_close(index, 1013);
                    break;
                }
            }
        }
        if close_after {
            self.close_after_flush(index);
        } else {
            self.mark_dirty(index);
        }
    }

    /// Subscribes connection `index` to topic `name`, announcing the shard's interest to the
    /// other shards when it is the first local subscriber.
    fn subscribe(&mut self, index: u32, name: &str) -> Endpoint {
        let (id, slot, first) = self.topics.subscribe(name, index);
        if first {
            let name = Arc::clone(&self.topics.topic(id).name);
            self.mesh.announce_interest(&name, true);
        }
        Endpoint::Topic { id, slot }
    }

    fn unsubscribe(&mut self, index: u32, id: TopicId, slot: u32) {
        let name = Arc::clone(&self.topics.topic(id).name);
        let gone = self.topics.unsubscribe(id, slot, index);
        if let Some((moved, slot)) = gone.moved {
            self.set_topic_slot(moved, id, slot);
        }
        if gone.last_local {
            self.mesh.announce_interest(&name, false);
        }
    }

    /// Connection `index` now sits at `slot` in topic `id`'s subscriber list.
    fn set_topic_slot(&mut self, index: u32, id: TopicId, slot: u32) {
        let Some(Conn {
            phase: Phase::WebSocket(ws),
            ..
        }) = self.conns.get_mut(index as usize)
        else {
            return;
        };
        match &mut ws.endpoint {
            Endpoint::Topic { slot: s, .. } => *s = slot,
            Endpoint::Pusher(pc) => {
                if let Some(entry) = pc.subs.iter_mut().find(|(t, _)| *t == id) {
                    entry.1 = slot;
                }
            }
            Endpoint::Echo => {}
        }
    }

    /// The key of a live connection.
    fn conn_key(&self, index: u32) -> ConnKey {
        ConnKey {
            index,
            generation: self.conns[index as usize].generation,
        }
    }

    /// `POST /topics/{name}`: the body becomes one frame (text when it is UTF-8), encoded once.
    fn publish_http(&mut self, name: &str, body: &[u8]) -> Result<(), MeshFull> {
        self.stats.http_publishes += 1;
        self.catch_up();
        let Some(id) = self.topics.lookup(name) else {
            // Nobody subscribes to it on any shard this shard knows of.
            return Ok(());
        };
        let opcode = if simdutf8::basic::from_utf8(body).is_ok() {
            Opcode::Text
        } else {
            Opcode::Binary
        };
        let mut out = Vec::with_capacity(body.len() + frame::MAX_HEADER_BYTES);
        frame::encode_frame(opcode, body, &mut out);
        self.publish(id, Bytes::from(out), None)
    }

    /// Sends an encoded frame to every subscriber of `id`: one ring message to each other shard
    /// with subscribers, and a fan-out job here. All or nothing: when a ring is full nothing is
    /// sent and the caller reports it. `exclude` (shard, connection) does not get it. Callers
    /// [`State::catch_up`] first.
    fn publish(
        &mut self,
        id: TopicId,
        frame: Bytes,
        exclude: Option<(u16, ConnKey)>,
    ) -> Result<(), MeshFull> {
        let topic = self.topics.topic(id);
        let name = Arc::clone(&topic.name);
        if !self.mesh.has_room(topic.remote_shards()) {
            self.stats.mesh_full += 1;
            return Err(MeshFull);
        }
        self.stats.publishes += 1;
        let remote: Vec<usize> = topic.remote_shards().collect();
        let local = topic.live > 0;
        for dest in remote {
            let exclude = exclude
                .filter(|(shard, _)| *shard as usize == dest)
                .map(|(_, key)| key);
            self.mesh
                .publish(dest, Arc::clone(&name), frame.clone(), exclude);
        }
        if local {
            let exclude = exclude
                .filter(|(shard, _)| *shard as usize == self.id)
                .and_then(|(_, key)| self.live(key));
            self.start_fanout(id, frame, exclude);
        }
        Ok(())
    }

    /// Takes what the other shards already sent before publishing: interest they announced
    /// before answering a subscribe (so a publish that follows a subscription succeeded
    /// elsewhere reaches it), and publishes made before this one (so one publisher's order
    /// holds when its next request lands on another shard).
    fn catch_up(&mut self) {
        if self.mesh.has_inbound() {
            self.drain_mesh();
        }
    }

    fn start_fanout(&mut self, id: TopicId, frame: Bytes, exclude: Option<u32>) {
        self.fanout
            .publish(&mut self.topics, id, Rc::new(frame), exclude);
    }

    /// Delivers a frame that came from elsewhere (another shard, the hub) to the local
    /// subscribers of `topic`.
    fn fanout_local(&mut self, topic: &str, frame: Bytes, exclude: Option<u32>) {
        if let Some(id) = self.topics.lookup(topic)
            && self.topics.topic(id).live > 0
        {
            self.start_fanout(id, frame, exclude);
        }
    }

    /// Takes messages from the other shards: publishes become local fan-outs, interest
    /// changes update the registry.
    fn drain_mesh(&mut self) {
        let max = self.limits.mesh_messages_per_turn_max as usize;
        let mut msgs = Vec::new();
        self.mesh.drain(max, |_, m| msgs.push(m));
        for m in msgs {
            match m {
                MeshMsg::Publish {
                    topic,
                    frame,
                    exclude,
                } => {
                    self.stats.mesh_in += 1;
                    let exclude = exclude.and_then(|key| self.live(key));
                    self.fanout_local(&topic, frame, exclude);
                }
                MeshMsg::CacheSet { topic, frame, at } => self.cache.set(&topic, frame, at),
                MeshMsg::Interest { topic, from, on } => self.topics.set_remote(&topic, from, on),
            }
        }
    }

    /// Queues frames to subscribers, oldest publish first, at most
    /// `fanout_deliveries_per_turn_max` per turn, so one hot topic cannot starve the shard.
    /// Publishes of one topic are walked together, subscriber by subscriber, so each
    /// subscriber's one send per turn carries every frame due to it; a publish joins the walk
    /// in progress (see `broker::fanout`).
    fn run_fanout(&mut self) {
        let mut budget = self.limits.fanout_deliveries_per_turn_max as usize;
        let mut seg = std::mem::take(&mut self.segment);
        loop {
            let more = self
                .fanout
                .next_segment(&mut self.topics, &mut budget, &mut seg);
            for (topic, index, slot) in seg.moved.drain(..) {
                self.set_topic_slot(index, topic, slot);
            }
            if !more {
                break;
            }
            for (index, frame) in seg.deliveries() {
                self.deliver(index, frame, seg.sharers);
            }
        }
        seg.frames.clear();
        self.segment = seg;
    }

    /// Queues a shared frame to one subscriber. Whether it keeps up is judged when its sends are
    /// flushed (see `flush_dirty_inner`), not here: a burst queued within one turn has not been
    /// offered to the kernel yet, so it says nothing about the reader.
    fn deliver(&mut self, index: u32, frame: &Rc<Bytes>, sharers: u32) {
        let Some(conn) = self.conns.get_mut(index as usize) else {
            return;
        };
        if conn.has(flag::SHUTDOWN | flag::CLOSE_AFTER_FLUSH) {
            return;
        }
        match &conn.phase {
            Phase::WebSocket(ws) if !ws.close_sent => {}
            _ => return,
        }
        let len = frame.len();
        conn.outq_bytes = conn.outq_bytes.saturating_add(len as u32);
        self.sendq
            .push_back(&mut conn.outq, OutBuf::shared(Rc::clone(frame), sharers));
        self.stats.deliveries += 1;
        self.mark_dirty(index);
    }

    /// Wakes each shard this one pushed mesh messages to during the turn, once.
    fn wake_peers(&mut self, driver: &mut Driver) {
        let wakers = &self.shared.wakers;
        self.mesh.take_woken(|dest| {
            if let Some(fd) = wakers.get(dest).and_then(|w| w.get()) {
                let _ = driver.wake(fd.as_raw_fd());
            }
        });
        if self.hub.take_pushed()
            && let Some(fd) = self.shared.hub_waker.get()
        {
            let _ = driver.wake(fd.as_raw_fd());
        }
    }

    /// Queues protocol output that is small and bounded by construction (HTTP answers, control
    /// frames).
    fn queue_control(&mut self, index: u32, bytes: Bytes) {
        let conn = &mut self.conns[index as usize];
        push_unlimited(&mut self.sendq, &mut conn.outq, &mut conn.outq_bytes, bytes);
        self.mark_dirty(index);
    }

    /// Stops reading, flushes what is queued, then shuts the write side and waits (bounded by the
    /// close timeout) for the peer to close: a lingering close, so the last bytes are not lost
    /// to a reset.
    fn close_after_flush(&mut self, index: u32) {
        let at = self
            .now
            .wrapping_add(ms_to_ticks(self.limits.close_timeout_ms));
        let conn = &mut self.conns[index as usize];
        conn.set(flag::READ_DONE | flag::CLOSE_AFTER_FLUSH);
        if let Phase::Http(h) = &mut conn.phase
            && let Some(p) = h.pending.take()
        {
            self.held_bytes = self.held_bytes.saturating_sub(p.len() as u64);
        }
        self.set_deadline_exact(index, at);
        self.mark_dirty(index);
    }

    /// Closes both directions now; the slot is freed once no operation is in flight.
    fn abort(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        if conn.has(flag::SHUTDOWN) {
            return;
        }
        // Wakes an armed receive (it completes with 0) and fails an in-flight send.
        let _ = SockRef::from(&conn.fd).shutdown(std::net::Shutdown::Both);
        conn.set(flag::SHUTDOWN | flag::READ_DONE);
        // Bytes in flight stay counted until their completion; the rest is dropped now.
        let queued = self.sendq.clear(&mut conn.outq);
        conn.outq_bytes = conn.outq_bytes.saturating_sub(queued as u32);
        conn.deadline = 0;
        match &mut conn.phase {
            Phase::Http(h) => {
                if let Some(p) = h.pending.take() {
                    self.held_bytes = self.held_bytes.saturating_sub(p.len() as u64);
                }
            }
            Phase::WebSocket(ws) => {
                let buffered = ws.decoder.buffered_bytes() as u64;
                ws.decoder = Default::default();
                self.held_bytes = self.held_bytes.saturating_sub(buffered);
            }
        }
        self.mark_dirty(index);
    }

    /// Sets the deadline to exactly `at` (earlier or later than before).
    fn set_deadline_exact(&mut self, index: u32, at: Tick) {
        self.conns[index as usize].deadline = 0;
        self.set_deadline(index, at);
    }

    fn set_deadline(&mut self, index: u32, at: Tick) {
        let at = if at == 0 { 1 } else { at };
        let conn = &mut self.conns[index as usize];
        conn.deadline = at;
        if conn.queued_tick == 0 || !tick_reached(conn.queued_tick, at) {
            conn.queued_tick = self.wheel.insert(index, at);
        }
    }

    fn fire_timers(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(self.now, &mut due);
        for (index, tick) in due.drain(..) {
            let Some(conn) = self.conns.get_mut(index as usize) else {
                continue;
            };
            if conn.queued_tick != tick {
                continue;
            }
            conn.queued_tick = 0;
            if conn.deadline == 0 {
                continue;
            }
            if tick_reached(conn.deadline, self.now) {
                conn.deadline = 0;
                self.on_timeout(index);
            } else {
                conn.queued_tick = self.wheel.insert(index, conn.deadline);
            }
        }
        self.due = due;
    }

    fn on_timeout(&mut self, index: u32) {
        let now = self.now;
        let idle_ping = ms_to_ticks(self.limits.idle_ping_ms);
        let conn = &mut self.conns[index as usize];
        let closing = conn.has(flag::CLOSE_AFTER_FLUSH | flag::SHUTDOWN);
        let draining = conn.has(flag::DRAINING);
        let last_activity = conn.last_activity;
        let Phase::WebSocket(ws) = &mut conn.phase else {
            // Handshake, idle and body timeouts, and closes that never completed.
            self.stats.timeouts += 1;
            self.abort(index);
            return;
        };
        if closing || ws.close_sent {
            self.stats.timeouts += 1;
            self.abort(index);
        } else if draining {
            conn.clear(flag::DRAINING);
            if conn.is_pusher() {
                self.pusher_shutdown(index);
            } else {
                self.send_close(index, close::GOING_AWAY);
            }
        } else if matches!(ws.endpoint, Endpoint::Pusher(_)) {
            // Pusher's own activity timeout and pong deadline replace the raw idle ping.
            self.pusher_timeout(index);
        } else if ws.ping_outstanding {
            self.stats.pong_timeouts += 1;
            self.abort(index);
        } else if !tick_reached(last_activity.wrapping_add(idle_ping), now) {
            self.set_deadline(index, last_activity.wrapping_add(idle_ping));
        } else {
            // RFC 6455 §5.5.2: a ping as a keepalive; any inbound traffic answers it.
            ws.ping_outstanding = true;
            self.stats.pings_sent += 1;
            let mut out = Vec::with_capacity(2);
            frame::encode_frame(Opcode::Ping, &[], &mut out);
            self.queue_control(index, Bytes::from(out));
            let at = now.wrapping_add(ms_to_ticks(self.limits.pong_timeout_ms));
            self.set_deadline(index, at);
        }
    }

    /// Drops the frames queued for a connection that have not started on the wire (a frame
    /// already half sent stays, so the stream remains well formed) and closes it: with `code`,
    /// or 4100 (over capacity: reconnect after a pause) on a Pusher connection.
    fn drop_unsent_and_close(&mut self, index: u32, code: u16) {
        let conn = &mut self.conns[index as usize];
        let dropped = self.sendq.clear_unstarted(&mut conn.outq);
        conn.outq_bytes = conn.outq_bytes.saturating_sub(dropped as u32);
        if conn.is_pusher() {
            self.send_close_reason(index, 4100, "Over capacity");
        } else {
            self.send_close(index, code);
        }
    }

    /// Starts the close handshake from our side with `code`.
    fn send_close(&mut self, index: u32, code: u16) {
        self.send_close_reason(index, code, "");
    }

    /// Starts the close handshake from our side with `code` and `reason` (at most 123 bytes).
    fn send_close_reason(&mut self, index: u32, code: u16, reason: &str) {
        let conn = &mut self.conns[index as usize];
        if let Phase::WebSocket(ws) = &mut conn.phase {
            if ws.close_sent {
                return;
            }
            ws.close_sent = true;
        }
        let mut out = Vec::with_capacity(4 + reason.len());
        frame::encode_close(code, reason, &mut out);
        self.queue_control(index, Bytes::from(out));
        self.close_after_flush(index);
    }

    /// Queues a text frame to a WebSocket connection (protocol output, bounded by construction).
    fn queue_text(&mut self, index: u32, text: &str) {
        let Some(Conn {
            phase: Phase::WebSocket(ws),
            ..
        }) = self.conns.get(index as usize)
        else {
            return;
        };
        if ws.close_sent {
            return;
        }
        let mut out = Vec::with_capacity(text.len() + frame::MAX_HEADER_BYTES);
        frame::encode_frame(Opcode::Text, text.as_bytes(), &mut out);
        self.queue_control(index, Bytes::from(out));
    }

    /// The hub's answer to an HTTP API request this connection is waiting on; then the
    /// requests that arrived meanwhile are served.
    fn http_reply(&mut self, index: u32, status: u16, body: &str) {
        let conn = &mut self.conns[index as usize];
        let shut = conn.has(flag::SHUTDOWN);
        let Phase::Http(h) = &mut conn.phase else {
            return;
        };
        if !h.awaiting_reply || shut {
            return;
        }
        h.awaiting_reply = false;
        let keep_alive = h.reply_keep_alive && self.drain_deadline.is_none();
        let pending = h.pending.take();
        let mut out = Vec::with_capacity(160 + body.len());
        http::write_response(
            status,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
            keep_alive,
            &mut out,
        );
        self.queue_control(index, Bytes::from(out));
        if !keep_alive {
            if let Some(p) = pending {
                self.held_bytes = self.held_bytes.saturating_sub(p.len() as u64);
            }
            self.close_after_flush(index);
            return;
        }
        let idle = self
            .now
            .wrapping_add(ms_to_ticks(self.limits.http_idle_timeout_ms));
        self.set_deadline_exact(index, idle);
        if let Some(mut pending) = pending {
            self.held_bytes = self.held_bytes.saturating_sub(pending.len() as u64);
            let consumed = self.on_http_bytes(index, &mut pending);
            self.keep_pending(index, &pending[consumed..]);
        }
    }

    /// Memory the budget covers: queued outbound data as the send queues hold it (a shared
    /// frame costs its queue node per subscriber, and its bytes once per fan-out) plus bytes held
    /// for message reassembly and incomplete HTTP requests.
    fn memory_bytes(&self) -> u64 {
        self.sendq.memory_bytes() + self.held_bytes
    }

    /// Over the shard's memory budget: close the connections holding the most until it is back
    /// under 90% of it. Rare by design, so a scan is fine.
    fn enforce_budget(&mut self) {
        let budget = self.limits.memory_budget_bytes;
        if self.memory_bytes() <= budget {
            return;
        }
        let mut holders: Vec<(u64, u32)> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.has(flag::SHUTDOWN))
            .map(|(i, c)| {
                let reassembly = match &c.phase {
                    Phase::WebSocket(ws) => ws.decoder.buffered_bytes() as u64,
                    Phase::Http(h) => h.pending.as_ref().map_or(0, |p| p.len() as u64),
                };
                (u64::from(c.outq_bytes) + reassembly, i as u32)
            })
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        let target = budget / 10 * 9;
        for (held, index) in holders {
            if self.memory_bytes() <= target || held == 0 {
                break;
            }
            self.stats.budget_closes += 1;
            let conn = &self.conns[index as usize];
            let close_sent = matches!(&conn.phase, Phase::WebSocket(ws) if ws.close_sent);
            if conn.is_pusher() && !close_sent {
                // Pusher clients get 4100 (over capacity: reconnect after a pause) rather than
                // a reset; the queue is dropped all the same, so the memory is freed now.
                self.drop_unsent_and_close(index, close::POLICY_VIOLATION);
            } else {
                self.abort(index);
            }
        }
        tracing::warn!(
            shard = self.id,
            budget,
            held = self.memory_bytes(),
            "memory budget exceeded: closed the largest holders"
        );
    }

    fn flush_dirty(&mut self, driver: &mut Driver) {
        let sends_before = self.stats.sends;
        self.flush_dirty_inner(driver);
        if self.stats.sends != sends_before {
            self.stats.send_batches += 1;
        }
    }

    fn flush_dirty_inner(&mut self, driver: &mut Driver) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for index in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(index as usize) else {
                continue;
            };
            conn.clear(flag::DIRTY);
            let key = ConnKey {
                index,
                generation: conn.generation,
            };
            if conn.has(flag::SHUTDOWN) {
                self.release_if_idle(index);
                continue;
            }
            // A send submitted on an earlier turn that the kernel has still not taken, with more
            // than `max_outbound_bytes` queued behind it: the reader is that far behind. Its
            // unsent queue is dropped (keeping a frame already half on the wire, so the stream
            // stays well formed) and it is closed with 1008, counted.
            if conn.has(flag::SEND_INFLIGHT)
                && conn.outq_bytes as usize > self.limits.outbound_bytes_max
                && matches!(&conn.phase, Phase::WebSocket(ws) if !ws.close_sent)
            {
                self.stats.slow_consumer_closes += 1;
                self.drop_unsent_and_close(index, close::POLICY_VIOLATION);
                continue;
            }
            if !conn.outq.is_empty() && !conn.has(flag::SEND_INFLIGHT) {
                let (sendq, outq) = (&mut self.sendq, &mut conn.outq);
                match driver.send(key, conn.fd.as_raw_fd(), &mut || sendq.pop_front(outq)) {
                    Ok(()) => {
                        self.stats.sends += 1;
                        conn.set(flag::SEND_INFLIGHT);
                    }
                    Err(e) => {
                        tracing::debug!("send submit failed: {e}");
                        self.abort(index);
                        continue;
                    }
                }
            }
            let conn = &mut self.conns[index as usize];
            let flushed = conn.outq.is_empty() && !conn.has(flag::SEND_INFLIGHT);
            if conn.has(flag::CLOSE_AFTER_FLUSH) && flushed {
                if conn.has(flag::PEER_EOF) {
                    self.abort(index);
                    self.release_if_idle(index);
                    continue;
                }
                if !conn.has(flag::WRITE_SHUT) {
                    let _ = SockRef::from(&conn.fd).shutdown(std::net::Shutdown::Write);
                    conn.set(flag::WRITE_SHUT);
                }
            }
            let conn = &mut self.conns[index as usize];
            if !conn.has(flag::RECV_ARMED | flag::PEER_EOF | flag::SHUTDOWN) {
                match driver.arm_recv(key, conn.fd.as_raw_fd()) {
                    Ok(()) => conn.set(flag::RECV_ARMED),
                    Err(e) => {
                        tracing::debug!("recv submit failed: {e}");
                        self.abort(index);
                        self.release_if_idle(index);
                    }
                }
            }
        }
        // Connections marked dirty during this pass (aborts) are handled on the next turn.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn release_if_idle(&mut self, index: u32) {
        let conn = &self.conns[index as usize];
        if conn.has(flag::SHUTDOWN) && !conn.has(flag::RECV_ARMED | flag::SEND_INFLIGHT) {
            self.release(index);
        }
    }
}

enum HttpOutcome {
    /// Answered; `usize` bytes consumed; read the next request.
    Next(usize, Vec<u8>),
    /// Answer, then close.
    Close(Vec<u8>),
    /// Switch to WebSocket after `usize` bytes; a Pusher refusal is sent right after.
    Upgrade(
        Endpoint,
        usize,
        Vec<u8>,
        Option<crate::pusher::protocol::ErrorCode>,
    ),
    /// `usize` bytes consumed; the hub answers later; keep-alive after that answer.
    Await(usize, bool),
}

fn push_unlimited(
    sendq: &mut SendQueues,
    outq: &mut sendq::QueueRef,
    outq_bytes: &mut u32,
    bytes: Bytes,
) {
    *outq_bytes = outq_bytes.saturating_add(bytes.len() as u32);
    sendq.push_back(outq, OutBuf::from(bytes));
}

/// Logs a warning at most once a second, counting what it suppressed.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Tick>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn warn(&mut self, now: Tick, msg: &str) {
        let second = ms_to_ticks(1000);
        match self.last {
            Some(last) if !tick_reached(last.wrapping_add(second), now) => self.suppressed += 1,
            _ => {
                if self.suppressed > 0 {
                    tracing::warn!("{msg} ({} similar messages suppressed)", self.suppressed);
                } else {
                    tracing::warn!("{msg}");
                }
                self.last = Some(now);
                self.suppressed = 0;
            }
        }
    }
}
