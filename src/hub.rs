//! The control plane of the Pusher protocol: one thread (`ringcast-hub`) that owns what spans
//! shards and is not on the delivery path: channel occupancy counted over all shards (for
//! `channel_occupied`/`channel_vacated` and the HTTP API's queries), presence members, signed-in
//! users and their watchlists, and the hand-off of webhook events to the webhook sender. (The
//! last events of cache channels are kept by every shard: [`crate::broker::cache`].)
//!
//! Shards talk to it only through bounded lock-free single-producer single-consumer rings
//! (`rtrb`), one pair per shard, and wake it (and are woken by it) the way shards wake each
//! other (IORING_OP_MSG_RING or an eventfd). A shard never waits for an answer: a presence join
//! and an HTTP API query are answered later by a message naming the connection, and the shard
//! goes on meanwhile. Publishes never pass through here: a shard encodes an event once and
//! hands it to the broker mesh itself; the hub only broadcasts what it originates
//! (`member_added`, `member_removed`).
//!
//! A full ring is never waited on: messages wait in a per-ring backlog, retried every turn and
//! bounded by [`Limits::hub_backlog_max`](crate::config::Limits); past that bound a message is
//! dropped, counted (`hub_dropped`) and logged, and its documented outcome applies (an HTTP API
//! query gets 503; a lost count or presence change leaves occupancy stale until the channel's
//! next change).

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rtrb::{Consumer, Producer, RingBuffer};

use crate::driver::{ConnKey, Driver};
use crate::http_api::{ChannelCounts, InfoFields, response};
use crate::proto::frame::{self, Opcode};
use crate::pusher::app::Apps;
use crate::pusher::presence::{PresenceChannel, PresenceMember};
use crate::pusher::protocol;
use crate::shard::Shared;
use crate::webhook::{OwnedWebhookEvent, Webhooks};

/// Messages taken from one shard's ring per hub turn, so one busy shard cannot starve the rest.
const DRAIN_PER_SHARD_MAX: usize = 4096;

/// The longest the hub sleeps when nothing wakes it (it also checks its stop flag then).
const IDLE_POLL: Duration = Duration::from_millis(50);

/// A connection on some shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: u16,
    pub key: ConnKey,
}

/// Topic names of Pusher channels in the broker: `{app index}:{channel}`. Raw topic names
/// cannot contain `:`, so the two never collide.
pub fn pusher_topic(app: u32, channel: &str) -> String {
    format!("{app}:{channel}")
}

/// The app index and channel of a Pusher topic name.
pub fn split_topic(topic: &str) -> Option<(u32, &str)> {
    let (app, channel) = topic.split_once(':')?;
    Some((app.parse().ok()?, channel))
}

/// The internal channel a signed-in user's connections are subscribed to (Pusher's
/// server-to-user channel, also what `terminate_connections` closes).
pub fn user_channel(user_id: &str) -> String {
    format!("{}{user_id}", crate::pusher::session::SERVER_TO_USER_PREFIX)
}

/// An HTTP API question only the hub can answer (counts over all shards).
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Channels {
        app: u32,
        prefix: Option<String>,
        info: InfoFields,
    },
    Channel {
        app: u32,
        channel: String,
        info: InfoFields,
    },
    Users {
        app: u32,
        channel: String,
    },
    /// The `info` of a trigger: counts of each channel; `batch` answers in the batch shape.
    TriggerInfo {
        app: u32,
        channels: Vec<String>,
        info: InfoFields,
        batch: bool,
    },
}

/// Shard to hub.
#[derive(Debug)]
pub enum ToHub {
    /// Shard `from` now has `count` local subscribers of `topic` (absolute, so coalescing and
    /// repeating are harmless).
    Count {
        topic: Arc<str>,
        from: u16,
        count: u32,
    },
    PresenceJoin {
        topic: Arc<str>,
        conn: ConnRef,
        member: PresenceMember,
        members_max: u32,
    },
    PresenceLeave {
        topic: Arc<str>,
        conn: ConnRef,
    },
    Query {
        conn: ConnRef,
        query: Query,
    },
    /// Close every connection of `user_id` in `app` on every shard.
    Terminate {
        app: u32,
        user_id: String,
    },
    /// A connection signed in as `user_id`, watching `watchlist` (Pusher watchlist events).
    UserOnline {
        app: u32,
        user_id: String,
        conn: ConnRef,
        watchlist: Vec<String>,
    },
    /// A signed-in connection went away.
    UserOffline {
        app: u32,
        user_id: String,
        conn: ConnRef,
    },
    /// A webhook event raised on a shard (client events).
    Hook {
        app: u32,
        event: OwnedWebhookEvent,
    },
}

/// Hub to shard.
#[derive(Debug)]
pub enum ToShard {
    /// The answer to a presence join: the `subscription_succeeded` frame, or the
    /// `subscription_error` frame.
    PresenceJoined {
        key: ConnKey,
        topic: Arc<str>,
        outcome: Result<String, String>,
    },
    /// Send this encoded frame to one connection (watchlist events).
    SendFrame { key: ConnKey, frame: Bytes },
    /// Deliver this encoded frame to the local subscribers of `topic`, except `exclude`.
    Deliver {
        topic: Arc<str>,
        frame: Bytes,
        exclude: Option<ConnKey>,
    },
    /// The answer to a [`ToHub::Query`]: an HTTP response body (JSON).
    HttpReply {
        key: ConnKey,
        status: u16,
        body: String,
    },
    /// Close the local subscribers of this user topic with 4009.
    Terminate { topic: Arc<str> },
}

/// Counters the admin listener reads.
#[derive(Debug, Default)]
pub struct HubCounters {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    /// Messages dropped because a ring and its backlog were full.
    pub dropped: AtomicU64,
    pub occupied_channels: AtomicU64,
}

/// One direction of a shard-hub pair: the ring, and the messages waiting for room in it (at
/// most `backlog_max`; past that a message is dropped and counted).
struct Outbox<T> {
    ring: Producer<T>,
    backlog: VecDeque<T>,
    backlog_max: usize,
    counters: Arc<HubCounters>,
}

impl<T> Outbox<T> {
    fn new(ring: Producer<T>, backlog_max: usize, counters: Arc<HubCounters>) -> Self {
        Self {
            ring,
            backlog: VecDeque::new(),
            backlog_max,
            counters,
        }
    }

    /// Queues a message; never blocks. False when it had to be dropped (counted).
    fn push(&mut self, msg: T) -> bool {
        if self.backlog.is_empty() {
            if let Err(rtrb::PushError::Full(msg)) = self.ring.push(msg) {
                self.backlog.push_back(msg);
            }
            return true;
        }
        if self.backlog.len() >= self.backlog_max {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.backlog.push_back(msg);
        true
    }

    /// Moves backlogged messages into the ring as room allows; true when any moved.
    fn flush(&mut self) -> bool {
        let mut moved = false;
        while let Some(msg) = self.backlog.pop_front() {
            match self.ring.push(msg) {
                Ok(()) => moved = true,
                Err(rtrb::PushError::Full(msg)) => {
                    self.backlog.push_front(msg);
                    break;
                }
            }
        }
        moved
    }

    fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }
}

/// A shard's ends of its rings to and from the hub.
pub struct ShardLink {
    out: Outbox<ToHub>,
    inbound: Consumer<ToShard>,
    pushed: bool,
}

impl ShardLink {
    /// Queues a message for the hub; never blocks. Returns false when it had to be dropped.
    pub fn send(&mut self, msg: ToHub) -> bool {
        self.pushed = true;
        let queued = self.out.push(msg);
        if !queued {
            tracing::warn!("hub queue full: a control message was dropped");
        }
        queued
    }

    /// Moves backlogged messages into the ring as room allows.
    pub fn flush_backlog(&mut self) {
        self.pushed |= self.out.flush();
    }

    pub fn has_inbound(&self) -> bool {
        !self.inbound.is_empty()
    }

    pub fn has_backlog(&self) -> bool {
        self.out.has_backlog()
    }

    /// Takes at most `max` messages from the hub.
    pub fn drain(&mut self, max: usize, out: &mut Vec<ToShard>) {
        for _ in 0..max {
            match self.inbound.pop() {
                Ok(m) => out.push(m),
                Err(_) => break,
            }
        }
    }

    /// Whether anything was pushed since the last call (the hub needs waking).
    pub fn take_pushed(&mut self) -> bool {
        std::mem::take(&mut self.pushed)
    }
}

/// The hub's state and its ends of the rings.
pub struct Hub {
    apps: Arc<Apps>,
    shared: Arc<Shared>,
    ins: Vec<Consumer<ToHub>>,
    outs: Vec<Outbox<ToShard>>,
    touched: Vec<bool>,
    channels: HashMap<Arc<str>, ChannelState>,
    webhooks: Arc<Webhooks>,
    counters: Arc<HubCounters>,
    stop: Arc<AtomicBool>,
    /// Signed-in users (app, user id): their connections and who watches them.
    users: HashMap<(u32, String), UserState>,
    /// Each watching connection's app and watchlist, to undo when it goes.
    watching: HashMap<ConnRef, (u32, Vec<String>)>,
}

#[derive(Default)]
struct UserState {
    /// Signed-in connections of the user, over all shards.
    connections: u32,
    /// Connections whose watchlist names the user.
    watchers: Vec<ConnRef>,
}

impl UserState {
    fn is_unused(&self) -> bool {
        self.connections == 0 && self.watchers.is_empty()
    }
}

/// One channel as seen over all shards.
struct ChannelState {
    /// Local subscriber count per shard.
    counts: Vec<u32>,
    total: u32,
    presence: Option<PresenceChannel<ConnRef>>,
}

impl ChannelState {
    fn is_unused(&self) -> bool {
        self.total == 0 && self.presence.as_ref().is_none_or(PresenceChannel::is_empty)
    }
}

/// Builds the rings: the hub and one [`ShardLink`] per shard.
pub fn build(
    shards: usize,
    capacity: usize,
    backlog_max: usize,
    apps: Arc<Apps>,
    shared: Arc<Shared>,
    webhooks: Arc<Webhooks>,
    stop: Arc<AtomicBool>,
) -> (Hub, Vec<ShardLink>) {
    let counters = Arc::new(HubCounters::default());
    let mut ins = Vec::with_capacity(shards);
    let mut outs = Vec::with_capacity(shards);
    let mut links = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (to_hub, from_shard) = RingBuffer::new(capacity);
        let (to_shard, from_hub) = RingBuffer::new(capacity);
        ins.push(from_shard);
        outs.push(Outbox::new(to_shard, backlog_max, Arc::clone(&counters)));
        links.push(ShardLink {
            out: Outbox::new(to_hub, backlog_max, Arc::clone(&counters)),
            inbound: from_hub,
            pushed: false,
        });
    }
    let hub = Hub {
        apps,
        shared,
        ins,
        outs,
        touched: vec![false; shards],
        channels: HashMap::new(),
        webhooks,
        counters,
        stop,
        users: HashMap::new(),
        watching: HashMap::new(),
    };
    (hub, links)
}

impl Hub {
    pub fn counters(&self) -> Arc<HubCounters> {
        Arc::clone(&self.counters)
    }

    /// Runs until the stop flag is set. `driver` is only used to sleep and to wake shards.
    pub fn run(mut self, mut driver: Driver) {
        let mut batch = Vec::new();
        loop {
            let stop = self.stop.load(Ordering::Relaxed);
            for shard in 0..self.ins.len() {
                for _ in 0..DRAIN_PER_SHARD_MAX {
                    match self.ins[shard].pop() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
            }
            let busy = !batch.is_empty();
            self.counters
                .messages_in
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            // Rings are drained one after another, so a read (an API query)
            // from one shard may be taken before a write another shard made earlier: the
            // batch's writes are applied first, then its reads are answered.
            let mut reads = Vec::new();
            for msg in batch.drain(..) {
                if matches!(msg, ToHub::Query { .. }) {
                    reads.push(msg);
                } else {
                    self.handle(msg);
                }
            }
            for msg in reads {
                self.handle(msg);
            }
            self.flush();
            for (shard, touched) in self.touched.iter_mut().enumerate() {
                if std::mem::take(touched)
                    && let Some(fd) = self.shared.wakers.get(shard).and_then(|w| w.get())
                {
                    let _ = driver.wake(fd.as_raw_fd());
                }
            }
            if stop {
                break;
            }
            let backlogged = self.outs.iter().any(Outbox::has_backlog);
            let timeout = if busy {
                Duration::ZERO
            } else if backlogged {
                Duration::from_millis(1)
            } else {
                IDLE_POLL
            };
            if let Err(e) = driver.poll(timeout, 64, &mut |_| {}) {
                tracing::warn!("hub poll failed: {e}");
                std::thread::sleep(IDLE_POLL);
            }
        }
    }

    fn handle(&mut self, msg: ToHub) {
        match msg {
            ToHub::Count { topic, from, count } => self.count(topic, from, count),
            ToHub::PresenceJoin {
                topic,
                conn,
                member,
                members_max,
            } => self.presence_join(topic, conn, member, members_max),
            ToHub::PresenceLeave { topic, conn } => self.presence_leave(&topic, conn),
            ToHub::Query { conn, query } => {
                let body = self.answer(&query);
                self.send(
                    conn.shard,
                    ToShard::HttpReply {
                        key: conn.key,
                        status: 200,
                        body,
                    },
                );
            }
            ToHub::Terminate { app, user_id } => {
                let topic: Arc<str> = Arc::from(pusher_topic(app, &user_channel(&user_id)));
                for shard in 0..self.outs.len() {
                    self.send(
                        shard as u16,
                        ToShard::Terminate {
                            topic: Arc::clone(&topic),
                        },
                    );
                }
            }
            ToHub::Hook { app, event } => self.hook(app, event),
            ToHub::UserOnline {
                app,
                user_id,
                conn,
                watchlist,
            } => self.user_online(app, user_id, conn, watchlist),
            ToHub::UserOffline { app, user_id, conn } => self.user_offline(app, user_id, conn),
        }
    }

    fn user_online(&mut self, app: u32, user_id: String, conn: ConnRef, watchlist: Vec<String>) {
        let state = self.users.entry((app, user_id.clone())).or_default();
        state.connections += 1;
        if state.connections == 1 {
            let watchers = state.watchers.clone();
            let frame = watchlist_frame(&[("online", &[user_id.as_str()])]);
            for watcher in watchers {
                self.send_frame(watcher, frame.clone());
            }
        }
        if watchlist.is_empty() {
            return;
        }
        let mut online = Vec::new();
        let mut offline = Vec::new();
        for id in &watchlist {
            let state = self.users.entry((app, id.clone())).or_default();
            state.watchers.push(conn);
            if state.connections > 0 {
                online.push(id.as_str());
            } else {
                offline.push(id.as_str());
            }
        }
        let frame = watchlist_frame(&[("online", &online), ("offline", &offline)]);
        self.send_frame(conn, frame);
        self.watching.insert(conn, (app, watchlist));
    }

    fn user_offline(&mut self, app: u32, user_id: String, conn: ConnRef) {
        if let Some((app, watchlist)) = self.watching.remove(&conn) {
            for id in watchlist {
                let key = (app, id);
                if let Some(state) = self.users.get_mut(&key) {
                    state.watchers.retain(|w| *w != conn);
                    if state.is_unused() {
                        self.users.remove(&key);
                    }
                }
            }
        }
        let key = (app, user_id);
        let Some(state) = self.users.get_mut(&key) else {
            return;
        };
        state.connections = state.connections.saturating_sub(1);
        if state.connections == 0 {
            let watchers = state.watchers.clone();
            let frame = watchlist_frame(&[("offline", &[key.1.as_str()])]);
            for watcher in watchers {
                self.send_frame(watcher, frame.clone());
            }
        }
        if self.users.get(&key).is_some_and(UserState::is_unused) {
            self.users.remove(&key);
        }
    }

    fn send_frame(&mut self, conn: ConnRef, frame: Bytes) {
        self.send(
            conn.shard,
            ToShard::SendFrame {
                key: conn.key,
                frame,
            },
        );
    }

    fn channel(&mut self, topic: &Arc<str>) -> &mut ChannelState {
        let shards = self.outs.len();
        self.channels
            .entry(Arc::clone(topic))
            .or_insert_with(|| ChannelState {
                counts: vec![0; shards],
                total: 0,
                presence: None,
            })
    }

    fn count(&mut self, topic: Arc<str>, from: u16, count: u32) {
        let state = self.channel(&topic);
        let Some(slot) = state.counts.get_mut(from as usize) else {
            return;
        };
        let before = state.total;
        state.total = state.total - *slot + count;
        *slot = count;
        let after = state.total;
        let unused = state.is_unused();
        if unused {
            self.channels.remove(&topic);
        }
        let Some((app, channel)) = split_topic(&topic) else {
            return;
        };
        if channel.starts_with('#') {
            // Internal user channels are not channels of the app.
            return;
        }
        if before == 0 && after > 0 {
            self.counters
                .occupied_channels
                .fetch_add(1, Ordering::Relaxed);
            self.hook(
                app,
                OwnedWebhookEvent::ChannelOccupied {
                    channel: channel.to_owned(),
                },
            );
        } else if before > 0 && after == 0 {
            self.counters
                .occupied_channels
                .fetch_sub(1, Ordering::Relaxed);
            self.hook(
                app,
                OwnedWebhookEvent::ChannelVacated {
                    channel: channel.to_owned(),
                },
            );
        }
    }

    fn presence_join(
        &mut self,
        topic: Arc<str>,
        conn: ConnRef,
        member: PresenceMember,
        members_max: u32,
    ) {
        let Some((app, channel)) = split_topic(&topic).map(|(a, c)| (a, c.to_owned())) else {
            return;
        };
        let state = self.channel(&topic);
        let registry = state.presence.get_or_insert_with(PresenceChannel::new);
        let user_id = member.user_id.clone();
        let (outcome, added) = match registry.join(conn, member, members_max as usize) {
            Ok(added) => (
                Ok(registry.subscription_succeeded(&channel)),
                added.map(|a| a.to_frame(&channel)),
            ),
            Err(e) => {
                let (kind, status) = e.subscription_error();
                let frame = protocol::subscription_error(&channel, kind, &e.to_string(), status);
                (Err(frame), None)
            }
        };
        if self
            .channels
            .get(&topic)
            .is_some_and(ChannelState::is_unused)
        {
            self.channels.remove(&topic);
        }
        self.send(
            conn.shard,
            ToShard::PresenceJoined {
                key: conn.key,
                topic: Arc::clone(&topic),
                outcome,
            },
        );
        if let Some(frame) = added {
            self.broadcast(&topic, &frame, Some(conn));
            self.hook(app, OwnedWebhookEvent::MemberAdded { channel, user_id });
        }
    }

    fn presence_leave(&mut self, topic: &Arc<str>, conn: ConnRef) {
        let Some(state) = self.channels.get_mut(topic) else {
            return;
        };
        let Some(registry) = &mut state.presence else {
            return;
        };
        let removed = registry.leave(&conn);
        if state.is_unused() {
            self.channels.remove(topic);
        }
        let (Some(removed), Some((app, channel))) = (removed, split_topic(topic)) else {
            return;
        };
        let frame = removed.to_frame(channel);
        let channel = channel.to_owned();
        self.broadcast(topic, &frame, None);
        self.hook(
            app,
            OwnedWebhookEvent::MemberRemoved {
                channel,
                user_id: removed.user_id,
            },
        );
    }

    /// Sends a text frame to the subscribers of `topic` on every shard (a shard without any
    /// ignores it; interest counts may lag a join, so every shard is told).
    fn broadcast(&mut self, topic: &Arc<str>, text: &str, exclude: Option<ConnRef>) {
        let frame = text_frame(text);
        for shard in 0..self.outs.len() {
            let exclude = exclude.filter(|c| c.shard as usize == shard).map(|c| c.key);
            self.send(
                shard as u16,
                ToShard::Deliver {
                    topic: Arc::clone(topic),
                    frame: frame.clone(),
                    exclude,
                },
            );
        }
    }

    fn counts(&self, app: u32, channel: &str, info: &InfoFields) -> (bool, ChannelCounts) {
        let topic = pusher_topic(app, channel);
        let state = self.channels.get(topic.as_str());
        let total = state.map_or(0, |s| s.total);
        let users = state
            .and_then(|s| s.presence.as_ref())
            .map_or(0, |p| p.member_count() as u64);
        let presence = channel.starts_with("presence-");
        let counts = ChannelCounts {
            user_count: (info.user_count && presence).then_some(users),
            subscription_count: info.subscription_count.then_some(u64::from(total)),
        };
        (total > 0, counts)
    }

    fn answer(&self, query: &Query) -> String {
        match query {
            Query::Channels { app, prefix, info } => {
                let mut found: Vec<(&str, ChannelCounts)> = self
                    .channels
                    .iter()
                    .filter(|(_, s)| s.total > 0)
                    .filter_map(|(topic, _)| {
                        let (a, channel) = split_topic(topic)?;
                        let wanted = a == *app
                            && !channel.starts_with('#')
                            && prefix.as_deref().is_none_or(|p| channel.starts_with(p));
                        wanted.then(|| (channel, self.counts(a, channel, info).1))
                    })
                    .collect();
                found.sort_unstable_by(|a, b| a.0.cmp(b.0));
                response::channels_list(found)
            }
            Query::Channel { app, channel, info } => {
                let (occupied, counts) = self.counts(*app, channel, info);
                response::channel_info(occupied, counts)
            }
            Query::Users { app, channel } => {
                let topic = pusher_topic(*app, channel);
                let snapshot = self
                    .channels
                    .get(topic.as_str())
                    .and_then(|s| s.presence.as_ref())
                    .map(|p| p.snapshot());
                let ids: Vec<&str> = snapshot
                    .as_ref()
                    .map(|s| s.presence.ids.clone())
                    .unwrap_or_default();
                response::users(ids)
            }
            Query::TriggerInfo {
                app,
                channels,
                info,
                batch,
            } => {
                if *batch {
                    response::batch_with_info(channels.iter().map(|c| self.counts(*app, c, info).1))
                } else {
                    response::trigger_with_info(
                        channels
                            .iter()
                            .map(|c| (c.as_str(), self.counts(*app, c, info).1)),
                    )
                }
            }
        }
    }

    fn hook(&mut self, app: u32, event: OwnedWebhookEvent) {
        if let Some(app) = self.apps.get(app as usize) {
            self.webhooks.emit(app, event);
        }
    }

    fn send(&mut self, shard: u16, msg: ToShard) {
        let shard = shard as usize;
        let Some(out) = self.outs.get_mut(shard) else {
            return;
        };
        self.touched[shard] = true;
        self.counters.messages_out.fetch_add(1, Ordering::Relaxed);
        if !out.push(msg) {
            // A lost HTTP reply: that request times out and its connection is closed.
            tracing::warn!(shard, "shard queue full: a hub message was dropped");
        }
    }

    fn flush(&mut self) {
        for (out, touched) in self.outs.iter_mut().zip(&mut self.touched) {
            *touched |= out.flush();
        }
    }
}

/// `pusher_internal:watchlist_events` with one event per non-empty `(name, user_ids)`.
fn watchlist_frame(events: &[(&str, &[&str])]) -> Bytes {
    let events: Vec<serde_json::Value> = events
        .iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(name, ids)| serde_json::json!({"name": name, "user_ids": ids}))
        .collect();
    let data = serde_json::json!({ "events": events }).to_string();
    text_frame(
        &serde_json::json!({"event": "pusher_internal:watchlist_events", "data": data}).to_string(),
    )
}

/// One text frame, encoded once for every receiver.
pub fn text_frame(text: &str) -> Bytes {
    let mut out = Vec::with_capacity(text.len() + frame::MAX_HEADER_BYTES);
    frame::encode_frame(Opcode::Text, text.as_bytes(), &mut out);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pusher::app::App;
    use crate::webhook::WebhookLimits;
    use serde_json::json;

    fn hub(shards: usize) -> (Hub, Vec<ShardLink>) {
        let apps = Arc::new(Apps::new(vec![App::default_dev()]).unwrap());
        let shared = Arc::new(Shared::new(Arc::new(AtomicBool::new(false)), shards));
        let webhooks = Arc::new(Webhooks::spawn(&apps, WebhookLimits::default()).unwrap());
        build(
            shards,
            64,
            4,
            apps,
            shared,
            webhooks,
            Arc::new(AtomicBool::new(false)),
        )
    }

    fn conn(shard: u16, index: u32) -> ConnRef {
        ConnRef {
            shard,
            key: ConnKey {
                index,
                generation: 1,
            },
        }
    }

    fn inbox(link: &mut ShardLink) -> Vec<ToShard> {
        let mut out = Vec::new();
        link.drain(1024, &mut out);
        out
    }

    fn member(id: &str) -> PresenceMember {
        PresenceMember {
            user_id: id.to_owned(),
            user_info: json!({"name": id}),
        }
    }

    fn topic(channel: &str) -> Arc<str> {
        Arc::from(pusher_topic(0, channel))
    }

    fn answer(hub: &mut Hub, link: &mut ShardLink, query: Query) -> Value {
        hub.handle(ToHub::Query {
            conn: conn(0, 9),
            query,
        });
        match inbox(link).pop() {
            Some(ToShard::HttpReply { body, status, .. }) => {
                assert_eq!(status, 200);
                serde_json::from_str(&body).unwrap()
            }
            other => panic!("{other:?}"),
        }
    }

    use serde_json::Value;

    #[test]
    fn topic_names_split_back() {
        assert_eq!(split_topic(&pusher_topic(3, "a:b")), Some((3, "a:b")));
        assert_eq!(split_topic("news"), None);
        assert_eq!(split_topic("x:news"), None);
    }

    #[test]
    fn occupancy_is_counted_over_shards() {
        let (mut hub, mut links) = hub(2);
        let t = topic("room");
        let info = InfoFields {
            user_count: false,
            subscription_count: true,
        };
        for (from, count) in [(0, 2), (1, 3), (0, 0)] {
            hub.handle(ToHub::Count {
                topic: Arc::clone(&t),
                from,
                count,
            });
        }
        let q = Query::Channel {
            app: 0,
            channel: "room".into(),
            info,
        };
        let v = answer(&mut hub, &mut links[0], q.clone());
        assert_eq!(v, json!({"occupied": true, "subscription_count": 3}));
        assert_eq!(hub.counters.occupied_channels.load(Ordering::Relaxed), 1);
        hub.handle(ToHub::Count {
            topic: Arc::clone(&t),
            from: 1,
            count: 0,
        });
        assert_eq!(hub.counters.occupied_channels.load(Ordering::Relaxed), 0);
        assert!(hub.channels.is_empty(), "an unused channel is forgotten");
        let v = answer(&mut hub, &mut links[0], q);
        assert_eq!(v, json!({"occupied": false, "subscription_count": 0}));
    }

    #[test]
    fn presence_members_join_once_per_user_and_leave_with_the_last_socket() {
        let (mut hub, mut links) = hub(2);
        let t = topic("presence-r");
        let join = |hub: &mut Hub, c: ConnRef, id: &str| {
            hub.handle(ToHub::PresenceJoin {
                topic: Arc::clone(&t),
                conn: c,
                member: member(id),
                members_max: 2,
            })
        };
        join(&mut hub, conn(0, 1), "a");
        let msgs = inbox(&mut links[0]);
        assert!(
            matches!(&msgs[0], ToShard::PresenceJoined { outcome: Ok(f), .. } if f.contains("\"count\\\":1")),
            "{msgs:?}"
        );
        // member_added goes to every shard, excluding the joiner on its own shard.
        assert!(matches!(&msgs[1], ToShard::Deliver { exclude: Some(k), .. } if k.index == 1));
        assert!(matches!(
            &inbox(&mut links[1])[..],
            [ToShard::Deliver { exclude: None, .. }]
        ));
        // A second socket of "a" on the other shard: no member_added.
        join(&mut hub, conn(1, 1), "a");
        assert!(matches!(
            &inbox(&mut links[1])[..],
            [ToShard::PresenceJoined { outcome: Ok(_), .. }]
        ));
        assert!(inbox(&mut links[0]).is_empty());
        // The limit counts users.
        join(&mut hub, conn(0, 2), "b");
        inbox(&mut links[0]);
        inbox(&mut links[1]);
        join(&mut hub, conn(0, 3), "c");
        assert!(matches!(
            &inbox(&mut links[0])[..],
            [ToShard::PresenceJoined {
                outcome: Err(_),
                ..
            }]
        ));
        let users = answer(
            &mut hub,
            &mut links[0],
            Query::Users {
                app: 0,
                channel: "presence-r".into(),
            },
        );
        assert_eq!(users, json!({"users": [{"id": "a"}, {"id": "b"}]}));
        hub.handle(ToHub::PresenceLeave {
            topic: Arc::clone(&t),
            conn: conn(0, 1),
        });
        assert!(inbox(&mut links[0]).is_empty(), "a still has a socket");
        hub.handle(ToHub::PresenceLeave {
            topic: Arc::clone(&t),
            conn: conn(1, 1),
        });
        let msgs = inbox(&mut links[0]);
        assert!(
            matches!(&msgs[..], [ToShard::Deliver { frame, .. }] if String::from_utf8_lossy(frame).contains("member_removed")),
            "{msgs:?}"
        );
    }

    #[test]
    fn a_full_ring_backlogs_then_drops_counted() {
        let (mut hub, mut links) = hub(1);
        // Ring of 64, backlog of 4.
        for _ in 0..70 {
            hub.handle(ToHub::Terminate {
                app: 0,
                user_id: "u".into(),
            });
        }
        assert_eq!(hub.counters.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(inbox(&mut links[0]).len(), 64);
        hub.flush();
        assert_eq!(inbox(&mut links[0]).len(), 4);
    }

    #[test]
    fn terminate_reaches_every_shard() {
        let (mut hub, mut links) = hub(3);
        hub.handle(ToHub::Terminate {
            app: 0,
            user_id: "7".into(),
        });
        for link in &mut links {
            assert!(
                matches!(&inbox(link)[..], [ToShard::Terminate { topic }] if &**topic == "0:#server-to-user-7")
            );
        }
    }

    fn watch_frame(msgs: &[ToShard]) -> Vec<Value> {
        msgs.iter()
            .map(|m| match m {
                ToShard::SendFrame { frame, .. } => {
                    let text = String::from_utf8_lossy(&frame[2..]).into_owned();
                    let v: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(v["event"], "pusher_internal:watchlist_events");
                    serde_json::from_str(v["data"].as_str().unwrap()).unwrap()
                }
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn watchlists_hear_online_and_offline_once_per_user() {
        let (mut hub, mut links) = hub(2);
        let online = |hub: &mut Hub, user: &str, c: ConnRef, watch: &[&str]| {
            hub.handle(ToHub::UserOnline {
                app: 0,
                user_id: user.into(),
                conn: c,
                watchlist: watch.iter().map(|s| s.to_string()).collect(),
            })
        };
        online(&mut hub, "a", conn(0, 1), &["b", "c"]);
        assert_eq!(
            watch_frame(&inbox(&mut links[0])),
            [json!({"events":[{"name":"offline","user_ids":["b","c"]}]})]
        );
        online(&mut hub, "b", conn(1, 1), &[]);
        online(&mut hub, "b", conn(1, 2), &[]);
        assert_eq!(
            watch_frame(&inbox(&mut links[0])),
            [json!({"events":[{"name":"online","user_ids":["b"]}]})],
            "the second socket of b is not news"
        );
        hub.handle(ToHub::UserOffline {
            app: 0,
            user_id: "b".into(),
            conn: conn(1, 1),
        });
        assert!(inbox(&mut links[0]).is_empty());
        hub.handle(ToHub::UserOffline {
            app: 0,
            user_id: "b".into(),
            conn: conn(1, 2),
        });
        assert_eq!(
            watch_frame(&inbox(&mut links[0])),
            [json!({"events":[{"name":"offline","user_ids":["b"]}]})]
        );
        hub.handle(ToHub::UserOffline {
            app: 0,
            user_id: "a".into(),
            conn: conn(0, 1),
        });
        assert!(
            hub.users.is_empty() && hub.watching.is_empty(),
            "nothing left behind"
        );
    }
}
