//! The process contract: the listening line on stdout, clean exit on SIGTERM and SIGINT, and
//! a stop that does not wait for open connections to go away.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn listening_line_names_a_port_that_accepts_connections() {
    within(TEST_TIMEOUT, async {
        let server = Server::echo(&[]).await;
        let mut conn = server.raw().await;
        conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(conn.read_response().await.status, 200);
    })
    .await
}

#[tokio::test]
async fn stdout_carries_the_admin_line_then_the_listening_line() {
    within(TEST_TIMEOUT, async {
        let mut server = Server::echo(&[]).await;
        let mut conn = server.upgraded().await;
        conn.send(&final_frame(OP_TEXT, b"hi")).await;
        assert_eq!(conn.read_message().await, (OP_TEXT, b"hi".to_vec()));
        conn.send(&close_frame(1000, b"")).await;
        conn.expect_close_reply(1000).await;
        server.signal("TERM").await;
        server.wait_exit(Duration::from_secs(20)).await;
        // Let the stdout reader see EOF.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // stdout carries the admin line, then the listening line, nothing else (logs go to
        // stderr).
        let expected = format!("{LISTENING_PREFIX}{}", server.addr);
        let lines = server.stdout_lines();
        assert_eq!(lines.len(), 2, "stdout: {lines:?}");
        assert!(
            lines[0].starts_with("ringcast: admin on 127.0.0.1:"),
            "stdout: {lines:?}"
        );
        assert_eq!(lines[1], expected, "stdout: {lines:?}");
    })
    .await
}

#[tokio::test]
async fn two_servers_on_port_0_get_different_ports() {
    within(TEST_TIMEOUT, async {
        let a = Server::echo(&[]).await;
        let b = Server::echo(&[]).await;
        assert_ne!(a.addr, b.addr);
    })
    .await
}

#[tokio::test]
async fn sigterm_stops_the_server_with_exit_0() {
    an_idle_server_exits_0_on("TERM").await
}

#[tokio::test]
async fn sigint_stops_the_server_with_exit_0() {
    an_idle_server_exits_0_on("INT").await
}

#[tokio::test]
async fn sigterm_with_open_connections_still_exits_0() {
    within(TEST_TIMEOUT, async {
        let mut server = Server::echo(&[]).await;
        let mut upgraded = server.upgraded().await;
        upgraded.send(&final_frame(OP_TEXT, b"hi")).await;
        assert_eq!(upgraded.read_message().await, (OP_TEXT, b"hi".to_vec()));
        let mut idle = server.raw().await;
        idle.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(idle.read_response().await.status, 200);
        let _half = {
            let mut c = server.raw().await;
            c.send(b"GET /echo HTTP/1.1\r\nHo").await;
            c
        };
        // The contract sets no drain time; 20 s leaves room for a 10 s drain of the
        // connections above (the WebSocket client never answers a close).
        signal_exits_0(&mut server, "TERM", Duration::from_secs(20)).await;
    })
    .await
}

/// Starts an echo server with no connection, sends it SIG`signal` and expects exit 0 within 10 s.
async fn an_idle_server_exits_0_on(signal: &str) {
    within(TEST_TIMEOUT, async {
        let mut server = Server::echo(&[]).await;
        signal_exits_0(&mut server, signal, Duration::from_secs(10)).await;
    })
    .await
}

/// Sends SIG`signal` to `server` and asserts it exits 0 within `limit`.
async fn signal_exits_0(server: &mut Server, signal: &str, limit: Duration) {
    server.signal(signal).await;
    let status = server.wait_exit(limit).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIG{signal}: {status}\n{}",
        server.log()
    );
}
