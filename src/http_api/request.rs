//! Routing and parsing of the Pusher Channels HTTP API requests into [`ApiRequest`]; sans-IO, it
//! takes the method, path, parsed query and body, and never checks signatures (see
//! [`crate::http_api::signature`]) or touches channel state.

use serde::Deserialize;
use serde_json::Value;

use crate::http_api::query::{Query, QueryError};

/// Bounds on one API request. Built by the caller from `config::Limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Largest `data` of one event, in bytes. Default 10240. Pusher HTTP API reference: "The
    /// event data should not be larger than 10KB ... you will receive a 413". Past it:
    /// [`ApiError::PayloadTooLarge`] (413).
    pub event_payload_bytes_max: usize,
    /// Most channels in one event's `channels`. Default 100 (Pusher HTTP API reference: "channels:
    /// Array of one or more channel names - limited to 100 channels"). Past it:
    /// [`ApiError::TooManyChannels`] (400).
    pub event_channels_max: usize,
    /// Most events in one `batch_events` request. Default 10 (Pusher HTTP API reference: "batch:
    /// Array of events, maximum 10"). Past it: [`ApiError::BatchTooLarge`] (400).
    pub batch_events_max: usize,
    /// Largest request body, in bytes. Default 262144: a full batch is 10 events of 10 KiB data,
    /// which JSON string escaping can double, plus names and channels: 10 × (2 × 10240 + 1024) =
    /// 215040 bytes, rounded up. Past it: [`ApiError::BodyTooLarge`] (413), before any parsing.
    pub body_bytes_max: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            event_payload_bytes_max: 10_240,
            event_channels_max: 100,
            batch_events_max: 10,
            body_bytes_max: 262_144,
        }
    }
}

/// Longest channel name. Pusher channels docs: "Channel names should only include lower and
/// uppercase letters, numbers and the following punctuation _ - = @ , . ;" and at most 164
/// characters.
pub const CHANNEL_NAME_BYTES_MAX: usize = 164;
/// Longest event name. Pusher HTTP API reference: "name: Event name (required) - limited to 200
/// characters".
pub const EVENT_NAME_BYTES_MAX: usize = 200;
/// Longest `socket_id` (`<digits>.<digits>`, two u64s at most).
pub const SOCKET_ID_BYTES_MAX: usize = 41;
/// Longest `user_id` in a path. Pusher's user authentication limits ids to 200 characters.
pub const USER_ID_BYTES_MAX: usize = 200;
/// Longest app id in a path (ids are numbers in Pusher; we accept `[A-Za-z0-9_-]`).
pub const APP_ID_BYTES_MAX: usize = 64;

/// One request of the Pusher HTTP API, routed and validated (not yet authorised).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `POST /apps/{app_id}/events`.
    Trigger { app_id: String, event: TriggerEvent },
    /// `POST /apps/{app_id}/batch_events`; events in request order.
    TriggerBatch {
        app_id: String,
        events: Vec<TriggerEvent>,
    },
    /// `GET /apps/{app_id}/channels`: occupied channels, optionally by prefix.
    Channels {
        app_id: String,
        filter_by_prefix: Option<String>,
        info: InfoFields,
    },
    /// `GET /apps/{app_id}/channels/{channel}`.
    Channel {
        app_id: String,
        channel: String,
        info: InfoFields,
    },
    /// `GET /apps/{app_id}/channels/{channel}/users` (presence channels only).
    ChannelUsers { app_id: String, channel: String },
    /// `POST /apps/{app_id}/users/{user_id}/terminate_connections`.
    TerminateUserConnections { app_id: String, user_id: String },
}

impl ApiRequest {
    pub fn app_id(&self) -> &str {
        match self {
            Self::Trigger { app_id, .. }
            | Self::TriggerBatch { app_id, .. }
            | Self::Channels { app_id, .. }
            | Self::Channel { app_id, .. }
            | Self::ChannelUsers { app_id, .. }
            | Self::TerminateUserConnections { app_id, .. } => app_id,
        }
    }
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerEvent {
    pub name: String,
    /// The payload, forwarded verbatim (the SDKs send a JSON-encoded string).
    pub data: String,
    /// 1..=`event_channels_max` valid channel names (exactly one in a batch).
    pub channels: Vec<String>,
    /// The connection to exclude (Pusher: "excluding event recipients").
    pub socket_id: Option<String>,
    /// Attributes to return per channel in the response.
    pub info: InfoFields,
}

/// The `info` attributes asked for (comma-separated in the request; unknown ones are ignored).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InfoFields {
    pub user_count: bool,
    pub subscription_count: bool,
}

impl InfoFields {
    pub fn parse(list: &str) -> Self {
        let mut fields = Self::default();
        for attr in list.split(',').map(str::trim) {
            match attr {
                "user_count" => fields.user_count = true,
                "subscription_count" => fields.subscription_count = true,
                _ => {}
            }
        }
        fields
    }

    pub fn any(&self) -> bool {
        self.user_count || self.subscription_count
    }
}

/// Why an API request was refused. [`ApiError::status`] is the one mapping to HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadQuery(QueryError),
    #[error("request body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge { len: usize, max: usize },
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    #[error("missing required field {0}")]
    MissingField(&'static str),
    /// A field is present but of the wrong type or shape; the string says which rule.
    #[error("invalid field {field}: {rule}")]
    InvalidField {
        field: &'static str,
        rule: &'static str,
    },
    #[error("invalid channel name (1 to 164 of A-Z a-z 0-9 _ - = @ , . ;)")]
    InvalidChannelName,
    #[error("{count} channels exceed the limit of {max}")]
    TooManyChannels { count: usize, max: usize },
    #[error("batch of {count} events exceeds the limit of {max}")]
    BatchTooLarge { count: usize, max: usize },
    #[error("event data of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge { len: usize, max: usize },
    /// Pusher HTTP API reference: user_count is only available for presence channels.
    #[error("user_count is only available for presence channels")]
    UserCountRequiresPresence,
    #[error("users are only available for presence channels")]
    NotPresenceChannel,
    #[error("unknown route")]
    UnknownRoute,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::BodyTooLarge { .. } | Self::PayloadTooLarge { .. } => 413,
            Self::UnknownRoute => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::BadQuery(_)
            | Self::MalformedJson(_)
            | Self::MissingField(_)
            | Self::InvalidField { .. }
            | Self::InvalidChannelName
            | Self::TooManyChannels { .. }
            | Self::BatchTooLarge { .. }
            | Self::UserCountRequiresPresence
            | Self::NotPresenceChannel => 400,
        }
    }

    /// The value of the `Allow` header a 405 must carry (RFC 9110 §15.5.6).
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            Self::MethodNotAllowed { allow } => Some(allow),
            _ => None,
        }
    }

    /// The response body: `{"error":"<explanation>"}`.
    pub fn body(&self) -> String {
        crate::http_api::error_body(&self.to_string())
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        Self::BadQuery(e)
    }
}

/// The app id of an `/apps/{app_id}/...` path, to look up the app's key and secret before
/// verifying the signature. `None` for any other path (answer 404).
pub fn app_id(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/apps/")?;
    let id = rest.split('/').next()?;
    is_valid_app_id(id).then_some(id)
}

/// Routes and validates one request. `path` excludes the query string; `body` is the raw body
/// (ignored by GET routes and by `terminate_connections`).
pub fn parse_request(
    method: &str,
    path: &str,
    query: &Query,
    body: &[u8],
    limits: &ApiLimits,
) -> Result<ApiRequest, ApiError> {
    let rest = path.strip_prefix("/apps/").ok_or(ApiError::UnknownRoute)?;
    let segments: Vec<&str> = rest.splitn(5, '/').collect();
    let app_id = match segments.first() {
        Some(id) if is_valid_app_id(id) => id.to_string(),
        _ => return Err(ApiError::UnknownRoute),
    };
    match segments[1..] {
        ["events"] => {
            require_method(method, "POST")?;
            let event = parse_event_body(body, limits, false)?;
            Ok(ApiRequest::Trigger { app_id, event })
        }
        ["batch_events"] => {
            require_method(method, "POST")?;
            let events = parse_batch_body(body, limits)?;
            Ok(ApiRequest::TriggerBatch { app_id, events })
        }
        ["channels"] => {
            require_method(method, "GET")?;
            let filter_by_prefix = query.value("filter_by_prefix").map(str::to_string);
            let info = InfoFields::parse(query.value("info").unwrap_or(""));
            // Pusher HTTP API reference (GET channels): user_count needs filter_by_prefix=presence-.
            if info.user_count
                && !filter_by_prefix
                    .as_deref()
                    .is_some_and(|p| p.starts_with("presence-"))
            {
                return Err(ApiError::UserCountRequiresPresence);
            }
            Ok(ApiRequest::Channels {
                app_id,
                filter_by_prefix,
                info,
            })
        }
        ["channels", channel] => {
            require_method(method, "GET")?;
            let channel = valid_channel(channel)?;
            let info = InfoFields::parse(query.value("info").unwrap_or(""));
            if info.user_count && !is_presence(&channel) {
                return Err(ApiError::UserCountRequiresPresence);
            }
            Ok(ApiRequest::Channel {
                app_id,
                channel,
                info,
            })
        }
        ["channels", channel, "users"] => {
            require_method(method, "GET")?;
            let channel = valid_channel(channel)?;
            if !is_presence(&channel) {
                return Err(ApiError::NotPresenceChannel);
            }
            Ok(ApiRequest::ChannelUsers { app_id, channel })
        }
        ["users", user_id, "terminate_connections"] => {
            require_method(method, "POST")?;
            if user_id.is_empty() || user_id.len() > USER_ID_BYTES_MAX {
                return Err(ApiError::InvalidField {
                    field: "user_id",
                    rule: "1 to 200 bytes",
                });
            }
            Ok(ApiRequest::TerminateUserConnections {
                app_id,
                user_id: user_id.to_string(),
            })
        }
        _ => Err(ApiError::UnknownRoute),
    }
}

/// Pusher channels docs: 1..=164 bytes of `[A-Za-z0-9_\-=@,.;]`.
pub fn is_valid_channel_name(name: &str) -> bool {
    (1..=CHANNEL_NAME_BYTES_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

fn is_valid_app_id(id: &str) -> bool {
    (1..=APP_ID_BYTES_MAX).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Pusher protocol: a socket id is `<digits>.<digits>`.
fn is_valid_socket_id(id: &str) -> bool {
    id.len() <= SOCKET_ID_BYTES_MAX
        && id.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
}

/// A channel an event may be triggered on: a channel name, or a signed-in user's
/// `#server-to-user-{user_id}` (what the SDKs' `sendToUser` uses; Pusher user authentication
/// docs), whose id follows the channel-name alphabet and is at most 200 bytes.
pub fn is_valid_trigger_channel(name: &str) -> bool {
    if let Some(user_id) = name.strip_prefix("#server-to-user-") {
        return (1..=USER_ID_BYTES_MAX).contains(&user_id.len())
            && user_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b));
    }
    is_valid_channel_name(name)
}

fn is_presence(channel: &str) -> bool {
    channel.starts_with("presence-")
}

fn valid_channel(name: &str) -> Result<String, ApiError> {
    if is_valid_channel_name(name) {
        Ok(name.to_string())
    } else {
        Err(ApiError::InvalidChannelName)
    }
}

fn require_method(method: &str, want: &'static str) -> Result<(), ApiError> {
    if method == want {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed { allow: want })
    }
}

/// The JSON of one event, as the SDKs send it (unknown fields are ignored).
#[derive(Deserialize)]
struct EventJson {
    name: Option<Value>,
    data: Option<Value>,
    channel: Option<Value>,
    channels: Option<Value>,
    socket_id: Option<Value>,
    info: Option<Value>,
}

#[derive(Deserialize)]
struct BatchJson {
    batch: Option<Vec<EventJson>>,
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8], limits: &ApiLimits) -> Result<T, ApiError> {
    if body.len() > limits.body_bytes_max {
        return Err(ApiError::BodyTooLarge {
            len: body.len(),
            max: limits.body_bytes_max,
        });
    }
    serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

fn parse_event_body(
    body: &[u8],
    limits: &ApiLimits,
    in_batch: bool,
) -> Result<TriggerEvent, ApiError> {
    let json: EventJson = parse_json(body, limits)?;
    validate_event(json, limits, in_batch)
}

fn parse_batch_body(body: &[u8], limits: &ApiLimits) -> Result<Vec<TriggerEvent>, ApiError> {
    let json: BatchJson = parse_json(body, limits)?;
    let batch = json.batch.ok_or(ApiError::MissingField("batch"))?;
    if batch.len() > limits.batch_events_max {
        return Err(ApiError::BatchTooLarge {
            count: batch.len(),
            max: limits.batch_events_max,
        });
    }
    batch
        .into_iter()
        .map(|e| validate_event(e, limits, true))
        .collect()
}

fn string_field(value: Option<Value>, field: &'static str) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::InvalidField {
            field,
            rule: "must be a string",
        }),
    }
}

fn validate_event(
    json: EventJson,
    limits: &ApiLimits,
    in_batch: bool,
) -> Result<TriggerEvent, ApiError> {
    let name = string_field(json.name, "name")?.ok_or(ApiError::MissingField("name"))?;
    if name.is_empty() || name.len() > EVENT_NAME_BYTES_MAX {
        return Err(ApiError::InvalidField {
            field: "name",
            rule: "1 to 200 bytes",
        });
    }
    let data = string_field(json.data, "data")?.ok_or(ApiError::MissingField("data"))?;
    if data.len() > limits.event_payload_bytes_max {
        return Err(ApiError::PayloadTooLarge {
            len: data.len(),
            max: limits.event_payload_bytes_max,
        });
    }

    let channel = string_field(json.channel, "channel")?;
    let channels = match json.channels {
        None | Some(Value::Null) => None,
        // Pusher HTTP API reference: batch events name exactly one `channel`.
        Some(_) if in_batch => {
            return Err(ApiError::InvalidField {
                field: "channels",
                rule: "batch events take one channel",
            });
        }
        Some(Value::Array(items)) => {
            if items.len() > limits.event_channels_max {
                return Err(ApiError::TooManyChannels {
                    count: items.len(),
                    max: limits.event_channels_max,
                });
            }
            let mut names = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => names.push(s),
                    _ => {
                        return Err(ApiError::InvalidField {
                            field: "channels",
                            rule: "must be an array of strings",
                        });
                    }
                }
            }
            Some(names)
        }
        Some(_) => {
            return Err(ApiError::InvalidField {
                field: "channels",
                rule: "must be an array of strings",
            });
        }
    };
    let channels = match (channel, channels) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidField {
                field: "channels",
                rule: "give channel or channels, not both",
            });
        }
        (Some(one), None) => vec![one],
        (None, Some(many)) if !many.is_empty() => many,
        (None, _) => {
            return Err(ApiError::MissingField(if in_batch {
                "channel"
            } else {
                "channels"
            }));
        }
    };
    if !channels.iter().all(|c| is_valid_trigger_channel(c)) {
        return Err(ApiError::InvalidChannelName);
    }

    let socket_id = string_field(json.socket_id, "socket_id")?;
    if let Some(id) = &socket_id
        && !is_valid_socket_id(id)
    {
        return Err(ApiError::InvalidField {
            field: "socket_id",
            rule: "must be <digits>.<digits>",
        });
    }
    let info = InfoFields::parse(&string_field(json.info, "info")?.unwrap_or_default());
    Ok(TriggerEvent {
        name,
        data,
        channels,
        socket_id,
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: &str, path: &str, query: &str, body: &str) -> Result<ApiRequest, ApiError> {
        let q = Query::parse(query.as_bytes()).unwrap();
        parse_request(method, path, &q, body.as_bytes(), &ApiLimits::default())
    }

    fn event(name: &str, data: &str, channels: &[&str]) -> TriggerEvent {
        TriggerEvent {
            name: name.into(),
            data: data.into(),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            socket_id: None,
            info: InfoFields::default(),
        }
    }

    #[test]
    fn every_route_parses() {
        let both = InfoFields {
            user_count: true,
            subscription_count: true,
        };
        let mut excluded = event("e", "d", &["a", "b"]);
        excluded.socket_id = Some("123.456".into());
        excluded.info = InfoFields {
            user_count: false,
            subscription_count: true,
        };
        let cases: Vec<(&str, &str, &str, &str, ApiRequest)> = vec![
            (
                "POST",
                "/apps/3/events",
                "",
                r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#,
                ApiRequest::Trigger {
                    app_id: "3".into(),
                    event: event("foo", r#"{"some":"data"}"#, &["project-3"]),
                },
            ),
            (
                "POST",
                "/apps/3/events",
                "",
                r#"{"name":"e","channel":"presence-x","data":"d"}"#,
                ApiRequest::Trigger {
                    app_id: "3".into(),
                    event: event("e", "d", &["presence-x"]),
                },
            ),
            (
                "POST",
                "/apps/3/events",
                "",
                r#"{"name":"e","channels":["a","b"],"data":"d","socket_id":"123.456","info":"subscription_count,bogus","extra":1}"#,
                ApiRequest::Trigger {
                    app_id: "3".into(),
                    event: excluded,
                },
            ),
            (
                "POST",
                "/apps/my-app/batch_events",
                "",
                r#"{"batch":[{"name":"a","channel":"c1","data":"1"},{"name":"b","channel":"c2","data":"2"}]}"#,
                ApiRequest::TriggerBatch {
                    app_id: "my-app".into(),
                    events: vec![event("a", "1", &["c1"]), event("b", "2", &["c2"])],
                },
            ),
            (
                "GET",
                "/apps/3/channels",
                "",
                "",
                ApiRequest::Channels {
                    app_id: "3".into(),
                    filter_by_prefix: None,
                    info: InfoFields::default(),
                },
            ),
            (
                "GET",
                "/apps/3/channels",
                "filter_by_prefix=presence-&info=user_count%2Csubscription_count",
                "",
                ApiRequest::Channels {
                    app_id: "3".into(),
                    filter_by_prefix: Some("presence-".into()),
                    info: both,
                },
            ),
            (
                "GET",
                "/apps/3/channels/presence-x",
                "info=user_count,subscription_count",
                "",
                ApiRequest::Channel {
                    app_id: "3".into(),
                    channel: "presence-x".into(),
                    info: both,
                },
            ),
            (
                "GET",
                "/apps/3/channels/private-a=b@c,d.e;f",
                "",
                "",
                ApiRequest::Channel {
                    app_id: "3".into(),
                    channel: "private-a=b@c,d.e;f".into(),
                    info: InfoFields::default(),
                },
            ),
            (
                "GET",
                "/apps/3/channels/presence-x/users",
                "",
                "",
                ApiRequest::ChannelUsers {
                    app_id: "3".into(),
                    channel: "presence-x".into(),
                },
            ),
            (
                "POST",
                "/apps/3/users/user-1/terminate_connections",
                "",
                "{}",
                ApiRequest::TerminateUserConnections {
                    app_id: "3".into(),
                    user_id: "user-1".into(),
                },
            ),
        ];
        for (method, path, query, body, want) in cases {
            let got = parse(method, path, query, body);
            assert_eq!(got.as_ref(), Ok(&want), "{method} {path} {body}");
            assert_eq!(app_id(path), Some(want.app_id()));
        }
    }

    #[test]
    fn every_error_has_its_status() {
        let long_channel = "a".repeat(165);
        let max_channel = "a".repeat(164);
        let big_data = "x".repeat(10_241);
        let ok_data = "x".repeat(10_240);
        let hundred: Vec<String> = (0..100).map(|i| format!("\"c{i}\"")).collect();
        let hundred_one: Vec<String> = (0..101).map(|i| format!("\"c{i}\"")).collect();
        let batch = |n: usize| {
            let items: Vec<&str> = (0..n)
                .map(|_| r#"{"name":"a","channel":"c","data":"d"}"#)
                .collect();
            format!(r#"{{"batch":[{}]}}"#, items.join(","))
        };
        let ev = |channels: &str, data: &str| {
            format!(r#"{{"name":"e","channels":[{channels}],"data":"{data}"}}"#)
        };
        // (method, path, query, body, Ok or the status of the refusal)
        type Case<'a> = (&'a str, String, &'a str, String, Result<(), u16>);
        let cases: Vec<Case<'_>> = vec![
            // Limits at and past the edge.
            (
                "POST",
                "/apps/3/events".into(),
                "",
                ev(&hundred.join(","), "d"),
                Ok(()),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                ev(&hundred_one.join(","), "d"),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                ev("\"c\"", &ok_data),
                Ok(()),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                ev("\"c\"", &big_data),
                Err(413),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                ev(&format!("\"{max_channel}\""), "d"),
                Ok(()),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                ev(&format!("\"{long_channel}\""), "d"),
                Err(400),
            ),
            ("POST", "/apps/3/batch_events".into(), "", batch(10), Ok(())),
            (
                "POST",
                "/apps/3/batch_events".into(),
                "",
                batch(11),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                " ".repeat(262_145),
                Err(413),
            ),
            // Malformed bodies and fields.
            ("POST", "/apps/3/events".into(), "", "{".into(), Err(400)),
            ("POST", "/apps/3/events".into(), "", "".into(), Err(400)),
            ("POST", "/apps/3/events".into(), "", "[]".into(), Err(400)),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"channels":["c"],"data":"d"}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"name":"e","channels":["c"]}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"name":"e","data":"d"}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"name":"e","channels":[],"data":"d"}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"name":"e","channels":"c","data":"d"}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"name":"e","channels":[1],"data":"d"}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"name":"e","channel":"c","channels":["c"],"data":"d"}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"name":"e","channel":"c","data":{"a":1}}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"name":"","channel":"c","data":"d"}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"name":"e","channel":"a b","data":"d"}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"name":"e","channel":"","data":"d"}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"name":"e","channel":"c","data":"d","socket_id":"1"}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/events".into(),
                "",
                r#"{"name":"e","channel":"c","data":"d","socket_id":"a.1"}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/batch_events".into(),
                "",
                "{}".into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/batch_events".into(),
                "",
                r#"{"batch":[{"name":"a","channels":["c"],"data":"d"}]}"#.into(),
                Err(400),
            ),
            (
                "POST",
                "/apps/3/batch_events".into(),
                "",
                r#"{"batch":[{"name":"a","channel":"c"}]}"#.into(),
                Err(400),
            ),
            // Presence-only info.
            (
                "GET",
                "/apps/3/channels".into(),
                "info=user_count",
                "".into(),
                Err(400),
            ),
            (
                "GET",
                "/apps/3/channels".into(),
                "filter_by_prefix=private-&info=user_count",
                "".into(),
                Err(400),
            ),
            (
                "GET",
                "/apps/3/channels".into(),
                "filter_by_prefix=private-&info=subscription_count",
                "".into(),
                Ok(()),
            ),
            (
                "GET",
                "/apps/3/channels/private-x".into(),
                "info=user_count",
                "".into(),
                Err(400),
            ),
            (
                "GET",
                "/apps/3/channels/private-x/users".into(),
                "",
                "".into(),
                Err(400),
            ),
            (
                "GET",
                "/apps/3/channels/bad%20name".into(),
                "",
                "".into(),
                Err(400),
            ),
            (
                "POST",
                format!("/apps/3/users/{}/terminate_connections", "u".repeat(201)),
                "",
                "{}".into(),
                Err(400),
            ),
            // Routes and methods.
            ("GET", "/apps/3/events".into(), "", "".into(), Err(405)),
            ("POST", "/apps/3/channels".into(), "", "".into(), Err(405)),
            (
                "DELETE",
                "/apps/3/channels/c".into(),
                "",
                "".into(),
                Err(405),
            ),
            (
                "POST",
                "/apps/3/channels/presence-x/users".into(),
                "",
                "".into(),
                Err(405),
            ),
            (
                "GET",
                "/apps/3/users/u/terminate_connections".into(),
                "",
                "".into(),
                Err(405),
            ),
            ("GET", "/apps/3/".into(), "", "".into(), Err(404)),
            ("GET", "/apps/3".into(), "", "".into(), Err(404)),
            ("GET", "/apps//channels".into(), "", "".into(), Err(404)),
            ("GET", "/apps/3/channels/".into(), "", "".into(), Err(400)),
            (
                "GET",
                "/apps/3/channels/c/users/x".into(),
                "",
                "".into(),
                Err(404),
            ),
            ("GET", "/apps/3/nope".into(), "", "".into(), Err(404)),
            (
                "GET",
                "/apps/a%2Fb/channels".into(),
                "",
                "".into(),
                Err(404),
            ),
            ("GET", "/channels".into(), "", "".into(), Err(404)),
            (
                "POST",
                "/apps/3/users//terminate_connections".into(),
                "",
                "".into(),
                Err(400),
            ),
        ];
        for (method, path, query, body, want) in cases {
            let got = parse(method, &path, query, &body).map(|_| ()).map_err(|e| {
                let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
                assert!(v["error"].is_string());
                e.status()
            });
            let shown: String = body.chars().take(80).collect();
            assert_eq!(got, want, "{method} {path}?{query} {shown}");
        }
    }

    #[test]
    fn method_not_allowed_names_the_allowed_method() {
        let err = parse("GET", "/apps/3/events", "", "").unwrap_err();
        assert_eq!(err.allow(), Some("POST"));
        let err = parse("POST", "/apps/3/channels", "", "").unwrap_err();
        assert_eq!(err.allow(), Some("GET"));
        assert_eq!(ApiError::UnknownRoute.allow(), None);
    }

    #[test]
    fn capacity_errors_carry_limit_and_value() {
        let limits = ApiLimits {
            event_payload_bytes_max: 4,
            ..ApiLimits::default()
        };
        let q = Query::default();
        let body = br#"{"name":"e","channel":"c","data":"12345"}"#;
        assert_eq!(
            parse_request("POST", "/apps/1/events", &q, body, &limits),
            Err(ApiError::PayloadTooLarge { len: 5, max: 4 })
        );
    }

    #[test]
    fn app_id_is_found_only_under_apps() {
        assert_eq!(app_id("/apps/42/events"), Some("42"));
        assert_eq!(app_id("/apps/42"), Some("42"));
        assert_eq!(app_id("/apps//events"), None);
        assert_eq!(app_id("/other/42/events"), None);
        assert_eq!(app_id("/apps/4 2/events"), None);
    }

    #[test]
    fn channel_names_follow_pusher_rules() {
        for ok in [
            "a",
            "presence-x",
            "private-encrypted-x",
            "A-Z_a=z@0,9.;",
            &"x".repeat(164),
        ] {
            assert!(is_valid_channel_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "a#b", "é", &"x".repeat(165)] {
            assert!(!is_valid_channel_name(bad), "{bad}");
        }
        assert!(is_valid_trigger_channel("#server-to-user-42"));
        assert!(is_valid_trigger_channel("news"));
        assert!(!is_valid_trigger_channel("#server-to-user-"));
        assert!(!is_valid_trigger_channel("#server-to-user-a b"));
        assert!(!is_valid_trigger_channel("#other"));
    }
}
