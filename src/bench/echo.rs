//! `ringcast bench echo`: C connections to an echo endpoint, each keeping W messages of B bytes
//! in flight for T seconds; reports messages/s, round-trip percentiles and CPU per message. Owns
//! the echo workers and their report; never paces (each echo releases the next send).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::BenchError;
use super::client::{ConnEvent, ConnState, SplitMix64};
use super::connect::FailureCounts;
use super::cpu::{CpuProbe, CpuUsage, clock_ticks_per_second};
use super::frame::Opcode;
use super::payload::SEQ_DIGITS;
use super::pool::{ConnectTally, Pool, TICK_MAX, Target, create_epoll, wait_until};
use super::stats::{Histogram, Quantiles};

/// How long the connect phase may take before the run gives up on the missing connections.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long, after the measured window, workers wait for the echoes still in flight (they are
/// counted as `unanswered` if they do not come).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Most messages in flight per connection. Default 4096: bounds each connection's send-time
/// queue; more is refused.
pub const IN_FLIGHT_MAX: u32 = 4096;

/// Largest echo message, bytes. Default 1 MiB, the client's reassembly bound.
pub const MESSAGE_BYTES_MAX: u32 = 1 << 20;

/// Flags for `ringcast bench echo`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct EchoArgs {
    /// Echo endpoint, ws://HOST:PORT/echo.
    #[arg(long)]
    pub url: String,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub connections: u32,
    /// Messages each connection keeps in flight.
    #[arg(long, short = 'w', default_value_t = 16)]
    pub in_flight: u32,
    /// Message size in bytes (at least 20: a zero-padded sequence number, then `x` padding).
    #[arg(long, short = 'b', default_value_t = 32)]
    pub bytes: u32,
    /// Measured window, seconds.
    #[arg(long, short = 't', default_value_t = 10)]
    pub duration_s: u64,
    /// Worker threads, each with its own epoll instance and share of the connections.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Server process to charge CPU time to (utime + stime from /proc/PID/stat).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Limit for one handshake, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
}

impl EchoArgs {
    /// Arguments with every default, for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connections: 100,
            in_flight: 16,
            bytes: 32,
            duration_s: 10,
            workers: 2,
            server_pid: None,
            json: false,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// What `bench echo` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EchoReport {
    /// Target URL as given.
    pub url: String,
    /// Connections asked for.
    pub connections: u32,
    /// Connections upgraded.
    pub connected: u64,
    /// Connections that failed to upgrade.
    pub connect_failed: u64,
    /// Why they failed.
    pub connect_failures: FailureCounts,
    /// Connections that ended before the end of the run.
    pub dropped: u64,
    /// Messages in flight per connection.
    pub in_flight: u32,
    /// Message size.
    pub bytes: u32,
    /// Measured window, microseconds.
    pub window_us: u64,
    /// Messages sent during the window.
    pub sent: u64,
    /// Echoes received during the window.
    pub received: u64,
    /// `received` per second of window.
    pub msgs_per_s: f64,
    /// Echoes that never came back (sent but unanswered after the drain).
    pub unanswered: u64,
    /// Echoes whose opcode, size or sequence number differed from the message sent.
    pub mismatched: u64,
    /// Round-trip time, send to echo, microseconds.
    pub rtt_us: Quantiles,
    /// Server CPU over the window (`None`: no --server-pid, or /proc unreadable).
    pub server_cpu: Option<CpuUsage>,
    /// Server CPU nanoseconds per echoed message.
    pub server_ns_per_msg: Option<f64>,
    /// This process's CPU over the window.
    pub client_cpu: Option<CpuUsage>,
    /// This process's CPU in cores (1.0 = one core busy): near the core count, the client is the
    /// bottleneck.
    pub client_cores: Option<f64>,
    /// Worker threads.
    pub workers: u32,
}

/// Runs `bench echo`. Per-connection failures are counted in the report, not returned.
pub fn run_echo(args: &EchoArgs) -> Result<EchoReport, BenchError> {
    validate(args)?;
    let target = Target::for_run(&args.url, args.connections, "connections")?;
    let shared = Shared {
        connections: args.connections,
        workers: args.workers,
        in_flight: args.in_flight,
        bytes: args.bytes as usize,
        handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
        connected_workers: AtomicU32::new(0),
        window: OnceLock::new(),
    };
    let hz = clock_ticks_per_second();
    let mut seeds = SplitMix64::from_entropy();
    let mut epolls = Vec::with_capacity(args.workers as usize);
    for _ in 0..args.workers {
        epolls.push((create_epoll()?, seeds.next_u64()));
    }
    let (tallies, server_cpu, client_cpu, window) = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(epolls.len());
        for (index, (epoll, seed)) in epolls.into_iter().enumerate() {
            let shared = &shared;
            let target = target.clone();
            let handle = std::thread::Builder::new()
                .name(format!("bench-echo-{index}"))
                .spawn_scoped(scope, move || {
                    worker(shared, index as u32, Pool::new(target, epoll, seed))
                })
                .map_err(BenchError::Spawn)?;
            handles.push(handle);
        }
        wait_until(
            Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(1),
            || shared.connected_workers.load(Ordering::Acquire) == shared.workers,
        );
        let server = CpuProbe::start(args.server_pid, hz);
        let client = CpuProbe::start(None, hz);
        let start = Instant::now();
        let window = Duration::from_secs(args.duration_s);
        let _ = shared.window.set((start, start + window));
        std::thread::sleep(window);
        let server_cpu = args.server_pid.and_then(|_| server.finish());
        let client_cpu = client.finish();
        let mut tallies = Vec::with_capacity(handles.len());
        for handle in handles {
            tallies.push(handle.join().map_err(|_| BenchError::WorkerPanicked)?);
        }
        Ok::<_, BenchError>((tallies, server_cpu, client_cpu, window))
    })?;
    let mut total = Tally::default();
    for tally in &tallies {
        total.merge(tally);
    }
    let msgs_per_s = total.received as f64 / window.as_secs_f64();
    Ok(EchoReport {
        url: args.url.clone(),
        connections: args.connections,
        connected: total.connect.opened,
        connect_failed: total.connect.failed.total(),
        connect_failures: total.connect.failed.clone(),
        dropped: total.connect.dropped + total.dropped,
        in_flight: args.in_flight,
        bytes: args.bytes,
        window_us: window.as_micros() as u64,
        sent: total.sent,
        received: total.received,
        msgs_per_s,
        unanswered: total.unanswered,
        mismatched: total.mismatched,
        rtt_us: total.rtt_us.quantiles(),
        server_cpu,
        server_ns_per_msg: server_cpu.map(|c| c.ns_per(total.received)),
        client_cpu,
        client_cores: client_cpu.map(|c| c.cores(window)),
        workers: args.workers,
    })
}

impl EchoReport {
    /// The report as text, one fact per line.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "ringcast bench echo {} ({} workers)",
            self.url, self.workers
        );
        let _ = writeln!(
            s,
            "  connections     {} connected of {} (failed {}{}, dropped {})",
            self.connected,
            self.connections,
            self.connect_failed,
            reasons(&self.connect_failures),
            self.dropped
        );
        let _ = writeln!(
            s,
            "  load            {} in flight x {} bytes for {:.3} s",
            self.in_flight,
            self.bytes,
            self.window_us as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "  messages        sent {}, echoed {}, unanswered {}, mismatched {}",
            self.sent, self.received, self.unanswered, self.mismatched
        );
        let _ = writeln!(s, "  msgs/s          {:.0}", self.msgs_per_s);
        let q = &self.rtt_us;
        let _ = writeln!(
            s,
            "  rtt us          p50 {}  p99 {}  p999 {}  max {}",
            q.p50, q.p99, q.p999, q.max
        );
        write_cpu(
            &mut s,
            self.server_cpu,
            self.server_ns_per_msg,
            "msg",
            self.client_cpu,
            self.client_cores,
        );
        s
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        // Serializing plain numbers and strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Appends the CPU lines shared by the echo and fan-out reports.
pub(crate) fn write_cpu(
    s: &mut String,
    server: Option<CpuUsage>,
    server_ns_per: Option<f64>,
    unit: &str,
    client: Option<CpuUsage>,
    client_cores: Option<f64>,
) {
    match (server, server_ns_per) {
        (Some(cpu), Some(ns)) => {
            let _ = writeln!(
                s,
                "  server cpu      {:.3} s (user {:.3}, sys {:.3}), {ns:.0} ns/{unit}",
                cpu.total_s(),
                cpu.user_s,
                cpu.system_s
            );
        }
        _ => {
            let _ = writeln!(s, "  server cpu      n/a (give --server-pid)");
        }
    }
    if let (Some(cpu), Some(cores)) = (client, client_cores) {
        let _ = writeln!(
            s,
            "  client cpu      {:.3} s (user {:.3}, sys {:.3}), {cores:.2} cores",
            cpu.total_s(),
            cpu.user_s,
            cpu.system_s
        );
    }
}

fn validate(args: &EchoArgs) -> Result<(), BenchError> {
    let invalid = |name, reason: String| Err(BenchError::InvalidArgument { name, reason });
    if args.connections == 0 {
        return invalid("connections", "must be at least 1".to_owned());
    }
    if args.workers == 0 || args.workers > super::connect::WORKERS_MAX {
        return invalid(
            "workers",
            format!("must be 1..={}", super::connect::WORKERS_MAX),
        );
    }
    if args.in_flight == 0 || args.in_flight > IN_FLIGHT_MAX {
        return invalid("in-flight", format!("must be 1..={IN_FLIGHT_MAX}"));
    }
    if (args.bytes as usize) < SEQ_DIGITS || args.bytes > MESSAGE_BYTES_MAX {
        return invalid(
            "bytes",
            format!(
                "{} is outside {SEQ_DIGITS}..={MESSAGE_BYTES_MAX} (each message starts with a \
                 {SEQ_DIGITS}-digit sequence number)",
                args.bytes
            ),
        );
    }
    if args.duration_s == 0 {
        return invalid("duration-s", "must be at least 1".to_owned());
    }
    if args.handshake_timeout_ms == 0 {
        return invalid("handshake-timeout-ms", "must be at least 1".to_owned());
    }
    Ok(())
}

struct Shared {
    connections: u32,
    workers: u32,
    in_flight: u32,
    bytes: usize,
    handshake_timeout: Duration,
    connected_workers: AtomicU32,
    /// Start and end of the measured window, set by the main thread once all are connected.
    window: OnceLock<(Instant, Instant)>,
}

/// One echo connection: the messages it has in flight, in send order. Echo preserves order on a
/// connection, so the front is always the next echo due.
#[derive(Debug, Default)]
struct EchoConn {
    next_seq: u64,
    /// INVARIANT: at most `in_flight` entries: (sequence number, send time).
    in_flight: VecDeque<(u64, Instant)>,
    /// Sends owed after echoes came back, made once the read is done.
    owed: u32,
}

#[derive(Debug, Default)]
struct Tally {
    connect: ConnectTally,
    sent: u64,
    received: u64,
    unanswered: u64,
    mismatched: u64,
    dropped: u64,
    rtt_us: Histogram,
}

impl Tally {
    fn merge(&mut self, other: &Self) {
        self.connect.merge(&other.connect);
        self.sent += other.sent;
        self.received += other.received;
        self.unanswered += other.unanswered;
        self.mismatched += other.mismatched;
        self.dropped += other.dropped;
        self.rtt_us.merge(&other.rtt_us);
    }
}

fn worker(shared: &Shared, index: u32, mut pool: Pool<EchoConn>) -> Tally {
    let mut tally = Tally::default();
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let serials = (index..shared.connections).step_by(shared.workers as usize);
    tally.connect = pool.connect_all(serials, 256, shared.handshake_timeout, deadline, |_| {
        EchoConn::default()
    });
    shared.connected_workers.fetch_add(1, Ordering::AcqRel);
    let (_start, end) = loop {
        if let Some(window) = shared.window.get() {
            break *window;
        }
        pool.poll(TICK_MAX, |_, _, _, _| {}, |_| {});
    };
    let mut payload = Vec::with_capacity(shared.bytes);
    for member in pool.members_mut() {
        member.state.owed = shared.in_flight;
    }
    let mut sending = true;
    let mut prime = true;
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if sending && now >= end {
            sending = false;
        }
        if !sending {
            let outstanding: usize = pool.members_mut().map(|m| m.state.in_flight.len()).sum();
            if outstanding == 0 || now >= end + DRAIN_TIMEOUT {
                tally.unanswered += outstanding as u64;
                break;
            }
        }
        if prime {
            prime = false;
            for member in pool.members_mut() {
                send_owed(member, &mut payload, shared.bytes, end, &mut sent);
            }
        }
        pool.poll(
            TICK_MAX,
            |_, view, event, at| {
                let conn = &mut *view.state;
                match event {
                    ConnEvent::Message { opcode, payload } => {
                        let Some((seq, sent_at)) = conn.in_flight.pop_front() else {
                            tally.mismatched += 1;
                            return;
                        };
                        if opcode != Opcode::Text
                            || payload.len() != shared.bytes
                            || !payload.starts_with(&seq_digits(seq))
                        {
                            tally.mismatched += 1;
                        }
                        if at <= end {
                            tally.received += 1;
                            tally
                                .rtt_us
                                .record(at.saturating_duration_since(sent_at).as_micros() as u64);
                        }
                        if sending {
                            conn.owed += 1;
                        }
                    }
                    ConnEvent::Closed { .. } | ConnEvent::Failed(_) => {
                        tally.dropped += 1;
                        tally.unanswered += conn.in_flight.len() as u64;
                        conn.in_flight.clear();
                    }
                    ConnEvent::Opened { .. } | ConnEvent::PeerClose { .. } => {}
                }
            },
            |member| {
                if sending && member.conn.state() == ConnState::Open {
                    send_owed(member, &mut payload, shared.bytes, end, &mut sent);
                }
            },
        );
    }
    pool.close_all();
    tally.sent = sent;
    tally
}

/// Sends the messages a connection owes, stamped now, in one batch.
fn send_owed(
    member: &mut super::pool::Member<EchoConn>,
    payload: &mut Vec<u8>,
    bytes: usize,
    end: Instant,
    sent: &mut u64,
) {
    let state = &mut member.state;
    if state.owed == 0 || member.conn.state() != ConnState::Open {
        return;
    }
    let now = Instant::now();
    if now >= end {
        state.owed = 0;
        return;
    }
    for _ in 0..state.owed {
        let seq = state.next_seq;
        state.next_seq += 1;
        payload.clear();
        payload.extend_from_slice(&seq_digits(seq));
        payload.resize(bytes, b'x');
        member.conn.queue_frame(Opcode::Text, payload);
        state.in_flight.push_back((seq, now));
        *sent += 1;
    }
    state.owed = 0;
    // A send error ends the connection; the next readiness reports it and the hook counts it.
    let _ = member.conn.flush_queued();
}

fn seq_digits(seq: u64) -> [u8; SEQ_DIGITS] {
    let mut digits = [b'0'; SEQ_DIGITS];
    let mut value = seq;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
    digits
}

/// Failure reasons as text for reports, e.g. ": refused 3, timeout 1" (empty when none).
pub(crate) fn reasons(f: &FailureCounts) -> String {
    let mut parts = Vec::new();
    for (name, n) in [
        ("refused", f.refused),
        ("timeout", f.timeout),
        ("EMFILE", f.emfile),
        ("no local port", f.addr_unavailable),
        ("reset", f.reset),
        ("bad handshake", f.bad_handshake),
        ("other", f.other),
    ] {
        if n > 0 {
            parts.push(format!("{name} {n}"));
        }
    }
    for (code, n) in &f.bad_status {
        parts.push(format!("status {code}: {n}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::test_server;

    #[test]
    fn echo_keeps_messages_in_flight_and_gets_every_one_back() {
        let addr = test_server::spawn("t");
        let mut args = EchoArgs::new(format!("ws://{addr}/echo"));
        args.connections = 10;
        args.in_flight = 4;
        args.duration_s = 1;
        args.server_pid = Some(std::process::id());
        let report = run_echo(&args).unwrap();
        assert_eq!(report.connected, 10, "{}", report.to_text());
        assert_eq!(report.dropped, 0);
        assert_eq!(report.mismatched, 0);
        assert_eq!(report.unanswered, 0, "{}", report.to_text());
        assert!(report.received > 100, "{}", report.to_text());
        assert!(report.sent >= report.received);
        assert_eq!(report.rtt_us.count, report.received);
        assert!(report.msgs_per_s > 0.0);
        assert!(report.server_ns_per_msg.is_some());
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["connected"], 10);
        assert!(json["rtt_us"]["p99"].is_u64());
    }

    #[test]
    fn sequence_digits_are_zero_padded() {
        assert_eq!(&seq_digits(42), b"00000000000000000042");
    }

    #[test]
    fn impossible_flags_are_rejected() {
        let base = EchoArgs::new("ws://127.0.0.1:1/echo");
        for (change, flag) in [
            (
                (|a: &mut EchoArgs| a.bytes = 19) as fn(&mut EchoArgs),
                "bytes",
            ),
            (|a: &mut EchoArgs| a.in_flight = 0, "in-flight"),
            (|a: &mut EchoArgs| a.connections = 0, "connections"),
            (|a: &mut EchoArgs| a.duration_s = 0, "duration-s"),
            (|a: &mut EchoArgs| a.workers = 0, "workers"),
        ] {
            let mut args = base.clone();
            change(&mut args);
            match run_echo(&args) {
                Err(BenchError::InvalidArgument { name, .. }) => assert_eq!(name, flag),
                other => panic!("{flag}: {other:?}"),
            }
        }
    }
}
