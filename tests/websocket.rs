//! RFC 6455 behaviour of the `/echo` endpoint, seen from outside the process: the opening
//! handshake, echo through a real client (tokio-tungstenite), fragmentation, control frames,
//! every close rule (with hand-built raw frames), concurrency, and survival of bad input.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Client = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The sizes around each length encoding of RFC 6455 §5.2, up to the default 1 MiB limit.
const ECHO_SIZES: [usize; 7] = [0, 1, 125, 126, 65535, 65536, 1 << 20];

async fn client(server: &Server) -> Client {
    let (ws, response) = connect_async(server.echo_url())
        .await
        .expect("websocket connect");
    assert_eq!(response.status().as_u16(), 101);
    ws
}

/// The next message that is not a ping or pong.
async fn next_data(ws: &mut Client) -> Message {
    loop {
        let msg = tokio::time::timeout(READ_TIMEOUT, ws.next())
            .await
            .expect("no message from the server in time")
            .expect("server ended the stream")
            .expect("websocket error");
        if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return msg;
        }
    }
}

fn ascii_text(len: usize) -> String {
    (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

fn pattern_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Opens an upgraded raw connection, sends `bytes`, and expects the server to close with `code`
/// (then finishes the close handshake and expects TCP to close).
async fn expect_close_after(server: &Server, bytes: &[u8], code: u16) {
    let mut conn = server.upgraded().await;
    conn.send(bytes).await;
    conn.expect_close(code).await;
}

/// Opens an upgraded raw connection, sends a close frame with `payload`, and expects the server
/// to answer with a close carrying `code` and then close TCP.
async fn expect_close_reply_to(server: &Server, payload: &[u8], code: u16) {
    let mut conn = server.upgraded().await;
    conn.send(&frame(true, OP_CLOSE, payload)).await;
    conn.expect_close_reply(code).await;
}

// ---------------------------------------------------------------------------------------------
// Opening handshake
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn upgrade_returns_101_with_rfc_accept_value() {
    within(TEST_TIMEOUT, async {
        // RFC 6455 §1.3: base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")).
        let derived =
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(RFC_KEY.as_bytes());
        assert_eq!(derived, RFC_ACCEPT);
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        conn.send(UPGRADE_REQUEST.as_bytes()).await;
        let response = conn.read_response_head().await;
        assert_eq!(response.status, 101, "{response:?}");
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some(RFC_ACCEPT),
            "{response:?}"
        );
        assert!(
            response.header_has_token("upgrade", "websocket"),
            "{response:?}"
        );
        assert!(
            response.header_has_token("connection", "upgrade"),
            "{response:?}"
        );
        assert!(
            conn.buffered().is_empty(),
            "bytes after the 101 head: {:?}",
            conn.buffered()
        );
    })
    .await
}

#[tokio::test]
async fn upgrade_accepts_any_random_key_with_derived_accept_value() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        for key in [
            "AQIDBAUGBwgJCgsMDQ4PEA==",
            "x3JJHMbDL1EzLkh9GBhXDw==",
            "/////////////////////w==",
        ] {
            let mut conn = server.raw().await;
            let key_line = format!("Sec-WebSocket-Key: {key}");
            conn.send(&request(
                "GET /echo HTTP/1.1",
                &upgrade_headers_with("sec-websocket-key", &key_line),
            ))
            .await;
            let response = conn.read_response_head().await;
            assert_eq!(response.status, 101, "key {key}: {response:?}");
            let expected =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            assert_eq!(
                response.header("sec-websocket-accept"),
                Some(expected.as_str())
            );
        }
    })
    .await
}

#[tokio::test]
async fn upgrade_headers_are_case_insensitive_and_connection_is_a_token_list() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        conn.send(&request(
            "GET /echo HTTP/1.1",
            &[
                "host: 127.0.0.1",
                "UPGRADE: WebSocket",
                "connection: keep-alive, Upgrade",
                "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
                "SEC-WEBSOCKET-VERSION: 13",
            ],
        ))
        .await;
        let response = conn.read_response_head().await;
        assert_eq!(response.status, 101, "{response:?}");
        assert_eq!(response.header("sec-websocket-accept"), Some(RFC_ACCEPT));
    })
    .await
}

#[tokio::test]
async fn upgrade_and_first_frame_in_one_write_are_both_processed() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        let mut bytes = UPGRADE_REQUEST.as_bytes().to_vec();
        bytes.extend_from_slice(&final_frame(OP_TEXT, b"first"));
        bytes.extend_from_slice(&final_frame(OP_BINARY, b"\x00second"));
        conn.send(&bytes).await;
        let response = conn.read_response_head().await;
        assert_eq!(response.status, 101, "{response:?}");
        assert_eq!(conn.read_message().await, (OP_TEXT, b"first".to_vec()));
        assert_eq!(
            conn.read_message().await,
            (OP_BINARY, b"\x00second".to_vec())
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Echo through a real client
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn echo_returns_text_as_text_at_every_length_encoding_boundary() {
    echo_at_every_length_encoding_boundary("text", |size| Message::text(ascii_text(size))).await
}

#[tokio::test]
async fn echo_returns_binary_as_binary_at_every_length_encoding_boundary() {
    echo_at_every_length_encoding_boundary("binary", |size| Message::binary(pattern_bytes(size)))
        .await
}

/// Sends `message(size)` (a text or binary message) for every size in [`ECHO_SIZES`] and
/// expects each echoed as the same kind, length and content.
async fn echo_at_every_length_encoding_boundary(what: &str, message: impl Fn(usize) -> Message) {
    within(Duration::from_secs(60), async {
        let server = Server::echo(&[]).await;
        let mut ws = client(&server).await;
        for size in ECHO_SIZES {
            let sent = message(size);
            ws.send(sent.clone()).await.expect("send");
            let got = next_data(&mut ws).await;
            let same_kind = matches!(
                (&sent, &got),
                (Message::Text(_), Message::Text(_)) | (Message::Binary(_), Message::Binary(_))
            );
            if !same_kind {
                panic!("{size}-byte {what} came back as {}", kind(&got));
            }
            assert_eq!(got.len(), size, "echoed {what} length for {size} bytes");
            assert!(
                got.into_data()[..] == sent.into_data()[..],
                "echoed {what} differs for {size} bytes"
            );
        }
        ws.close(None).await.expect("close");
    })
    .await
}

#[tokio::test]
async fn echo_keeps_multibyte_utf8_text_unchanged() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut ws = client(&server).await;
        let text = "héllo wörld € 𝄞 日本語 \u{10FFFF}";
        ws.send(Message::text(text)).await.expect("send");
        assert_eq!(next_data(&mut ws).await, Message::text(text));
    })
    .await
}

#[tokio::test]
async fn echo_keeps_message_order_and_opcodes_when_interleaved() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut ws = client(&server).await;
        for i in 0..50u32 {
            if i % 2 == 0 {
                ws.feed(Message::text(format!("t{i}"))).await.expect("feed");
            } else {
                ws.feed(Message::binary(i.to_be_bytes().to_vec()))
                    .await
                    .expect("feed");
            }
        }
        ws.flush().await.expect("flush");
        for i in 0..50u32 {
            let expected = if i % 2 == 0 {
                Message::text(format!("t{i}"))
            } else {
                Message::binary(i.to_be_bytes().to_vec())
            };
            assert_eq!(next_data(&mut ws).await, expected, "message {i}");
        }
    })
    .await
}

#[tokio::test]
async fn client_close_1000_is_echoed_by_the_server() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut ws = client(&server).await;
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .expect("close");
        match next_data(&mut ws).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected close 1000, got {other:?}"),
        }
    })
    .await
}

/// A short description of a message: its kind and length, or a close frame in full.
fn kind(msg: &Message) -> String {
    match msg {
        Message::Text(t) => format!("text of {} bytes", t.len()),
        Message::Binary(b) => format!("binary of {} bytes", b.len()),
        Message::Ping(p) => format!("ping of {} bytes", p.len()),
        Message::Pong(p) => format!("pong of {} bytes", p.len()),
        Message::Close(c) => format!("close {c:?}"),
        Message::Frame(_) => "raw frame".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw frames: framing, fragmentation, control frames
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn server_frames_use_shortest_length_encoding_and_no_mask() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        for size in [0usize, 125, 126, 65535, 65536] {
            conn.send(&final_frame(OP_BINARY, &pattern_bytes(size)))
                .await;
            // read_frame checks the mask bit; the echo must be one unfragmented frame here.
            let echoed = conn.expect_frame().await;
            assert_eq!(echoed.opcode, OP_BINARY);
            assert_eq!(echoed.payload, pattern_bytes(size));
        }
    })
    .await
}

#[tokio::test]
async fn frame_sent_one_byte_per_write_is_echoed() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        let bytes = final_frame(OP_TEXT, b"slowly, byte by byte");
        for b in &bytes {
            conn.send(&[*b]).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            conn.read_message().await,
            (OP_TEXT, b"slowly, byte by byte".to_vec())
        );
    })
    .await
}

#[tokio::test]
async fn many_frames_in_one_write_are_echoed_in_order() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        let mut bytes = Vec::new();
        for i in 0..200u32 {
            bytes.extend_from_slice(&final_frame(OP_TEXT, format!("m{i}").as_bytes()));
        }
        conn.send(&bytes).await;
        for i in 0..200u32 {
            assert_eq!(
                conn.read_message().await,
                (OP_TEXT, format!("m{i}").into_bytes())
            );
        }
    })
    .await
}

#[tokio::test]
async fn large_messages_pipelined_by_a_reading_client_are_all_echoed_in_order() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        // 8 x 512 KiB in one write, while the client reads all the time: each message is within
        // the 1 MiB limits, and "each message comes back". If the server's queue toward this
        // client fills, it must hold back (stop reading) rather than drop the client.
        let mut bytes = Vec::new();
        for i in 0..8u8 {
            bytes.extend_from_slice(&final_frame(OP_BINARY, &vec![i; 512 * 1024]));
        }
        // A failed write shows up below as the server's close.
        conn.send_while_reading(&bytes).await.ok();
        for i in 0..8u8 {
            let first = conn.expect_frame().await;
            if first.opcode == OP_CLOSE {
                panic!(
                    "message {i}: the server closed with {:?} instead of echoing",
                    first.close_code()
                );
            }
            let (opcode, payload) = conn.read_message_from(first).await;
            assert_eq!(
                (opcode, payload.len()),
                (OP_BINARY, 512 * 1024),
                "message {i}"
            );
            assert!(
                payload.iter().all(|&b| b == i),
                "message {i} has foreign bytes"
            );
        }
    })
    .await
}

#[tokio::test]
async fn small_messages_pipelined_by_a_reading_client_are_all_echoed_in_order() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        // 20,000 messages of 100 bytes (2 MB) in one write, the client reading all the time.
        let mut bytes = Vec::new();
        for i in 0..20_000u32 {
            let mut payload = i.to_be_bytes().to_vec();
            payload.resize(100, b'.');
            bytes.extend_from_slice(&final_frame(OP_BINARY, &payload));
        }
        conn.send_while_reading(&bytes).await.ok();
        for i in 0..20_000u32 {
            let first = conn.expect_frame().await;
            if first.opcode == OP_CLOSE {
                panic!(
                    "message {i}: the server closed with {:?} instead of echoing",
                    first.close_code()
                );
            }
            let (opcode, payload) = conn.read_message_from(first).await;
            assert_eq!(opcode, OP_BINARY, "message {i}");
            assert_eq!(payload[..4], i.to_be_bytes(), "message {i} out of order");
        }
    })
    .await
}

#[tokio::test]
async fn fragmented_text_message_is_echoed_as_one_message() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        conn.send(&frame(false, OP_TEXT, b"frag")).await;
        conn.send(&frame(false, OP_CONT, b"men")).await;
        conn.send(&frame(false, OP_CONT, b"")).await;
        conn.send(&frame(true, OP_CONT, b"ted text")).await;
        assert_eq!(
            conn.read_message().await,
            (OP_TEXT, b"fragmented text".to_vec())
        );
    })
    .await
}

#[tokio::test]
async fn fragmented_binary_message_is_echoed_as_one_message() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        let data = pattern_bytes(70_000);
        let mut bytes = frame(false, OP_BINARY, &data[..10]);
        bytes.extend_from_slice(&frame(false, OP_CONT, &data[10..60_000]));
        bytes.extend_from_slice(&frame(true, OP_CONT, &data[60_000..]));
        conn.send(&bytes).await;
        let (opcode, payload) = conn.read_message().await;
        assert_eq!(opcode, OP_BINARY);
        assert!(
            payload == data,
            "echoed payload differs ({} bytes)",
            payload.len()
        );
    })
    .await
}

#[tokio::test]
async fn codepoint_split_across_fragments_is_echoed() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        // "€𝄞" is e2 82 ac f0 9d 84 9e: split inside both code points.
        conn.send(&frame(false, OP_TEXT, b"\xe2")).await;
        conn.send(&frame(false, OP_CONT, b"\x82\xac\xf0\x9d")).await;
        conn.send(&frame(true, OP_CONT, b"\x84\x9e")).await;
        assert_eq!(
            conn.read_message().await,
            (OP_TEXT, "€𝄞".as_bytes().to_vec())
        );
    })
    .await
}

#[tokio::test]
async fn ping_between_fragments_is_answered_before_the_message() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        conn.send(&frame(false, OP_TEXT, b"before ")).await;
        conn.send(&final_frame(OP_PING, b"mid")).await;
        let pong = conn.expect_frame().await;
        assert_eq!((pong.opcode, pong.fin), (OP_PONG, true), "{pong:?}");
        assert_eq!(pong.payload, b"mid");
        conn.send(&frame(true, OP_CONT, b"after")).await;
        assert_eq!(
            conn.read_message().await,
            (OP_TEXT, b"before after".to_vec())
        );
    })
    .await
}

#[tokio::test]
async fn ping_is_answered_with_pong_carrying_the_same_payload() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        for payload in [Vec::new(), b"ping!".to_vec(), pattern_bytes(125)] {
            conn.send(&final_frame(OP_PING, &payload)).await;
            let pong = conn.expect_frame().await;
            assert_eq!(
                (pong.opcode, pong.fin, pong.rsv),
                (OP_PONG, true, 0),
                "{pong:?}"
            );
            assert_eq!(pong.payload, payload);
        }
    })
    .await
}

#[tokio::test]
async fn unsolicited_pong_is_ignored() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        conn.send(&final_frame(OP_PONG, b"nobody asked")).await;
        conn.send(&final_frame(OP_TEXT, b"still here")).await;
        // The first thing back must be the echo: no reply to the pong, no close.
        assert_eq!(conn.read_message().await, (OP_TEXT, b"still here".to_vec()));
    })
    .await
}

#[tokio::test]
async fn ping_through_tungstenite_gets_pong() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut ws = client(&server).await;
        ws.send(Message::Ping(b"hi".to_vec().into()))
            .await
            .expect("send ping");
        let msg = tokio::time::timeout(READ_TIMEOUT, ws.next())
            .await
            .expect("no pong in time")
            .expect("stream ended")
            .expect("websocket error");
        assert_eq!(msg, Message::Pong(b"hi".to_vec().into()));
    })
    .await
}

#[tokio::test]
async fn text_with_every_byte_in_its_own_fragment_is_echoed() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        let text = "héllo € 𝄞";
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            let opcode = if i == 0 { OP_TEXT } else { OP_CONT };
            out.extend_from_slice(&frame(i + 1 == bytes.len(), opcode, &[*b]));
        }
        conn.send(&out).await;
        assert_eq!(conn.read_message().await, (OP_TEXT, bytes.to_vec()));
    })
    .await
}

#[tokio::test]
async fn frame_with_all_zero_mask_key_is_echoed() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        // RFC 6455 §5.3: the mask bit is what matters; a zero key is still a masked frame.
        conn.send(&encode_frame(true, 0, OP_TEXT, Some([0; 4]), b"zero key"))
            .await;
        assert_eq!(conn.read_message().await, (OP_TEXT, b"zero key".to_vec()));
    })
    .await
}

#[tokio::test]
async fn close_between_fragments_is_echoed() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        // RFC 6455 §5.4: control frames may be injected in the middle of a fragmented message.
        conn.send(&frame(false, OP_TEXT, b"never finished")).await;
        conn.send(&close_frame(1000, b"")).await;
        conn.expect_close_reply(1000).await;
    })
    .await
}

#[tokio::test]
async fn health_then_upgrade_pipelined_in_one_write_are_both_served() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        let mut bytes = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec();
        bytes.extend_from_slice(UPGRADE_REQUEST.as_bytes());
        bytes.extend_from_slice(&final_frame(OP_TEXT, b"after both"));
        conn.send(&bytes).await;
        let health = conn.read_response().await;
        assert_eq!((health.status, health.body.as_slice()), (200, &b"ok"[..]));
        let upgrade = conn.read_response_head().await;
        assert_eq!(upgrade.status, 101, "{upgrade:?}");
        assert_eq!(conn.read_message().await, (OP_TEXT, b"after both".to_vec()));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Protocol errors: 1002
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unmasked_frame_closes_with_1002() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        // RFC 6455 §5.1: a server must close on an unmasked client frame.
        expect_close_after(
            &server,
            &encode_frame(true, 0, OP_TEXT, None, b"hello"),
            1002,
        )
        .await;
        expect_close_after(&server, &encode_frame(true, 0, OP_PING, None, b""), 1002).await;
    })
    .await
}

#[tokio::test]
async fn frame_with_any_rsv_bit_closes_with_1002() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        // RFC 6455 §5.2: RSV bits must be 0 unless an extension was negotiated (none is).
        for rsv in [1u8, 2, 4, 7] {
            let bytes = encode_frame(true, rsv, OP_TEXT, Some(MASK), b"rsv");
            expect_close_after(&server, &bytes, 1002).await;
        }
        expect_close_after(
            &server,
            &encode_frame(true, 4, OP_PING, Some(MASK), b""),
            1002,
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn unknown_opcode_closes_with_1002() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        // RFC 6455 §5.2: opcodes 3-7 and 0xB-0xF are reserved.
        for opcode in [0x3u8, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            expect_close_after(&server, &final_frame(opcode, b"x"), 1002).await;
        }
    })
    .await
}

#[tokio::test]
async fn control_frame_over_125_bytes_closes_with_1002() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        // RFC 6455 §5.5: control frames carry at most 125 payload bytes.
        for opcode in [OP_PING, OP_PONG, OP_CLOSE] {
            let mut payload = 1000u16.to_be_bytes().to_vec();
            payload.extend_from_slice(&[b'a'; 124]);
            assert_eq!(payload.len(), 126);
            expect_close_after(&server, &final_frame(opcode, &payload), 1002).await;
        }
    })
    .await
}

#[tokio::test]
async fn fragmented_control_frame_closes_with_1002() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        // RFC 6455 §5.5: control frames must not be fragmented.
        for opcode in [OP_PING, OP_PONG] {
            expect_close_after(&server, &frame(false, opcode, b"part"), 1002).await;
        }
        expect_close_after(
            &server,
            &frame(false, OP_CLOSE, &1000u16.to_be_bytes()),
            1002,
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn frame_length_with_top_bit_set_closes_with_1002_or_1009() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        // RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
        let mut bytes = vec![0x82, 0x80 | 127];
        bytes.extend_from_slice(&(u64::MAX - 5).to_be_bytes());
        bytes.extend_from_slice(&MASK);
        conn.send(&bytes).await;
        let code = conn.read_close_code().await;
        assert!(
            code == Some(1002) || code == Some(1009),
            "close code {code:?}"
        );
    })
    .await
}

#[tokio::test]
async fn continuation_without_start_closes_with_1002() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        expect_close_after(&server, &frame(true, OP_CONT, b"orphan"), 1002).await;
        expect_close_after(&server, &frame(false, OP_CONT, b"orphan"), 1002).await;
        // Also after a complete message: the fragmented message is over.
        let mut conn = server.upgraded().await;
        conn.send(&final_frame(OP_TEXT, b"done")).await;
        assert_eq!(conn.read_message().await, (OP_TEXT, b"done".to_vec()));
        conn.send(&frame(true, OP_CONT, b"late")).await;
        conn.expect_close(1002).await;
    })
    .await
}

#[tokio::test]
async fn new_data_frame_during_fragmented_message_closes_with_1002() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        // RFC 6455 §5.4: fragments of one message must not interleave with another message.
        for (first, second) in [
            (OP_TEXT, OP_TEXT),
            (OP_TEXT, OP_BINARY),
            (OP_BINARY, OP_BINARY),
            (OP_BINARY, OP_TEXT),
        ] {
            let mut bytes = frame(false, first, b"start");
            bytes.extend_from_slice(&frame(true, second, b"intruder"));
            expect_close_after(&server, &bytes, 1002).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Invalid UTF-8: 1007
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        // RFC 6455 §8.1: text must be valid UTF-8 (RFC 3629: no overlongs, no surrogates,
        // nothing above U+10FFFF).
        let cases: [&[u8]; 6] = [
            b"\xff",
            b"abc\xc0\xafdef",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"\x80",
        ];
        for payload in cases {
            expect_close_after(&server, &final_frame(OP_TEXT, payload), 1007).await;
        }
    })
    .await
}

#[tokio::test]
async fn invalid_utf8_split_across_fragments_closes_with_1007() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        // Each fragment ends in a valid prefix; only the join is invalid.
        let mut bytes = frame(false, OP_TEXT, b"ok \xce");
        bytes.extend_from_slice(&frame(true, OP_CONT, b"A"));
        expect_close_after(&server, &bytes, 1007).await;

        let mut bytes = frame(false, OP_TEXT, b"\xf0\x9d");
        bytes.extend_from_slice(&frame(false, OP_CONT, b"\x84"));
        bytes.extend_from_slice(&frame(true, OP_CONT, b"\x41"));
        expect_close_after(&server, &bytes, 1007).await;
    })
    .await
}

#[tokio::test]
async fn text_ending_inside_a_codepoint_closes_with_1007() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        expect_close_after(&server, &final_frame(OP_TEXT, b"euro \xe2\x82"), 1007).await;
        let mut bytes = frame(false, OP_TEXT, b"euro ");
        bytes.extend_from_slice(&frame(true, OP_CONT, b"\xe2"));
        expect_close_after(&server, &bytes, 1007).await;
    })
    .await
}

#[tokio::test]
async fn invalid_utf8_in_binary_message_is_echoed() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        conn.send(&final_frame(OP_BINARY, b"\xff\xfe\xed\xa0\x80"))
            .await;
        assert_eq!(
            conn.read_message().await,
            (OP_BINARY, b"\xff\xfe\xed\xa0\x80".to_vec())
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Close frames (RFC 6455 §5.5.1, §7.4)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn valid_close_code_is_echoed_then_tcp_closes() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            expect_close_reply_to(&server, &code.to_be_bytes(), code).await;
        }
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice("goodbye, ünïcode".as_bytes());
        expect_close_reply_to(&server, &payload, 1000).await;
    })
    .await
}

#[tokio::test]
async fn empty_close_is_answered_with_close_then_tcp_closes() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        conn.send(&final_frame(OP_CLOSE, b"")).await;
        // RFC 6455 §5.5.1: the reply may be empty or carry 1000; never 1005 on the wire.
        let code = conn.read_close_code().await;
        assert!(
            code.is_none() || code == Some(1000),
            "reply to an empty close: {code:?}"
        );
        assert!(
            conn.closed_within(Duration::from_secs(3)).await,
            "TCP still open"
        );
    })
    .await
}

#[tokio::test]
async fn invalid_close_code_closes_with_1002() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        // RFC 6455 §7.4: 1004-1006 and 1015 are reserved and must not be sent; below 1000,
        // 1016-2999 (unassigned) and 5000 and above are invalid.
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            expect_close_reply_to(&server, &code.to_be_bytes(), 1002).await;
        }
    })
    .await
}

#[tokio::test]
async fn one_byte_close_payload_closes_with_1002() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        expect_close_reply_to(&server, b"\x03", 1002).await;
    })
    .await
}

#[tokio::test]
async fn close_reason_not_utf8_closes_with_1007() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bad \xff reason");
        expect_close_reply_to(&server, &payload, 1007).await;
    })
    .await
}

#[tokio::test]
async fn data_after_close_is_not_echoed() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        let mut bytes = close_frame(1000, b"");
        bytes.extend_from_slice(&final_frame(OP_TEXT, b"too late"));
        conn.send(&bytes).await;
        conn.expect_close_reply(1000).await;
    })
    .await
}

#[tokio::test]
async fn close_without_client_reply_ends_in_tcp_close_after_close_timeout() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--close-timeout-ms", "300"]).await;
        let mut conn = server.upgraded().await;
        conn.send(&encode_frame(true, 0, OP_TEXT, None, b"unmasked"))
            .await;
        assert_eq!(conn.read_close_code().await, Some(1002));
        // Never answer the close. The server may send its FIN at once (RFC 6455 §7.1.1: the
        // server closes TCP first); after the close timeout its socket must be gone entirely.
        assert!(
            conn.closed_within(Duration::from_secs(3)).await,
            "no FIN 3 s after the server's close frame"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(
            conn.writes_are_reset(&final_frame(OP_PING, b"")).await,
            "server socket still open 1 s after its close frame with --close-timeout-ms 300"
        );
    })
    .await
}

#[tokio::test]
async fn server_waits_for_the_client_close_during_the_close_timeout() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--close-timeout-ms", "5000"]).await;
        let mut conn = server.upgraded().await;
        conn.send(&encode_frame(true, 0, OP_TEXT, None, b"unmasked"))
            .await;
        assert_eq!(conn.read_close_code().await, Some(1002));
        // Half a second later the server still waits for our close: no reset yet.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !conn.writes_are_reset(&final_frame(OP_PING, b"")).await,
            "server dropped its socket 0.5 s after its close frame with --close-timeout-ms 5000"
        );
        let _ = conn.try_send(&close_frame(1002, b"")).await;
        assert!(
            conn.closed_within(Duration::from_secs(3)).await,
            "TCP still open after the client answered the close"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Load and robustness
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_connections_each_echo_their_messages() {
    const CONNECTIONS: usize = 1000;
    const MESSAGES: usize = 5;
    within(Duration::from_secs(90), async {
        let server = Server::echo(&[]).await;
        let url = server.echo_url();

        // Open all connections first (in waves, to stay inside the listen backlog) so that
        // they are all open at the same time.
        let mut clients = Vec::with_capacity(CONNECTIONS);
        for wave in 0..CONNECTIONS / 100 {
            let connects = (0..100).map(|_| connect_async(url.clone()));
            for (i, result) in futures_util::future::join_all(connects)
                .await
                .into_iter()
                .enumerate()
            {
                let (ws, _) =
                    result.unwrap_or_else(|e| panic!("connection {} failed: {e}", wave * 100 + i));
                clients.push(ws);
            }
        }
        assert_eq!(clients.len(), CONNECTIONS);

        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(id, mut ws)| {
                tokio::spawn(async move {
                    for m in 0..MESSAGES {
                        let text = format!("conn {id} message {m}");
                        ws.send(Message::text(text.clone())).await.expect("send");
                        let data = vec![id as u8; m * 100];
                        ws.send(Message::binary(data.clone())).await.expect("send");
                        assert_eq!(next_data(&mut ws).await, Message::text(text));
                        assert_eq!(next_data(&mut ws).await, Message::binary(data));
                    }
                    ws.close(None).await.expect("close");
                })
            })
            .collect();
        for (id, task) in tasks.into_iter().enumerate() {
            task.await
                .unwrap_or_else(|e| panic!("connection {id}: {e}"));
        }
    })
    .await
}

#[tokio::test]
async fn bad_input_never_kills_the_server() {
    within(Duration::from_secs(60), async {
        let mut server = Server::echo(&[
            "--handshake-timeout-ms",
            "1000",
            "--close-timeout-ms",
            "300",
        ])
        .await;
        let mut rng = Rng::new(0x5eed_1e55);
        for round in 0..120u64 {
            let mut conn = server.raw().await;
            match round % 8 {
                // Random bytes instead of a request.
                0 => {
                    let n = 1 + rng.below(4000) as usize;
                    let _ = conn.try_send(&rng.bytes(n)).await;
                }
                // A truncated upgrade request, then the client goes away.
                1 => {
                    let cut = rng.below(UPGRADE_REQUEST.len() as u64) as usize;
                    let _ = conn.try_send(&UPGRADE_REQUEST.as_bytes()[..cut]).await;
                }
                // A request line full of binary noise.
                2 => {
                    let mut bytes = b"GET /".to_vec();
                    bytes.extend(rng.bytes(200));
                    bytes.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
                    let _ = conn.try_send(&bytes).await;
                }
                // Upgrade, then random bytes as frames.
                3 => {
                    let mut bytes = UPGRADE_REQUEST.as_bytes().to_vec();
                    let n = 1 + rng.below(3000) as usize;
                    bytes.extend(rng.bytes(n));
                    let _ = conn.try_send(&bytes).await;
                }
                // Upgrade, then a header that declares 2^63 bytes.
                4 => {
                    let mut bytes = UPGRADE_REQUEST.as_bytes().to_vec();
                    bytes.extend_from_slice(&frame_header(true, 0, OP_BINARY, Some(MASK), 1 << 63));
                    let _ = conn.try_send(&bytes).await;
                }
                // Upgrade, then half a frame and a disconnect.
                5 => {
                    let mut bytes = UPGRADE_REQUEST.as_bytes().to_vec();
                    let whole = final_frame(OP_TEXT, &[b'z'; 300]);
                    let cut = 1 + rng.below(whole.len() as u64 - 1) as usize;
                    bytes.extend_from_slice(&whole[..cut]);
                    let _ = conn.try_send(&bytes).await;
                }
                // Upgrade, a valid message, and an immediate disconnect while the echo is
                // still being written.
                6 => {
                    let mut bytes = UPGRADE_REQUEST.as_bytes().to_vec();
                    bytes.extend_from_slice(&final_frame(OP_BINARY, &pattern_bytes(200_000)));
                    let _ = conn.try_send(&bytes).await;
                }
                // Headers with absurd values.
                _ => {
                    let _ = conn
                        .try_send(
                            b"GET /echo HTTP/1.1\r\nHost: \r\nUpgrade: websocket\r\n\
                              Connection: Upgrade\r\nSec-WebSocket-Key: ====\r\n\
                              Sec-WebSocket-Version: 99999999999999999999\r\n\
                              Content-Length: -1\r\n\r\n",
                        )
                        .await;
                }
            }
            // Half the time wait for the server's reaction, half the time vanish at once.
            if round % 2 == 0 {
                let _ = conn.closed_within(Duration::from_millis(100)).await;
            }
            drop(conn);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.assert_running();

        let mut ws = client(&server).await;
        ws.send(Message::text("still alive")).await.expect("send");
        assert_eq!(next_data(&mut ws).await, Message::text("still alive"));
        let mut conn = server.raw().await;
        conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(conn.read_response().await.status, 200);
        server.assert_running();
    })
    .await
}
