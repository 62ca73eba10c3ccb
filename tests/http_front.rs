//! The HTTP/1.1 front of the server over raw TCP: routes, every status that rejects an upgrade
//! before it happens, keep-alive, pipelining, bodies, and the HTTP-side timeouts.

mod common;

use std::time::Duration;

use common::*;

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Sends `request` on a fresh connection and returns the response.
async fn exchange(server: &Server, request: &[u8]) -> (RawConn, Response) {
    let mut conn = server.raw().await;
    conn.send(request).await;
    let response = conn.read_response().await;
    (conn, response)
}

/// Sends `request` on a fresh connection, expects `status`, and expects the server to close
/// the connection afterwards (as it must after rejecting an upgrade).
async fn expect_reject_and_close(server: &Server, request: &[u8], status: u16) -> Response {
    let (mut conn, response) = exchange(server, request).await;
    assert_eq!(
        response.status,
        status,
        "request {:?} got {response:?}",
        String::from_utf8_lossy(request)
    );
    assert!(
        conn.closed_within(Duration::from_secs(3)).await,
        "connection still open 3 s after a {status} reject of {:?}",
        String::from_utf8_lossy(request)
    );
    response
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn health_returns_200_ok() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let (_, response) = exchange(&server, HEALTH).await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body, b"ok");
    })
    .await
}

#[tokio::test]
async fn unknown_path_gets_404() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        for path in ["/", "/nope", "/echo/extra", "/healthz", "/HEALTH"] {
            let (_, response) = exchange(
                &server,
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )
            .await;
            assert_eq!(response.status, 404, "GET {path}: {response:?}");
        }
        // An upgrade to an unknown path is a 404 too, not a 101.
        let (_, response) =
            exchange(&server, &request("GET /chat HTTP/1.1", &UPGRADE_HEADERS)).await;
        assert_eq!(response.status, 404, "upgrade to /chat: {response:?}");
    })
    .await
}

#[tokio::test]
async fn echo_is_404_without_the_echo_flag() {
    within(TEST_TIMEOUT, async {
        let server = Server::start(IoMode::from_env(), &[]).await;
        let (_, response) = exchange(&server, UPGRADE_REQUEST.as_bytes()).await;
        assert_eq!(response.status, 404, "{response:?}");
        let (_, response) = exchange(&server, HEALTH).await;
        assert_eq!(response.status, 200, "{response:?}");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Upgrade rejects
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn non_get_on_echo_gets_405_with_allow_get() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        for method in ["POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"] {
            let mut headers = UPGRADE_HEADERS.to_vec();
            headers.push("Content-Length: 0");
            let request = request(&format!("{method} /echo HTTP/1.1"), &headers);
            let mut conn = server.raw().await;
            conn.send(&request).await;
            // A HEAD response has no body even if it declares a length.
            let response = if method == "HEAD" {
                conn.read_response_head().await
            } else {
                conn.read_response().await
            };
            assert_eq!(response.status, 405, "{method} /echo: {response:?}");
            assert_eq!(
                response.header("allow"),
                Some("GET"),
                "{method} /echo: {response:?}"
            );
            assert!(
                conn.closed_within(Duration::from_secs(3)).await,
                "connection still open after rejecting an upgrade with {method}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn get_echo_without_upgrade_websocket_gets_426_with_upgrade_header() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let (_, response) = exchange(&server, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(response.status, 426, "{response:?}");
        assert!(
            response.header_has_token("upgrade", "websocket"),
            "{response:?}"
        );

        let request = request(
            "GET /echo HTTP/1.1",
            &upgrade_headers_with("upgrade", "Upgrade: h2c"),
        );
        let (_, response) = exchange(&server, &request).await;
        assert_eq!(response.status, 426, "Upgrade: h2c: {response:?}");
        assert!(
            response.header_has_token("upgrade", "websocket"),
            "{response:?}"
        );
    })
    .await
}

#[tokio::test]
async fn http_10_upgrade_gets_400_and_connection_closes() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let request = request("GET /echo HTTP/1.0", &UPGRADE_HEADERS);
        expect_reject_and_close(&server, &request, 400).await;
    })
    .await
}

#[tokio::test]
async fn upgrade_without_host_gets_400_and_connection_closes() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let request = request("GET /echo HTTP/1.1", &upgrade_headers_without("host"));
        expect_reject_and_close(&server, &request, 400).await;
    })
    .await
}

#[tokio::test]
async fn connection_without_upgrade_token_gets_400_and_connection_closes() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        for line in [
            "Connection: keep-alive",
            "Connection: upgrades",
            "Connection: close",
        ] {
            let request = request(
                "GET /echo HTTP/1.1",
                &upgrade_headers_with("connection", line),
            );
            expect_reject_and_close(&server, &request, 400).await;
        }
        let request = request("GET /echo HTTP/1.1", &upgrade_headers_without("connection"));
        expect_reject_and_close(&server, &request, 400).await;
    })
    .await
}

#[tokio::test]
async fn missing_key_gets_400_and_connection_closes() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let request = request(
            "GET /echo HTTP/1.1",
            &upgrade_headers_without("sec-websocket-key"),
        );
        expect_reject_and_close(&server, &request, 400).await;
    })
    .await
}

#[tokio::test]
async fn key_not_decoding_to_16_bytes_gets_400_and_connection_closes() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        for line in [
            // 15 bytes.
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA",
            // 17 bytes.
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=",
            // Not base64.
            "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==",
            "Sec-WebSocket-Key: ",
        ] {
            let request = request(
                "GET /echo HTTP/1.1",
                &upgrade_headers_with("sec-websocket-key", line),
            );
            expect_reject_and_close(&server, &request, 400).await;
        }
    })
    .await
}

#[tokio::test]
async fn version_other_than_13_gets_426_with_version_13() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        for line in [
            "Sec-WebSocket-Version: 8",
            "Sec-WebSocket-Version: 14",
            "Sec-WebSocket-Version: abc",
        ] {
            let request = request(
                "GET /echo HTTP/1.1",
                &upgrade_headers_with("sec-websocket-version", line),
            );
            let response = expect_reject_and_close(&server, &request, 426).await;
            assert_eq!(
                response.header("sec-websocket-version"),
                Some("13"),
                "{line}: {response:?}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn missing_version_gets_426_with_version_13() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let request = request(
            "GET /echo HTTP/1.1",
            &upgrade_headers_without("sec-websocket-version"),
        );
        let response = expect_reject_and_close(&server, &request, 426).await;
        assert_eq!(
            response.header("sec-websocket-version"),
            Some("13"),
            "{response:?}"
        );
    })
    .await
}

#[tokio::test]
async fn chunked_transfer_encoding_gets_411() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let (_, response) = exchange(
            &server,
            b"POST /nope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(response.status, 411, "{response:?}");

        let mut headers = UPGRADE_HEADERS.to_vec();
        headers.push("Transfer-Encoding: chunked");
        let request = request("GET /echo HTTP/1.1", &headers);
        expect_reject_and_close(&server, &request, 411).await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Keep-alive, pipelining, bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn keep_alive_serves_two_requests_on_one_connection() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        for round in 0..2 {
            conn.send(HEALTH).await;
            let response = conn.read_response().await;
            assert_eq!(response.status, 200, "request {round}: {response:?}");
            assert_eq!(response.body, b"ok");
        }
        // A 404 keeps the connection alive as well.
        conn.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(conn.read_response().await.status, 404);
        conn.send(HEALTH).await;
        assert_eq!(conn.read_response().await.status, 200);
    })
    .await
}

#[tokio::test]
async fn three_pipelined_health_requests_get_three_responses_in_order() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        conn.send(&[HEALTH, HEALTH, HEALTH].concat()).await;
        for i in 0..3 {
            let response = conn.read_response().await;
            assert_eq!(response.status, 200, "response {i}: {response:?}");
            assert_eq!(response.body, b"ok", "response {i}");
        }
        conn.assert_quiet_for(Duration::from_millis(200)).await;
    })
    .await
}

#[tokio::test]
async fn hundred_pipelined_requests_get_hundred_responses_in_order() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        let mut bytes = Vec::new();
        for i in 0..100 {
            // Every tenth one goes to an unknown path, so the order is visible.
            if i % 10 == 9 {
                bytes.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
            } else {
                bytes.extend_from_slice(HEALTH);
            }
        }
        conn.send(&bytes).await;
        for i in 0..100 {
            let expected = if i % 10 == 9 { 404 } else { 200 };
            assert_eq!(conn.read_response().await.status, expected, "response {i}");
        }
    })
    .await
}

#[tokio::test]
async fn pipelined_requests_to_different_paths_are_answered_in_order() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        let bytes = [
            HEALTH,
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            HEALTH,
        ]
        .concat();
        conn.send(&bytes).await;
        for (i, status) in [200u16, 404, 404, 200].into_iter().enumerate() {
            let response = conn.read_response().await;
            assert_eq!(response.status, status, "response {i}: {response:?}");
        }
    })
    .await
}

#[tokio::test]
async fn post_body_split_over_several_writes_is_read_before_the_404() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        conn.send(b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\nabcd")
            .await;
        for part in [&b"efghij"[..], b"klmnopq"] {
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.send(part).await;
        }
        // No answer while 9 bytes of the body are still missing.
        conn.assert_quiet_for(Duration::from_millis(150)).await;
        conn.send(b"rstuvwxyz").await;
        let response = conn.read_response().await;
        assert_eq!(response.status, 404, "{response:?}");
        // The body was consumed exactly: the next request on the connection is parsed cleanly.
        conn.send(HEALTH).await;
        let response = conn.read_response().await;
        assert_eq!(response.status, 200, "{response:?}");
    })
    .await
}

#[tokio::test]
async fn head_split_over_several_writes_is_parsed() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        for piece in HEALTH.chunks(7) {
            conn.send(piece).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(conn.read_response().await.status, 200);
    })
    .await
}

#[tokio::test]
async fn connection_close_is_honoured() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let response = conn.read_response().await;
        assert_eq!(response.status, 200, "{response:?}");
        assert!(
            conn.closed_within(Duration::from_secs(3)).await,
            "connection still open after Connection: close"
        );
    })
    .await
}

#[tokio::test]
async fn connection_close_in_a_pipeline_drops_later_requests() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        let bytes = [
            &b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
            HEALTH,
        ]
        .concat();
        conn.send(&bytes).await;
        assert_eq!(conn.read_response().await.status, 200);
        // Nothing for the second request: the server closes after the first.
        assert!(
            conn.closed_within(Duration::from_secs(3)).await,
            "connection still open"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------------

/// A 300 ms timeout must not fire early (a close at once would pass "closed within 3 s" too).
/// 250 ms leaves room for a timer that rounds to its tick.
fn assert_not_early(what: &str, took: Duration) {
    eprintln!("{what}: closed after {took:?}");
    assert!(
        took >= Duration::from_millis(250),
        "{what}: closed after {took:?}, before the 300 ms timeout"
    );
}

#[tokio::test]
async fn partial_head_is_closed_after_handshake_timeout() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--handshake-timeout-ms", "300"]).await;
        let mut conn = server.raw().await;
        let since = tokio::time::Instant::now();
        conn.send(b"GET /echo HTTP/1.1\r\nHost: 127.0").await;
        let took = conn.time_to_close(since, Duration::from_secs(3)).await;
        assert_not_early("partial head, --handshake-timeout-ms 300", took);
    })
    .await
}

#[tokio::test]
async fn silent_connection_is_closed_after_handshake_timeout() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--handshake-timeout-ms", "300"]).await;
        let mut conn = server.raw().await;
        let since = tokio::time::Instant::now();
        let took = conn.time_to_close(since, Duration::from_secs(3)).await;
        assert_not_early("silent connection, --handshake-timeout-ms 300", took);
    })
    .await
}

#[tokio::test]
async fn trickled_head_is_closed_after_handshake_timeout() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--handshake-timeout-ms", "300"]).await;
        let mut conn = server.raw().await;
        // Slowloris: one byte every 50 ms keeps the socket busy but never completes the head.
        // The timeout covers the whole head, not the gap between bytes.
        let started = tokio::time::Instant::now();
        let head = UPGRADE_REQUEST.as_bytes();
        let mut closed = false;
        for b in &head[..head.len() - 2] {
            if conn.try_send(&[*b]).await.is_err() {
                closed = true;
                break;
            }
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !closed {
            closed = conn.closed_within(Duration::from_millis(500)).await;
        }
        assert!(
            closed,
            "trickled head still open after {:?} with --handshake-timeout-ms 300",
            started.elapsed()
        );
    })
    .await
}

#[tokio::test]
async fn head_completed_in_time_is_not_cut_by_handshake_timeout() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--handshake-timeout-ms", "1000"]).await;
        let mut conn = server.raw().await;
        conn.send(&HEALTH[..10]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        conn.send(&HEALTH[10..]).await;
        assert_eq!(conn.read_response().await.status, 200);
    })
    .await
}

#[tokio::test]
async fn handshake_timeout_does_not_apply_after_the_first_request() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[
            "--handshake-timeout-ms",
            "300",
            "--http-idle-timeout-ms",
            "5000",
        ])
        .await;
        let mut conn = server.raw().await;
        conn.send(HEALTH).await;
        assert_eq!(conn.read_response().await.status, 200);
        // Well past the handshake timeout, well inside the idle timeout.
        tokio::time::sleep(Duration::from_millis(900)).await;
        conn.send(HEALTH).await;
        assert_eq!(conn.read_response().await.status, 200);
    })
    .await
}

#[tokio::test]
async fn incomplete_body_is_closed_after_body_timeout() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--http-body-timeout-ms", "300"]).await;
        let mut conn = server.raw().await;
        let since = tokio::time::Instant::now();
        conn.send(b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten..")
            .await;
        // The server may answer (e.g. 408) before closing; only the close matters.
        let took = conn.time_to_close(since, Duration::from_secs(3)).await;
        assert_not_early("incomplete body, --http-body-timeout-ms 300", took);
    })
    .await
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--http-idle-timeout-ms", "300"]).await;
        let mut conn = server.raw().await;
        conn.send(HEALTH).await;
        assert_eq!(conn.read_response().await.status, 200);
        let since = tokio::time::Instant::now();
        let took = conn.time_to_close(since, Duration::from_secs(3)).await;
        assert_not_early("idle keep-alive, --http-idle-timeout-ms 300", took);
    })
    .await
}

#[tokio::test]
async fn keep_alive_connection_used_within_idle_timeout_stays_open() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&["--http-idle-timeout-ms", "1500"]).await;
        let mut conn = server.raw().await;
        // Each request lands well inside the idle window; the total exceeds it.
        for _ in 0..4 {
            conn.send(HEALTH).await;
            assert_eq!(conn.read_response().await.status, 200);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
}

#[tokio::test]
async fn upgraded_connection_is_not_cut_by_http_timeouts() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[
            "--handshake-timeout-ms",
            "300",
            "--http-idle-timeout-ms",
            "300",
            "--http-body-timeout-ms",
            "300",
        ])
        .await;
        let mut conn = server.upgraded().await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        conn.send(&final_frame(OP_TEXT, b"after a quiet second"))
            .await;
        assert_eq!(
            conn.read_message().await,
            (OP_TEXT, b"after a quiet second".to_vec())
        );
    })
    .await
}
