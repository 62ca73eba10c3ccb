//! The webhook sender: one control-plane thread, `ringcast-webhooks`, that batches, signs, POSTs
//! and retries every app's Pusher webhooks. It owns that thread and its HTTP client. It must
//! never block the caller of [`Webhooks::emit`] (a shard): a slow or dead receiver costs
//! dropped events, counted, never a stalled shard.
//!
//! The path of an event: [`Webhooks::emit`] filters it by the app's targets and `try_send`s it
//! into a bounded queue; the thread appends it to one open batch per (app, target URL); a batch
//! closes at [`WebhookLimits::batch_events_max`] events or [`WebhookLimits::batch_linger`] after
//! its first event, is signed once ([`crate::http_api::webhook`]) and joins a bounded min-heap
//! of pending batches ordered by next attempt time. A 2xx settles it; anything else, or a
//! transport error, retries it with exponential backoff and jitter until
//! [`WebhookLimits::retry_window`] after its first attempt, and then its events count as failed.
//! Because new batches are due at once and retries later, a receiver that keeps failing delays
//! other batches by at most one request each, never for its whole retry window.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http_api::webhook::{WebhookEvent, webhook_body, webhook_headers};
use crate::pusher::app::{App, Apps, WebhookTarget};

/// Bounds of the webhook sender. Each says its unit, its default and what happens when it is hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookLimits {
    /// Events between [`Webhooks::emit`] and the thread. Default: 8,192 (a few seconds of churn
    /// on a busy server; at most 8,192 client events of 10 KiB, 80 MiB, in the worst case). Hit:
    /// `emit` drops the event, counts it in `dropped_events` and logs at most once a second.
    pub queue_events_max: usize,
    /// Events in one POST. Default: 50. Hit: the batch closes and is sent; the next event opens
    /// a new one.
    pub batch_events_max: usize,
    /// How long a batch waits for more events after its first one. Default: 50 ms, so a burst
    /// goes out as one request while a lone event waits no longer than a frame. Hit: the batch
    /// closes and is sent.
    pub batch_linger: Duration,
    /// Closed batches waiting for their first attempt or a retry. Default: 1,024 (with the
    /// default 5-minute window, about 3 failing batches a second). Hit: the oldest batch is
    /// dropped and its events counted in `dropped_events`.
    pub pending_batches_max: usize,
    /// Bytes of the bodies of the pending batches. Default: 64 MiB, so a receiver that fails
    /// while client events of 10 KiB flow cannot hold 1,024 x 50 x 10 KiB. Hit: as for
    /// `pending_batches_max`, the oldest batches are dropped and counted.
    pub pending_body_bytes_max: usize,
    /// How long after its first attempt a batch is still retried. Default: 5 minutes (issue 5,
    /// as Pusher does). Hit: the batch's events are counted in `failed_events` and logged.
    pub retry_window: Duration,
    /// The delay before the first retry, doubled for each further retry, plus up to a quarter
    /// of it as jitter so that many failing batches do not retry in step. Default: 1 s.
    pub backoff_base: Duration,
    /// The largest retry delay before jitter. Default: 60 s.
    pub backoff_max: Duration,
    /// TCP connect timeout of one attempt. Default: 2 s. Hit: the attempt failed, retried.
    pub connect_timeout: Duration,
    /// The whole of one attempt: connect, send, response head and body. Default: 10 s. Hit: the
    /// attempt failed, retried. One stalled receiver holds the thread this long per attempt.
    pub request_timeout: Duration,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        WebhookLimits {
            queue_events_max: 8192,
            batch_events_max: 50,
            batch_linger: Duration::from_millis(50),
            pending_batches_max: 1024,
            pending_body_bytes_max: 64 << 20,
            retry_window: Duration::from_secs(5 * 60),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a [`WebhookLimits`] was refused by [`WebhookLimits::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookLimitsError {
    #[error("webhook limit {field} must be above zero")]
    Zero { field: &'static str },
    #[error("webhook backoff_max {max:?} is below backoff_base {base:?}")]
    BackoffMaxBelowBase { base: Duration, max: Duration },
}

impl WebhookLimits {
    /// Every count and timeout is above zero and `backoff_max >= backoff_base`.
    pub fn validate(&self) -> Result<(), WebhookLimitsError> {
        for (field, zero) in [
            ("queue_events_max", self.queue_events_max == 0),
            ("batch_events_max", self.batch_events_max == 0),
            ("pending_batches_max", self.pending_batches_max == 0),
            ("pending_body_bytes_max", self.pending_body_bytes_max == 0),
            ("backoff_base", self.backoff_base.is_zero()),
            ("connect_timeout", self.connect_timeout.is_zero()),
            ("request_timeout", self.request_timeout.is_zero()),
        ] {
            if zero {
                return Err(WebhookLimitsError::Zero { field });
            }
        }
        if self.backoff_max < self.backoff_base {
            return Err(WebhookLimitsError::BackoffMaxBelowBase {
                base: self.backoff_base,
                max: self.backoff_max,
            });
        }
        Ok(())
    }
}

/// A webhook event that owns its strings, so that it can cross to the webhook thread; see
/// [`WebhookEvent`] for what each variant means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedWebhookEvent {
    ChannelOccupied {
        channel: String,
    },
    ChannelVacated {
        channel: String,
    },
    MemberAdded {
        channel: String,
        user_id: String,
    },
    MemberRemoved {
        channel: String,
        user_id: String,
    },
    ClientEvent {
        channel: String,
        event: String,
        data: String,
        socket_id: String,
        user_id: Option<String>,
    },
    CacheMiss {
        channel: String,
    },
}

impl OwnedWebhookEvent {
    /// The borrowed form that [`webhook_body`] serializes.
    pub fn as_event(&self) -> WebhookEvent<'_> {
        match self {
            Self::ChannelOccupied { channel } => WebhookEvent::ChannelOccupied { channel },
            Self::ChannelVacated { channel } => WebhookEvent::ChannelVacated { channel },
            Self::MemberAdded { channel, user_id } => {
                WebhookEvent::MemberAdded { channel, user_id }
            }
            Self::MemberRemoved { channel, user_id } => {
                WebhookEvent::MemberRemoved { channel, user_id }
            }
            Self::ClientEvent {
                channel,
                event,
                data,
                socket_id,
                user_id,
            } => WebhookEvent::ClientEvent {
                channel,
                event,
                data,
                socket_id,
                user_id: user_id.as_deref(),
            },
            Self::CacheMiss { channel } => WebhookEvent::CacheMiss { channel },
        }
    }

    /// The event's name, one of [`crate::pusher::app::WEBHOOK_EVENT_TYPES`].
    pub fn name(&self) -> &'static str {
        self.as_event().name()
    }
}

impl From<&WebhookEvent<'_>> for OwnedWebhookEvent {
    fn from(event: &WebhookEvent<'_>) -> Self {
        let own = |s: &str| s.to_owned();
        match *event {
            WebhookEvent::ChannelOccupied { channel } => Self::ChannelOccupied {
                channel: own(channel),
            },
            WebhookEvent::ChannelVacated { channel } => Self::ChannelVacated {
                channel: own(channel),
            },
            WebhookEvent::MemberAdded { channel, user_id } => Self::MemberAdded {
                channel: own(channel),
                user_id: own(user_id),
            },
            WebhookEvent::MemberRemoved { channel, user_id } => Self::MemberRemoved {
                channel: own(channel),
                user_id: own(user_id),
            },
            WebhookEvent::ClientEvent {
                channel,
                event,
                data,
                socket_id,
                user_id,
            } => Self::ClientEvent {
                channel: own(channel),
                event: own(event),
                data: own(data),
                socket_id: own(socket_id),
                user_id: user_id.map(own),
            },
            WebhookEvent::CacheMiss { channel } => Self::CacheMiss {
                channel: own(channel),
            },
        }
    }
}

/// What the webhook sender has done, for `/stats` and `/metrics`. Counts are of deliveries: one
/// event to one target URL (an event that two targets take is sent, failed or dropped twice),
/// except `queued` and the drops of a full queue, which count events as emitted.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// Events accepted into the queue by [`Webhooks::emit`].
    pub queued: AtomicU64,
    /// Batches answered with a 2xx.
    pub sent_batches: AtomicU64,
    /// Deliveries in those batches.
    pub sent_events: AtomicU64,
    /// Attempts after the first of a batch.
    pub retries: AtomicU64,
    /// Deliveries given up after [`WebhookLimits::retry_window`].
    pub failed_events: AtomicU64,
    /// Events refused by a full queue, plus deliveries dropped over
    /// [`WebhookLimits::pending_batches_max`] or [`WebhookLimits::pending_body_bytes_max`], plus
    /// those still undelivered when [`Webhooks::shutdown`] reached its deadline.
    pub dropped_events: AtomicU64,
    /// Gauge: deliveries in the queue, in open batches or waiting for an attempt.
    pub pending_events: AtomicU64,
}

/// The handle to the webhook thread. `Send + Sync`: share it between shards with an `Arc`.
pub struct Webhooks {
    counters: Arc<WebhookCounters>,
    /// None when no app has webhooks: then `emit` is a no-op and no thread runs.
    sender: Option<Sender>,
}

impl Webhooks {
    /// Starts the `ringcast-webhooks` thread if some app of `apps` has webhooks; otherwise returns
    /// a handle whose [`Webhooks::emit`] does nothing. Apps and targets are fixed here: `emit`
    /// finds the app by id and uses the targets, key and secret it had at spawn.
    ///
    /// Errors: `InvalidInput` for limits that [`WebhookLimits::validate`] refuses, and the error
    /// of spawning the thread.
    pub fn spawn(apps: &Apps, limits: WebhookLimits) -> std::io::Result<Webhooks> {
        limits
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let counters = Arc::new(WebhookCounters::default());
        let routes = Arc::new(Routes::new(apps));
        if routes.targets.is_empty() {
            return Ok(Webhooks {
                counters,
                sender: None,
            });
        }
        let (queue, received) = std::sync::mpsc::sync_channel(limits.queue_events_max);
        let shutdown_at = Arc::new(Mutex::new(None));
        let worker = Worker::new(
            Arc::clone(&routes),
            limits,
            Arc::clone(&counters),
            Arc::clone(&shutdown_at),
        );
        let thread = std::thread::Builder::new()
            .name("ringcast-webhooks".to_owned())
            .spawn(move || worker.run(&received))?;
        Ok(Webhooks {
            counters,
            sender: Some(Sender {
                queue,
                routes,
                shutdown_at,
                thread,
                started_at: Instant::now(),
                drop_logged_ms: AtomicU64::new(0),
            }),
        })
    }

    /// Whether some target of `app` takes events named `event_type`: a caller can skip building
    /// an [`OwnedWebhookEvent`] when not.
    pub fn wants(&self, app: &App, event_type: &str) -> bool {
        self.sender.as_ref().is_some_and(|sender| {
            sender
                .routes
                .app_index(&app.id)
                .is_some_and(|index| sender.routes.wants(index, event_type))
        })
    }

    /// Queues `event` of `app` for its webhook targets. Never blocks: when the queue is full the
    /// event is dropped and counted (`dropped_events`), with a warning at most once a second.
    pub fn emit(&self, app: &App, event: OwnedWebhookEvent) {
        let Some(sender) = &self.sender else {
            return;
        };
        let Some(app_index) = sender.routes.app_index(&app.id) else {
            return;
        };
        if !sender.routes.wants(app_index, event.name()) {
            return;
        }
        // Raised before the send so that the thread never lowers it below zero.
        self.counters.pending_events.fetch_add(1, Ordering::Relaxed);
        match sender.queue.try_send(Queued { app_index, event }) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.pending_events.fetch_sub(1, Ordering::Relaxed);
                let dropped = self.counters.dropped_events.fetch_add(1, Ordering::Relaxed) + 1;
                sender.log_drop(dropped);
            }
        }
    }

    /// The counters, live.
    pub fn counters(&self) -> Arc<WebhookCounters> {
        Arc::clone(&self.counters)
    }

    /// Stops taking events, tries to deliver what is queued (open batches are sent at once,
    /// retries keep their backoff) until `deadline` from now, drops the rest (counted in
    /// `dropped_events`) and joins the thread. A request in flight when the deadline passes is
    /// not interrupted, so this can return up to [`WebhookLimits::request_timeout`] late; every
    /// request started while stopping is cut to the time left.
    pub fn shutdown(self, deadline: Duration) {
        let Some(sender) = self.sender else {
            return;
        };
        let Sender {
            queue,
            shutdown_at,
            thread,
            ..
        } = sender;
        *shutdown_at.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() + deadline);
        // The only sender: the thread sees the queue disconnect once it has taken what is in it.
        drop(queue);
        if thread.join().is_err() {
            tracing::error!("the webhook thread panicked");
        }
    }
}

/// The live parts of a [`Webhooks`] that has targets.
struct Sender {
    queue: SyncSender<Queued>,
    routes: Arc<Routes>,
    shutdown_at: Arc<Mutex<Option<Instant>>>,
    thread: JoinHandle<()>,
    /// The origin of `drop_logged_ms`.
    started_at: Instant,
    /// When `emit` last logged a drop, in ms since `started_at` (0: never).
    drop_logged_ms: AtomicU64,
}

impl Sender {
    /// Logs a full queue at most once a second, across every thread that emits.
    fn log_drop(&self, dropped: u64) {
        let now_ms = duration_ms(self.started_at.elapsed()).max(1);
        let last_ms = self.drop_logged_ms.load(Ordering::Relaxed);
        if (last_ms == 0 || now_ms >= last_ms + 1000)
            && self
                .drop_logged_ms
                .compare_exchange(last_ms, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(dropped, "webhook queue full: events dropped");
        }
    }
}

/// One event on its way to the thread.
struct Queued {
    app_index: usize,
    event: OwnedWebhookEvent,
}

/// The apps that have webhooks and their targets, flattened so that a target has an index.
struct Routes {
    by_id: HashMap<String, usize>,
    apps: Vec<AppRoute>,
    targets: Vec<TargetRoute>,
}

struct TargetRoute {
    app_index: usize,
    target: WebhookTarget,
}

struct AppRoute {
    key: String,
    secret: String,
    /// INVARIANT: indexes into `Routes::targets`, not empty.
    targets: Range<usize>,
}

impl Routes {
    fn new(apps: &Apps) -> Routes {
        let mut routes = Routes {
            by_id: HashMap::new(),
            apps: Vec::new(),
            targets: Vec::new(),
        };
        for app in apps.iter().filter(|app| !app.webhooks.is_empty()) {
            let start = routes.targets.len();
            let app_index = routes.apps.len();
            routes
                .targets
                .extend(app.webhooks.iter().map(|target| TargetRoute {
                    app_index,
                    target: target.clone(),
                }));
            routes.by_id.insert(app.id.clone(), app_index);
            routes.apps.push(AppRoute {
                key: app.key.clone(),
                secret: app.secret.clone(),
                targets: start..routes.targets.len(),
            });
        }
        routes
    }

    fn app_index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    fn wants(&self, app_index: usize, event_type: &str) -> bool {
        self.targets[self.apps[app_index].targets.clone()]
            .iter()
            .any(|route| route.target.accepts(event_type))
    }
}

/// A batch still taking events.
struct OpenBatch {
    events: Vec<OwnedWebhookEvent>,
    opened_at: Instant,
}

/// A closed, signed batch waiting for an attempt. Ordered by `(next_at, seq)`.
struct PendingBatch {
    next_at: Instant,
    /// Closing order: the smallest is the oldest batch.
    seq: u64,
    target_index: usize,
    body: String,
    headers: [(&'static str, String); 3],
    event_count: u64,
    first_attempt_at: Option<Instant>,
    attempt_count: u32,
}

impl PartialEq for PendingBatch {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for PendingBatch {}
impl PartialOrd for PendingBatch {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for PendingBatch {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.next_at, self.seq).cmp(&(other.next_at, other.seq))
    }
}

/// The webhook thread's state.
struct Worker {
    routes: Arc<Routes>,
    limits: WebhookLimits,
    counters: Arc<WebhookCounters>,
    shutdown_at: Arc<Mutex<Option<Instant>>>,
    agent: ureq::Agent,
    /// One per target; an empty `events` means no open batch.
    open: Vec<OpenBatch>,
    /// A min-heap by next attempt.
    /// INVARIANT: `len() <= limits.pending_batches_max`, and `pending_body_bytes` is the sum of
    /// the body lengths in it, at most `limits.pending_body_bytes_max` (both restored by
    /// `push_pending`).
    pending: BinaryHeap<Reverse<PendingBatch>>,
    pending_body_bytes: usize,
    seq: u64,
    jitter: Jitter,
    failure_log: LogLimit,
}

impl Worker {
    fn new(
        routes: Arc<Routes>,
        limits: WebhookLimits,
        counters: Arc<WebhookCounters>,
        shutdown_at: Arc<Mutex<Option<Instant>>>,
    ) -> Worker {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(limits.connect_timeout))
            .timeout_global(Some(limits.request_timeout))
            // A non-2xx status is an answer to retry on, not an error of the client.
            .http_status_as_error(false)
            // A redirected POST would be replayed as a GET: treat 3xx as a failed attempt.
            .max_redirects(0)
            .user_agent(concat!("ringcast/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let now = Instant::now();
        let open = (0..routes.targets.len())
            .map(|_| OpenBatch {
                events: Vec::new(),
                opened_at: now,
            })
            .collect();
        Worker {
            routes,
            limits,
            counters,
            shutdown_at,
            agent,
            open,
            pending: BinaryHeap::new(),
            pending_body_bytes: 0,
            seq: 0,
            jitter: Jitter::new(),
            failure_log: LogLimit::default(),
        }
    }

    /// Takes events until the queue disconnects, then delivers until the shutdown deadline.
    /// Each turn sends at most one request, so the queue keeps draining between requests.
    fn run(mut self, queue: &Receiver<Queued>) {
        loop {
            let now = Instant::now();
            let received = match self.wake_at() {
                Some(at) => queue.recv_timeout(at.saturating_duration_since(now)),
                None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(first) => {
                    self.add(first);
                    // Bounded: at most what the queue held, so one turn cannot run forever.
                    for queued in queue.try_iter().take(self.limits.queue_events_max) {
                        self.add(queued);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            self.close_batches(now, false);
            self.attempt_due(now);
        }
        self.close_batches(Instant::now(), true);
        let deadline = self.shutdown_at().unwrap_or_else(Instant::now);
        while let Some(Reverse(next)) = self.pending.peek() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if next.next_at > now {
                std::thread::sleep(next.next_at.min(deadline) - now);
                continue;
            }
            self.attempt_due(now);
        }
        let mut abandoned = 0;
        for Reverse(batch) in self.pending.drain() {
            abandoned += batch.event_count;
        }
        if abandoned > 0 {
            self.settle(abandoned, &self.counters.dropped_events);
            tracing::warn!(
                events = abandoned,
                "webhooks undelivered at the shutdown deadline were dropped"
            );
        }
    }

    /// The earliest of the open batches' linger ends and the next pending attempt.
    fn wake_at(&self) -> Option<Instant> {
        let linger_end = self
            .open
            .iter()
            .filter(|batch| !batch.events.is_empty())
            .map(|batch| batch.opened_at + self.limits.batch_linger)
            .min();
        let next_attempt = self.pending.peek().map(|Reverse(batch)| batch.next_at);
        linger_end.into_iter().chain(next_attempt).min()
    }

    /// Appends `queued` to the open batch of each target that takes it.
    fn add(&mut self, queued: Queued) {
        let routes = Arc::clone(&self.routes);
        let name = queued.event.name();
        let mut taken = 0;
        for target_index in routes.apps[queued.app_index].targets.clone() {
            if !routes.targets[target_index].target.accepts(name) {
                continue;
            }
            taken += 1;
            let batch = &mut self.open[target_index];
            if batch.events.is_empty() {
                batch.opened_at = Instant::now();
            }
            batch.events.push(queued.event.clone());
            if batch.events.len() >= self.limits.batch_events_max {
                self.close(target_index);
            }
        }
        // `emit` counted the event once; it is now `taken` deliveries.
        self.counters
            .pending_events
            .fetch_add(taken, Ordering::Relaxed);
        self.counters.pending_events.fetch_sub(1, Ordering::Relaxed);
    }

    /// Closes the batches whose linger is over, or all of them.
    fn close_batches(&mut self, now: Instant, all: bool) {
        for target_index in 0..self.open.len() {
            let batch = &self.open[target_index];
            if !batch.events.is_empty()
                && (all || now >= batch.opened_at + self.limits.batch_linger)
            {
                self.close(target_index);
            }
        }
    }

    /// Signs the open batch of `target_index` and makes it pending, due now.
    fn close(&mut self, target_index: usize) {
        let events = std::mem::take(&mut self.open[target_index].events);
        let borrowed: Vec<WebhookEvent<'_>> = events.iter().map(|e| e.as_event()).collect();
        let body = webhook_body(unix_time_ms(), &borrowed);
        let app = &self.routes.apps[self.routes.targets[target_index].app_index];
        let headers = webhook_headers(&app.key, &app.secret, &body);
        self.seq += 1;
        self.push_pending(PendingBatch {
            next_at: Instant::now(),
            seq: self.seq,
            target_index,
            body,
            headers,
            event_count: events.len() as u64,
            first_attempt_at: None,
            attempt_count: 0,
        });
    }

    /// Adds `batch` to the heap, then drops the oldest batches while over a limit.
    fn push_pending(&mut self, batch: PendingBatch) {
        self.pending_body_bytes += batch.body.len();
        self.pending.push(Reverse(batch));
        while self.pending.len() > self.limits.pending_batches_max
            || self.pending_body_bytes > self.limits.pending_body_bytes_max
        {
            // O(pending_batches_max), only when over a limit.
            let mut batches = std::mem::take(&mut self.pending).into_vec();
            let oldest = (0..batches.len()).min_by_key(|&i| batches[i].0.seq);
            // Unwrap: the heap held at least the batch just pushed.
            let Reverse(dropped) = batches.swap_remove(oldest.unwrap());
            self.pending = BinaryHeap::from(batches);
            self.pending_body_bytes -= dropped.body.len();
            self.settle(dropped.event_count, &self.counters.dropped_events);
            if let Some(suppressed) = self.failure_log.allow(Instant::now()) {
                tracing::warn!(
                    url = %self.routes.targets[dropped.target_index].target.url,
                    events = dropped.event_count,
                    suppressed,
                    "webhook batches over the pending limit: the oldest was dropped"
                );
            }
        }
        debug_assert!(self.pending.len() <= self.limits.pending_batches_max);
        debug_assert!(self.pending_body_bytes <= self.limits.pending_body_bytes_max);
    }

    /// Sends the next pending batch if it is due, then settles or reschedules it.
    fn attempt_due(&mut self, now: Instant) {
        if self
            .pending
            .peek()
            .is_none_or(|Reverse(batch)| batch.next_at > now)
        {
            return;
        }
        let timeout = match self.shutdown_at() {
            // Past the shutdown deadline nothing more is sent; `run` drops what is left.
            Some(deadline) if now >= deadline => return,
            Some(deadline) => self.limits.request_timeout.min(deadline - now),
            None => self.limits.request_timeout,
        };
        // Unwrap: peeked just above.
        let Reverse(mut batch) = self.pending.pop().unwrap();
        self.pending_body_bytes -= batch.body.len();
        if batch.attempt_count > 0 {
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        batch.attempt_count += 1;
        let first_attempt_at = *batch.first_attempt_at.get_or_insert(now);
        let url = &self.routes.targets[batch.target_index].target.url;
        let outcome = post(&self.agent, url, &batch.headers, &batch.body, timeout);
        let Err(why) = outcome else {
            self.counters.sent_batches.fetch_add(1, Ordering::Relaxed);
            self.settle(batch.event_count, &self.counters.sent_events);
            return;
        };
        let now = Instant::now();
        let give_up_at = first_attempt_at + self.limits.retry_window;
        if now >= give_up_at {
            self.settle(batch.event_count, &self.counters.failed_events);
            if let Some(suppressed) = self.failure_log.allow(now) {
                tracing::warn!(
                    url = %url,
                    events = batch.event_count,
                    attempts = batch.attempt_count,
                    error = %why,
                    suppressed,
                    "webhook batch given up after its retry window"
                );
            }
            return;
        }
        if let Some(suppressed) = self.failure_log.allow(now) {
            tracing::info!(url = %url, error = %why, suppressed, "webhook attempt failed; retrying");
        }
        let delay = backoff(&self.limits, batch.attempt_count);
        batch.next_at = (now + delay + self.jitter.up_to(delay / 4)).min(give_up_at);
        self.push_pending(batch);
    }

    /// Moves `events` deliveries from the pending gauge to `outcome`.
    fn settle(&self, events: u64, outcome: &AtomicU64) {
        outcome.fetch_add(events, Ordering::Relaxed);
        self.counters
            .pending_events
            .fetch_sub(events, Ordering::Relaxed);
    }

    fn shutdown_at(&self) -> Option<Instant> {
        *self
            .shutdown_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The delay before retry number `failures` (1 for the first): `backoff_base * 2^(failures-1)`,
/// at most `backoff_max`, before jitter.
fn backoff(limits: &WebhookLimits, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    limits
        .backoff_base
        .saturating_mul(1 << doublings)
        .min(limits.backoff_max)
}

/// One POST; `Ok` for a 2xx, else why not.
fn post(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&'static str, String)],
    body: &str,
    timeout: Duration,
) -> Result<(), String> {
    // Enough for any error page worth reading; the rest is not read.
    const RESPONSE_BODY_BYTES_MAX: u64 = 64 * 1024;
    let mut request = agent.post(url);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let response = request
        .config()
        .timeout_global(Some(timeout))
        .build()
        .send(body.as_bytes());
    match response {
        Ok(mut response) => {
            // Read to the end so that the connection can be reused; its content is not used.
            let _ = response
                .body_mut()
                .with_config()
                .limit(RESPONSE_BODY_BYTES_MAX)
                .read_to_vec();
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("HTTP status {}", status.as_u16()))
            }
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Allows a log line at most once a second and counts the ones it held back.
#[derive(Default)]
struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(lines held back since the last one)` when a line may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A xorshift64* generator for retry jitter, seeded by the standard library's random hasher keys.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        Jitter(RandomState::new().hash_one(0x5eed_u64) | 1)
    }

    /// A duration in `[0, max]`.
    fn up_to(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let random = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let max_ns = duration_ns(max);
        Duration::from_nanos(if max_ns == 0 {
            0
        } else {
            random % (max_ns + 1)
        })
    }
}

fn unix_time_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pusher::app::WEBHOOK_EVENT_TYPES;

    fn every_event() -> Vec<OwnedWebhookEvent> {
        let s = |v: &str| v.to_owned();
        vec![
            OwnedWebhookEvent::ChannelOccupied { channel: s("c") },
            OwnedWebhookEvent::ChannelVacated { channel: s("c") },
            OwnedWebhookEvent::MemberAdded {
                channel: s("presence-c"),
                user_id: s("7"),
            },
            OwnedWebhookEvent::MemberRemoved {
                channel: s("presence-c"),
                user_id: s("7"),
            },
            OwnedWebhookEvent::ClientEvent {
                channel: s("presence-c"),
                event: s("client-x"),
                data: s("{}"),
                socket_id: s("1.2"),
                user_id: Some(s("7")),
            },
            OwnedWebhookEvent::CacheMiss {
                channel: s("cache-c"),
            },
        ]
    }

    #[test]
    fn owned_events_round_trip_and_name_every_known_type_once() {
        let events = every_event();
        let names: Vec<&str> = events.iter().map(OwnedWebhookEvent::name).collect();
        assert_eq!(names, WEBHOOK_EVENT_TYPES);
        for event in &events {
            assert_eq!(&OwnedWebhookEvent::from(&event.as_event()), event);
            let body: serde_json::Value =
                serde_json::from_str(&webhook_body(1, &[event.as_event()])).unwrap();
            assert_eq!(body["events"][0]["name"], event.name());
        }
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let limits = WebhookLimits::default();
        let delays: Vec<u64> = (1..=9).map(|n| backoff(&limits, n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(&limits, u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_its_bound_and_varies() {
        let mut jitter = Jitter::new();
        let max = Duration::from_millis(250);
        let draws: Vec<Duration> = (0..100).map(|_| jitter.up_to(max)).collect();
        assert!(draws.iter().all(|&d| d <= max));
        assert!(draws.iter().any(|&d| d != draws[0]));
        assert_eq!(jitter.up_to(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn log_limit_allows_one_line_a_second_and_counts_the_rest() {
        let mut log = LogLimit::default();
        let t0 = Instant::now();
        assert_eq!(log.allow(t0), Some(0));
        assert_eq!(log.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(log.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(log.allow(t0 + Duration::from_secs(1)), Some(2));
    }

    #[test]
    fn default_limits_are_valid_and_zero_limits_are_refused() {
        assert_eq!(WebhookLimits::default().validate(), Ok(()));
        let zero_batch = WebhookLimits {
            batch_events_max: 0,
            ..WebhookLimits::default()
        };
        assert_eq!(
            zero_batch.validate(),
            Err(WebhookLimitsError::Zero {
                field: "batch_events_max"
            })
        );
        let inverted = WebhookLimits {
            backoff_max: Duration::from_millis(1),
            ..WebhookLimits::default()
        };
        assert!(matches!(
            inverted.validate(),
            Err(WebhookLimitsError::BackoffMaxBelowBase { .. })
        ));
        let apps = Apps::new(vec![App::default_dev()]).unwrap();
        let err = Webhooks::spawn(&apps, zero_batch).err().unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn without_webhooks_no_thread_runs_and_emit_is_a_no_op() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Webhooks>();
        let app = App::default_dev();
        let webhooks = Webhooks::spawn(
            &Apps::new(vec![app.clone()]).unwrap(),
            WebhookLimits::default(),
        )
        .unwrap();
        assert!(webhooks.sender.is_none());
        assert!(!webhooks.wants(&app, "channel_occupied"));
        for event in every_event() {
            webhooks.emit(&app, event);
        }
        let counters = webhooks.counters();
        assert_eq!(counters.queued.load(Ordering::Relaxed), 0);
        assert_eq!(counters.dropped_events.load(Ordering::Relaxed), 0);
        webhooks.shutdown(Duration::ZERO);
    }
}
