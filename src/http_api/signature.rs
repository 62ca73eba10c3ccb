//! Verification of Pusher's signed HTTP API requests (auth_version 1.0); sans-IO: the caller
//! passes `now_s`, and nothing here reads a clock or logs a secret.
//!
//! Pusher HTTP API reference, "Generating authentication signatures": `auth_signature` is the hex
//! HMAC-SHA256, keyed by the app secret, of `METHOD\nPATH\nQUERY`, where QUERY is every query
//! parameter except `auth_signature`, keys lower-cased, sorted by key, joined as `k=v` with `&`,
//! and NOT url-escaped. `body_md5` is the hex MD5 of the body and is required when there is one;
//! `auth_timestamp` must be within 600 s of the server's clock.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::http_api::query::Query;

/// Largest accepted difference between `auth_timestamp` and `now_s`, either way, in seconds.
/// Pusher HTTP API reference: "auth_timestamp ... must be within 600 seconds of the current time".
/// Past it: [`SignatureError::Expired`] (401), so a captured request cannot be replayed later.
pub const AUTH_TIMESTAMP_SKEW_MAX_S: u64 = 600;

/// Why a request's signature was refused. Every variant maps to HTTP 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required auth parameter is absent.
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    /// `auth_key` names no key of this app.
    #[error("unknown auth_key")]
    UnknownKey,
    /// `auth_version` is not `1.0`, the only version Pusher defines.
    #[error("unsupported auth_version")]
    UnsupportedAuthVersion,
    /// `auth_timestamp` is not a decimal number of seconds.
    #[error("auth_timestamp is not a number")]
    InvalidTimestamp,
    /// `auth_timestamp` is more than [`AUTH_TIMESTAMP_SKEW_MAX_S`] away from now.
    #[error("auth_timestamp {timestamp_s} is more than 600 s away from server time {now_s}")]
    Expired { timestamp_s: u64, now_s: u64 },
    /// `body_md5` does not match the MD5 of the body received.
    #[error("body_md5 does not match the body")]
    BadBodyMd5,
    /// `auth_signature` does not match the string to sign.
    #[error("invalid auth_signature")]
    BadSignature,
}

impl SignatureError {
    /// The HTTP status for this error: always 401 (Pusher HTTP API reference: "401 Authentication
    /// error: response body will contain an explanation").
    pub fn status(&self) -> u16 {
        401
    }

    /// The response body: `{"error":"<explanation>"}`.
    pub fn body(&self) -> String {
        crate::http_api::error_body(&self.to_string())
    }
}

/// Checks the auth parameters of one request.
///
/// `method` is the request method (compared upper-cased), `path` the request path exactly as
/// received, without the query string (the SDKs sign the path they put in the URL). `query` is the
/// parsed query string, `body` the raw body bytes. `secret_for_key` maps an `auth_key` to the
/// app's secret, or `None` when the key is unknown.
///
/// Checks run in a fixed order: required params, key, version, timestamp, `body_md5`, signature.
/// The signature is compared in constant time.
pub fn verify_request<'s>(
    method: &str,
    path: &str,
    query: &Query,
    body: &[u8],
    now_s: u64,
    secret_for_key: impl FnOnce(&str) -> Option<&'s str>,
) -> Result<(), SignatureError> {
    let key = query
        .value("auth_key")
        .ok_or(SignatureError::Missing("auth_key"))?;
    let timestamp = query
        .value("auth_timestamp")
        .ok_or(SignatureError::Missing("auth_timestamp"))?;
    let version = query
        .value("auth_version")
        .ok_or(SignatureError::Missing("auth_version"))?;
    let signature = query
        .value("auth_signature")
        .ok_or(SignatureError::Missing("auth_signature"))?;
    let body_md5 = query.value("body_md5");
    if !body.is_empty() && body_md5.is_none() {
        return Err(SignatureError::Missing("body_md5"));
    }

    let secret = secret_for_key(key).ok_or(SignatureError::UnknownKey)?;
    if version != "1.0" {
        return Err(SignatureError::UnsupportedAuthVersion);
    }
    let timestamp_s = parse_seconds(timestamp).ok_or(SignatureError::InvalidTimestamp)?;
    if timestamp_s.abs_diff(now_s) > AUTH_TIMESTAMP_SKEW_MAX_S {
        return Err(SignatureError::Expired { timestamp_s, now_s });
    }
    // A body_md5 sent with an empty body is checked too: it is signed, so it must be true.
    if let Some(sent) = body_md5
        && !sent.eq_ignore_ascii_case(&body_md5_hex(body))
    {
        return Err(SignatureError::BadBodyMd5);
    }

    let sent = decode_signature(signature).ok_or(SignatureError::BadSignature)?;
    let mut mac = new_mac(secret);
    mac.update(string_to_sign(method, path, query.iter()).as_bytes());
    // Hmac::verify_slice compares in constant time (subtle::ConstantTimeEq).
    mac.verify_slice(&sent)
        .map_err(|_| SignatureError::BadSignature)
}

/// `METHOD\nPATH\nQUERY` as Pusher defines it: `auth_signature` left out, keys lower-cased, pairs
/// sorted by key (byte order), joined `k=v` with `&`, values unescaped.
pub fn string_to_sign<'a>(
    method: &str,
    path: &str,
    params: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, _)| k != "auth_signature")
        .collect();
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(method.len() + path.len() + 256);
    out.push_str(&method.to_ascii_uppercase());
    out.push('\n');
    out.push_str(path);
    out.push('\n');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Hex HMAC-SHA256 of `message` keyed by `secret`: the signature of a request (over
/// [`string_to_sign`]) and of a webhook body alike.
pub fn hmac_sha256_hex(secret: &str, message: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// Hex MD5 of a request body, as sent in `body_md5`.
pub fn body_md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Signs a request the way the SDKs do; for tests, the bench client and integration tests.
/// Returns the `auth_signature` value for `params` (which must not contain it).
pub fn sign_request(secret: &str, method: &str, path: &str, params: &[(&str, &str)]) -> String {
    let to_sign = string_to_sign(method, path, params.iter().copied());
    hmac_sha256_hex(secret, to_sign.as_bytes())
}

fn new_mac(secret: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length (RFC 2104 §2), so new_from_slice cannot fail.
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

/// A SHA-256 MAC is 32 bytes; anything else (or non-hex) cannot match.
fn decode_signature(hex_sig: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_sig, &mut out).ok()?;
    Some(out)
}

/// Decimal seconds, at most 20 digits, no sign or spaces.
fn parse_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pusher HTTP API reference, "Worked authentication example".
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const BODY: &[u8] = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    const BODY_MD5: &str = "ec365a775a4cd0599faeb73354201b6f";
    const TIMESTAMP: u64 = 1353088179;
    const SIGNATURE: &str = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
    const QUERY: &str = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179\
&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f\
&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    fn secrets(key: &str) -> Option<&'static str> {
        (key == KEY).then_some(SECRET)
    }

    fn verify(
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
        now_s: u64,
    ) -> Result<(), SignatureError> {
        let q = Query::parse(query.as_bytes()).expect("test query parses");
        verify_request(method, path, &q, body, now_s, secrets)
    }

    #[test]
    fn worked_example_from_the_docs_matches() {
        assert_eq!(body_md5_hex(BODY), BODY_MD5);
        let params = [
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", BODY_MD5),
        ];
        assert_eq!(
            string_to_sign("POST", "/apps/3/events", params.iter().copied()),
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179\
&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            sign_request(SECRET, "POST", "/apps/3/events", &params),
            SIGNATURE
        );
        assert_eq!(
            verify("POST", "/apps/3/events", QUERY, BODY, TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn reordered_and_case_varied_params_verify() {
        let query = "AUTH_SIGNATURE=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c\
&Body_MD5=ec365a775a4cd0599faeb73354201b6f&auth_version=1.0\
&Auth_Timestamp=1353088179&auth_key=278d425bdf160c739803";
        assert_eq!(
            verify("post", "/apps/3/events", query, BODY, TIMESTAMP),
            Ok(())
        );
        // Upper-case hex in the signature decodes to the same bytes.
        let upper = QUERY.replace(SIGNATURE, &SIGNATURE.to_ascii_uppercase());
        assert_eq!(
            verify("POST", "/apps/3/events", &upper, BODY, TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn percent_encoded_values_verify_against_the_unencoded_signature() {
        // pusher-http-php signs `info=user_count,subscription_count` and Guzzle sends `%2C`;
        // pusher-http-node sends the raw comma. Both must verify.
        let params = [
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("filter_by_prefix", "presence-"),
            ("info", "user_count,subscription_count"),
        ];
        let sig = sign_request(SECRET, "GET", "/apps/3/channels", &params);
        let base = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
&filter_by_prefix=presence-";
        for info in [
            "user_count,subscription_count",
            "user_count%2Csubscription_count",
        ] {
            let q = format!("{base}&info={info}&auth_signature={sig}");
            assert_eq!(
                verify("GET", "/apps/3/channels", &q, b"", TIMESTAMP),
                Ok(()),
                "{info}"
            );
        }
    }

    #[test]
    fn timestamp_window_is_600_seconds_either_way() {
        let cases: &[(u64, bool)] = &[
            (TIMESTAMP, true),
            (TIMESTAMP + 600, true),
            (TIMESTAMP - 600, true),
            (TIMESTAMP + 601, false),
            (TIMESTAMP - 601, false),
            (TIMESTAMP + 86_400, false),
        ];
        for &(now_s, ok) in cases {
            let got = verify("POST", "/apps/3/events", QUERY, BODY, now_s);
            if ok {
                assert_eq!(got, Ok(()), "now {now_s}");
            } else {
                assert_eq!(
                    got,
                    Err(SignatureError::Expired {
                        timestamp_s: TIMESTAMP,
                        now_s
                    }),
                    "now {now_s}"
                );
            }
        }
    }

    #[test]
    fn refusals() {
        let drop = |name: &str| {
            QUERY
                .split('&')
                .filter(|p| !p.starts_with(name))
                .collect::<Vec<_>>()
                .join("&")
        };
        let tampered_body =
            br#"{"name":"foo","channels":["project-4"],"data":"{\"some\":\"data\"}"}"#;
        let cases: Vec<(String, &str, &[u8], SignatureError)> = vec![
            (
                drop("auth_key="),
                "/apps/3/events",
                BODY,
                SignatureError::Missing("auth_key"),
            ),
            (
                drop("auth_timestamp="),
                "/apps/3/events",
                BODY,
                SignatureError::Missing("auth_timestamp"),
            ),
            (
                drop("auth_version="),
                "/apps/3/events",
                BODY,
                SignatureError::Missing("auth_version"),
            ),
            (
                drop("auth_signature="),
                "/apps/3/events",
                BODY,
                SignatureError::Missing("auth_signature"),
            ),
            (
                drop("body_md5="),
                "/apps/3/events",
                BODY,
                SignatureError::Missing("body_md5"),
            ),
            (
                QUERY.replace(KEY, "0000"),
                "/apps/3/events",
                BODY,
                SignatureError::UnknownKey,
            ),
            (
                QUERY.replace("auth_version=1.0", "auth_version=2.0"),
                "/apps/3/events",
                BODY,
                SignatureError::UnsupportedAuthVersion,
            ),
            (
                QUERY.replace("1353088179", "-1353088179"),
                "/apps/3/events",
                BODY,
                SignatureError::InvalidTimestamp,
            ),
            (
                QUERY.replace("1353088179", "13e8"),
                "/apps/3/events",
                BODY,
                SignatureError::InvalidTimestamp,
            ),
            (
                QUERY.to_string(),
                "/apps/3/events",
                tampered_body,
                SignatureError::BadBodyMd5,
            ),
            (
                QUERY.to_string(),
                "/apps/3/events",
                b"",
                SignatureError::BadBodyMd5,
            ),
            (
                QUERY.to_string(),
                "/apps/4/events",
                BODY,
                SignatureError::BadSignature,
            ),
            (
                format!("{QUERY}&socket_id=1.1"),
                "/apps/3/events",
                BODY,
                SignatureError::BadSignature,
            ),
            (
                QUERY.replace(SIGNATURE, &SIGNATURE[..63]),
                "/apps/3/events",
                BODY,
                SignatureError::BadSignature,
            ),
            (
                QUERY.replace(SIGNATURE, "zz"),
                "/apps/3/events",
                BODY,
                SignatureError::BadSignature,
            ),
            (
                QUERY.replace("da4548", "da4549"),
                "/apps/3/events",
                BODY,
                SignatureError::BadSignature,
            ),
        ];
        for (query, path, body, want) in cases {
            assert_eq!(
                verify("POST", path, &query, body, TIMESTAMP),
                Err(want.clone()),
                "{query}"
            );
            assert_eq!(want.status(), 401);
        }
        // Same query, GET instead of POST: the method is signed.
        assert_eq!(
            verify("GET", "/apps/3/events", QUERY, BODY, TIMESTAMP),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn body_tampering_with_a_matching_md5_still_fails_the_signature() {
        let tampered = br#"{"name":"bar","channels":["project-3"],"data":"{}"}"#;
        let q = QUERY.replace(BODY_MD5, &body_md5_hex(tampered));
        assert_eq!(
            verify("POST", "/apps/3/events", &q, tampered, TIMESTAMP),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn error_body_is_json() {
        let body = SignatureError::BadSignature.body();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "invalid auth_signature");
    }
}
