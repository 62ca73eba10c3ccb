//! HTTP/1.1 request heads and responses, sans-IO: owns parsing a request head in place, framing
//! its body length and writing responses; it must never read a socket, buffer a body or allocate
//! per header.
//!
//! The port speaks HTTP/1.1 before any WebSocket upgrade (RFC 6455 §4.1) and later serves POST
//! endpoints, so this is a small general parser. Call contract:
//!
//! - The caller owns the read buffer and an array of [`HEADER_COUNT_CEILING`]
//!   [`httparse::EMPTY_HEADER`]s on its stack, and calls [`parse_head`] with whatever bytes have
//!   arrived. `Ok(None)` means "wait for more bytes"; an error maps to a status through
//!   [`HttpError::status`], after which the caller answers and closes.
//! - A complete head says how many bytes it used ([`RequestHead::head_len`]) and how many body
//!   bytes follow it ([`RequestHead::content_length`]). Pipelining is the caller's job: the next
//!   request starts at `head_len + content_length`.

/// Size of the header array callers keep on their stack; [`HttpLimits::header_count_max`] must
/// not exceed it.
pub const HEADER_COUNT_CEILING: usize = 128;

/// Bounds on one request. Every bound is enforced before the bytes it guards are accepted.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Bytes of the whole request head, request line and final CRLFCRLF included. Default 8192,
    /// what nginx and most proxies allow per header buffer; a browser upgrade is about 500 bytes.
    /// Hit: [`HttpError::HeadTooLarge`] (431), answer and close.
    pub header_bytes_max: usize,
    /// Number of header fields. Default 64; must be at most [`HEADER_COUNT_CEILING`]. Browsers
    /// send 10 to 20. Hit: [`HttpError::TooManyHeaders`] (431), answer and close.
    pub header_count_max: usize,
    /// Bytes of a request body, as declared by `Content-Length`. Default 1 MiB, room for a batch
    /// of publish events. Hit: [`HttpError::BodyTooLarge`] (413), answer and close.
    pub body_bytes_max: usize,
}

impl HttpLimits {
    /// The defaults documented on each field.
    pub const DEFAULT: Self = Self {
        header_bytes_max: 8192,
        header_count_max: 64,
        body_bytes_max: 1024 * 1024,
    };
}

const _: () = assert!(HttpLimits::DEFAULT.header_count_max <= HEADER_COUNT_CEILING);

impl Default for HttpLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a request head was refused. Each variant maps to one status in [`HttpError::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head is longer than the limit, or more than the limit arrived without its end.
    #[error("request head exceeds {max} bytes")]
    HeadTooLarge { max: usize },
    /// The head has more header fields than the limit.
    #[error("request head has more than {max} header fields")]
    TooManyHeaders { max: usize },
    /// The bytes are not an HTTP/1.x request head.
    #[error("malformed request head")]
    Malformed,
    /// The request line names an HTTP version other than 1.0 or 1.1.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// The request has a `Transfer-Encoding`; only `Content-Length` bodies are accepted.
    #[error("Transfer-Encoding is not supported, send Content-Length")]
    ChunkedBodyUnsupported,
    /// `Content-Length` is not a decimal number, or repeated with differing values.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// The declared body is longer than the limit.
    #[error("body of {len} bytes exceeds {max} bytes")]
    BodyTooLarge { len: u64, max: usize },
}

impl HttpError {
    /// The HTTP status that answers this error; the only such mapping.
    pub fn status(&self) -> u16 {
        match self {
            // RFC 6585 §5: 431 Request Header Fields Too Large.
            Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } => 431,
            Self::Malformed | Self::InvalidContentLength => 400,
            // RFC 9110 §15.6.6: 505 HTTP Version Not Supported.
            Self::UnsupportedVersion => 505,
            // RFC 9112 §6.3: a server MAY reject a request with a body but no Content-Length
            // with 411 Length Required.
            Self::ChunkedBodyUnsupported => 411,
            Self::BodyTooLarge { .. } => 413,
        }
    }
}

/// A parsed request head, borrowing the caller's buffer (`'b`) and header array (`'h`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead<'h, 'b> {
    /// The method token, case-sensitive (RFC 9110 §9.1).
    pub method: &'b str,
    /// The request target up to the first `?`.
    pub path: &'b str,
    /// The request target after the first `?`, if there is one.
    pub query: Option<&'b str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The header fields in arrival order, names as sent.
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of the head, the final CRLFCRLF included; the body starts here.
    pub head_len: usize,
    /// Bytes of body after the head: 0 when absent, at most [`HttpLimits::body_bytes_max`].
    pub content_length: usize,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

impl<'b> RequestHead<'_, 'b> {
    /// The value of the first header field called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    }

    /// Whether any header field called `name` lists `token` in its comma-separated value;
    /// names and tokens compared case-insensitively, list members trimmed.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        // RFC 9110 §5.3: repeated fields of a list type combine into one comma-separated list,
        // so every field with this name is searched.
        self.headers
            .iter()
            .filter(|header| header.name.eq_ignore_ascii_case(name))
            .flat_map(|header| header.value.split(|&b| b == b','))
            .any(|member| member.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }

    /// How many header fields are called `name`, compared case-insensitively.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|header| header.name.eq_ignore_ascii_case(name))
            .count()
    }
}

/// Parses the request head at the start of `buf` in place.
///
/// Returns `Ok(None)` while the head is incomplete and within limits. `headers` is the caller's
/// storage; only its first `limits.header_count_max` entries are used. Bytes after the head (a
/// body, a pipelined request, a WebSocket frame) are not read.
pub fn parse_head<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    limits: &HttpLimits,
) -> Result<Option<RequestHead<'h, 'b>>, HttpError> {
    debug_assert!(limits.header_count_max <= HEADER_COUNT_CEILING);
    debug_assert!(limits.header_count_max <= headers.len());
    let header_count_max = limits.header_count_max.min(headers.len());

    // Parsing at most `header_bytes_max` bytes gives the same answer for every split of the
    // input: a head that fits is found whole, and one that does not is refused as soon as one
    // byte past the limit has arrived.
    let window = &buf[..buf.len().min(limits.header_bytes_max)];
    let mut request = httparse::Request::new(&mut headers[..header_count_max]);
    let head_len = match request.parse(window) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) if buf.len() > limits.header_bytes_max => {
            return Err(HttpError::HeadTooLarge {
                max: limits.header_bytes_max,
            });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::TooManyHeaders {
                max: header_count_max,
            });
        }
        Err(httparse::Error::Version) => return Err(classify_version_error(window)),
        Err(_) => return Err(HttpError::Malformed),
    };

    // A complete parse sets all three; a missing one would be an httparse bug, not a peer error,
    // but answering 400 costs nothing.
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HttpError::Malformed);
    };
    // RFC 9112 §2.3: only HTTP/1.0 and HTTP/1.1 are spoken here. httparse parses nothing else,
    // this guards against that changing.
    if minor_version > 1 {
        return Err(HttpError::UnsupportedVersion);
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };

    let mut head = RequestHead {
        method,
        path,
        query,
        minor_version,
        headers: request.headers,
        head_len,
        content_length: 0,
        keep_alive: false,
    };
    // RFC 9112 §3.2: a request with more than one Host field line MUST get a 400; two hosts would
    // let a proxy and this server route the same request differently. A missing Host is the
    // caller's to judge (the handshake answers it with its own error).
    if head.header_count("host") > 1 {
        return Err(HttpError::Malformed);
    }
    // RFC 9112 §6.1: a server that receives a Transfer-Encoding it does not understand SHOULD
    // answer 501; chunked is understood but not supported yet, so ask for a length instead.
    if head.header("transfer-encoding").is_some() {
        return Err(HttpError::ChunkedBodyUnsupported);
    }
    head.content_length = content_length(&head, limits)?;
    head.keep_alive = if minor_version == 1 {
        // RFC 9112 §9.3: HTTP/1.1 connections persist unless `close` is sent.
        !head.header_has_token("connection", "close")
    } else {
        // RFC 9112 §9.3: HTTP/1.0 connections persist only when `keep-alive` is sent.
        head.header_has_token("connection", "keep-alive")
            && !head.header_has_token("connection", "close")
    };
    Ok(Some(head))
}

/// Writes a complete response to `out`: status line with the standard reason phrase,
/// `Content-Length`, `Connection: keep-alive|close`, `extra_headers` in order, a blank line and
/// `body`.
///
/// Header names and values come from server code, never from the peer; they must not contain CR
/// or LF.
pub fn write_response(
    status: u16,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write_response_with_connection(status, connection, extra_headers, body, out);
}

/// The standard reason phrase for `status` (RFC 9110 §15), or `""` for an unknown status, which
/// RFC 9112 §4 allows.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Fuzz entry point: parses arbitrary bytes as pipelined requests under limits chosen by the
/// first bytes, checks that every split gives the same answer, and writes responses. Never
/// panics unless an invariant is broken.
#[cfg(any(fuzzing, test))]
pub fn fuzz_http_request(data: &[u8]) {
    let Some((limits, input)) = fuzz_limits(data) else {
        return;
    };
    check_splits(input, &limits);
    let mut offset = 0;
    let mut out = Vec::new();
    // Each request uses at least one byte, so this loop is bounded by the input length.
    while offset < input.len() {
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        match parse_head(&input[offset..], &mut headers, &limits) {
            Ok(Some(head)) => {
                assert!(head.head_len > 0);
                assert!(head.content_length <= limits.body_bytes_max);
                assert!(head.headers.len() <= limits.header_count_max);
                assert!(head.head_len <= limits.header_bytes_max);
                let _ = head.header("host");
                let _ = head.header_has_token("connection", "upgrade");
                out.clear();
                write_response(
                    200,
                    &[("Content-Type", "text/plain")],
                    b"ok",
                    true,
                    &mut out,
                );
                check_response(&out);
                offset += head.head_len + head.content_length;
            }
            Ok(None) => break,
            Err(err) => {
                out.clear();
                write_response(
                    err.status(),
                    &[],
                    err.to_string().as_bytes(),
                    false,
                    &mut out,
                );
                check_response(&out);
                break;
            }
        }
    }
}

/// Writes a response whose `Connection` header is `connection`; 426 responses need
/// `upgrade, close` there.
pub(crate) fn write_response_with_connection(
    status: u16,
    connection: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    out: &mut Vec<u8>,
) {
    debug_assert!((100..1000).contains(&status));
    // RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF.
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\nConnection: ");
    out.extend_from_slice(connection.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in extra_headers {
        debug_assert!(!name.contains(['\r', '\n', ':']) && !value.contains(['\r', '\n']));
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Appends `value` in decimal without going through `fmt`.
fn push_decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Tells a well-formed but unsupported version (`HTTP/2.0`, `HTTP/3`) from garbage after an
/// httparse version error.
fn classify_version_error(window: &[u8]) -> HttpError {
    // httparse skips empty lines before the request line (RFC 9112 §2.2), so do the same.
    let start = window
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(window.len());
    let line = &window[start..];
    let line_end = line
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(line.len());
    // RFC 9112 §3: request-line = method SP request-target SP HTTP-version; neither method nor
    // target holds a space, so the version is the third space-separated piece. Only the bytes up
    // to where httparse stopped matter, which keeps the answer the same for every split.
    let version = line[..line_end].split(|&b| b == b' ').nth(2).unwrap_or(&[]);
    // RFC 9112 §2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT.
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, ..] if major.is_ascii_digit() => {
            HttpError::UnsupportedVersion
        }
        _ => HttpError::Malformed,
    }
}

/// The body length declared by `head`, checked against `limits`.
fn content_length(head: &RequestHead<'_, '_>, limits: &HttpLimits) -> Result<usize, HttpError> {
    let mut declared: Option<u64> = None;
    let values = head
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("content-length"))
        .flat_map(|header| header.value.split(|&b| b == b','));
    for value in values {
        // RFC 9110 §8.6: Content-Length = 1*DIGIT. A recipient MAY accept a list or repeated
        // fields of one identical value; differing values are an unrecoverable framing error.
        let len = parse_decimal(value.trim_ascii()).ok_or(HttpError::InvalidContentLength)?;
        match declared {
            Some(previous) if previous != len => return Err(HttpError::InvalidContentLength),
            _ => declared = Some(len),
        }
    }
    let len = declared.unwrap_or(0);
    match usize::try_from(len) {
        Ok(len) if len <= limits.body_bytes_max => Ok(len),
        _ => Err(HttpError::BodyTooLarge {
            len,
            max: limits.body_bytes_max,
        }),
    }
}

/// Parses `1*DIGIT` into a `u64`; `None` when empty, not all digits, or overflowing.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Splits fuzz input into limits (from the first three bytes) and the request bytes. Small
/// limits let short inputs reach every limit.
#[cfg(any(fuzzing, test))]
pub(crate) fn fuzz_limits(data: &[u8]) -> Option<(HttpLimits, &[u8])> {
    let ([head_byte, count_byte, body_byte], input) = data.split_first_chunk::<3>()?;
    let limits = HttpLimits {
        header_bytes_max: 16 + usize::from(*head_byte) * 4,
        header_count_max: usize::from(*count_byte) % (HEADER_COUNT_CEILING + 1),
        body_bytes_max: usize::from(*body_byte) * 16,
    };
    Some((limits, input))
}

/// Asserts that feeding `input` one prefix at a time never changes an answer once given: every
/// prefix is `Ok(None)` until one is not, and every longer prefix then gives that same answer.
#[cfg(any(fuzzing, test))]
pub(crate) fn check_splits(input: &[u8], limits: &HttpLimits) {
    // Bounded so one fuzz input costs at most about a million parsed bytes.
    const SPLIT_BYTES_MAX: usize = 1024;
    let input = &input[..input.len().min(SPLIT_BYTES_MAX)];
    let mut full_headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
    let full = parse_head(input, &mut full_headers, limits);
    let mut answered = false;
    for split in 0..=input.len() {
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        let partial = parse_head(&input[..split], &mut headers, limits);
        match partial {
            Ok(None) => assert!(!answered, "an answer was taken back at split {split}"),
            answer => {
                answered = true;
                assert_eq!(answer, full, "split {split} disagrees with the whole input");
            }
        }
    }
}

/// Asserts that `out` is one complete response whose Content-Length matches its body.
#[cfg(any(fuzzing, test))]
pub(crate) fn check_response(out: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let status = response.parse(out).expect("a written response parses");
    let httparse::Status::Complete(head_len) = status else {
        panic!("a written response is complete");
    };
    let content_length = response
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("content-length"))
        .and_then(|header| parse_decimal(header.value))
        .expect("a written response has a Content-Length");
    assert_eq!(out.len() - head_len, content_length as usize);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL_LIMITS: HttpLimits = HttpLimits {
        header_bytes_max: 256,
        header_count_max: 4,
        body_bytes_max: 100,
    };

    /// Feeds `input` one prefix at a time and returns the length of the first prefix that gets
    /// an answer, after asserting that every longer prefix gives the same answer.
    fn first_answer_split(input: &[u8], limits: &HttpLimits) -> Option<usize> {
        check_splits(input, limits);
        (0..=input.len()).find(|&split| {
            let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
            !matches!(parse_head(&input[..split], &mut headers, limits), Ok(None))
        })
    }

    /// Parses the whole of `input` and runs `check` on the answer, after checking every split:
    /// a complete head is answered exactly when its last byte arrives.
    fn parse_all_splits(
        input: &[u8],
        limits: &HttpLimits,
        check: impl FnOnce(Result<Option<RequestHead<'_, '_>>, HttpError>),
    ) {
        let answer_split = first_answer_split(input, limits);
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        let answer = parse_head(input, &mut headers, limits);
        if let Ok(Some(head)) = &answer {
            assert_eq!(
                answer_split,
                Some(head.head_len),
                "answered before the head ended"
            );
        }
        check(answer);
    }

    /// A request of exactly `len` bytes, padded with one `X-Pad` header.
    fn request_of_len(len: usize) -> Vec<u8> {
        let mut request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        let pad = len - request.len() - 4;
        request.extend(std::iter::repeat_n(b'p', pad));
        request.extend_from_slice(b"\r\n\r\n");
        assert_eq!(request.len(), len);
        request
    }

    #[test]
    fn rejected_heads_map_to_their_status_at_every_split() {
        let cases: &[(&str, &[u8], HttpError, u16)] = &[
            (
                "garbage",
                b"\x00\x01 nonsense\r\n\r\n",
                HttpError::Malformed,
                400,
            ),
            (
                "space in header name",
                b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
                HttpError::Malformed,
                400,
            ),
            (
                "lowercase version",
                b"GET / http/1.1\r\n\r\n",
                HttpError::Malformed,
                400,
            ),
            (
                "http/2 version",
                b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
                HttpError::UnsupportedVersion,
                505,
            ),
            (
                "http/2 preface",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                HttpError::UnsupportedVersion,
                505,
            ),
            (
                "http/1.2",
                b"GET / HTTP/1.2\r\n\r\n",
                HttpError::UnsupportedVersion,
                505,
            ),
            (
                "chunked",
                b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                HttpError::ChunkedBodyUnsupported,
                411,
            ),
            (
                "two host lines",
                b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
                HttpError::Malformed,
                400,
            ),
            (
                "transfer-encoding with content-length",
                b"POST /p HTTP/1.1\r\nContent-Length: 3\r\ntransfer-encoding: gzip\r\n\r\n",
                HttpError::ChunkedBodyUnsupported,
                411,
            ),
            (
                "body over the limit",
                b"POST /p HTTP/1.1\r\nContent-Length: 101\r\n\r\n",
                HttpError::BodyTooLarge { len: 101, max: 100 },
                413,
            ),
            (
                "body length overflowing usize-sized limits",
                b"POST /p HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n",
                HttpError::BodyTooLarge {
                    len: u64::MAX,
                    max: 100,
                },
                413,
            ),
            (
                "content-length overflowing u64",
                b"POST /p HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
                HttpError::InvalidContentLength,
                400,
            ),
            (
                "non-numeric content-length",
                b"POST /p HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
                HttpError::InvalidContentLength,
                400,
            ),
            (
                "signed content-length",
                b"POST /p HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
                HttpError::InvalidContentLength,
                400,
            ),
            (
                "empty content-length",
                b"POST /p HTTP/1.1\r\nContent-Length: \r\n\r\n",
                HttpError::InvalidContentLength,
                400,
            ),
            (
                "duplicate differing content-length",
                b"POST /p HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n",
                HttpError::InvalidContentLength,
                400,
            ),
            (
                "differing content-length list",
                b"POST /p HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
                HttpError::InvalidContentLength,
                400,
            ),
            (
                "five headers over a limit of four",
                b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n",
                HttpError::TooManyHeaders { max: 4 },
                431,
            ),
        ];
        for (name, request, expected, status) in cases {
            parse_all_splits(request, &SMALL_LIMITS, |answer| {
                assert_eq!(answer, Err(expected.clone()), "{name}");
            });
            assert_eq!(expected.status(), *status, "{name}");
        }
    }

    #[test]
    fn accepted_heads_parse_the_same_at_every_split() {
        // (request, method, path, query, minor_version, content_length, keep_alive)
        type Case<'a> = (&'a [u8], &'a str, &'a str, Option<&'a str>, u8, usize, bool);
        let cases: &[Case<'_>] = &[
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                "GET",
                "/",
                None,
                1,
                0,
                true,
            ),
            (
                b"GET /a?b=c?d HTTP/1.1\r\n\r\n",
                "GET",
                "/a",
                Some("b=c?d"),
                1,
                0,
                true,
            ),
            (
                b"GET /a? HTTP/1.1\r\n\r\n",
                "GET",
                "/a",
                Some(""),
                1,
                0,
                true,
            ),
            (
                b"POST /p HTTP/1.1\r\nContent-Length: 100\r\n\r\n",
                "POST",
                "/p",
                None,
                1,
                100,
                true,
            ),
            (
                b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                "POST",
                "/p",
                None,
                1,
                5,
                true,
            ),
            (
                b"POST /p HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
                "POST",
                "/p",
                None,
                1,
                5,
                true,
            ),
            (
                b"POST /p HTTP/1.1\r\nContent-Length: 007\r\n\r\n",
                "POST",
                "/p",
                None,
                1,
                7,
                true,
            ),
            (
                b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
                "GET",
                "/",
                None,
                1,
                0,
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n",
                "GET",
                "/",
                None,
                1,
                0,
                false,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", "GET", "/", None, 0, 0, false),
            (
                b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                "GET",
                "/",
                None,
                0,
                0,
                true,
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
                "GET",
                "/",
                None,
                0,
                0,
                false,
            ),
            (b"\r\nGET / HTTP/1.1\r\n\r\n", "GET", "/", None, 1, 0, true),
            (b"GET / HTTP/1.1\nHost: a\n\n", "GET", "/", None, 1, 0, true),
            (
                b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
                "GET",
                "/",
                None,
                1,
                0,
                true,
            ),
        ];
        for &(request, method, path, query, minor_version, content_length, keep_alive) in cases {
            parse_all_splits(request, &SMALL_LIMITS, |answer| {
                let head = answer.expect("accepted").expect("complete");
                let name = String::from_utf8_lossy(request);
                assert_eq!(head.method, method, "{name}");
                assert_eq!(head.path, path, "{name}");
                assert_eq!(head.query, query, "{name}");
                assert_eq!(head.minor_version, minor_version, "{name}");
                assert_eq!(head.head_len, request.len(), "{name}");
                assert_eq!(head.content_length, content_length, "{name}");
                assert_eq!(head.keep_alive, keep_alive, "{name}");
            });
        }
    }

    #[test]
    fn head_exactly_at_header_bytes_max_is_accepted() {
        let request = request_of_len(SMALL_LIMITS.header_bytes_max);
        parse_all_splits(&request, &SMALL_LIMITS, |answer| {
            assert_eq!(
                answer.unwrap().unwrap().head_len,
                SMALL_LIMITS.header_bytes_max
            );
        });
    }

    #[test]
    fn head_one_byte_past_header_bytes_max_is_431() {
        let request = request_of_len(SMALL_LIMITS.header_bytes_max + 1);
        let expected = HttpError::HeadTooLarge {
            max: SMALL_LIMITS.header_bytes_max,
        };
        parse_all_splits(&request, &SMALL_LIMITS, |answer| {
            assert_eq!(answer, Err(expected.clone()));
        });
        assert_eq!(expected.status(), 431);
        // The refusal comes as soon as one byte past the limit arrives, not at the head's end.
        assert_eq!(
            first_answer_split(&request, &SMALL_LIMITS),
            Some(SMALL_LIMITS.header_bytes_max + 1)
        );
    }

    #[test]
    fn default_limits_accept_8192_byte_head_and_refuse_8193() {
        let limits = HttpLimits::default();
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        let at_max = request_of_len(8192);
        assert_eq!(
            parse_head(&at_max, &mut headers, &limits)
                .unwrap()
                .unwrap()
                .head_len,
            8192
        );
        let past_max = request_of_len(8193);
        assert_eq!(
            parse_head(&past_max, &mut headers, &limits),
            Err(HttpError::HeadTooLarge { max: 8192 })
        );
    }

    #[test]
    fn unfinished_head_longer_than_max_is_431() {
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        let mut request = b"GET /".to_vec();
        request.resize(SMALL_LIMITS.header_bytes_max, b'a');
        assert_eq!(parse_head(&request, &mut headers, &SMALL_LIMITS), Ok(None));
        request.push(b'a');
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        assert_eq!(
            parse_head(&request, &mut headers, &SMALL_LIMITS),
            Err(HttpError::HeadTooLarge { max: 256 })
        );
    }

    #[test]
    fn default_header_count_max_of_64_is_inclusive() {
        let limits = HttpLimits::default();
        let request_with = |count: usize| {
            let mut request = b"GET / HTTP/1.1\r\n".to_vec();
            for index in 0..count {
                request.extend_from_slice(format!("X-H{index}: v\r\n").as_bytes());
            }
            request.extend_from_slice(b"\r\n");
            request
        };
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        let at_max = request_with(64);
        assert_eq!(
            parse_head(&at_max, &mut headers, &limits)
                .unwrap()
                .unwrap()
                .headers
                .len(),
            64
        );
        let past_max = request_with(65);
        let err = parse_head(&past_max, &mut headers, &limits).unwrap_err();
        assert_eq!(err, HttpError::TooManyHeaders { max: 64 });
        assert_eq!(err.status(), 431);
    }

    #[test]
    fn two_pipelined_requests_parse_one_after_the_other() {
        let buf = b"POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
                    GET /health HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        let first = parse_head(buf, &mut headers, &SMALL_LIMITS)
            .unwrap()
            .unwrap();
        assert_eq!((first.method, first.path), ("POST", "/publish"));
        let body_start = first.head_len;
        let next_start = first.head_len + first.content_length;
        assert_eq!(&buf[body_start..next_start], b"hello");

        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        let second = parse_head(&buf[next_start..], &mut headers, &SMALL_LIMITS)
            .unwrap()
            .unwrap();
        assert_eq!((second.method, second.path), ("GET", "/health"));
        assert_eq!(next_start + second.head_len, buf.len());
    }

    #[test]
    fn bytes_after_the_head_are_not_counted_in_head_len() {
        let head = b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut buf = head.to_vec();
        // A masked text frame "Hi" sent in the same read as the upgrade request.
        buf.extend_from_slice(&[0x81, 0x82, 0x01, 0x02, 0x03, 0x04, b'H' ^ 1, b'i' ^ 2]);
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        let parsed = parse_head(&buf, &mut headers, &SMALL_LIMITS)
            .unwrap()
            .unwrap();
        assert_eq!(parsed.head_len, head.len());
        assert_eq!(parsed.content_length, 0);
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_takes_the_first_match() {
        let buf = b"GET / HTTP/1.1\r\nX-Tag: one\r\nx-tag: two\r\nConnection: keep-alive\r\n\
                    CONNECTION: Upgrade\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        let head = parse_head(buf, &mut headers, &SMALL_LIMITS)
            .unwrap()
            .unwrap();
        assert_eq!(head.header("X-TAG"), Some(&b"one"[..]));
        assert_eq!(head.header("missing"), None);
        assert_eq!(head.header_count("x-tag"), 2);
        // Tokens are searched across repeated fields, trimmed and case-insensitive.
        assert!(head.header_has_token("connection", "upgrade"));
        assert!(head.header_has_token("Connection", "KEEP-ALIVE"));
        assert!(!head.header_has_token("connection", "close"));
        assert!(!head.header_has_token("x-tag", "on"));
    }

    #[test]
    fn write_response_output_is_byte_exact() {
        let mut out = Vec::new();
        write_response(
            404,
            &[("Content-Type", "text/plain")],
            b"not found\n",
            true,
            &mut out,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: keep-alive\r\n\
              Content-Type: text/plain\r\n\r\nnot found\n"
        );
        out.clear();
        write_response(599, &[], b"", false, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 599 \r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn every_error_status_has_a_reason_phrase() {
        let errors = [
            HttpError::HeadTooLarge { max: 1 },
            HttpError::TooManyHeaders { max: 1 },
            HttpError::Malformed,
            HttpError::UnsupportedVersion,
            HttpError::ChunkedBodyUnsupported,
            HttpError::InvalidContentLength,
            HttpError::BodyTooLarge { len: 2, max: 1 },
        ];
        for err in errors {
            assert!(!reason_phrase(err.status()).is_empty(), "{err:?}");
        }
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
    }

    #[test]
    fn fuzz_entry_point_survives_mutated_requests() {
        let seeds: &[&[u8]] = &[
            b"POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.0\r\n\r\n",
            b"GET /a?b HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            // xorshift64: deterministic, no dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in seeds {
            for round in 0..40 {
                let mut data = vec![(next() % 64) as u8, (next() % 8) as u8, 1];
                data.extend_from_slice(seed);
                for _ in 0..round % 4 {
                    let index = (next() as usize) % data.len();
                    data[index] = next() as u8;
                }
                fuzz_http_request(&data);
            }
        }
    }
}
