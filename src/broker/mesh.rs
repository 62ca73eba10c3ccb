//! The mesh between shards: one bounded single-producer single-consumer ring per ordered pair of
//! shards (`rtrb`, a lock-free SPSC ring buffer), so a push or pop is a couple of atomic loads
//! and stores on cache lines shared by exactly two threads, and no lock is ever taken.
//!
//! What travels: a published frame, already encoded (`Bytes`, one reference per destination
//! shard, not per subscriber), and interest changes (a shard gained its first / lost its last
//! subscriber of a topic), so publishes go only to shards that need them.
//!
//! A full ring is never waited on. Publishes check room on every destination before pushing to
//! any, so a publish either reaches every interested shard or none (the caller reports it:
//! HTTP 503 with Retry-After, or close 1013 for a WebSocket publisher), counted. Interest
//! changes and cache channels' last events must not be lost, so they wait in a per-destination
//! backlog (one entry per cache channel at most; otherwise bounded by the number
//! of topics) and are retried every turn.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use rtrb::{Consumer, Producer, RingBuffer};

/// One message between shards.
#[derive(Debug, Clone)]
pub enum MeshMsg {
    /// Deliver `frame` (a complete encoded WebSocket frame) to local subscribers of `topic`.
    /// `exclude`: a connection of the destination shard that must not get it (the publisher,
    /// or the HTTP API's `socket_id`).
    Publish {
        topic: Arc<str>,
        frame: Bytes,
        exclude: Option<crate::driver::ConnKey>,
    },
    /// The last event of cache channel `topic`, published at `at` (every shard keeps a copy).
    CacheSet {
        topic: Arc<str>,
        frame: Bytes,
        at: std::time::Instant,
    },
    /// Shard `from` now has (or no longer has) subscribers of `topic`.
    Interest {
        topic: Arc<str>,
        from: u16,
        on: bool,
    },
}

/// One shard's ends of the mesh.
pub struct MeshPort {
    pub shard: u16,
    /// Indexed by destination shard; `None` for this shard itself.
    outs: Vec<Option<Producer<MeshMsg>>>,
    /// Interest changes waiting for room, per destination.
    backlog: Vec<VecDeque<MeshMsg>>,
    /// (source shard, ring).
    ins: Vec<(u16, Consumer<MeshMsg>)>,
    /// Destinations pushed to since the last [`MeshPort::take_woken`].
    touched: Vec<bool>,
}

/// Builds the rings for `shards` shards, each with room for `capacity` messages.
pub fn build(shards: usize, capacity: usize) -> Vec<MeshPort> {
    let mut ports: Vec<MeshPort> = (0..shards)
        .map(|i| MeshPort {
            shard: i as u16,
            outs: (0..shards).map(|_| None).collect(),
            backlog: (0..shards).map(|_| VecDeque::new()).collect(),
            ins: Vec::new(),
            touched: vec![false; shards],
        })
        .collect();
    for src in 0..shards {
        for dst in 0..shards {
            if src == dst {
                continue;
            }
            let (p, c) = RingBuffer::new(capacity);
            ports[src].outs[dst] = Some(p);
            ports[dst].ins.push((src as u16, c));
        }
    }
    ports
}

impl MeshPort {
    pub fn shard_count(&self) -> usize {
        self.outs.len()
    }

    /// True when every shard in `dests` has room for one more message.
    pub fn has_room(&self, dests: impl Iterator<Item = usize>) -> bool {
        let mut ok = true;
        for d in dests {
            if let Some(Some(p)) = self.outs.get(d) {
                ok &= p.slots() > 0;
            }
        }
        ok
    }

    /// Pushes a publish to `dest`. The caller checked [`MeshPort::has_room`] first, so this
    /// only fails on a bug; the message is then dropped and false returned.
    pub fn publish(
        &mut self,
        dest: usize,
        topic: Arc<str>,
        frame: Bytes,
        exclude: Option<crate::driver::ConnKey>,
    ) -> bool {
        let Some(Some(p)) = self.outs.get_mut(dest) else {
            return false;
        };
        let ok = p
            .push(MeshMsg::Publish {
                topic,
                frame,
                exclude,
            })
            .is_ok();
        debug_assert!(ok, "publish pushed without room");
        self.touched[dest] |= ok;
        ok
    }

    /// Tells every other shard about an interest change; never lost (backlogged when full).
    pub fn announce_interest(&mut self, topic: &Arc<str>, on: bool) {
        let from = self.shard;
        for dest in 0..self.outs.len() {
            if dest == from as usize {
                continue;
            }
            self.backlog[dest].push_back(MeshMsg::Interest {
                topic: Arc::clone(topic),
                from,
                on,
            });
        }
        self.flush_backlog();
    }

    /// Sends a cache channel's last event to every other shard; never lost (backlogged when a
    /// ring is full, like interest changes).
    pub fn broadcast_cache(&mut self, topic: &Arc<str>, frame: &Bytes, at: std::time::Instant) {
        let from = self.shard;
        for dest in 0..self.outs.len() {
            if dest == from as usize {
                continue;
            }
            // Only the newest event of a channel matters: a congested ring's backlog keeps one
            // per cache channel, so it stays bounded by the number of channels.
            if !self.backlog[dest].is_empty() {
                self.backlog[dest]
                    .retain(|m| !matches!(m, MeshMsg::CacheSet { topic: t, .. } if t == topic));
            }
            self.backlog[dest].push_back(MeshMsg::CacheSet {
                topic: Arc::clone(topic),
                frame: frame.clone(),
                at,
            });
        }
        self.flush_backlog();
    }

    /// Moves backlogged interest changes into rings with room. Called every turn.
    pub fn flush_backlog(&mut self) {
        for dest in 0..self.outs.len() {
            let Some(p) = self.outs[dest].as_mut() else {
                continue;
            };
            while let Some(msg) = self.backlog[dest].pop_front() {
                match p.push(msg) {
                    Ok(()) => self.touched[dest] = true,
                    Err(rtrb::PushError::Full(msg)) => {
                        self.backlog[dest].push_front(msg);
                        break;
                    }
                }
            }
        }
    }

    /// Pops up to `max` messages from the inbound rings, round robin over sources; `f` gets the
    /// source shard and the message.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(u16, MeshMsg)) -> usize {
        let mut n = 0;
        let mut progress = true;
        while n < max && progress {
            progress = false;
            for (src, c) in &mut self.ins {
                if n >= max {
                    break;
                }
                if let Ok(msg) = c.pop() {
                    f(*src, msg);
                    n += 1;
                    progress = true;
                }
            }
        }
        n
    }

    /// True when an inbound ring holds a message.
    pub fn has_inbound(&self) -> bool {
        self.ins.iter().any(|(_, c)| !c.is_empty())
    }

    /// True when interest changes are still waiting for room.
    pub fn has_backlog(&self) -> bool {
        self.backlog.iter().any(|b| !b.is_empty())
    }

    /// The destinations pushed to since the last call (to wake them once per turn).
    pub fn take_woken(&mut self, mut f: impl FnMut(usize)) {
        for (d, t) in self.touched.iter_mut().enumerate() {
            if std::mem::take(t) {
                f(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reaches_only_its_destination() {
        let mut ports = build(3, 8);
        let topic: Arc<str> = Arc::from("t");
        assert!(ports[0].has_room([1usize, 2].into_iter()));
        assert!(ports[0].publish(2, Arc::clone(&topic), Bytes::from_static(b"x"), None));
        let mut got = Vec::new();
        assert_eq!(ports[1].drain(10, |_, m| got.push(m)), 0);
        assert_eq!(ports[2].drain(10, |src, m| got.push((src, m).1)), 1);
        let mut woken = Vec::new();
        ports[0].take_woken(|d| woken.push(d));
        assert_eq!(woken, vec![2]);
    }

    #[test]
    fn full_ring_reports_no_room_and_interest_waits_in_the_backlog() {
        let mut ports = build(2, 2);
        let topic: Arc<str> = Arc::from("t");
        assert!(ports[0].publish(1, Arc::clone(&topic), Bytes::new(), None));
        assert!(ports[0].publish(1, Arc::clone(&topic), Bytes::new(), None));
        assert!(!ports[0].has_room([1usize].into_iter()));
        ports[0].announce_interest(&topic, true);
        assert!(ports[0].has_backlog());
        let mut n = ports[1].drain(10, |_, _| {});
        ports[0].flush_backlog();
        assert!(!ports[0].has_backlog());
        n += ports[1].drain(10, |_, m| {
            assert!(matches!(m, MeshMsg::Interest { on: true, .. }))
        });
        assert_eq!(n, 3);
    }

    /// Many producer/consumer pairs at once, with real threads: every message arrives once, in
    /// order per source, and nothing is lost when rings run full (the producer retries).
    #[test]
    #[allow(clippy::needless_range_loop)] // d indexes both `sent` and the destination shard
    fn stress_every_pair_delivers_in_order_across_threads() {
        const SHARDS: usize = 4;
        const PER_PAIR: u64 = 20_000;
        let ports = build(SHARDS, 64);
        let handles: Vec<_> = ports
            .into_iter()
            .map(|mut port| {
                std::thread::spawn(move || {
                    let me = port.shard as usize;
                    let topic: Arc<str> = Arc::from("s");
                    let mut sent = [0u64; SHARDS];
                    let mut next_expected = [0u64; SHARDS];
                    let mut received = 0u64;
                    let want = PER_PAIR * (SHARDS as u64 - 1);
                    while received < want
                        || sent
                            .iter()
                            .enumerate()
                            .any(|(d, &s)| d != me && s < PER_PAIR)
                    {
                        for d in 0..SHARDS {
                            if d != me && sent[d] < PER_PAIR && port.has_room([d].into_iter()) {
                                let frame = Bytes::copy_from_slice(&sent[d].to_le_bytes());
                                assert!(port.publish(d, Arc::clone(&topic), frame, None));
                                sent[d] += 1;
                            }
                        }
                        received += port.drain(64, |src, m| {
                            let MeshMsg::Publish { frame, .. } = m else {
                                panic!("interest")
                            };
                            let seq = u64::from_le_bytes(frame[..8].try_into().unwrap());
                            assert_eq!(seq, next_expected[src as usize], "order from {src}");
                            next_expected[src as usize] += 1;
                        }) as u64;
                    }
                    received
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), PER_PAIR * (SHARDS as u64 - 1));
        }
    }
}
