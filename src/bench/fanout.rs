//! `ringcast bench fanout`: N subscribers on one topic, one publisher (a WebSocket connection or
//! pipelined HTTP POSTs) sending M numbered, timestamped messages; reports deliveries/s, delivery
//! latency, exact loss, duplicates and reordering against N x M, and CPU per delivery. Owns the
//! subscriber workers, the publisher (on the calling thread) and the report; never samples the
//! loss accounting.
//!
//! Two wire protocols: raw topics (`/topics/NAME`, the message is the frame) and Pusher Channels
//! v7 (`--protocol pusher`: subscribers on `/app/KEY` subscribe to the topic as a public channel,
//! the publisher triggers the event `bench` through the signed HTTP API, and the message travels
//! as the event's `data` string). The accounting is the same for both.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use super::BenchError;
use super::client::{ConnEvent, ConnState, SplitMix64};
use super::connect::FailureCounts;
use super::cpu::{CpuProbe, CpuUsage, clock_ticks_per_second};
use super::echo::{reasons, write_cpu};
use super::frame::Opcode;
use super::payload::{self, PAYLOAD_BYTES_MIN, PayloadError, SeqTracker, now_ns, ns_since_epoch};
use super::pool::{ConnectTally, Member, Pool, TICK_MAX, Target, create_epoll, wait_until};
use super::pusher::{self, PusherApp, ServerEvent};
use super::stats::{Histogram, Quantiles};

/// How long the subscribers' connect phase may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between the last subscription and the first publish, so servers that register
/// subscriptions asynchronously (on another core) have them in place.
pub const SUBSCRIBE_SETTLE: Duration = Duration::from_millis(200);

/// Bytes the WebSocket publisher keeps queued beyond what the kernel took. Default 256 KiB:
/// enough to keep the socket full flat out, small enough that send timestamps stay honest.
pub const PUBLISH_QUEUE_BYTES_MAX: usize = 256 * 1024;

/// How long the publisher may make no progress (no bytes accepted, no responses) before the run
/// gives up on it and reports the error.
pub const PUBLISH_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Most HTTP requests in flight. Default 1024 bounds the response parser's backlog.
pub const PIPELINE_MAX: u32 = 1024;

/// Largest HTTP response (head plus body) the publisher buffers. Default 64 KiB; the contract's
/// answer is a small JSON object. Over it the publisher stops with an error.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// Most subscribers x messages, the bits of the seen-sets. Default 2^32 (512 MiB of bitsets):
/// over it the run is refused.
pub const SEEN_BITS_MAX: u64 = 1 << 32;

/// Largest message, bytes. Default 1 MiB, the client's reassembly bound.
pub const MESSAGE_BYTES_MAX: u32 = 1 << 20;

/// How the publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Publish {
    /// One more WebSocket connection on the topic, sending text frames.
    Ws,
    /// One keep-alive TCP connection sending `POST /topics/NAME`, pipelined.
    Http,
}

/// What the subscribers and the HTTP publisher speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Raw topics: subscribers on `/topics/NAME`; a message is one frame.
    Raw,
    /// Pusher Channels v7: subscribers on `/app/KEY` subscribe to the topic as a public channel;
    /// the publisher sends signed `POST /apps/ID/events` (needs `--publish http`).
    Pusher,
}

/// Flags for `ringcast bench fanout`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct FanoutArgs {
    /// Server base URL, ws://HOST:PORT; the tool appends /topics/NAME (or, with --protocol
    /// pusher, /app/KEY?protocol=7&client=ringcast-bench&version=1).
    #[arg(long)]
    pub url: String,
    /// Topic name (with --protocol pusher: the public channel).
    #[arg(long, visible_alias = "channel", default_value = "bench")]
    pub topic: String,
    /// Raw topics, or Pusher Channels v7 with the signed HTTP API.
    #[arg(long, value_enum, default_value_t = Protocol::Raw)]
    pub protocol: Protocol,
    /// Pusher app id (--protocol pusher).
    #[arg(long, default_value = "app-id")]
    pub app_id: String,
    /// Pusher app key (--protocol pusher).
    #[arg(long, default_value = "app-key")]
    pub app_key: String,
    /// Pusher app secret, to sign the HTTP API requests (--protocol pusher).
    #[arg(long, default_value = "app-secret", env = "RINGCAST_BENCH_APP_SECRET")]
    pub app_secret: String,
    /// Subscriber connections.
    #[arg(long, short = 'n', default_value_t = 5000)]
    pub subscribers: u32,
    /// Messages to publish.
    #[arg(long, short = 'm', default_value_t = 1000)]
    pub messages: u32,
    /// Message size in bytes (at least 40: sequence number and send timestamp).
    #[arg(long, short = 'b', default_value_t = 64)]
    pub bytes: u32,
    /// Messages per second; 0 publishes flat out.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Publish over a WebSocket connection or with HTTP POST.
    #[arg(long, value_enum, default_value_t = Publish::Ws)]
    pub publish: Publish,
    /// HTTP requests in flight (pipelined) for --publish http.
    #[arg(long, default_value_t = 32)]
    pub pipeline: u32,
    /// Bearer token for --publish http.
    #[arg(long, default_value = "")]
    pub token: String,
    /// Subscriber worker threads, each with its own epoll instance.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Server process to charge CPU time to (utime + stime from /proc/PID/stat).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds to wait for stragglers after the last publish.
    #[arg(long, default_value_t = 10)]
    pub drain_timeout_s: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Limit for one handshake, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
}

impl FanoutArgs {
    /// Arguments with every default, for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            topic: "bench".to_owned(),
            protocol: Protocol::Raw,
            app_id: "app-id".to_owned(),
            app_key: "app-key".to_owned(),
            app_secret: "app-secret".to_owned(),
            subscribers: 5000,
            messages: 1000,
            bytes: 64,
            rate: 0,
            publish: Publish::Ws,
            pipeline: 32,
            token: String::new(),
            workers: 2,
            server_pid: None,
            drain_timeout_s: 10,
            json: false,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// What `bench fanout` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FanoutReport {
    /// Subscription URL (base plus /topics/NAME, or /app/KEY?... for Pusher).
    pub url: String,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Publisher kind.
    pub publish: Publish,
    /// Subscribers asked for.
    pub subscribers: u32,
    /// Subscribers upgraded (Pusher: subscribed to the channel).
    pub subscribed: u64,
    /// Subscribers that failed to upgrade (Pusher: or to subscribe).
    pub subscribe_failed: u64,
    /// Why upgrades failed.
    pub subscribe_failures: FailureCounts,
    /// The Pusher side of subscribing and receiving (`None` for raw topics).
    pub pusher: Option<PusherCounts>,
    /// Subscribers whose connection ended after subscribing, before they had every message.
    pub subscribers_dropped: u64,
    /// Messages asked for.
    pub messages: u32,
    /// Message size.
    pub bytes: u32,
    /// Publish rate asked for (0: flat out).
    pub rate: u32,
    /// Messages the publisher sent.
    pub published: u64,
    /// HTTP publishes answered 2xx (equals `published` for WebSocket publishing).
    pub publish_accepted: u64,
    /// HTTP publishes answered otherwise, by status code.
    pub publish_rejected: BTreeMap<u16, u64>,
    /// HTTP connections the publisher opened: 1, unless the server closes connections after a
    /// response (`Connection: close`), which turns pipelining into one request per connection.
    pub publish_connections: u64,
    /// HTTP requests sent again because a server closed their connection without answering them
    /// (RFC 9112 §9.6: it must not have processed them).
    pub publish_resent: u64,
    /// Why the publisher stopped early, if it did.
    pub publisher_error: Option<String>,
    /// First send to last send (to the last response for HTTP), microseconds.
    pub publish_us: u64,
    /// Deliveries expected: subscribers asked for x messages asked for.
    pub expected: u64,
    /// Distinct (subscriber, message) deliveries received.
    pub received: u64,
    /// `expected - received`.
    pub lost: u64,
    /// Deliveries of a message a subscriber already had.
    pub duplicates: u64,
    /// First deliveries of a message older than one the subscriber had already seen.
    pub out_of_order: u64,
    /// Messages that did not parse as a bench payload of this run.
    pub malformed: u64,
    /// First send to last delivery, microseconds.
    pub window_us: u64,
    /// `received` per second of window.
    pub deliveries_per_s: f64,
    /// Send timestamp to receipt, microseconds.
    pub latency_us: Quantiles,
    /// The drain timeout passed before every subscriber had every message.
    pub drain_timed_out: bool,
    /// Server CPU from the first publish to the end of the drain (`None`: no --server-pid).
    pub server_cpu: Option<CpuUsage>,
    /// Server CPU nanoseconds per delivery received.
    pub server_ns_per_delivery: Option<f64>,
    /// This process's CPU over the same span.
    pub client_cpu: Option<CpuUsage>,
    /// This process's CPU in cores over that span (near the core count: the client is the
    /// bottleneck).
    pub client_cores: Option<f64>,
    /// Subscriber worker threads.
    pub workers: u32,
}

/// What Pusher subscribers saw besides bench events. Every count is per subscriber connection
/// and exact.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PusherCounts {
    /// `pusher:connection_established` received.
    pub established: u64,
    /// `pusher_internal:subscription_succeeded` for the channel received.
    pub subscribed: u64,
    /// `pusher:subscription_error` by `data.status` (0: none given).
    pub subscription_errors: BTreeMap<u16, u64>,
    /// `pusher:error` by `data.code` (0: none given), at any time.
    pub errors: BTreeMap<u16, u64>,
    /// Close frames from the server by status code (1005: none given), at any time.
    pub close_codes: BTreeMap<u16, u64>,
    /// Not subscribed when the connect phase timed out.
    pub subscribe_timeouts: u64,
    /// Upgraded, then ended before the subscription succeeded.
    pub ended_before_subscribed: u64,
    /// `pusher:ping` answered with `pusher:pong`.
    pub pings_answered: u64,
    /// Other well-formed events (not `bench` on the channel): ignored, not counted as malformed.
    pub other_events: u64,
}

impl PusherCounts {
    fn merge(&mut self, o: &Self) {
        self.established += o.established;
        self.subscribed += o.subscribed;
        for (mine, theirs) in [
            (&mut self.subscription_errors, &o.subscription_errors),
            (&mut self.errors, &o.errors),
            (&mut self.close_codes, &o.close_codes),
        ] {
            for (code, n) in theirs {
                *mine.entry(*code).or_default() += n;
            }
        }
        self.subscribe_timeouts += o.subscribe_timeouts;
        self.ended_before_subscribed += o.ended_before_subscribed;
        self.pings_answered += o.pings_answered;
        self.other_events += o.other_events;
    }
}

/// Runs `bench fanout`. Failed subscribers and publisher errors are reported, not returned.
pub fn run_fanout(args: &FanoutArgs) -> Result<FanoutReport, BenchError> {
    validate(args)?;
    let base = args.url.trim_end_matches('/');
    let url = match args.protocol {
        Protocol::Raw => format!("{base}/topics/{}", args.topic),
        Protocol::Pusher => format!("{base}{}", pusher::subscribe_path(&args.app_key)),
    };
    // Subscribers plus the publisher's connection.
    let target = Target::for_run(&url, args.subscribers + 1, "subscribers")?;
    let shared = Shared {
        subscribers: args.subscribers,
        workers: args.workers,
        messages: u64::from(args.messages),
        handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
        pusher: (args.protocol == Protocol::Pusher).then(|| PusherChannel {
            subscribe_frame: pusher::subscribe_frame(&args.topic),
            channel: args.topic.clone(),
        }),
        connected_workers: AtomicU32::new(0),
        drain_deadline_ns: AtomicU64::new(0),
    };
    let hz = clock_ticks_per_second();
    let mut seeds = SplitMix64::from_entropy();
    let mut epolls = Vec::with_capacity(args.workers as usize);
    for _ in 0..args.workers {
        epolls.push((create_epoll()?, seeds.next_u64()));
    }
    let publisher_pool = Pool::new(target.clone(), create_epoll()?, seeds.next_u64());
    let (tallies, sent, server_cpu, client_cpu, cpu_span) = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(epolls.len());
        for (index, (epoll, seed)) in epolls.into_iter().enumerate() {
            let shared = &shared;
            let target = target.clone();
            let handle = std::thread::Builder::new()
                .name(format!("bench-fanout-{index}"))
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
        let mut publisher = Publisher::connect(args, &target, publisher_pool);
        std::thread::sleep(SUBSCRIBE_SETTLE);
        let server = CpuProbe::start(args.server_pid, hz);
        let client = CpuProbe::start(None, hz);
        let cpu_start = Instant::now();
        let sent = publisher.run(args);
        let drain = Duration::from_secs(args.drain_timeout_s);
        shared
            .drain_deadline_ns
            .store(now_ns() + drain.as_nanos() as u64, Ordering::Release);
        let mut tallies = Vec::with_capacity(handles.len());
        for handle in handles {
            tallies.push(handle.join().map_err(|_| BenchError::WorkerPanicked)?);
        }
        let server_cpu = args.server_pid.and_then(|_| server.finish());
        let client_cpu = client.finish();
        let cpu_span = cpu_start.elapsed();
        drop(publisher);
        Ok::<_, BenchError>((tallies, sent, server_cpu, client_cpu, cpu_span))
    })?;
    let mut total = Tally::default();
    for tally in &tallies {
        total.merge(tally);
    }
    let expected = u64::from(args.subscribers) * u64::from(args.messages);
    let window = match (sent.first_send, total.last_delivery) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    let publish_span = match (sent.first_send, sent.last_send) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    let received = total.seen.unique;
    let (subscribed, pusher_counts) = match args.protocol {
        Protocol::Raw => (total.connect.opened, None),
        Protocol::Pusher => (total.pusher.subscribed, Some(total.pusher.clone())),
    };
    Ok(FanoutReport {
        url,
        protocol: args.protocol,
        publish: args.publish,
        subscribers: args.subscribers,
        subscribed,
        // Pusher: upgraded but never subscribed counts as failed too.
        subscribe_failed: total.connect.failed.total()
            + total.connect.opened.saturating_sub(subscribed),
        subscribe_failures: total.connect.failed.clone(),
        pusher: pusher_counts,
        // The workers count connections that end during the connect phase too.
        subscribers_dropped: total.dropped,
        messages: args.messages,
        bytes: args.bytes,
        rate: args.rate,
        published: sent.sent,
        publish_accepted: sent.accepted,
        publish_rejected: sent.rejected,
        publish_connections: sent.connections,
        publish_resent: sent.resent,
        publisher_error: sent.error,
        publish_us: publish_span.as_micros() as u64,
        expected,
        received,
        lost: expected - received,
        duplicates: total.seen.duplicates,
        out_of_order: total.seen.out_of_order,
        malformed: total.seen.malformed,
        window_us: window.as_micros() as u64,
        deliveries_per_s: if window.is_zero() {
            0.0
        } else {
            received as f64 / window.as_secs_f64()
        },
        latency_us: total.latency_us.quantiles(),
        drain_timed_out: total.drain_timed_out,
        server_cpu,
        server_ns_per_delivery: server_cpu.map(|c| c.ns_per(received)),
        client_cpu,
        client_cores: client_cpu.map(|c| c.cores(cpu_span)),
        workers: args.workers,
    })
}

impl FanoutReport {
    /// The run finished as asked: every subscriber connected and every message was published
    /// and accepted. Loss and duplicates are measurements, not failures.
    pub fn is_complete(&self) -> bool {
        self.subscribe_failed == 0
            && self.publisher_error.is_none()
            && self.published == u64::from(self.messages)
            && self.publish_rejected.is_empty()
    }

    /// The report as text, one fact per line.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let publish = match self.publish {
            Publish::Ws => "ws",
            Publish::Http => "http",
        };
        // Writing to a String cannot fail.
        let protocol = match self.protocol {
            Protocol::Raw => "raw topic",
            Protocol::Pusher => "pusher",
        };
        let _ = writeln!(
            s,
            "ringcast bench fanout {} ({protocol}, publish {publish}, {} workers)",
            self.url, self.workers
        );
        let _ = writeln!(
            s,
            "  subscribers     {} of {} (failed {}{}, dropped {})",
            self.subscribed,
            self.subscribers,
            self.subscribe_failed,
            reasons(&self.subscribe_failures),
            self.subscribers_dropped
        );
        if let Some(p) = &self.pusher {
            let _ = write!(
                s,
                "  pusher          established {}, subscribed {}, subscribe timeouts {}, ended \
                 before subscribed {}, pings answered {}, other events {}",
                p.established,
                p.subscribed,
                p.subscribe_timeouts,
                p.ended_before_subscribed,
                p.pings_answered,
                p.other_events
            );
            for (what, counts) in [
                ("subscription_error status", &p.subscription_errors),
                ("pusher:error code", &p.errors),
                ("close code", &p.close_codes),
            ] {
                for (code, n) in counts {
                    let _ = write!(s, ", {what} {code}: {n}");
                }
            }
            let _ = writeln!(s);
        }
        let rate = if self.rate == 0 {
            "flat out".to_owned()
        } else {
            format!("{}/s", self.rate)
        };
        let _ = write!(
            s,
            "  published       {} of {} x {} bytes, {rate}, in {:.3} s",
            self.published,
            self.messages,
            self.bytes,
            self.publish_us as f64 / 1e6
        );
        if self.publish == Publish::Http {
            let _ = write!(s, " (2xx {}", self.publish_accepted);
            for (code, n) in &self.publish_rejected {
                let _ = write!(s, ", status {code}: {n}");
            }
            if self.publish_connections > 1 || self.publish_resent > 0 {
                let _ = write!(
                    s,
                    "; the server closed connections: {} connections, {} requests sent again",
                    self.publish_connections, self.publish_resent
                );
            }
            let _ = write!(s, ")");
        }
        let _ = writeln!(s);
        if let Some(error) = &self.publisher_error {
            let _ = writeln!(s, "  publisher error {error}");
        }
        let _ = writeln!(
            s,
            "  deliveries      expected {}, received {}, lost {}, duplicates {}, out of order {}, \
             malformed {}",
            self.expected,
            self.received,
            self.lost,
            self.duplicates,
            self.out_of_order,
            self.malformed
        );
        let _ = writeln!(
            s,
            "  deliveries/s    {:.0} over {:.3} s (first send to last delivery)",
            self.deliveries_per_s,
            self.window_us as f64 / 1e6
        );
        let q = &self.latency_us;
        let _ = writeln!(
            s,
            "  latency us      p50 {}  p99 {}  p999 {}  max {}",
            q.p50, q.p99, q.p999, q.max
        );
        write_cpu(
            &mut s,
            self.server_cpu,
            self.server_ns_per_delivery,
            "delivery",
            self.client_cpu,
            self.client_cores,
        );
        if self.drain_timed_out {
            let _ = writeln!(
                s,
                "  WARNING: the drain timeout passed before every subscriber had every message"
            );
        }
        s
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        // Serializing plain numbers, strings and maps with integer keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn validate(args: &FanoutArgs) -> Result<(), BenchError> {
    let invalid = |name, reason: String| Err(BenchError::InvalidArgument { name, reason });
    if args.subscribers == 0 {
        return invalid("subscribers", "must be at least 1".to_owned());
    }
    if args.messages == 0 {
        return invalid("messages", "must be at least 1".to_owned());
    }
    if (args.bytes as usize) < PAYLOAD_BYTES_MIN || args.bytes > MESSAGE_BYTES_MAX {
        return invalid(
            "bytes",
            format!(
                "{} is outside {PAYLOAD_BYTES_MIN}..={MESSAGE_BYTES_MAX}: each message carries a \
                 20-digit sequence number and a 20-digit send timestamp",
                args.bytes
            ),
        );
    }
    let bits = u64::from(args.subscribers) * u64::from(args.messages);
    if bits > SEEN_BITS_MAX {
        return invalid(
            "messages",
            format!(
                "{} subscribers x {} messages = {bits} is over {SEEN_BITS_MAX} tracked \
                 deliveries per process",
                args.subscribers, args.messages
            ),
        );
    }
    if args.workers == 0 || args.workers > super::connect::WORKERS_MAX {
        return invalid(
            "workers",
            format!("must be 1..={}", super::connect::WORKERS_MAX),
        );
    }
    if args.publish == Publish::Http && (args.pipeline == 0 || args.pipeline > PIPELINE_MAX) {
        return invalid("pipeline", format!("must be 1..={PIPELINE_MAX}"));
    }
    if args.protocol == Protocol::Pusher {
        return validate_pusher(args);
    }
    if args.handshake_timeout_ms == 0 {
        return invalid("handshake-timeout-ms", "must be at least 1".to_owned());
    }
    let topic_ok = !args.topic.is_empty()
        && args
            .topic
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'%'));
    if !topic_ok {
        return invalid(
            "topic",
            format!(
                "{:?} must be non-empty printable ASCII without / ? # %",
                args.topic
            ),
        );
    }
    Ok(())
}

fn validate_pusher(args: &FanoutArgs) -> Result<(), BenchError> {
    let invalid = |name, reason: String| Err(BenchError::InvalidArgument { name, reason });
    if args.handshake_timeout_ms == 0 {
        return invalid("handshake-timeout-ms", "must be at least 1".to_owned());
    }
    if args.publish != Publish::Http {
        return invalid(
            "publish",
            "--protocol pusher publishes through the HTTP API: use --publish http".to_owned(),
        );
    }
    if let Some(reason) = pusher::channel_problem(&args.topic) {
        return invalid("channel", reason);
    }
    // They go into the URL path and query unescaped.
    let unreserved = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    };
    if !unreserved(&args.app_id) {
        return invalid(
            "app-id",
            format!("{:?} must be non-empty A-Z a-z 0-9 - . _ ~", args.app_id),
        );
    }
    if !unreserved(&args.app_key) {
        return invalid(
            "app-key",
            format!("{:?} must be non-empty A-Z a-z 0-9 - . _ ~", args.app_key),
        );
    }
    if args.app_secret.is_empty() {
        return invalid("app-secret", "must not be empty".to_owned());
    }
    Ok(())
}

/// The Pusher channel every subscriber joins.
struct PusherChannel {
    channel: String,
    subscribe_frame: String,
}

struct Shared {
    subscribers: u32,
    workers: u32,
    messages: u64,
    handshake_timeout: Duration,
    /// `Some` for `--protocol pusher`.
    pusher: Option<PusherChannel>,
    connected_workers: AtomicU32,
    /// When workers stop waiting for stragglers, in [`now_ns`] time; 0 until publishing ends.
    drain_deadline_ns: AtomicU64,
}

/// Sums of seen-sets.
#[derive(Debug, Default, Clone, Copy)]
struct SeenSums {
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    malformed: u64,
}

impl SeenSums {
    fn add(&mut self, t: &SeqTracker) {
        self.unique += t.unique;
        self.duplicates += t.duplicates;
        self.out_of_order += t.out_of_order;
        self.malformed += t.malformed;
    }

    fn merge(&mut self, o: &Self) {
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.malformed += o.malformed;
    }
}

#[derive(Debug, Default)]
struct Tally {
    connect: ConnectTally,
    seen: SeenSums,
    latency_us: Histogram,
    last_delivery: Option<Instant>,
    dropped: u64,
    drain_timed_out: bool,
    pusher: PusherCounts,
}

impl Tally {
    fn merge(&mut self, other: &Self) {
        self.connect.merge(&other.connect);
        self.seen.merge(&other.seen);
        self.latency_us.merge(&other.latency_us);
        self.last_delivery = match (self.last_delivery, other.last_delivery) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.dropped += other.dropped;
        self.drain_timed_out |= other.drain_timed_out;
        self.pusher.merge(&other.pusher);
    }
}

/// Where a subscriber stands with its subscription. Raw-topic subscribers start `Subscribed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Pusher: upgraded, waiting for `pusher:connection_established`.
    AwaitEstablished,
    /// Pusher: established; `pusher:subscribe` goes out after this read.
    SubscribeDue,
    /// Pusher: `pusher:subscribe` sent, waiting for `pusher_internal:subscription_succeeded`.
    AwaitSucceeded,
    /// Receiving.
    Subscribed,
    /// Pusher: refused, timed out or ended before subscribing.
    Failed,
}

impl Phase {
    fn is_pending(self) -> bool {
        matches!(
            self,
            Self::AwaitEstablished | Self::SubscribeDue | Self::AwaitSucceeded
        )
    }
}

/// One subscriber's state.
struct Subscriber {
    seen: SeqTracker,
    phase: Phase,
    /// Pusher: a `pusher:ping` came; the pong goes out after this read.
    pong_due: bool,
    /// Complete or ended: no longer waited for.
    finished: bool,
}

/// The receiving side of one worker: what its subscribers' events add up to.
struct Receiver<'a> {
    /// The Pusher channel, `None` for raw topics.
    channel: Option<&'a str>,
    /// Subscribed subscribers not yet finished; set when delivery starts (0 before).
    waiting: usize,
    latency_us: Histogram,
    last_delivery: Option<Instant>,
    dropped: u64,
    pusher: PusherCounts,
}

impl Receiver<'_> {
    fn on_event(&mut self, sub: &mut Subscriber, event: ConnEvent<'_>, at: Instant) {
        match event {
            ConnEvent::Message { payload, .. } => match self.channel {
                None => self.deliver(sub, payload::parse(payload), at),
                Some(channel) => self.on_pusher_message(sub, channel, payload, at),
            },
            ConnEvent::PeerClose { code } => {
                if self.channel.is_some() {
                    // RFC 6455 §7.1.5: 1005 stands for "no status code was present".
                    *self
                        .pusher
                        .close_codes
                        .entry(code.unwrap_or(1005))
                        .or_default() += 1;
                }
            }
            ConnEvent::Closed { .. } | ConnEvent::Failed(_) => {
                if sub.phase.is_pending() {
                    sub.phase = Phase::Failed;
                    sub.finished = true;
                    self.pusher.ended_before_subscribed += 1;
                } else if !sub.finished {
                    sub.finished = true;
                    // Saturating: before delivery starts nobody is counted as waiting.
                    self.waiting = self.waiting.saturating_sub(1);
                    self.dropped += 1;
                }
            }
            ConnEvent::Opened { .. } => {}
        }
    }

    fn on_pusher_message(&mut self, sub: &mut Subscriber, channel: &str, text: &[u8], at: Instant) {
        let Ok(event) = pusher::parse_server_event(text) else {
            sub.seen.record_malformed();
            return;
        };
        match event {
            ServerEvent::ConnectionEstablished => {
                self.pusher.established += 1;
                if sub.phase == Phase::AwaitEstablished {
                    sub.phase = Phase::SubscribeDue;
                }
            }
            ServerEvent::SubscriptionSucceeded { channel: c }
                if c == channel && sub.phase == Phase::AwaitSucceeded =>
            {
                sub.phase = Phase::Subscribed;
                self.pusher.subscribed += 1;
            }
            ServerEvent::SubscriptionError { status } => {
                *self
                    .pusher
                    .subscription_errors
                    .entry(status.unwrap_or(0))
                    .or_default() += 1;
                if sub.phase.is_pending() {
                    sub.phase = Phase::Failed;
                    sub.finished = true;
                }
            }
            ServerEvent::Error { code } => {
                // The close that may follow is counted when it comes.
                *self.pusher.errors.entry(code.unwrap_or(0)).or_default() += 1;
            }
            ServerEvent::Ping => {
                sub.pong_due = true;
                self.pusher.pings_answered += 1;
            }
            ServerEvent::Other {
                event,
                channel: Some(c),
                data,
            } if event == pusher::BENCH_EVENT && c == channel => {
                let parsed = match &data {
                    Some(data) => payload::parse(data.as_bytes()),
                    None => Err(PayloadError::NotDigits),
                };
                self.deliver(sub, parsed, at);
            }
            ServerEvent::SubscriptionSucceeded { .. } | ServerEvent::Other { .. } => {
                self.pusher.other_events += 1;
            }
        }
    }

    fn deliver(
        &mut self,
        sub: &mut Subscriber,
        parsed: Result<(u64, u64), PayloadError>,
        at: Instant,
    ) {
        let Ok((seq, sent_ns)) = parsed else {
            sub.seen.record_malformed();
            return;
        };
        if sub.seen.record(seq) == payload::Receipt::New {
            let at_ns = ns_since_epoch(at);
            self.latency_us.record(at_ns.saturating_sub(sent_ns) / 1000);
            self.last_delivery = Some(at);
            if sub.seen.is_complete() && !sub.finished {
                sub.finished = true;
                self.waiting = self.waiting.saturating_sub(1);
            }
        }
    }
}

/// After a member's events: sends what they asked for (Pusher subscribe, pong) and adds up the
/// seen-set of a connection that ended.
fn after_events(member: &mut Member<Subscriber>, subscribe: Option<&[u8]>, ended: &mut SeenSums) {
    let sub = &mut member.state;
    if member.conn.state() == ConnState::Open {
        let mut queued = false;
        if sub.phase == Phase::SubscribeDue
            && let Some(frame) = subscribe
        {
            member.conn.queue_frame(Opcode::Text, frame);
            sub.phase = Phase::AwaitSucceeded;
            queued = true;
        }
        if sub.pong_due {
            member
                .conn
                .queue_frame(Opcode::Text, pusher::PONG_FRAME.as_bytes());
            sub.pong_due = false;
            queued = true;
        }
        if queued {
            // A failed send leaves the socket in error, which the next read reports as Failed or
            // Closed; it is counted there.
            let _ = member.conn.flush_queued();
        }
    }
    if member.conn.state() == ConnState::Done {
        ended.add(&sub.seen);
    }
}

fn worker(shared: &Shared, index: u32, mut pool: Pool<Subscriber>) -> Tally {
    let mut tally = Tally::default();
    let serials = (index..shared.subscribers).step_by(shared.workers as usize);
    let first_phase = match shared.pusher {
        Some(_) => Phase::AwaitEstablished,
        None => Phase::Subscribed,
    };
    let subscribe = shared.pusher.as_ref().map(|p| p.subscribe_frame.as_bytes());
    let mut rx = Receiver {
        channel: shared.pusher.as_ref().map(|p| p.channel.as_str()),
        waiting: 0,
        latency_us: Histogram::new(),
        last_delivery: None,
        dropped: 0,
        pusher: PusherCounts::default(),
    };
    let mut ended = SeenSums::default();
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    tally.connect = pool.connect_all_with(
        serials,
        256,
        shared.handshake_timeout,
        deadline,
        |_| Subscriber {
            seen: SeqTracker::new(shared.messages),
            phase: first_phase,
            pong_due: false,
            finished: false,
        },
        |view, event, at| rx.on_event(view.state, event, at),
        |member| after_events(member, subscribe, &mut ended),
    );
    // Pusher: every subscription succeeds or fails before the worker reports ready.
    loop {
        let pending = pool
            .members_mut()
            .filter(|m| m.state.phase.is_pending())
            .count();
        if pending == 0 {
            break;
        }
        if Instant::now() >= deadline {
            for member in pool.members_mut() {
                if member.state.phase.is_pending() {
                    member.state.phase = Phase::Failed;
                    member.state.finished = true;
                    rx.pusher.subscribe_timeouts += 1;
                    // RFC 6455 §7.4.1: 1000, normal closure.
                    member.conn.start_close(1000, &mut |_| {});
                }
            }
            break;
        }
        pool.poll(
            TICK_MAX,
            |_, view, event, at| rx.on_event(view.state, event, at),
            |member| after_events(member, subscribe, &mut ended),
        );
    }
    shared.connected_workers.fetch_add(1, Ordering::AcqRel);
    rx.waiting = pool.members_mut().filter(|m| !m.state.finished).count();
    loop {
        if rx.waiting == 0 {
            break;
        }
        let deadline = shared.drain_deadline_ns.load(Ordering::Acquire);
        if deadline != 0 && now_ns() >= deadline {
            tally.drain_timed_out = true;
            break;
        }
        pool.poll(
            TICK_MAX,
            |_, view, event, at| rx.on_event(view.state, event, at),
            |member| after_events(member, subscribe, &mut ended),
        );
    }
    pool.close_all();
    for sub in pool.into_states() {
        ended.add(&sub.seen);
    }
    tally.seen = ended;
    tally.latency_us = rx.latency_us;
    tally.last_delivery = rx.last_delivery;
    tally.dropped = rx.dropped;
    tally.pusher = rx.pusher;
    tally
}

/// What the publisher did.
#[derive(Debug, Default)]
struct Sent {
    sent: u64,
    /// HTTP: requests sent again after a server closed their connection unanswered.
    resent: u64,
    /// HTTP: connections the publisher opened.
    connections: u64,
    accepted: u64,
    rejected: BTreeMap<u16, u64>,
    first_send: Option<Instant>,
    last_send: Option<Instant>,
    error: Option<String>,
}

/// The publisher: a WebSocket connection from its own pool, or an HTTP connection.
enum Publisher {
    Ws(Pool<()>),
    Http(HttpPublisher),
    Failed(String),
}

impl Publisher {
    fn connect(args: &FanoutArgs, target: &Target, mut pool: Pool<()>) -> Self {
        match args.publish {
            Publish::Ws => {
                let tally = pool.connect_all(
                    [args.subscribers],
                    1,
                    Duration::from_millis(args.handshake_timeout_ms),
                    Instant::now() + CONNECT_TIMEOUT,
                    |_| (),
                );
                if tally.opened == 1 {
                    Self::Ws(pool)
                } else {
                    Self::Failed(format!(
                        "publisher WebSocket did not connect{}",
                        reasons(&tally.failed)
                    ))
                }
            }
            Publish::Http => match HttpPublisher::connect(args, target) {
                Ok(p) => Self::Http(p),
                Err(e) => Self::Failed(format!("publisher HTTP connection: {e}")),
            },
        }
    }

    fn run(&mut self, args: &FanoutArgs) -> Sent {
        let mut sent = Sent::default();
        let result = match self {
            Self::Ws(pool) => publish_ws(pool, args, &mut sent),
            Self::Http(http) => http.publish(args, &mut sent),
            Self::Failed(error) => Err(error.clone()),
        };
        if let Err(error) = result {
            sent.error = Some(error);
        }
        sent
    }
}

/// When message `seq` is due at `rate` per second from `start` (`None`: flat out, due now).
fn due(start: Instant, seq: u64, rate: u32) -> Option<Instant> {
    (rate > 0).then(|| start + Duration::from_secs_f64(seq as f64 / f64::from(rate)))
}

fn publish_ws(pool: &mut Pool<()>, args: &FanoutArgs, sent: &mut Sent) -> Result<(), String> {
    let messages = u64::from(args.messages);
    let bytes = args.bytes as usize;
    let mut payload = Vec::with_capacity(bytes);
    let start = Instant::now();
    let mut progress_at = start;
    let mut unsent_before = 0;
    loop {
        let now = Instant::now();
        let Some(member) = pool.members_mut().next() else {
            return Err(format!(
                "publisher connection ended after {} messages",
                sent.sent
            ));
        };
        let conn = &mut member.conn;
        if conn.state() != ConnState::Open {
            return Err(format!(
                "publisher connection closing after {} messages",
                sent.sent
            ));
        }
        let mut wait = TICK_MAX;
        while sent.sent < messages && conn.unsent_bytes() < PUBLISH_QUEUE_BYTES_MAX {
            if let Some(due) = due(start, sent.sent, args.rate)
                && due > now
            {
                wait = wait.min(due - now);
                break;
            }
            payload::encode(sent.sent, now_ns(), bytes, &mut payload);
            conn.queue_frame(Opcode::Text, &payload);
            sent.first_send.get_or_insert(now);
            sent.sent += 1;
        }
        conn.flush_queued()
            .map_err(|e| format!("publisher send failed after {} messages: {e}", sent.sent))?;
        let unsent = conn.unsent_bytes();
        if sent.sent == messages && unsent == 0 {
            sent.last_send = Some(Instant::now());
            sent.accepted = sent.sent;
            return Ok(());
        }
        if unsent != unsent_before || unsent == 0 {
            progress_at = now;
        }
        unsent_before = unsent;
        if now >= progress_at + PUBLISH_STALL_TIMEOUT {
            return Err(format!(
                "publisher stalled for {PUBLISH_STALL_TIMEOUT:?} with {unsent} bytes unsent"
            ));
        }
        if unsent == 0 && sent.sent < messages && args.rate == 0 {
            wait = Duration::ZERO;
        }
        pool.poll(wait, |_, _, _, _| {}, |_| {});
    }
}

/// What the HTTP publisher sends for each message.
enum RequestKind {
    /// `POST /topics/NAME` with a bearer token; the head (up to and including the blank line) is
    /// the same for every message, and the payload is the body.
    Topic { head: Vec<u8> },
    /// Signed `POST /apps/ID/events` triggering `bench` on `channel`, the payload as `data`; the
    /// query (timestamp, body MD5, signature) differs per message.
    Pusher {
        app: PusherApp,
        host_header: String,
        channel: String,
    },
}

/// Seconds since the Unix epoch, for `auth_timestamp` (0 if the clock is before 1970).
fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A pipelining HTTP/1.1 publisher: `--pipeline` requests in flight on one keep-alive
/// connection. A server that answers with `Connection: close` gets one request per connection
/// instead, on up to `--pipeline` connections at once, and the requests pipelined behind the
/// closing response are sent again on new connections: RFC 9112 §9.6, a server that sends
/// `close` "MUST NOT process any further requests received on that connection". Sockudo closes
/// every HTTP API connection this way.
struct HttpPublisher {
    addr: std::net::SocketAddr,
    connect_timeout: Duration,
    request: RequestKind,
    conns: Vec<HttpConn>,
    /// Requests that a closing connection left unanswered, oldest first: sent before new ones.
    resend: VecDeque<Vec<u8>>,
    /// Most requests on one connection: `--pipeline` until a server closes a connection after a
    /// response, then 1.
    per_conn_max: u32,
    /// Most connections open at once: `--pipeline`.
    conns_max: usize,
}

/// One publisher connection.
struct HttpConn {
    stream: TcpStream,
    out: Vec<u8>,
    /// INVARIANT: `out_sent_bytes <= out.len()`.
    out_sent_bytes: usize,
    input: Vec<u8>,
    /// Requests sent (or queued) and not answered yet, oldest first, kept for a resend.
    pending: VecDeque<Vec<u8>>,
    /// The server answered `Connection: close`: nothing more goes on this connection.
    closing: bool,
}

impl HttpPublisher {
    fn connect(args: &FanoutArgs, target: &Target) -> io::Result<Self> {
        let request = match args.protocol {
            Protocol::Raw => RequestKind::Topic {
                head: format!(
                    "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
                     Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    target.url.path,
                    target.url.host_header(),
                    args.token,
                    args.bytes
                )
                .into_bytes(),
            },
            Protocol::Pusher => RequestKind::Pusher {
                app: PusherApp {
                    id: args.app_id.clone(),
                    key: args.app_key.clone(),
                    secret: args.app_secret.clone(),
                },
                host_header: target.url.host_header(),
                channel: args.topic.clone(),
            },
        };
        let mut publisher = Self {
            addr: target.addr,
            connect_timeout: Duration::from_millis(args.handshake_timeout_ms),
            request,
            conns: Vec::new(),
            resend: VecDeque::new(),
            per_conn_max: args.pipeline,
            conns_max: args.pipeline as usize,
        };
        // The first connection now, so that a server that is not there fails before publishing.
        let conn = publisher.open()?;
        publisher.conns.push(conn);
        Ok(publisher)
    }

    fn open(&self) -> io::Result<HttpConn> {
        let stream = TcpStream::connect_timeout(&self.addr, self.connect_timeout)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(HttpConn {
            stream,
            out: Vec::new(),
            out_sent_bytes: 0,
            input: Vec::new(),
            pending: VecDeque::new(),
            closing: false,
        })
    }

    fn in_flight(&self) -> usize {
        self.resend.len() + self.conns.iter().map(|c| c.pending.len()).sum::<usize>()
    }

    /// The first connection with room for one more request.
    fn room(&self) -> Option<usize> {
        self.conns
            .iter()
            .position(|c| !c.closing && (c.pending.len() as u32) < self.per_conn_max)
    }

    /// A connection with room for one more request, opened if needed (`None`: all full).
    fn conn_with_room(&mut self, sent: &mut Sent) -> io::Result<Option<usize>> {
        if let Some(index) = self.room() {
            return Ok(Some(index));
        }
        if self.conns.len() >= self.conns_max {
            return Ok(None);
        }
        let conn = self.open()?;
        sent.connections += 1;
        self.conns.push(conn);
        Ok(Some(self.conns.len() - 1))
    }

    fn publish(&mut self, args: &FanoutArgs, sent: &mut Sent) -> Result<(), String> {
        let messages = u64::from(args.messages);
        let bytes = args.bytes as usize;
        let mut payload = Vec::with_capacity(bytes);
        let mut request = Vec::new();
        let start = Instant::now();
        let mut progress_at = start;
        sent.connections = 1;
        loop {
            let now = Instant::now();
            let now_s = unix_now_s();
            let mut wait = TICK_MAX;
            while self.in_flight() < args.pipeline as usize
                && (!self.resend.is_empty() || sent.sent < messages)
            {
                if self.resend.is_empty()
                    && let Some(due) = due(start, sent.sent, args.rate)
                    && due > now
                {
                    wait = wait.min(due - now);
                    break;
                }
                let Some(index) = self
                    .conn_with_room(sent)
                    .map_err(|e| self.error("connect", sent, &e))?
                else {
                    break;
                };
                if let Some(again) = self.resend.pop_front() {
                    request = again;
                    sent.resent += 1;
                } else {
                    payload::encode(sent.sent, now_ns(), bytes, &mut payload);
                    request.clear();
                    self.write_request(&payload, now_s, &mut request);
                    sent.first_send.get_or_insert(now);
                    sent.sent += 1;
                }
                let conn = &mut self.conns[index];
                conn.out.extend_from_slice(&request);
                conn.pending.push_back(std::mem::take(&mut request));
            }
            let mut written = 0;
            let mut answered = 0;
            for index in 0..self.conns.len() {
                written += self.conns[index]
                    .flush()
                    .map_err(|e| self.error("send", sent, &e))?;
                let (n, closes) = self.conns[index]
                    .read(sent)
                    .map_err(|e| self.error("receive", sent, &e))?;
                answered += n;
                if closes {
                    self.per_conn_max = 1;
                }
            }
            // Connections the server is closing: their unanswered requests go again.
            let mut index = 0;
            while index < self.conns.len() {
                if self.conns[index].closing {
                    let conn = self.conns.swap_remove(index);
                    self.resend.extend(conn.pending);
                } else {
                    index += 1;
                }
            }
            if answered > 0 {
                sent.last_send = Some(Instant::now());
            }
            if sent.sent == messages && self.in_flight() == 0 {
                return Ok(());
            }
            if answered > 0 || written > 0 {
                progress_at = now;
            }
            if now >= progress_at + PUBLISH_STALL_TIMEOUT {
                return Err(format!(
                    "publisher stalled for {PUBLISH_STALL_TIMEOUT:?} with {} requests unanswered",
                    self.in_flight()
                ));
            }
            // Requests to send again go out at once where there is room for them.
            let resend_now = !self.resend.is_empty()
                && (self.room().is_some() || self.conns.len() < self.conns_max);
            self.wait(if resend_now { Duration::ZERO } else { wait })?;
        }
    }

    /// Appends one request for `payload` to `out`.
    fn write_request(&self, payload: &[u8], now_s: u64, out: &mut Vec<u8>) {
        match &self.request {
            RequestKind::Topic { head } => {
                out.extend_from_slice(head);
                out.extend_from_slice(payload);
            }
            RequestKind::Pusher {
                app,
                host_header,
                channel,
            } => {
                // A payload is ASCII (digits, then `x` padding), so always UTF-8.
                let data = std::str::from_utf8(payload).unwrap_or_default();
                pusher::write_events_request(app, host_header, channel, data, now_s, out);
            }
        }
    }

    /// Waits up to `timeout` for any connection to become readable (or writable, with bytes
    /// left to send).
    fn wait(&self, timeout: Duration) -> Result<(), String> {
        let mut fds: Vec<PollFd<'_>> = self
            .conns
            .iter()
            .map(|c| {
                let mut flags = PollFlags::IN;
                if c.out_sent_bytes < c.out.len() {
                    flags |= PollFlags::OUT;
                }
                PollFd::new(&c.stream, flags)
            })
            .collect();
        let timespec = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        match rustix::event::poll(&mut fds, Some(&timespec)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(format!("poll failed: {e}")),
        }
    }

    fn error(&self, what: &str, sent: &Sent, e: &io::Error) -> String {
        format!(
            "publisher {what} failed after {} requests ({} unanswered): {e}",
            sent.sent,
            self.in_flight()
        )
    }
}

impl HttpConn {
    /// Sends queued bytes until done or the socket would block; returns how many went out.
    fn flush(&mut self) -> io::Result<usize> {
        let mut written = 0;
        while self.out_sent_bytes < self.out.len() {
            match self.stream.write(&self.out[self.out_sent_bytes..]) {
                Ok(n) => {
                    self.out_sent_bytes += n;
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_sent_bytes = 0;
        Ok(written)
    }

    /// Reads and parses whatever responses have arrived; returns how many completed and whether
    /// one of them closes the connection.
    fn read(&mut self, sent: &mut Sent) -> io::Result<(u32, bool)> {
        if self.closing {
            return Ok((0, false));
        }
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    let answered = self.parse(sent)?;
                    if !self.closing && !self.pending.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "server closed the connection",
                        ));
                    }
                    return Ok((answered, self.closing));
                }
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let answered = self.parse(sent)?;
        Ok((answered, self.closing))
    }

    fn parse(&mut self, sent: &mut Sent) -> io::Result<u32> {
        let bad = |text: String| io::Error::new(io::ErrorKind::InvalidData, text);
        let mut at = 0;
        let mut answered = 0;
        while !self.closing {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let head_bytes = match response.parse(&self.input[at..]) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => break,
                Err(e) => return Err(bad(format!("malformed HTTP response: {e}"))),
            };
            let mut body_bytes = 0usize;
            let mut close = false;
            for h in response.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    body_bytes = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or_else(|| bad("bad Content-Length".to_owned()))?;
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(bad("chunked responses are not supported".to_owned()));
                } else if h.name.eq_ignore_ascii_case("connection") {
                    // RFC 9110 §7.6.1: a comma-separated list of options.
                    close = String::from_utf8_lossy(h.value)
                        .split(',')
                        .any(|o| o.trim().eq_ignore_ascii_case("close"));
                }
            }
            if head_bytes + body_bytes > RESPONSE_BYTES_MAX {
                return Err(bad(format!(
                    "response of {} bytes over {RESPONSE_BYTES_MAX}",
                    head_bytes + body_bytes
                )));
            }
            if self.input.len() - at < head_bytes + body_bytes {
                break;
            }
            let code = response.code.unwrap_or(0);
            at += head_bytes + body_bytes;
            if self.pending.pop_front().is_none() {
                return Err(bad(format!("unrequested response (status {code})")));
            }
            answered += 1;
            if (200..300).contains(&code) {
                sent.accepted += 1;
            } else {
                *sent.rejected.entry(code).or_default() += 1;
            }
            self.closing = close;
        }
        self.input.drain(..at);
        if self.input.len() > RESPONSE_BYTES_MAX {
            return Err(bad(format!(
                "response head over {RESPONSE_BYTES_MAX} bytes"
            )));
        }
        Ok(answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::test_server;

    fn args(publish: Publish) -> FanoutArgs {
        let addr = test_server::spawn("t");
        let mut args = FanoutArgs::new(format!("ws://{addr}"));
        args.subscribers = 20;
        args.messages = 100;
        args.publish = publish;
        args.token = "t".to_owned();
        args.drain_timeout_s = 5;
        args
    }

    fn assert_exact(report: &FanoutReport) {
        assert!(report.is_complete(), "{}", report.to_text());
        assert_eq!(report.subscribed, 20);
        assert_eq!(report.expected, 2000);
        assert_eq!(report.received, 2000, "{}", report.to_text());
        assert_eq!(report.lost, 0);
        assert_eq!(report.duplicates, 0);
        assert_eq!(report.malformed, 0);
        assert_eq!(report.latency_us.count, 2000);
        assert!(report.deliveries_per_s > 0.0);
        assert!(!report.drain_timed_out);
    }

    #[test]
    fn ws_publish_reaches_twenty_subscribers_with_no_loss_or_duplicates() {
        let mut args = args(Publish::Ws);
        args.server_pid = Some(std::process::id());
        let report = run_fanout(&args).unwrap();
        assert_exact(&report);
        assert_eq!(report.published, 100);
        assert!(report.server_cpu.is_some() && report.server_ns_per_delivery.is_some());
        assert!(report.client_cpu.is_some());
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["lost"], 0);
        assert_eq!(json["subscribe_failures"]["refused"], 0);
        assert_eq!(json["publish"], "ws");
        assert!(json["latency_us"]["p999"].is_u64());
    }

    #[test]
    fn pipelined_http_publish_is_accepted_and_delivered_exactly() {
        let mut args = args(Publish::Http);
        args.pipeline = 8;
        let report = run_fanout(&args).unwrap();
        assert_exact(&report);
        assert_eq!(report.publish_accepted, 100);
        assert!(report.publish_rejected.is_empty());
        assert_eq!(report.publish_connections, 1);
        assert_eq!(report.publish_resent, 0);
        assert!(report.server_cpu.is_none());
    }

    #[test]
    fn wrong_token_counts_rejections_and_every_delivery_as_lost() {
        let mut args = args(Publish::Http);
        args.token = "wrong".to_owned();
        args.messages = 10;
        args.drain_timeout_s = 1;
        let report = run_fanout(&args).unwrap();
        assert!(!report.is_complete());
        assert_eq!(report.publish_rejected.get(&401), Some(&10));
        assert_eq!(report.lost, 200);
        assert!(report.drain_timed_out);
        assert!(report.to_text().contains("status 401: 10"));
    }

    #[test]
    fn dropped_and_duplicated_deliveries_are_counted_exactly() {
        let addr = test_server::spawn_with_faults(
            "t",
            test_server::Faults {
                drop_every: Some(10),
                duplicate_to_first: true,
                ..test_server::Faults::default()
            },
        );
        let mut args = FanoutArgs::new(format!("ws://{addr}"));
        args.subscribers = 20;
        args.messages = 100;
        args.publish = Publish::Http;
        args.token = "t".to_owned();
        args.drain_timeout_s = 1;
        let report = run_fanout(&args).unwrap();
        // Publishes 0, 10, ..., 90 reach nobody; the first subscriber gets the other 90 twice.
        assert_eq!(report.lost, 10 * 20, "{}", report.to_text());
        assert_eq!(report.received, 90 * 20);
        assert_eq!(report.duplicates, 90);
        assert_eq!(report.out_of_order, 0);
        assert!(report.drain_timed_out);
        assert!(
            report.is_complete(),
            "loss is a measurement, not a failed run"
        );
    }

    #[test]
    fn paced_publish_takes_messages_over_rate_seconds() {
        let mut args = args(Publish::Ws);
        args.rate = 500;
        let report = run_fanout(&args).unwrap();
        assert_exact(&report);
        // 100 messages at 500/s: the last is due 198 ms after the first.
        assert!(report.publish_us >= 190_000, "{}", report.publish_us);
    }

    #[test]
    fn nothing_listening_fails_every_subscriber_and_the_publisher() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut args = FanoutArgs::new(format!("ws://{addr}"));
        args.subscribers = 3;
        args.messages = 5;
        args.drain_timeout_s = 0;
        let report = run_fanout(&args).unwrap();
        assert_eq!(report.subscribe_failures.refused, 3);
        assert_eq!(report.lost, 15);
        assert!(report.publisher_error.is_some());
        assert!(!report.is_complete());
    }

    fn pusher_args(addr: std::net::SocketAddr) -> FanoutArgs {
        let mut args = FanoutArgs::new(format!("ws://{addr}"));
        args.subscribers = 20;
        args.messages = 100;
        args.protocol = Protocol::Pusher;
        args.publish = Publish::Http;
        args.pipeline = 8;
        args.drain_timeout_s = 5;
        args
    }

    #[test]
    fn pusher_subscribers_get_every_signed_api_event_exactly_and_answer_pings() {
        let (addr, server) = test_server::spawn_observed("t", test_server::Faults::default());
        let report = run_fanout(&pusher_args(addr)).unwrap();
        assert_exact(&report);
        assert_eq!(report.publish_accepted, 100);
        assert!(
            report
                .url
                .ends_with("/app/app-key?protocol=7&client=ringcast-bench&version=1")
        );
        let pusher = report.pusher.as_ref().unwrap();
        assert_eq!(pusher.established, 20);
        assert_eq!(pusher.subscribed, 20);
        assert_eq!(pusher.pings_answered, 20);
        assert_eq!(pusher.other_events, 0);
        assert!(pusher.errors.is_empty() && pusher.close_codes.is_empty());
        // The pongs went out before the subscribers closed; give the server threads a moment.
        assert!(wait_until(Instant::now() + Duration::from_secs(5), || {
            server.pongs() == 20
        }));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["protocol"], "pusher");
        assert_eq!(json["pusher"]["subscribed"], 20);
        assert!(
            report
                .to_text()
                .contains("pusher          established 20, subscribed 20")
        );
    }

    #[test]
    fn a_server_that_closes_after_each_response_gets_every_request_once_on_new_connections() {
        for protocol in [Protocol::Raw, Protocol::Pusher] {
            let faults = test_server::Faults {
                close_http_after_response: true,
                ..test_server::Faults::default()
            };
            let addr = test_server::spawn_with_faults("t", faults);
            let mut args = pusher_args(addr);
            args.protocol = protocol;
            args.token = "t".to_owned();
            let report = run_fanout(&args).unwrap();
            assert_exact(&report);
            assert_eq!(report.publish_accepted, 100);
            assert_eq!(report.publish_connections, 100, "{}", report.to_text());
            // The first connection had 8 pipelined; 7 went again on new connections.
            assert_eq!(report.publish_resent, 7);
            assert!(
                report
                    .to_text()
                    .contains("100 connections, 7 requests sent again")
            );
        }
    }

    #[test]
    fn pusher_wrong_secret_counts_401s_and_every_delivery_as_lost() {
        let addr = test_server::spawn("t");
        let mut args = pusher_args(addr);
        args.app_secret = "wrong".to_owned();
        args.messages = 10;
        args.drain_timeout_s = 1;
        let report = run_fanout(&args).unwrap();
        assert_eq!(report.subscribed, 20);
        assert_eq!(report.publish_rejected.get(&401), Some(&10));
        assert_eq!(report.lost, 200);
    }

    #[test]
    fn pusher_unknown_key_fails_every_subscription_with_its_error_and_close_code() {
        let addr = test_server::spawn("t");
        let mut args = pusher_args(addr);
        args.app_key = "nope".to_owned();
        args.messages = 5;
        args.drain_timeout_s = 0;
        let report = run_fanout(&args).unwrap();
        assert!(!report.is_complete());
        assert_eq!(report.subscribed, 0);
        assert_eq!(report.subscribe_failed, 20, "{}", report.to_text());
        assert_eq!(report.subscribers_dropped, 0);
        let pusher = report.pusher.as_ref().unwrap();
        assert_eq!(pusher.errors.get(&4001), Some(&20));
        assert_eq!(pusher.close_codes.get(&4001), Some(&20));
        assert_eq!(pusher.ended_before_subscribed, 20);
        assert_eq!(report.lost, 100);
        let text = report.to_text();
        assert!(text.contains("pusher:error code 4001: 20"), "{text}");
        assert!(text.contains("close code 4001: 20"), "{text}");
    }

    #[test]
    fn impossible_flags_are_rejected() {
        let base = FanoutArgs::new("ws://127.0.0.1:1");
        let reject = |change: &dyn Fn(&mut FanoutArgs), flag: &str| {
            let mut args = base.clone();
            change(&mut args);
            match run_fanout(&args) {
                Err(BenchError::InvalidArgument { name, .. }) => assert_eq!(name, flag),
                other => panic!("{flag}: {other:?}"),
            }
        };
        reject(&|a| a.bytes = 39, "bytes");
        reject(&|a| a.subscribers = 0, "subscribers");
        reject(&|a| a.messages = 0, "messages");
        reject(&|a| a.workers = 0, "workers");
        reject(&|a| a.topic = "a/b".to_owned(), "topic");
        reject(
            &|a| {
                a.publish = Publish::Http;
                a.pipeline = 0
            },
            "pipeline",
        );
        reject(&|a| a.subscribers = 19_000, "subscribers");
        let pusher = |a: &mut FanoutArgs| {
            a.protocol = Protocol::Pusher;
            a.publish = Publish::Http;
        };
        reject(&|a| a.protocol = Protocol::Pusher, "publish");
        reject(
            &|a| {
                pusher(a);
                a.topic = "private-bench".to_owned()
            },
            "channel",
        );
        reject(
            &|a| {
                pusher(a);
                a.topic = "a/b".to_owned()
            },
            "channel",
        );
        reject(
            &|a| {
                pusher(a);
                a.app_id = "a b".to_owned()
            },
            "app-id",
        );
        reject(
            &|a| {
                pusher(a);
                a.app_key = String::new()
            },
            "app-key",
        );
        reject(
            &|a| {
                pusher(a);
                a.app_secret = String::new()
            },
            "app-secret",
        );
        reject(
            &|a| {
                a.subscribers = 10_000;
                a.messages = 1 << 20
            },
            "messages",
        );
        let mut args = base.clone();
        args.bytes = 39;
        let text = run_fanout(&args).unwrap_err().to_string();
        assert!(text.contains("20-digit send timestamp"), "{text}");
    }
}
