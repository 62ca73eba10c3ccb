//! The last event of each Pusher cache channel, kept by every shard.
//!
//! Every shard holds its own copy, so a subscribe is answered at once and in order: the cached
//! event (or `pusher:cache_miss`) is queued right after `subscription_succeeded` and before any
//! later live event, and a live event is never also replayed. The publishing shard stores the
//! event and sends it to every other shard through the mesh; a shard takes what the mesh holds
//! before answering a subscribe, so an event published before the subscribe is seen.
//!
//! Shards receive the copies in no global order, so each entry keeps when it was published and
//! the newest wins.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long a cache channel keeps its last event (Pusher cache channels: 30 minutes).
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// Cache channels whose last event a shard keeps, over all apps. Hit: expired entries are swept;
/// if none, the event of a further cache channel is not kept (counted as refused) and its
/// subscribers get `pusher:cache_miss` until room returns. At 10 KiB per event this bounds each
/// shard's cache at about 640 MiB; real apps hold a handful of cache channels.
pub const CACHE_ENTRIES_MAX: usize = 65_536;

#[derive(Debug, Default)]
pub struct ChannelCache {
    entries: HashMap<Arc<str>, (Bytes, Instant)>,
    /// Events not kept because the cache was full.
    pub refused: u64,
}

impl ChannelCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `frame` (an encoded WebSocket frame) as `topic`'s last event, published at `at`,
    /// unless a newer one is already kept.
    pub fn set(&mut self, topic: &Arc<str>, frame: Bytes, at: Instant) {
        if let Some((_, kept)) = self.entries.get(topic)
            && *kept > at
        {
            return;
        }
        if !self.entries.contains_key(topic) && self.entries.len() >= CACHE_ENTRIES_MAX {
            self.sweep(Instant::now());
            if self.entries.len() >= CACHE_ENTRIES_MAX {
                self.refused += 1;
                return;
            }
        }
        self.entries.insert(Arc::clone(topic), (frame, at));
    }

    /// `topic`'s last event, if one was published within [`CACHE_TTL`] of `now`.
    pub fn get(&self, topic: &str, now: Instant) -> Option<Bytes> {
        self.entries
            .get(topic)
            .filter(|(_, at)| now.saturating_duration_since(*at) < CACHE_TTL)
            .map(|(frame, _)| frame.clone())
    }

    /// Forgets events older than [`CACHE_TTL`].
    pub fn sweep(&mut self, now: Instant) {
        self.entries
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < CACHE_TTL);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_event_wins_whatever_the_arrival_order() {
        let mut cache = ChannelCache::new();
        let topic: Arc<str> = Arc::from("0:cache-p");
        let early = Instant::now();
        let late = early + Duration::from_millis(1);
        assert_eq!(cache.get(&topic, late), None);
        cache.set(&topic, Bytes::from_static(b"new"), late);
        cache.set(&topic, Bytes::from_static(b"old"), early);
        assert_eq!(cache.get(&topic, late).as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn events_expire_after_the_ttl() {
        let mut cache = ChannelCache::new();
        let topic: Arc<str> = Arc::from("0:cache-p");
        let at = Instant::now();
        cache.set(&topic, Bytes::from_static(b"x"), at);
        assert!(
            cache
                .get(&topic, at + CACHE_TTL - Duration::from_secs(1))
                .is_some()
        );
        assert!(cache.get(&topic, at + CACHE_TTL).is_none());
        cache.sweep(at + CACHE_TTL);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_refuses_new_channels_and_counts_them() {
        let mut cache = ChannelCache::new();
        let at = Instant::now();
        for i in 0..CACHE_ENTRIES_MAX {
            cache.set(&Arc::from(format!("0:cache-{i}")), Bytes::new(), at);
        }
        let extra: Arc<str> = Arc::from("0:cache-extra");
        cache.set(&extra, Bytes::new(), at);
        assert_eq!((cache.len(), cache.refused), (CACHE_ENTRIES_MAX, 1));
        assert!(cache.get(&extra, at).is_none());
        // An existing channel is still updated.
        cache.set(&Arc::from("0:cache-1"), Bytes::from_static(b"y"), at);
        assert_eq!(cache.get("0:cache-1", at).as_deref(), Some(&b"y"[..]));
    }
}
