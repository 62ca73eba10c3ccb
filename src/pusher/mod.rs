//! Pusher Channels protocol v7, sans-IO: apps, channels, signatures, frames, presence and the
//! per-connection session. Never touches a socket, a clock or `unsafe`.
//!
//! - [`app`]: `App` (credentials and limits, TOML `[[apps]]`) and `Apps` (lookup by key and id).
//! - [`path`]: `/app/{key}?protocol=7` and admission (close codes 4001-4009).
//! - [`channel`]: channel kinds from name prefixes, name validation.
//! - [`auth`]: HMAC-SHA256 auth strings for private/presence channels and user sign-in.
//! - [`protocol`]: client frame parsing and server frame writing, the error-code table.
//! - [`presence`]: members of one presence channel, counted per socket.
//! - [`session`]: one connection's state machine; returns `Action`s for the shard.

pub mod app;
pub mod auth;
pub mod channel;
pub mod path;
pub mod presence;
pub mod protocol;
pub mod session;

/// Fuzz entry: any bytes, as one frame and as newline-separated frames fed to a session, must
/// produce well-formed server frames and never panic.
#[cfg(any(test, fuzzing))]
pub fn fuzz_client_message(data: &[u8]) {
    use std::sync::Arc;

    use session::{Action, Session};

    let text = String::from_utf8_lossy(data);
    let _ = protocol::parse_client_message(&text, usize::MAX);

    let mut session = Session::new(Arc::new(app::App::default_dev()), "1.1".to_owned());
    let mut registry = presence::PresenceChannel::<u32>::new();
    let mut actions = session.handle_open(0);
    for (index, line) in text.split('\n').enumerate() {
        let now_ms = index as u64 * 50;
        actions.extend(session.handle_text(line, now_ms));
        actions.extend(session.handle_timeout(now_ms));
    }
    actions.extend(session.handle_timeout(u64::MAX / 2));
    actions.extend(session.handle_close());
    let mut index = 0;
    while let Some(action) = actions.get(index).cloned() {
        index += 1;
        match action {
            Action::Send(frame) | Action::Broadcast { frame, .. } => {
                let frame: serde_json::Value =
                    serde_json::from_str(&frame).expect("server frames are JSON");
                assert!(frame["event"].is_string(), "server frames name their event");
            }
            Action::ClientEvent { frame, event, .. } => {
                assert!(event.starts_with("client-"));
                let _: serde_json::Value = serde_json::from_str(&frame).expect("JSON");
            }
            Action::PresenceJoin { channel, member } => {
                actions.extend(session.handle_presence_join(&mut registry, 1, &channel, member));
            }
            Action::Unsubscribe { channel, kind } if kind.is_presence() => {
                actions.extend(session::presence_leave(&mut registry, &1, &channel));
            }
            Action::Close { code, reason } => {
                assert!((4000..5000).contains(&code) && reason.len() <= 123);
            }
            Action::Subscribe { .. } | Action::Unsubscribe { .. } | Action::SignedIn { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn seeds() -> Vec<String> {
        let data = r#"{"user_id":"u","user_info":{"name":"n"}}"#;
        let presence_auth =
            auth::channel_auth("app-key", "app-secret", "1.1", "presence-p", Some(data));
        let private_auth = auth::channel_auth("app-key", "app-secret", "1.1", "private-a", None);
        let user = r#"{"id":"1"}"#;
        let user_auth = auth::user_auth("app-key", "app-secret", "1.1", user);
        vec![
            r#"{"event":"pusher:ping","data":{}}"#.to_owned(),
            r#"{"event":"pusher:subscribe","data":{"channel":"news"}}"#.to_owned(),
            serde_json::json!({"event":"pusher:subscribe","data":{"channel":"private-a","auth":private_auth}}).to_string(),
            serde_json::json!({"event":"pusher:subscribe","data":{"channel":"presence-p","auth":presence_auth,"channel_data":data}}).to_string(),
            serde_json::json!({"event":"pusher:signin","data":{"auth":user_auth,"user_data":user}}).to_string(),
            r#"{"event":"client-x","channel":"private-a","data":{"k":[1,2,{"z":null}]}}"#.to_owned(),
            r#"{"event":"client-x","channel":"presence-p","data":"s"}"#.to_owned(),
            r#"{"event":"pusher:unsubscribe","data":{"channel":"presence-p"}}"#.to_owned(),
        ]
    }

    #[test]
    fn seed_frames_drive_every_path_without_panicking() {
        fuzz_client_message(seeds().join("\n").as_bytes());
    }

    #[test]
    fn random_and_mutated_frames_never_panic() {
        let seeds = seeds();
        let alphabet = b"{}[]\":,\\ event data channel pusher:subscribe client- private- presence- 0123456789.eE-+truefalsenull\n\xff\x00";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3_000 {
            let mut input: Vec<u8> = match rng.below(3) {
                0 => (0..rng.below(200))
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect(),
                1 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                _ => seeds.join("\n").into_bytes(),
            };
            for _ in 0..rng.below(8) {
                if input.is_empty() {
                    break;
                }
                let at = rng.below(input.len());
                match rng.below(3) {
                    0 => input[at] = alphabet[rng.below(alphabet.len())],
                    1 => {
                        input.remove(at);
                    }
                    _ => input.truncate(at),
                }
            }
            fuzz_client_message(&input);
        }
    }
}
