//! Shared harness for the integration tests: starts the real `ringcast serve` binary on
//! `127.0.0.1:0` and talks to it over raw TCP (HTTP heads, hand-built WebSocket frames) or
//! through tokio-tungstenite. It must never bind anything but 127.0.0.1, never use a fixed port,
//! and never let a test hang: every wait here has a deadline.

// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub mod driver;

/// Time the server gets to print its listening line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Overall deadline of an ordinary test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a single read that expects an answer from the server.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The key from RFC 6455 §1.3 and the accept value the RFC derives from it.
pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The valid upgrade request for `/echo`, using [`RFC_KEY`].
pub const UPGRADE_REQUEST: &str = "GET /echo HTTP/1.1\r\n\
    Host: 127.0.0.1\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\
    \r\n";

/// Runs `test` under `limit` and panics (failing the test) if it takes longer.
pub async fn within<F: Future>(limit: Duration, test: F) -> F::Output {
    match tokio::time::timeout(limit, test).await {
        Ok(output) => output,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// Which I/O driver the server is started with. Tests can be parametrised by mode; the default
/// mode passes no `--io` flag, so the server picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    Default,
    Auto,
    Uring,
    Epoll,
}

impl IoMode {
    /// The mode named by `RINGCAST_TEST_IO` (`auto`, `uring`, `epoll`), else [`IoMode::Default`].
    pub fn from_env() -> IoMode {
        match std::env::var("RINGCAST_TEST_IO").as_deref() {
            Ok("auto") => IoMode::Auto,
            Ok("uring") => IoMode::Uring,
            Ok("epoll") => IoMode::Epoll,
            Ok("") | Err(_) => IoMode::Default,
            Ok(other) => panic!("RINGCAST_TEST_IO={other:?}: expected auto, uring or epoll"),
        }
    }

    /// The command-line arguments that select this mode.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            IoMode::Default => &[],
            IoMode::Auto => &["--io", "auto"],
            IoMode::Uring => &["--io", "uring"],
            IoMode::Epoll => &["--io", "epoll"],
        }
    }
}

/// The I/O modes a test that covers every driver should run: the one named by
/// `RINGCAST_TEST_IO` if set; else each of `uring` and `epoll` that `ringcast serve --help`
/// mentions; else (no `--io` flag yet) just the default.
pub fn io_modes() -> Vec<IoMode> {
    let from_env = IoMode::from_env();
    if from_env != IoMode::Default {
        return vec![from_env];
    }
    let help = serve_help();
    if !help.contains("--io") {
        return vec![IoMode::Default];
    }
    let mut modes = Vec::new();
    if help.contains("uring") {
        modes.push(IoMode::Uring);
    }
    if help.contains("epoll") {
        modes.push(IoMode::Epoll);
    }
    if modes.is_empty() {
        modes.push(IoMode::Default);
    }
    modes
}

/// True under CI (`RINGCAST_CI` set to anything non-empty), where a skip must fail instead
/// (STYLE.md §6). The one rule for every test file.
pub fn skips_fail() -> bool {
    std::env::var_os("RINGCAST_CI").is_some_and(|v| !v.is_empty())
}

/// Starts a server in `io` mode, or returns None after printing why the mode is skipped (the
/// server exited before listening, e.g. the kernel lacks io_uring). When `RINGCAST_CI` is set
/// (see [`skips_fail`]) a skip panics instead.
pub async fn start_or_skip(io: IoMode, extra_args: &[&str]) -> Option<Server> {
    match Server::try_start(io, extra_args).await {
        Ok(server) => Some(server),
        Err(why) if skips_fail() => panic!("RINGCAST_CI is set and {io:?} cannot start: {why}"),
        Err(why) => {
            eprintln!("SKIPPED {io:?}: {why}");
            None
        }
    }
}

/// A running `ringcast serve`. Dropping it kills the process.
pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `ringcast serve --listen 127.0.0.1:0 --echo` plus `extra_args`, in the I/O mode
    /// named by `RINGCAST_TEST_IO`.
    pub async fn echo(extra_args: &[&str]) -> Server {
        let mut args = vec!["--echo"];
        args.extend_from_slice(extra_args);
        Server::start(IoMode::from_env(), &args).await
    }

    /// Starts `ringcast serve --listen 127.0.0.1:0` plus the mode's flags plus `extra_args`, and
    /// waits (at most [`STARTUP_TIMEOUT`]) for the listening line on stdout.
    pub async fn start(io: IoMode, extra_args: &[&str]) -> Server {
        match Server::try_start(io, extra_args).await {
            Ok(server) => server,
            Err(why) => panic!("{why}"),
        }
    }

    /// Like [`Server::start`], but a server that exits before it listens (e.g. `--io uring` on
    /// a kernel without io_uring) is an `Err` with its exit status and stderr, so the caller
    /// can skip. A server that hangs still panics.
    pub async fn try_start(io: IoMode, extra_args: &[&str]) -> Result<Server, String> {
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(io.args())
            .args(port_0_for_other_listeners())
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // The server also reads its settings from RINGCAST_* variables; a test must see only
        // the flags it passes (RINGCAST_LOG, the log filter, may stay).
        driver::remove_ringcast_env(&mut command, Some("RINGCAST_LOG"));
        let mut child = command.spawn().expect("spawn ringcast");

        let stderr = capture_stderr(&mut child);

        // The contract is exactly one stdout line; any other line before it is recorded (see
        // `stdout_lines`, checked by tests/lifecycle.rs) but does not fail every other test.
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let mut out_lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        let addr = loop {
            let line = match tokio::time::timeout_at(deadline, out_lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) => {
                    let status = child.wait().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Err(format!(
                        "ringcast exited before printing its listening line \
                         ({io:?}, args {extra_args:?}, exit {status:?}); stderr:\n{}",
                        stderr.lock().unwrap()
                    ));
                }
                Ok(Err(e)) => panic!("reading ringcast stdout: {e}"),
                Err(_) => panic!(
                    "ringcast did not print its listening line within {STARTUP_TIMEOUT:?} \
                     (args {extra_args:?}); stderr:\n{}",
                    stderr.lock().unwrap()
                ),
            };
            stdout.lock().unwrap().push(line.clone());
            if line.starts_with(LISTENING_PREFIX) {
                break parse_listening_line(&line);
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        let sink = Arc::clone(&stdout);
        tokio::spawn(async move {
            while let Ok(Some(line)) = out_lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(Server {
            addr,
            child,
            stderr,
            stdout,
        })
    }

    /// Every line the server printed on stdout so far, the listening line included.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        match self.child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                panic!("ringcast exited with {status}; stderr:\n{}", self.log())
            }
            Err(e) => panic!("try_wait: {e}"),
        }
    }

    /// The process id, for sending signals.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("ringcast still running")
    }

    /// Sends `signal` (e.g. "TERM", "INT") with kill(1), so the tests need no unsafe code.
    pub async fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        exit_within(&mut self.child, limit, &self.stderr).await
    }
}

/// Keeps a server's stderr (so a failing test can show it) in the returned string, never
/// letting the pipe fill up.
pub fn capture_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err_lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let sink = Arc::clone(&stderr);
    tokio::spawn(async move {
        while let Ok(Some(line)) = err_lines.next_line().await {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    stderr
}

/// Waits for `child` to exit, at most `limit`; panics with its stderr if it does not.
pub async fn exit_within(child: &mut Child, limit: Duration, stderr: &Mutex<String>) -> ExitStatus {
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.expect("wait for ringcast"),
        Err(_) => panic!(
            "ringcast did not exit within {limit:?}; stderr:\n{}",
            stderr.lock().unwrap()
        ),
    }
}

/// The last 40 lines of a server's log, for a failing test's output.
pub fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A started server's WebSocket listener, as both [`Server`] and [`driver::Ringcast`] offer it.
#[allow(async_fn_in_trait)]
pub trait Listener {
    /// The address the server printed on its listening line.
    fn listen_addr(&self) -> SocketAddr;

    /// `ws://ADDR/echo`.
    fn echo_url(&self) -> String {
        format!("ws://{}/echo", self.listen_addr())
    }

    /// A new raw TCP connection to the server.
    async fn raw(&self) -> RawConn {
        RawConn::connect(self.listen_addr()).await
    }

    /// A raw connection that has completed the `/echo` upgrade (101 checked).
    async fn upgraded(&self) -> RawConn {
        let mut conn = self.raw().await;
        conn.send(UPGRADE_REQUEST.as_bytes()).await;
        let response = conn.read_response_head().await;
        assert_eq!(response.status, 101, "upgrade refused: {response:?}");
        conn
    }
}

impl Listener for Server {
    fn listen_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = log_tail(&self.log());
            eprintln!("--- ringcast stderr (last 40 lines) ---\n{tail}\n---");
        }
        // kill_on_drop does the rest.
    }
}

/// The binary under test: `RINGCAST_BIN` if set (e.g. a release build), else the one Cargo
/// built for this test run.
fn binary() -> String {
    std::env::var("RINGCAST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ringcast").to_string())
}

/// Flags that move any other listener the server opens by default (e.g. an admin port) to
/// `127.0.0.1:0`, so parallel tests never fight over a fixed port. Detected once from
/// `ringcast serve --help`, because such flags are not part of the tested contract.
fn port_0_for_other_listeners() -> &'static [&'static str] {
    static FLAGS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    FLAGS.get_or_init(|| {
        if serve_help().contains("--admin-listen") {
            vec!["--admin-listen", "127.0.0.1:0"]
        } else {
            Vec::new()
        }
    })
}

/// The text of `ringcast serve --help` (empty if it fails), read once.
fn serve_help() -> &'static str {
    static HELP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HELP.get_or_init(|| {
        std::process::Command::new(binary())
            .args(["serve", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    })
}

/// The start of the one line the server prints on stdout when it is ready.
pub const LISTENING_PREFIX: &str = "ringcast: listening on ";

/// Parses `ringcast: listening on 127.0.0.1:PORT`.
fn parse_listening_line(line: &str) -> SocketAddr {
    let rest = line
        .strip_prefix(LISTENING_PREFIX)
        .unwrap_or_else(|| panic!("unexpected first stdout line: {line:?}"));
    let addr: SocketAddr = rest
        .trim_end()
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
    assert!(
        addr.ip().is_loopback(),
        "server must listen on 127.0.0.1: {line:?}"
    );
    assert_ne!(addr.port(), 0, "server printed port 0: {line:?}");
    addr
}

// ---------------------------------------------------------------------------------------------
// Raw TCP: HTTP heads and WebSocket frames
// ---------------------------------------------------------------------------------------------

/// An HTTP response as read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True if the header `name` holds the comma-separated `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// A decoded WebSocket frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The status code of a close frame, if its payload has one.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The mask key every client frame here uses (any non-zero key works; RFC 6455 §5.3).
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Encodes a masked client frame: RFC 6455 §5.2 header, shortest length form, masked payload.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, 0, opcode, Some(MASK), payload)
}

/// A masked, final frame.
pub fn final_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, payload)
}

/// A masked close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    frame(true, OP_CLOSE, &payload)
}

/// Encodes any frame, including illegal ones: RSV bits, no mask, any opcode.
pub fn encode_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = frame_header(fin, rsv, opcode, mask, payload.len() as u64);
    match mask {
        Some(key) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4])),
        None => out.extend_from_slice(payload),
    }
    out
}

/// Just the header of a frame that declares `len` payload bytes (the payload is not included).
pub fn frame_header(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, len: u64) -> Vec<u8> {
    assert!(rsv < 8 && opcode < 16);
    let mut out = Vec::with_capacity(14);
    out.push(((fin as u8) << 7) | (rsv << 4) | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    out
}

/// A raw TCP connection with a read buffer, so responses and frames that arrive together are
/// split correctly.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes all of `bytes` in one write call (so they usually travel in one segment).
    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("write to server");
    }

    /// Like [`RawConn::send`], but the server may already have closed.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Writes `bytes` while buffering whatever the server sends meanwhile, so a large write
    /// cannot deadlock against a server that stops reading and answers (e.g. with a close)
    /// first. Returns the write's result: an error means the server closed early.
    pub async fn send_while_reading(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let (mut rd, mut wr) = self.stream.split();
        let write = async {
            wr.write_all(bytes).await?;
            wr.flush().await
        };
        tokio::pin!(write);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut read_open = true;
        loop {
            tokio::select! {
                result = &mut write => return result,
                n = rd.read(&mut chunk), if read_open => match n {
                    Ok(0) | Err(_) => read_open = false,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                },
            }
        }
    }

    /// Reads more bytes into the buffer. Ok(0) means EOF.
    async fn fill(&mut self, limit: Duration) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(limit, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "read timed out",
            )),
        }
    }

    /// Ensures at least `n` bytes are buffered. Returns false on EOF or reset.
    async fn fill_to(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            match self.fill(READ_TIMEOUT).await {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if is_reset(&e) => return false,
                Err(e) => panic!(
                    "waiting for {} more bytes from the server: {e} (buffered {:?})",
                    n - self.buf.len(),
                    String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
                ),
            }
        }
        true
    }

    /// Reads one response head (status line and headers); the body, if any, stays buffered.
    pub async fn read_response_head(&mut self) -> Response {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return parse_response_head(&head);
            }
            assert!(self.buf.len() < 64 * 1024, "response head over 64 KiB");
            match self.fill(READ_TIMEOUT).await {
                Ok(0) => panic!(
                    "server closed before a complete response head (got {:?})",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "reading response head: {e} (got {:?})",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// Reads a response head and its `Content-Length` body (no body if the header is absent).
    pub async fn read_response(&mut self) -> Response {
        let mut response = self.read_response_head().await;
        let len: usize = match response.header("content-length") {
            Some(v) => v.trim().parse().expect("numeric Content-Length"),
            None => 0,
        };
        assert!(
            self.fill_to(len).await,
            "server closed inside a {len}-byte body of {response:?}"
        );
        response.body = self.buf.drain(..len).collect();
        response
    }

    /// Reads the next frame; None if the server closed the TCP connection instead.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        if !self.fill_to(2).await {
            return self.eof_with_leftover();
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let masked = b1 & 0x80 != 0;
        let (len, header_len) = match b1 & 0x7f {
            126 => {
                if !self.fill_to(4).await {
                    return self.eof_with_leftover();
                }
                (u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
            }
            127 => {
                if !self.fill_to(10).await {
                    return self.eof_with_leftover();
                }
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(be), 10)
            }
            n => (u64::from(n), 2),
        };
        // RFC 6455 §5.1: a server must not mask frames it sends.
        assert!(
            !masked,
            "server sent a masked frame (header {:02x?})",
            &self.buf[..2]
        );
        assert!(len <= 64 << 20, "server frame claims {len} bytes");
        let total = header_len + len as usize;
        if !self.fill_to(total).await {
            return self.eof_with_leftover();
        }
        let bytes: Vec<u8> = self.buf.drain(..total).collect();
        Some(Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0f,
            payload: bytes[header_len..].to_vec(),
        })
    }

    fn eof_with_leftover(&self) -> Option<Frame> {
        assert!(
            self.buf.is_empty(),
            "server closed TCP in the middle of a frame ({} bytes buffered: {:02x?})",
            self.buf.len(),
            &self.buf[..self.buf.len().min(32)]
        );
        None
    }

    /// Reads the next frame, which must exist.
    pub async fn expect_frame(&mut self) -> Frame {
        self.read_frame()
            .await
            .expect("server closed TCP where a frame was expected")
    }

    /// Reads one data message: a text/binary frame plus continuations up to FIN. Control frames
    /// in between fail the test. Returns (opcode, payload).
    pub async fn read_message(&mut self) -> (u8, Vec<u8>) {
        let first = self.expect_frame().await;
        self.read_message_from(first).await
    }

    /// Like [`RawConn::read_message`], for a message whose first frame was already read.
    pub async fn read_message_from(&mut self, first: Frame) -> (u8, Vec<u8>) {
        assert!(
            first.opcode == OP_TEXT || first.opcode == OP_BINARY,
            "expected a data frame, got opcode {:#x} payload {:?}",
            first.opcode,
            String::from_utf8_lossy(&first.payload)
        );
        assert_eq!(first.rsv, 0, "server set RSV bits");
        let opcode = first.opcode;
        let mut payload = first.payload;
        let mut fin = first.fin;
        while !fin {
            let next = self.expect_frame().await;
            assert_eq!(
                next.opcode, OP_CONT,
                "expected a continuation frame: {next:?}"
            );
            payload.extend_from_slice(&next.payload);
            fin = next.fin;
        }
        (opcode, payload)
    }

    /// Reads the next frame, which must be a close frame, and returns its code.
    pub async fn read_close_code(&mut self) -> Option<u16> {
        let frame = self
            .read_frame()
            .await
            .unwrap_or_else(|| panic!("server closed TCP without sending a close frame"));
        assert_eq!(
            frame.opcode,
            OP_CLOSE,
            "expected a close frame, got opcode {:#x} payload {:?}",
            frame.opcode,
            String::from_utf8_lossy(&frame.payload)
        );
        assert_ne!(frame.payload.len(), 1, "server sent a 1-byte close payload");
        if frame.payload.len() > 2 {
            assert!(
                std::str::from_utf8(&frame.payload[2..]).is_ok(),
                "server close reason is not UTF-8: {frame:?}"
            );
        }
        frame.close_code()
    }

    /// The server starts the close: reads its close frame, which must carry `code`, answers it
    /// with the same code (finishing the close handshake), then expects the server to close TCP.
    pub async fn expect_close(&mut self, code: u16) {
        assert_eq!(
            self.read_close_code().await,
            Some(code),
            "server close code"
        );
        // The server may already have closed TCP; a failed write is fine here.
        let _ = self.try_send(&close_frame(code, b"")).await;
        assert!(
            self.closed_within(Duration::from_secs(3)).await,
            "server kept TCP open after the close handshake (code {code})"
        );
    }

    /// The client already sent a close: reads the server's reply, which must carry `code`, then
    /// expects the server to close TCP.
    pub async fn expect_close_reply(&mut self, code: u16) {
        assert_eq!(
            self.read_close_code().await,
            Some(code),
            "server close code"
        );
        assert!(
            self.closed_within(Duration::from_secs(3)).await,
            "server kept TCP open after replying to a close (code {code})"
        );
    }

    /// Reads and discards until the server closes TCP (EOF or reset). False if it is still
    /// open after `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            self.buf.clear();
            match self.fill(left).await {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if is_reset(&e) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
                Err(e) => panic!("waiting for close: {e}"),
            }
        }
    }

    /// Waits for the server to close TCP and returns how long that took from `since`; panics
    /// if it is still open `limit` after `since`.
    pub async fn time_to_close(
        &mut self,
        since: tokio::time::Instant,
        limit: Duration,
    ) -> Duration {
        let left = limit.saturating_sub(since.elapsed());
        assert!(
            self.closed_within(left).await,
            "connection still open {limit:?} after the reference point"
        );
        since.elapsed()
    }

    /// True if the server's socket is gone for good: a write to it draws a reset, which the
    /// next write reports. (After the server's FIN alone, reads only say EOF; a server that
    /// still waits for our close accepts writes without a reset.)
    pub async fn writes_are_reset(&mut self, probe: &[u8]) -> bool {
        if self.try_send(probe).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.try_send(probe).await.is_err()
    }

    /// Asserts that nothing arrives and the connection stays open for `period`.
    pub async fn assert_quiet_for(&mut self, period: Duration) {
        match self.fill(period).await {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Ok(0) => panic!("server closed the connection within {period:?}"),
            Ok(_) => panic!("unexpected bytes from the server: {:?}", self.buf),
            Err(e) => panic!("connection failed within {period:?}: {e}"),
        }
    }

    /// Bytes received but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_response_head(head: &[u8]) -> Response {
    let text = std::str::from_utf8(head).expect("response head is not UTF-8");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    assert!(
        version == "HTTP/1.1" || version == "HTTP/1.0",
        "status line {status_line:?}"
    );
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            (name.trim().to_string(), value.trim().to_string())
        })
        .collect();
    Response {
        status,
        headers,
        body: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Request builders
// ---------------------------------------------------------------------------------------------

/// An upgrade request for `path` whose header lines are `headers` (each without CRLF), so
/// a test can drop or change one of the usual ones.
pub fn request(request_line: &str, headers: &[&str]) -> Vec<u8> {
    let mut out = format!("{request_line}\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The header lines of a valid `/echo` upgrade.
pub const UPGRADE_HEADERS: [&str; 5] = [
    "Host: 127.0.0.1",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
];

/// The valid upgrade headers, with the one starting with `name` (case-insensitive) removed.
pub fn upgrade_headers_without(name: &str) -> Vec<&'static str> {
    UPGRADE_HEADERS
        .iter()
        .copied()
        .filter(|h| {
            !h.to_ascii_lowercase()
                .starts_with(&name.to_ascii_lowercase())
        })
        .collect()
}

/// The valid upgrade headers, with the one named `name` replaced by `line`.
pub fn upgrade_headers_with<'a>(name: &str, line: &'a str) -> Vec<&'a str> {
    let mut out: Vec<&'a str> = upgrade_headers_without(name);
    out.push(line);
    out
}

/// A deterministic xorshift generator for garbage input (no rand crate needed).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
