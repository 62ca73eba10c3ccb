//! A blocking stand-in for the server contract, for end-to-end tests of `bench echo` and `bench
//! fanout`: `GET /echo`, `GET /topics/{name}` (client publish goes to the other subscribers) and
//! pipelined `POST /topics/{name}` with a bearer token; and a sliver of Pusher for one app
//! ([`APP_ID`], [`APP_KEY`], [`APP_SECRET`]): `GET /app/{key}` (connection_established, public
//! subscribe, one `pusher:ping` after subscribing) and pipelined, signed `POST
//! /apps/{id}/events`. One thread per connection; never used outside tests, never fast.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::client::accept_for_key;
use super::frame::{self, Opcode};

type Subscribers = Vec<(u64, Arc<Mutex<TcpStream>>)>;

/// The one Pusher app the stand-in knows.
pub const APP_ID: &str = "app-id";
/// Its key.
pub const APP_KEY: &str = "app-key";
/// Its secret.
pub const APP_SECRET: &str = "app-secret";

/// Deliberate mistakes, so tests can check that the bench counts them exactly.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Skip every publish whose index (0-based, per server) is a multiple of this.
    pub drop_every: Option<u64>,
    /// Send every publish twice to the first subscriber that joined.
    pub duplicate_to_first: bool,
    /// Answer each HTTP request with `Connection: close` and close, ignoring requests pipelined
    /// behind it (as Sockudo's HTTP API does).
    pub close_http_after_response: bool,
}

#[derive(Default)]
pub struct State {
    topics: Mutex<HashMap<String, Subscribers>>,
    next_id: AtomicU64,
    publishes: AtomicU64,
    pongs: AtomicU64,
    faults: Faults,
}

impl State {
    /// `pusher:pong` frames received so far.
    pub fn pongs(&self) -> u64 {
        self.pongs.load(Ordering::Relaxed)
    }
}

/// Starts the stand-in on 127.0.0.1:0; it serves until the test process ends.
pub fn spawn(token: &str) -> SocketAddr {
    spawn_with_faults(token, Faults::default())
}

/// [`spawn`], making the given mistakes.
pub fn spawn_with_faults(token: &str, faults: Faults) -> SocketAddr {
    spawn_observed(token, faults).0
}

/// [`spawn_with_faults`], also returning the state for counters.
pub fn spawn_observed(token: &str, faults: Faults) -> (SocketAddr, Arc<State>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State {
        faults,
        ..State::default()
    });
    let token = token.to_owned();
    let observed = Arc::clone(&state);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let state = Arc::clone(&state);
            let token = token.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, &state, &token);
            });
        }
    });
    (addr, observed)
}

fn serve(mut stream: TcpStream, state: &State, token: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    let Some(head_end) = read_head(&mut stream, &mut buf)? else {
        return Ok(());
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method == "POST" {
        return serve_http(stream, buf, state, token);
    }
    buf.drain(..head_end);
    let key = header(&head, "sec-websocket-key").unwrap_or_default();
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_for_key(&key)
    );
    stream.write_all(response.as_bytes())?;
    if let Some(rest) = path.strip_prefix("/app/") {
        return serve_pusher(&mut stream, buf, state, rest);
    }
    if path == "/echo" {
        return serve_frames(&mut stream, buf, |opcode, payload, stream| {
            stream.write_all(&server_frame(opcode, payload))
        });
    }
    let Some(topic) = path.strip_prefix("/topics/") else {
        return Ok(());
    };
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    state
        .topics
        .lock()
        .unwrap()
        .entry(topic.to_owned())
        .or_default()
        .push((id, writer));
    let result = serve_frames(&mut stream, buf, |opcode, payload, _| {
        publish(state, topic, Some(id), opcode, payload);
        Ok(())
    });
    if let Some(subs) = state.topics.lock().unwrap().get_mut(topic) {
        subs.retain(|(sub, _)| *sub != id);
    }
    result
}

/// `/app/{key}?...`: greets, subscribes to public channels, pings once after the first
/// subscription, counts pongs. An unknown key gets `pusher:error` 4001 and a close with 4001.
fn serve_pusher(
    stream: &mut TcpStream,
    buf: Vec<u8>,
    state: &State,
    target: &str,
) -> std::io::Result<()> {
    let key = target.split('?').next().unwrap_or_default();
    if key != APP_KEY {
        let error = r#"{"event":"pusher:error","data":{"message":"Unknown app","code":4001}}"#;
        stream.write_all(&server_frame(Opcode::Text, error.as_bytes()))?;
        stream.write_all(&server_frame(Opcode::Close, &4001u16.to_be_bytes()))?;
        return Ok(());
    }
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let established = format!(
        r#"{{"event":"pusher:connection_established","data":"{{\"socket_id\":\"1.{id}\",\"activity_timeout\":120}}"}}"#
    );
    stream.write_all(&server_frame(Opcode::Text, established.as_bytes()))?;
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    let mut joined = Vec::new();
    let result = serve_frames(stream, buf, |_, payload, _| {
        let message: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
        match message["event"].as_str() {
            Some("pusher:subscribe") => {
                let channel = message["data"]["channel"].as_str().unwrap_or_default();
                state
                    .topics
                    .lock()
                    .unwrap()
                    .entry(format!("pusher:{channel}"))
                    .or_default()
                    .push((id, Arc::clone(&writer)));
                joined.push(format!("pusher:{channel}"));
                let succeeded = serde_json::json!({
                    "event": "pusher_internal:subscription_succeeded",
                    "channel": channel,
                    "data": "{}",
                });
                let mut w = writer.lock().unwrap();
                w.write_all(&server_frame(
                    Opcode::Text,
                    succeeded.to_string().as_bytes(),
                ))?;
                w.write_all(&server_frame(
                    Opcode::Text,
                    br#"{"event":"pusher:ping","data":{}}"#,
                ))
            }
            Some("pusher:pong") => {
                state.pongs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            _ => Ok(()),
        }
    });
    let mut topics = state.topics.lock().unwrap();
    for topic in joined {
        if let Some(subs) = topics.get_mut(&topic) {
            subs.retain(|(sub, _)| *sub != id);
        }
    }
    result
}

/// Reads frames, handing data messages to `on_data`, until a Close (answered) or EOF.
fn serve_frames(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    mut on_data: impl FnMut(Opcode, &[u8], &mut TcpStream) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Ok(Some(h)) = frame::decode_header(&buf) {
            let end = h.header_bytes + h.payload_bytes as usize;
            if buf.len() < end {
                break;
            }
            let mut payload = buf[h.header_bytes..end].to_vec();
            if let Some(mask) = h.mask {
                frame::apply_mask(&mut payload, mask, 0);
            }
            buf.drain(..end);
            match h.opcode {
                Opcode::Text | Opcode::Binary => on_data(h.opcode, &payload, stream)?,
                Opcode::Close => {
                    let _ = stream.write_all(&server_frame(Opcode::Close, &payload));
                    return Ok(());
                }
                Opcode::Ping => stream.write_all(&server_frame(Opcode::Pong, &payload))?,
                Opcode::Pong | Opcode::Continuation => {}
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Pipelined `POST /topics/{name}`: answers each request in order.
fn serve_http(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    state: &State,
    token: &str,
) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let expected_auth = format!("Bearer {token}");
    loop {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            let Ok(httparse::Status::Complete(head_bytes)) = request.parse(&buf) else {
                break;
            };
            let find = |name: &str| {
                request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let length: usize = find("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() < head_bytes + length {
                break;
            }
            let authorized = find("authorization").as_deref() == Some(expected_auth.as_str());
            let target = request.path.unwrap_or_default().to_owned();
            let topic = target
                .strip_prefix("/topics/")
                .unwrap_or_default()
                .to_owned();
            let body = buf[head_bytes..head_bytes + length].to_vec();
            buf.drain(..head_bytes + length);
            let response = if target.starts_with("/apps/") {
                pusher_trigger(state, &target, &body)
            } else if authorized {
                let opcode = if std::str::from_utf8(&body).is_ok() {
                    Opcode::Text
                } else {
                    Opcode::Binary
                };
                let n = publish(state, &topic, None, opcode, &body);
                let json = format!("{{\"subscribers\":{n}}}");
                format!(
                    "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{json}",
                    json.len()
                )
            } else {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_owned()
            };
            if state.faults.close_http_after_response {
                let closing = response.replacen("\r\n", "\r\nConnection: close\r\n", 1);
                return stream.write_all(closing.as_bytes());
            }
            stream.write_all(response.as_bytes())?;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Signed `POST /apps/{id}/events`: checks the signature with the server's verifier and sends
/// the event to the channel's subscribers; 200 `{}`, or 401.
fn pusher_trigger(state: &State, target: &str, body: &[u8]) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = crate::http_api::Query::parse(query.as_bytes()).unwrap();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let secret = |key: &str| (key == APP_KEY).then_some(APP_SECRET);
    let verified = crate::http_api::verify_request("POST", path, &query, body, now_s, secret);
    if path != format!("/apps/{APP_ID}/events") || verified.is_err() {
        return "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_owned();
    }
    let trigger: serde_json::Value = serde_json::from_slice(body).unwrap();
    let channel = trigger["channel"].as_str().unwrap();
    let event = serde_json::json!({
        "event": trigger["name"],
        "channel": channel,
        "data": trigger["data"],
    });
    publish(
        state,
        &format!("pusher:{channel}"),
        None,
        Opcode::Text,
        event.to_string().as_bytes(),
    );
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_owned()
}

/// Sends a message to every subscriber of `topic` except `from`; returns how many got it.
fn publish(state: &State, topic: &str, from: Option<u64>, opcode: Opcode, payload: &[u8]) -> usize {
    let bytes = server_frame(opcode, payload);
    let index = state.publishes.fetch_add(1, Ordering::Relaxed);
    if state
        .faults
        .drop_every
        .is_some_and(|every| index.is_multiple_of(every))
    {
        return 0;
    }
    let subs: Subscribers = state
        .topics
        .lock()
        .unwrap()
        .get(topic)
        .cloned()
        .unwrap_or_default();
    let mut delivered = 0;
    for (id, writer) in subs {
        if Some(id) == from {
            continue;
        }
        let mut writer = writer.lock().unwrap();
        if writer.write_all(&bytes).is_ok() {
            delivered += 1;
        }
        if state.faults.duplicate_to_first && id == 0 {
            let _ = writer.write_all(&bytes);
        }
    }
    delivered
}

fn server_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    frame::encode_header(true, opcode, None, payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}
