//! The admin listener: `/stats`, `/metrics`, `/ready` and `/health` on their own address (default
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
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            metrics_text(shared).into_bytes(),
        ),
        _ => (404, "text/plain", b"not found".to_vec()),
    }
}

/// Prometheus text exposition: every shard counter as `ringcast_<name>` with a `shard` label
/// (counters get `_total`), plus `ringcast_draining` and `ringcast_shards`.
pub fn metrics_text(shared: &Shared) -> String {
    use crate::shard::stats::{GAUGES, HELP};
    use std::fmt::Write as _;
    let snapshots: Vec<ShardStats> = shared.counters.iter().map(|c| c.snapshot()).collect();
    let mut out = String::with_capacity(4096);
    for (i, (name, help)) in HELP.iter().enumerate() {
        let gauge = GAUGES.contains(name);
        let metric = if gauge {
            format!("ringcast_{name}")
        } else {
            format!("ringcast_{name}_total")
        };
        let _ = writeln!(out, "# HELP {metric} {}", help.trim());
        let _ = writeln!(
            out,
            "# TYPE {metric} {}",
            if gauge { "gauge" } else { "counter" }
        );
        for (shard, s) in snapshots.iter().enumerate() {
            let value = s.fields().get(i).map_or(0, |f| f.1);
            let _ = writeln!(out, "{metric}{{shard=\"{shard}\"}} {value}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP ringcast_draining 1 while the server drains after SIGTERM."
    );
    let _ = writeln!(out, "# TYPE ringcast_draining gauge");
    let _ = writeln!(out, "ringcast_draining {}", u8::from(shared.draining()));
    let _ = writeln!(out, "# HELP ringcast_shards Shards (threads) serving.");
    let _ = writeln!(out, "# TYPE ringcast_shards gauge");
    let _ = writeln!(out, "ringcast_shards {}", shared.counters.len());
    if let Some(hub) = shared.hub_counters.get() {
        let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        for (name, gauge, help, value) in [
            (
                "hub_messages_in_total",
                false,
                "Messages shards sent to the hub.",
                load(&hub.messages_in),
            ),
            (
                "hub_messages_out_total",
                false,
                "Messages the hub sent to shards.",
                load(&hub.messages_out),
            ),
            (
                "hub_dropped_total",
                false,
                "Control messages dropped because a shard-hub ring and its backlog were full.",
                load(&hub.dropped),
            ),
            (
                "pusher_occupied_channels",
                true,
                "Pusher channels with at least one subscriber on some shard.",
                load(&hub.occupied_channels),
            ),
        ] {
            scalar(&mut out, name, gauge, help, value);
        }
    }
    if let Some(hooks) = shared.webhook_counters.get() {
        let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        for (name, gauge, help, value) in [
            (
                "webhook_events_queued_total",
                false,
                "Webhook events accepted into the queue.",
                load(&hooks.queued),
            ),
            (
                "webhook_batches_sent_total",
                false,
                "Webhook batches answered with a 2xx.",
                load(&hooks.sent_batches),
            ),
            (
                "webhook_events_sent_total",
                false,
                "Webhook event deliveries in those batches.",
                load(&hooks.sent_events),
            ),
            (
                "webhook_retries_total",
                false,
                "Webhook attempts after the first of a batch.",
                load(&hooks.retries),
            ),
            (
                "webhook_events_failed_total",
                false,
                "Webhook deliveries given up after the retry window.",
                load(&hooks.failed_events),
            ),
            (
                "webhook_events_dropped_total",
                false,
                "Webhook events dropped by a full queue or pending set, or at shutdown.",
                load(&hooks.dropped_events),
            ),
            (
                "webhook_events_pending",
                true,
                "Webhook deliveries queued or waiting for an attempt.",
                load(&hooks.pending_events),
            ),
        ] {
            scalar(&mut out, name, gauge, help, value);
        }
    }
    out
}

/// One unlabelled metric in Prometheus text format.
fn scalar(out: &mut String, name: &str, gauge: bool, help: &str, value: u64) {
    use std::fmt::Write as _;
    let kind = if gauge { "gauge" } else { "counter" };
    let _ = writeln!(out, "# HELP ringcast_{name} {help}");
    let _ = writeln!(out, "# TYPE ringcast_{name} {kind}");
    let _ = writeln!(out, "ringcast_{name} {value}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn metrics_are_prometheus_text_with_a_line_per_shard() {
        let shared = Shared::new(Arc::new(AtomicBool::new(false)), 2);
        shared.counters[1].publish(&ShardStats {
            deliveries: 7,
            connections: 3,
            ..Default::default()
        });
        let text = metrics_text(&shared);
        assert!(
            text.contains("# TYPE ringcast_deliveries_total counter"),
            "{text}"
        );
        assert!(
            text.contains("ringcast_deliveries_total{shard=\"1\"} 7"),
            "{text}"
        );
        assert!(text.contains("# TYPE ringcast_connections gauge"), "{text}");
        assert!(
            text.contains("ringcast_connections{shard=\"1\"} 3"),
            "{text}"
        );
        assert!(text.contains("ringcast_draining 0"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<u64>().is_ok(), "bad sample line: {line}");
        }
    }
}
