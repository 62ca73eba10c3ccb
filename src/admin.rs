//! The admin listener: `/stats`, `/ready` and `/health` on their own address (default
//! 127.0.0.1:9601), off the public port. A plain blocking thread: scrapes are rare and small,
//! and nothing here may ever touch a shard's hot path (it only reads published counters).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::proto::http::{self, HEADER_COUNT_CEILING, HttpLimits};
use crate::shard::Shared;
use crate::shard::stats::ShardStats;

/// A request head larger than this is refused; admin requests are tiny.
const ADMIN_HEAD_BYTES_MAX: usize = 8 * 1024;
/// A client gets this long to send its request and read the answer.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Admin {
    pub local_addr: SocketAddr,
}

impl Admin {
    /// Binds `addr` and serves it on a background thread until the process exits.
    pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> io::Result<Admin> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        std::thread::Builder::new()
            .name("ringcast-admin".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(s) => {
                            if let Err(e) = serve_one(s, &shared) {
                                tracing::debug!("admin request failed: {e}");
                            }
                        }
                        Err(e) => {
                            tracing::warn!("admin accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(Admin { local_addr })
    }
}

fn serve_one(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut buf = vec![0u8; ADMIN_HEAD_BYTES_MAX];
    let mut len = 0;
    let limits = HttpLimits {
        header_bytes_max: ADMIN_HEAD_BYTES_MAX,
        header_count_max: 64,
        body_bytes_max: 0,
    };
    let (status, content_type, body) = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
        match http::parse_head(&buf[..len], &mut headers, &limits) {
            Ok(None) if len < buf.len() => continue,
            Ok(None) => break (431, "text/plain", b"request too large".to_vec()),
            Err(e) => {
                break (
                    e.status(),
                    "text/plain",
                    http::reason_phrase(e.status()).into(),
                );
            }
            Ok(Some(head)) => break route(head.method, head.path, shared),
        }
    };
    let mut out = Vec::with_capacity(body.len() + 128);
    http::write_response(
        status,
        &[("Content-Type", content_type)],
        &body,
        false,
        &mut out,
    );
    stream.write_all(&out)
}

fn route(method: &str, path: &str, shared: &Shared) -> (u16, &'static str, Vec<u8>) {
    if method != "GET" {
        return (405, "text/plain", b"method not allowed".to_vec());
    }
    match path {
        "/health" => (200, "text/plain", b"ok".to_vec()),
        "/ready" if shared.stop.load(Ordering::Relaxed) => {
            (503, "text/plain", b"draining".to_vec())
        }
        "/ready" => (200, "text/plain", b"ready".to_vec()),
        "/stats" => (200, "application/json", stats_json(shared).into_bytes()),
        _ => (404, "text/plain", b"not found".to_vec()),
    }
}

/// `{"draining":false,"driver":"io_uring","shards":[{"shard":0,"connections":..},..],"total":{..}}`
pub fn stats_json(shared: &Shared) -> String {
    let mut total = ShardStats::default();
    let mut shards = Vec::new();
    for (i, c) in shared.counters.iter().enumerate() {
        let s = c.snapshot();
        total.add(&s);
        let mut obj = serde_json::Map::new();
        obj.insert("shard".into(), i.into());
        for (k, v) in s.fields() {
            obj.insert(k.into(), v.into());
        }
        shards.push(serde_json::Value::Object(obj));
    }
    let mut tot = serde_json::Map::new();
    for (k, v) in total.fields() {
        tot.insert(k.into(), v.into());
    }
    serde_json::json!({
        "draining": shared.draining(),
        "driver": shared.driver_name.get().copied().unwrap_or("starting"),
        "shards": shards,
        "total": tot,
    })
    .to_string()
}
