//! A shard: one thread, one driver, one listener, one connection slab, one timer wheel.
//!
//! The shard owns everything it touches and shares nothing: connections never leave the shard
//! that accepted them. It turns driver completions into protocol calls (HTTP front, WebSocket
//! core) and protocol output into queued sends; it never blocks.

pub mod conn;
pub mod router;
pub mod timer;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use socket2::{SockRef, Socket};

use crate::config::{Limits, ServerConfig};
use crate::driver::{ConnKey, Driver, Event, RecvStop};
use crate::proto::close::CloseFrame;
use crate::proto::decoder::Event as WsEvent;
use crate::proto::frame::{self, Opcode};
use crate::proto::handshake;
use crate::proto::http::{self, HEADER_COUNT_CEILING};
use conn::{Conn, Http, Phase, WebSocket, flag};
use router::{Endpoint, Routed};
use timer::{Tick, TimerWheel, ms_to_ticks, tick_reached};

/// Generations travel in 24 bits of io_uring user data.
const GENERATION_MASK: u32 = 0x00ff_ffff;

/// How long accepting pauses after EMFILE/ENFILE, so a full descriptor table does not spin.
const ACCEPT_BACKOFF_MS: u32 = 100;

/// Counters a shard keeps about itself.
#[derive(Debug, Default, Clone)]
pub struct ShardStats {
    pub accepted: u64,
    pub refused_over_limit: u64,
    pub accept_errors: u64,
    pub handshakes: u64,
    pub messages_in: u64,
    pub protocol_errors: u64,
    pub outbound_overflows: u64,
    pub timeouts: u64,
}

pub struct Shard {
    // Declared first so it drops first: in-flight operations reference memory the shard owns.
    driver: Driver,
    state: State,
}

struct State {
    config: Arc<ServerConfig>,
    limits: Limits,
    listener: Socket,
    conns: Slab<Conn>,
    wheel: TimerWheel,
    epoch: Instant,
    now: Tick,
    next_generation: u32,
    dirty: Vec<u32>,
    due: Vec<(u32, Tick)>,
    accept_paused_until: Option<Tick>,
    accept_error_log: RateLimitedLog,
    stats: ShardStats,
}

impl Shard {
    pub fn new(driver: Driver, listener: Socket, config: Arc<ServerConfig>) -> Self {
        let limits = config.limits;
        Self {
            driver,
            state: State {
                config,
                limits,
                listener,
                conns: Slab::with_capacity(1024),
                wheel: TimerWheel::new(),
                epoch: Instant::now(),
                now: 0,
                next_generation: 1,
                dirty: Vec::with_capacity(1024),
                due: Vec::new(),
                accept_paused_until: None,
                accept_error_log: RateLimitedLog::default(),
                stats: ShardStats::default(),
            },
        }
    }

    pub fn driver_name(&self) -> &'static str {
        self.driver.name()
    }

    /// Runs until `stop` is set. Each turn: wait for completions (at most one timer tick), handle
    /// at most `completions_per_turn_max` of them, fire due timers, then submit the sends,
    /// receives and closes they produced in one batch.
    pub fn run(&mut self, stop: &AtomicBool) -> io::Result<ShardStats> {
        let tick = Duration::from_millis(timer::TICK_MS);
        let max = self.state.limits.completions_per_turn_max;
        while !stop.load(Ordering::Relaxed) {
            self.state.resume_accept(&mut self.driver);
            let state = &mut self.state;
            self.driver.poll(tick, max, &mut |ev| state.on_event(ev))?;
            self.state.now = (self.state.epoch.elapsed().as_millis() as u64 / timer::TICK_MS) as Tick;
            self.state.fire_timers();
            self.state.flush_dirty(&mut self.driver);
        }
        Ok(self.state.stats.clone())
    }
}

impl State {
    fn resume_accept(&mut self, driver: &mut Driver) {
        if driver.accept_armed() {
            return;
        }
        if let Some(until) = self.accept_paused_until {
            if !tick_reached(until, self.now) {
                return;
            }
            self.accept_paused_until = None;
        }
        if let Err(e) = driver.arm_accept(self.listener.as_raw_fd()) {
            self.accept_error_log.warn(self.now, &format!("cannot arm accept: {e}"));
            self.accept_paused_until = Some(self.now.wrapping_add(ms_to_ticks(ACCEPT_BACKOFF_MS)));
        }
    }

    fn on_event(&mut self, ev: Event<'_>) {
        match ev {
            Event::Accepted(Ok(fd)) => self.on_accept(fd),
            Event::Accepted(Err(e)) => self.on_accept_error(e),
            Event::Received { key, data } => {
                if let Some(index) = self.live(key) {
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
            Event::Sent { key, result, unsent } => {
                let Some(index) = self.live(key) else { return };
                let conn = &mut self.conns[index as usize];
                conn.clear(flag::SEND_INFLIGHT);
                match result {
                    Ok(n) => {
                        conn.outq_bytes = conn.outq_bytes.saturating_sub(n as u32);
                        for b in unsent.drain(..).rev() {
                            conn.outq.push_front(b);
                        }
                    }
                    Err(_) => self.abort(index),
                }
                self.mark_dirty(index);
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

    fn on_accept(&mut self, fd: std::os::fd::OwnedFd) {
        if self.conns.len() >= self.limits.connections_per_shard_max as usize {
            // Dropping the descriptor closes it. The engine issue answers 503 here instead.
            self.stats.refused_over_limit += 1;
            return;
        }
        self.stats.accepted += 1;
        // Small frames must not wait for Nagle; failure only costs latency.
        let _ = SockRef::from(&fd).set_tcp_nodelay(true);
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & GENERATION_MASK;
        if self.next_generation == 0 {
            self.next_generation = 1;
        }
        let index = self.conns.insert(Conn::new(fd, generation)) as u32;
        let at = self.now.wrapping_add(ms_to_ticks(self.limits.handshake_timeout_ms));
        self.set_deadline(index, at);
        self.mark_dirty(index);
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
            _ => tracing::debug!("accept failed: {e}"),
        }
    }

    fn on_bytes(&mut self, index: u32, data: &mut [u8]) {
        let conn = &mut self.conns[index as usize];
        if conn.has(flag::READ_DONE) {
            return;
        }
        match &mut conn.phase {
            Phase::WebSocket(_) => self.on_ws_bytes(index, data),
            Phase::Http(h) => {
                if let Some(mut pending) = h.pending.take() {
                    let cap = self.limits.header_bytes_max + self.limits.body_bytes_max;
                    if pending.len() + data.len() > cap + self.limits.header_bytes_max {
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
            h.pending = Some(Box::new(rest.to_vec()));
        }
    }

    /// Parses and answers every complete request in `input`; returns the bytes consumed. After an
    /// upgrade the rest of `input` is WebSocket bytes and is handed to the decoder at once.
    fn on_http_bytes(&mut self, index: u32, input: &mut [u8]) -> usize {
        let http_limits = self.limits.http();
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
                Ok(Some(head)) => {
                    let total = head.head_len + head.content_length;
                    if input.len() - pos < total {
                        self.await_body(index);
                        return pos;
                    }
                    let body = &input[pos + head.head_len..pos + total];
                    let routed = router::route(&head, body, &self.config);
                    let mut out = Vec::with_capacity(256);
                    let keep_alive = head.keep_alive;
                    match routed {
                        Routed::Upgrade(endpoint, accept) => {
                            handshake::write_accept(&accept, &mut out);
                            HttpOutcome::Upgrade(endpoint, total, out)
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
                    self.queue_control(index, Bytes::from(out));
                    let idle = self.now.wrapping_add(ms_to_ticks(self.limits.http_idle_timeout_ms));
                    if let Phase::Http(h) = &mut self.conns[index as usize].phase {
                        h.awaiting_body = false;
                        h.answered = true;
                    }
                    self.set_deadline_exact(index, idle);
                }
                HttpOutcome::Close(out) => {
                    self.queue_control(index, Bytes::from(out));
                    self.close_after_flush(index);
                    return input.len();
                }
                HttpOutcome::Upgrade(endpoint, total, out) => {
                    pos += total;
                    self.stats.handshakes += 1;
                    self.queue_control(index, Bytes::from(out));
                    let conn = &mut self.conns[index as usize];
                    conn.phase = Phase::WebSocket(WebSocket {
                        decoder: Default::default(),
                        endpoint,
                        close_sent: false,
                        close_received: false,
                    });
                    conn.deadline = 0;
                    // Bytes after the request in the same read are the first frames.
                    self.on_ws_bytes(index, &mut input[pos..]);
                    return input.len();
                }
            }
        }
    }

    fn await_body(&mut self, index: u32) {
        let at = self.now.wrapping_add(ms_to_ticks(self.limits.http_body_timeout_ms));
        if let Phase::Http(h) = &mut self.conns[index as usize].phase {
            if !h.awaiting_body {
                h.awaiting_body = true;
                self.set_deadline_exact(index, at);
            }
        }
    }

    /// Answers a request that could not be parsed, then closes.
    fn respond_error(&mut self, index: u32, status: u16) {
        let mut out = Vec::with_capacity(128);
        let body = http::reason_phrase(status).as_bytes();
        http::write_response(status, &[("Content-Type", "text/plain; charset=utf-8")], body, false, &mut out);
        self.queue_control(index, Bytes::from(out));
        self.close_after_flush(index);
    }

    fn on_ws_bytes(&mut self, index: u32, input: &mut [u8]) {
        let limits = self.limits.decoder();
        let outbound_max = self.limits.outbound_bytes_max;
        let conn = &mut self.conns[index as usize];
        let Conn { phase, outq, outq_bytes, flags, .. } = conn;
        let Phase::WebSocket(ws) = phase else { return };
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
                    match ws.endpoint {
                        Endpoint::Echo => {
                            let mut out = Vec::with_capacity(p.len() + frame::MAX_HEADER_BYTES);
                            frame::encode_frame(opcode, p, &mut out);
                            if !push_limited(outq, outq_bytes, Bytes::from(out), outbound_max) {
                                self.stats.outbound_overflows += 1;
                                failure = Some(crate::proto::close::POLICY_VIOLATION);
                            }
                        }
                    }
                }
                WsEvent::Text(_) | WsEvent::Binary(_) => {}
                WsEvent::Ping(p) => {
                    if !ws.close_sent {
                        let mut out = Vec::with_capacity(p.len() + 2);
                        frame::encode_frame(Opcode::Pong, p, &mut out);
                        if !push_limited(outq, outq_bytes, Bytes::from(out), outbound_max) {
                            self.stats.outbound_overflows += 1;
                            failure = Some(crate::proto::close::POLICY_VIOLATION);
                        }
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
                        push_unlimited(outq, outq_bytes, Bytes::from(out));
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
                push_unlimited(outq, outq_bytes, Bytes::from(out));
            }
            close_after = true;
        }
        if close_after {
            *flags |= flag::READ_DONE;
            self.close_after_flush(index);
        } else {
            self.mark_dirty(index);
        }
    }

    /// Queues protocol output that is small and bounded by construction (HTTP answers).
    fn queue_control(&mut self, index: u32, bytes: Bytes) {
        let conn = &mut self.conns[index as usize];
        push_unlimited(&mut conn.outq, &mut conn.outq_bytes, bytes);
        self.mark_dirty(index);
    }

    /// Stops reading, flushes what is queued, then shuts the write side and waits (bounded by the
    /// close timeout) for the peer to close: a lingering close, so the last bytes are not lost
    /// to a reset.
    fn close_after_flush(&mut self, index: u32) {
        let at = self.now.wrapping_add(ms_to_ticks(self.limits.close_timeout_ms));
        let conn = &mut self.conns[index as usize];
        conn.set(flag::READ_DONE | flag::CLOSE_AFTER_FLUSH);
        if let Phase::Http(h) = &mut conn.phase {
            h.pending = None;
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
        conn.outq.clear();
        conn.outq_bytes = 0;
        conn.deadline = 0;
        if let Phase::Http(h) = &mut conn.phase {
            h.pending = None;
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
            conn.queued_tick = at;
            self.wheel.insert(index, at);
        }
    }

    fn fire_timers(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(self.now, &mut due);
        for (index, tick) in due.drain(..) {
            let Some(conn) = self.conns.get_mut(index as usize) else { continue };
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
                conn.queued_tick = conn.deadline;
                self.wheel.insert(index, conn.deadline);
            }
        }
        self.due = due;
    }

    fn on_timeout(&mut self, index: u32) {
        self.stats.timeouts += 1;
        // Every timer so far ends the connection: handshake, idle and body timeouts close it,
        // and so does a close handshake the peer never finished.
        self.abort(index);
    }

    fn flush_dirty(&mut self, driver: &mut Driver) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for index in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(index as usize) else { continue };
            conn.clear(flag::DIRTY);
            let key = ConnKey { index, generation: conn.generation };
            if conn.has(flag::SHUTDOWN) {
                if !conn.has(flag::RECV_ARMED) && !conn.has(flag::SEND_INFLIGHT) {
                    self.conns.remove(index as usize);
                }
                continue;
            }
            if !conn.outq.is_empty() && !conn.has(flag::SEND_INFLIGHT) {
                match driver.send(key, conn.fd.as_raw_fd(), &mut conn.outq) {
                    Ok(()) => {
                        if conn.outq_bytes > 0 {
                            conn.set(flag::SEND_INFLIGHT);
                        }
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
        self.dirty = dirty;
        // Anything marked dirty during this pass (aborts) is handled on the next turn.
    }

    fn release_if_idle(&mut self, index: u32) {
        let conn = &self.conns[index as usize];
        if conn.has(flag::SHUTDOWN) && !conn.has(flag::RECV_ARMED) && !conn.has(flag::SEND_INFLIGHT)
        {
            self.conns.remove(index as usize);
        }
    }
}

enum HttpOutcome {
    /// Answered; `usize` bytes consumed; read the next request.
    Next(usize, Vec<u8>),
    /// Answer, then close.
    Close(Vec<u8>),
    /// Switch to WebSocket after `usize` bytes.
    Upgrade(Endpoint, usize, Vec<u8>),
}

fn push_limited(
    outq: &mut std::collections::VecDeque<Bytes>,
    outq_bytes: &mut u32,
    bytes: Bytes,
    max: usize,
) -> bool {
    if *outq_bytes as usize + bytes.len() > max {
        return false;
    }
    push_unlimited(outq, outq_bytes, bytes);
    true
}

fn push_unlimited(outq: &mut std::collections::VecDeque<Bytes>, outq_bytes: &mut u32, bytes: Bytes) {
    *outq_bytes = outq_bytes.saturating_add(bytes.len() as u32);
    outq.push_back(bytes);
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
