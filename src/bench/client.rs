//! One non-blocking WebSocket client connection for the load generator: TCP connect, HTTP/1.1
//! Upgrade (RFC 6455 §4.1), then frames. Owns its socket and small per-connection buffers; the
//! worker owns readiness (epoll) and clocks and hands both in. Never blocks and never retries.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustix::buffer::spare_capacity;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};
use sha1::{Digest, Sha1};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::frame::{self, FrameError, Opcode};
use super::url::WsUrl;

/// RFC 6455 §1.3: the GUID appended to the key before hashing.
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest 101 response head we accept, bytes. Default 4096: real servers send about 150; over it
/// the connection fails with [`HandshakeError::HeadTooLong`].
pub const RESPONSE_HEAD_BYTES_MAX: usize = 4096;

/// Most header lines in the 101 response. Over it httparse reports `TooManyHeaders` and the
/// connection fails with [`HandshakeError::Malformed`].
pub const RESPONSE_HEADERS_MAX: usize = 32;

/// Largest server frame payload, bytes. Default 1 MiB bounds the per-connection reassembly
/// buffer; over it the connection fails with [`FailReason::Protocol`].
pub const FRAME_PAYLOAD_BYTES_MAX: u64 = 1 << 20;

/// Largest reassembled server message, bytes (same bound and reason as the frame limit).
pub const MESSAGE_BYTES_MAX: usize = 1 << 20;

/// Bytes read per `recv` into the worker's scratch buffer. Default 64 KiB: one call drains a
/// loopback socket's usual backlog.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2 step 5.4):
/// base64(SHA-1(key + GUID)).
pub fn accept_for_key(key: &str) -> String {
    String::from_utf8_lossy(&accept_bytes(key.as_bytes())).into_owned()
}

/// Base64 of a 20-byte SHA-1 digest: always 28 characters.
const ACCEPT_BYTES: usize = 28;

/// Base64 of a 16-byte nonce: always 24 characters.
const KEY_BYTES: usize = 24;

fn accept_bytes(key: &[u8]) -> [u8; ACCEPT_BYTES] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID.as_bytes());
    let mut accept = [0u8; ACCEPT_BYTES];
    let written = BASE64.encode_slice(sha.finalize(), &mut accept);
    debug_assert_eq!(written, Ok(ACCEPT_BYTES));
    accept
}

/// The client half of the opening handshake: the key it sent and the accept value it expects.
/// Fixed-size arrays, so a connection carries no handshake allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHandshake {
    key: [u8; KEY_BYTES],
    accept: [u8; ACCEPT_BYTES],
}

/// Why a server's handshake response was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The response head did not end within [`RESPONSE_HEAD_BYTES_MAX`].
    #[error("response head over {limit} bytes (saw {seen})")]
    HeadTooLong {
        /// The limit.
        limit: usize,
        /// Bytes buffered when the limit was hit.
        seen: usize,
    },
    /// Not parseable as an HTTP/1.1 response.
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    /// RFC 6455 §4.1: any status other than 101 means the handshake did not complete.
    #[error("HTTP status {0} instead of 101")]
    BadStatus(u16),
    /// RFC 6455 §4.1 step 2: `Upgrade` must be `websocket` (case-insensitive).
    #[error("missing or wrong Upgrade header")]
    MissingUpgrade,
    /// RFC 6455 §4.1 step 3: `Connection` must contain the `Upgrade` token.
    #[error("missing Upgrade token in Connection header")]
    MissingConnectionUpgrade,
    /// RFC 6455 §4.1 step 4: `Sec-WebSocket-Accept` must match base64(SHA-1(key + GUID)).
    #[error("wrong Sec-WebSocket-Accept")]
    WrongAccept,
}

impl ClientHandshake {
    /// A handshake with the key base64(`nonce`) (RFC 6455 §4.1: 16 random bytes).
    pub fn new(nonce: [u8; 16]) -> Self {
        let mut key = [0u8; KEY_BYTES];
        let written = BASE64.encode_slice(nonce, &mut key);
        debug_assert_eq!(written, Ok(KEY_BYTES));
        let accept = accept_bytes(&key);
        Self { key, accept }
    }

    /// The `Sec-WebSocket-Key` value (base64 is ASCII, so it is always valid UTF-8).
    pub fn key(&self) -> &str {
        std::str::from_utf8(&self.key).unwrap_or_default()
    }

    /// Appends the GET Upgrade request (RFC 6455 §4.1).
    pub fn write_request(&self, url: &WsUrl, out: &mut Vec<u8>) {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            url.path,
            url.host_header(),
            self.key()
        );
        out.extend_from_slice(request.as_bytes());
    }

    /// Parses the response head at the start of `buf`. `Ok(None)` means more bytes are needed;
    /// `Ok(Some(n))` means the upgrade succeeded and frames start at `buf[n..]`.
    pub fn parse_response(&self, buf: &[u8]) -> Result<Option<usize>, HandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
        let mut response = httparse::Response::new(&mut headers);
        let head_bytes = match response.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > RESPONSE_HEAD_BYTES_MAX {
                    return Err(HandshakeError::HeadTooLong {
                        limit: RESPONSE_HEAD_BYTES_MAX,
                        seen: buf.len(),
                    });
                }
                return Ok(None);
            }
            Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
        };
        if head_bytes > RESPONSE_HEAD_BYTES_MAX {
            return Err(HandshakeError::HeadTooLong {
                limit: RESPONSE_HEAD_BYTES_MAX,
                seen: head_bytes,
            });
        }
        // A complete parse always has a code (httparse invariant); 0 cannot be a real status.
        let code = response.code.unwrap_or(0);
        if code != 101 {
            return Err(HandshakeError::BadStatus(code));
        }
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let upgrade_ok = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
        if !upgrade_ok {
            return Err(HandshakeError::MissingUpgrade);
        }
        let connection_ok = header("connection").is_some_and(|v| {
            v.split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        });
        if !connection_ok {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        if header("sec-websocket-accept").map(<[u8]>::trim_ascii) != Some(&self.accept[..]) {
            return Err(HandshakeError::WrongAccept);
        }
        Ok(Some(head_bytes))
    }
}

/// Why a connection failed before or after its upgrade. Counted per reason in reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailReason {
    /// `ECONNREFUSED`: nothing listening, or the accept queue overflowed with `tcp_abort_on_overflow`.
    #[error("connection refused")]
    Refused,
    /// The handshake did not finish in time (or the kernel's `ETIMEDOUT`).
    #[error("timed out")]
    Timeout,
    /// The server answered the upgrade with another status.
    #[error("HTTP status {0}")]
    BadStatus(u16),
    /// `EMFILE`/`ENFILE`: the process (or system) open-file limit was hit creating the socket.
    #[error("open-file limit reached (EMFILE/ENFILE)")]
    FileLimit,
    /// `EADDRNOTAVAIL`/`EADDRINUSE`: no free ephemeral port for this source address.
    #[error("no free local port (EADDRNOTAVAIL)")]
    AddrUnavailable,
    /// The peer reset or closed the TCP connection before the upgrade finished.
    #[error("connection reset or closed during the handshake")]
    Reset,
    /// The response was not a valid 101 (anything but a wrong status).
    #[error("bad handshake: {0}")]
    Handshake(HandshakeError),
    /// A frame from the server broke RFC 6455 (after the upgrade).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Any other socket error, by errno.
    #[error("I/O error: {0}")]
    Io(String),
}

impl FailReason {
    /// Classifies a socket error.
    pub fn from_io(err: &io::Error) -> Self {
        let errno = err.raw_os_error().map(Errno::from_raw_os_error);
        match errno {
            Some(Errno::CONNREFUSED) => Self::Refused,
            Some(Errno::MFILE | Errno::NFILE) => Self::FileLimit,
            Some(Errno::ADDRNOTAVAIL | Errno::ADDRINUSE) => Self::AddrUnavailable,
            Some(Errno::TIMEDOUT) => Self::Timeout,
            Some(Errno::CONNRESET | Errno::PIPE | Errno::CONNABORTED) => Self::Reset,
            _ => Self::Io(err.to_string()),
        }
    }
}

impl From<HandshakeError> for FailReason {
    fn from(err: HandshakeError) -> Self {
        match err {
            HandshakeError::BadStatus(code) => Self::BadStatus(code),
            other => Self::Handshake(other),
        }
    }
}

impl From<FrameError> for FailReason {
    fn from(err: FrameError) -> Self {
        Self::Protocol(err.to_string())
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Non-blocking TCP connect in progress.
    Connecting,
    /// Request sent (or queued); waiting for the 101.
    Handshaking,
    /// Upgraded: frames flow both ways.
    Open,
    /// A Close frame was sent; waiting for the server to close TCP (RFC 6455 §7.1.1).
    Closing,
    /// Finished, cleanly or not; the worker drops it.
    Done,
}

/// Something a connection reports to its worker from [`ClientConn::handle_ready`].
#[derive(Debug, PartialEq, Eq)]
pub enum ConnEvent<'a> {
    /// The 101 was parsed and verified; `latency` is connect start to now.
    Opened {
        /// Connect start to verified 101.
        latency: Duration,
    },
    /// A complete data message (reassembled if it was fragmented).
    Message {
        /// `Text` or `Binary`.
        opcode: Opcode,
        /// The payload.
        payload: &'a [u8],
    },
    /// The server sent a Close frame (status code, if it had one).
    PeerClose {
        /// RFC 6455 §7.1.5: the status code, if the payload had one.
        code: Option<u16>,
    },
    /// The TCP connection ended after the upgrade. `clean` means both Close frames were exchanged
    /// before the server closed TCP.
    Closed {
        /// Close handshake completed before EOF.
        clean: bool,
    },
    /// The connection failed before or during the upgrade, or broke the protocol afterwards.
    Failed(FailReason),
}

/// Readiness bits from the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// Readable, hung up or in error: try `recv`.
    pub readable: bool,
    /// Writable or in error: try `send` (and, while connecting, check the connect result).
    pub writable: bool,
}

/// A non-blocking client connection. See the module docs for ownership.
#[derive(Debug)]
pub struct ClientConn {
    socket: Socket,
    state: ConnState,
    handshake: ClientHandshake,
    started: Instant,
    /// Bytes received but not yet consumed (a partial head or frame). Empty most of the time.
    pending: Vec<u8>,
    /// Bytes queued for sending; `out[out_sent_bytes..]` is still unsent.
    out: Vec<u8>,
    /// INVARIANT: `out_sent_bytes <= out.len()`.
    out_sent_bytes: usize,
    /// Reassembly of a fragmented data message: its opcode and the bytes so far.
    message: Option<(Opcode, Vec<u8>)>,
    close_received: bool,
    close_sent: bool,
    rng: SplitMix64,
}

impl ClientConn {
    /// Creates a non-blocking socket, optionally binds it to `source` (port 0), starts the
    /// connect and queues the upgrade request. Errors come from `socket`/`bind`/`connect`.
    pub fn connect(
        target: SocketAddr,
        source: Option<IpAddr>,
        url: &WsUrl,
        seed: u64,
        now: Instant,
    ) -> io::Result<Self> {
        let socket = Socket::new(
            Domain::for_address(target),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        if let Some(ip) = source {
            // Without IP_BIND_ADDRESS_NO_PORT (not in socket2 or rustix, and libc needs unsafe),
            // bind picks the port now, so each source address gives at most the ephemeral range.
            socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
        }
        socket.set_tcp_nodelay(true)?;
        match socket.connect(&SockAddr::from(target)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(Errno::INPROGRESS.raw_os_error()) => {}
            Err(e) => return Err(e),
        }
        let mut rng = SplitMix64::new(seed);
        let handshake = ClientHandshake::new(rng.nonce());
        let mut out = Vec::with_capacity(256);
        handshake.write_request(url, &mut out);
        Ok(Self {
            socket,
            state: ConnState::Connecting,
            handshake,
            started: now,
            pending: Vec::new(),
            out,
            out_sent_bytes: 0,
            message: None,
            close_received: false,
            close_sent: false,
            rng,
        })
    }

    /// The socket, for registering with the event loop.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Current state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// When the connect started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Bytes queued but not yet accepted by the kernel.
    pub fn unsent_bytes(&self) -> usize {
        self.out.len() - self.out_sent_bytes
    }

    /// Handles readiness: completes the connect, flushes queued bytes, reads and parses.
    /// `scratch` is the worker's shared read buffer (its contents are overwritten).
    pub fn handle_ready(
        &mut self,
        ready: Readiness,
        now: Instant,
        scratch: &mut Vec<u8>,
        sink: &mut impl FnMut(ConnEvent<'_>),
    ) {
        if self.state == ConnState::Connecting {
            if !ready.writable && !ready.readable {
                return;
            }
            match self.socket.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail(FailReason::from_io(&e), sink),
            }
            if !ready.writable {
                // Woken without an error or writability: the connect is still in progress.
                return;
            }
            self.state = ConnState::Handshaking;
        }
        if (ready.writable || self.unsent_bytes() > 0)
            && let Err(reason) = self.flush()
        {
            return self.fail(reason, sink);
        }
        if ready.readable {
            self.read_all(now, scratch, sink);
        }
    }

    /// Queues a masked data or control frame and tries to send it. Only while `Open`.
    pub fn send_frame(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), FailReason> {
        debug_assert_eq!(self.state, ConnState::Open, "send_frame outside Open");
        let mask = self.rng.mask();
        frame::encode_client_frame(opcode, payload, mask, &mut self.out);
        self.flush()
    }

    /// Queues a masked data frame without sending it, so a batch goes out in one `send`; call
    /// [`ClientConn::flush_queued`] after the batch. Only while `Open`.
    pub fn queue_frame(&mut self, opcode: Opcode, payload: &[u8]) {
        debug_assert_eq!(self.state, ConnState::Open, "queue_frame outside Open");
        let mask = self.rng.mask();
        frame::encode_client_frame(opcode, payload, mask, &mut self.out);
    }

    /// Sends queued bytes until done or the socket would block (the rest goes out on the next
    /// writable readiness).
    pub fn flush_queued(&mut self) -> Result<(), FailReason> {
        self.flush()
    }

    /// Starts the closing handshake (RFC 6455 §7.1.2) with `code`. Returns false when the
    /// connection is not open (nothing to do).
    pub fn start_close(&mut self, code: u16, sink: &mut impl FnMut(ConnEvent<'_>)) -> bool {
        if self.state != ConnState::Open {
            return false;
        }
        self.state = ConnState::Closing;
        self.close_sent = true;
        let mask = self.rng.mask();
        frame::encode_client_frame(Opcode::Close, &code.to_be_bytes(), mask, &mut self.out);
        if let Err(reason) = self.flush() {
            self.fail(reason, sink);
        }
        true
    }

    /// Ends a connection that ran out of time: a handshake timeout or a close that the server
    /// never finished. Reports `Failed(Timeout)` before the upgrade, `Closed` after it.
    pub fn expire(&mut self, sink: &mut impl FnMut(ConnEvent<'_>)) {
        match self.state {
            ConnState::Connecting | ConnState::Handshaking => self.fail(FailReason::Timeout, sink),
            ConnState::Open | ConnState::Closing => {
                self.state = ConnState::Done;
                sink(ConnEvent::Closed { clean: false });
            }
            ConnState::Done => {}
        }
    }

    fn fail(&mut self, reason: FailReason, sink: &mut impl FnMut(ConnEvent<'_>)) {
        let upgraded = matches!(self.state, ConnState::Open | ConnState::Closing);
        self.state = ConnState::Done;
        if upgraded && matches!(reason, FailReason::Reset) {
            sink(ConnEvent::Closed { clean: false });
        } else {
            sink(ConnEvent::Failed(reason));
        }
    }

    /// Sends queued bytes until done or the socket would block.
    fn flush(&mut self) -> Result<(), FailReason> {
        while self.out_sent_bytes < self.out.len() {
            match rustix::net::send(
                &self.socket,
                &self.out[self.out_sent_bytes..],
                SendFlags::NOSIGNAL,
            ) {
                Ok(n) => self.out_sent_bytes += n,
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(e) => return Err(FailReason::from_io(&e.into())),
            }
        }
        self.out.clear();
        self.out_sent_bytes = 0;
        Ok(())
    }

    /// Reads until the socket would block (edge-triggered readiness needs a full drain).
    fn read_all(
        &mut self,
        now: Instant,
        scratch: &mut Vec<u8>,
        sink: &mut impl FnMut(ConnEvent<'_>),
    ) {
        loop {
            scratch.clear();
            scratch.reserve(READ_CHUNK_BYTES);
            match rustix::net::recv(&self.socket, spare_capacity(scratch), RecvFlags::empty()) {
                Ok((0, _)) => return self.handle_eof(sink),
                Ok(_) => {}
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) => continue,
                Err(e) => return self.fail(FailReason::from_io(&e.into()), sink),
            }
            let result = if self.pending.is_empty() {
                let consumed = self.consume(scratch, now, sink);
                consumed.map(|n| self.pending.extend_from_slice(&scratch[n..]))
            } else {
                self.pending.extend_from_slice(scratch);
                let mut pending = std::mem::take(&mut self.pending);
                let consumed = self.consume(&pending, now, sink);
                consumed.map(|n| {
                    pending.drain(..n);
                    self.pending = pending;
                })
            };
            if let Err(reason) = result {
                return self.fail(reason, sink);
            }
            if let Err(reason) = self.flush() {
                return self.fail(reason, sink);
            }
            if self.state == ConnState::Done {
                return;
            }
        }
    }

    fn handle_eof(&mut self, sink: &mut impl FnMut(ConnEvent<'_>)) {
        match self.state {
            ConnState::Connecting | ConnState::Handshaking => self.fail(FailReason::Reset, sink),
            ConnState::Open | ConnState::Closing => {
                self.state = ConnState::Done;
                sink(ConnEvent::Closed {
                    clean: self.close_sent && self.close_received,
                });
            }
            ConnState::Done => {}
        }
    }

    /// Consumes complete units (the response head, then whole frames) from `data`; returns the
    /// bytes consumed. A trailing partial unit is left for the next read.
    fn consume(
        &mut self,
        data: &[u8],
        now: Instant,
        sink: &mut impl FnMut(ConnEvent<'_>),
    ) -> Result<usize, FailReason> {
        let mut at = 0;
        if self.state == ConnState::Handshaking {
            match self.handshake.parse_response(data)? {
                None => return Ok(0),
                Some(head_bytes) => {
                    at = head_bytes;
                    self.state = ConnState::Open;
                    sink(ConnEvent::Opened {
                        latency: now.saturating_duration_since(self.started),
                    });
                }
            }
        }
        while matches!(self.state, ConnState::Open | ConnState::Closing) {
            let Some(header) = frame::decode_header(&data[at..])? else {
                break;
            };
            // RFC 6455 §5.1: a client must close on a masked frame from the server.
            if header.mask.is_some() {
                return Err(FailReason::Protocol("masked server frame".to_owned()));
            }
            if header.payload_bytes > FRAME_PAYLOAD_BYTES_MAX {
                return Err(FailReason::Protocol(format!(
                    "frame payload {} bytes over {FRAME_PAYLOAD_BYTES_MAX}",
                    header.payload_bytes
                )));
            }
            // In bounds: payload_bytes <= FRAME_PAYLOAD_BYTES_MAX fits in usize.
            let end = at + header.header_bytes + header.payload_bytes as usize;
            if data.len() < end {
                break;
            }
            let payload = &data[at + header.header_bytes..end];
            at = end;
            self.handle_frame(header.fin, header.opcode, payload, sink)?;
        }
        Ok(at)
    }

    fn handle_frame(
        &mut self,
        fin: bool,
        opcode: Opcode,
        payload: &[u8],
        sink: &mut impl FnMut(ConnEvent<'_>),
    ) -> Result<(), FailReason> {
        match opcode {
            Opcode::Ping => {
                // RFC 6455 §5.5.3: answer with a Pong carrying the same payload, unless closing.
                if !self.close_sent {
                    let mask = self.rng.mask();
                    frame::encode_client_frame(Opcode::Pong, payload, mask, &mut self.out);
                }
            }
            Opcode::Pong => {}
            Opcode::Close => {
                if payload.len() == 1 {
                    return Err(FailReason::Protocol("close payload of 1 byte".to_owned()));
                }
                let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                self.close_received = true;
                sink(ConnEvent::PeerClose { code });
                if !self.close_sent {
                    // RFC 6455 §5.5.1: echo the status code in our Close.
                    self.close_sent = true;
                    let mask = self.rng.mask();
                    let body = code.map(u16::to_be_bytes);
                    let body: &[u8] = body.as_ref().map_or(&[], |b| b.as_slice());
                    frame::encode_client_frame(Opcode::Close, body, mask, &mut self.out);
                }
                self.state = ConnState::Closing;
            }
            Opcode::Text | Opcode::Binary => {
                if self.message.is_some() {
                    return Err(FailReason::Protocol(
                        "new data frame inside a fragmented message".to_owned(),
                    ));
                }
                if fin {
                    sink(ConnEvent::Message { opcode, payload });
                } else {
                    self.message = Some((opcode, payload.to_vec()));
                }
            }
            Opcode::Continuation => {
                let Some((first, mut bytes)) = self.message.take() else {
                    return Err(FailReason::Protocol(
                        "continuation without a message".to_owned(),
                    ));
                };
                if bytes.len() + payload.len() > MESSAGE_BYTES_MAX {
                    return Err(FailReason::Protocol(format!(
                        "message over {MESSAGE_BYTES_MAX} bytes"
                    )));
                }
                bytes.extend_from_slice(payload);
                if fin {
                    sink(ConnEvent::Message {
                        opcode: first,
                        payload: &bytes,
                    });
                } else {
                    self.message = Some((first, bytes));
                }
            }
        }
        Ok(())
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): masks and handshake nonces. Masks need only be
/// unpredictable to scripts in a browser (RFC 6455 §10.3); a benchmark needs them cheap.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded from `/dev/urandom`, or from the clock if that cannot be read.
    pub fn from_entropy() -> Self {
        use std::io::Read as _;
        let mut bytes = [0u8; 8];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
        if read.is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = nanos.to_le_bytes();
        }
        Self(u64::from_le_bytes(bytes))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A 4-byte masking key.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }

    /// A 16-byte handshake nonce.
    pub fn nonce(&mut self) -> [u8; 16] {
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        nonce[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        nonce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> ClientHandshake {
        // RFC 6455 §1.3 example nonce: key "dGhlIHNhbXBsZSBub25jZQ==".
        ClientHandshake::new(*b"the sample nonce")
    }

    fn response(accept: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn rfc_6455_sample_key_has_the_sample_accept() {
        let hs = handshake();
        assert_eq!(hs.key(), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept_for_key(hs.key()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn request_carries_key_version_and_host() {
        let mut out = Vec::new();
        let url = WsUrl::parse("ws://127.0.0.1:6001/echo?x=1").unwrap();
        handshake().write_request(&url, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /echo?x=1 HTTP/1.1\r\nHost: 127.0.0.1:6001\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn response_split_at_every_byte_completes_only_at_the_end() {
        let hs = handshake();
        let mut bytes = response("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let head_bytes = bytes.len();
        bytes.extend_from_slice(&[0x81, 0x00]); // a frame right behind the head
        for cut in 0..head_bytes {
            assert_eq!(hs.parse_response(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(hs.parse_response(&bytes), Ok(Some(head_bytes)));
    }

    #[test]
    fn wrong_accept_is_rejected() {
        let hs = handshake();
        assert_eq!(
            hs.parse_response(&response("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
            Err(HandshakeError::WrongAccept)
        );
    }

    #[test]
    fn non_101_status_reports_the_code() {
        let hs = handshake();
        let err =
            hs.parse_response(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(err, Err(HandshakeError::BadStatus(503)));
        assert_eq!(
            FailReason::from(HandshakeError::BadStatus(503)),
            FailReason::BadStatus(503)
        );
    }

    #[test]
    fn missing_upgrade_headers_are_rejected() {
        let hs = handshake();
        let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        let no_upgrade = format!(
            "HTTP/1.1 101 OK\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        assert_eq!(
            hs.parse_response(no_upgrade.as_bytes()),
            Err(HandshakeError::MissingUpgrade)
        );
        let no_connection = format!(
            "HTTP/1.1 101 OK\r\nUpgrade: WebSocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        assert_eq!(
            hs.parse_response(no_connection.as_bytes()),
            Err(HandshakeError::MissingConnectionUpgrade)
        );
        let token_list = format!(
            "HTTP/1.1 101 OK\r\nUpgrade: WebSocket\r\nConnection: keep-alive, upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        assert!(hs.parse_response(token_list.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn endless_or_garbage_heads_are_rejected() {
        let hs = handshake();
        let mut endless = b"HTTP/1.1 101 OK\r\nX-Pad: ".to_vec();
        endless.resize(RESPONSE_HEAD_BYTES_MAX + 1, b'a');
        assert!(matches!(
            hs.parse_response(&endless),
            Err(HandshakeError::HeadTooLong {
                limit: RESPONSE_HEAD_BYTES_MAX,
                ..
            })
        ));
        assert!(matches!(
            hs.parse_response(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(HandshakeError::Malformed(_))
        ));
    }

    #[test]
    fn socket_errors_map_to_report_reasons() {
        let of = |errno: Errno| FailReason::from_io(&io::Error::from(errno));
        assert_eq!(of(Errno::CONNREFUSED), FailReason::Refused);
        assert_eq!(of(Errno::MFILE), FailReason::FileLimit);
        assert_eq!(of(Errno::NFILE), FailReason::FileLimit);
        assert_eq!(of(Errno::ADDRNOTAVAIL), FailReason::AddrUnavailable);
        assert_eq!(of(Errno::CONNRESET), FailReason::Reset);
        assert!(matches!(of(Errno::ACCESS), FailReason::Io(_)));
    }

    #[test]
    fn nonces_differ_between_draws() {
        let mut rng = SplitMix64::new(1);
        assert_ne!(rng.nonce(), rng.nonce());
        assert_ne!(SplitMix64::from_entropy().next_u64(), 0);
    }
}
