//! Bodies and signature headers of the webhooks we send to an app's server; sans-IO: the caller
//! passes `time_ms` and does the POST (with `Content-Type: application/json`, which
//! pusher-http-node's `WebHook.isContentTypeValid` requires).
//!
//! Pusher webhooks docs: the body is `{"time_ms":<unix ms>,"events":[{"name":..., ...}]}`;
//! `X-Pusher-Key` names the app key and `X-Pusher-Signature` is the hex HMAC-SHA256 of the body,
//! keyed by that key's secret.

use serde_json::{Value, json};

use crate::http_api::signature::hmac_sha256_hex;

/// One webhook event (Pusher webhooks docs, "Events").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent<'a> {
    /// The channel went from 0 to 1 subscriber.
    ChannelOccupied { channel: &'a str },
    /// The channel went from 1 to 0 subscribers.
    ChannelVacated { channel: &'a str },
    /// A user joined a presence channel (first connection of that user id).
    MemberAdded { channel: &'a str, user_id: &'a str },
    /// A user left a presence channel (last connection of that user id).
    MemberRemoved { channel: &'a str, user_id: &'a str },
    /// A client sent a `client-` event; `user_id` only on presence channels.
    ClientEvent {
        channel: &'a str,
        event: &'a str,
        data: &'a str,
        socket_id: &'a str,
        user_id: Option<&'a str>,
    },
    /// A client subscribed to a cache channel that held no cached event.
    CacheMiss { channel: &'a str },
}

impl WebhookEvent<'_> {
    /// The event's `name` in the body, one of [`crate::pusher::app::WEBHOOK_EVENT_TYPES`]; what a
    /// webhook target's `event_types` lists.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ChannelOccupied { .. } => "channel_occupied",
            Self::ChannelVacated { .. } => "channel_vacated",
            Self::MemberAdded { .. } => "member_added",
            Self::MemberRemoved { .. } => "member_removed",
            Self::ClientEvent { .. } => "client_event",
            Self::CacheMiss { .. } => "cache_miss",
        }
    }

    fn to_json(&self) -> Value {
        match *self {
            Self::ChannelOccupied { channel } => {
                json!({"name": "channel_occupied", "channel": channel})
            }
            Self::ChannelVacated { channel } => {
                json!({"name": "channel_vacated", "channel": channel})
            }
            Self::MemberAdded { channel, user_id } => {
                json!({"name": "member_added", "channel": channel, "user_id": user_id})
            }
            Self::MemberRemoved { channel, user_id } => {
                json!({"name": "member_removed", "channel": channel, "user_id": user_id})
            }
            Self::ClientEvent {
                channel,
                event,
                data,
                socket_id,
                user_id,
            } => {
                let mut v = json!({
                    "name": "client_event",
                    "channel": channel,
                    "event": event,
                    "data": data,
                    "socket_id": socket_id,
                });
                if let (Some(user_id), Value::Object(map)) = (user_id, &mut v) {
                    map.insert("user_id".to_string(), user_id.into());
                }
                v
            }
            Self::CacheMiss { channel } => json!({"name": "cache_miss", "channel": channel}),
        }
    }
}

/// The webhook body: `{"events":[...],"time_ms":<time_ms>}`. The caller bounds how many events
/// it batches into one webhook.
pub fn webhook_body(time_ms: u64, events: &[WebhookEvent<'_>]) -> String {
    let events: Vec<Value> = events.iter().map(WebhookEvent::to_json).collect();
    json!({ "time_ms": time_ms, "events": events }).to_string()
}

/// The headers to send with `body`: `X-Pusher-Key`, `X-Pusher-Signature` and `Content-Type`.
pub fn webhook_headers(key: &str, secret: &str, body: &str) -> [(&'static str, String); 3] {
    [
        ("X-Pusher-Key", key.to_string()),
        (
            "X-Pusher-Signature",
            hmac_sha256_hex(secret, body.as_bytes()),
        ),
        ("Content-Type", "application/json".to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_has_the_documented_fields() {
        let cases: Vec<(WebhookEvent<'_>, Value)> = vec![
            (
                WebhookEvent::ChannelOccupied { channel: "c" },
                json!({"name":"channel_occupied","channel":"c"}),
            ),
            (
                WebhookEvent::ChannelVacated { channel: "c" },
                json!({"name":"channel_vacated","channel":"c"}),
            ),
            (
                WebhookEvent::MemberAdded {
                    channel: "presence-c",
                    user_id: "7",
                },
                json!({"name":"member_added","channel":"presence-c","user_id":"7"}),
            ),
            (
                WebhookEvent::MemberRemoved {
                    channel: "presence-c",
                    user_id: "7",
                },
                json!({"name":"member_removed","channel":"presence-c","user_id":"7"}),
            ),
            (
                WebhookEvent::ClientEvent {
                    channel: "private-c",
                    event: "client-x",
                    data: "{\"a\":1}",
                    socket_id: "1.2",
                    user_id: None,
                },
                json!({"name":"client_event","channel":"private-c","event":"client-x",
                       "data":"{\"a\":1}","socket_id":"1.2"}),
            ),
            (
                WebhookEvent::ClientEvent {
                    channel: "presence-c",
                    event: "client-x",
                    data: "d",
                    socket_id: "1.2",
                    user_id: Some("7"),
                },
                json!({"name":"client_event","channel":"presence-c","event":"client-x",
                       "data":"d","socket_id":"1.2","user_id":"7"}),
            ),
            (
                WebhookEvent::CacheMiss { channel: "cache-c" },
                json!({"name":"cache_miss","channel":"cache-c"}),
            ),
        ];
        let events: Vec<WebhookEvent<'_>> = cases.iter().map(|(e, _)| e.clone()).collect();
        let body: Value = serde_json::from_str(&webhook_body(1327078148132, &events)).unwrap();
        assert_eq!(body["time_ms"], 1327078148132u64);
        let want: Vec<Value> = cases.into_iter().map(|(_, v)| v).collect();
        assert_eq!(body["events"], Value::Array(want));
    }

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        let body = webhook_body(1, &[WebhookEvent::ChannelOccupied { channel: "c" }]);
        assert_eq!(
            body,
            r#"{"events":[{"channel":"c","name":"channel_occupied"}],"time_ms":1}"#
        );
        let headers = webhook_headers("278d425bdf160c739803", "7ad3773142a6692b25b8", &body);
        assert_eq!(
            headers[0],
            ("X-Pusher-Key", "278d425bdf160c739803".to_string())
        );
        assert_eq!(headers[1].0, "X-Pusher-Signature");
        assert_eq!(
            headers[1].1,
            hmac_sha256_hex("7ad3773142a6692b25b8", body.as_bytes())
        );
        assert_eq!(headers[1].1.len(), 64);
        assert_eq!(headers[2], ("Content-Type", "application/json".to_string()));
        // RFC 4231 test case 2 pins the HMAC itself, independently of our body.
        assert_eq!(
            hmac_sha256_hex("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
