//! The webhook sender against a local HTTP receiver on 127.0.0.1:0 (std `TcpListener`, one
//! thread per connection, keep-alive): batching, headers and signature, the event-type filter,
//! retries, the retry window, the queue and pending limits, and an `emit` that never blocks.
//! Every wait has a deadline; the whole file runs in a few seconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use ringcast::pusher::app::{App, Apps, WebhookTarget};
use ringcast::webhook::{OwnedWebhookEvent, WebhookCounters, WebhookLimits, Webhooks};
use serde_json::Value;
use sha2::Sha256;

/// How a receiver answers request number `n` (0-based, counted over all connections).
#[derive(Clone, Copy)]
enum Answer {
    /// This status to every request.
    Always(u16),
    /// `first` to the first `count` requests, then 200.
    FirstThen { first: u16, count: usize },
    /// Accepts connections and never reads or answers.
    Stall,
}

struct Request {
    at: Instant,
    path: String,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the body is JSON")
    }

    fn event_names(&self) -> Vec<String> {
        let events = self.json()["events"].as_array().expect("events").clone();
        events
            .iter()
            .map(|e| e["name"].as_str().expect("name").to_owned())
            .collect()
    }
}

struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        // Detached: it ends with the test process.
        std::thread::spawn(move || {
            let mut stalled = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Answer::Stall = answer {
                    stalled.push(stream);
                    continue;
                }
                let recorded = Arc::clone(&recorded);
                std::thread::spawn(move || serve(stream, answer, &recorded));
            }
        });
        Receiver { addr, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Waits up to 5 s for at least `n` requests.
    fn wait_for(&self, n: usize) -> std::sync::MutexGuard<'_, Vec<Request>> {
        wait_until("receiver requests", || self.count() >= n);
        self.requests.lock().unwrap()
    }
}

/// Answers the requests of one keep-alive connection until it closes.
fn serve(stream: TcpStream, answer: Answer, recorded: &Mutex<Vec<Request>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let index = {
            let mut requests = recorded.lock().unwrap();
            requests.push(Request {
                at: Instant::now(),
                path,
                headers,
                body: String::from_utf8(body).unwrap(),
            });
            requests.len() - 1
        };
        let status = match answer {
            Answer::Always(status) => status,
            Answer::FirstThen { first, count } if index < count => first,
            _ => 200,
        };
        let response = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok");
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Polls `done` every 5 ms for up to 5 s; panics naming `what` if it never holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn app_with(targets: Vec<WebhookTarget>) -> App {
    App {
        id: "hooked".into(),
        key: "hook-key".into(),
        secret: "hook-secret".into(),
        webhooks: targets,
        ..App::default_dev()
    }
}

fn target(url: String, event_types: &[&str]) -> WebhookTarget {
    WebhookTarget {
        url,
        event_types: event_types.iter().map(|&t| t.to_owned()).collect(),
    }
}

/// Limits for tests: small batches, short linger and quick retries, unless overridden.
fn quick() -> WebhookLimits {
    WebhookLimits {
        batch_linger: Duration::from_millis(20),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
        ..WebhookLimits::default()
    }
}

fn spawn(app: &App, limits: WebhookLimits) -> Webhooks {
    Webhooks::spawn(&Apps::new(vec![app.clone()]).unwrap(), limits).unwrap()
}

fn occupied(channel: &str) -> OwnedWebhookEvent {
    OwnedWebhookEvent::ChannelOccupied {
        channel: channel.to_owned(),
    }
}

fn vacated(channel: &str) -> OwnedWebhookEvent {
    OwnedWebhookEvent::ChannelVacated {
        channel: channel.to_owned(),
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Sent, failed and dropped deliveries and the pending gauge.
fn outcomes(c: &WebhookCounters) -> [u64; 4] {
    [
        load(&c.sent_events),
        load(&c.failed_events),
        load(&c.dropped_events),
        load(&c.pending_events),
    ]
}

#[test]
fn events_are_batched_signed_and_posted_as_json() {
    let receiver = Receiver::start(Answer::Always(200));
    let app = app_with(vec![target(receiver.url("/hook"), &[])]);
    let limits = WebhookLimits {
        batch_events_max: 3,
        batch_linger: Duration::from_millis(100),
        ..quick()
    };
    let webhooks = spawn(&app, limits);
    let before_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    for i in 0..5 {
        webhooks.emit(&app, occupied(&format!("c{i}")));
    }
    let requests = receiver.wait_for(2);
    // The first three fill a batch; the last two go out when the linger ends.
    let channels: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            let body = r.json();
            let events = body["events"].as_array().unwrap().clone();
            events
                .iter()
                .map(|e| e["channel"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    assert_eq!(channels, [vec!["c0", "c1", "c2"], vec!["c3", "c4"]]);
    assert!(requests[1].at.duration_since(requests[0].at) >= Duration::from_millis(80));
    for request in requests.iter() {
        assert_eq!(request.path, "/hook");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("x-pusher-key"), Some("hook-key"));
        let mut mac = Hmac::<Sha256>::new_from_slice(b"hook-secret").unwrap();
        mac.update(request.body.as_bytes());
        let want = hex::encode(mac.finalize().into_bytes());
        assert_eq!(request.header("x-pusher-signature"), Some(want.as_str()));
        let time_ms = request.json()["time_ms"].as_u64().expect("time_ms");
        assert!(time_ms >= before_ms && time_ms < before_ms + 5000);
        assert_eq!(request.json()["events"][0]["name"], "channel_occupied");
    }
    drop(requests);
    let counters = webhooks.counters();
    wait_until("settled", || load(&counters.sent_batches) == 2);
    assert_eq!(outcomes(&counters), [5, 0, 0, 0]);
    assert_eq!(load(&counters.queued), 5);
    assert_eq!(load(&counters.retries), 0);
    webhooks.shutdown(Duration::from_secs(1));
}

#[test]
fn event_types_filter_sends_each_target_only_its_events() {
    let receiver = Receiver::start(Answer::Always(200));
    let app = app_with(vec![
        target(receiver.url("/occupied"), &["channel_occupied"]),
        target(receiver.url("/all"), &[]),
    ]);
    let webhooks = spawn(&app, quick());
    let other = App::default_dev();
    assert!(webhooks.wants(&app, "channel_vacated"));
    assert!(!webhooks.wants(&other, "channel_occupied"));
    // An app without webhooks is not queued at all.
    webhooks.emit(&other, occupied("ignored"));
    webhooks.emit(&app, occupied("a"));
    webhooks.emit(&app, vacated("a"));
    let requests = receiver.wait_for(2);
    let names_at = |path: &str| -> Vec<String> {
        requests
            .iter()
            .filter(|r| r.path == path)
            .flat_map(Request::event_names)
            .collect()
    };
    assert_eq!(names_at("/occupied"), ["channel_occupied"]);
    assert_eq!(names_at("/all"), ["channel_occupied", "channel_vacated"]);
    drop(requests);
    let counters = webhooks.counters();
    wait_until("settled", || load(&counters.pending_events) == 0);
    // Two events emitted, three deliveries.
    assert_eq!(load(&counters.queued), 2);
    assert_eq!(outcomes(&counters), [3, 0, 0, 0]);
    webhooks.shutdown(Duration::from_secs(1));
    assert_eq!(receiver.count(), 2);
}

#[test]
fn a_500_is_retried_with_the_same_body_until_a_2xx() {
    let receiver = Receiver::start(Answer::FirstThen {
        first: 500,
        count: 2,
    });
    let app = app_with(vec![target(receiver.url("/hook"), &[])]);
    let webhooks = spawn(&app, quick());
    webhooks.emit(&app, occupied("c"));
    let counters = webhooks.counters();
    wait_until("the batch is sent", || load(&counters.sent_batches) == 1);
    let requests = receiver.wait_for(3);
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.body == requests[0].body));
    assert!(
        requests
            .iter()
            .all(|r| r.header("x-pusher-signature") == requests[0].header("x-pusher-signature"))
    );
    // Backoff 50 ms then 100 ms, each plus up to a quarter of jitter.
    let gaps: Vec<Duration> = requests.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(45), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(95), "{gaps:?}");
    assert!(gaps[1] < Duration::from_millis(1000), "{gaps:?}");
    drop(requests);
    assert_eq!(load(&counters.retries), 2);
    assert_eq!(outcomes(&counters), [1, 0, 0, 0]);
    webhooks.shutdown(Duration::from_secs(1));
}

#[test]
fn a_batch_is_given_up_after_the_retry_window() {
    let receiver = Receiver::start(Answer::Always(500));
    let app = app_with(vec![target(receiver.url("/hook"), &[])]);
    let window = Duration::from_millis(1500);
    let limits = WebhookLimits {
        retry_window: window,
        ..quick()
    };
    let webhooks = spawn(&app, limits);
    let started = Instant::now();
    webhooks.emit(&app, occupied("a"));
    webhooks.emit(&app, occupied("b"));
    let counters = webhooks.counters();
    wait_until("the batch is given up", || {
        load(&counters.failed_events) == 2
    });
    let elapsed = started.elapsed();
    assert!(elapsed >= window, "gave up after {elapsed:?}");
    assert!(elapsed < window + Duration::from_millis(700), "{elapsed:?}");
    let attempts = receiver.count();
    // 0, 50, 150, 350, 550, ... ms with the 200 ms cap: about 9 attempts in 1.5 s.
    assert!((5..=12).contains(&attempts), "{attempts} attempts");
    assert_eq!(load(&counters.retries), attempts as u64 - 1);
    assert_eq!(outcomes(&counters), [0, 2, 0, 0]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.count(), attempts, "no attempt after giving up");
    webhooks.shutdown(Duration::from_secs(1));
}

/// A sender whose thread is inside a request to a receiver that never answers, with a queue of
/// `queue_events_max` events.
fn stalled(queue_events_max: usize) -> (Receiver, App, Webhooks) {
    let receiver = Receiver::start(Answer::Stall);
    let app = app_with(vec![target(receiver.url("/hook"), &[])]);
    let limits = WebhookLimits {
        queue_events_max,
        batch_linger: Duration::ZERO,
        request_timeout: Duration::from_millis(500),
        ..quick()
    };
    let webhooks = spawn(&app, limits);
    webhooks.emit(&app, occupied("first"));
    // The thread is now inside a request that will not be answered.
    std::thread::sleep(Duration::from_millis(100));
    (receiver, app, webhooks)
}

#[test]
fn emit_returns_at_once_while_the_receiver_stalls() {
    let (_receiver, app, webhooks) = stalled(WebhookLimits::default().queue_events_max);
    let started = Instant::now();
    for i in 0..1000 {
        webhooks.emit(&app, occupied(&format!("c{i}")));
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(100),
        "1000 emits took {elapsed:?}"
    );
    let counters = webhooks.counters();
    assert_eq!(load(&counters.queued), 1001);
    assert_eq!(load(&counters.sent_events), 0);
    // Shutdown is bounded by its deadline plus the request in flight.
    let started = Instant::now();
    webhooks.shutdown(Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_millis(1500));
    let [sent, failed, dropped, pending] = outcomes(&counters);
    assert_eq!((sent, failed, pending), (0, 0, 0));
    assert_eq!(
        dropped, 1001,
        "everything undelivered at the deadline is dropped"
    );
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    let (_receiver, app, webhooks) = stalled(4);
    let started = Instant::now();
    for i in 0..100 {
        webhooks.emit(&app, occupied(&format!("c{i}")));
    }
    assert!(started.elapsed() < Duration::from_millis(100));
    let counters = webhooks.counters();
    // The thread is stuck in the first request: the queue holds 4, the other 96 are dropped.
    assert_eq!(load(&counters.queued), 5);
    assert_eq!(load(&counters.dropped_events), 96);
    assert_eq!(load(&counters.pending_events), 5);
    webhooks.shutdown(Duration::ZERO);
    assert_eq!(outcomes(&counters), [0, 0, 101, 0]);
}

/// Every batch fails with a long backoff, so batches pile up in the pending heap.
fn pile_up_pending(limits: WebhookLimits, events: usize) -> (Webhooks, Arc<WebhookCounters>) {
    let receiver = Receiver::start(Answer::Always(503));
    let app = app_with(vec![target(receiver.url("/hook"), &[])]);
    let limits = WebhookLimits {
        batch_events_max: 1,
        backoff_base: Duration::from_secs(30),
        backoff_max: Duration::from_secs(30),
        ..limits
    };
    let webhooks = spawn(&app, limits);
    for i in 0..events {
        webhooks.emit(&app, occupied(&format!("c{i}")));
    }
    let counters = webhooks.counters();
    (webhooks, counters)
}

#[test]
fn pending_batches_over_the_limit_drop_the_oldest() {
    let limits = WebhookLimits {
        pending_batches_max: 2,
        ..quick()
    };
    let (webhooks, counters) = pile_up_pending(limits, 5);
    wait_until("3 batches dropped", || load(&counters.dropped_events) == 3);
    assert_eq!(outcomes(&counters), [0, 0, 3, 2]);
    webhooks.shutdown(Duration::ZERO);
    assert_eq!(outcomes(&counters), [0, 0, 5, 0]);
}

#[test]
fn pending_body_bytes_over_the_limit_drop_the_oldest() {
    // One event's body is 79 bytes (`{"events":[{"channel":"c0","name":"channel_occupied"}],
    // "time_ms":<13 digits>}`): 200 bytes hold two batches, not three.
    let limits = WebhookLimits {
        pending_body_bytes_max: 200,
        ..quick()
    };
    let (webhooks, counters) = pile_up_pending(limits, 5);
    wait_until("3 batches dropped", || load(&counters.dropped_events) == 3);
    assert_eq!(outcomes(&counters), [0, 0, 3, 2]);
    webhooks.shutdown(Duration::ZERO);
}

#[test]
fn shutdown_sends_open_batches_without_waiting_for_the_linger() {
    let receiver = Receiver::start(Answer::Always(204));
    let app = app_with(vec![target(receiver.url("/hook"), &[])]);
    let limits = WebhookLimits {
        batch_linger: Duration::from_secs(30),
        ..quick()
    };
    let webhooks = spawn(&app, limits);
    for i in 0..3 {
        webhooks.emit(&app, occupied(&format!("c{i}")));
    }
    let counters = webhooks.counters();
    let started = Instant::now();
    webhooks.shutdown(Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(receiver.count(), 1);
    assert_eq!(receiver.wait_for(1)[0].event_names().len(), 3);
    assert_eq!(outcomes(&counters), [3, 0, 0, 0]);
}
