//! What both Rust peers share: settings from the environment, routing, the publish token
//! check, the topic registry and the single-threaded runtime with a hyper 1 HTTP/1.1 server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc::UnboundedSender;

pub type Body = Full<Bytes>;

/// One message to deliver: text (valid UTF-8) or binary, encoded by each writer.
#[derive(Clone)]
pub enum Payload {
    Text(Bytes),
    Binary(Bytes),
}

/// Topic name -> subscriber id -> that subscriber's outgoing queue.
pub struct Topics<T> {
    next_id: u64,
    map: HashMap<String, HashMap<u64, UnboundedSender<T>>>,
}

pub type Shared<T> = Arc<Mutex<Topics<T>>>;

impl<T: Clone> Topics<T> {
    pub fn new() -> Shared<T> {
        Arc::new(Mutex::new(Topics {
            next_id: 0,
            map: HashMap::new(),
        }))
    }
    pub fn subscribe(&mut self, topic: &str, tx: UnboundedSender<T>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.map.entry(topic.to_owned()).or_default().insert(id, tx);
        id
    }
    pub fn unsubscribe(&mut self, topic: &str, id: u64) {
        if let Some(subs) = self.map.get_mut(topic) {
            subs.remove(&id);
            if subs.is_empty() {
                self.map.remove(topic);
            }
        }
    }
    /// Queue `msg` for every subscriber of `topic` but `except`; returns how many.
    pub fn publish(&self, topic: &str, msg: &T, except: Option<u64>) -> usize {
        let Some(subs) = self.map.get(topic) else {
            return 0;
        };
        let mut n = 0;
        for (id, tx) in subs {
            if Some(*id) != except && tx.send(msg.clone()).is_ok() {
                n += 1;
            }
        }
        n
    }
}

pub enum Route<'a> {
    Echo,
    Topic(&'a str),
    NotFound,
}

pub fn route(path: &str) -> Route<'_> {
    if path == "/echo" {
        Route::Echo
    } else if let Some(name) = path.strip_prefix("/topics/") {
        if name.is_empty() || name.contains('/') {
            Route::NotFound
        } else {
            Route::Topic(name)
        }
    } else {
        Route::NotFound
    }
}

pub fn respond(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    if body.starts_with('{') {
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    res
}

/// `POST /topics/{name}`: check the bearer token, read the body, hand it to `publish`.
pub async fn http_publish(
    req: Request<Incoming>,
    token: &str,
    publish: impl FnOnce(Payload),
) -> Response<Body> {
    let authorized = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|t| !token.is_empty() && t == token.as_bytes());
    // Read the body either way so the connection stays usable for the next pipelined request.
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return respond(StatusCode::BAD_REQUEST, "{\"error\":\"body\"}"),
    };
    if !authorized {
        return respond(StatusCode::UNAUTHORIZED, "{\"error\":\"unauthorized\"}");
    }
    publish(if std::str::from_utf8(&body).is_ok() {
        Payload::Text(body)
    } else {
        Payload::Binary(body)
    });
    respond(StatusCode::ACCEPTED, "{\"ok\":true}")
}

/// Bind `127.0.0.1:$PORT` on a current-thread runtime and serve every connection with hyper's
/// HTTP/1.1 server (keep-alive, pipelining with `pipeline_flush`, upgrades).
pub fn serve<F, Fut>(name: &str, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // `TcpListener::bind` listens with mio's backlog of 128, which overflows (1 s SYN
        // retransmits) while `ringcast bench connect` has 512 handshakes in flight; Node listens
        // with 511, Bun with 512, ringcast with 4096. 1024 here, via tokio's `TcpSocket`.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(([127, 0, 0, 1], port).into()).expect("bind");
        let listener = socket.listen(1024).expect("listen");
        println!("{name}: listening on {}", listener.local_addr().unwrap());
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{name}: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = http1::Builder::new()
                    .pipeline_flush(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
}

pub fn token() -> Arc<str> {
    std::env::var("TOKEN").unwrap_or_default().into()
}
