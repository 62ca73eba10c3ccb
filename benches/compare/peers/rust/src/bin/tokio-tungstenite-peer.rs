//! The compare peer on tokio-tungstenite: hyper 1 for HTTP/1.1 and the upgrade, then
//! `WebSocketStream::from_raw_socket` (the tokio-tungstenite `server-custom-accept` example).
//! One current-thread runtime. A published message is one `Message` whose payload (`Bytes`) is
//! shared by every subscriber's queue; each subscriber's writer task encodes its own frame.

#[path = "../common.rs"]
mod common;

use common::{Payload, Route, Shared, Topics, respond};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

fn to_message(p: Payload) -> Message {
    match p {
        // The publisher checked it is UTF-8; `try_from` checks again (once per message).
        Payload::Text(b) => Message::Text(Utf8Bytes::try_from(b).expect("checked UTF-8")),
        Payload::Binary(b) => Message::Binary(b),
    }
}

fn is_ws_upgrade(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    req.method() == Method::GET
        && h.get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && h.get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("upgrade"))
            })
        && h.get(SEC_WEBSOCKET_KEY).is_some()
}

async fn handle(
    req: Request<Incoming>,
    topics: Shared<Message>,
    token: std::sync::Arc<str>,
) -> Response<common::Body> {
    let path = req.uri().path().to_owned();
    match common::route(&path) {
        Route::Topic(name) if req.method() == Method::POST => {
            let name = name.to_owned();
            common::http_publish(req, &token, |p| {
                let msg = to_message(p);
                topics.lock().unwrap().publish(&name, &msg, None);
            })
            .await
        }
        Route::NotFound => respond(StatusCode::NOT_FOUND, "not found\n"),
        _ if !is_ws_upgrade(&req) => {
            respond(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n")
        }
        route => {
            let topic = match route {
                Route::Topic(name) => Some(name.to_owned()),
                _ => None,
            };
            let accept = derive_accept_key(req.headers()[SEC_WEBSOCKET_KEY].as_bytes());
            let mut req = req;
            tokio::spawn(async move {
                let Ok(upgraded) = hyper::upgrade::on(&mut req).await else {
                    return;
                };
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                match topic {
                    None => echo(ws).await,
                    Some(t) => subscriber(ws, t, topics).await,
                }
            });
            let mut res = respond(StatusCode::SWITCHING_PROTOCOLS, "");
            let h = res.headers_mut();
            h.insert(CONNECTION, "Upgrade".parse().unwrap());
            h.insert(UPGRADE, "websocket".parse().unwrap());
            h.insert(SEC_WEBSOCKET_ACCEPT, accept.parse().unwrap());
            res
        }
    }
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn echo(mut ws: Ws) {
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
}

async fn subscriber(ws: Ws, topic: String, topics: Shared<Message>) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let id = topics.lock().unwrap().subscribe(&topic, tx);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            // Queue what is already waiting, then flush once.
            if sink.feed(msg).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                topics.lock().unwrap().publish(&topic, &msg, Some(id));
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    topics.lock().unwrap().unsubscribe(&topic, id);
    writer.abort();
}

fn main() {
    let topics: Shared<Message> = Topics::new();
    let token = common::token();
    common::serve("tokio-tungstenite-peer", move |req| {
        handle(req, topics.clone(), token.clone())
    });
}
