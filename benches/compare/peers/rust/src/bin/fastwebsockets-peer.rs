//! The compare peer on fastwebsockets: hyper 1 for HTTP/1.1, `fastwebsockets::upgrade` for the
//! handshake (the crate's `echo_server` / `echo_server_split` examples). One current-thread
//! runtime. A published payload (`Bytes`) is shared by every subscriber's queue; each
//! subscriber's writer task writes its own frame header + payload.

#[path = "../common.rs"]
mod common;

use bytes::Bytes;
use common::{Payload, Route, Shared, Topics, respond};
use fastwebsockets::{
    FragmentCollector, FragmentCollectorRead, Frame, OpCode, WebSocketError, upgrade,
};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

/// What a subscriber's writer sends: a data frame, or a control frame the reader owes (pong, close).
type Out = (OpCode, Bytes);

fn to_out(p: Payload) -> Out {
    match p {
        Payload::Text(b) => (OpCode::Text, b),
        Payload::Binary(b) => (OpCode::Binary, b),
    }
}

async fn handle(
    mut req: Request<Incoming>,
    topics: Shared<Out>,
    token: std::sync::Arc<str>,
) -> Response<common::Body> {
    let path = req.uri().path().to_owned();
    match common::route(&path) {
        Route::Topic(name) if req.method() == Method::POST => {
            let name = name.to_owned();
            common::http_publish(req, &token, |p| {
                let out = to_out(p);
                topics.lock().unwrap().publish(&name, &out, None);
            })
            .await
        }
        Route::NotFound => respond(StatusCode::NOT_FOUND, "not found\n"),
        _ if req.method() != Method::GET || !upgrade::is_upgrade_request(&req) => {
            respond(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n")
        }
        route => {
            let topic = match route {
                Route::Topic(name) => Some(name.to_owned()),
                _ => None,
            };
            let (res, fut) = match upgrade::upgrade(&mut req) {
                Ok(x) => x,
                Err(_) => return respond(StatusCode::BAD_REQUEST, "bad upgrade\n"),
            };
            tokio::spawn(async move {
                let r = match topic {
                    None => echo(fut).await,
                    Some(t) => subscriber(fut, t, topics).await,
                };
                drop(r);
            });
            res.map(|_| common::Body::new(Bytes::new()))
        }
    }
}

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn subscriber(
    fut: upgrade::UpgradeFut,
    topic: String,
    topics: Shared<Out>,
) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    // The write half goes through a BufWriter so that the frames already queued for this
    // subscriber leave in one write and one `flush`, as the tokio-tungstenite peer's `feed` +
    // `flush` do (fastwebsockets writes each frame straight to its stream otherwise).
    let (rx_half, mut tx_half) = ws.split(|s| {
        let (r, w) = tokio::io::split(s);
        (r, tokio::io::BufWriter::new(w))
    });
    let mut reader = FragmentCollectorRead::new(rx_half);
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let id = topics.lock().unwrap().subscribe(&topic, tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(mut next) = rx.recv().await {
            loop {
                let (opcode, payload) = next;
                let close = opcode == OpCode::Close;
                let frame = Frame::new(
                    true,
                    opcode,
                    None,
                    fastwebsockets::Payload::Borrowed(&payload),
                );
                if tx_half.write_frame(frame).await.is_err() {
                    return;
                }
                if close {
                    let _ = tx_half.flush().await;
                    return;
                }
                match rx.try_recv() {
                    Ok(more) => next = more,
                    Err(_) => break,
                }
            }
            if tx_half.flush().await.is_err() {
                return;
            }
        }
    });
    let result = async {
        loop {
            // Pongs and the close reply the reader owes go through this subscriber's writer.
            let mut obligated = |f: Frame<'_>| {
                let out = (f.opcode, Bytes::copy_from_slice(&f.payload));
                let tx = tx.clone();
                async move {
                    let _ = tx.send(out);
                    Ok::<_, WebSocketError>(())
                }
            };
            let frame = reader.read_frame(&mut obligated).await?;
            match frame.opcode {
                OpCode::Close => break,
                OpCode::Text | OpCode::Binary => {
                    let out = (frame.opcode, Bytes::copy_from_slice(&frame.payload));
                    topics.lock().unwrap().publish(&topic, &out, Some(id));
                }
                _ => {}
            }
        }
        Ok::<_, WebSocketError>(())
    }
    .await;
    topics.lock().unwrap().unsubscribe(&topic, id);
    drop(tx);
    // Let the writer send the close reply (if any) and stop.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
    result
}

fn main() {
    let topics: Shared<Out> = Topics::new();
    let token = common::token();
    common::serve("fastwebsockets-peer", move |req| {
        handle(req, topics.clone(), token.clone())
    });
}
