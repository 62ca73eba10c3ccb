//! JSON bodies of successful HTTP API answers (status 200); pure builders that know nothing of
//! channel state: the caller passes the counts it looked up.
//!
//! Shapes follow the Pusher HTTP API reference. Keys come out sorted (serde_json's map is a
//! BTreeMap here), so bodies are deterministic.

use serde_json::{Map, Value, json};

/// Counts for one channel; `None` leaves the attribute out (not asked for, or not applicable:
/// `user_count` exists for presence channels only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    pub user_count: Option<u64>,
    pub subscription_count: Option<u64>,
}

/// `{}`: the answer to a trigger without `info`, to `batch_events` without `info`, and to
/// `terminate_connections`.
pub fn empty() -> String {
    "{}".to_string()
}

/// `POST /events` with `info`: `{"channels":{"<name>":{"user_count":2,...}}}`.
pub fn trigger_with_info<'a>(
    channels: impl IntoIterator<Item = (&'a str, ChannelCounts)>,
) -> String {
    json!({ "channels": channels_map(channels) }).to_string()
}

/// `POST /batch_events` with `info`: `{"batch":[{...},{}]}`, one object per event in request
/// order, holding the counts of that event's channel.
pub fn batch_with_info(events: impl IntoIterator<Item = ChannelCounts>) -> String {
    let batch: Vec<Value> = events.into_iter().map(counts_object).collect();
    json!({ "batch": batch }).to_string()
}

/// `GET /channels`: `{"channels":{"presence-x":{"user_count":2},"public":{}}}`.
pub fn channels_list<'a>(channels: impl IntoIterator<Item = (&'a str, ChannelCounts)>) -> String {
    json!({ "channels": channels_map(channels) }).to_string()
}

/// `GET /channels/{name}`: `{"occupied":true,"subscription_count":3,"user_count":2}`.
pub fn channel_info(occupied: bool, counts: ChannelCounts) -> String {
    let mut object = counts_object(counts);
    if let Value::Object(map) = &mut object {
        map.insert("occupied".to_string(), Value::Bool(occupied));
    }
    object.to_string()
}

/// `GET /channels/{name}/users`: `{"users":[{"id":"1"},{"id":"2"}]}`.
pub fn users<'a>(user_ids: impl IntoIterator<Item = &'a str>) -> String {
    let users: Vec<Value> = user_ids.into_iter().map(|id| json!({ "id": id })).collect();
    json!({ "users": users }).to_string()
}

fn channels_map<'a>(channels: impl IntoIterator<Item = (&'a str, ChannelCounts)>) -> Value {
    let map: Map<String, Value> = channels
        .into_iter()
        .map(|(name, counts)| (name.to_string(), counts_object(counts)))
        .collect();
    Value::Object(map)
}

fn counts_object(counts: ChannelCounts) -> Value {
    let mut map = Map::new();
    if let Some(n) = counts.user_count {
        map.insert("user_count".to_string(), n.into());
    }
    if let Some(n) = counts.subscription_count {
        map.insert("subscription_count".to_string(), n.into());
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn bodies_have_the_documented_shapes() {
        let both = ChannelCounts {
            user_count: Some(2),
            subscription_count: Some(3),
        };
        let users_only = ChannelCounts {
            user_count: Some(2),
            subscription_count: None,
        };
        let cases: Vec<(String, Value)> = vec![
            (empty(), json!({})),
            (
                trigger_with_info([("presence-x", both), ("public", ChannelCounts::default())]),
                json!({"channels":{"presence-x":{"user_count":2,"subscription_count":3},"public":{}}}),
            ),
            (
                batch_with_info([users_only, ChannelCounts::default()]),
                json!({"batch":[{"user_count":2},{}]}),
            ),
            (
                channels_list([("presence-x", users_only)]),
                json!({"channels":{"presence-x":{"user_count":2}}}),
            ),
            (channels_list([]), json!({"channels":{}})),
            (
                channel_info(true, both),
                json!({"occupied":true,"subscription_count":3,"user_count":2}),
            ),
            (
                channel_info(false, ChannelCounts::default()),
                json!({"occupied":false}),
            ),
            (users(["1", "2"]), json!({"users":[{"id":"1"},{"id":"2"}]})),
            (users([]), json!({"users":[]})),
        ];
        for (body, want) in cases {
            assert_eq!(parsed(&body), want, "{body}");
        }
    }

    #[test]
    fn channel_info_text_is_deterministic() {
        let counts = ChannelCounts {
            user_count: Some(2),
            subscription_count: Some(3),
        };
        assert_eq!(
            channel_info(true, counts),
            r#"{"occupied":true,"subscription_count":3,"user_count":2}"#
        );
    }

    #[test]
    fn names_needing_escapes_stay_valid_json() {
        let body = users(["a\"b\\c"]);
        assert_eq!(parsed(&body)["users"][0]["id"], "a\"b\\c");
    }
}
