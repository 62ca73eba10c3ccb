//! One Pusher connection's state machine: subscriptions, sign-in, client-event rate, pings.
//! Never touches a socket, a clock or another connection: it returns [`Action`]s for the shard.
//!
//! # Call contract (what the shard does)
//!
//! 1. After the WebSocket handshake, [`crate::pusher::path::admit`] picks the app (on `Err`,
//!    send [`protocol::error`] and close with its code). Then [`Session::new`] and
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

/// What the shard must do, in order, on behalf of this connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this text frame to this connection.
    Send(String),
    /// Register this connection on `channel` in the broker. The `subscription_succeeded` frame
    /// was sent just before. For cache kinds, send the channel's last event now, or
    /// [`protocol::cache_miss`] if there is none.
    Subscribe { channel: String, kind: ChannelKind },
    /// Remove this connection from `channel` in the broker. For presence kinds, also call
    /// [`presence_leave`] on the channel's registry and perform what it returns.
    Unsubscribe { channel: String, kind: ChannelKind },
    /// A signed presence subscribe: call [`Session::handle_presence_join`] with the channel's
    /// registry (create it if absent) and perform what it returns.
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
    },
    /// The connection signed in as `user_id`: index it for user-targeted sends and termination.
    SignedIn { user_id: String },
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
    /// False while a presence join waits for [`Session::handle_presence_join`].
    active: bool,
    /// The presence member's id, added to client events on presence channels.
    user_id: Option<String>,
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
            .filter(|s| s.active)
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
            });
            return vec![Action::PresenceJoin { channel, member }];
        }
        self.subscriptions.push(Subscription {
            channel: channel.clone(),
            kind,
            active: true,
            user_id: None,
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
        if !subscription.active {
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
            Action::SignedIn { user_id },
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
        let data_bytes = serde_json::to_string(data).map_or(usize::MAX, |s| s.len());
        if data_bytes > self.app.max_event_payload_bytes as usize {
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

fn bucket_capacity_milli(app: &App) -> u64 {
    u64::from(app.client_event_rate_per_s) * 1000
}
