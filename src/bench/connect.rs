//! `ringcast bench connect`: open N WebSocket connections, measure handshake rate and latency,
//! hold them, close them. Owns the worker threads (one epoll instance and one connection slab
//! each) and the report; never blocks a worker on one socket and never retries a failed connect.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::process::{Resource, getrlimit};
use slab::Slab;

use super::BenchError;
use super::client::{ClientConn, ConnEvent, ConnState, FailReason, Readiness, SplitMix64};
use super::pool::wait_for_events;
use super::stats::Percentiles;
use super::url::WsUrl;

/// File descriptors kept free beyond one per connection: stdio, one epoll instance per worker,
/// the resolver, and a margin for the allocator and logging.
pub const FD_HEADROOM: u64 = 64;

/// Most connections one source address carries when addresses are chosen automatically.
/// Default 10,000, about a third of Linux's default ephemeral range (32768-60999, 28,232 ports):
/// the kernel's free-port search slows sharply as the range fills. Measured on loopback against
/// the io_uring server: 19,000 connections from one address ran at 600-2,800 handshakes/s with
/// 6-27 s of system time, the same 19,000 split over two addresses at 17,000-18,800/s.
pub const CONNECTIONS_PER_SOURCE_IP_MAX: u32 = 10_000;

/// Most worker threads. Default 2 on this 2-core machine; more than 64 only adds contention.
pub const WORKERS_MAX: u32 = 64;

/// How long the close phase waits for servers to finish the closing handshake (RFC 6455 §7.1.1:
/// the server closes TCP first) before dropping what is left as unclean.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Most epoll events handled per `epoll_wait`. Bounds one tick's work; more wait for the next.
const EVENTS_PER_WAIT_MAX: usize = 1024;

/// Longest sleep in one `epoll_wait`, so phase changes and timeouts are noticed promptly.
const TICK_MAX: Duration = Duration::from_millis(10);

/// Flags for `ringcast bench connect`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ConnectArgs {
    /// Target, ws://HOST:PORT/PATH (no TLS).
    #[arg(long)]
    pub url: String,
    /// Connections to open.
    #[arg(long, short = 'n')]
    pub connections: u32,
    /// New handshakes per second across all workers; 0 opens them as fast as possible (with at
    /// most --in-flight-max handshakes in flight per worker).
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Seconds to hold the connections open once all have connected or failed.
    #[arg(long, default_value_t = 0)]
    pub hold_s: u64,
    /// Worker threads, each with its own epoll instance and share of the connections.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Source addresses to bind, comma-separated. Default: none for up to 10,000 connections,
    /// else 127.0.0.1, 127.0.0.2, ... (10,000 connections each) when the target is 127.x.
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Limit for the whole run (connect, hold and close), seconds; must exceed --hold-s.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    /// Limit for one handshake, from connect() to the verified 101, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Most handshakes in flight per worker when --rate is 0, so the server's accept queue
    /// (net.core.somaxconn) is not overrun into SYN retransmits.
    #[arg(long, default_value_t = 256)]
    pub in_flight_max: u32,
}

impl ConnectArgs {
    /// Arguments with every default, for `connections` connections to `url`.
    pub fn new(url: impl Into<String>, connections: u32) -> Self {
        Self {
            url: url.into(),
            connections,
            rate: 0,
            hold_s: 0,
            workers: 2,
            source_ips: Vec::new(),
            json: false,
            timeout_s: 120,
            handshake_timeout_ms: 10_000,
            in_flight_max: 256,
        }
    }
}

/// Failed connections by reason. A connection counts once, under the first reason it hit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FailureCounts {
    /// ECONNREFUSED.
    pub refused: u64,
    /// Handshake not done within --handshake-timeout-ms or the run's timeout, or ETIMEDOUT.
    pub timeout: u64,
    /// EMFILE/ENFILE when creating the socket: the open-file limit.
    pub emfile: u64,
    /// EADDRNOTAVAIL/EADDRINUSE: no free ephemeral port.
    pub addr_unavailable: u64,
    /// Reset or EOF before the 101.
    pub reset: u64,
    /// A response that was not a valid upgrade (wrong accept, missing headers, malformed).
    pub bad_handshake: u64,
    /// Non-101 responses by status code.
    pub bad_status: BTreeMap<u16, u64>,
    /// Any other socket error.
    pub other: u64,
}

impl FailureCounts {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.refused
            + self.timeout
            + self.emfile
            + self.addr_unavailable
            + self.reset
            + self.bad_handshake
            + self.other
            + self.bad_status.values().sum::<u64>()
    }

    pub(crate) fn count(&mut self, reason: &FailReason) {
        match reason {
            FailReason::Refused => self.refused += 1,
            FailReason::Timeout => self.timeout += 1,
            FailReason::FileLimit => self.emfile += 1,
            FailReason::AddrUnavailable => self.addr_unavailable += 1,
            FailReason::Reset => self.reset += 1,
            FailReason::BadStatus(code) => *self.bad_status.entry(*code).or_default() += 1,
            FailReason::Handshake(_) | FailReason::Protocol(_) => self.bad_handshake += 1,
            FailReason::Io(_) => self.other += 1,
        }
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        self.refused += other.refused;
        self.timeout += other.timeout;
        self.emfile += other.emfile;
        self.addr_unavailable += other.addr_unavailable;
        self.reset += other.reset;
        self.bad_handshake += other.bad_handshake;
        self.other += other.other;
        for (code, n) in &other.bad_status {
            *self.bad_status.entry(*code).or_default() += n;
        }
    }
}

/// What `bench connect` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectReport {
    /// Target URL as given.
    pub url: String,
    /// Connections asked for.
    pub requested: u32,
    /// Connections that got a verified 101.
    pub connected: u64,
    /// Connections that did not, by reason.
    pub failed: FailureCounts,
    /// `connected` divided by `connect_phase`.
    pub handshakes_per_s: f64,
    /// First connect() to the last verified 101.
    pub connect_phase: Duration,
    /// Handshake latency, connect() to verified 101, microseconds.
    pub latency_us: Percentiles,
    /// How long the connections were held.
    pub hold: Duration,
    /// Connections that ended (server close, reset, protocol error) before the close phase.
    pub dropped_before_close: u64,
    /// Connections whose closing handshake completed before the server closed TCP.
    pub closed_clean: u64,
    /// Connections that ended otherwise during the close phase (or were dropped at its end).
    pub closed_unclean: u64,
    /// RLIMIT_NOFILE soft limit of this process (`None`: unlimited).
    pub open_files_limit: Option<u64>,
    /// Worker threads used.
    pub workers: u32,
    /// Source addresses bound (empty: the kernel chose).
    pub source_ips: Vec<IpAddr>,
    /// The run's --timeout-s cut a phase short.
    pub timed_out: bool,
}

/// Runs `bench connect`: checks limits, starts `args.workers` threads, waits for them and merges
/// their tallies. Per-connection failures are counted in the report, not returned as errors.
pub fn run_connect(args: &ConnectArgs) -> Result<ConnectReport, BenchError> {
    let url = WsUrl::parse(&args.url)?;
    let target = url.resolve()?;
    validate(args)?;
    let limit = getrlimit(Resource::Nofile);
    let needed = u64::from(args.connections) + FD_HEADROOM;
    if let Some(soft_limit) = limit.current
        && needed > soft_limit
    {
        return Err(BenchError::OpenFileLimit {
            connections: args.connections,
            needed,
            soft_limit,
            hard_limit: limit.maximum,
        });
    }
    if let Some(ip) = args
        .source_ips
        .iter()
        .find(|ip| ip.is_ipv4() != target.is_ipv4())
    {
        return Err(BenchError::InvalidArgument {
            name: "source-ips",
            reason: format!("{ip} is not the same address family as the target {target}"),
        });
    }
    let source_ips = if args.source_ips.is_empty() {
        auto_source_ips(target, args.connections)
    } else {
        args.source_ips.clone()
    };

    let started = Instant::now();
    let shared = Shared {
        url,
        target,
        source_ips: source_ips.clone(),
        connections: args.connections,
        workers: args.workers,
        rate: args.rate,
        in_flight_max: args.in_flight_max as usize,
        handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
        hold: Duration::from_secs(args.hold_s),
        started,
        deadline: started + Duration::from_secs(args.timeout_s),
        workers_connected: AtomicU32::new(0),
        hold_start: OnceLock::new(),
        hold_end: OnceLock::new(),
    };
    let mut seeds = SplitMix64::from_entropy();
    let mut epolls = Vec::with_capacity(args.workers as usize);
    for _ in 0..args.workers {
        let fd =
            epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| BenchError::Epoll(e.into()))?;
        epolls.push(fd);
    }
    let tallies = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(epolls.len());
        for (index, epoll_fd) in epolls.into_iter().enumerate() {
            let shared = &shared;
            let seed = seeds.next_u64();
            let handle = std::thread::Builder::new()
                .name(format!("bench-connect-{index}"))
                .spawn_scoped(scope, move || {
                    Worker::new(shared, index as u32, epoll_fd, seed).run()
                })
                .map_err(BenchError::Spawn)?;
            handles.push(handle);
        }
        let mut tallies = Vec::with_capacity(handles.len());
        for handle in handles {
            tallies.push(handle.join().map_err(|_| BenchError::WorkerPanicked)?);
        }
        Ok::<_, BenchError>(tallies)
    })?;

    let mut total = Tally::default();
    for tally in &tallies {
        total.merge(tally);
    }
    let connect_phase = match (total.first_start, total.last_open) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    let handshakes_per_s = if connect_phase.is_zero() {
        0.0
    } else {
        total.connected as f64 / connect_phase.as_secs_f64()
    };
    let hold = match (shared.hold_start.get(), shared.hold_end.get()) {
        (Some(start), Some(end)) => end.saturating_duration_since(*start),
        _ => Duration::ZERO,
    };
    Ok(ConnectReport {
        url: args.url.clone(),
        requested: args.connections,
        connected: total.connected,
        failed: total.failed,
        handshakes_per_s,
        connect_phase,
        latency_us: Percentiles::from_samples(&mut total.latencies_us),
        hold,
        dropped_before_close: total.dropped_before_close,
        closed_clean: total.closed_clean,
        closed_unclean: total.closed_unclean,
        open_files_limit: limit.current,
        workers: args.workers,
        source_ips,
        timed_out: total.timed_out,
    })
}

impl ConnectReport {
    /// Prints the report for people, to stdout.
    pub fn print_text(&self) {
        print!("{}", self.to_text());
    }

    /// The report as text, one fact per line.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let sources = if self.source_ips.is_empty() {
            "kernel-chosen".to_owned()
        } else {
            join(&self.source_ips)
        };
        let f = &self.failed;
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "ringcast bench connect {} ({} workers, source {sources})",
            self.url, self.workers
        );
        let _ = writeln!(s, "  requested       {}", self.requested);
        let _ = writeln!(s, "  connected       {}", self.connected);
        let _ = write!(
            s,
            "  failed          {} (refused {}, timeout {}, EMFILE {}, no local port {}, reset {}, \
             bad handshake {}, other {}",
            f.total(),
            f.refused,
            f.timeout,
            f.emfile,
            f.addr_unavailable,
            f.reset,
            f.bad_handshake,
            f.other
        );
        for (code, n) in &f.bad_status {
            let _ = write!(s, ", status {code}: {n}");
        }
        let _ = writeln!(s, ")");
        let _ = writeln!(
            s,
            "  handshakes/s    {:.0} over {:.3} s",
            self.handshakes_per_s,
            self.connect_phase.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "  latency us      p50 {}  p99 {}  max {}",
            self.latency_us.p50, self.latency_us.p99, self.latency_us.max
        );
        let _ = writeln!(
            s,
            "  held            {:.3} s (ended early: {})",
            self.hold.as_secs_f64(),
            self.dropped_before_close
        );
        let _ = writeln!(
            s,
            "  closed          clean {}, unclean {}",
            self.closed_clean, self.closed_unclean
        );
        let limit = super::limit_text(self.open_files_limit);
        let _ = writeln!(s, "  open-file limit {limit} (RLIMIT_NOFILE soft)");
        if f.emfile > 0 {
            let _ = writeln!(
                s,
                "  WARNING: hit the open-file limit ({limit}) {} times; raise it with `ulimit -n` \
                 or run fewer connections per process",
                f.emfile
            );
        }
        if f.addr_unavailable > 0 {
            let _ = writeln!(
                s,
                "  WARNING: ran out of local ports {} times; spread over more --source-ips",
                f.addr_unavailable
            );
        }
        if self.timed_out {
            let _ = writeln!(s, "  WARNING: --timeout-s cut the run short");
        }
        s
    }

    /// The report as one JSON object (durations in microseconds, rate per second).
    pub fn to_json(&self) -> String {
        let f = &self.failed;
        let bad_status: Vec<String> = f
            .bad_status
            .iter()
            .map(|(code, n)| format!("\"{code}\":{n}"))
            .collect();
        let sources: Vec<String> = self
            .source_ips
            .iter()
            .map(|ip| format!("\"{ip}\""))
            .collect();
        let limit = self
            .open_files_limit
            .map_or_else(|| "null".to_owned(), |l| l.to_string());
        format!(
            "{{\"url\":{},\"requested\":{},\"connected\":{},\"failed\":{{\"total\":{},\
             \"refused\":{},\"timeout\":{},\"emfile\":{},\"addr_unavailable\":{},\"reset\":{},\
             \"bad_handshake\":{},\"other\":{},\"bad_status\":{{{}}}}},\
             \"handshakes_per_s\":{:.1},\"connect_phase_us\":{},\
             \"latency_us\":{{\"p50\":{},\"p99\":{},\"max\":{}}},\"hold_us\":{},\
             \"dropped_before_close\":{},\"closed_clean\":{},\"closed_unclean\":{},\
             \"open_files_limit\":{},\"workers\":{},\"source_ips\":[{}],\"timed_out\":{}}}",
            json_string(&self.url),
            self.requested,
            self.connected,
            f.total(),
            f.refused,
            f.timeout,
            f.emfile,
            f.addr_unavailable,
            f.reset,
            f.bad_handshake,
            f.other,
            bad_status.join(","),
            self.handshakes_per_s,
            self.connect_phase.as_micros(),
            self.latency_us.p50,
            self.latency_us.p99,
            self.latency_us.max,
            self.hold.as_micros(),
            self.dropped_before_close,
            self.closed_clean,
            self.closed_unclean,
            limit,
            self.workers,
            sources.join(","),
            self.timed_out
        )
    }
}

fn validate(args: &ConnectArgs) -> Result<(), BenchError> {
    let invalid = |name, reason: String| Err(BenchError::InvalidArgument { name, reason });
    if args.connections == 0 {
        return invalid("connections", "must be at least 1".to_owned());
    }
    if args.workers == 0 || args.workers > WORKERS_MAX {
        return invalid("workers", format!("must be 1..={WORKERS_MAX}"));
    }
    if args.timeout_s <= args.hold_s {
        return invalid(
            "timeout-s",
            format!(
                "{} s leaves no time beyond --hold-s {} s",
                args.timeout_s, args.hold_s
            ),
        );
    }
    if args.handshake_timeout_ms == 0 {
        return invalid("handshake-timeout-ms", "must be at least 1".to_owned());
    }
    if args.in_flight_max == 0 {
        return invalid("in-flight-max", "must be at least 1".to_owned());
    }
    Ok(())
}

/// Source addresses for `connections` connections to `target`: none (the kernel picks) when one
/// address is enough or the target is not loopback, else 127.0.0.1, 127.0.0.2, ... with at most
/// [`CONNECTIONS_PER_SOURCE_IP_MAX`] each. All of 127.0.0.0/8 is local on Linux, no setup needed.
pub fn auto_source_ips(target: SocketAddr, connections: u32) -> Vec<IpAddr> {
    let needed = connections.div_ceil(CONNECTIONS_PER_SOURCE_IP_MAX);
    let IpAddr::V4(ip) = target.ip() else {
        return Vec::new();
    };
    if needed <= 1 || !ip.is_loopback() {
        return Vec::new();
    }
    (1..=needed.min(254))
        .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, k as u8)))
        .collect()
}

/// Run-wide settings and the phase hand-offs between workers.
struct Shared {
    url: WsUrl,
    target: SocketAddr,
    source_ips: Vec<IpAddr>,
    connections: u32,
    workers: u32,
    rate: u32,
    in_flight_max: usize,
    handshake_timeout: Duration,
    hold: Duration,
    started: Instant,
    deadline: Instant,
    /// Workers whose connect phase is over.
    workers_connected: AtomicU32,
    /// Set by the last worker to finish connecting.
    hold_start: OnceLock<Instant>,
    /// Set by the first worker to start closing.
    hold_end: OnceLock<Instant>,
}

/// What one worker counted; merged by `run_connect`.
#[derive(Debug, Default)]
struct Tally {
    connected: u64,
    failed: FailureCounts,
    latencies_us: Vec<u64>,
    first_start: Option<Instant>,
    last_open: Option<Instant>,
    dropped_before_close: u64,
    closed_clean: u64,
    closed_unclean: u64,
    timed_out: bool,
}

impl Tally {
    fn merge(&mut self, other: &Self) {
        self.connected += other.connected;
        self.failed.merge(&other.failed);
        self.latencies_us.extend_from_slice(&other.latencies_us);
        self.first_start = min_opt(self.first_start, other.first_start);
        self.last_open = max_opt(self.last_open, other.last_open);
        self.dropped_before_close += other.dropped_before_close;
        self.closed_clean += other.closed_clean;
        self.closed_unclean += other.closed_unclean;
        self.timed_out |= other.timed_out;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connect,
    Hold,
    Close,
}

/// A connection in a worker's slab, with the worker's bookkeeping.
struct Entry {
    conn: ClientConn,
    /// Global connection index; tells a reused slab key from the one a timeout entry meant.
    serial: u32,
    opened: bool,
}

/// One worker thread: its epoll instance, its connections and its counts.
struct Worker<'a> {
    shared: &'a Shared,
    index: u32,
    epoll: OwnedFd,
    conns: Slab<Entry>,
    /// Handshakes in start order, for timeouts: (slab key, serial).
    handshakes: VecDeque<(usize, u32)>,
    in_flight: usize,
    events: Vec<epoll::Event>,
    scratch: Vec<u8>,
    rng: SplitMix64,
    phase: Phase,
    tally: Tally,
}

impl<'a> Worker<'a> {
    fn new(shared: &'a Shared, index: u32, epoll: OwnedFd, seed: u64) -> Self {
        Self {
            shared,
            index,
            epoll,
            conns: Slab::new(),
            handshakes: VecDeque::new(),
            in_flight: 0,
            events: Vec::with_capacity(EVENTS_PER_WAIT_MAX),
            scratch: Vec::with_capacity(super::client::READ_CHUNK_BYTES),
            rng: SplitMix64::new(seed),
            phase: Phase::Connect,
            tally: Tally::default(),
        }
    }

    fn run(mut self) -> Tally {
        let shared = self.shared;
        self.connect_phase();
        let finished = shared.workers_connected.fetch_add(1, Ordering::AcqRel) + 1;
        if finished == shared.workers {
            let _ = shared.hold_start.set(Instant::now());
        }

        // Hold: keep servicing (pings, server closes) until every worker is connected and the
        // hold time has passed.
        self.phase = Phase::Hold;
        loop {
            let now = Instant::now();
            if now >= shared.deadline {
                self.tally.timed_out = true;
                break;
            }
            if let Some(start) = shared.hold_start.get()
                && now >= *start + shared.hold
            {
                break;
            }
            self.service(TICK_MAX.min(shared.deadline - now));
        }
        let _ = shared.hold_end.set(Instant::now());

        self.close_phase();
        self.tally
    }

    fn connect_phase(&mut self) {
        let shared = self.shared;
        let workers = shared.workers;
        // This worker's connections are the global indices index, index + W, index + 2W, ...
        let mut next = self.index;
        loop {
            let now = Instant::now();
            if now >= shared.deadline {
                self.tally.timed_out = true;
                self.expire_handshakes(None);
                return;
            }
            let mut wait = TICK_MAX;
            while next < shared.connections && self.in_flight < shared.in_flight_max {
                if shared.rate > 0 {
                    // Connection i is due at i / rate seconds: workers interleave evenly.
                    let due = shared.started
                        + Duration::from_secs_f64(f64::from(next) / f64::from(shared.rate));
                    if due > now {
                        wait = wait.min(due - now);
                        break;
                    }
                }
                self.open(next, Instant::now());
                next += workers;
            }
            if next >= shared.connections && self.in_flight == 0 {
                return;
            }
            self.expire_handshakes(Some(now));
            self.service(wait.min(shared.deadline - now));
        }
    }

    fn close_phase(&mut self) {
        self.phase = Phase::Close;
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let mut events = Vec::new();
            // RFC 6455 §7.4.1: 1000, normal closure. Connections already closing (the server
            // started it) are left to finish below.
            self.conns[key]
                .conn
                .start_close(1000, &mut |e| events.push(owned(e)));
            for event in events {
                self.record(key, event);
            }
            if self
                .conns
                .get(key)
                .is_some_and(|e| e.conn.state() == ConnState::Done)
            {
                self.conns.remove(key);
            }
        }
        let close_deadline = (Instant::now() + CLOSE_WAIT).min(self.shared.deadline);
        while !self.conns.is_empty() {
            let now = Instant::now();
            if now >= close_deadline {
                break;
            }
            self.service(TICK_MAX.min(close_deadline - now));
        }
        let left: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in left {
            let mut events = Vec::new();
            self.conns[key].conn.expire(&mut |e| events.push(owned(e)));
            for event in events {
                self.record(key, event);
            }
            self.conns.remove(key);
        }
    }

    /// Opens global connection `serial`. Failures at socket/bind/connect are counted at once.
    fn open(&mut self, serial: u32, now: Instant) {
        self.tally.first_start.get_or_insert(now);
        let source = match self.shared.source_ips.len() {
            0 => None,
            n => Some(self.shared.source_ips[serial as usize % n]),
        };
        let seed = self.rng.next_u64();
        let conn =
            match ClientConn::connect(self.shared.target, source, &self.shared.url, seed, now) {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE lands here: counted once per connection, never retried.
                    self.tally.failed.count(&FailReason::from_io(&e));
                    return;
                }
            };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let flags = epoll::EventFlags::IN
            | epoll::EventFlags::OUT
            | epoll::EventFlags::RDHUP
            | epoll::EventFlags::ET;
        if let Err(e) = epoll::add(
            &self.epoll,
            conn.socket(),
            epoll::EventData::new_u64(key as u64),
            flags,
        ) {
            self.tally.failed.count(&FailReason::from_io(&e.into()));
            return;
        }
        entry.insert(Entry {
            conn,
            serial,
            opened: false,
        });
        self.handshakes.push_back((key, serial));
        self.in_flight += 1;
    }

    /// Waits up to `timeout` for readiness and handles what arrived.
    fn service(&mut self, timeout: Duration) {
        wait_for_events(&self.epoll, &mut self.events, timeout);
        let now = Instant::now();
        let events = std::mem::take(&mut self.events);
        for event in &events {
            let key = event.data.u64() as usize;
            let flags = event.flags;
            let error = flags.intersects(epoll::EventFlags::ERR | epoll::EventFlags::HUP);
            let ready = Readiness {
                readable: error
                    || flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::RDHUP),
                writable: error || flags.contains(epoll::EventFlags::OUT),
            };
            let mut pending = Vec::new();
            {
                // Keys of connections removed earlier in this batch are stale: skip them. New
                // connections are only opened between batches, so a key is never reused within
                // one.
                let Some(entry) = self.conns.get_mut(key) else {
                    continue;
                };
                entry
                    .conn
                    .handle_ready(ready, now, &mut self.scratch, &mut |e| {
                        pending.push(owned(e))
                    });
            }
            for e in pending {
                self.record(key, e);
            }
            if self.conns[key].conn.state() == ConnState::Done {
                self.conns.remove(key);
            }
        }
        self.events = events;
    }

    /// Counts one connection event.
    fn record(&mut self, key: usize, event: Event) {
        let entry = &mut self.conns[key];
        match event {
            Event::Opened { latency } => {
                entry.opened = true;
                self.in_flight -= 1;
                self.tally.connected += 1;
                self.tally.latencies_us.push(latency.as_micros() as u64);
                let opened_at = entry.conn.started() + latency;
                self.tally.last_open = max_opt(self.tally.last_open, Some(opened_at));
            }
            Event::Failed(reason) if !entry.opened => {
                self.in_flight -= 1;
                self.tally.failed.count(&reason);
            }
            Event::Failed(_) | Event::Closed { clean: false } => self.count_end(false),
            Event::Closed { clean: true } => self.count_end(true),
            Event::Other => {}
        }
    }

    fn count_end(&mut self, clean: bool) {
        match (self.phase, clean) {
            (Phase::Close, true) => self.tally.closed_clean += 1,
            (Phase::Close, false) => self.tally.closed_unclean += 1,
            _ => self.tally.dropped_before_close += 1,
        }
    }

    /// Fails handshakes older than the handshake timeout, or all of them when `now` is `None`.
    fn expire_handshakes(&mut self, now: Option<Instant>) {
        while let Some(&(key, serial)) = self.handshakes.front() {
            let live = self
                .conns
                .get_mut(key)
                .filter(|e| e.serial == serial && !e.opened);
            let Some(entry) = live else {
                self.handshakes.pop_front();
                continue;
            };
            if let Some(now) = now
                && now < entry.conn.started() + self.shared.handshake_timeout
            {
                return;
            }
            self.handshakes.pop_front();
            let mut pending = Vec::new();
            entry.conn.expire(&mut |e| pending.push(owned(e)));
            for e in pending {
                self.record(key, e);
            }
            self.conns.remove(key);
        }
    }
}

/// A [`ConnEvent`] without borrowed payloads, so it can be recorded after the borrow ends.
enum Event {
    Opened { latency: Duration },
    Failed(FailReason),
    Closed { clean: bool },
    Other,
}

fn owned(event: ConnEvent<'_>) -> Event {
    match event {
        ConnEvent::Opened { latency } => Event::Opened { latency },
        ConnEvent::Failed(reason) => Event::Failed(reason),
        ConnEvent::Closed { clean } => Event::Closed { clean },
        ConnEvent::Message { .. } | ConnEvent::PeerClose { .. } => Event::Other,
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A JSON string literal (RFC 8259 §7).
pub(crate) fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::thread::JoinHandle;

    use super::*;
    use crate::bench::client::accept_for_key;
    use crate::bench::frame::{self, Opcode};

    /// How the in-test acceptor answers each upgrade request.
    #[derive(Clone, Copy)]
    enum Answer {
        /// A correct 101, then echo the client's Close and close TCP.
        Upgrade,
        /// `HTTP/1.1 503`, then close.
        Status503,
        /// A correct 101 with a Ping and a Close(1001) behind it in the same write; expects a
        /// masked Pong and then a masked Close back.
        PingThenClose,
    }

    /// A tiny blocking WebSocket acceptor: one thread per connection, exactly `count` accepts.
    fn spawn_acceptor(count: usize, answer: Answer) -> (SocketAddr, JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut threads = Vec::new();
            for _ in 0..count {
                let (stream, _) = listener.accept().unwrap();
                threads.push(std::thread::spawn(move || serve_one(stream, answer)));
            }
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|&ok| ok)
                .count()
        });
        (addr, handle)
    }

    /// Serves one connection; true when the client closed with a masked Close frame.
    fn serve_one(mut stream: TcpStream, answer: Answer) -> bool {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).unwrap();
            assert_ne!(n, 0, "client closed before sending its request");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("request has a key")
            .trim()
            .to_owned();
        match answer {
            Answer::Status503 => {
                let _ = stream.write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n");
                return false;
            }
            Answer::Upgrade | Answer::PingThenClose => {
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_for_key(&key)
                );
                let mut bytes = response.into_bytes();
                if matches!(answer, Answer::PingThenClose) {
                    bytes.extend_from_slice(&[0x89, 0x02, b'h', b'i', 0x88, 0x02, 0x03, 0xE9]);
                }
                stream.write_all(&bytes).unwrap();
            }
        }
        if matches!(answer, Answer::PingThenClose) {
            return expect_pong_then_close(&mut stream, buf);
        }
        loop {
            if let Ok(Some(header)) = frame::decode_header(&buf) {
                let end = header.header_bytes + header.payload_bytes as usize;
                if buf.len() >= end {
                    let masked_close = header.opcode == Opcode::Close && header.mask.is_some();
                    if masked_close {
                        // RFC 6455 §5.5.1: echo a Close, then the server closes TCP first.
                        let _ = stream.write_all(&[0x88, 0x02, 0x03, 0xE8]);
                    }
                    return masked_close;
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads client frames: true when a masked Pong "hi" and then a masked Close 1001 arrive.
    fn expect_pong_then_close(stream: &mut TcpStream, mut buf: Vec<u8>) -> bool {
        let mut chunk = [0u8; 1024];
        let mut seen = Vec::new();
        while seen.len() < 2 {
            if let Ok(Some(header)) = frame::decode_header(&buf) {
                let end = header.header_bytes + header.payload_bytes as usize;
                if buf.len() >= end {
                    let Some(mask) = header.mask else {
                        return false;
                    };
                    let mut payload = buf[header.header_bytes..end].to_vec();
                    frame::apply_mask(&mut payload, mask, 0);
                    seen.push((header.opcode, payload));
                    buf.drain(..end);
                    continue;
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        // Closing TCP here, after the Close exchange, is the server's part (RFC 6455 §7.1.1).
        seen == [
            (Opcode::Pong, b"hi".to_vec()),
            (Opcode::Close, vec![0x03, 0xE9]),
        ]
    }

    fn args_for(addr: SocketAddr, connections: u32) -> ConnectArgs {
        let mut args = ConnectArgs::new(format!("ws://{addr}/echo"), connections);
        args.timeout_s = 30;
        args
    }

    #[test]
    fn fifty_upgrades_connect_hold_and_close_cleanly() {
        let (addr, acceptor) = spawn_acceptor(50, Answer::Upgrade);
        let report = run_connect(&args_for(addr, 50)).unwrap();
        assert_eq!(report.requested, 50);
        assert_eq!(report.connected, 50, "{}", report.to_text());
        assert_eq!(report.failed.total(), 0, "{}", report.to_text());
        assert_eq!(report.closed_clean, 50, "{}", report.to_text());
        assert_eq!(report.latency_us.count, 50);
        assert!(report.latency_us.p50 <= report.latency_us.p99);
        assert!(report.latency_us.p99 <= report.latency_us.max);
        assert!(report.handshakes_per_s > 0.0);
        assert!(!report.timed_out);
        assert_eq!(
            acceptor.join().unwrap(),
            50,
            "every connection sent a masked Close"
        );
    }

    #[test]
    fn server_close_during_hold_is_answered_and_counted_as_ended_early() {
        let (addr, acceptor) = spawn_acceptor(10, Answer::PingThenClose);
        let mut args = args_for(addr, 10);
        args.hold_s = 1;
        let report = run_connect(&args).unwrap();
        assert_eq!(report.connected, 10, "{}", report.to_text());
        assert_eq!(report.dropped_before_close, 10, "{}", report.to_text());
        assert_eq!(report.closed_clean + report.closed_unclean, 0);
        assert!(report.hold >= Duration::from_secs(1), "{report:?}");
        assert_eq!(
            acceptor.join().unwrap(),
            10,
            "every client sent Pong then Close"
        );
    }

    #[test]
    fn paced_run_with_one_worker_connects_all() {
        let (addr, acceptor) = spawn_acceptor(20, Answer::Upgrade);
        let mut args = args_for(addr, 20);
        args.rate = 400; // 20 connections over about 50 ms
        args.workers = 1;
        let report = run_connect(&args).unwrap();
        assert_eq!(report.connected, 20, "{}", report.to_text());
        assert!(
            report.connect_phase >= Duration::from_millis(40),
            "{report:?}"
        );
        assert_eq!(acceptor.join().unwrap(), 20);
    }

    #[test]
    fn non_101_answers_are_counted_by_status() {
        let (addr, acceptor) = spawn_acceptor(5, Answer::Status503);
        let report = run_connect(&args_for(addr, 5)).unwrap();
        assert_eq!(report.connected, 0);
        assert_eq!(
            report.failed.bad_status.get(&503),
            Some(&5),
            "{}",
            report.to_text()
        );
        assert_eq!(report.failed.total(), 5);
        acceptor.join().unwrap();
        assert!(report.to_json().contains("\"bad_status\":{\"503\":5}"));
    }

    #[test]
    fn closed_port_is_counted_as_refused() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let report = run_connect(&args_for(addr, 8)).unwrap();
        assert_eq!(report.failed.refused, 8, "{}", report.to_text());
        assert_eq!(report.connected, 0);
        assert_eq!(report.handshakes_per_s, 0.0);
    }

    #[test]
    fn silent_server_times_out_the_handshakes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut args = args_for(listener.local_addr().unwrap(), 4);
        args.handshake_timeout_ms = 100;
        let report = run_connect(&args).unwrap();
        assert_eq!(report.failed.timeout, 4, "{}", report.to_text());
        drop(listener);
    }

    #[test]
    fn more_connections_than_the_file_limit_are_refused_up_front() {
        let soft = getrlimit(Resource::Nofile).current;
        let Some(soft) = soft.filter(|&s| s < u64::from(u32::MAX) - FD_HEADROOM) else {
            eprintln!("skipped: RLIMIT_NOFILE is unlimited");
            return;
        };
        let args = ConnectArgs::new("ws://127.0.0.1:1/", soft as u32);
        let err = run_connect(&args).unwrap_err();
        assert!(
            matches!(err, BenchError::OpenFileLimit { soft_limit, .. } if soft_limit == soft),
            "{err}"
        );
        assert!(err.to_string().contains("ulimit -n"), "{err}");
    }

    /// Environment variable that makes the test binary run the EMFILE scenario as a child.
    const EMFILE_CHILD_ENV: &str = "RINGCAST_BENCH_EMFILE_CHILD";

    #[test]
    fn emfile_at_runtime_is_counted_not_retried() {
        if std::env::var_os(EMFILE_CHILD_ENV).is_some() {
            return emfile_child();
        }
        // The scenario lowers RLIMIT_NOFILE, which is process-wide: run it in a child process so
        // the tests running beside this one keep their descriptors.
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "bench::connect::tests::emfile_at_runtime_is_counted_not_retried",
                "--nocapture",
            ])
            .env(EMFILE_CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("emfile child ok"), "{stdout}");
    }

    /// Leaves about 40 descriptors free under a 300 soft limit, then asks for 200 connections to
    /// a listener that never answers: the first sockets time out, the rest hit EMFILE.
    fn emfile_child() {
        use rustix::process::{Rlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(300),
                maximum: limit.maximum,
            },
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        let filler: Vec<std::fs::File> = (open_now..260)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let mut args = args_for(listener.local_addr().unwrap(), 200);
        args.handshake_timeout_ms = 200;
        let started = Instant::now();
        let report = run_connect(&args).unwrap();
        drop(filler);
        let f = &report.failed;
        assert!(f.emfile > 100, "{}", report.to_text());
        assert_eq!(f.emfile + f.timeout, 200, "{}", report.to_text());
        assert!(report.to_text().contains("hit the open-file limit (300)"));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        println!("emfile child ok: {}", report.to_text());
    }

    #[test]
    fn impossible_flags_are_rejected() {
        let mut args = ConnectArgs::new("ws://127.0.0.1:1/", 1);
        args.hold_s = 200;
        assert!(matches!(
            run_connect(&args),
            Err(BenchError::InvalidArgument {
                name: "timeout-s",
                ..
            })
        ));
        args = ConnectArgs::new("ws://127.0.0.1:1/", 0);
        assert!(matches!(
            run_connect(&args),
            Err(BenchError::InvalidArgument {
                name: "connections",
                ..
            })
        ));
        args = ConnectArgs::new("ws://127.0.0.1:1/", 1);
        args.source_ips = vec!["::1".parse().unwrap()];
        assert!(matches!(
            run_connect(&args),
            Err(BenchError::InvalidArgument {
                name: "source-ips",
                ..
            })
        ));
        args = ConnectArgs::new("wss://127.0.0.1:1/", 1);
        assert!(matches!(run_connect(&args), Err(BenchError::Url(_))));
    }

    #[test]
    fn source_ips_spread_only_over_10000_loopback_connections() {
        let lo: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert!(auto_source_ips(lo, 10_000).is_empty());
        let ips = auto_source_ips(lo, 25_000);
        assert_eq!(
            ips,
            ["127.0.0.1", "127.0.0.2", "127.0.0.3"].map(|s| s.parse::<IpAddr>().unwrap())
        );
        assert!(auto_source_ips("10.0.0.1:80".parse().unwrap(), 60_000).is_empty());
        assert!(auto_source_ips("[::1]:80".parse().unwrap(), 60_000).is_empty());
    }

    #[test]
    fn explicit_source_ip_is_bound() {
        let (addr, acceptor) = spawn_acceptor(3, Answer::Upgrade);
        let mut args = args_for(addr, 3);
        args.source_ips = vec!["127.0.0.2".parse().unwrap()];
        let report = run_connect(&args).unwrap();
        assert_eq!(report.connected, 3, "{}", report.to_text());
        assert_eq!(report.source_ips, args.source_ips);
        acceptor.join().unwrap();
    }

    #[test]
    fn json_escapes_strings() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
