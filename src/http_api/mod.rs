//! The Pusher Channels HTTP API (publish and query), sans-IO: request signing, routing, request
//! and response bodies, and webhook bodies. It never opens a socket, reads a clock or touches
//! channel state: callers pass `now_s` and the counts they looked up.
//!
//! Call contract for one request (see [`authenticate_and_parse`], which runs all of it):
//! 1. [`Query::parse`] the bytes after `?` (400 on failure).
//! 2. [`request::app_id`] names the app of the path (404 when there is none).
//! 3. [`signature::verify_request`] with the secret of the `auth_key` (401 on failure).
//! 4. [`request::parse_request`] into an [`ApiRequest`] (400, 404, 405 or 413 on failure).
//! 5. Act on it, and answer 200 with a body from [`response`].
//!
//! Every refusal carries a status and a `{"error":"..."}` body; a 405 also carries `Allow`.

pub mod query;
pub mod request;
pub mod response;
pub mod signature;
pub mod webhook;

pub use query::{Query, QueryError};
pub use request::{ApiError, ApiLimits, ApiRequest, InfoFields, TriggerEvent, parse_request};
pub use response::ChannelCounts;
pub use signature::{SignatureError, verify_request};
pub use webhook::{WebhookEvent, webhook_body, webhook_headers};

/// Any refusal of an API request, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpApiError {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Request(#[from] ApiError),
}

impl HttpApiError {
    /// 400, 401, 404, 405 or 413.
    pub fn status(&self) -> u16 {
        match self {
            Self::Signature(e) => e.status(),
            Self::Request(e) => e.status(),
        }
    }

    /// `{"error":"<explanation>"}`.
    pub fn body(&self) -> String {
        error_body(&self.to_string())
    }

    /// The `Allow` header value for a 405.
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            Self::Signature(_) => None,
            Self::Request(e) => e.allow(),
        }
    }
}

impl From<QueryError> for HttpApiError {
    fn from(e: QueryError) -> Self {
        Self::Request(ApiError::BadQuery(e))
    }
}

/// Runs steps 1 to 4 of the call contract on one request.
///
/// `method` and `path` are as received (path without `?query`), `raw_query` the bytes after `?`
/// (empty when there is none), `body` the whole body. `secret_for` maps `(app_id, auth_key)` to
/// that key's secret, `None` when the app or the key is unknown (401 either way, so a prober
/// cannot tell which app ids exist).
pub fn authenticate_and_parse<'s>(
    method: &str,
    path: &str,
    raw_query: &[u8],
    body: &[u8],
    now_s: u64,
    limits: &ApiLimits,
    secret_for: impl FnOnce(&str, &str) -> Option<&'s str>,
) -> Result<ApiRequest, HttpApiError> {
    let query = Query::parse(raw_query)?;
    let app_id = request::app_id(path).ok_or(ApiError::UnknownRoute)?;
    verify_request(method, path, &query, body, now_s, |key| {
        secret_for(app_id, key)
    })?;
    Ok(parse_request(method, path, &query, body, limits)?)
}

/// `{"error":"<message>"}`, the body of every refusal.
pub fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// Fuzz entry point: one request from arbitrary bytes, which must never panic. Layout: byte 0
/// picks the method, then `path \n query \n body`.
#[cfg(any(test, fuzzing))]
pub fn fuzz_api_request(data: &[u8]) {
    const METHODS: [&str; 4] = ["GET", "POST", "PUT", "get"];
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(first) % METHODS.len()];
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let raw_query = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let limits = ApiLimits::default();

    // Parse alone (as if the signature had passed), so the fuzzer reaches the body parser.
    if let Ok(query) = Query::parse(raw_query) {
        match parse_request(method, &path, &query, body, &limits) {
            Ok(req) => assert!(request::app_id(&path) == Some(req.app_id())),
            Err(e) => {
                assert!(matches!(e.status(), 400 | 404 | 405 | 413));
                assert!(serde_json::from_str::<serde_json::Value>(&e.body()).is_ok());
            }
        }
        let _ = verify_request(method, &path, &query, body, 1_353_088_179, |_| Some("s"));
    }
    // The whole pipeline, with a secret for every key.
    if let Err(e) =
        authenticate_and_parse(method, &path, raw_query, body, 0, &limits, |_, _| Some("s"))
    {
        assert!(matches!(e.status(), 400 | 401 | 404 | 405 | 413));
        assert_eq!(e.allow().is_some(), e.status() == 405);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const NOW: u64 = 1353088179;

    fn secrets(app_id: &str, key: &str) -> Option<&'static str> {
        (app_id == "3" && key == KEY).then_some(SECRET)
    }

    /// Signs like pusher-http-node: raw `k=v` pairs in the URL.
    fn signed(method: &str, path: &str, extra: &[(&str, &str)], body: &str, ts: u64) -> String {
        let ts = ts.to_string();
        let md5 = signature::body_md5_hex(body.as_bytes());
        let mut params = vec![
            ("auth_key", KEY),
            ("auth_timestamp", ts.as_str()),
            ("auth_version", "1.0"),
        ];
        if !body.is_empty() {
            params.push(("body_md5", md5.as_str()));
        }
        params.extend_from_slice(extra);
        let sig = signature::sign_request(SECRET, method, path, &params);
        let mut q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        q.push(format!("auth_signature={sig}"));
        q.join("&")
    }

    fn run(
        method: &str,
        path: &str,
        query: &str,
        body: &str,
        now: u64,
    ) -> Result<ApiRequest, HttpApiError> {
        authenticate_and_parse(
            method,
            path,
            query.as_bytes(),
            body.as_bytes(),
            now,
            &ApiLimits::default(),
            secrets,
        )
    }

    #[test]
    fn signed_requests_pass_and_refusals_carry_status() {
        let ev = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let big = format!(
            r#"{{"name":"e","channel":"c","data":"{}"}}"#,
            "x".repeat(10_241)
        );
        // (method, path, query, body, now_s, Ok or the status of the refusal)
        type Case<'a> = (&'a str, &'a str, String, String, u64, Result<(), u16>);
        let cases: Vec<Case<'_>> = vec![
            (
                "POST",
                "/apps/3/events",
                signed("POST", "/apps/3/events", &[], ev, NOW),
                ev.into(),
                NOW,
                Ok(()),
            ),
            (
                "GET",
                "/apps/3/channels",
                signed(
                    "GET",
                    "/apps/3/channels",
                    &[("filter_by_prefix", "presence-"), ("info", "user_count")],
                    "",
                    NOW,
                ),
                String::new(),
                NOW,
                Ok(()),
            ),
            (
                "GET",
                "/apps/3/channels/presence-x/users",
                signed("GET", "/apps/3/channels/presence-x/users", &[], "", NOW),
                String::new(),
                NOW,
                Ok(()),
            ),
            // Replayed: signed 601 s before now.
            (
                "POST",
                "/apps/3/events",
                signed("POST", "/apps/3/events", &[], ev, NOW - 601),
                ev.into(),
                NOW,
                Err(401),
            ),
            // Body swapped after signing.
            (
                "POST",
                "/apps/3/events",
                signed("POST", "/apps/3/events", &[], ev, NOW),
                ev.replace("foo", "bar"),
                NOW,
                Err(401),
            ),
            // Another app's path with this app's key.
            (
                "POST",
                "/apps/4/events",
                signed("POST", "/apps/4/events", &[], ev, NOW),
                ev.into(),
                NOW,
                Err(401),
            ),
            (
                "POST",
                "/apps/3/events",
                signed("POST", "/apps/3/events", &[], &big, NOW),
                big.clone(),
                NOW,
                Err(413),
            ),
            (
                "POST",
                "/apps/3/events",
                signed("POST", "/apps/3/events", &[], "{", NOW),
                "{".into(),
                NOW,
                Err(400),
            ),
            (
                "GET",
                "/apps/3/events",
                signed("GET", "/apps/3/events", &[], "", NOW),
                String::new(),
                NOW,
                Err(405),
            ),
            (
                "GET",
                "/apps/3/nope",
                signed("GET", "/apps/3/nope", &[], "", NOW),
                String::new(),
                NOW,
                Err(404),
            ),
            ("GET", "/nope", String::new(), String::new(), NOW, Err(404)),
            (
                "GET",
                "/apps/3/channels",
                "a=%zz".into(),
                String::new(),
                NOW,
                Err(400),
            ),
            (
                "GET",
                "/apps/3/channels",
                String::new(),
                String::new(),
                NOW,
                Err(401),
            ),
        ];
        for (method, path, query, body, now, want) in cases {
            let got = run(method, path, &query, &body, now)
                .map(|_| ())
                .map_err(|e| {
                    let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
                    assert!(v["error"].is_string());
                    e.status()
                });
            assert_eq!(got, want, "{method} {path}?{query}");
        }
    }

    #[test]
    fn php_style_encoded_query_verifies() {
        // pusher-http-php signs raw values and Guzzle sends them encoded.
        let params = [
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("info", "user_count,subscription_count"),
        ];
        let sig = signature::sign_request(SECRET, "GET", "/apps/3/channels/presence-x", &params);
        let q = format!(
            "auth_key={KEY}&auth_timestamp=1353088179&auth_version=1.0\
&info=user_count%2Csubscription_count&auth_signature={sig}"
        );
        let req = run("GET", "/apps/3/channels/presence-x", &q, "", NOW).unwrap();
        assert_eq!(
            req,
            ApiRequest::Channel {
                app_id: "3".into(),
                channel: "presence-x".into(),
                info: InfoFields {
                    user_count: true,
                    subscription_count: true
                },
            }
        );
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let q = signed("GET", "/apps/3/events", &[], "", NOW);
        let err = run("GET", "/apps/3/events", &q, "", NOW).unwrap_err();
        assert_eq!((err.status(), err.allow()), (405, Some("POST")));
    }

    #[test]
    fn fuzz_entry_survives_seeds() {
        let seeds: &[&[u8]] = &[
            b"",
            b"\x01/apps/3/events\nauth_key=k\n{\"name\":\"e\",\"channel\":\"c\",\"data\":\"d\"}",
            b"\x00/apps/3/channels\nfilter_by_prefix=presence-&info=user_count\n",
            b"\x00/apps/3/channels/presence-x/users\n\n",
            b"\x01/apps/3/batch_events\n\n{\"batch\":[{}]}",
            b"\x01/apps/3/users/u/terminate_connections\n%\n{}",
            b"\x02/apps/\xff/events\n\xff\n\xff",
            b"\x01/apps/3/events\n\n{\"name\":\"e\",\"channels\":[[[[[[[[]]]]]]]],\"data\":1}",
        ];
        for seed in seeds {
            fuzz_api_request(seed);
        }
    }

    /// Stable Rust has no cargo-fuzz here, so mutate seeds with a fixed xorshift for a while.
    #[test]
    fn fuzz_entry_survives_mutated_requests() {
        let ev = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let mut seed =
            b"\x01/apps/3/events\nauth_key=k&auth_timestamp=0&auth_version=1.0\n".to_vec();
        seed.extend_from_slice(ev);
        let alphabet = b"/\n&=%+,.;{}[]\":0123456789abcAZ \xff";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut input = seed.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % input.len();
                let byte = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 => input[at] = byte,
                    1 => input.insert(at, byte),
                    _ => {
                        input.remove(at);
                    }
                }
                if input.is_empty() {
                    input.push(0);
                }
            }
            fuzz_api_request(&input);
        }
    }
}
