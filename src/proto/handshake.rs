//! The RFC 6455 opening handshake, server side, sans-IO: owns deciding whether a parsed HTTP/1.1
//! request head is a valid WebSocket upgrade and writing the 101 or the reject; it must never
//! parse raw bytes itself (that is [`super::http`]) or touch a socket.
//!
//! Call contract: parse the head with [`super::http::parse_head`], call [`validate`], then write
//! [`write_accept`] and switch the connection to frames at `head.head_len + head.content_length`
//! (bytes after the head are already WebSocket frames; browsers never send a body with the
//! upgrade, so this is `head_len` in practice), or write [`write_reject`] and close.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest as _, Sha1};

use super::http::{RequestHead, write_response_with_connection};

/// RFC 6455 §1.3: the GUID appended to the client's key before hashing.
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// RFC 6455 §4.2.1: the only protocol version this server speaks.
const WEBSOCKET_VERSION: &str = "13";

/// Bytes a `Sec-WebSocket-Key` must decode to (RFC 6455 §4.1, "a randomly selected 16-byte
/// value"), and the length of its base64 form.
const KEY_DECODED_BYTES: usize = 16;
const KEY_ENCODED_BYTES: usize = 24;

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key ++ GUID)), always 28 ASCII bytes.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    // RFC 6455 §4.2.2 item 5.4: concatenate the key as sent with the GUID, hash with SHA-1 and
    // base64-encode the 20-byte digest.
    let mut hasher = Sha1::new();
    hasher.update(key);
    hasher.update(WEBSOCKET_GUID.as_bytes());
    let digest = hasher.finalize();
    let mut accept = [0u8; 28];
    let written = STANDARD
        .encode_slice(digest, &mut accept)
        // INVARIANT: 20 bytes always encode to exactly 28 base64 bytes (7 groups of 3 bytes, the
        // last one padded), so the buffer is never too small.
        .expect("a SHA-1 digest encodes to 28 base64 bytes");
    debug_assert_eq!(written, accept.len());
    accept
}

/// Why a request is not a valid WebSocket upgrade. Each variant maps to one status in
/// [`HandshakeError::status`] and one response in [`write_reject`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The method is not `GET`.
    #[error("WebSocket upgrade requires the GET method")]
    MethodNotGet,
    /// The request is HTTP/1.0.
    #[error("WebSocket upgrade requires HTTP/1.1")]
    VersionNotHttp11,
    /// There is no `Host` header field.
    #[error("missing Host header")]
    MissingHost,
    /// `Upgrade` does not list `websocket`: a plain HTTP request to a WebSocket endpoint.
    #[error("this endpoint only speaks WebSocket: send Upgrade: websocket")]
    MissingUpgradeWebsocket,
    /// `Connection` does not list `upgrade`.
    #[error("Connection header lacks the upgrade token")]
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Key` is missing, repeated, or not the base64 form of 16 bytes.
    #[error("invalid Sec-WebSocket-Key")]
    InvalidKey,
    /// `Sec-WebSocket-Version` is missing, repeated, or not 13.
    #[error("unsupported WebSocket version, this server speaks 13")]
    UnsupportedVersion,
}

impl HandshakeError {
    /// The HTTP status that answers this error; the only such mapping.
    pub fn status(&self) -> u16 {
        match self {
            // RFC 9110 §15.5.6: 405 Method Not Allowed, with an Allow header.
            Self::MethodNotGet => 405,
            Self::VersionNotHttp11
            | Self::MissingHost
            | Self::MissingConnectionUpgrade
            | Self::InvalidKey => 400,
            // RFC 9110 §15.5.22: 426 Upgrade Required, with an Upgrade header.
            Self::MissingUpgradeWebsocket | Self::UnsupportedVersion => 426,
        }
    }
}

/// A validated upgrade: what the 101 response needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: [u8; 28],
}

/// Validates an already parsed head as a WebSocket upgrade.
///
/// Checks in this order: method, version, `Host`, `Upgrade`, `Connection`,
/// `Sec-WebSocket-Version`, `Sec-WebSocket-Key`. Header names and the `websocket` and `upgrade`
/// tokens compare case-insensitively; `Connection` may be a list (`keep-alive, Upgrade`). The
/// path is not checked: routing is the caller's.
pub fn validate(head: &RequestHead<'_, '_>) -> Result<Accept, HandshakeError> {
    // RFC 6455 §4.2.1 item 1: an HTTP/1.1 or higher GET request. Methods are case-sensitive
    // (RFC 9110 §9.1).
    if head.method != "GET" {
        return Err(HandshakeError::MethodNotGet);
    }
    if head.minor_version != 1 {
        return Err(HandshakeError::VersionNotHttp11);
    }
    // RFC 6455 §4.2.1 item 2: a Host header field.
    if head.header("host").is_none() {
        return Err(HandshakeError::MissingHost);
    }
    // RFC 6455 §4.2.1 item 3: an Upgrade header field containing `websocket`, case-insensitive.
    if !head.header_has_token("upgrade", "websocket") {
        return Err(HandshakeError::MissingUpgradeWebsocket);
    }
    // RFC 6455 §4.2.1 item 4: a Connection header field that includes the token `Upgrade`,
    // case-insensitive.
    if !head.header_has_token("connection", "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    // RFC 6455 §4.2.1 item 6: Sec-WebSocket-Version 13. RFC 6455 §11.3.5: it must not appear
    // more than once in a request.
    let version = single_header(head, "sec-websocket-version");
    if version.map(<[u8]>::trim_ascii) != Some(WEBSOCKET_VERSION.as_bytes()) {
        return Err(HandshakeError::UnsupportedVersion);
    }
    // RFC 6455 §4.2.1 item 5: Sec-WebSocket-Key, base64 of 16 bytes. RFC 6455 §11.3.1: it must
    // not appear more than once.
    let key = single_header(head, "sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .ok_or(HandshakeError::InvalidKey)?;
    if !is_valid_key(key) {
        return Err(HandshakeError::InvalidKey);
    }
    // RFC 6455 §4.2.2 item 5.3: Sec-WebSocket-Protocol would be chosen here; no subprotocol is
    // offered yet, so none is echoed.
    // RFC 6455 §9 / RFC 7692 §5: permessage-deflate would be negotiated here from
    // Sec-WebSocket-Extensions; none is accepted yet, so the header is ignored.
    Ok(Accept {
        accept: accept_key(key),
    })
}

/// Writes the `101 Switching Protocols` response for `accept` (RFC 6455 §4.2.2 item 5).
pub fn write_accept(accept: &Accept, out: &mut Vec<u8>) {
    // RFC 9110 §8.6: no Content-Length on a 1xx response; the bytes after it are frames.
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept.accept);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Writes the reject response for `err`: its status and reason phrase, the header the status
/// requires (`Allow`, `Upgrade`, `Sec-WebSocket-Version`), `Connection: close` and a short text
/// body. The caller closes the connection after sending it.
pub fn write_reject(err: &HandshakeError, out: &mut Vec<u8>) {
    const CONTENT_TYPE: (&str, &str) = ("Content-Type", "text/plain; charset=utf-8");
    let extra_headers: &[(&str, &str)] = match err {
        // RFC 9110 §15.5.6: a 405 response MUST list the allowed methods.
        HandshakeError::MethodNotGet => &[("Allow", "GET"), CONTENT_TYPE],
        // RFC 9110 §15.5.22: a 426 response MUST send Upgrade naming the protocol to switch to.
        HandshakeError::MissingUpgradeWebsocket => &[("Upgrade", "websocket"), CONTENT_TYPE],
        // RFC 6455 §4.2.2: also name the WebSocket versions the server understands.
        HandshakeError::UnsupportedVersion => &[
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", WEBSOCKET_VERSION),
            CONTENT_TYPE,
        ],
        HandshakeError::VersionNotHttp11
        | HandshakeError::MissingHost
        | HandshakeError::MissingConnectionUpgrade
        | HandshakeError::InvalidKey => &[CONTENT_TYPE],
    };
    // RFC 9110 §7.8: a sender of Upgrade must also send the `upgrade` connection option.
    let connection = if err.status() == 426 {
        "upgrade, close"
    } else {
        "close"
    };
    let body = reject_body(err).as_bytes();
    write_response_with_connection(err.status(), connection, extra_headers, body, out);
}

/// Fuzz entry point: parses arbitrary bytes at every split of a prefix, validates the head, and
/// writes the accept or the reject. Never panics unless an invariant is broken.
#[cfg(any(fuzzing, test))]
pub fn fuzz_handshake(data: &[u8]) {
    use super::http::{self, HEADER_COUNT_CEILING};

    let Some((limits, input)) = http::fuzz_limits(data) else {
        return;
    };
    http::check_splits(input, &limits);
    let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
    let Ok(Some(head)) = http::parse_head(input, &mut headers, &limits) else {
        return;
    };
    let mut out = Vec::new();
    match validate(&head) {
        Ok(accept) => {
            assert!(accept.accept.is_ascii());
            write_accept(&accept, &mut out);
            let mut response_headers = [httparse::EMPTY_HEADER; 8];
            let mut response = httparse::Response::new(&mut response_headers);
            let parsed = response.parse(&out).expect("a written 101 parses");
            assert_eq!(parsed, httparse::Status::Complete(out.len()));
            assert_eq!(response.code, Some(101));
        }
        Err(err) => {
            write_reject(&err, &mut out);
            http::check_response(&out);
        }
    }
}

/// The value of `name` when it appears exactly once; `None` when missing or repeated.
fn single_header<'b>(head: &RequestHead<'_, 'b>, name: &str) -> Option<&'b [u8]> {
    if head.header_count(name) == 1 {
        head.header(name)
    } else {
        None
    }
}

/// Whether `key` is the padded base64 form of exactly 16 bytes.
fn is_valid_key(key: &[u8]) -> bool {
    // 16 bytes always encode to 24 characters ending in `==`; checking the length first keeps
    // the decode buffer on the stack. 17 or 18 bytes also encode to 24 characters, so the
    // decoded length is checked as well.
    if key.len() != KEY_ENCODED_BYTES {
        return false;
    }
    let mut decoded = [0u8; KEY_ENCODED_BYTES / 4 * 3];
    matches!(
        STANDARD.decode_slice(key, &mut decoded),
        Ok(KEY_DECODED_BYTES)
    )
}

/// The text body of a reject response.
fn reject_body(err: &HandshakeError) -> &'static str {
    match err {
        HandshakeError::MethodNotGet => "WebSocket upgrade requires the GET method\n",
        HandshakeError::VersionNotHttp11 => "WebSocket upgrade requires HTTP/1.1\n",
        HandshakeError::MissingHost => "missing Host header\n",
        HandshakeError::MissingUpgradeWebsocket => "this endpoint only speaks WebSocket\n",
        HandshakeError::MissingConnectionUpgrade => "Connection header lacks the upgrade token\n",
        HandshakeError::InvalidKey => "invalid Sec-WebSocket-Key\n",
        HandshakeError::UnsupportedVersion => "unsupported WebSocket version, use 13\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::{self, HEADER_COUNT_CEILING, HttpLimits, parse_head};

    /// RFC 6455 §1.3: the sample key and the accept value it must produce.
    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// A request line and headers, each header given as one `Name: value` line.
    fn request(request_line: &str, headers: &[&str]) -> Vec<u8> {
        let mut out = format!("{request_line}\r\n").into_bytes();
        for header in headers {
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The headers of a valid upgrade, with any header whose name starts with one of `without`
    /// left out, and `extra` appended.
    fn upgrade_headers<'a>(without: &[&str], extra: &[&'a str]) -> Vec<&'a str> {
        let base = [
            "Host: example.com",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ];
        base.into_iter()
            .filter(|line| !without.iter().any(|name| line.starts_with(name)))
            .chain(extra.iter().copied())
            .collect()
    }

    /// Validates `request` after feeding it at every split: every prefix is `Ok(None)` until the
    /// last byte, and the whole request parses.
    fn validate_all_splits(request: &[u8]) -> Result<Accept, HandshakeError> {
        let limits = HttpLimits::default();
        http::check_splits(request, &limits);
        for split in 0..request.len() {
            let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
            let partial = parse_head(&request[..split], &mut headers, &limits);
            assert_eq!(partial, Ok(None), "split {split}");
        }
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        let head = parse_head(request, &mut headers, &limits)
            .expect("a well-formed head")
            .expect("a complete head");
        assert_eq!(head.head_len, request.len());
        validate(&head)
    }

    fn reject_response(err: &HandshakeError) -> String {
        let mut out = Vec::new();
        write_reject(err, &mut out);
        http::check_response(&out);
        String::from_utf8(out).expect("a reject is ASCII")
    }

    #[test]
    fn rfc_6455_sample_key_gives_the_sample_accept() {
        assert_eq!(&accept_key(RFC_KEY.as_bytes()), RFC_ACCEPT.as_bytes());
    }

    #[test]
    fn valid_upgrades_are_accepted_at_every_split() {
        let cases: &[(&str, Vec<&str>)] = &[
            ("minimal", upgrade_headers(&[], &[])),
            (
                "lowercase names and mixed-case tokens",
                vec![
                    "host: example.com",
                    "UPGRADE: WebSocket",
                    "connection: UPGRADE",
                    "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
                    "SEC-WEBSOCKET-VERSION: 13",
                ],
            ),
            (
                "connection list",
                upgrade_headers(&["Connection"], &["Connection: keep-alive, Upgrade"]),
            ),
            (
                "connection split over two fields",
                upgrade_headers(
                    &["Connection"],
                    &["Connection: keep-alive", "Connection: upgrade"],
                ),
            ),
            (
                "upgrade list",
                upgrade_headers(&["Upgrade"], &["Upgrade: foo/2, websocket"]),
            ),
            (
                "subprotocol and extensions offered but not negotiated",
                upgrade_headers(
                    &[],
                    &[
                        "Sec-WebSocket-Protocol: chat",
                        "Sec-WebSocket-Extensions: permessage-deflate",
                    ],
                ),
            ),
        ];
        for (name, headers) in cases {
            let bytes = request("GET /chat?x=1 HTTP/1.1", headers);
            let accept = validate_all_splits(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(&accept.accept, RFC_ACCEPT.as_bytes(), "{name}");
        }
    }

    #[test]
    fn invalid_upgrades_are_rejected_with_status_and_header_at_every_split() {
        use HandshakeError::*;
        let get = "GET /chat HTTP/1.1";
        // (name, request, error, status, the header line the status requires)
        type Case<'a> = (&'a str, Vec<u8>, HandshakeError, u16, Option<&'a str>);
        let cases: &[Case<'_>] = &[
            (
                "post",
                request("POST /chat HTTP/1.1", &upgrade_headers(&[], &[])),
                MethodNotGet,
                405,
                Some("Allow: GET"),
            ),
            (
                "lowercase method",
                request("get /chat HTTP/1.1", &upgrade_headers(&[], &[])),
                MethodNotGet,
                405,
                Some("Allow: GET"),
            ),
            (
                "http/1.0",
                request("GET /chat HTTP/1.0", &upgrade_headers(&[], &[])),
                VersionNotHttp11,
                400,
                None,
            ),
            (
                "no host",
                request(get, &upgrade_headers(&["Host"], &[])),
                MissingHost,
                400,
                None,
            ),
            (
                "plain get",
                request(get, &["Host: example.com"]),
                MissingUpgradeWebsocket,
                426,
                Some("Upgrade: websocket"),
            ),
            (
                "upgrade to another protocol",
                request(get, &upgrade_headers(&["Upgrade"], &["Upgrade: h2c"])),
                MissingUpgradeWebsocket,
                426,
                Some("Upgrade: websocket"),
            ),
            (
                "no connection",
                request(get, &upgrade_headers(&["Connection"], &[])),
                MissingConnectionUpgrade,
                400,
                None,
            ),
            (
                "connection keep-alive only",
                request(
                    get,
                    &upgrade_headers(&["Connection"], &["Connection: keep-alive"]),
                ),
                MissingConnectionUpgrade,
                400,
                None,
            ),
            (
                "version 8",
                request(
                    get,
                    &upgrade_headers(&["Sec-WebSocket-Version"], &["Sec-WebSocket-Version: 8"]),
                ),
                UnsupportedVersion,
                426,
                Some("Sec-WebSocket-Version: 13"),
            ),
            (
                "no version",
                request(get, &upgrade_headers(&["Sec-WebSocket-Version"], &[])),
                UnsupportedVersion,
                426,
                Some("Sec-WebSocket-Version: 13"),
            ),
            (
                "repeated version",
                request(get, &upgrade_headers(&[], &["Sec-WebSocket-Version: 13"])),
                UnsupportedVersion,
                426,
                Some("Sec-WebSocket-Version: 13"),
            ),
            (
                "version checked before key",
                request(get, &upgrade_headers(&["Sec-WebSocket-"], &[])),
                UnsupportedVersion,
                426,
                Some("Sec-WebSocket-Version: 13"),
            ),
            (
                "no key",
                request(get, &upgrade_headers(&["Sec-WebSocket-Key"], &[])),
                InvalidKey,
                400,
                None,
            ),
            (
                "key of 15 bytes",
                request(
                    get,
                    &upgrade_headers(
                        &["Sec-WebSocket-Key"],
                        &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA"],
                    ),
                ),
                InvalidKey,
                400,
                None,
            ),
            (
                "key of 17 bytes",
                request(
                    get,
                    &upgrade_headers(
                        &["Sec-WebSocket-Key"],
                        &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA="],
                    ),
                ),
                InvalidKey,
                400,
                None,
            ),
            (
                "key not base64",
                request(
                    get,
                    &upgrade_headers(
                        &["Sec-WebSocket-Key"],
                        &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ!!"],
                    ),
                ),
                InvalidKey,
                400,
                None,
            ),
            (
                "repeated key",
                request(
                    get,
                    &upgrade_headers(&[], &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="]),
                ),
                InvalidKey,
                400,
                None,
            ),
        ];
        for (name, bytes, expected, status, extra_header) in cases {
            assert_eq!(validate_all_splits(bytes), Err(expected.clone()), "{name}");
            assert_eq!(expected.status(), *status, "{name}");
            let response = reject_response(expected);
            let status_line = format!("HTTP/1.1 {status} {}\r\n", http::reason_phrase(*status));
            assert!(response.starts_with(&status_line), "{name}: {response}");
            if let Some(extra_header) = extra_header {
                assert!(
                    response.contains(&format!("\r\n{extra_header}\r\n")),
                    "{name}"
                );
            }
            assert!(response.contains("\r\nConnection: "), "{name}");
            assert!(response.contains("close\r\n"), "{name}");
        }
    }

    #[test]
    fn keys_of_24_characters_are_valid_only_when_decoding_to_16_bytes() {
        assert!(is_valid_key(RFC_KEY.as_bytes()));
        // 17 bytes encode to 24 characters ending in a single `=`, 18 bytes to 24 without one.
        assert!(!is_valid_key(b"AAAAAAAAAAAAAAAAAAAAAAA="));
        assert!(!is_valid_key(b"AAAAAAAAAAAAAAAAAAAAAAAA"));
        // Non-canonical padding bits are refused rather than silently dropped.
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZR=="));
    }

    #[test]
    fn frame_in_the_same_read_is_left_after_head_len() {
        let mut bytes = request("GET /chat HTTP/1.1", &upgrade_headers(&[], &[]));
        let head_bytes = bytes.len();
        bytes.extend_from_slice(&[0x81, 0x80, 0x11, 0x22, 0x33, 0x44]);
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        let head = parse_head(&bytes, &mut headers, &HttpLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(head.head_len, head_bytes);
        assert!(validate(&head).is_ok());
    }

    #[test]
    fn write_accept_output_is_byte_exact() {
        let accept = Accept {
            accept: accept_key(RFC_KEY.as_bytes()),
        };
        let mut out = Vec::new();
        write_accept(&accept, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn unsupported_version_reject_is_byte_exact() {
        let body = "unsupported WebSocket version, use 13\n";
        let expected = format!(
            "HTTP/1.1 426 Upgrade Required\r\nContent-Length: {}\r\nConnection: upgrade, close\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(
            reject_response(&HandshakeError::UnsupportedVersion),
            expected
        );
    }

    #[test]
    fn fuzz_entry_point_survives_mutated_upgrades() {
        let seed = request("GET /chat HTTP/1.1", &upgrade_headers(&[], &[]));
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move || {
            // xorshift64: deterministic, no dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..60 {
            let mut data = vec![(next() % 64) as u8 + 16, (next() % 12) as u8, 0];
            data.extend_from_slice(&seed);
            for _ in 0..round % 3 {
                let index = 3 + (next() as usize) % seed.len();
                data[index] = next() as u8;
            }
            fuzz_handshake(&data);
        }
    }
}
