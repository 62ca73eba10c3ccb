//! Pusher v7 frames: parses what clients send and writes what pusher-js expects; never panics
//! on input and never decides policy (that is the session's job).
//!
//! Pusher protocol ("Pusher Channels Protocol", pusher-websockets-protocol): every frame is a
//! JSON object `{"event": .., "data": .., "channel"?: ..}`. Server `pusher:connection_established`,
//! `pusher_internal:*` events carry `data` as a JSON-encoded *string*; `pusher:error`,
//! `pusher:subscription_error`, `pusher:signin_success`, `pusher:ping`/`pong` carry an object,
//! as in the protocol document. pusher-js accepts both, other clients may not.

use serde::Serialize;
use serde_json::{Map, Value};

/// Pusher protocol: event names are at most 200 characters.
pub const EVENT_NAME_BYTES_MAX: usize = 200;

/// Bytes a client frame may take beyond the app's `max_event_payload_bytes`: room for the event
/// name, channel name, auth string and JSON punctuation. A subscribe frame with the largest
/// `channel_data` fits: user_info (1 KiB) is well under the payload limit.
pub const FRAME_OVERHEAD_BYTES: usize = 1024;

/// A frame from the client, checked for shape but not yet for policy.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Ping,
    Pong,
    Subscribe {
        channel: String,
        auth: Option<String>,
        channel_data: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-*` event; `data` is relayed as sent.
    ClientEvent {
        event: String,
        channel: String,
        data: Value,
    },
}

/// Why a client frame was refused. Each maps to a `pusher:error` (the connection stays open).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientMessageError {
    #[error("frame is {seen} bytes, the limit is {limit}")]
    FrameTooLarge { limit: usize, seen: usize },
    #[error("frame is not valid JSON")]
    InvalidJson,
    #[error("frame is not a JSON object")]
    NotAnObject,
    #[error("frame has no string 'event'")]
    MissingEvent,
    #[error("event name is {seen} bytes, the limit is {limit}")]
    EventNameTooLong { limit: usize, seen: usize },
    #[error("{event} needs a string '{field}'")]
    MissingField {
        event: &'static str,
        field: &'static str,
    },
    #[error("'{field}' must be a string")]
    FieldNotString { field: &'static str },
    #[error("unsupported event")]
    UnsupportedEvent,
}

/// Parses one text frame. `frame_bytes_max` bounds the work done on hostile input.
pub fn parse_client_message(
    text: &str,
    frame_bytes_max: usize,
) -> Result<ClientMessage, ClientMessageError> {
    if text.len() > frame_bytes_max {
        return Err(ClientMessageError::FrameTooLarge {
            limit: frame_bytes_max,
            seen: text.len(),
        });
    }
    // serde_json stops at 128 levels of nesting, so deep input cannot exhaust the stack.
    let value: Value = serde_json::from_str(text).map_err(|_| ClientMessageError::InvalidJson)?;
    let Value::Object(mut frame) = value else {
        return Err(ClientMessageError::NotAnObject);
    };
    let event = match frame.remove("event") {
        Some(Value::String(event)) => event,
        _ => return Err(ClientMessageError::MissingEvent),
    };
    if event.len() > EVENT_NAME_BYTES_MAX {
        return Err(ClientMessageError::EventNameTooLong {
            limit: EVENT_NAME_BYTES_MAX,
            seen: event.len(),
        });
    }
    let data = frame.remove("data").unwrap_or(Value::Null);
    match event.as_str() {
        "pusher:ping" => Ok(ClientMessage::Ping),
        "pusher:pong" => Ok(ClientMessage::Pong),
        "pusher:subscribe" => {
            let mut data = data_object(data);
            Ok(ClientMessage::Subscribe {
                channel: required(&mut data, "pusher:subscribe", "channel")?,
                auth: optional(&mut data, "auth")?,
                channel_data: optional(&mut data, "channel_data")?,
            })
        }
        "pusher:unsubscribe" => {
            let mut data = data_object(data);
            Ok(ClientMessage::Unsubscribe {
                channel: required(&mut data, "pusher:unsubscribe", "channel")?,
            })
        }
        "pusher:signin" => {
            let mut data = data_object(data);
            Ok(ClientMessage::Signin {
                auth: required(&mut data, "pusher:signin", "auth")?,
                user_data: required(&mut data, "pusher:signin", "user_data")?,
            })
        }
        _ if event.starts_with("client-") => {
            let channel = required(&mut frame, "client event", "channel")?;
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            })
        }
        _ => Err(ClientMessageError::UnsupportedEvent),
    }
}

/// Pusher close and error codes (Pusher protocol, "Error Codes"). 4000-4099: do not reconnect;
/// 4100-4199: reconnect after a back-off; 4200-4299: reconnect now; 4300-4399: other errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    AppNotFound,
    AppDisabled,
    OverConnectionQuota,
    PathNotFound,
    InvalidVersionFormat,
    UnsupportedProtocolVersion,
    NoProtocolVersion,
    Unauthorized,
    OverCapacity,
    GenericReconnect,
    PongTimeout,
    ClientEventRateLimit,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::AppNotFound => 4001,
            ErrorCode::AppDisabled => 4003,
            ErrorCode::OverConnectionQuota => 4004,
            ErrorCode::PathNotFound => 4005,
            ErrorCode::InvalidVersionFormat => 4006,
            ErrorCode::UnsupportedProtocolVersion => 4007,
            ErrorCode::NoProtocolVersion => 4008,
            ErrorCode::Unauthorized => 4009,
            ErrorCode::OverCapacity => 4100,
            ErrorCode::GenericReconnect => 4200,
            ErrorCode::PongTimeout => 4201,
            ErrorCode::ClientEventRateLimit => 4301,
        }
    }

    /// The human-readable message, short enough for a close reason (at most 123 bytes).
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::AppNotFound => "Application does not exist",
            ErrorCode::AppDisabled => "Application is disabled",
            ErrorCode::OverConnectionQuota => "Application is over connection quota",
            ErrorCode::PathNotFound => "Path not found",
            ErrorCode::InvalidVersionFormat => "Invalid version string format",
            ErrorCode::UnsupportedProtocolVersion => "Unsupported protocol version",
            ErrorCode::NoProtocolVersion => "No protocol version supplied",
            ErrorCode::Unauthorized => "Connection is unauthorized",
            ErrorCode::OverCapacity => "Over capacity",
            ErrorCode::GenericReconnect => "Generic reconnect immediately",
            ErrorCode::PongTimeout => "Pong reply not received",
            ErrorCode::ClientEventRateLimit => "Client event rejected - rate limit exceeded",
        }
    }

    /// Whether the code ends the connection. 4301 only rejects the one event.
    pub fn closes(self) -> bool {
        self != ErrorCode::ClientEventRateLimit
    }
}

/// `pusher:connection_established`; `activity_timeout` tells the client when to ping.
pub fn connection_established(socket_id: &str, activity_timeout_s: u32) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        socket_id: &'a str,
        activity_timeout: u32,
    }
    string_data_event(
        "pusher:connection_established",
        None,
        &Data {
            socket_id,
            activity_timeout: activity_timeout_s,
        },
    )
}

/// `pusher_internal:subscription_succeeded` for a non-presence channel (data `"{}"`).
pub fn subscription_succeeded(channel: &str) -> String {
    string_data_event(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &Map::new(),
    )
}

/// `pusher_internal:subscription_succeeded` with a presence snapshot as its data
/// (see [`crate::pusher::presence::PresenceChannel::subscription_succeeded`]).
pub fn subscription_succeeded_with<T: Serialize>(channel: &str, data: &T) -> String {
    string_data_event(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        data,
    )
}

/// `pusher:subscription_error`: `kind` is the error type (`AuthError`, `LimitReached`, ..),
/// `status` an HTTP-like status.
pub fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        error: &'a str,
        status: u16,
    }
    object_data_event(
        "pusher:subscription_error",
        Some(channel),
        &Data {
            kind,
            error,
            status,
        },
    )
}

/// `pusher:error` with a code from the table.
pub fn error(code: ErrorCode) -> String {
    error_message(code.message(), Some(code.code()))
}

/// `pusher:error` with any message; `code: None` is sent as `null` (Pusher does this for
/// malformed frames and refused client events).
pub fn error_message(message: &str, code: Option<u16>) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        message: &'a str,
        code: Option<u16>,
    }
    object_data_event("pusher:error", None, &Data { message, code })
}

/// `pusher:ping`, sent after `activity_timeout` of client silence.
pub fn ping() -> String {
    r#"{"event":"pusher:ping","data":{}}"#.to_owned()
}

/// `pusher:pong`, the answer to `pusher:ping`.
pub fn pong() -> String {
    r#"{"event":"pusher:pong","data":{}}"#.to_owned()
}

/// `pusher:signin_success` echoing the signed `user_data` string.
pub fn signin_success(user_data: &str) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        user_data: &'a str,
    }
    object_data_event("pusher:signin_success", None, &Data { user_data })
}

/// `pusher_internal:member_added` for the other members of a presence channel.
pub fn member_added(channel: &str, user_id: &str, user_info: &Value) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        user_id: &'a str,
        user_info: &'a Value,
    }
    string_data_event(
        "pusher_internal:member_added",
        Some(channel),
        &Data { user_id, user_info },
    )
}

/// `pusher_internal:member_removed` for the remaining members of a presence channel.
pub fn member_removed(channel: &str, user_id: &str) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        user_id: &'a str,
    }
    string_data_event(
        "pusher_internal:member_removed",
        Some(channel),
        &Data { user_id },
    )
}

/// `pusher:cache_miss`: a cache channel had no event to replay on subscribe.
pub fn cache_miss(channel: &str) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        event: &'a str,
        channel: &'a str,
    }
    to_json(&Frame {
        event: "pusher:cache_miss",
        channel,
    })
}

/// A channel event as delivered to subscribers. `user_id` is set on client events in presence
/// channels (Pusher protocol: so receivers know which member sent it).
pub fn channel_event(event: &str, channel: &str, data: &Value, user_id: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        event: &'a str,
        channel: &'a str,
        data: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
    }
    to_json(&Frame {
        event,
        channel,
        data,
        user_id,
    })
}

/// The data of a `pusher:*` command: an object, or (lenient, as older clients send) a string
/// holding one. Anything else counts as an empty object so the missing field is reported.
fn data_object(data: Value) -> Map<String, Value> {
    match data {
        Value::Object(map) => map,
        Value::String(s) => match serde_json::from_str(&s) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        },
        _ => Map::new(),
    }
}

fn required(
    data: &mut Map<String, Value>,
    event: &'static str,
    field: &'static str,
) -> Result<String, ClientMessageError> {
    match data.remove(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ClientMessageError::FieldNotString { field }),
        None => Err(ClientMessageError::MissingField { event, field }),
    }
}

fn optional(
    data: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, ClientMessageError> {
    match data.remove(field) {
        Some(Value::String(s)) => Ok(Some(s)),
        None | Some(Value::Null) => Ok(None),
        Some(_) => Err(ClientMessageError::FieldNotString { field }),
    }
}

fn string_data_event<T: Serialize>(event: &str, channel: Option<&str>, data: &T) -> String {
    let data = to_json(data);
    object_data_event(event, channel, &data)
}

fn object_data_event<T: Serialize>(event: &str, channel: Option<&str>, data: &T) -> String {
    #[derive(Serialize)]
    struct Frame<'a, T> {
        event: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        data: &'a T,
    }
    to_json(&Frame {
        event,
        channel,
        data,
    })
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Every type serialized here has string keys and no custom Serialize, so this cannot fail.
    serde_json::to_string(value).expect("server frames always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 10_240 + FRAME_OVERHEAD_BYTES;

    fn parse(text: &str) -> Result<ClientMessage, ClientMessageError> {
        parse_client_message(text, MAX)
    }

    #[test]
    fn well_formed_client_frames_parse() {
        use ClientMessage::*;
        let cases: Vec<(&str, ClientMessage)> = vec![
            (r#"{"event":"pusher:ping","data":{}}"#, Ping),
            (r#"{"event":"pusher:ping"}"#, Ping),
            (r#"{"event":"pusher:pong","data":{}}"#, Pong),
            (
                r#"{"event":"pusher:subscribe","data":{"channel":"news"}}"#,
                Subscribe {
                    channel: "news".into(),
                    auth: None,
                    channel_data: None,
                },
            ),
            (
                r#"{"event":"pusher:subscribe","data":{"channel":"news","auth":null}}"#,
                Subscribe {
                    channel: "news".into(),
                    auth: None,
                    channel_data: None,
                },
            ),
            (
                r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel":"presence-a","channel_data":"{\"user_id\":1}"}}"#,
                Subscribe {
                    channel: "presence-a".into(),
                    auth: Some("k:s".into()),
                    channel_data: Some(r#"{"user_id":1}"#.into()),
                },
            ),
            (
                r#"{"event":"pusher:subscribe","data":"{\"channel\":\"news\"}"}"#,
                Subscribe {
                    channel: "news".into(),
                    auth: None,
                    channel_data: None,
                },
            ),
            (
                r#"{"event":"pusher:unsubscribe","data":{"channel":"news"}}"#,
                Unsubscribe {
                    channel: "news".into(),
                },
            ),
            (
                r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"1\"}"}}"#,
                Signin {
                    auth: "k:s".into(),
                    user_data: r#"{"id":"1"}"#.into(),
                },
            ),
            (
                r#"{"event":"client-typing","channel":"private-a","data":{"x":1}}"#,
                ClientEvent {
                    event: "client-typing".into(),
                    channel: "private-a".into(),
                    data: serde_json::json!({"x": 1}),
                },
            ),
            (
                r#"{"event":"client-typing","channel":"private-a"}"#,
                ClientEvent {
                    event: "client-typing".into(),
                    channel: "private-a".into(),
                    data: Value::Null,
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_client_frames_are_errors_of_the_broken_rule() {
        use ClientMessageError::*;
        let long_event = format!(r#"{{"event":"client-{}","channel":"c"}}"#, "a".repeat(200));
        let cases: Vec<(&str, ClientMessageError)> = vec![
            ("", InvalidJson),
            ("{", InvalidJson),
            ("nul", InvalidJson),
            ("{\"event\":\"pusher:ping\"} trailing", InvalidJson),
            ("\u{0}", InvalidJson),
            ("null", NotAnObject),
            ("[]", NotAnObject),
            ("[{\"event\":\"pusher:ping\"}]", NotAnObject),
            ("\"pusher:ping\"", NotAnObject),
            ("42", NotAnObject),
            ("true", NotAnObject),
            ("{}", MissingEvent),
            (r#"{"event":null}"#, MissingEvent),
            (r#"{"event":1}"#, MissingEvent),
            (r#"{"event":{"a":1}}"#, MissingEvent),
            (r#"{"data":{}}"#, MissingEvent),
            (
                &long_event,
                EventNameTooLong {
                    limit: 200,
                    seen: 207,
                },
            ),
            (
                r#"{"event":"pusher:subscribe"}"#,
                MissingField {
                    event: "pusher:subscribe",
                    field: "channel",
                },
            ),
            (
                r#"{"event":"pusher:subscribe","data":null}"#,
                MissingField {
                    event: "pusher:subscribe",
                    field: "channel",
                },
            ),
            (
                r#"{"event":"pusher:subscribe","data":[1]}"#,
                MissingField {
                    event: "pusher:subscribe",
                    field: "channel",
                },
            ),
            (
                r#"{"event":"pusher:subscribe","data":"not json"}"#,
                MissingField {
                    event: "pusher:subscribe",
                    field: "channel",
                },
            ),
            (
                r#"{"event":"pusher:subscribe","data":{"channel":5}}"#,
                FieldNotString { field: "channel" },
            ),
            (
                r#"{"event":"pusher:subscribe","data":{"channel":"a","auth":5}}"#,
                FieldNotString { field: "auth" },
            ),
            (
                r#"{"event":"pusher:subscribe","data":{"channel":"a","channel_data":{"user_id":1}}}"#,
                FieldNotString {
                    field: "channel_data",
                },
            ),
            (
                r#"{"event":"pusher:unsubscribe","data":{}}"#,
                MissingField {
                    event: "pusher:unsubscribe",
                    field: "channel",
                },
            ),
            (
                r#"{"event":"pusher:signin","data":{"auth":"a"}}"#,
                MissingField {
                    event: "pusher:signin",
                    field: "user_data",
                },
            ),
            (
                r#"{"event":"pusher:signin","data":{"user_data":"{}"}}"#,
                MissingField {
                    event: "pusher:signin",
                    field: "auth",
                },
            ),
            (
                r#"{"event":"client-x","data":{}}"#,
                MissingField {
                    event: "client event",
                    field: "channel",
                },
            ),
            (
                r#"{"event":"client-x","channel":["a"]}"#,
                FieldNotString { field: "channel" },
            ),
            (r#"{"event":"pusher:unknown"}"#, UnsupportedEvent),
            (
                r#"{"event":"pusher_internal:subscription_succeeded","channel":"a"}"#,
                UnsupportedEvent,
            ),
            (r#"{"event":"my-event","channel":"a"}"#, UnsupportedEvent),
            (r#"{"event":""}"#, UnsupportedEvent),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Err(want), "{text}");
        }
    }

    #[test]
    fn frame_over_the_limit_is_refused_before_parsing() {
        let text = format!(
            r#"{{"event":"client-x","channel":"c","data":"{}"}}"#,
            "a".repeat(40)
        );
        assert_eq!(
            parse_client_message(&text, 40),
            Err(ClientMessageError::FrameTooLarge {
                limit: 40,
                seen: text.len()
            })
        );
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            parse_client_message(&deep, usize::MAX),
            Err(ClientMessageError::InvalidJson)
        );
        let deep_data = format!(
            r#"{{"event":"client-x","channel":"c","data":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(
            parse_client_message(&deep_data, usize::MAX),
            Err(ClientMessageError::InvalidJson)
        );
    }

    #[test]
    fn server_frames_are_byte_exact() {
        let info = serde_json::json!({"name": "Mr. Channels"});
        let cases: Vec<(String, &str)> = vec![
            (
                connection_established("123.456", 120),
                r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#,
            ),
            (
                subscription_succeeded("news"),
                r#"{"event":"pusher_internal:subscription_succeeded","channel":"news","data":"{}"}"#,
            ),
            (
                subscription_error("private-a", "AuthError", "Invalid signature", 401),
                r#"{"event":"pusher:subscription_error","channel":"private-a","data":{"type":"AuthError","error":"Invalid signature","status":401}}"#,
            ),
            (
                error(ErrorCode::ClientEventRateLimit),
                r#"{"event":"pusher:error","data":{"message":"Client event rejected - rate limit exceeded","code":4301}}"#,
            ),
            (
                error_message("Bad \"frame\"", None),
                r#"{"event":"pusher:error","data":{"message":"Bad \"frame\"","code":null}}"#,
            ),
            (ping(), r#"{"event":"pusher:ping","data":{}}"#),
            (pong(), r#"{"event":"pusher:pong","data":{}}"#),
            (
                signin_success(r#"{"id":"1"}"#),
                r#"{"event":"pusher:signin_success","data":{"user_data":"{\"id\":\"1\"}"}}"#,
            ),
            (
                member_added("presence-a", "10", &info),
                r#"{"event":"pusher_internal:member_added","channel":"presence-a","data":"{\"user_id\":\"10\",\"user_info\":{\"name\":\"Mr. Channels\"}}"}"#,
            ),
            (
                member_removed("presence-a", "10"),
                r#"{"event":"pusher_internal:member_removed","channel":"presence-a","data":"{\"user_id\":\"10\"}"}"#,
            ),
            (
                cache_miss("cache-a"),
                r#"{"event":"pusher:cache_miss","channel":"cache-a"}"#,
            ),
            (
                channel_event(
                    "client-x",
                    "private-a",
                    &serde_json::json!({"k": "v"}),
                    None,
                ),
                r#"{"event":"client-x","channel":"private-a","data":{"k":"v"}}"#,
            ),
            (
                channel_event(
                    "client-x",
                    "presence-a",
                    &Value::String("s".into()),
                    Some("10"),
                ),
                r#"{"event":"client-x","channel":"presence-a","data":"s","user_id":"10"}"#,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn error_codes_match_the_pusher_table() {
        use ErrorCode::*;
        let cases = [
            (AppNotFound, 4001, true),
            (AppDisabled, 4003, true),
            (OverConnectionQuota, 4004, true),
            (PathNotFound, 4005, true),
            (InvalidVersionFormat, 4006, true),
            (UnsupportedProtocolVersion, 4007, true),
            (NoProtocolVersion, 4008, true),
            (Unauthorized, 4009, true),
            (OverCapacity, 4100, true),
            (GenericReconnect, 4200, true),
            (PongTimeout, 4201, true),
            (ClientEventRateLimit, 4301, false),
        ];
        for (code, number, closes) in cases {
            assert_eq!(code.code(), number);
            assert_eq!(code.closes(), closes);
            assert!(code.message().len() <= 123, "{code:?}");
        }
    }
}
