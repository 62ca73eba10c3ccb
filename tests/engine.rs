//! The engine's operational contract, on both drivers (`--io uring` and `--io epoll`): shards
//! share the load, timers (handshake timeout, idle ping, pong timeout) fire, slow readers and
//! connection limits are enforced with the documented answers and counters, SIGTERM drains,
//! EMFILE does not make the server spin, and settings resolve flags > env > file > defaults.
//!
//! Each test exists once per driver (`<test>::uring`, `<test>::epoll`). Where the kernel has no
//! io_uring (`--io uring` exits 69) the uring variant skips with a message, or fails when
//! `RINGCAST_CI` is set (STYLE.md §6). Everything runs on 127.0.0.1 with port 0, under a timeout.

mod common;

use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::driver::{
    Driver, EXIT_USAGE, Ringcast, http_get, on_both_drivers, serve_command, total,
};
use common::{
    Listener, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawConn, UPGRADE_REQUEST,
    close_frame, final_frame, within,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

on_both_drivers!(
    shard_spread,
    handshake_timeout,
    idle_ping,
    slow_reader,
    connection_limit,
    per_ip_limit,
    drain_on_sigterm,
    drain_with_a_silent_client,
    emfile_without_spin,
    config,
);

/// Sends one binary message on a raw connection and expects it echoed.
async fn echo_round_trip(conn: &mut RawConn, payload: &[u8]) {
    conn.send(&final_frame(OP_BINARY, payload)).await;
    assert_eq!(
        conn.read_message().await,
        (OP_BINARY, payload.to_vec()),
        "echo of {} bytes",
        payload.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Shards share the connections
// ---------------------------------------------------------------------------------------------

async fn shard_spread(driver: Driver) {
    within(Duration::from_secs(60), async {
        let Some(server) = Ringcast::start(driver, &["--shards", "2", "--echo"]).await else {
            return;
        };
        const N: usize = 1000;
        let mut conns = Vec::with_capacity(N);
        for _ in 0..N / 50 {
            let batch = futures_util::future::join_all((0..50).map(|_| server.upgraded())).await;
            conns.extend(batch);
        }
        // Every connection is a working WebSocket, not just an accepted socket.
        for (i, conn) in conns.iter_mut().enumerate().step_by(97) {
            echo_round_trip(conn, format!("conn {i}").as_bytes()).await;
        }
        let stats = server
            .stats_until("1000 WebSockets", Duration::from_secs(5), |s| {
                total(s, "websockets") == N as u64 && total(s, "connections") == N as u64
            })
            .await;
        let shards = stats["shards"].as_array().expect("shards array");
        assert_eq!(shards.len(), 2, "{stats}");
        for shard in shards {
            assert!(
                shard["connections"].as_u64().unwrap_or(0) > 0,
                "a shard got no connection out of {N}: {stats}"
            );
        }
        let sum: u64 = shards
            .iter()
            .map(|s| s["connections"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(sum, N as u64, "{stats}");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 2. A connection that never sends a request is closed by the handshake timeout
// ---------------------------------------------------------------------------------------------

async fn handshake_timeout(driver: Driver) {
    within(Duration::from_secs(30), async {
        let Some(server) = Ringcast::start(driver, &["--handshake-timeout-ms", "300"]).await else {
            return;
        };
        let started = Instant::now();
        let mut conn = server.raw().await;
        assert!(
            conn.closed_within(Duration::from_secs(2)).await,
            "a silent connection is still open 2 s after connecting (handshake timeout 300 ms)"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250),
            "closed after {took:?}, before the 300 ms handshake timeout"
        );
        assert!(
            conn.buffered().is_empty(),
            "server sent {:?}",
            conn.buffered()
        );
        server
            .stats_until("timeouts >= 1", Duration::from_secs(2), |s| {
                total(s, "timeouts") >= 1
            })
            .await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3. Idle WebSockets are pinged; an answer keeps them, silence closes them
// ---------------------------------------------------------------------------------------------

async fn idle_ping(driver: Driver) {
    within(Duration::from_secs(30), async {
        let args = [
            "--echo",
            "--idle-ping-ms",
            "300",
            "--pong-timeout-ms",
            "300",
        ];
        let Some(server) = Ringcast::start(driver, &args).await else {
            return;
        };
        let answering = async {
            let mut conn = server.upgraded().await;
            let opened = Instant::now();
            let ping = conn.expect_frame().await;
            let at = opened.elapsed();
            assert_eq!(
                ping.opcode, OP_PING,
                "expected a ping after 300 ms idle: {ping:?}"
            );
            assert!(
                at >= Duration::from_millis(250) && at <= Duration::from_millis(1500),
                "ping came {at:?} after the upgrade (idle ping 300 ms)"
            );
            conn.send(&final_frame(OP_PONG, &ping.payload)).await;
            // Later pings (the connection goes idle again) get answered too, until 1.6 s.
            let until = opened + Duration::from_millis(1600);
            let mut pings = 1;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match tokio::time::timeout(left, conn.read_frame()).await {
                    Err(_) => break,
                    Ok(None) => panic!(
                        "the server closed a connection that answered its ping ({:?} in)",
                        opened.elapsed()
                    ),
                    Ok(Some(f)) if f.opcode == OP_PING => {
                        pings += 1;
                        conn.send(&final_frame(OP_PONG, &f.payload)).await;
                    }
                    Ok(Some(f)) => panic!("unexpected frame while idle: {f:?}"),
                }
            }
            assert!(opened.elapsed() >= Duration::from_millis(1500));
            echo_round_trip(&mut conn, b"still here").await;
            pings
        };
        let silent = async {
            let mut conn = server.upgraded().await;
            let opened = Instant::now();
            let ping = conn.expect_frame().await;
            assert_eq!(
                ping.opcode, OP_PING,
                "expected a ping after 300 ms idle: {ping:?}"
            );
            // No pong: the server gives up 300 ms after the ping, without a close frame.
            let left = Duration::from_secs(2).saturating_sub(opened.elapsed());
            match tokio::time::timeout(left, conn.read_frame()).await {
                Ok(None) => {}
                Ok(Some(f)) => panic!("expected the TCP close of a pong timeout, got {f:?}"),
                Err(_) => panic!(
                    "a connection that never answered its ping is still open {:?} after the \
                     upgrade (idle ping 300 ms + pong timeout 300 ms)",
                    opened.elapsed()
                ),
            }
            opened.elapsed()
        };
        let (pings, closed_after) = tokio::join!(answering, silent);
        eprintln!(
            "answering client saw {pings} pings; silent client closed after {closed_after:?}"
        );
        server
            .stats_until("pong_timeouts >= 1", Duration::from_secs(2), |s| {
                total(s, "pong_timeouts") >= 1 && total(s, "pings_sent") >= 2
            })
            .await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 4. A reader that falls behind is closed; others on the shard keep their echoes
// ---------------------------------------------------------------------------------------------

/// How a connection that was never read ended, once read.
#[derive(Debug)]
enum Ending {
    CloseFrame(Option<u16>),
    TcpClosed,
}

/// Reads (and discards data frames) until a close frame or the end of TCP.
async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> Ending {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        // Parse every complete frame buffered.
        loop {
            if buf.len() < 2 {
                break;
            }
            let (len, header) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(be) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            assert_eq!(buf[1] & 0x80, 0, "server sent a masked frame");
            if buf.len() < header + len {
                break;
            }
            let opcode = buf[0] & 0x0f;
            if opcode == OP_CLOSE {
                let p = &buf[header..header + len];
                return Ending::CloseFrame(
                    (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])),
                );
            }
            buf.drain(..header + len);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "a reader far behind was neither closed nor sent a close frame ({} bytes \
                 pending)",
                buf.len()
            ),
            Ok(Ok(0)) => return Ending::TcpClosed,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => return Ending::TcpClosed,
        }
    }
}

async fn slow_reader(driver: Driver) {
    within(Duration::from_secs(60), async {
        let args = ["--echo", "--shards", "1", "--max-outbound-bytes", "65536"];
        let Some(server) = Ringcast::start(driver, &args).await else {
            return;
        };
        let mut slow = server.upgraded().await;
        let mut good = connect_async(server.echo_url())
            .await
            .expect("good client")
            .0;
        let stop = AtomicBool::new(false);

        // The slow client writes 4 KiB messages (16 per write) and never reads, for up to 5 s
        // or until the server counts it as a slow consumer.
        let message = final_frame(OP_BINARY, &[0x5a; 4096]);
        let batch: Vec<u8> = message.repeat(16);
        let writer = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let mut sent = 0usize;
            let mut write_error = None;
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout_at(deadline, slow.stream.write_all(&batch)).await {
                    Err(_) => break,
                    Ok(Ok(())) => sent += 16,
                    Ok(Err(e)) => {
                        write_error = Some(e);
                        break;
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            (sent, write_error)
        };
        let watcher = async {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if total(&server.stats().await, "slow_consumer_closes") >= 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stop.store(true, Ordering::Relaxed);
        };
        // Meanwhile a well-behaved client gets every echo, in order, for at least a second.
        let good_client = async {
            let started = Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) || started.elapsed() < Duration::from_secs(1) {
                let payload = format!("message {n}");
                good.send(Message::text(payload.clone()))
                    .await
                    .expect("good send");
                match tokio::time::timeout(Duration::from_secs(5), good.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        assert_eq!(t.as_str(), payload, "the good client's echo");
                    }
                    other => panic!("good client, message {n}: {other:?}"),
                }
                n += 1;
            }
            n
        };
        let ((sent, write_error), (), echoed) = tokio::join!(writer, watcher, good_client);
        eprintln!(
            "slow client wrote {sent} messages of 4 KiB (write error: {write_error:?}); good \
             client got {echoed} echoes"
        );
        assert!(
            echoed >= 5,
            "the good client got only {echoed} echoes meanwhile"
        );
        server
            .stats_until("slow_consumer_closes >= 1", Duration::from_secs(2), |s| {
                total(s, "slow_consumer_closes") >= 1
            })
            .await;
        let ending = read_until_close(&mut slow.stream, Duration::from_secs(15)).await;
        eprintln!("the slow client, reading at last, saw {ending:?}");
        if let Ending::CloseFrame(code) = ending {
            assert_eq!(code, Some(1008), "a slow consumer is closed with 1008");
        }
        // The good client is still served.
        good.send(Message::text("after")).await.expect("good send");
        match tokio::time::timeout(Duration::from_secs(5), good.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "after"),
            other => panic!("good client after the slow one was closed: {other:?}"),
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 5, 6. Connection limits answer before the upgrade
// ---------------------------------------------------------------------------------------------

/// Reads a response head (or whatever arrives before EOF) from a fresh upgrade attempt.
async fn upgrade_attempt_head(stream: &mut TcpStream) -> String {
    let exchange = async {
        stream.write_all(UPGRADE_REQUEST.as_bytes()).await?;
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await? {
                0 => break,
                n => head.extend_from_slice(&chunk[..n]),
            }
        }
        Ok::<_, std::io::Error>(head)
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(head)) => String::from_utf8_lossy(&head).into_owned(),
        Ok(Err(e)) => format!("<error: {e}>"),
        Err(_) => panic!("no answer to an upgrade within 5 s"),
    }
}

/// Sends an upgrade and expects `HTTP/1.1 <status>` with Retry-After, then the close of the
/// connection.
async fn expect_refusal(server: &Ringcast, status: u16) {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let head = upgrade_attempt_head(&mut stream).await;
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "expected HTTP/1.1 {status}, got {head:?}"
    );
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after:"),
        "a {status} refusal carries Retry-After: {head:?}"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "the server kept a refused ({status}) connection open"
    );
}

async fn connection_limit(driver: Driver) {
    within(Duration::from_secs(30), async {
        let args = ["--echo", "--shards", "1", "--max-connections", "10"];
        let Some(server) = Ringcast::start(driver, &args).await else {
            return;
        };
        let mut conns = Vec::new();
        for i in 0..10u8 {
            let mut conn = server.upgraded().await;
            echo_round_trip(&mut conn, &[i]).await;
            conns.push(conn);
        }
        expect_refusal(&server, 503).await;
        server
            .stats_until("refused_over_limit >= 1", Duration::from_secs(2), |s| {
                total(s, "refused_over_limit") >= 1
            })
            .await;
        // The ten keep working.
        for (i, conn) in conns.iter_mut().enumerate() {
            echo_round_trip(conn, format!("again {i}").as_bytes()).await;
        }
        // Close one; once the server has let it go, a new connection fits.
        let mut first = conns.remove(0);
        first.send(&close_frame(1000, b"")).await;
        first.expect_close_reply(1000).await;
        drop(first);
        server
            .stats_until("9 connections", Duration::from_secs(5), |s| {
                total(s, "connections") == 9
            })
            .await;
        let mut conn = server.upgraded().await;
        echo_round_trip(&mut conn, b"room again").await;
    })
    .await
}

async fn per_ip_limit(driver: Driver) {
    within(Duration::from_secs(30), async {
        let args = ["--echo", "--shards", "1", "--max-connections-per-ip", "3"];
        let Some(server) = Ringcast::start(driver, &args).await else {
            return;
        };
        let mut conns = Vec::new();
        for i in 0..3u8 {
            let mut conn = server.upgraded().await;
            echo_round_trip(&mut conn, &[i]).await;
            conns.push(conn);
        }
        expect_refusal(&server, 429).await;
        server
            .stats_until("refused_per_ip >= 1", Duration::from_secs(2), |s| {
                total(s, "refused_per_ip") >= 1
            })
            .await;
        for conn in &mut conns {
            echo_round_trip(conn, b"unaffected").await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 7. SIGTERM drains: close 1001 for everyone, /ready 503, exit 0
// ---------------------------------------------------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A tokio-tungstenite client with one echo behind it.
async fn echoing_client(url: String) -> Ws {
    let (mut ws, _) = connect_async(url).await.expect("connect");
    ws.send(Message::text("hello")).await.expect("send");
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "hello"),
        other => panic!("echo before the drain: {other:?}"),
    }
    ws
}

/// Reads until the server closes; returns the close code it got (the library answers the
/// close on the next read), or what happened instead.
async fn read_to_close(mut ws: Ws) -> Result<(Option<u16>, Instant), String> {
    let mut code = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Err(_) => return Err("no close from a draining server within 10 s".into()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                code = Some((frame.map(|f| u16::from(f.code)), Instant::now()));
            }
            Ok(Some(Ok(other))) => return Err(format!("unexpected message: {other:?}")),
            Ok(Some(Err(e))) if code.is_none() => return Err(format!("no close frame: {e}")),
            Ok(Some(Err(_))) | Ok(None) => break,
        }
    }
    code.ok_or_else(|| "TCP closed without a close frame".to_string())
}

/// Polls `/ready` right after SIGTERM until it answers 503; the server must still be up.
async fn expect_ready_503(server: &Ringcast) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match http_get(server.admin, "/ready").await {
            Ok((503, _)) => return,
            Ok((200, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => panic!("/ready after SIGTERM: {other:?} (expected 503 while draining)"),
        }
    }
}

async fn drain(driver: Driver, silent_client: bool) {
    let Some(mut server) = Ringcast::start(driver, &["--echo", "--drain-timeout-ms", "2000"]).await
    else {
        return;
    };
    let mut clients = Vec::new();
    for _ in 0..20 {
        let ws = echoing_client(server.echo_url()).await;
        clients.push(tokio::spawn(read_to_close(ws)));
    }
    let mut silent = if silent_client {
        let mut conn = server.upgraded().await;
        echo_round_trip(&mut conn, b"silent").await;
        Some(conn)
    } else {
        None
    };
    assert_eq!(
        http_get(server.admin, "/ready").await.expect("/ready").0,
        200,
        "/ready before SIGTERM"
    );
    let signalled = Instant::now();
    server.sigterm();
    expect_ready_503(&server).await;
    let stats = server.stats().await;
    assert_eq!(stats["draining"], true, "/stats while draining: {stats}");
    // New connections are not served any more: refused, closed, or answered 503.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Ok(mut stream) = TcpStream::connect(server.addr).await {
        let head = upgrade_attempt_head(&mut stream).await;
        assert!(
            !head.starts_with("HTTP/1.1 101"),
            "a draining server upgraded a new connection: {head:?}"
        );
    }
    if let Some(conn) = &mut silent {
        // It reads the going-away close but never answers it.
        assert_eq!(
            conn.read_close_code().await,
            Some(1001),
            "silent client's close code"
        );
    }
    let mut wrong = Vec::new();
    let mut arrivals = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        match client.await.expect("client task") {
            Ok((Some(1001), at)) => arrivals.push(at.duration_since(signalled)),
            ending => wrong.push(format!("client {i} (connected #{}): {ending:?}", i + 1)),
        }
    }
    let status = server.wait_exit(Duration::from_secs(6)).await;
    let took = signalled.elapsed();
    assert!(
        wrong.is_empty(),
        "{} of 20 clients did not get close 1001 while draining (exit {status} {took:?} after \
         SIGTERM):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // The closes are spread over the first half of the 2 s drain window, not sent at once.
    let first = arrivals.iter().min().copied().unwrap_or_default();
    let last = arrivals.iter().max().copied().unwrap_or_default();
    eprintln!("close 1001 arrived between {first:?} and {last:?} after SIGTERM");
    assert!(
        last >= Duration::from_millis(500) && last <= Duration::from_millis(1300),
        "closes arrived between {first:?} and {last:?} after SIGTERM; expected them spread over \
         about the first second (half the 2 s drain window)"
    );
    let limit = if silent_client {
        Duration::from_millis(2000 + 1000)
    } else {
        Duration::from_secs(5)
    };
    assert!(
        took <= limit,
        "the server exited {took:?} after SIGTERM, over {limit:?}"
    );
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}; stderr:\n{}",
        server.log()
    );
    eprintln!("exited 0 {took:?} after SIGTERM");
    if let Some(conn) = &mut silent {
        assert!(
            conn.closed_within(Duration::from_secs(1)).await,
            "the silent client's connection outlived the server"
        );
    }
}

async fn drain_on_sigterm(driver: Driver) {
    within(Duration::from_secs(30), drain(driver, false)).await
}

async fn drain_with_a_silent_client(driver: Driver) {
    within(Duration::from_secs(30), drain(driver, true)).await
}

// ---------------------------------------------------------------------------------------------
// 8. Out of descriptors: accept backs off instead of spinning
// ---------------------------------------------------------------------------------------------

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

fn have_prlimit() -> bool {
    std::process::Command::new("prlimit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn emfile_without_spin(driver: Driver) {
    within(Duration::from_secs(60), async {
        // Both wrappers exec the server, so the PID is the server's.
        let wrapper: &[&str] = if have_prlimit() {
            &["prlimit", "--nofile=64:64"]
        } else {
            &["sh", "-c", "ulimit -n 64 && exec \"$@\"", "sh"]
        };
        let args = ["--echo", "--shards", "1", "--max-connections", "1000"];
        let command = serve_command(wrapper, Some(driver), &args);
        let Some(mut server) = Ringcast::launch(driver, command).await else {
            return;
        };
        // /stats works before the descriptors run out.
        server.stats().await;
        let mut clients = Vec::new();
        for _ in 0..100 {
            clients.push(server.raw().await);
        }
        // Give the server time to hit EMFILE (it logs it), then measure.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !server.log().contains("accept failed") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = cpu_ticks(server.pid);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let used = cpu_ticks(server.pid) - before;
        server.assert_running();
        assert!(
            used < 50,
            "the server used {used} ticks (1/100 s) of CPU in 5 s with accept at EMFILE \
             (limit 50): it spins; stderr tail:\n{}",
            server
                .log()
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .join("\n")
        );
        drop(clients);
        // With descriptors free again, /stats and new connections work.
        let stats = server
            .stats_until(
                "0 connections after the clients left",
                Duration::from_secs(10),
                |s| total(s, "connections") == 0,
            )
            .await;
        assert!(total(&stats, "accept_errors") > 0, "accept_errors: {stats}");
        eprintln!("CPU over 5 s at EMFILE: {used} ticks; {stats}");
        let mut conn = server.upgraded().await;
        echo_round_trip(&mut conn, b"after EMFILE").await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 9. Settings: bad values exit 64 naming the key; flags > env > file
// ---------------------------------------------------------------------------------------------

/// Runs a `ringcast serve` expected to exit at once; (status, stderr).
async fn run_to_exit(command: &mut Command) -> (ExitStatus, String) {
    let output = tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .expect("ringcast with a bad setting did not exit within 10 s")
        .expect("run ringcast");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn temp_toml(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ringcast-engine-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write config file");
    path
}

async fn expect_usage_error(driver: Driver, args: &[&str], names: &str) {
    let (status, stderr) = run_to_exit(&mut serve_command(&[], Some(driver), args)).await;
    assert_eq!(
        status.code(),
        Some(EXIT_USAGE),
        "args {args:?}: exit status {status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(names),
        "args {args:?}: stderr does not name {names}:\n{stderr}"
    );
}

/// A limit hit on a message of `len` bytes: echoed, or closed with 1009.
async fn message_outcome(server: &Ringcast, len: usize) -> Result<(), u16> {
    let mut conn = server.upgraded().await;
    let payload = vec![b'm'; len];
    conn.send(&final_frame(OP_TEXT, &payload)).await;
    let frame = conn.expect_frame().await;
    if frame.opcode == OP_CLOSE {
        let code = frame.close_code().unwrap_or(0);
        let _ = conn.try_send(&close_frame(code, b"")).await;
        return Err(code);
    }
    assert_eq!((frame.opcode, frame.fin), (OP_TEXT, true), "{frame:?}");
    assert_eq!(frame.payload, payload);
    Ok(())
}

async fn config(driver: Driver) {
    within(Duration::from_secs(60), async {
        expect_usage_error(driver, &["--max-message-bytes", "abc"], "max-message-bytes").await;
        let typo = temp_toml(&format!("typo-{}", driver.flag()), "max_frame_bytez = 1\n");
        expect_usage_error(
            driver,
            &["--config", typo.to_str().unwrap()],
            "max_frame_bytez",
        )
        .await;
        let zero = temp_toml(&format!("zero-{}", driver.flag()), "close_timeout_ms = 0\n");
        expect_usage_error(
            driver,
            &["--config", zero.to_str().unwrap()],
            "close_timeout_ms",
        )
        .await;
        let _ = std::fs::remove_file(typo);
        let _ = std::fs::remove_file(zero);

        let file = temp_toml(
            &format!("prec-{}", driver.flag()),
            "max_message_bytes = 100\n",
        );
        let file_arg = file.to_str().unwrap().to_string();
        let with_env = |args: &[&str]| {
            let mut command = serve_command(&[], Some(driver), args);
            command.env("RINGCAST_MAX_MESSAGE_BYTES", "200");
            command
        };

        // Flag 300 over env 200 over file 100.
        let command = with_env(&[
            "--echo",
            "--config",
            &file_arg,
            "--max-message-bytes",
            "300",
        ]);
        let Some(server) = Ringcast::launch(driver, command).await else {
            return;
        };
        assert_eq!(
            message_outcome(&server, 250).await,
            Ok(()),
            "flag 300: 250 bytes"
        );
        assert_eq!(
            message_outcome(&server, 301).await,
            Err(1009),
            "flag 300: 301 bytes"
        );
        drop(server);

        // Env 200 over file 100.
        let command = with_env(&["--echo", "--config", &file_arg]);
        let server = Ringcast::launch(driver, command)
            .await
            .expect("started before");
        assert_eq!(
            message_outcome(&server, 150).await,
            Ok(()),
            "env 200: 150 bytes"
        );
        assert_eq!(
            message_outcome(&server, 250).await,
            Err(1009),
            "env 200: 250 bytes"
        );
        drop(server);

        // File 100 over the default.
        let command = serve_command(&[], Some(driver), &["--echo", "--config", &file_arg]);
        let server = Ringcast::launch(driver, command)
            .await
            .expect("started before");
        assert_eq!(
            message_outcome(&server, 100).await,
            Ok(()),
            "file 100: 100 bytes"
        );
        assert_eq!(
            message_outcome(&server, 150).await,
            Err(1009),
            "file 100: 150 bytes"
        );
        drop(server);
        let _ = std::fs::remove_file(file);
    })
    .await
}
