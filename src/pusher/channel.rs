//! Pusher channel names: which kind a name denotes and whether it is well formed; never
//! tracks subscribers.

/// The kind of a channel, decided by its name's prefix alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Public,
    Private,
    Presence,
    /// End-to-end encrypted: the server relays ciphertext and never sees the shared secret.
    PrivateEncrypted,
    /// Public, and the last event is replayed to new subscribers (or `pusher:cache_miss`).
    Cache,
    PrivateCache,
    PresenceCache,
}

impl ChannelKind {
    /// Pusher protocol: the prefix decides the kind, longest prefix first
    /// (`private-encrypted-` and `private-cache-` before `private-`).
    pub fn from_name(name: &str) -> ChannelKind {
        // Order matters: every longer prefix starts with a shorter one below it.
        const PREFIXES: [(&str, ChannelKind); 6] = [
            ("private-encrypted-", ChannelKind::PrivateEncrypted),
            ("private-cache-", ChannelKind::PrivateCache),
            ("presence-cache-", ChannelKind::PresenceCache),
            ("private-", ChannelKind::Private),
            ("presence-", ChannelKind::Presence),
            ("cache-", ChannelKind::Cache),
        ];
        PREFIXES
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map_or(ChannelKind::Public, |&(_, kind)| kind)
    }

    /// Whether subscribing needs an `auth` signature.
    pub fn requires_auth(self) -> bool {
        !matches!(self, ChannelKind::Public | ChannelKind::Cache)
    }

    /// Whether subscribing needs `channel_data` and joins a member registry.
    pub fn is_presence(self) -> bool {
        matches!(self, ChannelKind::Presence | ChannelKind::PresenceCache)
    }

    /// Whether the last event is kept and replayed to new subscribers.
    pub fn is_cache(self) -> bool {
        matches!(
            self,
            ChannelKind::Cache | ChannelKind::PrivateCache | ChannelKind::PresenceCache
        )
    }

    /// Pusher protocol: client events are only for authenticated channels, and not for
    /// encrypted ones (pusher-js refuses them too: the server could not check the payload).
    pub fn allows_client_events(self) -> bool {
        self.requires_auth() && self != ChannelKind::PrivateEncrypted
    }
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {seen} bytes, the limit is {limit}")]
    TooLong { limit: usize, seen: usize },
    #[error("channel name has a character outside [A-Za-z0-9_\\-=@,.;]")]
    InvalidCharacter,
    /// A bare prefix such as `private-` names no channel.
    #[error("channel name is only a prefix")]
    OnlyPrefix,
}

/// Checks a client-supplied channel name and returns its kind.
///
/// Pusher protocol: names are 1..=164 (configurable) characters of `[A-Za-z0-9_\-=@,.;]`.
pub fn validate_channel_name(
    name: &str,
    name_bytes_max: usize,
) -> Result<ChannelKind, ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > name_bytes_max {
        return Err(ChannelNameError::TooLong {
            limit: name_bytes_max,
            seen: name.len(),
        });
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b);
    if !name.bytes().all(allowed) {
        return Err(ChannelNameError::InvalidCharacter);
    }
    let kind = ChannelKind::from_name(name);
    let prefix_bytes = match kind {
        ChannelKind::Public => 0,
        ChannelKind::Private => "private-".len(),
        ChannelKind::Presence => "presence-".len(),
        ChannelKind::PrivateEncrypted => "private-encrypted-".len(),
        ChannelKind::Cache => "cache-".len(),
        ChannelKind::PrivateCache => "private-cache-".len(),
        ChannelKind::PresenceCache => "presence-cache-".len(),
    };
    if name.len() == prefix_bytes && prefix_bytes > 0 {
        return Err(ChannelNameError::OnlyPrefix);
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_is_decided_by_the_longest_prefix() {
        let cases = [
            ("news", ChannelKind::Public),
            ("privatechat", ChannelKind::Public),
            ("private-chat", ChannelKind::Private),
            ("presence-room", ChannelKind::Presence),
            ("private-encrypted-x", ChannelKind::PrivateEncrypted),
            ("private-encrypted-cache-x", ChannelKind::PrivateEncrypted),
            ("cache-x", ChannelKind::Cache),
            ("private-cache-x", ChannelKind::PrivateCache),
            ("presence-cache-x", ChannelKind::PresenceCache),
            ("public-cache-x", ChannelKind::Public),
        ];
        for (name, kind) in cases {
            assert_eq!(ChannelKind::from_name(name), kind, "{name}");
        }
    }

    #[test]
    fn kind_properties_match_the_protocol() {
        use ChannelKind::*;
        // (kind, requires_auth, is_presence, is_cache, allows_client_events)
        let cases = [
            (Public, false, false, false, false),
            (Private, true, false, false, true),
            (Presence, true, true, false, true),
            (PrivateEncrypted, true, false, false, false),
            (Cache, false, false, true, false),
            (PrivateCache, true, false, true, true),
            (PresenceCache, true, true, true, true),
        ];
        for (kind, auth, presence, cache, client) in cases {
            assert_eq!(kind.requires_auth(), auth, "{kind:?}");
            assert_eq!(kind.is_presence(), presence, "{kind:?}");
            assert_eq!(kind.is_cache(), cache, "{kind:?}");
            assert_eq!(kind.allows_client_events(), client, "{kind:?}");
        }
    }

    #[test]
    fn names_are_validated_for_length_characters_and_bare_prefixes() {
        let long = "a".repeat(165);
        let max = "a".repeat(164);
        let cases: Vec<(&str, Result<ChannelKind, ChannelNameError>)> = vec![
            ("a", Ok(ChannelKind::Public)),
            ("A-z_0=9@,.;", Ok(ChannelKind::Public)),
            (&max, Ok(ChannelKind::Public)),
            ("", Err(ChannelNameError::Empty)),
            (
                &long,
                Err(ChannelNameError::TooLong {
                    limit: 164,
                    seen: 165,
                }),
            ),
            ("a b", Err(ChannelNameError::InvalidCharacter)),
            ("a/b", Err(ChannelNameError::InvalidCharacter)),
            ("#server-to-user-1", Err(ChannelNameError::InvalidCharacter)),
            ("caf\u{e9}", Err(ChannelNameError::InvalidCharacter)),
            ("a:b", Err(ChannelNameError::InvalidCharacter)),
            ("private-", Err(ChannelNameError::OnlyPrefix)),
            ("presence-cache-", Err(ChannelNameError::OnlyPrefix)),
            ("private-a", Ok(ChannelKind::Private)),
        ];
        for (name, want) in cases {
            assert_eq!(validate_channel_name(name, 164), want, "{name:?}");
        }
    }
}
