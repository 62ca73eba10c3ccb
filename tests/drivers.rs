//! The same core behaviour on every I/O driver (`io_modes()`: uring and epoll once `--io`
//! exists, else the default). The other test files run in one mode (`RINGCAST_TEST_IO`, else
//! the server's default); this one makes sure each driver gets the essentials: handshake,
//! echo across length encodings, fragmentation, control frames, a limit, HTTP keep-alive and
//! pipelining, a timeout, and a few hundred concurrent connections.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_io_mode_serves_the_core_contract() {
    within(Duration::from_secs(120), async {
        for io in io_modes() {
            eprintln!("--- io mode {io:?}");
            let limits = [
                "--echo",
                "--max-message-bytes",
                "4096",
                "--max-frame-bytes",
                "4096",
            ];
            let Some(server) = start_or_skip(io, &limits).await else {
                continue;
            };
            core_contract(io, &server).await;
        }
    })
    .await
}

async fn core_contract(io: IoMode, server: &Server) {
    // Handshake and an upgrade with a frame in the same write.
    let mut conn = server.raw().await;
    let mut bytes = UPGRADE_REQUEST.as_bytes().to_vec();
    bytes.extend_from_slice(&final_frame(OP_TEXT, b"same write"));
    conn.send(&bytes).await;
    let response = conn.read_response_head().await;
    assert_eq!(response.status, 101, "{io:?}: {response:?}");
    assert_eq!(
        response.header("sec-websocket-accept"),
        Some(RFC_ACCEPT),
        "{io:?}"
    );
    assert_eq!(
        conn.read_message().await,
        (OP_TEXT, b"same write".to_vec()),
        "{io:?}"
    );

    // Every length encoding, in both directions.
    for size in [0usize, 125, 126, 4096] {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        conn.send(&final_frame(OP_BINARY, &payload)).await;
        assert_eq!(
            conn.read_message().await,
            (OP_BINARY, payload),
            "{io:?} size {size}"
        );
    }

    // Fragments with a ping in the middle.
    conn.send(&frame(false, OP_TEXT, b"fr")).await;
    conn.send(&final_frame(OP_PING, b"p")).await;
    let pong = conn.expect_frame().await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"p"[..]),
        "{io:?}"
    );
    conn.send(&frame(true, OP_CONT, b"ag")).await;
    assert_eq!(
        conn.read_message().await,
        (OP_TEXT, b"frag".to_vec()),
        "{io:?}"
    );

    // Over the message limit: 1009 and a clean close.
    conn.send_while_reading(&final_frame(OP_BINARY, &[0u8; 4097]))
        .await
        .ok();
    conn.expect_close(1009).await;

    // A protocol error: 1002.
    let mut conn = server.upgraded().await;
    conn.send(&encode_frame(true, 0, OP_TEXT, None, b"unmasked"))
        .await;
    conn.expect_close(1002).await;

    // HTTP keep-alive and pipelining.
    let mut conn = server.raw().await;
    conn.send(&[HEALTH, HEALTH, HEALTH].concat()).await;
    for i in 0..3 {
        let response = conn.read_response().await;
        assert_eq!(
            (response.status, response.body.as_slice()),
            (200, &b"ok"[..]),
            "{io:?} {i}"
        );
    }
    conn.send(HEALTH).await;
    assert_eq!(conn.read_response().await.status, 200, "{io:?} keep-alive");

    // A large message through a real client, on many connections at once.
    let url = server.echo_url();
    let tasks: Vec<_> = (0..200u32)
        .map(|id| {
            let url = url.clone();
            tokio::spawn(async move {
                let (mut ws, _) = connect_async(url).await.expect("connect");
                for m in 0..3u32 {
                    let text = format!("{id}/{m}");
                    ws.send(Message::text(text.clone())).await.expect("send");
                    let got = ws.next().await.expect("stream ended").expect("ws error");
                    assert_eq!(got, Message::text(text));
                }
                ws.close(None).await.expect("close");
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap_or_else(|e| panic!("{io:?}: {e}"));
    }

    // The handshake timeout on this driver (a server with a short one).
    let Some(short) = start_or_skip(io, &["--handshake-timeout-ms", "300"]).await else {
        return;
    };
    let mut conn = short.raw().await;
    conn.send(b"GET /health HTTP/1.1\r\nHo").await;
    assert!(
        conn.closed_within(Duration::from_secs(3)).await,
        "{io:?}: partial head still open 3 s later with --handshake-timeout-ms 300"
    );
}
