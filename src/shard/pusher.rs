//! The shard's side of the Pusher protocol: it feeds a connection's messages and timers to the
//! sans-IO [`Session`], performs the [`Action`]s it returns (frames, broker subscriptions,
//! messages to the hub), and serves the Pusher HTTP API. State that spans shards (presence,
//! occupancy, the cache, webhooks) lives in the hub ([`crate::hub`]); this side never waits for
//! it: answers come back as messages naming the connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::Value;

use super::conn::{Phase, WebSocket, flag};
use super::router::Endpoint;
use super::timer::ms_to_ticks;
use super::{MeshFull, State};
use crate::broker::topic::{self, TopicId};
use crate::driver::ConnKey;
use crate::http_api::{self, ApiLimits, ApiRequest, TriggerEvent};
use crate::hub::{self, ConnRef, Query, ToHub, ToShard, pusher_topic, split_topic, text_frame};
use crate::pusher::auth;
use crate::pusher::channel::ChannelKind;
use crate::pusher::path;
use crate::pusher::protocol::{self, ErrorCode};
use crate::pusher::session::{self, Action, Session};
use crate::webhook::OwnedWebhookEvent;

/// Socket ids are `{nonce * SHARD_SPAN + shard}.{generation << 32 | slot}`: unique across the
/// shards of this process, across restarts (the nonce), and they name the connection so an
/// HTTP API `socket_id` exclusion goes straight to it.
const SHARD_SPAN: u64 = 1024;

/// A Pusher connection's out-of-line state.
#[derive(Debug)]
pub struct PusherConn {
    pub session: Session,
    /// The app's index in the configuration.
    pub app: u32,
    /// Broker subscriptions: topic and this connection's slot in its subscriber list.
    pub subs: Vec<(TopicId, u32)>,
}

/// What the shard answers an HTTP API request with.
pub(super) enum ApiAnswer {
    /// Status, JSON body, `Allow` header for a 405.
    Now(u16, String, Option<&'static str>),
    /// The hub answers later ([`ToShard::HttpReply`]).
    Later,
}

/// A fresh per-process nonce for socket ids (not a secret: socket ids are public).
pub fn socket_id_nonce() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Keeps `nonce * SHARD_SPAN + shard` well inside u64 and the id short.
    (nanos ^ u64::from(std::process::id()).rotate_left(32)) % 1_000_000_000
}

impl State {
    fn now_ms(&self) -> u64 {
        u64::from(self.now) * super::timer::TICK_MS
    }

    fn conn_ref(&self, index: u32) -> ConnRef {
        ConnRef {
            shard: self.id as u16,
            key: ConnKey {
                index,
                generation: self.conns[index as usize].generation,
            },
        }
    }

    fn socket_id(&self, index: u32) -> String {
        let generation = u64::from(self.conns[index as usize].generation);
        auth::socket_id(
            self.socket_nonce * SHARD_SPAN + self.id as u64,
            generation << 32 | u64::from(index),
        )
    }

    /// The connection a socket id names, if it was issued by this process.
    fn parse_socket_id(&self, socket_id: &str) -> Option<(u16, ConnKey)> {
        let (high, low) = socket_id.split_once('.')?;
        let (high, low): (u64, u64) = (high.parse().ok()?, low.parse().ok()?);
        if high / SHARD_SPAN != self.socket_nonce {
            return None;
        }
        let key = ConnKey {
            index: low as u32,
            generation: (low >> 32) as u32,
        };
        Some(((high % SHARD_SPAN) as u16, key))
    }

    pub(super) fn pusher_mut(&mut self, index: u32) -> Option<&mut PusherConn> {
        match &mut self.conns.get_mut(index as usize)?.phase {
            Phase::WebSocket(WebSocket {
                endpoint: Endpoint::Pusher(p),
                ..
            }) => Some(p),
            _ => None,
        }
    }

    /// Admits a new Pusher connection (Pusher's order: path, app, enabled, origin, quota).
    pub(super) fn pusher_admit(
        &mut self,
        index: u32,
        path: &str,
        query: &str,
        origin: Option<&str>,
    ) -> Result<Box<PusherConn>, ErrorCode> {
        let target = format!("{path}?{query}");
        let apps = Arc::clone(&self.config.apps);
        let key = path::parse_path(&target)?.app_key;
        let app_index = apps.index_of_key(key).ok_or(ErrorCode::AppNotFound)?;
        let counter = &self.shared.app_connections()[app_index as usize];
        let app = path::admit(&apps, &target, origin, counter.load(Ordering::Relaxed))?;
        counter.fetch_add(1, Ordering::Relaxed);
        self.stats.pusher_connections += 1;
        let session = Session::new(app, self.socket_id(index));
        Ok(Box::new(PusherConn {
            session,
            app: app_index,
            subs: Vec::new(),
        }))
    }

    /// The WebSocket is open: greet the client and start the session's timers.
    pub(super) fn pusher_opened(&mut self, index: u32) {
        let now_ms = self.now_ms();
        let Some(pc) = self.pusher_mut(index) else {
            return;
        };
        let actions = pc.session.handle_open(now_ms);
        self.pusher_perform(index, actions);
        self.pusher_rearm(index);
    }

    /// Refuses a Pusher connection after the handshake: `pusher:error`, then the close code.
    pub(super) fn pusher_refuse(&mut self, index: u32, code: ErrorCode) {
        self.stats.pusher_refused += 1;
        self.pusher_perform(index, session::refuse(code).to_vec());
    }

    /// Text messages from the client, in order.
    pub(super) fn pusher_texts(&mut self, index: u32, texts: Vec<String>) {
        let now_ms = self.now_ms();
        for text in texts {
            let Some(pc) = self.pusher_mut(index) else {
                return;
            };
            let actions = pc.session.handle_text(&text, now_ms);
            self.pusher_perform(index, actions);
        }
    }

    /// The connection's timer fired: the session's ping, pong and sign-in deadlines.
    pub(super) fn pusher_timeout(&mut self, index: u32) {
        let now_ms = self.now_ms();
        let Some(pc) = self.pusher_mut(index) else {
            return;
        };
        let actions = pc.session.handle_timeout(now_ms);
        self.pusher_perform(index, actions);
        self.pusher_rearm(index);
    }

    /// The server drains: close 4200, so clients reconnect at once (elsewhere).
    pub(super) fn pusher_shutdown(&mut self, index: u32) {
        let Some(pc) = self.pusher_mut(index) else {
            return;
        };
        let actions = pc.session.handle_shutdown();
        self.pusher_perform(index, actions);
    }

    fn pusher_rearm(&mut self, index: u32) {
        let now_ms = self.now_ms();
        let Some(at_ms) = self
            .pusher_mut(index)
            .and_then(|p| p.session.poll_timeout())
        else {
            return;
        };
        let conn = &self.conns[index as usize];
        if conn.has(flag::CLOSE_AFTER_FLUSH | flag::SHUTDOWN | flag::DRAINING) {
            return;
        }
        let wait = at_ms.saturating_sub(now_ms).min(u64::from(u32::MAX / 2)) as u32;
        let at = self.now.wrapping_add(ms_to_ticks(wait));
        self.set_deadline_exact(index, at);
    }

    /// Performs a session's actions, in order.
    pub(super) fn pusher_perform(&mut self, index: u32, actions: Vec<Action>) {
        let mut actions = actions.into_iter().peekable();
        while let Some(action) = actions.next() {
            match action {
                // A subscription_succeeded is sent only once its subscription took.
                Action::Send(text) if matches!(actions.peek(), Some(Action::Subscribe { .. })) => {
                    let Some(Action::Subscribe { channel, kind }) = actions.next() else {
                        unreachable!("peeked a Subscribe");
                    };
                    match self.pusher_subscribe(index, &channel) {
                        Ok(()) => {
                            self.queue_text(index, &text);
                            if kind.is_cache() {
                                self.send_cached(index, &channel);
                            }
                        }
                        Err(why) => {
                            let Some(pc) = self.pusher_mut(index) else {
                                continue;
                            };
                            let undo = pc.session.subscription_refused(&channel, why);
                            self.pusher_perform(index, undo);
                        }
                    }
                }
                Action::Send(text) => self.queue_text(index, &text),
                Action::Subscribe { channel, kind } => {
                    if self.pusher_subscribe(index, &channel).is_ok() && kind.is_cache() {
                        self.send_cached(index, &channel);
                    }
                }
                Action::Unsubscribe { channel, kind } => {
                    self.pusher_unsubscribe(index, &channel, kind)
                }
                Action::PresenceJoin { channel, member } => {
                    let Some(pc) = self.pusher_mut(index) else {
                        continue;
                    };
                    let members_max = pc.session.app().max_presence_members;
                    let topic: Arc<str> = Arc::from(pusher_topic(pc.app, &channel));
                    let conn = self.conn_ref(index);
                    self.hub.send(ToHub::PresenceJoin {
                        topic,
                        conn,
                        member,
                        members_max,
                    });
                }
                Action::Broadcast { channel, frame } => {
                    let Some(app) = self.pusher_mut(index).map(|p| p.app) else {
                        continue;
                    };
                    let exclude = Some((self.id as u16, self.conn_ref(index).key));
                    let _ = self.publish_channel(app, &channel, text_frame(&frame), exclude);
                }
                Action::ClientEvent {
                    channel,
                    event,
                    frame,
                    data,
                    user_id,
                } => self.client_event(index, channel, event, &frame, data, user_id),
                Action::SignedIn { user_id, watchlist } => {
                    let channel = hub::user_channel(&user_id);
                    let _ = self.pusher_subscribe(index, &channel);
                    let Some(app) = self.pusher_mut(index).map(|p| p.app) else {
                        continue;
                    };
                    let conn = self.conn_ref(index);
                    self.hub.send(ToHub::UserOnline {
                        app,
                        user_id,
                        conn,
                        watchlist,
                    });
                }
                Action::Close { code, reason } => self.send_close_reason(index, code, reason),
            }
        }
    }

    fn client_event(
        &mut self,
        index: u32,
        channel: String,
        event: String,
        frame: &str,
        data: String,
        user_id: Option<String>,
    ) {
        let Some(app) = self.pusher_mut(index).map(|p| p.app) else {
            return;
        };
        let conn = self.conn_ref(index);
        let socket_id = self.socket_id(index);
        self.stats.pusher_client_events += 1;
        let sent = self.publish_channel(
            app,
            &channel,
            text_frame(frame),
            Some((conn.shard, conn.key)),
        );
        if sent.is_err() {
            let text = protocol::error_message("Client event rejected - server busy, retry", None);
            self.queue_text(index, &text);
            return;
        }
        self.hook(
            app,
            OwnedWebhookEvent::ClientEvent {
                channel,
                event,
                data,
                socket_id,
                user_id,
            },
        );
    }

    /// Hands a webhook event to the hub, only when one of the app's targets takes it: most
    /// apps have no webhooks, and their client events then cost the hub nothing.
    fn hook(&mut self, app: u32, event: OwnedWebhookEvent) {
        let wanted = self
            .config
            .apps
            .get(app as usize)
            .is_some_and(|a| a.webhooks.iter().any(|t| t.accepts(event.name())));
        if wanted {
            self.hub.send(ToHub::Hook { app, event });
        }
    }

    /// Subscribes the connection in the broker. Refused when it would create a channel over
    /// the app's `max_channels` (the user channel of a signed-in connection is exempt: there
    /// is at most one per connection).
    fn pusher_subscribe(&mut self, index: u32, channel: &str) -> Result<(), &'static str> {
        let Some(pc) = self.pusher_mut(index) else {
            return Ok(());
        };
        let (app, channels_max) = (pc.app, pc.session.app().max_channels);
        let topic = pusher_topic(app, channel);
        let counted = !channel.starts_with('#');
        let new_here = self
            .topics
            .lookup(&topic)
            .is_none_or(|id| self.topics.topic(id).live == 0);
        if counted && new_here {
            let Some(count) = self.shared.app_channels().get(app as usize) else {
                return Ok(());
            };
            if count.load(Ordering::Relaxed) >= channels_max {
                self.stats.pusher_channel_limit += 1;
                return Err("the app's channel limit (max_channels) is reached");
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
        let (id, slot, first) = self.topics.subscribe(&topic, index);
        let name = Arc::clone(&self.topics.topic(id).name);
        if first {
            self.mesh.announce_interest(&name, true);
        }
        if let Some(pc) = self.pusher_mut(index) {
            pc.subs.push((id, slot));
        }
        self.hub_counts
            .insert(Arc::clone(&name), self.topics.topic(id).live);
        Ok(())
    }

    /// Sends a new subscriber of a cache channel its last event, or `pusher:cache_miss` (and
    /// the `cache_miss` webhook). Events other shards published before this subscribe are in
    /// the mesh already: they are taken first.
    fn send_cached(&mut self, index: u32, channel: &str) {
        let Some(app) = self.pusher_mut(index).map(|p| p.app) else {
            return;
        };
        self.catch_up();
        let topic = pusher_topic(app, channel);
        match self.cache.get(&topic, std::time::Instant::now()) {
            Some(frame) => self.deliver(index, &std::rc::Rc::new(frame), 1),
            None => {
                self.queue_text(index, &protocol::cache_miss(channel));
                self.hook(
                    app,
                    OwnedWebhookEvent::CacheMiss {
                        channel: channel.to_owned(),
                    },
                );
            }
        }
    }

    fn pusher_unsubscribe(&mut self, index: u32, channel: &str, kind: ChannelKind) {
        let Some(app) = self.pusher_mut(index).map(|p| p.app) else {
            return;
        };
        let topic = pusher_topic(app, channel);
        let id = self.topics.lookup(&topic);
        let Some(pc) = self.pusher_mut(index) else {
            return;
        };
        let found = id.and_then(|id| pc.subs.iter().position(|(t, _)| *t == id));
        let Some(at) = found else {
            // Never subscribed in the broker (a presence join undone before it landed); the
            // hub may still hold the member.
            if kind.is_presence() {
                let conn = self.conn_ref(index);
                self.hub.send(ToHub::PresenceLeave {
                    topic: Arc::from(topic),
                    conn,
                });
            }
            return;
        };
        let (id, slot) = pc.subs.swap_remove(at);
        let conn = self.conn_ref(index);
        self.drop_subscription(index, conn, id, slot);
    }

    /// Removes one broker subscription of a Pusher connection and tells the hub.
    fn drop_subscription(&mut self, index: u32, conn: ConnRef, id: TopicId, slot: u32) {
        let name = Arc::clone(&self.topics.topic(id).name);
        self.unsubscribe(index, id, slot);
        let live = self
            .topics
            .lookup(&name)
            .map_or(0, |id| self.topics.topic(id).live);
        self.hub_counts.insert(Arc::clone(&name), live);
        if live == 0
            && let Some((app, channel)) = split_topic(&name)
            && !channel.starts_with('#')
            && let Some(count) = self.shared.app_channels().get(app as usize)
        {
            count.fetch_sub(1, Ordering::Relaxed);
        }
        if split_topic(&name).is_some_and(|(_, c)| ChannelKind::from_name(c).is_presence()) {
            self.hub.send(ToHub::PresenceLeave { topic: name, conn });
        }
    }

    /// The connection is gone: undo its subscriptions and free its place in the app's quota.
    pub(super) fn pusher_release(&mut self, index: u32, generation: u32, pc: PusherConn) {
        let conn = ConnRef {
            shard: self.id as u16,
            key: ConnKey { index, generation },
        };
        for (id, slot) in pc.subs {
            self.drop_subscription(index, conn, id, slot);
        }
        if let Some(user_id) = pc.session.user_id() {
            self.hub.send(ToHub::UserOffline {
                app: pc.app,
                user_id: user_id.to_owned(),
                conn,
            });
        }
        if let Some(counter) = self.shared.app_connections().get(pc.app as usize) {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Publishes an encoded event frame to a Pusher channel on every shard. Cache channels keep
    /// it as their last event (in the hub).
    fn publish_channel(
        &mut self,
        app: u32,
        channel: &str,
        frame: Bytes,
        exclude: Option<(u16, ConnKey)>,
    ) -> Result<(), MeshFull> {
        let topic = pusher_topic(app, channel);
        self.catch_up();
        let id = self.topics.lookup(&topic);
        if ChannelKind::from_name(channel).is_cache() {
            let topic: Arc<str> = Arc::from(topic.as_str());
            let at = std::time::Instant::now();
            self.cache.set(&topic, frame.clone(), at);
            self.mesh.broadcast_cache(&topic, &frame, at);
        }
        match id {
            Some(id) => self.publish(id, frame, exclude),
            // Nobody subscribes to it on any shard this shard knows of.
            None => Ok(()),
        }
    }

    /// Serves one Pusher HTTP API request (`/apps/{id}/...`).
    pub(super) fn api_request(
        &mut self,
        index: u32,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> ApiAnswer {
        self.stats.api_requests += 1;
        let apps = Arc::clone(&self.config.apps);
        let app_index = http_api::request::app_id(path).and_then(|id| apps.index_of_id(id));
        let app = app_index.and_then(|i| apps.get(i as usize));
        let limits = app.map_or_else(ApiLimits::default, |app| ApiLimits {
            event_payload_bytes_max: app.max_event_payload_bytes as usize,
            event_channels_max: app.max_event_channels as usize,
            batch_events_max: app.max_event_batch_size as usize,
            ..ApiLimits::default()
        });
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let parsed = http_api::authenticate_and_parse(
            method,
            path,
            query.as_bytes(),
            body,
            now_s,
            &limits,
            |_, key| {
                app.filter(|app| app.key == key)
                    .map(|app| app.secret.as_str())
            },
        );
        let request = match parsed {
            Ok(request) => request,
            Err(e) => {
                self.stats.api_refused += 1;
                return ApiAnswer::Now(e.status(), e.body(), e.allow());
            }
        };
        let (Some(app_index), Some(app)) = (app_index, app) else {
            return ApiAnswer::Now(401, http_api::error_body("unknown app"), None);
        };
        if !app.enabled {
            self.stats.api_refused += 1;
            return ApiAnswer::Now(403, http_api::error_body("app disabled"), None);
        }
        let query = match request {
            ApiRequest::Trigger { event, .. } => {
                if self.trigger(app_index, &event).is_err() {
                    return busy();
                }
                if !event.info.any() {
                    return ApiAnswer::Now(200, http_api::response::empty(), None);
                }
                Query::TriggerInfo {
                    app: app_index,
                    channels: event.channels,
                    info: event.info,
                    batch: false,
                }
            }
            ApiRequest::TriggerBatch { events, .. } => {
                for event in &events {
                    if self.trigger(app_index, event).is_err() {
                        return busy();
                    }
                }
                if !events.iter().any(|e| e.info.any()) {
                    return ApiAnswer::Now(200, http_api::response::empty(), None);
                }
                let info =
                    events
                        .iter()
                        .fold(Default::default(), |acc: http_api::InfoFields, e| {
                            http_api::InfoFields {
                                user_count: acc.user_count || e.info.user_count,
                                subscription_count: acc.subscription_count
                                    || e.info.subscription_count,
                            }
                        });
                Query::TriggerInfo {
                    app: app_index,
                    channels: events
                        .into_iter()
                        .filter_map(|e| e.channels.into_iter().next())
                        .collect(),
                    info,
                    batch: true,
                }
            }
            ApiRequest::Channels {
                filter_by_prefix,
                info,
                ..
            } => Query::Channels {
                app: app_index,
                prefix: filter_by_prefix,
                info,
            },
            ApiRequest::Channel { channel, info, .. } => Query::Channel {
                app: app_index,
                channel,
                info,
            },
            ApiRequest::ChannelUsers { channel, .. } => Query::Users {
                app: app_index,
                channel,
            },
            ApiRequest::TerminateUserConnections { user_id, .. } => {
                self.hub.send(ToHub::Terminate {
                    app: app_index,
                    user_id,
                });
                return ApiAnswer::Now(200, http_api::response::empty(), None);
            }
        };
        let conn = self.conn_ref(index);
        if !self.hub.send(ToHub::Query { conn, query }) {
            return busy();
        }
        ApiAnswer::Later
    }

    /// Publishes one HTTP API event to each of its channels: one frame per channel, encoded
    /// once for all its subscribers.
    fn trigger(&mut self, app: u32, event: &TriggerEvent) -> Result<(), MeshFull> {
        let exclude = event
            .socket_id
            .as_deref()
            .and_then(|s| self.parse_socket_id(s));
        let data = Value::String(event.data.clone());
        for channel in &event.channels {
            let text = protocol::channel_event(&event.name, channel, &data, None);
            self.stats.pusher_events += 1;
            self.publish_channel(app, channel, text_frame(&text), exclude)?;
        }
        Ok(())
    }

    /// Takes the hub's messages and acts on them.
    pub(super) fn drain_hub(&mut self) {
        let mut msgs = std::mem::take(&mut self.hub_inbox);
        self.hub
            .drain(self.limits.mesh_messages_per_turn_max as usize, &mut msgs);
        for msg in msgs.drain(..) {
            match msg {
                ToShard::PresenceJoined {
                    key,
                    topic,
                    outcome,
                } => self.presence_joined(key, topic, outcome),
                ToShard::SendFrame { key, frame } => {
                    if let Some(index) = self.live(key) {
                        self.deliver(index, &std::rc::Rc::new(frame), 1);
                    }
                }
                ToShard::Deliver {
                    topic,
                    frame,
                    exclude,
                } => {
                    let exclude = exclude.and_then(|k| self.live(k));
                    self.fanout_local(&topic, frame, exclude);
                }
                ToShard::HttpReply { key, status, body } => {
                    if let Some(index) = self.live(key) {
                        self.http_reply(index, status, &body);
                    }
                }
                ToShard::Terminate { topic } => self.terminate(&topic),
            }
        }
        self.hub_inbox = msgs;
    }

    fn presence_joined(&mut self, key: ConnKey, topic: Arc<str>, outcome: Result<String, String>) {
        let joined = outcome.is_ok();
        let live = self.live(key).filter(|&i| self.pusher_mut(i).is_some());
        let Some(index) = live else {
            if joined {
                // The connection left before its join landed: undo the join.
                let conn = ConnRef {
                    shard: self.id as u16,
                    key,
                };
                self.hub.send(ToHub::PresenceLeave { topic, conn });
            }
            return;
        };
        let Some((_, channel)) = split_topic(&topic) else {
            return;
        };
        let channel = channel.to_owned();
        let Some(pc) = self.pusher_mut(index) else {
            return;
        };
        let actions = pc.session.presence_join_result(&channel, outcome);
        self.pusher_perform(index, actions);
    }

    /// `terminate_connections`: closes this shard's connections of the user with 4009.
    fn terminate(&mut self, topic: &str) {
        let Some(id) = self.topics.lookup(topic) else {
            return;
        };
        let victims: Vec<u32> = self
            .topics
            .topic(id)
            .subscribers
            .iter()
            .copied()
            .filter(|&i| i != topic::TOMBSTONE)
            .collect();
        for index in victims {
            self.stats.pusher_terminated += 1;
            self.pusher_perform(index, session::refuse(ErrorCode::Unauthorized).to_vec());
        }
    }

    /// Sends this turn's subscription count changes to the hub.
    pub(super) fn flush_hub_counts(&mut self) {
        let from = self.id as u16;
        for (topic, count) in self.hub_counts.drain() {
            self.hub.send(ToHub::Count { topic, from, count });
        }
    }
}

fn busy() -> ApiAnswer {
    ApiAnswer::Now(
        503,
        http_api::error_body("a shard-to-shard queue is full; retry"),
        None,
    )
}
