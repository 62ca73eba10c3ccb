//! Per-core publish/subscribe.
//!
//! - [`topic`]: a shard's registry of topics: local subscribers (compact, O(1) subscribe and
//!   unsubscribe) and which other shards have subscribers (interest).
//! - [`fanout`]: which subscribers get which published frames next, in bounded segments.
//! - [`mesh`]: bounded lock-free single-producer single-consumer rings, one per (source,
//!   destination) shard pair, carrying already-encoded frames and interest changes.
//!
//! The broker never touches sockets: the shard asks it where a frame goes and queues the sends.

pub mod cache;
pub mod fanout;
pub mod mesh;
pub mod topic;

/// Topic (and, later, channel) names: 1 to 164 characters of `[A-Za-z0-9_\-=@,.;]`, the Pusher
/// channel-name rule, so raw topics and Pusher channels share one namespace rule.
pub const TOPIC_NAME_BYTES_MAX: usize = 164;

/// True when `name` is a valid topic name.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOPIC_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_the_pusher_channel_rule() {
        for ok in [
            "a",
            "prices.EUR-USD",
            "private-x_y=z@w,v;u",
            &"n".repeat(164),
        ] {
            assert!(is_valid_topic_name(ok), "{ok}");
        }
        for bad in ["", "sp ace", "slash/", "émoji", "q?", &"n".repeat(165)] {
            assert!(!is_valid_topic_name(bad), "{bad}");
        }
    }
}
