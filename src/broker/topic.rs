//! A shard's topic registry: name to local subscribers, and which other shards subscribe.
//!
//! Subscribers are connection slab indices in a plain vector; each connection remembers its
//! slot, so unsubscribing is a swap-remove (O(1)). While the fan-out walks the topic (a walk
//! may span loop turns, see [`super::fanout`]), removals leave a tombstone instead, so the walk
//! never skips or repeats a subscriber; the vector is compacted when the walk ends.
//! A topic exists while it has local subscribers, remote interest or publishes to deliver, and
//! no longer.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

/// Marks a removed subscriber while a fan-out walks the vector.
pub const TOMBSTONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TopicId(pub u32);

#[derive(Debug)]
pub struct Topic {
    pub name: Arc<str>,
    /// Connection indices (or [`TOMBSTONE`]).
    pub subscribers: Vec<u32>,
    /// Live entries in `subscribers`.
    pub live: u32,
    /// Bit i set: shard i has subscribers of this topic.
    remote: Vec<u64>,
    /// Publishes of this topic not yet delivered to every local subscriber.
    pub(super) busy: u32,
    /// The fan-out is walking `subscribers` (removals leave tombstones).
    pub(super) walking: bool,
    has_tombstones: bool,
}

impl Topic {
    /// Shards (other than this one) with subscribers.
    pub fn remote_shards(&self) -> impl Iterator<Item = usize> + '_ {
        self.remote.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }

    fn has_remote(&self) -> bool {
        self.remote.iter().any(|&w| w != 0)
    }
}

/// What an unsubscribe changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsubscribed {
    /// Another connection moved into the freed slot: (connection, its new slot).
    pub moved: Option<(u32, u32)>,
    /// That was the last local subscriber (announce the loss of interest).
    pub last_local: bool,
}

#[derive(Default)]
pub struct Topics {
    ids: HashMap<Arc<str>, u32>,
    pub(super) topics: Slab<Topic>,
}

impl Topics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn lookup(&self, name: &str) -> Option<TopicId> {
        self.ids.get(name).map(|&i| TopicId(i))
    }

    pub fn topic(&self, id: TopicId) -> &Topic {
        &self.topics[id.0 as usize]
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    fn intern(&mut self, name: &str) -> TopicId {
        if let Some(id) = self.lookup(name) {
            return id;
        }
        let name: Arc<str> = Arc::from(name);
        let id = self.topics.insert(Topic {
            name: Arc::clone(&name),
            subscribers: Vec::new(),
            live: 0,
            remote: Vec::new(),
            busy: 0,
            walking: false,
            has_tombstones: false,
        }) as u32;
        self.ids.insert(name, id);
        TopicId(id)
    }

    /// Adds connection `conn`; returns the topic, the connection's slot, and whether it is the
    /// first local subscriber (announce the interest).
    pub fn subscribe(&mut self, name: &str, conn: u32) -> (TopicId, u32, bool) {
        let id = self.intern(name);
        let t = &mut self.topics[id.0 as usize];
        let slot = t.subscribers.len() as u32;
        t.subscribers.push(conn);
        t.live += 1;
        (id, slot, t.live == 1)
    }

    /// Removes the connection at `slot`.
    pub fn unsubscribe(&mut self, id: TopicId, slot: u32, conn: u32) -> Unsubscribed {
        let t = &mut self.topics[id.0 as usize];
        debug_assert_eq!(t.subscribers.get(slot as usize), Some(&conn));
        if t.subscribers.get(slot as usize) != Some(&conn) {
            return Unsubscribed {
                moved: None,
                last_local: false,
            };
        }
        t.live -= 1;
        let last_local = t.live == 0;
        let moved = if t.walking {
            t.subscribers[slot as usize] = TOMBSTONE;
            t.has_tombstones = true;
            None
        } else {
            t.subscribers.swap_remove(slot as usize);
            t.subscribers.get(slot as usize).map(|&c| (c, slot))
        };
        self.collect(id);
        Unsubscribed { moved, last_local }
    }

    /// Records that shard `shard` gained or lost subscribers of `name`.
    pub fn set_remote(&mut self, name: &str, shard: u16, on: bool) {
        let id = if on {
            self.intern(name)
        } else {
            match self.lookup(name) {
                Some(id) => id,
                None => return,
            }
        };
        let t = &mut self.topics[id.0 as usize];
        let (word, bit) = (usize::from(shard) / 64, usize::from(shard) % 64);
        if t.remote.len() <= word {
            t.remote.resize(word + 1, 0);
        }
        if on {
            t.remote[word] |= 1 << bit;
        } else {
            t.remote[word] &= !(1 << bit);
        }
        self.collect(id);
    }

    /// A publish of `id` waits to be delivered (the topic lives until [`Self::end_fanout`]).
    pub fn begin_fanout(&mut self, id: TopicId) {
        self.topics[id.0 as usize].busy += 1;
    }

    /// A publish of `id` reached every local subscriber.
    pub fn end_fanout(&mut self, id: TopicId) {
        let t = &mut self.topics[id.0 as usize];
        t.busy -= 1;
        self.collect(id);
    }

    /// The fan-out starts walking the subscribers of `id`: slots stay put until
    /// [`Self::end_walk`].
    pub fn begin_walk(&mut self, id: TopicId) {
        self.topics[id.0 as usize].walking = true;
    }

    /// The walk of `id` ended. Returns the connections whose slots moved in compaction.
    pub fn end_walk(&mut self, id: TopicId) -> Vec<(u32, u32)> {
        let t = &mut self.topics[id.0 as usize];
        t.walking = false;
        let mut moved = Vec::new();
        if t.has_tombstones {
            t.subscribers.retain(|&c| c != TOMBSTONE);
            t.has_tombstones = false;
            moved.extend(
                t.subscribers
                    .iter()
                    .enumerate()
                    .map(|(slot, &c)| (c, slot as u32)),
            );
        }
        self.collect(id);
        moved
    }

    /// Removed subscribers are waiting for compaction.
    pub fn has_tombstones(&self, id: TopicId) -> bool {
        self.topics[id.0 as usize].has_tombstones
    }

    /// Forgets a topic nobody needs any more.
    fn collect(&mut self, id: TopicId) {
        let t = &self.topics[id.0 as usize];
        if t.live == 0 && t.busy == 0 && !t.walking && !t.has_remote() {
            let t = self.topics.remove(id.0 as usize);
            self.ids.remove(&t.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_and_unsubscribe_keep_slots_right() {
        let mut t = Topics::new();
        let (id, s0, first) = t.subscribe("a", 10);
        assert!(first);
        let (_, s1, first) = t.subscribe("a", 11);
        assert!(!first);
        let (_, _s2, _) = t.subscribe("a", 12);
        let u = t.unsubscribe(id, s0, 10);
        assert_eq!(
            u,
            Unsubscribed {
                moved: Some((12, 0)),
                last_local: false
            }
        );
        assert_eq!(t.topic(id).subscribers, vec![12, 11]);
        t.unsubscribe(id, s1, 11);
        let u = t.unsubscribe(id, 0, 12);
        assert!(u.last_local);
        assert!(t.is_empty(), "topic collected when nobody needs it");
    }

    #[test]
    fn removal_during_a_walk_leaves_a_tombstone_until_it_ends() {
        let mut t = Topics::new();
        let (id, s0, _) = t.subscribe("a", 1);
        t.subscribe("a", 2);
        t.subscribe("a", 3);
        t.begin_fanout(id);
        t.begin_walk(id);
        assert_eq!(t.unsubscribe(id, s0, 1).moved, None);
        assert_eq!(t.topic(id).subscribers, vec![TOMBSTONE, 2, 3]);
        t.end_fanout(id);
        assert_eq!(t.topic(id).subscribers.len(), 3, "still walking");
        let moved = t.end_walk(id);
        assert_eq!(t.topic(id).subscribers, vec![2, 3]);
        assert_eq!(moved, vec![(2, 0), (3, 1)]);
    }

    #[test]
    fn remote_interest_keeps_a_topic_alive() {
        let mut t = Topics::new();
        t.set_remote("a", 3, true);
        t.set_remote("a", 70, true);
        let id = t.lookup("a").unwrap();
        assert_eq!(t.topic(id).remote_shards().collect::<Vec<_>>(), vec![3, 70]);
        t.set_remote("a", 3, false);
        t.set_remote("a", 70, false);
        assert!(t.lookup("a").is_none());
        t.set_remote("never", 1, false);
        assert!(t.is_empty());
    }

    #[test]
    fn ten_thousand_subscribers_leave_in_any_order() {
        let mut t = Topics::new();
        let mut slots = std::collections::HashMap::new();
        let mut id = None;
        for c in 0..10_000u32 {
            let (i, s, _) = t.subscribe("big", c);
            id = Some(i);
            slots.insert(c, s);
        }
        let id = id.unwrap();
        let mut x = 12345u32;
        let mut order: Vec<u32> = (0..10_000).collect();
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            order.swap(i, x as usize % (i + 1));
        }
        for c in order {
            let u = t.unsubscribe(id, slots[&c], c);
            if let Some((m, s)) = u.moved {
                slots.insert(m, s);
            }
        }
        assert!(t.is_empty());
    }
}
