//! One Pusher connection's state machine: subscriptions, sign-in, client-event rate, pings.
//! Never touches a socket, a clock or another connection: it returns [`Action`]s for the shard.
//!
//! # Call contract (what the shard does)
//!
//! 1. After the WebSocket handshake, [`crate::pusher::path::admit`] picks the app (on
//!    `Err(code)`, perform [`refuse`]`(code)`). Then [`Session::new`] and
//!    [`Session::handle_open`].
//! 2. Each complete text message goes to [`Session::handle_text`]. Binary messages are not part
//!    of the Pusher protocol: close with 1003 at the WebSocket layer.
//! 3. Arm a timer for [`Session::poll_timeout`] and call [`Session::handle_timeout`] when it
//!    fires (early calls are harmless). Re-read `poll_timeout` after every `handle_*` call.
//! 4. When the socket goes away for any reason (including after an [`Action::Close`]), call
//!    [`Session::handle_close`] once and perform the `Unsubscribe`s it returns.
//! 5. Perform actions in order; each variant documents its duty.

use std::hash::Hash;
use std::sync::Arc;

use serde_json::Value;

use crate::pusher::app::App;
use crate::pusher::auth;
use crate::pusher::channel::{ChannelKind, validate_channel_name};
use crate::pusher::presence::{self, PresenceChannel, PresenceMember};
use crate::pusher::protocol::{self, ClientMessage, ErrorCode, FRAME_OVERHEAD_BYTES};

/// Milliseconds to wait for any frame after the server's `pusher:ping`. Hit: close 4201.
/// 30 s is pusher-js's own `pongTimeout`, so both sides give up alike.
pub const PONG_TIMEOUT_MS: u64 = 30_000;

/// Milliseconds an app with `require_user_authentication` waits for `pusher:signin`. Hit:
/// `pusher:error` 4009 and close 4009. 30 s is Pusher's documented grace period.
pub const SIGNIN_TIMEOUT_MS: u64 = 30_000;

/// Channels one connection may be subscribed to (or joining). Hit: `pusher:subscription_error`
/// `LimitReached`. Pusher sets no such limit; 256 covers real apps (Echo apps use a handful) and
/// bounds per-connection memory at about 256 * (164 + 48) bytes.
pub const SUBSCRIPTIONS_MAX: usize = 256;

/// Entries of a sign-in's `watchlist` that are kept; the rest are ignored. Pusher's own limit
/// for a watchlist is 100 user ids.
pub const WATCHLIST_MAX: usize = 100;

/// The channel of server-to-user events: `#server-to-user-{user_id}` (Pusher user
/// authentication).
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// What the shard must do, in order, on behalf of this connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this text frame to this connection.
    Send(String),
    /// Register this connection on `channel` in the broker. It always directly follows the
    /// `Send` of its `subscription_succeeded` frame: perform the subscription first and send
    /// that frame only when it took; when the broker refuses (the app's channel limit), call
    /// [`Session::subscription_refused`] instead and perform what it returns. For cache kinds,
    /// send the channel's last event next, or [`protocol::cache_miss`] if there is none.
    Subscribe { channel: String, kind: ChannelKind },
    /// Remove this connection from `channel` in the broker. For presence kinds, also remove it
    /// from the channel's registry ([`presence_leave`] in one process; the server's hub does
    /// the same across shards) and broadcast the `member_removed` that returns.
    Unsubscribe { channel: String, kind: ChannelKind },
    /// A signed presence subscribe: join the member in the channel's registry and hand the
    /// outcome back, either in place with [`Session::handle_presence_join`], or later with
    /// [`Session::presence_join_result`] when the registry lives elsewhere (the server's hub).
    PresenceJoin {
        channel: String,
        member: PresenceMember,
    },
    /// Deliver `frame` to every subscriber of `channel` on every shard except this connection
    /// (`member_added`, `member_removed`).
    Broadcast { channel: String, frame: String },
    /// A client event: deliver `frame` to every subscriber of `channel` except this connection,
    /// and emit the `client_event` webhook if configured.
    ClientEvent {
        channel: String,
        event: String,
        frame: String,
        /// The event's data as JSON text, and the sender's presence user id: for the
        /// `client_event` webhook.
        data: String,
        user_id: Option<String>,
    },
    /// The connection signed in as `user_id`: index it for user-targeted sends and termination.
    SignedIn {
        user_id: String,
        /// The user ids whose online status this connection is told about (Pusher watchlist
        /// events), at most [`WATCHLIST_MAX`], normalised like presence ids.
        watchlist: Vec<String>,
    },
    /// Send a close frame with this code and reason and stop reading; then call
    /// [`Session::handle_close`] when the socket is done.
    Close { code: u16, reason: &'static str },
}

/// The per-connection Pusher state machine.
#[derive(Debug)]
pub struct Session {
    app: Arc<App>,
    socket_id: String,
    /// INVARIANT: at most [`SUBSCRIPTIONS_MAX`] entries, names unique.
    subscriptions: Vec<Subscription>,
    user_id: Option<String>,
    /// Client-event tokens in thousandths; capacity `client_event_rate_per_s * 1000`.
    tokens_milli: u64,
    tokens_updated_ms: u64,
    opened_ms: u64,
    last_seen_ms: u64,
    ping_sent_ms: Option<u64>,
    closed: bool,
}

#[derive(Debug)]
struct Subscription {
    channel: String,
    kind: ChannelKind,
    /// False while a presence join waits for its registry's answer.
    active: bool,
    /// The presence member's id, added to client events on presence channels.
    user_id: Option<String>,
    /// `#server-to-user-{id}`: the broker subscription was made at sign-in and is the
    /// connection's own, so unsubscribing from it only forgets it here.
    internal: bool,
}

impl Session {
    /// `socket_id` must be of the form `digits.digits` ([`auth::socket_id`] makes one).
    pub fn new(app: Arc<App>, socket_id: String) -> Session {
        debug_assert!(
            auth::is_valid_socket_id(&socket_id),
            "bad socket id {socket_id:?}"
        );
        let tokens_milli = bucket_capacity_milli(&app);
        Session {
            app,
            socket_id,
            subscriptions: Vec::new(),
            user_id: None,
            tokens_milli,
            tokens_updated_ms: 0,
            opened_ms: 0,
            last_seen_ms: 0,
            ping_sent_ms: None,
            closed: false,
        }
    }

    /// The connection is open: greet the client with its socket id.
    pub fn handle_open(&mut self, now_ms: u64) -> Vec<Action> {
        self.opened_ms = now_ms;
        self.last_seen_ms = now_ms;
        self.tokens_updated_ms = now_ms;
        vec![Action::Send(protocol::connection_established(
            &self.socket_id,
            self.app.activity_timeout_s,
        ))]
    }

    /// One complete text message from the client.
    pub fn handle_text(&mut self, text: &str, now_ms: u64) -> Vec<Action> {
        if self.closed {
            return Vec::new();
        }
        // Pusher protocol: any frame from the client shows it is alive, not only a pong.
        self.last_seen_ms = now_ms;
        self.ping_sent_ms = None;
        let frame_bytes_max = self.app.max_event_payload_bytes as usize + FRAME_OVERHEAD_BYTES;
        match protocol::parse_client_message(text, frame_bytes_max) {
            Err(e) => vec![Action::Send(protocol::error_message(&e.to_string(), None))],
            Ok(ClientMessage::Ping) => vec![Action::Send(protocol::pong())],
            Ok(ClientMessage::Pong) => Vec::new(),
            Ok(ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            }) => self.subscribe(channel, auth.as_deref(), channel_data),
            Ok(ClientMessage::Unsubscribe { channel }) => self.unsubscribe(&channel),
            Ok(ClientMessage::Signin { auth, user_data }) => self.signin(&auth, &user_data),
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            }) => self.client_event(event, channel, &data, now_ms),
        }
    }

    /// Completes a [`Action::PresenceJoin`] against the channel's member registry. `socket` is
    /// this connection's handle in the registry.
    pub fn handle_presence_join<S: Eq + Hash + Clone>(
        &mut self,
        registry: &mut PresenceChannel<S>,
        socket: S,
        channel: &str,
        member: PresenceMember,
    ) -> Vec<Action> {
        let Some(index) = self
            .subscriptions
            .iter()
            .position(|s| s.channel == channel && !s.active)
        else {
            // Unsubscribed (or closed) before the join ran: nothing to join.
            return Vec::new();
        };
        match registry.join(socket, member, self.app.max_presence_members as usize) {
            Ok(added) => {
                let subscription = &mut self.subscriptions[index];
                subscription.active = true;
                let mut actions = vec![
                    Action::Send(registry.subscription_succeeded(channel)),
                    Action::Subscribe {
                        channel: channel.to_owned(),
                        kind: subscription.kind,
                    },
                ];
                if let Some(added) = added {
                    let frame = added.to_frame(channel);
                    actions.push(Action::Broadcast {
                        channel: channel.to_owned(),
                        frame,
                    });
                }
                actions
            }
            Err(e) => {
                self.subscriptions.swap_remove(index);
                let (kind, status) = e.subscription_error();
                vec![Action::Send(protocol::subscription_error(
                    channel,
                    kind,
                    &e.to_string(),
                    status,
                ))]
            }
        }
    }

    /// Completes a [`Action::PresenceJoin`] that another thread performed against the
    /// channel's registry: `outcome` is the `subscription_succeeded` frame, or the
    /// `subscription_error` frame. When the subscription is no longer pending (unsubscribed or
    /// closed meanwhile) a successful join must be undone: the answer is then an
    /// [`Action::Unsubscribe`] of the presence channel.
    pub fn presence_join_result(
        &mut self,
        channel: &str,
        outcome: Result<String, String>,
    ) -> Vec<Action> {
        let pending = self
            .subscriptions
            .iter()
            .position(|s| s.channel == channel && !s.active);
        match (pending, outcome) {
            (Some(index), Ok(frame)) => {
                let subscription = &mut self.subscriptions[index];
                subscription.active = true;
                vec![
                    Action::Send(frame),
                    Action::Subscribe {
                        channel: channel.to_owned(),
                        kind: subscription.kind,
                    },
                ]
            }
            (Some(index), Err(frame)) => {
                self.subscriptions.swap_remove(index);
                vec![Action::Send(frame)]
            }
            (None, Ok(_)) => vec![Action::Unsubscribe {
                channel: channel.to_owned(),
                kind: ChannelKind::from_name(channel),
            }],
            (None, Err(_)) => Vec::new(),
        }
    }

    /// The broker refused a subscription this session asked for (an app's channel limit): it
    /// is forgotten, and the client gets a `subscription_error`. A presence subscription is
    /// also undone in the hub (the returned `Unsubscribe`).
    pub fn subscription_refused(&mut self, channel: &str, why: &str) -> Vec<Action> {
        let Some(index) = self.subscriptions.iter().position(|s| s.channel == channel) else {
            return Vec::new();
        };
        let subscription = self.subscriptions.swap_remove(index);
        let mut actions = vec![Action::Send(protocol::subscription_error(
            channel,
            "LimitReached",
            why,
            4100,
        ))];
        if subscription.kind.is_presence() {
            actions.push(Action::Unsubscribe {
                channel: subscription.channel,
                kind: subscription.kind,
            });
        }
        actions
    }

    /// Timers: the server ping after `activity_timeout` of silence, the pong deadline, and the
    /// sign-in deadline.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Vec<Action> {
        if self.closed {
            return Vec::new();
        }
        if self.signin_deadline_ms().is_some_and(|t| now_ms >= t) {
            let mut actions = vec![Action::Send(protocol::error(ErrorCode::Unauthorized))];
            actions.push(self.close(ErrorCode::Unauthorized));
            return actions;
        }
        match self.ping_sent_ms {
            Some(sent) if now_ms >= sent.saturating_add(PONG_TIMEOUT_MS) => {
                vec![self.close(ErrorCode::PongTimeout)]
            }
            None if now_ms >= self.activity_deadline_ms() => {
                self.ping_sent_ms = Some(now_ms);
                vec![Action::Send(protocol::ping())]
            }
            _ => Vec::new(),
        }
    }

    /// The next time `handle_timeout` has work, or `None` once closed.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.closed {
            return None;
        }
        let ping_or_pong = match self.ping_sent_ms {
            Some(sent) => sent.saturating_add(PONG_TIMEOUT_MS),
            None => self.activity_deadline_ms(),
        };
        Some(
            self.signin_deadline_ms()
                .map_or(ping_or_pong, |t| t.min(ping_or_pong)),
        )
    }

    /// Server shutdown: tell the client to reconnect at once (4200), elsewhere.
    pub fn handle_shutdown(&mut self) -> Vec<Action> {
        if self.closed {
            return Vec::new();
        }
        vec![
            Action::Send(protocol::error(ErrorCode::GenericReconnect)),
            self.close(ErrorCode::GenericReconnect),
        ]
    }

    /// The socket is gone: every active subscription must be undone. Idempotent.
    pub fn handle_close(&mut self) -> Vec<Action> {
        self.closed = true;
        self.subscriptions
            .drain(..)
            .filter(|s| s.active && !s.internal)
            .map(|s| Action::Unsubscribe {
                channel: s.channel,
                kind: s.kind,
            })
            .collect()
    }

    pub fn socket_id(&self) -> &str {
        &self.socket_id
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// The signed-in user, after a successful `pusher:signin`.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// Whether the connection is subscribed to `channel` (a pending presence join is not).
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.subscriptions
            .iter()
            .any(|s| s.channel == channel && s.active)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn subscribe(
        &mut self,
        channel: String,
        auth: Option<&str>,
        channel_data: Option<String>,
    ) -> Vec<Action> {
        let refuse = |kind: &str, error: &str, status: u16| {
            vec![Action::Send(protocol::subscription_error(
                &channel, kind, error, status,
            ))]
        };
        if let Some(user) = channel.strip_prefix(SERVER_TO_USER_PREFIX) {
            // pusher-js subscribes to its user's channel after `pusher:signin_success`.
            if self.user_id.as_deref() != Some(user) {
                return refuse("AuthError", "sign in as this user first", 401);
            }
            if self.subscriptions.iter().any(|s| s.channel == channel) {
                return Vec::new();
            }
            self.subscriptions.push(Subscription {
                channel: channel.clone(),
                kind: ChannelKind::Public,
                active: true,
                user_id: None,
                internal: true,
            });
            return vec![Action::Send(protocol::subscription_succeeded(&channel))];
        }
        let kind = match validate_channel_name(&channel, self.app.max_channel_name_length as usize)
        {
            Ok(kind) => kind,
            Err(e) => return refuse("InvalidChannel", &e.to_string(), 400),
        };
        if self.subscriptions.iter().any(|s| s.channel == channel) {
            // pusher-js never repeats a subscribe; answering twice would confuse it.
            return Vec::new();
        }
        if self.subscriptions.len() >= SUBSCRIPTIONS_MAX {
            let error = format!("a connection may subscribe to {SUBSCRIPTIONS_MAX} channels");
            return refuse("LimitReached", &error, 4100);
        }
        if kind.requires_auth() {
            let Some(auth) = auth else {
                return refuse("AuthError", "auth is required for this channel", 401);
            };
            let signed_data = channel_data.as_deref().filter(|_| kind.is_presence());
            if let Err(e) =
                auth::verify_channel_auth(&self.app, &self.socket_id, &channel, signed_data, auth)
            {
                return refuse("AuthError", &e.to_string(), 401);
            }
        }
        if kind.is_presence() {
            let Some(channel_data) = channel_data else {
                return refuse("InvalidChannelData", "channel_data is required", 400);
            };
            let user_info_bytes_max = self.app.max_presence_user_info_bytes as usize;
            let member = match presence::parse_channel_data(&channel_data, user_info_bytes_max) {
                Ok(member) => member,
                Err(e) => {
                    let (error_kind, status) = e.subscription_error();
                    return refuse(error_kind, &e.to_string(), status);
                }
            };
            self.subscriptions.push(Subscription {
                channel: channel.clone(),
                kind,
                active: false,
                user_id: Some(member.user_id.clone()),
                internal: false,
            });
            return vec![Action::PresenceJoin { channel, member }];
        }
        self.subscriptions.push(Subscription {
            channel: channel.clone(),
            kind,
            active: true,
            user_id: None,
            internal: false,
        });
        vec![
            Action::Send(protocol::subscription_succeeded(&channel)),
            Action::Subscribe { channel, kind },
        ]
    }

    fn unsubscribe(&mut self, channel: &str) -> Vec<Action> {
        let Some(index) = self.subscriptions.iter().position(|s| s.channel == channel) else {
            return Vec::new();
        };
        let subscription = self.subscriptions.swap_remove(index);
        if !subscription.active || subscription.internal {
            // A presence join not yet performed: dropping it is enough.
            return Vec::new();
        }
        vec![Action::Unsubscribe {
            channel: subscription.channel,
            kind: subscription.kind,
        }]
    }

    fn signin(&mut self, auth: &str, user_data: &str) -> Vec<Action> {
        if !self.app.enable_user_authentication {
            return vec![Action::Send(protocol::error_message(
                "User authentication is disabled for this app",
                None,
            ))];
        }
        if self.user_id.is_some() {
            return vec![Action::Send(protocol::error_message(
                "Already signed in",
                None,
            ))];
        }
        let user_id = auth::verify_user_auth(&self.app, &self.socket_id, user_data, auth)
            .ok()
            .and_then(|()| user_id_of(user_data));
        let Some(user_id) = user_id else {
            let mut actions = vec![Action::Send(protocol::error(ErrorCode::Unauthorized))];
            if self.app.require_user_authentication {
                actions.push(self.close(ErrorCode::Unauthorized));
            }
            return actions;
        };
        self.user_id = Some(user_id.clone());
        vec![
            Action::Send(protocol::signin_success(user_data)),
            Action::SignedIn {
                user_id,
                watchlist: watchlist_of(user_data),
            },
        ]
    }

    fn client_event(
        &mut self,
        event: String,
        channel: String,
        data: &Value,
        now_ms: u64,
    ) -> Vec<Action> {
        let refuse = |message: &str| vec![Action::Send(protocol::error_message(message, None))];
        if !self.app.enable_client_events {
            return refuse("Client event rejected - client events are disabled for this app");
        }
        // Pusher protocol: client events only on private and presence channels.
        if !ChannelKind::from_name(&channel).allows_client_events() {
            return refuse(
                "Client event rejected - only supported on private and presence channels",
            );
        }
        let Some(subscription) = self
            .subscriptions
            .iter()
            .find(|s| s.channel == channel && s.active)
        else {
            return refuse("Client event rejected - not subscribed to the channel");
        };
        let user_id = subscription.user_id.clone();
        let data_text = match data {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        if data_text.len() > self.app.max_event_payload_bytes as usize {
            return refuse("Client event rejected - payload too large");
        }
        if !self.take_token(now_ms) {
            return vec![Action::Send(protocol::error(
                ErrorCode::ClientEventRateLimit,
            ))];
        }
        let frame = protocol::channel_event(&event, &channel, data, user_id.as_deref());
        vec![Action::ClientEvent {
            channel,
            event,
            frame,
            data: data_text,
            user_id,
        }]
    }

    /// Token bucket: refills `client_event_rate_per_s` tokens per second, holds at most as many.
    fn take_token(&mut self, now_ms: u64) -> bool {
        let elapsed_ms = now_ms.saturating_sub(self.tokens_updated_ms);
        self.tokens_updated_ms = self.tokens_updated_ms.max(now_ms);
        let refill = elapsed_ms.saturating_mul(u64::from(self.app.client_event_rate_per_s));
        self.tokens_milli = self
            .tokens_milli
            .saturating_add(refill)
            .min(bucket_capacity_milli(&self.app));
        if self.tokens_milli < 1000 {
            return false;
        }
        self.tokens_milli -= 1000;
        true
    }

    fn close(&mut self, code: ErrorCode) -> Action {
        self.closed = true;
        Action::Close {
            code: code.code(),
            reason: code.message(),
        }
    }

    fn activity_deadline_ms(&self) -> u64 {
        self.last_seen_ms
            .saturating_add(u64::from(self.app.activity_timeout_s) * 1000)
    }

    fn signin_deadline_ms(&self) -> Option<u64> {
        let waiting = self.app.require_user_authentication && self.user_id.is_none();
        waiting.then(|| self.opened_ms.saturating_add(SIGNIN_TIMEOUT_MS))
    }
}

/// What to do with a connection that [`crate::pusher::path::admit`] refused: Pusher protocol,
/// the error event first so the client can read the reason, then the close with the same code.
pub fn refuse(code: ErrorCode) -> [Action; 2] {
    [
        Action::Send(protocol::error(code)),
        Action::Close {
            code: code.code(),
            reason: code.message(),
        },
    ]
}

/// Undoes a presence subscription in the channel's registry; returns the `member_removed`
/// broadcast when this was the user's last socket there.
pub fn presence_leave<S: Eq + Hash + Clone>(
    registry: &mut PresenceChannel<S>,
    socket: &S,
    channel: &str,
) -> Option<Action> {
    let removed = registry.leave(socket)?;
    Some(Action::Broadcast {
        channel: channel.to_owned(),
        frame: removed.to_frame(channel),
    })
}

/// Pusher protocol (user authentication): `user_data` is a JSON object whose `id` is a
/// non-empty string; an integer id is accepted and normalized like a presence `user_id`.
fn user_id_of(user_data: &str) -> Option<String> {
    let Ok(Value::Object(data)) = serde_json::from_str::<Value>(user_data) else {
        return None;
    };
    presence::normalize_user_id(data.get("id")?)
}

/// The `watchlist` of user data: valid ids, deduplicated, at most [`WATCHLIST_MAX`].
fn watchlist_of(user_data: &str) -> Vec<String> {
    let Ok(Value::Object(data)) = serde_json::from_str::<Value>(user_data) else {
        return Vec::new();
    };
    let Some(Value::Array(ids)) = data.get("watchlist") else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for id in ids.iter().filter_map(presence::normalize_user_id) {
        if out.len() == WATCHLIST_MAX {
            break;
        }
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

fn bucket_capacity_milli(app: &App) -> u64 {
    u64::from(app.client_event_rate_per_s) * 1000
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SOCKET: &str = "1.2";

    fn session_with(app: App) -> Session {
        let mut session = Session::new(Arc::new(app), SOCKET.to_owned());
        session.handle_open(0);
        session
    }

    fn session() -> Session {
        session_with(App::default_dev())
    }

    fn sign(channel: &str, channel_data: Option<&str>) -> String {
        auth::channel_auth("app-key", "app-secret", SOCKET, channel, channel_data)
    }

    fn subscribe_frame(channel: &str, auth: Option<&str>, channel_data: Option<&str>) -> String {
        json!({"event": "pusher:subscribe",
               "data": {"channel": channel, "auth": auth, "channel_data": channel_data}})
        .to_string()
    }

    /// The `event` of a single `Send`, and its `data` parsed (a string data is decoded too).
    fn only_send(actions: &[Action]) -> (String, Value) {
        let [Action::Send(frame)] = actions else {
            panic!("expected one Send, got {actions:?}");
        };
        let frame: Value = serde_json::from_str(frame).unwrap();
        let data = match &frame["data"] {
            Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
            other => other.clone(),
        };
        (frame["event"].as_str().unwrap().to_owned(), data)
    }

    #[test]
    fn open_greets_with_the_socket_id_and_activity_timeout() {
        let mut session = Session::new(Arc::new(App::default_dev()), "123.456".into());
        assert_eq!(
            session.handle_open(0),
            vec![Action::Send(
                r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#
                    .into()
            )]
        );
    }

    #[test]
    fn ping_is_answered_with_pong_and_pong_with_nothing() {
        let mut session = session();
        assert_eq!(
            session.handle_text(r#"{"event":"pusher:ping","data":{}}"#, 1),
            vec![Action::Send(protocol::pong())]
        );
        assert_eq!(
            session.handle_text(r#"{"event":"pusher:pong","data":{}}"#, 2),
            vec![]
        );
    }

    #[test]
    fn malformed_frames_of_every_shape_get_a_pusher_error_and_keep_the_connection() {
        let huge = format!(
            r#"{{"event":"client-x","channel":"private-a","data":"{}"}}"#,
            "a".repeat(20_000)
        );
        let deep = "[".repeat(5_000);
        let cases: Vec<&str> = vec![
            "",
            " ",
            "{",
            "}",
            "[",
            "nul",
            "null",
            "true",
            "1",
            "-0.5e999",
            "\"str\"",
            "[]",
            "{}",
            "{\"event\":1}",
            "{\"event\":null}",
            "{\"event\":[]}",
            "{\"event\":\"\"}",
            "{\"event\":\"pusher:subscribe\"}",
            "{\"event\":\"pusher:subscribe\",\"data\":1}",
            "{\"event\":\"pusher:subscribe\",\"data\":{\"channel\":null}}",
            "{\"event\":\"pusher:subscribe\",\"data\":{\"channel\":{}}}",
            "{\"event\":\"pusher:unsubscribe\",\"data\":\"\"}",
            "{\"event\":\"pusher:signin\",\"data\":{\"auth\":1,\"user_data\":\"{}\"}}",
            "{\"event\":\"client-x\"}",
            "{\"event\":\"client-x\",\"channel\":1}",
            "{\"event\":\"pusher:nope\"}",
            "{\"event\":\"server-event\",\"channel\":\"a\"}",
            "{\"event\":\"pusher:ping\"}{",
            "{\"event\":\"pusher:ping\",}",
            "{\"event\":\"pusher:ping\",\"event\":1}",
            "\u{feff}{}",
            "{\"\u{0}\":1}",
            "{\"event\":\"\\ud800\"}",
            &huge,
            &deep,
        ];
        for text in cases {
            let mut session = session();
            let (event, data) = only_send(&session.handle_text(text, 1));
            assert_eq!(event, "pusher:error", "{text:.80}");
            assert!(data["message"].is_string(), "{text:.80}");
            assert!(!session.is_closed());
        }
    }

    #[test]
    fn subscribe_succeeds_joins_or_names_the_broken_rule() {
        let presence_data = r#"{"user_id":7,"user_info":{"name":"a"}}"#;
        // (channel, auth, channel_data, expected: event or subscription_error type)
        let other_socket = auth::channel_auth("app-key", "app-secret", "9.9", "private-a", None);
        let bad_data = "{\"no_user\":1}";
        let cases: Vec<(&str, Option<String>, Option<&str>, &str)> = vec![
            ("news", None, None, "subscribe"),
            ("cache-news", None, None, "subscribe"),
            (
                "private-a",
                Some(sign("private-a", None)),
                None,
                "subscribe",
            ),
            (
                "private-encrypted-a",
                Some(sign("private-encrypted-a", None)),
                None,
                "subscribe",
            ),
            (
                "private-cache-a",
                Some(sign("private-cache-a", None)),
                None,
                "subscribe",
            ),
            ("private-a", None, None, "AuthError"),
            ("private-a", Some("app-key:00".into()), None, "AuthError"),
            ("private-a", Some(other_socket), None, "AuthError"),
            (
                "private-a",
                Some(sign("private-b", None)),
                None,
                "AuthError",
            ),
            (
                "private-a",
                Some(sign("private-a", None).replace("app-key", "k")),
                None,
                "AuthError",
            ),
            (
                "presence-a",
                Some(sign("presence-a", Some(presence_data))),
                Some(presence_data),
                "join",
            ),
            (
                "presence-cache-a",
                Some(sign("presence-cache-a", Some(presence_data))),
                Some(presence_data),
                "join",
            ),
            (
                "presence-a",
                Some(sign("presence-a", None)),
                None,
                "InvalidChannelData",
            ),
            (
                "presence-a",
                Some(sign("presence-a", Some(presence_data))),
                None,
                "AuthError",
            ),
            (
                "presence-a",
                Some(sign("presence-a", Some(bad_data))),
                Some(bad_data),
                "InvalidChannelData",
            ),
            (
                "presence-a",
                Some(sign("presence-a", Some("x"))),
                Some("x"),
                "InvalidChannelData",
            ),
            ("bad channel", None, None, "InvalidChannel"),
            ("", None, None, "InvalidChannel"),
            (
                "private-",
                Some(sign("private-", None)),
                None,
                "InvalidChannel",
            ),
        ];
        for (channel, auth, data, want) in cases {
            let mut session = session();
            let actions = session.handle_text(&subscribe_frame(channel, auth.as_deref(), data), 1);
            let got = match actions.as_slice() {
                [Action::Send(ok), Action::Subscribe { channel: c, kind }] => {
                    assert_eq!(ok, &protocol::subscription_succeeded(channel));
                    assert_eq!(
                        (c.as_str(), *kind),
                        (channel, ChannelKind::from_name(channel))
                    );
                    assert!(session.is_subscribed(channel));
                    "subscribe".to_owned()
                }
                [Action::PresenceJoin { channel: c, member }] => {
                    assert_eq!((c.as_str(), member.user_id.as_str()), (channel, "7"));
                    assert!(!session.is_subscribed(channel), "pending until joined");
                    "join".to_owned()
                }
                _ => {
                    let (event, data) = only_send(&actions);
                    assert_eq!(event, "pusher:subscription_error");
                    assert_eq!(session.subscription_count(), 0);
                    data["type"].as_str().unwrap().to_owned()
                }
            };
            assert_eq!(got, want, "{channel}");
        }
    }

    #[test]
    fn repeated_subscribe_is_ignored() {
        let mut session = session();
        assert_eq!(
            session
                .handle_text(&subscribe_frame("news", None, None), 1)
                .len(),
            2
        );
        assert_eq!(
            session.handle_text(&subscribe_frame("news", None, None), 2),
            vec![]
        );
        assert_eq!(session.subscription_count(), 1);
    }

    #[test]
    fn subscriptions_past_the_limit_get_limit_reached() {
        let mut session = session();
        for i in 0..SUBSCRIPTIONS_MAX {
            assert_eq!(
                session
                    .handle_text(&subscribe_frame(&format!("c{i}"), None, None), 1)
                    .len(),
                2
            );
        }
        let (event, data) =
            only_send(&session.handle_text(&subscribe_frame("one-more", None, None), 1));
        assert_eq!(
            (event.as_str(), &data["type"]),
            ("pusher:subscription_error", &json!("LimitReached"))
        );
    }

    #[test]
    fn channel_name_length_limit_comes_from_the_app() {
        let mut app = App::default_dev();
        app.max_channel_name_length = 3;
        let mut session = session_with(app);
        assert_eq!(
            session
                .handle_text(&subscribe_frame("abc", None, None), 1)
                .len(),
            2
        );
        let (_, data) = only_send(&session.handle_text(&subscribe_frame("abcd", None, None), 1));
        assert_eq!(data["type"], "InvalidChannel");
    }

    fn join(
        session: &mut Session,
        registry: &mut PresenceChannel<u32>,
        conn: u32,
        user: &str,
    ) -> Vec<Action> {
        let data = json!({"user_id": user, "user_info": {"n": user}}).to_string();
        let frame = subscribe_frame(
            "presence-r",
            Some(&sign("presence-r", Some(&data))),
            Some(&data),
        );
        let actions = session.handle_text(&frame, 1);
        let [Action::PresenceJoin { channel, member }] = actions.as_slice() else {
            panic!("{actions:?}");
        };
        session.handle_presence_join(registry, conn, channel, member.clone())
    }

    #[test]
    fn presence_join_announces_only_a_users_first_socket() {
        let mut registry = PresenceChannel::new();
        let (mut a1, mut a2, mut b) = (session(), session(), session());
        let actions = join(&mut a1, &mut registry, 1, "a");
        assert_eq!(actions.len(), 3);
        assert_eq!(
            actions[0],
            Action::Send(registry.subscription_succeeded("presence-r"))
        );
        assert_eq!(
            actions[1],
            Action::Subscribe {
                channel: "presence-r".into(),
                kind: ChannelKind::Presence
            }
        );
        assert_eq!(
            actions[2],
            Action::Broadcast {
                channel: "presence-r".into(),
                frame: protocol::member_added("presence-r", "a", &json!({"n": "a"}))
            }
        );
        assert!(a1.is_subscribed("presence-r"));
        // A second tab of the same user: succeeded and subscribed, but no member_added.
        let actions = join(&mut a2, &mut registry, 2, "a");
        assert!(matches!(
            actions.as_slice(),
            [Action::Send(_), Action::Subscribe { .. }]
        ));
        let actions = join(&mut b, &mut registry, 3, "b");
        let (_, data) = only_send(&actions[..1]);
        assert_eq!(
            data,
            json!({"presence": {"ids": ["a", "b"], "hash": {"a": {"n": "a"}, "b": {"n": "b"}}, "count": 2}})
        );
        // Leaving: only the user's last socket produces member_removed.
        assert_eq!(
            a1.handle_text(
                r#"{"event":"pusher:unsubscribe","data":{"channel":"presence-r"}}"#,
                2
            ),
            vec![Action::Unsubscribe {
                channel: "presence-r".into(),
                kind: ChannelKind::Presence
            }]
        );
        assert_eq!(presence_leave(&mut registry, &1, "presence-r"), None);
        assert_eq!(a2.handle_close().len(), 1);
        assert_eq!(
            presence_leave(&mut registry, &2, "presence-r"),
            Some(Action::Broadcast {
                channel: "presence-r".into(),
                frame: protocol::member_removed("presence-r", "a")
            })
        );
        assert_eq!(registry.member_count(), 1);
    }

    #[test]
    fn presence_join_past_max_members_is_a_subscription_error() {
        let mut app = App::default_dev();
        app.max_presence_members = 1;
        let app = Arc::new(app);
        let mut registry = PresenceChannel::new();
        let mut first = Session::new(Arc::clone(&app), SOCKET.into());
        let mut second = Session::new(app, SOCKET.into());
        assert_eq!(join(&mut first, &mut registry, 1, "a").len(), 3);
        let (event, data) = only_send(&join(&mut second, &mut registry, 2, "b"));
        assert_eq!(
            (event.as_str(), &data["type"]),
            ("pusher:subscription_error", &json!("LimitReached"))
        );
        assert_eq!(second.subscription_count(), 0);
        assert_eq!(second.handle_close(), vec![]);
    }

    #[test]
    fn presence_user_info_over_the_limit_is_refused() {
        let mut app = App::default_dev();
        app.max_presence_user_info_bytes = 8;
        let mut session = session_with(app);
        let data = r#"{"user_id":"u","user_info":{"name":"long name"}}"#;
        let frame = subscribe_frame(
            "presence-r",
            Some(&sign("presence-r", Some(data))),
            Some(data),
        );
        let (_, body) = only_send(&session.handle_text(&frame, 1));
        assert_eq!(body["type"], "LimitReached");
    }

    #[test]
    fn unsubscribe_before_the_join_runs_makes_the_join_a_no_op() {
        let mut registry = PresenceChannel::<u32>::new();
        let mut session = session();
        let data = r#"{"user_id":"u"}"#;
        let frame = subscribe_frame(
            "presence-r",
            Some(&sign("presence-r", Some(data))),
            Some(data),
        );
        let actions = session.handle_text(&frame, 1);
        let [Action::PresenceJoin { member, .. }] = actions.as_slice() else {
            panic!("{actions:?}");
        };
        let member = member.clone();
        let unsub = r#"{"event":"pusher:unsubscribe","data":{"channel":"presence-r"}}"#;
        assert_eq!(session.handle_text(unsub, 2), vec![]);
        assert_eq!(
            session.handle_presence_join(&mut registry, 1, "presence-r", member),
            vec![]
        );
        assert!(registry.is_empty());
    }

    #[test]
    fn unsubscribe_from_an_unknown_channel_does_nothing() {
        let mut session = session();
        let unsub = r#"{"event":"pusher:unsubscribe","data":{"channel":"news"}}"#;
        assert_eq!(session.handle_text(unsub, 1), vec![]);
    }

    fn client_event(channel: &str, data: Value) -> String {
        json!({"event": "client-typing", "channel": channel, "data": data}).to_string()
    }

    #[test]
    fn client_event_on_a_subscribed_private_channel_is_relayed() {
        let mut session = session();
        session.handle_text(
            &subscribe_frame("private-a", Some(&sign("private-a", None)), None),
            1,
        );
        assert_eq!(
            session.handle_text(&client_event("private-a", json!({"x": 1})), 2),
            vec![Action::ClientEvent {
                channel: "private-a".into(),
                event: "client-typing".into(),
                frame: r#"{"event":"client-typing","channel":"private-a","data":{"x":1}}"#.into(),
                data: r#"{"x":1}"#.into(),
                user_id: None,
            }]
        );
    }

    #[test]
    fn client_event_on_a_presence_channel_carries_the_user_id() {
        let mut registry = PresenceChannel::new();
        let mut session = session();
        join(&mut session, &mut registry, 1, "u1");
        let actions = session.handle_text(&client_event("presence-r", json!("hi")), 2);
        let [Action::ClientEvent { frame, .. }] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(
            frame,
            r#"{"event":"client-typing","channel":"presence-r","data":"hi","user_id":"u1"}"#
        );
    }

    #[test]
    fn client_events_are_refused_where_the_protocol_forbids_them() {
        let mut disabled = App::default_dev();
        disabled.enable_client_events = false;
        let mut small = App::default_dev();
        small.max_event_payload_bytes = 10;
        // (app, subscribe to, send on, data)
        let cases: Vec<(App, &str, &str, Value)> = vec![
            (disabled, "private-a", "private-a", json!(1)),
            (App::default_dev(), "news", "news", json!(1)),
            (App::default_dev(), "cache-news", "cache-news", json!(1)),
            (
                App::default_dev(),
                "private-encrypted-a",
                "private-encrypted-a",
                json!(1),
            ),
            (App::default_dev(), "private-a", "private-b", json!(1)),
            (
                small,
                "private-a",
                "private-a",
                json!("more than ten bytes"),
            ),
        ];
        for (app, subscribed, channel, data) in cases {
            let mut session = session_with(app);
            let actions = session.handle_text(
                &subscribe_frame(subscribed, Some(&sign(subscribed, None)), None),
                1,
            );
            assert_eq!(actions.len(), 2, "{subscribed}");
            let (event, body) = only_send(&session.handle_text(&client_event(channel, data), 2));
            assert_eq!(event, "pusher:error", "{channel}");
            assert_eq!(body["code"], Value::Null, "{channel}");
            assert!(!session.is_closed());
        }
    }

    #[test]
    fn client_events_over_the_rate_get_4301_and_the_bucket_refills() {
        let mut session = session();
        session.handle_text(
            &subscribe_frame("private-a", Some(&sign("private-a", None)), None),
            0,
        );
        let send = |session: &mut Session, now_ms| {
            session.handle_text(&client_event("private-a", json!(1)), now_ms)
        };
        for _ in 0..10 {
            assert!(matches!(
                send(&mut session, 0).as_slice(),
                [Action::ClientEvent { .. }]
            ));
        }
        let (event, body) = only_send(&send(&mut session, 0));
        assert_eq!(
            (event.as_str(), &body["code"]),
            ("pusher:error", &json!(4301))
        );
        assert!(!session.is_closed());
        // 10 per second: one token every 100 ms.
        let (event, _) = only_send(&send(&mut session, 99));
        assert_eq!(event, "pusher:error");
        assert!(matches!(
            send(&mut session, 200).as_slice(),
            [Action::ClientEvent { .. }]
        ));
        // A long pause refills to the burst size, not beyond.
        for _ in 0..10 {
            assert!(matches!(
                send(&mut session, 60_000).as_slice(),
                [Action::ClientEvent { .. }]
            ));
        }
        assert_eq!(only_send(&send(&mut session, 60_000)).0, "pusher:error");
    }

    fn signin_frame(user_data: &str, auth: &str) -> String {
        json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})
            .to_string()
    }

    #[test]
    fn signin_with_a_valid_signature_succeeds() {
        let mut session = session();
        let user_data = r#"{"id":"42","name":"x"}"#;
        let auth = auth::user_auth("app-key", "app-secret", SOCKET, user_data);
        assert_eq!(
            session.handle_text(&signin_frame(user_data, &auth), 1),
            vec![
                Action::Send(protocol::signin_success(user_data)),
                Action::SignedIn {
                    user_id: "42".into(),
                    watchlist: Vec::new(),
                }
            ]
        );
        assert_eq!(session.user_id(), Some("42"));
        let (event, _) = only_send(&session.handle_text(&signin_frame(user_data, &auth), 2));
        assert_eq!(event, "pusher:error");
    }

    #[test]
    fn signin_failures_are_4009_errors() {
        let good = |data: &str| auth::user_auth("app-key", "app-secret", SOCKET, data);
        let cases: Vec<(&str, String)> = vec![
            (r#"{"id":"42"}"#, good(r#"{"id":"43"}"#)),
            (r#"{"id":"42"}"#, "app-key:nothex".into()),
            (r#"{"name":"no id"}"#, good(r#"{"name":"no id"}"#)),
            (r#"{"id":""}"#, good(r#"{"id":""}"#)),
            ("not json", good("not json")),
        ];
        for (user_data, auth) in cases {
            let mut session = session();
            let (event, body) = only_send(&session.handle_text(&signin_frame(user_data, &auth), 1));
            assert_eq!(
                (event.as_str(), &body["code"]),
                ("pusher:error", &json!(4009)),
                "{user_data}"
            );
            assert_eq!(session.user_id(), None);
            assert!(!session.is_closed());
        }
    }

    #[test]
    fn signin_failure_closes_when_the_app_requires_sign_in() {
        let mut app = App::default_dev();
        app.require_user_authentication = true;
        let mut session = session_with(app);
        let actions = session.handle_text(&signin_frame(r#"{"id":"1"}"#, "app-key:00"), 1);
        assert_eq!(
            actions[1],
            Action::Close {
                code: 4009,
                reason: "Connection is unauthorized"
            }
        );
        assert!(session.is_closed());
    }

    #[test]
    fn signin_is_refused_when_the_app_disables_it() {
        let mut app = App::default_dev();
        app.enable_user_authentication = false;
        let mut session = session_with(app);
        let data = r#"{"id":"1"}"#;
        let auth = auth::user_auth("app-key", "app-secret", SOCKET, data);
        assert_eq!(
            only_send(&session.handle_text(&signin_frame(data, &auth), 1)).0,
            "pusher:error"
        );
        assert_eq!(session.user_id(), None);
    }

    #[test]
    fn silence_brings_a_ping_then_a_4201_close() {
        let mut session = session();
        assert_eq!(session.poll_timeout(), Some(120_000));
        assert_eq!(session.handle_timeout(119_999), vec![]);
        assert_eq!(
            session.handle_timeout(120_000),
            vec![Action::Send(protocol::ping())]
        );
        assert_eq!(session.poll_timeout(), Some(150_000));
        assert_eq!(session.handle_timeout(149_999), vec![]);
        assert_eq!(
            session.handle_timeout(150_000),
            vec![Action::Close {
                code: 4201,
                reason: "Pong reply not received"
            }]
        );
        assert_eq!(session.poll_timeout(), None);
        assert_eq!(
            session.handle_text(r#"{"event":"pusher:ping"}"#, 150_001),
            vec![]
        );
    }

    #[test]
    fn any_frame_after_a_ping_counts_as_the_pong() {
        let mut session = session();
        session.handle_timeout(120_000);
        session.handle_text("garbage", 130_000);
        assert_eq!(session.poll_timeout(), Some(250_000));
        assert_eq!(session.handle_timeout(150_000), vec![]);
    }

    #[test]
    fn activity_timeout_comes_from_the_app() {
        let mut app = App::default_dev();
        app.activity_timeout_s = 30;
        let mut session = Session::new(Arc::new(app), SOCKET.into());
        let (_, data) = only_send(&session.handle_open(1_000));
        assert_eq!(data["activity_timeout"], 30);
        assert_eq!(session.poll_timeout(), Some(31_000));
    }

    #[test]
    fn required_sign_in_closes_4009_after_its_timeout() {
        let mut app = App::default_dev();
        app.require_user_authentication = true;
        let mut session = session_with(app.clone());
        assert_eq!(session.poll_timeout(), Some(SIGNIN_TIMEOUT_MS));
        let actions = session.handle_timeout(SIGNIN_TIMEOUT_MS);
        assert_eq!(
            actions[0],
            Action::Send(protocol::error(ErrorCode::Unauthorized))
        );
        assert_eq!(
            actions[1],
            Action::Close {
                code: 4009,
                reason: "Connection is unauthorized"
            }
        );

        let mut signed = session_with(app);
        let data = r#"{"id":"1"}"#;
        let auth = auth::user_auth("app-key", "app-secret", SOCKET, data);
        signed.handle_text(&signin_frame(data, &auth), 1);
        assert_eq!(signed.poll_timeout(), Some(120_001));
        assert_eq!(signed.handle_timeout(SIGNIN_TIMEOUT_MS), vec![]);
    }

    #[test]
    fn close_undoes_active_subscriptions_once() {
        let mut session = session();
        session.handle_text(&subscribe_frame("news", None, None), 1);
        session.handle_text(
            &subscribe_frame("private-a", Some(&sign("private-a", None)), None),
            1,
        );
        let data = r#"{"user_id":"u"}"#;
        session.handle_text(
            &subscribe_frame(
                "presence-p",
                Some(&sign("presence-p", Some(data))),
                Some(data),
            ),
            1,
        );
        let mut actions = session.handle_close();
        actions.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(
            actions,
            vec![
                Action::Unsubscribe {
                    channel: "news".into(),
                    kind: ChannelKind::Public
                },
                Action::Unsubscribe {
                    channel: "private-a".into(),
                    kind: ChannelKind::Private
                },
            ]
        );
        assert_eq!(session.handle_close(), vec![]);
        assert_eq!(
            session.handle_text(&subscribe_frame("x", None, None), 2),
            vec![]
        );
        assert_eq!(session.handle_timeout(u64::MAX), vec![]);
    }

    #[test]
    fn refused_connections_get_the_error_event_then_the_close() {
        assert_eq!(
            refuse(ErrorCode::AppNotFound),
            [
                Action::Send(
                    r#"{"event":"pusher:error","data":{"message":"Application does not exist","code":4001}}"#
                        .into()
                ),
                Action::Close { code: 4001, reason: "Application does not exist" },
            ]
        );
    }

    #[test]
    fn shutdown_asks_the_client_to_reconnect_with_4200() {
        let mut session = session();
        let actions = session.handle_shutdown();
        assert_eq!(
            actions[0],
            Action::Send(protocol::error(ErrorCode::GenericReconnect))
        );
        assert_eq!(
            actions[1],
            Action::Close {
                code: 4200,
                reason: "Generic reconnect immediately"
            }
        );
        assert_eq!(session.handle_shutdown(), vec![]);
    }

    #[test]
    fn the_server_to_user_channel_is_answered_only_for_the_signed_in_user() {
        let mut session = session();
        let sub = |c: &str| subscribe_frame(c, None, None);
        let (event, _) = only_send(&session.handle_text(&sub("#server-to-user-42"), 1));
        assert_eq!(event, "pusher:subscription_error");
        let user_data = r#"{"id":"42"}"#;
        let auth = auth::user_auth("app-key", "app-secret", SOCKET, user_data);
        session.handle_text(&signin_frame(user_data, &auth), 1);
        let (event, _) = only_send(&session.handle_text(&sub("#server-to-user-42"), 2));
        assert_eq!(event, "pusher_internal:subscription_succeeded");
        let (event, _) = only_send(&session.handle_text(&sub("#server-to-user-43"), 2));
        assert_eq!(event, "pusher:subscription_error");
        let unsubscribe =
            json!({"event": "pusher:unsubscribe", "data": {"channel": "#server-to-user-42"}});
        assert!(session.handle_text(&unsubscribe.to_string(), 3).is_empty());
        assert!(
            session.handle_close().is_empty(),
            "the broker subscription is the shard's own"
        );
    }

    #[test]
    fn the_watchlist_is_normalised_deduplicated_and_bounded() {
        let mut ids: Vec<Value> = vec![json!(1), json!("1"), json!("b"), json!(null), json!("")];
        ids.extend((0..200).map(|i| json!(format!("u{i}"))));
        let data = json!({"id": "me", "watchlist": ids}).to_string();
        let list = watchlist_of(&data);
        assert_eq!(&list[..3], ["1", "b", "u0"]);
        assert_eq!(list.len(), WATCHLIST_MAX);
        assert!(watchlist_of(r#"{"id":"me","watchlist":"x"}"#).is_empty());
    }

    fn pending_join(session: &mut Session) {
        let data = json!({"user_id": "u", "user_info": {}}).to_string();
        let frame = subscribe_frame(
            "presence-r",
            Some(&sign("presence-r", Some(&data))),
            Some(&data),
        );
        let actions = session.handle_text(&frame, 1);
        assert!(
            matches!(&actions[..], [Action::PresenceJoin { .. }]),
            "{actions:?}"
        );
    }

    #[test]
    fn a_remote_presence_join_result_activates_or_refuses_the_subscription() {
        let mut ok = session();
        pending_join(&mut ok);
        assert!(!ok.is_subscribed("presence-r"));
        let actions = ok.presence_join_result("presence-r", Ok("succeeded".into()));
        assert_eq!(
            actions,
            vec![
                Action::Send("succeeded".into()),
                Action::Subscribe {
                    channel: "presence-r".into(),
                    kind: ChannelKind::Presence
                }
            ]
        );
        assert!(ok.is_subscribed("presence-r"));

        let mut refused = session();
        pending_join(&mut refused);
        let actions = refused.presence_join_result("presence-r", Err("full".into()));
        assert_eq!(actions, vec![Action::Send("full".into())]);
        assert_eq!(refused.subscription_count(), 0);
    }

    #[test]
    fn a_join_that_lands_after_unsubscribing_is_undone() {
        let mut session = session();
        pending_join(&mut session);
        let unsubscribe = json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-r"}});
        assert!(session.handle_text(&unsubscribe.to_string(), 2).is_empty());
        assert_eq!(
            session.presence_join_result("presence-r", Ok("succeeded".into())),
            vec![Action::Unsubscribe {
                channel: "presence-r".into(),
                kind: ChannelKind::Presence
            }]
        );
        assert!(
            session
                .presence_join_result("presence-r", Err("x".into()))
                .is_empty()
        );
    }
}
