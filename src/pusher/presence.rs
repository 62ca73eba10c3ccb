//! Presence channel members: who is in one channel, counting sockets per user so that a user
//! with several tabs is one member. Never sends anything: it says what to announce.
//!
//! Pusher protocol (presence channels): `member_added` goes out when a user's first socket
//! joins, `member_removed` when the last one leaves; `subscription_succeeded` carries
//! `{"presence":{"ids":[..],"hash":{id: info},"count":n}}`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::pusher::protocol;

/// A member as declared by signed `channel_data`, with `user_id` normalized to a string.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceMember {
    pub user_id: String,
    pub user_info: Value,
}

/// What to broadcast to the other subscribers when a user's first socket joins.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberAdded {
    pub user_id: String,
    pub user_info: Value,
}

impl MemberAdded {
    pub fn to_frame(&self, channel: &str) -> String {
        protocol::member_added(channel, &self.user_id, &self.user_info)
    }
}

/// What to broadcast to the remaining subscribers when a user's last socket leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRemoved {
    pub user_id: String,
}

impl MemberRemoved {
    pub fn to_frame(&self, channel: &str) -> String {
        protocol::member_removed(channel, &self.user_id)
    }
}

/// Why a presence join was refused; each becomes a `pusher:subscription_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("channel_data is not a JSON object")]
    InvalidChannelData,
    #[error("channel_data has no user_id")]
    MissingUserId,
    #[error("user_id must be a non-empty string or an integer")]
    InvalidUserId,
    #[error("user_info is {seen} bytes, the limit is {limit}")]
    UserInfoTooLarge { limit: usize, seen: usize },
    #[error("presence channel has {seen} members, the limit is {limit}")]
    TooManyMembers { limit: usize, seen: usize },
    #[error("socket is already a member of this channel")]
    AlreadyJoined,
}

impl PresenceError {
    /// The `type` and `status` of the `pusher:subscription_error` this error becomes.
    pub fn subscription_error(&self) -> (&'static str, u16) {
        match self {
            PresenceError::TooManyMembers { .. } => ("LimitReached", 4100),
            PresenceError::UserInfoTooLarge { .. } => ("LimitReached", 413),
            _ => ("InvalidChannelData", 400),
        }
    }
}

/// Parses the signed `channel_data` string of a presence subscribe.
///
/// Pusher protocol: `{"user_id": .., "user_info": ..}`; `user_info` is optional. An integer
/// `user_id` (Laravel sends them) is normalized to its decimal string, so `10` and `"10"` are
/// the same member.
pub fn parse_channel_data(
    channel_data: &str,
    user_info_bytes_max: usize,
) -> Result<PresenceMember, PresenceError> {
    let Ok(Value::Object(mut data)) = serde_json::from_str::<Value>(channel_data) else {
        return Err(PresenceError::InvalidChannelData);
    };
    let user_id = data.remove("user_id").ok_or(PresenceError::MissingUserId)?;
    let user_id = normalize_user_id(&user_id).ok_or(PresenceError::InvalidUserId)?;
    let user_info = data.remove("user_info").unwrap_or(Value::Null);
    let seen = serde_json::to_string(&user_info).map_or(usize::MAX, |s| s.len());
    if seen > user_info_bytes_max {
        return Err(PresenceError::UserInfoTooLarge {
            limit: user_info_bytes_max,
            seen,
        });
    }
    Ok(PresenceMember { user_id, user_info })
}

/// A JSON integer becomes its decimal string; a non-empty string is kept; anything else
/// (floats, empty strings, objects) is refused.
pub fn normalize_user_id(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// The members of one presence channel, keyed by any socket handle `S` (a connection id).
#[derive(Debug, Clone)]
pub struct PresenceChannel<S> {
    /// INVARIANT: every member's `socket_count` equals the number of `sockets` entries that
    /// name it, and is at least 1.
    members: BTreeMap<String, Member>,
    sockets: HashMap<S, String>,
}

#[derive(Debug, Clone)]
struct Member {
    user_info: Value,
    socket_count: u32,
}

impl<S: Eq + Hash + Clone> PresenceChannel<S> {
    pub fn new() -> Self {
        PresenceChannel {
            members: BTreeMap::new(),
            sockets: HashMap::new(),
        }
    }

    /// Adds a socket as `member`. Returns `Some` only for the user's first socket: that is
    /// when the others must hear `member_added`. A new user past `members_max` is refused;
    /// another socket of a present user is not (it adds no member).
    pub fn join(
        &mut self,
        socket: S,
        member: PresenceMember,
        members_max: usize,
    ) -> Result<Option<MemberAdded>, PresenceError> {
        if self.sockets.contains_key(&socket) {
            return Err(PresenceError::AlreadyJoined);
        }
        if let Some(present) = self.members.get_mut(&member.user_id) {
            present.socket_count += 1;
            self.sockets.insert(socket, member.user_id);
            return Ok(None);
        }
        if self.members.len() >= members_max {
            return Err(PresenceError::TooManyMembers {
                limit: members_max,
                seen: self.members.len(),
            });
        }
        let added = MemberAdded {
            user_id: member.user_id.clone(),
            user_info: member.user_info,
        };
        self.members.insert(
            member.user_id.clone(),
            Member {
                user_info: added.user_info.clone(),
                socket_count: 1,
            },
        );
        self.sockets.insert(socket, member.user_id);
        Ok(Some(added))
    }

    /// Removes a socket. Returns `Some` only when it was the user's last socket.
    pub fn leave(&mut self, socket: &S) -> Option<MemberRemoved> {
        let user_id = self.sockets.remove(socket)?;
        let member = self.members.get_mut(&user_id);
        debug_assert!(member.is_some(), "a socket names a member that is gone");
        let member = member?;
        member.socket_count -= 1;
        if member.socket_count > 0 {
            return None;
        }
        self.members.remove(&user_id);
        Some(MemberRemoved { user_id })
    }

    /// The user a socket joined as.
    pub fn user_of(&self, socket: &S) -> Option<&str> {
        self.sockets.get(socket).map(String::as_str)
    }

    pub fn contains_user(&self, user_id: &str) -> bool {
        self.members.contains_key(user_id)
    }

    /// Distinct users.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Subscribed sockets (a user with two tabs counts twice).
    pub fn socket_count(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The data of `subscription_succeeded`, members in user-id order.
    pub fn snapshot(&self) -> PresenceSnapshot<'_> {
        let hash: Map<String, Value> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.user_info.clone()))
            .collect();
        PresenceSnapshot {
            presence: PresenceData {
                ids: self.members.keys().map(String::as_str).collect(),
                hash,
                count: self.members.len(),
            },
        }
    }

    /// The `pusher_internal:subscription_succeeded` frame for a socket that just joined.
    pub fn subscription_succeeded(&self, channel: &str) -> String {
        protocol::subscription_succeeded_with(channel, &self.snapshot())
    }
}

impl<S: Eq + Hash + Clone> Default for PresenceChannel<S> {
    fn default() -> Self {
        Self::new()
    }
}

/// `{"presence":{"ids":[..],"hash":{..},"count":n}}`.
#[derive(Debug, Clone, Serialize)]
pub struct PresenceSnapshot<'a> {
    pub presence: PresenceData<'a>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PresenceData<'a> {
    pub ids: Vec<&'a str>,
    pub hash: Map<String, Value>,
    pub count: usize,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn member(id: &str) -> PresenceMember {
        PresenceMember {
            user_id: id.into(),
            user_info: json!({"name": id}),
        }
    }

    #[test]
    fn channel_data_parses_and_normalizes_user_id() {
        let cases: Vec<(&str, Result<PresenceMember, PresenceError>)> = vec![
            (
                r#"{"user_id":10,"user_info":{"name":"M"}}"#,
                Ok(PresenceMember {
                    user_id: "10".into(),
                    user_info: json!({"name": "M"}),
                }),
            ),
            (
                r#"{"user_id":"10"}"#,
                Ok(PresenceMember {
                    user_id: "10".into(),
                    user_info: Value::Null,
                }),
            ),
            (
                r#"{"user_id":-3}"#,
                Ok(PresenceMember {
                    user_id: "-3".into(),
                    user_info: Value::Null,
                }),
            ),
            (r#"{"user_id":1.5}"#, Err(PresenceError::InvalidUserId)),
            (r#"{"user_id":""}"#, Err(PresenceError::InvalidUserId)),
            (r#"{"user_id":null}"#, Err(PresenceError::InvalidUserId)),
            (r#"{"user_id":{"a":1}}"#, Err(PresenceError::InvalidUserId)),
            (r#"{"user_id":true}"#, Err(PresenceError::InvalidUserId)),
            (r#"{"user_info":{}}"#, Err(PresenceError::MissingUserId)),
            ("[]", Err(PresenceError::InvalidChannelData)),
            ("not json", Err(PresenceError::InvalidChannelData)),
            ("", Err(PresenceError::InvalidChannelData)),
            (
                r#"{"user_id":1,"user_info":"0123456789a"}"#,
                Err(PresenceError::UserInfoTooLarge {
                    limit: 12,
                    seen: 13,
                }),
            ),
        ];
        for (data, want) in cases {
            // A 12-byte user_info limit: small enough that one case crosses it.
            assert_eq!(parse_channel_data(data, 12), want, "{data}");
        }
    }

    #[test]
    fn member_added_only_for_a_users_first_socket_and_removed_only_for_the_last() {
        let mut channel = PresenceChannel::<u32>::new();
        assert_eq!(
            channel.join(1, member("a"), 100),
            Ok(Some(MemberAdded {
                user_id: "a".into(),
                user_info: json!({"name": "a"})
            }))
        );
        assert_eq!(channel.join(2, member("a"), 100), Ok(None));
        assert_eq!(channel.member_count(), 1);
        assert_eq!(channel.socket_count(), 2);
        assert_eq!(channel.user_of(&2), Some("a"));
        assert_eq!(channel.leave(&1), None);
        assert!(channel.contains_user("a"));
        assert_eq!(
            channel.leave(&2),
            Some(MemberRemoved {
                user_id: "a".into()
            })
        );
        assert!(channel.is_empty());
        assert_eq!(channel.leave(&2), None);
    }

    #[test]
    fn a_socket_cannot_join_twice() {
        let mut channel = PresenceChannel::<u32>::new();
        channel.join(1, member("a"), 100).unwrap();
        assert_eq!(
            channel.join(1, member("b"), 100),
            Err(PresenceError::AlreadyJoined)
        );
        assert_eq!(channel.member_count(), 1);
    }

    #[test]
    fn members_max_refuses_new_users_but_not_more_tabs_of_present_ones() {
        let mut channel = PresenceChannel::<u32>::new();
        channel.join(1, member("a"), 2).unwrap();
        channel.join(2, member("b"), 2).unwrap();
        assert_eq!(
            channel.join(3, member("c"), 2),
            Err(PresenceError::TooManyMembers { limit: 2, seen: 2 })
        );
        assert_eq!(channel.join(4, member("a"), 2), Ok(None));
        assert_eq!(channel.user_of(&3), None);
    }

    #[test]
    fn subscription_succeeded_lists_every_member_once() {
        let mut channel = PresenceChannel::<u32>::new();
        channel.join(1, member("b"), 100).unwrap();
        channel.join(2, member("a"), 100).unwrap();
        channel.join(3, member("a"), 100).unwrap();
        assert_eq!(
            channel.subscription_succeeded("presence-x"),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-x","data":"{\"presence\":{\"ids\":[\"a\",\"b\"],\"hash\":{\"a\":{\"name\":\"a\"},\"b\":{\"name\":\"b\"}},\"count\":2}}"}"#
        );
    }

    #[test]
    fn member_frames_name_the_channel() {
        let added = MemberAdded {
            user_id: "1".into(),
            user_info: Value::Null,
        };
        assert_eq!(
            added.to_frame("presence-x"),
            r#"{"event":"pusher_internal:member_added","channel":"presence-x","data":"{\"user_id\":\"1\",\"user_info\":null}"}"#
        );
        let removed = MemberRemoved {
            user_id: "1".into(),
        };
        assert_eq!(
            removed.to_frame("presence-x"),
            r#"{"event":"pusher_internal:member_removed","channel":"presence-x","data":"{\"user_id\":\"1\"}"}"#
        );
    }
}
