//! Topic fan-out, end to end, on both drivers (`--io uring` and `--io epoll`): a WebSocket or an
//! HTTP publisher reaches thousands of subscribers spread over two shards, each exactly once and
//! in order; a subscriber that stops reading is closed with 1008 while the others keep up; HTTP
//! publish errors (401, 403, 413, 400, 405) leave the server serving; a subscriber that publishes
//! without `--allow-client-publish` is closed with 1008 alone; a full shard-to-shard ring answers
//! 503 with Retry-After and loses nothing it acknowledged; `/metrics` agrees with `/stats`.
//!
//! Each test exists once per driver (`<test>::uring`, `<test>::epoll`). Where the kernel has no
//! io_uring (`--io uring` exits 69) the uring variant skips with a message, or fails when
//! `RINGCAST_CI` is set (STYLE.md §6). Everything runs on 127.0.0.1 with port 0, under a timeout.
//!
//! The thousands of subscribers are lean raw sockets (a tokio `TcpStream` and the small frame
//! parser below), not tungstenite streams; the WebSocket publisher is tokio-tungstenite.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::driver::{Driver, Ringcast, admin_get, on_both_drivers, total};
use common::within;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// Harness: common::driver starts the server with a given driver; fan-out's own helpers
// ---------------------------------------------------------------------------------------------

/// The bearer token of every server that accepts HTTP publishes here.
const TOKEN: &str = "fan-out-s3cret";
/// Deadline of one read that expects something from the server.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long interest changes get to cross the mesh after /stats shows the subscribers.
const INTEREST_SETTLE: Duration = Duration::from_millis(250);

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;

on_both_drivers!(
    websocket_publisher_reaches_2000_subscribers,
    http_publisher_reaches_2000_subscribers,
    slow_consumer_is_closed_alone,
    stalled_stream_stays_well_formed,
    http_publish_errors,
    client_publish_disabled,
    mesh_ring_full,
    metrics_match_stats,
    // Was a server bug: a burst over --max-outbound-bytes within one loop turn closed readers
    // that keep up; readers are now judged when their sends are flushed.
    burst_closes_fast_readers,
);

/// A publishing server (`--publish-token TOKEN`) on `shards` shards whose connections may queue
/// at most 64 KiB (`--max-outbound-bytes 65536`); None if the driver is unavailable.
async fn start_with_64k_outbound(driver: Driver, shards: u32) -> Option<Ringcast> {
    let shards = shards.to_string();
    let args = [
        "--shards",
        shards.as_str(),
        "--publish-token",
        TOKEN,
        "--max-outbound-bytes",
        "65536",
    ];
    Ringcast::start(driver, &args).await
}

/// Fan-out's own uses of a server.
impl Ringcast {
    /// Waits until `/stats` counts exactly `n` open WebSockets, then gives the interest
    /// announcements time to cross the mesh (subscriptions are asynchronous across shards).
    async fn settle_websockets(&self, n: u64) -> serde_json::Value {
        let stats = self
            .stats_until(&format!("{n} WebSockets"), Duration::from_secs(10), |s| {
                total(s, "websockets") == n
            })
            .await;
        tokio::time::sleep(INTEREST_SETTLE).await;
        stats
    }

    async fn subscribe(&self, topic: &str) -> Sub {
        Sub::connect(self.addr, topic.to_string()).await
    }

    async fn http(&self) -> Http<TcpStream> {
        Http::connect(self.addr).await
    }
}

fn per_shard(stats: &serde_json::Value, key: &str) -> Vec<u64> {
    stats["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("/stats has no shards array: {stats}"))
        .iter()
        .map(|s| {
            s[key]
                .as_u64()
                .unwrap_or_else(|| panic!("/stats shard has no {key}: {stats}"))
        })
        .collect()
}

/// A short printable view of a payload for failure messages.
fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
    if bytes.len() > 40 {
        format!("{text:?}... ({} bytes)", bytes.len())
    } else {
        format!("{text:?}")
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Lean WebSocket subscribers: a socket, a buffer, and a frame parser
// ---------------------------------------------------------------------------------------------

/// RFC 6455 §1.3's key and the accept value derived from it.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// The mask key of every client frame here (any non-zero key works; RFC 6455 §5.3).
const MASK: [u8; 4] = [0x5a, 0x13, 0xc7, 0x81];

fn upgrade_request(topic: &str) -> String {
    format!(
        "GET /topics/{topic} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A masked, final client frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Why no frame came.
#[derive(Debug)]
enum Ended {
    /// The server closed TCP (EOF) on a frame boundary.
    Eof,
    /// A reset (or EOF inside a frame, with the bytes left over).
    Reset(String),
    Timeout,
    /// Bytes that are not a valid server frame.
    Garbage(String),
}

/// Parses one server frame from the front of `buf`: Ok(None) when it is incomplete.
fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 != 0 {
        return Err(format!("masked server frame, header {:02x?}", &buf[..2]));
    }
    if b0 & 0x70 != 0 {
        return Err(format!("RSV bits set, header {:02x?}", &buf[..2]));
    }
    let (len, header) = match b1 & 0x7f {
        126 if buf.len() < 4 => return Ok(None),
        126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() < 10 => return Ok(None),
        127 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10),
        n => (u64::from(n), 2),
    };
    if len > 16 << 20 {
        return Err(format!(
            "frame claims {len} bytes, header {:02x?}",
            &buf[..header]
        ));
    }
    let end = header + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            payload: buf[header..end].to_vec(),
        },
        end,
    )))
}

/// A raw subscriber: an upgraded socket and the bytes received but not parsed yet.
struct Sub {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Sub {
    /// Connects and subscribes to `topic` (101 and the accept value checked).
    async fn connect(addr: SocketAddr, topic: String) -> Sub {
        let stream = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Sub::upgrade(stream, &topic).await
    }

    /// Upgrades an already connected socket on `/topics/{topic}`.
    async fn upgrade(mut stream: TcpStream, topic: &str) -> Sub {
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .write_all(upgrade_request(topic).as_bytes())
            .await
            .expect("send upgrade request");
        let mut buf = Vec::with_capacity(4096);
        let head_end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk))
                .await
                .expect("upgrade answer timed out")
                .expect("read upgrade answer");
            assert!(
                n > 0,
                "server closed before answering the upgrade: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "upgrade on /topics/{topic} refused: {head:?}"
        );
        assert!(
            head.lines().any(|l| l
                .split_once(':')
                .is_some_and(|(k, v)| k.eq_ignore_ascii_case("sec-websocket-accept")
                    && v.trim() == WS_ACCEPT)),
            "wrong or missing Sec-WebSocket-Accept: {head:?}"
        );
        buf.drain(..head_end);
        Sub { stream, buf }
    }

    /// The next frame, waiting at most `limit` for more bytes.
    async fn frame(&mut self, limit: Duration) -> Result<Frame, Ended> {
        loop {
            match parse_frame(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(why) => return Err(Ended::Garbage(why)),
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(limit, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(Ended::Timeout),
                Ok(Ok(0)) if self.buf.is_empty() => return Err(Ended::Eof),
                Ok(Ok(0)) => {
                    return Err(Ended::Reset(format!(
                        "EOF inside a frame, {} bytes left: {:02x?}",
                        self.buf.len(),
                        &self.buf[..self.buf.len().min(16)]
                    )));
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(Ended::Reset(e.to_string())),
            }
        }
    }

    /// Reads `expected.len()` messages, which must be final `opcode` frames with exactly those
    /// payloads, in order; `progress` counts the ones received so far.
    async fn expect_stream(
        mut self,
        expected: Arc<Vec<Vec<u8>>>,
        opcode: u8,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<Sub, String> {
        for (i, want) in expected.iter().enumerate() {
            match self.frame(READ_TIMEOUT).await {
                Ok(f) if f.fin && f.opcode == opcode && f.payload == *want => {
                    if let Some(p) = &progress {
                        p.store(i as u64 + 1, Ordering::Relaxed);
                    }
                }
                Ok(f) => {
                    let why = format!(
                        "message #{i}: expected opcode {opcode:#x} {}, got fin={} opcode {:#x} {}",
                        show(want),
                        f.fin,
                        f.opcode,
                        show(&f.payload)
                    );
                    // Said at once: a publisher waiting on `progress` would otherwise hide it.
                    eprintln!("subscriber failed: {why}");
                    return Err(why);
                }
                Err(e) => {
                    let why = format!("message #{i} (expected {}): {e:?}", show(want));
                    eprintln!("subscriber failed: {why}");
                    return Err(why);
                }
            }
        }
        Ok(self)
    }

    /// Panics if anything was received beyond what was consumed, or the connection closed.
    /// Call after the server had time to send anything extra.
    fn assert_nothing_more(&mut self, who: &str) {
        assert!(
            self.buf.is_empty(),
            "{who} received extra bytes: {:02x?}",
            &self.buf[..self.buf.len().min(32)]
        );
        let mut probe = [0u8; 64];
        match self.stream.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(0) => panic!("{who}: the server closed the connection"),
            Ok(n) => panic!("{who} received extra bytes: {:02x?}", &probe[..n]),
            Err(e) => panic!("{who}: {e}"),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write frame");
    }
}

/// Opens `n` subscribers of `topic`, 100 at a time.
async fn subscribe_many(addr: SocketAddr, topic: &str, n: usize) -> Vec<Sub> {
    let mut subs = Vec::with_capacity(n);
    while subs.len() < n {
        let batch = (n - subs.len()).min(100);
        let mut set = JoinSet::new();
        for _ in 0..batch {
            set.spawn(Sub::connect(addr, topic.to_string()));
        }
        while let Some(sub) = set.join_next().await {
            subs.push(sub.expect("subscriber connect task"));
        }
    }
    subs
}

/// Starts every subscriber reading `expected` (see [`Sub::expect_stream`]).
fn expect_all(
    subs: Vec<Sub>,
    expected: &Arc<Vec<Vec<u8>>>,
    opcode: u8,
) -> JoinSet<Result<Sub, String>> {
    let mut set = JoinSet::new();
    for sub in subs {
        set.spawn(sub.expect_stream(Arc::clone(expected), opcode, None));
    }
    set
}

/// Waits for every reader; panics listing the first failures. Returns the subscribers.
async fn join_readers(mut set: JoinSet<Result<Sub, String>>) -> Vec<Sub> {
    let mut subs = Vec::new();
    let mut failures = Vec::new();
    while let Some(result) = set.join_next().await {
        match result.expect("reader task") {
            Ok(sub) => subs.push(sub),
            Err(why) => failures.push(why),
        }
    }
    if !failures.is_empty() {
        let n = failures.len();
        failures.truncate(5);
        panic!(
            "{n} of {} subscribers did not get exactly the published messages in order; \
             first failures:\n{}",
            n + subs.len(),
            failures.join("\n")
        );
    }
    subs
}

/// After the readers are done: nothing else arrives at any of them.
async fn assert_all_quiet(subs: &mut [Sub]) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, sub) in subs.iter_mut().enumerate() {
        sub.assert_nothing_more(&format!("subscriber {i}"));
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client: keep-alive, pipelining
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `POST /topics/{topic}` with `body`, and a bearer token if given.
fn post(topic: &str, token: Option<&str>, body: &[u8]) -> Vec<u8> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut out = format!(
        "POST /topics/{topic} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// One HTTP/1.1 connection (or its read half) with a read buffer.
struct Http<S> {
    io: S,
    buf: Vec<u8>,
}

impl Http<TcpStream> {
    async fn connect(addr: SocketAddr) -> Http<TcpStream> {
        let io = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        io.set_nodelay(true).expect("TCP_NODELAY");
        Http {
            io,
            buf: Vec::new(),
        }
    }

    /// Sends one request and reads its response.
    async fn exchange(&mut self, request: &[u8]) -> Response {
        self.send(request).await;
        self.response().await
    }
}

impl<S: AsyncWrite + Unpin> Http<S> {
    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write request");
    }
}

impl<S: AsyncRead + Unpin> Http<S> {
    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(READ_TIMEOUT, self.io.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no HTTP response within {READ_TIMEOUT:?} (buffered {:?})",
                    String::from_utf8_lossy(&self.buf)
                )
            })
            .expect("read response");
        assert!(
            n > 0,
            "server closed the HTTP connection (buffered {:?})",
            String::from_utf8_lossy(&self.buf)
        );
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Reads one response: head and `Content-Length` body.
    async fn response(&mut self) -> Response {
        let head_end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("UTF-8 head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        assert!(
            status_line.starts_with("HTTP/1.1 "),
            "status line {status_line:?}"
        );
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap_or_else(|| panic!("header {l:?}"));
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().expect("numeric Content-Length"));
        while self.buf.len() < head_end + len {
            self.fill().await;
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Response {
            status,
            headers,
            body,
        }
    }
}

/// Sends `bodies` as POSTs on one keep-alive connection, `depth` requests per write, reading
/// each group's responses before the next; every answer must be 202 `{"ok":true}`.
/// `before_group(sent)` runs before each group (flow control).
async fn post_pipelined<F, Fut>(
    http: &mut Http<TcpStream>,
    topic: &str,
    bodies: &[Vec<u8>],
    depth: usize,
    mut before_group: F,
) where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for (g, group) in bodies.chunks(depth).enumerate() {
        before_group(g * depth).await;
        let mut wire = Vec::new();
        for body in group {
            wire.extend_from_slice(&post(topic, Some(TOKEN), body));
        }
        http.send(&wire).await;
        for i in 0..group.len() {
            let r = http.response().await;
            assert_eq!(
                (r.status, r.body_text().as_str()),
                (202, "{\"ok\":true}"),
                "POST #{} of {}: {r:?}",
                g * depth + i,
                bodies.len()
            );
        }
    }
}

fn seq_payloads(n: usize) -> Arc<Vec<Vec<u8>>> {
    Arc::new((0..n).map(|i| i.to_string().into_bytes()).collect())
}

/// Checks that both shards hold some of the subscribers.
fn assert_both_shards_hold_some(stats: &serde_json::Value) {
    let ws = per_shard(stats, "websockets");
    assert_eq!(ws.len(), 2, "two shards: {stats}");
    assert!(
        ws.iter().all(|&n| n > 0),
        "both shards hold subscribers (per shard {ws:?}): {stats}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. A WebSocket publisher reaches 2,000 subscribers on two shards
// ---------------------------------------------------------------------------------------------

const SUBSCRIBERS: usize = 2000;
const MESSAGES: usize = 1000;

async fn websocket_publisher_reaches_2000_subscribers(driver: Driver) {
    within(Duration::from_secs(90), async {
        let Some(server) =
            Ringcast::start(driver, &["--shards", "2", "--allow-client-publish"]).await
        else {
            return;
        };
        let topic = "fanout.ws";
        let started = Instant::now();
        let subs = subscribe_many(server.addr, topic, SUBSCRIBERS).await;
        let url = format!("ws://{}/topics/{topic}", server.addr);
        let (mut publisher, response) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("publisher connects");
        assert_eq!(response.status(), 101);
        let stats = server.settle_websockets(SUBSCRIBERS as u64 + 1).await;
        assert_both_shards_hold_some(&stats);
        let connected = started.elapsed();

        let expected = seq_payloads(MESSAGES);
        let readers = expect_all(subs, &expected, OP_TEXT);
        for i in 0..MESSAGES {
            publisher
                .feed(Message::text(i.to_string()))
                .await
                .expect("publish");
        }
        publisher.flush().await.expect("flush publisher");
        let mut subs = join_readers(readers).await;
        let delivered = started.elapsed() - connected;
        assert_all_quiet(&mut subs).await;
        // The publisher is subscribed too but never gets its own messages back.
        match tokio::time::timeout(Duration::from_millis(300), publisher.next()).await {
            Err(_) => {}
            Ok(m) => panic!("the publisher received {m:?}"),
        }
        let stats = server.stats().await;
        assert_eq!(
            total(&stats, "deliveries"),
            (SUBSCRIBERS * MESSAGES) as u64,
            "one delivery per subscriber per message: {stats}"
        );
        assert_eq!(total(&stats, "publishes"), MESSAGES as u64, "{stats}");
        assert_eq!(total(&stats, "mesh_full"), 0, "{stats}");
        eprintln!(
            "{driver:?}: {SUBSCRIBERS} subscribers connected in {connected:?}, \
             {MESSAGES} messages delivered to all in {delivered:?} (per shard {:?})",
            per_shard(&stats, "websockets")
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 2. An HTTP publisher (keep-alive, pipelined 32 deep) reaches 2,000 subscribers
// ---------------------------------------------------------------------------------------------

async fn http_publisher_reaches_2000_subscribers(driver: Driver) {
    within(Duration::from_secs(90), async {
        let Some(server) =
            Ringcast::start(driver, &["--shards", "2", "--publish-token", TOKEN]).await
        else {
            return;
        };
        let topic = "fanout.http";
        let started = Instant::now();
        let subs = subscribe_many(server.addr, topic, SUBSCRIBERS).await;
        let stats = server.settle_websockets(SUBSCRIBERS as u64).await;
        assert_both_shards_hold_some(&stats);
        let connected = started.elapsed();

        let expected = seq_payloads(MESSAGES);
        let readers = expect_all(subs, &expected, OP_TEXT);
        let mut http = server.http().await;
        post_pipelined(&mut http, topic, &expected, 32, |_| async {}).await;
        let mut subs = join_readers(readers).await;
        let delivered = started.elapsed() - connected;
        assert_all_quiet(&mut subs).await;

        // The connection is still usable after 1,000 pipelined requests.
        let r = http
            .exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let stats = server.stats().await;
        assert_eq!(total(&stats, "http_publishes"), MESSAGES as u64, "{stats}");
        assert_eq!(total(&stats, "publishes"), MESSAGES as u64, "{stats}");
        assert_eq!(
            total(&stats, "deliveries"),
            (SUBSCRIBERS * MESSAGES) as u64,
            "{stats}"
        );
        eprintln!(
            "{driver:?}: {SUBSCRIBERS} subscribers connected in {connected:?}, \
             {MESSAGES} HTTP publishes delivered to all in {delivered:?}"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3. A subscriber that stops reading is closed with 1008; the others get everything
// ---------------------------------------------------------------------------------------------

/// A 1 KiB payload that starts with the sequence number.
fn kib_payload(i: usize) -> Vec<u8> {
    let mut p = format!("{i:08}:").into_bytes();
    p.resize(1024, b'.');
    p
}

/// A socket with a tiny receive buffer, so the server's sends stall almost at once.
async fn stalled_socket(addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(1024).expect("SO_RCVBUF");
    let std_stream: std::net::TcpStream =
        tokio::task::spawn_blocking(move || socket.connect(&addr.into()).map(|()| socket.into()))
            .await
            .expect("connect task")
            .expect("connect");
    std_stream.set_nonblocking(true).expect("nonblocking");
    TcpStream::from_std(std_stream).expect("tokio stream")
}

async fn slow_consumer_is_closed_alone(driver: Driver) {
    within(Duration::from_secs(60), async {
        let Some(server) = start_with_64k_outbound(driver, 2).await else {
            return;
        };
        let topic = "fanout.slow";
        const N: usize = 3000;
        let readers_subs = vec![server.subscribe(topic).await, server.subscribe(topic).await];
        let mut stalled = Sub::upgrade(stalled_socket(server.addr).await, topic).await;
        server.settle_websockets(3).await;

        let expected: Arc<Vec<Vec<u8>>> = Arc::new((0..N).map(kib_payload).collect());
        let progress: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let mut readers = JoinSet::new();
        for (sub, p) in readers_subs.into_iter().zip(&progress) {
            readers.spawn(sub.expect_stream(Arc::clone(&expected), OP_TEXT, Some(Arc::clone(p))));
        }
        // Flow control for the publisher: the readers keep up (each group of 32 is published
        // only once they have everything before it), so only the stalled subscriber can pass
        // --max-outbound-bytes. (A burst of more than 64 KiB closes even a fast reader: see
        // `burst_closes_fast_readers`.)
        let mut http = server.http().await;
        let progress_ref = &progress;
        let server_ref = &server;
        post_pipelined(&mut http, topic, &expected, 32, |sent| async move {
            let want = sent as u64;
            let deadline = Instant::now() + READ_TIMEOUT;
            while progress_ref
                .iter()
                .any(|p| p.load(Ordering::Relaxed) < want)
            {
                if Instant::now() > deadline {
                    panic!(
                        "readers stuck at {:?} of {sent} published; /stats {}",
                        progress_ref
                            .iter()
                            .map(|p| p.load(Ordering::Relaxed))
                            .collect::<Vec<_>>(),
                        server_ref.stats().await
                    );
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        let mut readers_done = join_readers(readers).await;
        assert_all_quiet(&mut readers_done).await;

        let stats = server
            .stats_until("a slow consumer close", Duration::from_secs(10), |s| {
                total(s, "slow_consumer_closes") >= 1
            })
            .await;
        assert_eq!(
            total(&stats, "slow_consumer_closes"),
            1,
            "only the stalled subscriber is a slow consumer: {stats}"
        );

        // The stalled subscriber now reads: a gap-free prefix of the messages, then close 1008
        // (or, if the server already gave up on the close handshake, EOF or reset).
        let mut got = 0usize;
        let ending = loop {
            match stalled.frame(READ_TIMEOUT).await {
                Ok(f) if f.opcode == OP_TEXT => {
                    assert!(
                        f.fin && got < N && f.payload == expected[got],
                        "stalled subscriber, message #{got}: got fin={} {} expected {}",
                        f.fin,
                        show(&f.payload),
                        show(expected.get(got).map_or(&b""[..], |v| v))
                    );
                    got += 1;
                }
                Ok(f) if f.opcode == OP_CLOSE => break format!("close {:?}", f.close_code()),
                Ok(f) => panic!("stalled subscriber got an unexpected frame {f:?}"),
                Err(Ended::Eof) => break "EOF".to_string(),
                Err(Ended::Reset(why)) => break format!("reset ({why})"),
                Err(Ended::Garbage(why)) => panic!(
                    "stalled subscriber, after {got} messages in order: the stream is corrupt: \
                     {why}"
                ),
                Err(e) => panic!(
                    "stalled subscriber, after {got} messages in order: {e:?} \
                     (expected more messages, then close 1008 or TCP close)"
                ),
            }
        };
        assert!(got < N, "the stalled subscriber was never cut off");
        assert!(
            ending == "close Some(1008)" || ending == "EOF" || ending.starts_with("reset"),
            "stalled subscriber ended with {ending} after {got} messages; expected close 1008"
        );
        if ending.starts_with("close") {
            // Finish the close handshake; the server then closes TCP.
            stalled
                .send(&client_frame(OP_CLOSE, &1008u16.to_be_bytes()))
                .await;
            match stalled.frame(READ_TIMEOUT).await {
                Err(Ended::Eof) | Err(Ended::Reset(_)) => {}
                other => panic!("after the close handshake: {other:?}"),
            }
        }
        eprintln!("{driver:?}: the stalled subscriber got {got} of {N} messages, then {ending}");
        // The server still serves the topic.
        let r = http
            .exchange(&post(topic, Some(TOKEN), b"still here"))
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        for sub in &mut readers_done {
            let f = sub
                .frame(READ_TIMEOUT)
                .await
                .expect("message after the close");
            assert_eq!(f.payload, b"still here");
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3b. A burst larger than --max-outbound-bytes does not close readers that keep up
// ---------------------------------------------------------------------------------------------

/// 96 messages of 1 KiB (about 99 KB on the wire per subscriber, less than loopback's default
/// receive buffer alone) published in one pipelined write to readers that read all the time,
/// on both shards. None of them is behind in the sense of the contract (it never stops
/// reading), so none may be closed as a slow consumer.
async fn burst_closes_fast_readers(driver: Driver) {
    within(Duration::from_secs(30), async {
        let Some(server) = start_with_64k_outbound(driver, 2).await else {
            return;
        };
        let topic = "burst";
        const N: usize = 96;
        let subs = subscribers_on_every_shard(&server, topic).await;
        let n_subs = subs.len();
        let expected: Arc<Vec<Vec<u8>>> = Arc::new((0..N).map(kib_payload).collect());
        let readers = expect_all(subs, &expected, OP_TEXT);
        let mut http = server.http().await;
        let mut wire = Vec::new();
        for body in expected.iter() {
            wire.extend_from_slice(&post(topic, Some(TOKEN), body));
        }
        http.send(&wire).await;
        for i in 0..N {
            let r = http.response().await;
            assert_eq!(r.status, 202, "POST #{i}: {r:?}");
        }
        let mut set = readers;
        let mut failures = Vec::new();
        while let Some(result) = set.join_next().await {
            if let Err(why) = result.expect("reader task") {
                failures.push(why);
            }
        }
        // Counters are published once per timer tick.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = server.stats().await;
        assert!(
            failures.is_empty() && total(&stats, "slow_consumer_closes") == 0,
            "{} of {n_subs} readers that never stopped reading were cut off by a {N} KiB burst \
             (slow_consumer_closes per shard {:?}, websockets per shard {:?}): {failures:?}",
            failures.len(),
            per_shard(&stats, "slow_consumer_closes"),
            per_shard(&stats, "websockets"),
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3c. What a stalled subscriber gets is well formed: whole frames, in order, then close 1008
// ---------------------------------------------------------------------------------------------

/// One shard, one subscriber that never reads, publishes in small pipelined groups so the
/// slow-consumer close can land in any state of the connection's send (in flight, partly
/// written, idle). Reading afterwards must yield whole frames, a gap-free prefix, then close
/// 1008 (or TCP close): never a truncated frame.
async fn stalled_stream_stays_well_formed(driver: Driver) {
    within(Duration::from_secs(30), async {
        let Some(server) = start_with_64k_outbound(driver, 1).await else {
            return;
        };
        let topic = "stalled";
        const N: usize = 4000;
        let mut stalled = Sub::upgrade(stalled_socket(server.addr).await, topic).await;
        server.settle_websockets(1).await;
        let expected: Arc<Vec<Vec<u8>>> = Arc::new((0..N).map(kib_payload).collect());
        let mut http = server.http().await;
        post_pipelined(&mut http, topic, &expected, 4, |_| async {}).await;
        server
            .stats_until("a slow consumer close", Duration::from_secs(10), |s| {
                total(s, "slow_consumer_closes") == 1
            })
            .await;
        let mut got = 0usize;
        let ending = loop {
            match stalled.frame(READ_TIMEOUT).await {
                Ok(f) if f.opcode == OP_TEXT && f.fin && got < N && f.payload == expected[got] => {
                    got += 1
                }
                Ok(f) if f.opcode == OP_CLOSE => break format!("close {:?}", f.close_code()),
                Ok(f) => panic!(
                    "after {got} whole messages: fin={} opcode {:#x} {} (expected message #{got})",
                    f.fin,
                    f.opcode,
                    show(&f.payload)
                ),
                Err(Ended::Eof) => break "EOF".to_string(),
                Err(e) => panic!("after {got} whole messages in order: {e:?}"),
            }
        };
        assert!(got < N);
        assert!(
            ending == "close Some(1008)" || ending == "EOF",
            "ended with {ending} after {got} messages"
        );
        eprintln!("{driver:?}: stalled subscriber got {got} whole messages, then {ending}");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 4. HTTP publish errors leave the server serving
// ---------------------------------------------------------------------------------------------

async fn http_publish_errors(driver: Driver) {
    within(Duration::from_secs(30), async {
        let Some(server) = Ringcast::start(
            driver,
            &["--publish-token", TOKEN, "--max-message-bytes", "1024"],
        )
        .await
        else {
            return;
        };
        let topic = "errors";
        let mut sub = server.subscribe(topic).await;
        server.settle_websockets(1).await;
        let long_name = "n".repeat(165);
        let bad_requests: Vec<(&str, Vec<u8>, u16)> = vec![
            ("no token", post(topic, None, b"x"), 401),
            ("wrong token", post(topic, Some("not-the-token"), b"x"), 401),
            (
                "a token that is a prefix of the right one",
                post(topic, Some(&TOKEN[..TOKEN.len() - 1]), b"x"),
                401,
            ),
            (
                "body over max_message_bytes",
                post(topic, Some(TOKEN), &[b'a'; 1025]),
                413,
            ),
            (
                "POST to a bad topic name",
                post("bad!name", Some(TOKEN), b"x"),
                400,
            ),
            (
                "POST to a 165-character name",
                post(&long_name, Some(TOKEN), b"x"),
                400,
            ),
            (
                "GET upgrade of a bad name",
                upgrade_request("a%20b").into_bytes(),
                400,
            ),
            (
                "GET upgrade of a name with /",
                upgrade_request("a/b").into_bytes(),
                400,
            ),
            (
                "GET upgrade of an empty name",
                upgrade_request("").into_bytes(),
                400,
            ),
            (
                "DELETE",
                format!("DELETE /topics/{topic} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes(),
                405,
            ),
        ];
        for (i, (what, request, status)) in bad_requests.iter().enumerate() {
            let mut http = server.http().await;
            let r = http.exchange(request).await;
            assert_eq!(r.status, *status, "{what}: {r:?} ({})", r.body_text());
            match *status {
                401 => assert_eq!(
                    r.header("www-authenticate"),
                    Some("Bearer"),
                    "{what}: {r:?}"
                ),
                405 => assert_eq!(r.header("allow"), Some("GET, POST"), "{what}: {r:?}"),
                _ => {}
            }
            // A refused request publishes nothing, and the same keep-alive connection still
            // serves the next request.
            let good = format!("ok after {what}");
            let r = http
                .exchange(&post(topic, Some(TOKEN), good.as_bytes()))
                .await;
            assert_eq!(r.status, 202, "after {what} (#{i}): {r:?}");
            let f = sub.frame(READ_TIMEOUT).await.expect("subscriber message");
            assert_eq!(
                (f.opcode, show(&f.payload)),
                (OP_TEXT, show(good.as_bytes())),
                "after {what}: only the accepted publish arrives"
            );
        }
        // The largest allowed body still goes through, as binary when it is not UTF-8.
        let mut http = server.http().await;
        let r = http
            .exchange(&post(topic, Some(TOKEN), &[0xff; 1024]))
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        let f = sub.frame(READ_TIMEOUT).await.expect("binary message");
        assert_eq!((f.opcode, f.payload.len()), (OP_BINARY, 1024));
        tokio::time::sleep(Duration::from_millis(200)).await;
        sub.assert_nothing_more("the subscriber");
        let stats = server.stats().await;
        assert_eq!(
            total(&stats, "publishes"),
            bad_requests.len() as u64 + 1,
            "only accepted publishes count: {stats}"
        );

        // A server without --publish-token refuses HTTP publishing with 403 and says which
        // setting enables it.
        let Some(closed) = Ringcast::start(driver, &[]).await else {
            return;
        };
        let mut sub = closed.subscribe(topic).await;
        closed.settle_websockets(1).await;
        let mut http = closed.http().await;
        for token in [Some(TOKEN), None] {
            let r = http.exchange(&post(topic, token, b"x")).await;
            assert_eq!(r.status, 403, "{r:?}");
            let body = r.body_text();
            assert!(
                r.header("content-type")
                    .is_some_and(|v| v.starts_with("application/json")),
                "{r:?}"
            );
            let json: serde_json::Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
            assert!(
                json["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("publish_token") || e.contains("--publish-token")),
                "403 names the setting that enables publishing: {body}"
            );
        }
        let r = http
            .exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        assert_eq!(r.status, 200, "still serving after 403: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        sub.assert_nothing_more("subscriber of a server without a publish token");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 5. Without --allow-client-publish a publishing subscriber is closed with 1008, alone
// ---------------------------------------------------------------------------------------------

async fn client_publish_disabled(driver: Driver) {
    within(Duration::from_secs(30), async {
        let Some(server) =
            Ringcast::start(driver, &["--shards", "2", "--publish-token", TOKEN]).await
        else {
            return;
        };
        let topic = "no-client-publish";
        let mut talker = server.subscribe(topic).await;
        let mut others = [server.subscribe(topic).await, server.subscribe(topic).await];
        server.settle_websockets(3).await;

        talker.send(&client_frame(OP_TEXT, b"may I?")).await;
        let f = talker
            .frame(READ_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("the talker's close frame: {e:?}"));
        assert_eq!(
            (f.opcode, f.close_code()),
            (OP_CLOSE, Some(1008)),
            "a subscriber that publishes is closed with 1008: {f:?}"
        );
        talker
            .send(&client_frame(OP_CLOSE, &1008u16.to_be_bytes()))
            .await;
        match talker.frame(READ_TIMEOUT).await {
            Err(Ended::Eof) | Err(Ended::Reset(_)) => {}
            other => panic!("the server keeps the refused talker open: {other:?}"),
        }

        // The others never see the refused message and still get the next publish.
        let mut http = server.http().await;
        let r = http.exchange(&post(topic, Some(TOKEN), b"after")).await;
        assert_eq!(r.status, 202, "{r:?}");
        for (i, sub) in others.iter_mut().enumerate() {
            let f = sub.frame(READ_TIMEOUT).await.expect("message");
            assert_eq!(
                (f.opcode, show(&f.payload)),
                (OP_TEXT, show(b"after")),
                "subscriber {i}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (i, sub) in others.iter_mut().enumerate() {
            sub.assert_nothing_more(&format!("subscriber {i}"));
        }
        let stats = server
            .stats_until("the talker gone", Duration::from_secs(5), |s| {
                total(s, "websockets") == 2
            })
            .await;
        assert_eq!(total(&stats, "client_publish_refused"), 1, "{stats}");
        assert_eq!(total(&stats, "publishes"), 1, "{stats}");
    })
    .await
}

/// Opens subscribers of `topic` until every shard holds at least one, then lets the interest
/// settle.
async fn subscribers_on_every_shard(server: &Ringcast, topic: &str) -> Vec<Sub> {
    let mut subs = Vec::new();
    loop {
        subs.push(server.subscribe(topic).await);
        let n = subs.len() as u64;
        let stats = server
            .stats_until(&format!("{n} WebSockets"), Duration::from_secs(5), |s| {
                total(s, "websockets") == n
            })
            .await;
        if per_shard(&stats, "websockets").iter().all(|&w| w > 0) {
            break;
        }
        assert!(n < 64, "64 connections all landed on one shard: {stats}");
    }
    tokio::time::sleep(INTEREST_SETTLE).await;
    subs
}

// ---------------------------------------------------------------------------------------------
// 6. A full shard-to-shard ring: 503 + Retry-After, and every 202 is delivered everywhere
// ---------------------------------------------------------------------------------------------

async fn mesh_ring_full(driver: Driver) {
    within(Duration::from_secs(60), async {
        let Some(server) = Ringcast::start(
            driver,
            &[
                "--shards",
                "2",
                "--mesh-ring-capacity",
                "16",
                "--publish-token",
                TOKEN,
            ],
        )
        .await
        else {
            return;
        };
        let topic = "ring-full";
        let subs = subscribers_on_every_shard(&server, topic).await;

        // 2,000 POSTs in one write, read concurrently.
        const N: usize = 2000;
        let mut wire = Vec::new();
        for i in 0..N {
            wire.extend_from_slice(&post(topic, Some(TOKEN), i.to_string().as_bytes()));
        }
        let stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            wr.write_all(&wire).await.expect("write 2,000 POSTs");
            wr
        });
        let mut reader = Http {
            io: rd,
            buf: Vec::new(),
        };
        let mut accepted = Vec::new();
        let mut refused = 0usize;
        for i in 0..N {
            let r = reader.response().await;
            match r.status {
                202 => {
                    assert_eq!(r.body_text(), "{\"ok\":true}", "#{i}");
                    accepted.push(i.to_string().into_bytes());
                }
                503 => {
                    assert!(
                        r.header("retry-after")
                            .is_some_and(|v| v.parse::<u32>().is_ok()),
                        "503 #{i} carries Retry-After: {r:?}"
                    );
                    refused += 1;
                }
                other => panic!("POST #{i}: unexpected {other}: {r:?}"),
            }
        }
        let _wr = writer.await.expect("writer task");
        eprintln!(
            "{driver:?}: {} subscribers (per shard {:?}); of {N} pipelined POSTs {} got 202, \
             {refused} got 503",
            subs.len(),
            per_shard(&server.stats().await, "websockets"),
            accepted.len()
        );
        assert!(
            refused > 0,
            "a 16-slot ring never filled under 2,000 pipelined POSTs"
        );
        assert!(!accepted.is_empty(), "every publish was refused");

        // Both shards have subscribers, so an acknowledged publish went to both (a publish is
        // all or nothing), and a refused one went nowhere: every subscriber gets exactly the
        // acknowledged messages, in order.
        let expected = Arc::new(accepted);
        let mut subs = join_readers(expect_all(subs, &expected, OP_TEXT)).await;
        assert_all_quiet(&mut subs).await;
        let stats = server.stats().await;
        assert_eq!(total(&stats, "http_publishes"), N as u64, "{stats}");
        assert_eq!(
            total(&stats, "mesh_full"),
            refused as u64,
            "one mesh_full per 503: {stats}"
        );
        assert_eq!(
            total(&stats, "publishes"),
            expected.len() as u64,
            "one publish per 202: {stats}"
        );
        assert_eq!(
            total(&stats, "deliveries"),
            (expected.len() * subs.len()) as u64,
            "{stats}"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 7. /metrics is Prometheus text and agrees with /stats
// ---------------------------------------------------------------------------------------------

async fn metrics_match_stats(driver: Driver) {
    within(Duration::from_secs(30), async {
        let Some(server) =
            Ringcast::start(driver, &["--shards", "2", "--publish-token", TOKEN]).await
        else {
            return;
        };
        let topic = "metrics";
        const SUBS: usize = 10;
        const N: usize = 100;
        let subs = subscribe_many(server.addr, topic, SUBS).await;
        server.settle_websockets(SUBS as u64).await;
        let expected = seq_payloads(N);
        let readers = expect_all(subs, &expected, OP_TEXT);
        let mut http = server.http().await;
        post_pipelined(&mut http, topic, &expected, 10, |_| async {}).await;
        let _subs = join_readers(readers).await;

        // Counters are published once per timer tick; wait for the final values.
        let want = (SUBS * N) as u64;
        let stats = server
            .stats_until(&format!("{want} deliveries"), Duration::from_secs(5), |s| {
                total(s, "deliveries") == want
            })
            .await;
        let (status, content_type, text) = admin_get(server.admin, "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(status, 200, "{text}");
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        assert!(
            text.contains("# TYPE ringcast_deliveries_total counter"),
            "{text}"
        );
        let mut by_shard = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("sample line");
            let value: u64 = value
                .parse()
                .unwrap_or_else(|e| panic!("bad sample value in {line:?}: {e}"));
            if let Some(labels) = name.strip_prefix("ringcast_deliveries_total") {
                by_shard.push((labels.to_string(), value));
            }
        }
        let expected_labels: Vec<String> = (0..2).map(|i| format!("{{shard=\"{i}\"}}")).collect();
        assert_eq!(
            by_shard.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(),
            expected_labels,
            "one ringcast_deliveries_total sample per shard:\n{text}"
        );
        let metric_values: Vec<u64> = by_shard.iter().map(|(_, v)| *v).collect();
        assert_eq!(
            metric_values,
            per_shard(&stats, "deliveries"),
            "/metrics per shard equals /stats per shard:\n{text}\n{stats}"
        );
        assert_eq!(metric_values.iter().sum::<u64>(), want, "{text}");
        assert!(
            text.lines().any(|l| l == "ringcast_shards 2"),
            "ringcast_shards gauge:\n{text}"
        );
        // Nothing moved in the meantime.
        assert_eq!(total(&server.stats().await, "deliveries"), want);
    })
    .await
}
