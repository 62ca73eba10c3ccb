//! Pusher signatures: channel authorization and user sign-in, checked in constant time; never
//! sees a request or a clock.
//!
//! Pusher protocol (library auth reference, "auth signatures"): an auth string is
//! `<key>:<hex(HMAC-SHA256(secret, string_to_sign))>` where the string to sign is
//! `<socket_id>:<channel>` (private), `<socket_id>:<channel>:<channel_data>` (presence) or
//! `<socket_id>::user::<user_data>` (sign-in).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::pusher::app::App;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused. The variants say which rule was broken; none says how close a
/// guess was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("auth string has no ':' between key and signature")]
    MissingSeparator,
    #[error("auth string names another app's key")]
    KeyMismatch,
    #[error("signature is not 64 hex digits")]
    MalformedSignature,
    #[error("signature does not match")]
    InvalidSignature,
    #[error("socket_id is not of the form digits.digits")]
    InvalidSocketId,
}

/// `hex(HMAC-SHA256(secret, message))`, lower case.
pub fn sign(secret: &str, message: &str) -> String {
    hex::encode(mac(secret, message).finalize().into_bytes())
}

/// The auth string a server would hand a client for a private (`channel_data: None`) or
/// presence channel. Used by tests and by tooling; the server itself only verifies.
pub fn channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    format!(
        "{key}:{}",
        sign(
            secret,
            &channel_string_to_sign(socket_id, channel, channel_data)
        )
    )
}

/// The auth string for `pusher:signin`.
pub fn user_auth(key: &str, secret: &str, socket_id: &str, user_data: &str) -> String {
    format!(
        "{key}:{}",
        sign(secret, &user_string_to_sign(socket_id, user_data))
    )
}

/// Checks the `auth` field of a `pusher:subscribe` against `app`'s secret.
pub fn verify_channel_auth(
    app: &App,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> Result<(), AuthError> {
    verify(
        app,
        socket_id,
        auth,
        &channel_string_to_sign(socket_id, channel, channel_data),
    )
}

/// Checks the `auth` field of a `pusher:signin` against `app`'s secret.
pub fn verify_user_auth(
    app: &App,
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> Result<(), AuthError> {
    verify(
        app,
        socket_id,
        auth,
        &user_string_to_sign(socket_id, user_data),
    )
}

/// Pusher protocol: a socket id is two decimal numbers joined by a dot (`1234.1234`).
pub fn is_valid_socket_id(socket_id: &str) -> bool {
    let Some((a, b)) = socket_id.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(a) && digits(b)
}

/// Formats a socket id from two numbers (for example a shard-unique prefix and a counter).
pub fn socket_id(high: u64, low: u64) -> String {
    format!("{high}.{low}")
}

fn channel_string_to_sign(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

fn user_string_to_sign(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

fn mac(secret: &str, message: &str) -> HmacSha256 {
    // HMAC accepts keys of any length (RFC 2104 §2), so new_from_slice cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    mac
}

fn verify(app: &App, socket_id: &str, auth: &str, string_to_sign: &str) -> Result<(), AuthError> {
    if !is_valid_socket_id(socket_id) {
        return Err(AuthError::InvalidSocketId);
    }
    let (key, signature) = auth.split_once(':').ok_or(AuthError::MissingSeparator)?;
    // The key is public: comparing it in variable time leaks nothing.
    if key != app.key {
        return Err(AuthError::KeyMismatch);
    }
    let mut tag = [0u8; 32];
    hex::decode_to_slice(signature, &mut tag).map_err(|_| AuthError::MalformedSignature)?;
    mac(&app.secret, string_to_sign)
        .verify_slice(&tag)
        .map_err(|_| AuthError::InvalidSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pusher docs, "Generating authentication and authorization strings", worked example.
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const SOCKET: &str = "1234.1234";
    const PRESENCE_DATA: &str = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;

    fn docs_app() -> App {
        App {
            key: KEY.into(),
            secret: SECRET.into(),
            ..App::default_dev()
        }
    }

    #[test]
    fn private_signature_matches_the_pusher_docs_vector() {
        // The docs give this digest (Ruby OpenSSL::HMAC.hexdigest).
        assert_eq!(
            channel_auth(KEY, SECRET, SOCKET, "private-foobar", None),
            "278d425bdf160c739803:\
             58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn presence_signature_matches_an_independent_hmac() {
        // Cross-checked with Python's hmac/hashlib over the same string to sign.
        assert_eq!(
            channel_auth(KEY, SECRET, SOCKET, "presence-foobar", Some(PRESENCE_DATA)),
            "278d425bdf160c739803:\
             31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
    }

    #[test]
    fn user_signature_matches_an_independent_hmac() {
        // Docs example user_data {"id":"12345"}; cross-checked with Python's hmac.
        assert_eq!(
            user_auth(KEY, SECRET, SOCKET, r#"{"id":"12345"}"#),
            "278d425bdf160c739803:\
             4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        );
    }

    #[test]
    fn channel_auth_verification_outcomes() {
        let app = docs_app();
        let good = channel_auth(KEY, SECRET, SOCKET, "private-foobar", None);
        let upper = good.to_uppercase().replacen(&KEY.to_uppercase(), KEY, 1);
        let cases: Vec<(&str, &str, &str, Result<(), AuthError>)> = vec![
            (SOCKET, "private-foobar", &good, Ok(())),
            (SOCKET, "private-foobar", &upper, Ok(())),
            (
                SOCKET,
                "private-other",
                &good,
                Err(AuthError::InvalidSignature),
            ),
            (
                "1234.1235",
                "private-foobar",
                &good,
                Err(AuthError::InvalidSignature),
            ),
            (
                "1234",
                "private-foobar",
                &good,
                Err(AuthError::InvalidSocketId),
            ),
            (
                SOCKET,
                "private-foobar",
                "nocolon",
                Err(AuthError::MissingSeparator),
            ),
            (
                SOCKET,
                "private-foobar",
                "other:abcd",
                Err(AuthError::KeyMismatch),
            ),
            (
                SOCKET,
                "private-foobar",
                "278d425bdf160c739803:zz",
                Err(AuthError::MalformedSignature),
            ),
            (
                SOCKET,
                "private-foobar",
                "278d425bdf160c739803:",
                Err(AuthError::MalformedSignature),
            ),
            (
                SOCKET,
                "private-foobar",
                "278d425bdf160c739803:\u{e9}",
                Err(AuthError::MalformedSignature),
            ),
        ];
        for (socket, channel, auth, want) in cases {
            assert_eq!(
                verify_channel_auth(&app, socket, channel, None, auth),
                want,
                "{auth}"
            );
        }
    }

    #[test]
    fn presence_auth_covers_the_channel_data() {
        let app = docs_app();
        let auth = channel_auth(KEY, SECRET, SOCKET, "presence-foobar", Some(PRESENCE_DATA));
        assert_eq!(
            verify_channel_auth(&app, SOCKET, "presence-foobar", Some(PRESENCE_DATA), &auth),
            Ok(())
        );
        let forged = r#"{"user_id":11,"user_info":{"name":"Mr. Channels"}}"#;
        assert_eq!(
            verify_channel_auth(&app, SOCKET, "presence-foobar", Some(forged), &auth),
            Err(AuthError::InvalidSignature)
        );
    }

    #[test]
    fn user_auth_covers_the_user_data() {
        let app = docs_app();
        let auth = user_auth(KEY, SECRET, SOCKET, r#"{"id":"1"}"#);
        assert_eq!(
            verify_user_auth(&app, SOCKET, r#"{"id":"1"}"#, &auth),
            Ok(())
        );
        assert_eq!(
            verify_user_auth(&app, SOCKET, r#"{"id":"2"}"#, &auth),
            Err(AuthError::InvalidSignature)
        );
    }

    #[test]
    fn socket_ids_are_digits_dot_digits() {
        let cases = [
            ("1234.1234", true),
            ("0.0", true),
            (".1", false),
            ("1.", false),
            ("1.2.3", false),
            ("a.1", false),
            ("-1.2", false),
            ("", false),
            ("1 .2", false),
        ];
        for (id, ok) in cases {
            assert_eq!(is_valid_socket_id(id), ok, "{id:?}");
        }
        assert!(is_valid_socket_id(&socket_id(7, u64::MAX)));
    }
}
