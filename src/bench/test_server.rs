//! A blocking stand-in for the server contract, for end-to-end tests of `bench echo` and `bench
//! fanout`: `GET /echo`, `GET /topics/{name}` (client publish goes to the other subscribers) and
//! pipelined `POST /topics/{name}` with a bearer token. One thread per connection; never used
//! outside tests, never fast.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::client::accept_for_key;
use super::frame::{self, Opcode};

type Subscribers = Vec<(u64, Arc<Mutex<TcpStream>>)>;

/// Deliberate mistakes, so tests can check that the bench counts them exactly.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Skip every publish whose index (0-based, per server) is a multiple of this.
    pub drop_every: Option<u64>,
    /// Send every publish twice to the first subscriber that joined.
    pub duplicate_to_first: bool,
}

#[derive(Default)]
struct State {
    topics: Mutex<HashMap<String, Subscribers>>,
    next_id: AtomicU64,
    publishes: AtomicU64,
    faults: Faults,
}

/// Starts the stand-in on 127.0.0.1:0; it serves until the test process ends.
pub fn spawn(token: &str) -> SocketAddr {
    spawn_with_faults(token, Faults::default())
}

/// [`spawn`], making the given mistakes.
pub fn spawn_with_faults(token: &str, faults: Faults) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State {
        faults,
        ..State::default()
    });
    let token = token.to_owned();
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
    addr
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
            let topic = request
                .path
                .and_then(|p| p.strip_prefix("/topics/"))
                .unwrap_or_default()
                .to_owned();
            let body = buf[head_bytes..head_bytes + length].to_vec();
            buf.drain(..head_bytes + length);
            let response = if authorized {
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
            stream.write_all(response.as_bytes())?;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
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
