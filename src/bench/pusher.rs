//! The bench client's side of Pusher Channels protocol v7, for `bench fanout --protocol pusher`:
//! the subscriber's frames (`pusher:subscribe`, `pusher:pong`), server frames parsed down to what
//! the bench counts, and signed `POST /apps/{id}/events` requests for the publisher. Owns only
//! strings and bytes; never touches a socket and never reads a clock (callers pass `now_s`).
//!
//! Signing reuses [`crate::http_api::signature`] (sans-IO, the Pusher HTTP API's definition), so
//! the request a server verifies is built by the same rules it verifies with; the unit tests check
//! it against the worked example in the Pusher docs as well.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::http_api::signature::{body_md5_hex, sign_request};

/// The event name the publisher triggers and subscribers count.
pub const BENCH_EVENT: &str = "bench";

/// Longest channel name. Pusher protocol: "Channel names should only include lower and
/// uppercase letters, numbers and the following punctuation _ - = @ , . ;", up to 164 characters.
pub const CHANNEL_NAME_BYTES_MAX: usize = 164;

/// `pusher:pong`, the answer to a server's `pusher:ping` (Pusher protocol: "If the client
/// receives a pusher:ping it should respond with a pusher:pong").
pub const PONG_FRAME: &str = r#"{"event":"pusher:pong","data":{}}"#;

/// One app's credentials: `--app-id`, `--app-key`, `--app-secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PusherApp {
    /// App id, in `/apps/{id}/events`.
    pub id: String,
    /// App key, in `/app/{key}` and `auth_key`.
    pub key: String,
    /// App secret, the HMAC key of request signatures.
    pub secret: String,
}

/// The subscribers' request target: `/app/{key}?protocol=7&client=ringcast-bench&version=1`.
/// Pusher protocol: "ws://ws-ap1.pusher.com:80/app/APP_KEY?client=js&version=7.0.3&protocol=7".
pub fn subscribe_path(key: &str) -> String {
    format!("/app/{key}?protocol=7&client=ringcast-bench&version=1")
}

/// The publisher's request path: `/apps/{id}/events`.
pub fn events_path(id: &str) -> String {
    format!("/apps/{id}/events")
}

/// `{"event":"pusher:subscribe","data":{"channel":"<channel>"}}` (public channel: no auth).
pub fn subscribe_frame(channel: &str) -> String {
    format!(
        r#"{{"event":"pusher:subscribe","data":{{"channel":{}}}}}"#,
        json_string(channel)
    )
}

/// Why `channel` cannot be the bench's channel, if it cannot. Public channels only: the bench
/// does not sign private or presence subscriptions.
pub fn channel_problem(channel: &str) -> Option<String> {
    let valid = |b: u8| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b);
    if channel.is_empty() || channel.len() > CHANNEL_NAME_BYTES_MAX {
        return Some(format!(
            "{channel:?}: a Pusher channel name has 1..={CHANNEL_NAME_BYTES_MAX} characters"
        ));
    }
    if !channel.bytes().all(valid) {
        return Some(format!(
            "{channel:?}: a Pusher channel name has only A-Z a-z 0-9 _ - = @ , . ;"
        ));
    }
    if channel.starts_with("private-") || channel.starts_with("presence-") {
        return Some(format!(
            "{channel:?} needs channel auth; the bench subscribes to public channels only"
        ));
    }
    None
}

/// Writes one signed `POST /apps/{id}/events` request (head and body) to the end of `out`,
/// triggering [`BENCH_EVENT`] on `channel` with `data` (sent as a JSON string). `now_s` is the
/// Unix time for `auth_timestamp`.
pub fn write_events_request(
    app: &PusherApp,
    host_header: &str,
    channel: &str,
    data: &str,
    now_s: u64,
    out: &mut Vec<u8>,
) {
    let body = format!(
        r#"{{"name":{},"channel":{},"data":{}}}"#,
        json_string(BENCH_EVENT),
        json_string(channel),
        json_string(data)
    );
    let path = events_path(&app.id);
    let query = signed_query(app, "POST", &path, body.as_bytes(), now_s);
    out.extend_from_slice(
        format!(
            "POST {path}?{query} HTTP/1.1\r\nHost: {host_header}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body.as_bytes());
}

/// The query string of a signed request: `auth_key`, `auth_timestamp`, `auth_version=1.0`,
/// `body_md5` (when there is a body) and `auth_signature` (Pusher HTTP API reference,
/// "Generating authentication signatures"). Values are sent unescaped: the key is checked to need
/// no escaping, the rest are digits and hex.
pub fn signed_query(app: &PusherApp, method: &str, path: &str, body: &[u8], now_s: u64) -> String {
    let timestamp = now_s.to_string();
    let md5 = body_md5_hex(body);
    let mut params = vec![
        ("auth_key", app.key.as_str()),
        ("auth_timestamp", timestamp.as_str()),
        ("auth_version", "1.0"),
    ];
    if !body.is_empty() {
        params.push(("body_md5", md5.as_str()));
    }
    let signature = sign_request(&app.secret, method, path, &params);
    let mut query = String::with_capacity(256);
    for (k, v) in params {
        query.push_str(k);
        query.push('=');
        query.push_str(v);
        query.push('&');
    }
    query.push_str("auth_signature=");
    query.push_str(&signature);
    query
}

/// `text` as a JSON string literal, quoted and escaped.
fn json_string(text: &str) -> String {
    // Serializing a str cannot fail: serde_json escapes every character it must.
    serde_json::to_string(text).unwrap_or_default()
}

/// A server frame, reduced to what the bench acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent<'a> {
    /// `pusher:connection_established`: the client may subscribe now.
    ConnectionEstablished,
    /// `pusher_internal:subscription_succeeded` for `channel`.
    SubscriptionSucceeded {
        /// The channel subscribed to (empty if the frame named none).
        channel: Cow<'a, str>,
    },
    /// `pusher:subscription_error`, with the HTTP-like status if it gave one.
    SubscriptionError {
        /// `data.status`.
        status: Option<u16>,
    },
    /// `pusher:error`, with its code if it gave one (4000-4299: see the Pusher protocol's
    /// error-code table).
    Error {
        /// `data.code`.
        code: Option<u16>,
    },
    /// `pusher:ping`: answer with [`PONG_FRAME`].
    Ping,
    /// Any other event: a channel event, or protocol events the bench ignores.
    Other {
        /// `event`.
        event: Cow<'a, str>,
        /// `channel`, if present.
        channel: Option<Cow<'a, str>>,
        /// `data`, if it is a JSON string (channel events carry their payload this way).
        data: Option<Cow<'a, str>>,
    },
}

/// Why a server frame is not a Pusher event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not UTF-8 JSON, or no string `event` member.
    #[error("not a Pusher event: {0}")]
    NotAnEvent(String),
}

/// Parses one server frame. Strings without escapes are borrowed from `text`, so a delivery
/// costs no allocation.
pub fn parse_server_event(text: &[u8]) -> Result<ServerEvent<'_>, FrameError> {
    // serde would also take a struct from a JSON array; a Pusher event is an object.
    if text.trim_ascii_start().first() != Some(&b'{') {
        return Err(FrameError::NotAnEvent("not a JSON object".to_owned()));
    }
    let envelope: Envelope<'_> =
        serde_json::from_slice(text).map_err(|e| FrameError::NotAnEvent(e.to_string()))?;
    let Envelope {
        event,
        channel,
        data,
    } = envelope;
    let event = event.0;
    Ok(match event.as_ref() {
        "pusher:connection_established" => ServerEvent::ConnectionEstablished,
        "pusher_internal:subscription_succeeded" => ServerEvent::SubscriptionSucceeded {
            channel: channel.map(|c| c.0).unwrap_or_default(),
        },
        "pusher:subscription_error" => ServerEvent::SubscriptionError {
            status: data.and_then(|d| d.number("status")),
        },
        "pusher:error" => ServerEvent::Error {
            code: data.and_then(|d| d.number("code")),
        },
        "pusher:ping" => ServerEvent::Ping,
        _ => ServerEvent::Other {
            event,
            channel: channel.map(|c| c.0),
            data: match data {
                Some(Data::Text(text)) => Some(text),
                _ => None,
            },
        },
    })
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Text<'a>,
    #[serde(borrow, default)]
    channel: Option<Text<'a>>,
    #[serde(borrow, default)]
    data: Option<Data<'a>>,
}

/// A JSON string, borrowed when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// `data`: Pusher protocol events carry a JSON-encoded string, but `pusher:error` and
/// `pusher:ping` often carry an object; both are accepted.
enum Data<'a> {
    Text(Cow<'a, str>),
    Json(serde_json::Value),
}

impl Data<'_> {
    /// A small unsigned number member of the object (or of the JSON object inside the string).
    fn number(&self, name: &str) -> Option<u16> {
        let parsed;
        let value = match self {
            Data::Json(value) => value,
            Data::Text(text) => {
                parsed = serde_json::from_str::<serde_json::Value>(text).ok()?;
                &parsed
            }
        };
        let member = value.get(name)?;
        member
            .as_u64()
            .or_else(|| member.as_str().and_then(|s| s.parse().ok()))
            .and_then(|n| u16::try_from(n).ok())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Data<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DataVisitor;
        impl<'de> Visitor<'de> for DataVisitor {
            type Value = Data<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Data::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Data::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Data::Text(Cow::Owned(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let value =
                    serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Data::Json(value))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let value =
                    serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Data::Json(value))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Data::Json(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Data::Json(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Data::Json(v.into()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Data::Json(v.into()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Data::Json(serde_json::Value::Null))
            }
        }
        deserializer.deserialize_any(DataVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_api::{Query, verify_request};

    // Pusher HTTP API reference, "Worked authentication example".
    const DOCS_KEY: &str = "278d425bdf160c739803";
    const DOCS_SECRET: &str = "7ad3773142a6692b25b8";
    const DOCS_BODY: &[u8] =
        br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;

    fn app() -> PusherApp {
        PusherApp {
            id: "app-id".to_owned(),
            key: "app-key".to_owned(),
            secret: "app-secret".to_owned(),
        }
    }

    #[test]
    fn signed_query_matches_the_worked_example_in_the_pusher_docs() {
        let app = PusherApp {
            id: "3".to_owned(),
            key: DOCS_KEY.to_owned(),
            secret: DOCS_SECRET.to_owned(),
        };
        assert_eq!(
            signed_query(&app, "POST", "/apps/3/events", DOCS_BODY, 1353088179),
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
&body_md5=ec365a775a4cd0599faeb73354201b6f\
&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn events_request_is_one_complete_post_that_the_server_side_verifier_accepts() {
        let mut out = b"leftover".to_vec();
        let data = "0".repeat(40) + "xx";
        write_events_request(
            &app(),
            "127.0.0.1:6001",
            "bench",
            &data,
            1_800_000_000,
            &mut out,
        );
        let request = &out[b"leftover".len()..];
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Request::new(&mut headers);
        let head_bytes = match parsed.parse(request).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial head"),
        };
        let body = &request[head_bytes..];
        assert_eq!(parsed.method, Some("POST"));
        let (path, query) = parsed.path.unwrap().split_once('?').unwrap();
        assert_eq!(path, "/apps/app-id/events");
        let length = parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        assert_eq!(length, Some(body.len()));
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "bench", "channel": "bench", "data": data})
        );
        let query = Query::parse(query.as_bytes()).unwrap();
        let secret = |key: &str| (key == "app-key").then_some("app-secret");
        assert_eq!(
            verify_request("POST", path, &query, body, 1_800_000_000, secret),
            Ok(())
        );
        let wrong = |key: &str| (key == "app-key").then_some("other-secret");
        assert!(verify_request("POST", path, &query, body, 1_800_000_000, wrong).is_err());
    }

    #[test]
    fn subscribe_and_pong_frames_are_the_protocol_json() {
        assert_eq!(
            subscribe_frame("bench-1"),
            r#"{"event":"pusher:subscribe","data":{"channel":"bench-1"}}"#
        );
        let pong: serde_json::Value = serde_json::from_str(PONG_FRAME).unwrap();
        assert_eq!(pong["event"], "pusher:pong");
        assert_eq!(
            subscribe_path("app-key"),
            "/app/app-key?protocol=7&client=ringcast-bench&version=1"
        );
    }

    #[test]
    fn bench_event_data_is_borrowed_whatever_the_member_order() {
        let frame = br#"{"channel":"bench","data":"0001xx","event":"bench","user_id":null}"#;
        match parse_server_event(frame).unwrap() {
            ServerEvent::Other {
                event,
                channel,
                data,
            } => {
                assert_eq!(event, "bench");
                assert_eq!(channel.as_deref(), Some("bench"));
                assert!(matches!(data, Some(Cow::Borrowed("0001xx"))));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn protocol_events_are_recognised() {
        let established = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#;
        assert_eq!(
            parse_server_event(established),
            Ok(ServerEvent::ConnectionEstablished)
        );
        let succeeded =
            br#"{"event":"pusher_internal:subscription_succeeded","channel":"bench","data":"{}"}"#;
        assert_eq!(
            parse_server_event(succeeded),
            Ok(ServerEvent::SubscriptionSucceeded {
                channel: "bench".into()
            })
        );
        assert_eq!(
            parse_server_event(br#"{"event":"pusher:ping","data":{}}"#),
            Ok(ServerEvent::Ping)
        );
        assert_eq!(
            parse_server_event(br#"{"event":"pusher:ping"}"#),
            Ok(ServerEvent::Ping)
        );
    }

    #[test]
    fn error_codes_are_read_from_an_object_or_a_json_string() {
        let object = br#"{"event":"pusher:error","data":{"message":"Unknown app","code":4001}}"#;
        assert_eq!(
            parse_server_event(object),
            Ok(ServerEvent::Error { code: Some(4001) })
        );
        let string = br#"{"event":"pusher:error","data":"{\"code\":4100,\"message\":\"x\"}"}"#;
        assert_eq!(
            parse_server_event(string),
            Ok(ServerEvent::Error { code: Some(4100) })
        );
        let no_code = br#"{"event":"pusher:error","data":{"message":"x","code":null}}"#;
        assert_eq!(
            parse_server_event(no_code),
            Ok(ServerEvent::Error { code: None })
        );
        let sub = br#"{"event":"pusher:subscription_error","channel":"private-x","data":{"type":"AuthError","error":"no","status":401}}"#;
        assert_eq!(
            parse_server_event(sub),
            Ok(ServerEvent::SubscriptionError { status: Some(401) })
        );
    }

    #[test]
    fn frames_without_a_string_event_are_errors() {
        for frame in [
            &b"not json"[..],
            br#"{"data":"x"}"#,
            br#"{"event":7}"#,
            br#"["event"]"#,
            b"\xff\xfe",
        ] {
            assert!(parse_server_event(frame).is_err(), "{frame:?}");
        }
    }

    #[test]
    fn channel_names_outside_the_public_pusher_rules_are_explained() {
        assert_eq!(channel_problem("bench"), None);
        assert_eq!(channel_problem("a_b-c=d@e,f.g;h"), None);
        assert!(channel_problem("").is_some());
        assert!(channel_problem(&"a".repeat(165)).is_some());
        assert!(channel_problem("a/b").unwrap().contains("only"));
        assert!(channel_problem("private-x").unwrap().contains("public"));
        assert!(channel_problem("presence-x").unwrap().contains("public"));
    }
}
