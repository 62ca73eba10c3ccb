//! Outbound queues of all of a shard's connections in one pool.
//!
//! Each connection holds only the head and tail of its queue (8 bytes); the queued buffers live
//! in singly linked nodes of a shard-wide slab, so an idle connection owns no queue allocation
//! at all, and a queue that empties gives its nodes back to the pool for the next one. Nodes
//! carry `Bytes`, so one frame encoded once can sit in many queues without being copied.

use crate::buf::OutBuf;
use slab::Slab;

const NIL: u32 = u32::MAX;

/// A connection's queue: the first and last node, or empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRef {
    head: u32,
    tail: u32,
}

impl QueueRef {
    pub const EMPTY: QueueRef = QueueRef {
        head: NIL,
        tail: NIL,
    };

    pub fn is_empty(&self) -> bool {
        self.head == NIL
    }
}

impl Default for QueueRef {
    fn default() -> Self {
        Self::EMPTY
    }
}

struct Node {
    bytes: OutBuf,
    next: u32,
}

#[derive(Default)]
pub struct SendQueues {
    nodes: Slab<Node>,
    /// Bytes of unshared buffers queued (shared frames are charged by their fan-out).
    owned_bytes: u64,
    /// Bytes of shared frames queued, each counted once per queue that holds it, divided by
    /// the number of queues it was handed to (see [`OutBuf::charge`]).
    shared_bytes: u64,
}

/// What one queued buffer costs beyond its bytes: the node itself.
pub const NODE_BYTES: u64 = std::mem::size_of::<Node>() as u64;

impl SendQueues {
    pub fn new() -> Self {
        Self::default()
    }

    fn charge(&mut self, b: &OutBuf) {
        let (owned, shared) = b.charge();
        self.owned_bytes += owned;
        self.shared_bytes += shared;
    }

    fn refund(&mut self, b: &OutBuf) {
        let (owned, shared) = b.charge();
        self.owned_bytes = self.owned_bytes.saturating_sub(owned);
        self.shared_bytes = self.shared_bytes.saturating_sub(shared);
    }

    /// Memory the queues hold: nodes, unshared bytes, and each shared frame's share.
    pub fn memory_bytes(&self) -> u64 {
        self.nodes.len() as u64 * NODE_BYTES + self.owned_bytes + self.shared_bytes
    }

    pub fn push_back(&mut self, q: &mut QueueRef, bytes: OutBuf) {
        self.charge(&bytes);
        let index = self.nodes.insert(Node { bytes, next: NIL }) as u32;
        if q.tail == NIL {
            q.head = index;
        } else {
            self.nodes[q.tail as usize].next = index;
        }
        q.tail = index;
    }

    pub fn push_front(&mut self, q: &mut QueueRef, bytes: OutBuf) {
        self.charge(&bytes);
        let index = self.nodes.insert(Node {
            bytes,
            next: q.head,
        }) as u32;
        if q.tail == NIL {
            q.tail = index;
        }
        q.head = index;
    }

    pub fn pop_front(&mut self, q: &mut QueueRef) -> Option<OutBuf> {
        if q.head == NIL {
            return None;
        }
        let node = self.nodes.remove(q.head as usize);
        self.refund(&node.bytes);
        q.head = node.next;
        if q.head == NIL {
            q.tail = NIL;
        }
        Some(node.bytes)
    }

    /// Drops everything queued except a buffer at the head that was already partly sent (its
    /// rest must follow on the wire, or the peer sees a cut-off frame); returns the bytes
    /// dropped.
    pub fn clear_unstarted(&mut self, q: &mut QueueRef) -> u64 {
        let head = match self.pop_front(q) {
            Some(b) if b.is_started() => Some(b),
            Some(b) => {
                let dropped = b.len() as u64 + self.clear(q);
                return dropped;
            }
            None => None,
        };
        let dropped = self.clear(q);
        if let Some(b) = head {
            self.push_front(q, b);
        }
        dropped
    }

    /// Drops everything queued; returns the bytes dropped.
    pub fn clear(&mut self, q: &mut QueueRef) -> u64 {
        let mut dropped = 0;
        while let Some(b) = self.pop_front(q) {
            dropped += b.len() as u64;
        }
        dropped
    }

    /// Nodes in use over all queues.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> OutBuf {
        OutBuf::from(bytes::Bytes::from_static(s.as_bytes()))
    }

    fn pop(pool: &mut SendQueues, q: &mut QueueRef) -> Option<Vec<u8>> {
        pool.pop_front(q).map(|b| b.as_slice().to_vec())
    }

    #[test]
    fn queues_keep_order_and_do_not_mix() {
        let mut pool = SendQueues::new();
        let (mut a, mut c) = (QueueRef::EMPTY, QueueRef::EMPTY);
        pool.push_back(&mut a, b("a1"));
        pool.push_back(&mut c, b("c1"));
        pool.push_back(&mut a, b("a2"));
        pool.push_front(&mut a, b("a0"));
        assert_eq!(pop(&mut pool, &mut a), Some(b"a0".to_vec()));
        assert_eq!(pop(&mut pool, &mut a), Some(b"a1".to_vec()));
        assert_eq!(pop(&mut pool, &mut c), Some(b"c1".to_vec()));
        assert!(c.is_empty());
        assert_eq!(pop(&mut pool, &mut a), Some(b"a2".to_vec()));
        assert!(pool.pop_front(&mut a).is_none());
        assert!(a.is_empty() && pool.is_empty());
    }

    #[test]
    fn push_front_on_empty_queue_sets_both_ends() {
        let mut pool = SendQueues::new();
        let mut q = QueueRef::EMPTY;
        pool.push_front(&mut q, b("x"));
        pool.push_back(&mut q, b("y"));
        assert_eq!(pop(&mut pool, &mut q), Some(b"x".to_vec()));
        assert_eq!(pop(&mut pool, &mut q), Some(b"y".to_vec()));
    }

    #[test]
    fn clear_unstarted_keeps_a_half_sent_head() {
        let mut pool = SendQueues::new();
        let mut q = QueueRef::EMPTY;
        let mut head = b("abcd");
        head.advance(1);
        pool.push_back(&mut q, head);
        pool.push_back(&mut q, b("ef"));
        assert_eq!(pool.clear_unstarted(&mut q), 2);
        assert_eq!(pop(&mut pool, &mut q), Some(b"bcd".to_vec()));
        assert!(q.is_empty());
        pool.push_back(&mut q, b("gh"));
        assert_eq!(pool.clear_unstarted(&mut q), 2);
        assert!(q.is_empty() && pool.is_empty());
    }

    #[test]
    fn clear_counts_dropped_bytes_and_frees_nodes() {
        let mut pool = SendQueues::new();
        let mut q = QueueRef::EMPTY;
        pool.push_back(&mut q, b("abc"));
        pool.push_back(&mut q, b("de"));
        assert_eq!(pool.clear(&mut q), 5);
        assert!(q.is_empty() && pool.is_empty());
    }
}
