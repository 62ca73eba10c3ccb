//! Every configurable bound pushed to and past its edge (STYLE.md §5): frame, message and
//! fragment limits close with 1009; header bytes and header count get 431; body size gets 413.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

fn pattern_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A fragmented message: one data frame plus continuations, one per entry of `sizes`.
fn fragments(opcode: u8, sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let op = if i == 0 { opcode } else { OP_CONT };
        out.extend_from_slice(&frame(i + 1 == sizes.len(), op, &vec![b'f'; size]));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// WebSocket: 1009
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn message_over_max_message_bytes_closes_with_1009_through_tungstenite() {
    within(TEST_TIMEOUT, async {
        let server =
            Server::echo(&["--max-message-bytes", "1024", "--max-frame-bytes", "1024"]).await;
        let (mut ws, _) = connect_async(server.echo_url()).await.expect("connect");
        ws.send(Message::binary(vec![7u8; 1024]))
            .await
            .expect("send");
        assert_eq!(
            ws.next().await.expect("stream ended").expect("ws error"),
            Message::binary(vec![7u8; 1024]),
            "a message at the limit is echoed"
        );
        ws.send(Message::binary(vec![7u8; 2048]))
            .await
            .expect("send");
        match ws.next().await {
            Some(Ok(Message::Close(Some(close)))) => assert_eq!(close.code, CloseCode::Size),
            other => panic!("expected close 1009, got {other:?}"),
        }
    })
    .await
}

#[tokio::test]
async fn frame_at_max_frame_bytes_is_echoed_and_one_more_byte_closes_with_1009() {
    within(TEST_TIMEOUT, async {
        let server =
            Server::echo(&["--max-frame-bytes", "1024", "--max-message-bytes", "4096"]).await;
        let mut conn = server.upgraded().await;
        conn.send(&final_frame(OP_BINARY, &pattern_bytes(1024)))
            .await;
        assert_eq!(conn.read_message().await, (OP_BINARY, pattern_bytes(1024)));
        conn.send_while_reading(&final_frame(OP_BINARY, &pattern_bytes(1025)))
            .await
            .ok();
        conn.expect_close(1009).await;
    })
    .await
}

#[tokio::test]
async fn frame_header_declaring_over_max_frame_bytes_closes_with_1009_before_the_payload() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--max-frame-bytes", "1024"]).await;
        // The length in the header is enough to decide; the payload never comes.
        for len in [1025u64, 1 << 20, 1 << 40, (1 << 63) - 1] {
            let mut conn = server.upgraded().await;
            conn.send(&frame_header(true, 0, OP_BINARY, Some(MASK), len))
                .await;
            conn.expect_close(1009).await;
        }
    })
    .await
}

#[tokio::test]
async fn fragmented_message_over_max_message_bytes_closes_with_1009() {
    within(TEST_TIMEOUT, async {
        let server =
            Server::echo(&["--max-frame-bytes", "1024", "--max-message-bytes", "2048"]).await;
        // Exactly at the message limit, every frame inside the frame limit: echoed.
        let mut conn = server.upgraded().await;
        conn.send(&fragments(OP_BINARY, &[1024, 1024])).await;
        let (opcode, payload) = conn.read_message().await;
        assert_eq!((opcode, payload.len()), (OP_BINARY, 2048));
        // One frame more: every frame is fine, the message is not.
        conn.send_while_reading(&fragments(OP_BINARY, &[1000, 1000, 1000]))
            .await
            .ok();
        conn.expect_close(1009).await;

        let mut conn = server.upgraded().await;
        conn.send_while_reading(&fragments(OP_TEXT, &[1024, 1024, 1]))
            .await
            .ok();
        conn.expect_close(1009).await;
    })
    .await
}

#[tokio::test]
async fn message_over_default_one_mebibyte_closes_with_1009() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        // One frame of 1 MiB + 1 (over both default limits).
        let mut conn = server.upgraded().await;
        conn.send_while_reading(&final_frame(OP_BINARY, &pattern_bytes((1 << 20) + 1)))
            .await
            .ok();
        conn.expect_close(1009).await;
        // Two frames of 600 000 bytes each: each under the frame limit, the message over.
        let mut conn = server.upgraded().await;
        conn.send_while_reading(&fragments(OP_BINARY, &[600_000, 600_000]))
            .await
            .ok();
        conn.expect_close(1009).await;
    })
    .await
}

#[tokio::test]
async fn message_at_max_message_fragments_is_echoed_and_one_more_closes_with_1009() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--max-message-fragments", "4"]).await;
        let mut conn = server.upgraded().await;
        // The limit counts continuation frames: an opening frame plus four continuations fit.
        conn.send(&fragments(OP_TEXT, &[1, 1, 1, 1, 1])).await;
        assert_eq!(conn.read_message().await, (OP_TEXT, b"fffff".to_vec()));
        conn.send(&fragments(OP_TEXT, &[1, 1, 1, 1, 1, 1])).await;
        conn.expect_close(1009).await;

        // Empty fragments count too: they cost a header each.
        let mut conn = server.upgraded().await;
        conn.send(&fragments(OP_BINARY, &[0; 10])).await;
        conn.expect_close(1009).await;
    })
    .await
}

#[tokio::test]
async fn message_over_default_65536_continuations_closes_with_1009() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        // An opening frame and 65,537 continuations: one past the default.
        conn.send_while_reading(&fragments(OP_BINARY, &[0; 65_538]))
            .await
            .ok();
        conn.expect_close(1009).await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// HTTP front: 431, 413
// ---------------------------------------------------------------------------------------------

/// A GET /health head with `extra` additional header lines.
fn health_with_headers(extra: &[String]) -> Vec<u8> {
    let mut head = String::from("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Sends `bytes` on a fresh connection and returns the status of the response.
async fn status_of(server: &Server, bytes: &[u8]) -> u16 {
    let mut conn = server.raw().await;
    conn.send_while_reading(bytes).await.ok();
    let response = conn.read_response().await;
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
    eprintln!(
        "{} bytes ({shown:?}...) -> {}",
        bytes.len(),
        response.status
    );
    response.status
}

#[tokio::test]
async fn head_over_default_8192_bytes_gets_431() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let small = health_with_headers(&[format!("X-Pad: {}", "a".repeat(7000))]);
        assert!(small.len() < 8192);
        assert_eq!(status_of(&server, &small).await, 200);
        let big = health_with_headers(&[format!("X-Pad: {}", "a".repeat(9000))]);
        assert_eq!(status_of(&server, &big).await, 431);
        // The same for an upgrade request.
        let mut upgrade = UPGRADE_REQUEST.trim_end().to_string();
        upgrade.push_str(&format!("\r\nX-Pad: {}\r\n\r\n", "a".repeat(9000)));
        let mut conn = server.raw().await;
        conn.send_while_reading(upgrade.as_bytes()).await.ok();
        assert_eq!(conn.read_response().await.status, 431);
        assert!(
            conn.closed_within(std::time::Duration::from_secs(3)).await,
            "connection still open after a 431 for an upgrade"
        );
    })
    .await
}

#[tokio::test]
async fn head_over_max_header_bytes_gets_431() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--max-header-bytes", "1024"]).await;
        let small = health_with_headers(&[format!("X-Pad: {}", "a".repeat(800))]);
        assert_eq!(status_of(&server, &small).await, 200);
        let big = health_with_headers(&[format!("X-Pad: {}", "a".repeat(1100))]);
        assert_eq!(status_of(&server, &big).await, 431);
        // Many small headers add up as well.
        let many: Vec<String> = (0..40)
            .map(|i| format!("X-H{i}: {}", "b".repeat(30)))
            .collect();
        assert!(health_with_headers(&many).len() > 1024);
        assert_eq!(status_of(&server, &health_with_headers(&many)).await, 431);
    })
    .await
}

#[tokio::test]
async fn head_without_end_over_max_header_bytes_gets_431() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--max-header-bytes", "1024"]).await;
        // The head never ends; the server must not wait for the blank line to decide.
        let mut bytes = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        bytes.extend_from_slice(&[b'a'; 4096]);
        assert_eq!(status_of(&server, &bytes).await, 431);
    })
    .await
}

#[tokio::test]
async fn more_than_default_64_headers_gets_431() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        // Host plus 63 more is 64 headers: allowed.
        let at_limit: Vec<String> = (0..63).map(|i| format!("X-H{i}: v")).collect();
        assert_eq!(
            status_of(&server, &health_with_headers(&at_limit)).await,
            200
        );
        let over: Vec<String> = (0..64).map(|i| format!("X-H{i}: v")).collect();
        assert_eq!(status_of(&server, &health_with_headers(&over)).await, 431);
    })
    .await
}

#[tokio::test]
async fn more_than_max_headers_gets_431() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--max-headers", "8"]).await;
        let at_limit: Vec<String> = (0..7).map(|i| format!("X-H{i}: v")).collect();
        assert_eq!(
            status_of(&server, &health_with_headers(&at_limit)).await,
            200
        );
        let over: Vec<String> = (0..8).map(|i| format!("X-H{i}: v")).collect();
        assert_eq!(status_of(&server, &health_with_headers(&over)).await, 431);
        // An upgrade request with too many headers is refused the same way.
        let mut headers: Vec<&str> = UPGRADE_HEADERS.to_vec();
        headers.extend(["X-A: 1", "X-B: 2", "X-C: 3", "X-D: 4"]);
        assert_eq!(
            status_of(&server, &request("GET /echo HTTP/1.1", &headers)).await,
            431
        );
    })
    .await
}

#[tokio::test]
async fn content_length_over_default_max_body_bytes_gets_413() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        // Decided from the header alone: no body is sent.
        let head = b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n";
        assert_eq!(status_of(&server, head).await, 413);
        let head =
            b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n";
        let status = status_of(&server, head).await;
        assert!(
            status == 413 || status == 400,
            "absurd Content-Length got {status}"
        );
    })
    .await
}

#[tokio::test]
async fn content_length_over_max_body_bytes_gets_413() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--max-body-bytes", "16"]).await;
        let at_limit =
            b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n0123456789abcdef";
        let mut conn = server.raw().await;
        conn.send(at_limit).await;
        assert_eq!(conn.read_response().await.status, 404);
        conn.send(HEALTH).await;
        assert_eq!(
            conn.read_response().await.status,
            200,
            "body at the limit was consumed"
        );

        let over = b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n0123456789abcdefg";
        assert_eq!(status_of(&server, over).await, 413);
    })
    .await
}
