//! Outbound buffers: what a connection's send queue holds and what an in-flight send owns.
//!
//! A frame published to many subscribers is encoded once and shared through an `Rc`: the shard
//! that delivers it is one thread, so handing it to each subscriber costs a non-atomic
//! increment, never a copy and never a shared atomic per delivery. Frames that cross shards
//! travel as `Bytes` (one atomic reference per shard, not per subscriber).

use std::rc::Rc;

use bytes::Bytes;

#[derive(Debug, Clone)]
enum Repr {
    Owned(Bytes),
    /// A frame handed to `sharers` queues at once.
    Shared(Rc<Bytes>, u32),
}

/// Bytes to send, possibly shared with other connections' queues, with a read offset so a
/// partial send can resume without touching the shared bytes.
#[derive(Debug, Clone)]
pub struct OutBuf {
    repr: Repr,
    /// INVARIANT: `start <= full().len()`.
    start: u32,
}

impl OutBuf {
    /// A reference to `frame`, which is being handed to `sharers` queues (at least 1).
    pub fn shared(frame: Rc<Bytes>, sharers: u32) -> Self {
        Self {
            repr: Repr::Shared(frame, sharers.max(1)),
            start: 0,
        }
    }

    fn full(&self) -> &[u8] {
        match &self.repr {
            Repr::Owned(b) => b,
            Repr::Shared(b, _) => b,
        }
    }

    /// What holding this buffer costs in memory, as (unshared bytes, this holder's share of a
    /// shared frame): a frame fanned out to N queues costs each of them len / N (rounded up).
    pub fn charge(&self) -> (u64, u64) {
        match &self.repr {
            Repr::Owned(b) => (b.len() as u64, 0),
            Repr::Shared(b, n) => (0, (b.len() as u64).div_ceil(u64::from(*n))),
        }
    }

    /// The bytes not yet sent.
    pub fn as_slice(&self) -> &[u8] {
        &self.full()[self.start as usize..]
    }

    pub fn len(&self) -> usize {
        self.full().len() - self.start as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once part of it was sent.
    pub fn is_started(&self) -> bool {
        self.start > 0
    }

    /// Marks `n` more bytes as sent.
    pub fn advance(&mut self, n: usize) {
        assert!(
            n <= self.len(),
            "advance past the end of an outbound buffer"
        );
        self.start += n as u32;
    }
}

impl From<Bytes> for OutBuf {
    fn from(b: Bytes) -> Self {
        Self {
            repr: Repr::Owned(b),
            start: 0,
        }
    }
}

impl From<Vec<u8>> for OutBuf {
    fn from(v: Vec<u8>) -> Self {
        Bytes::from(v).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_buffers_advance_independently() {
        let frame = Rc::new(Bytes::from_static(b"hello"));
        let mut a = OutBuf::shared(Rc::clone(&frame), 2);
        let b = OutBuf::shared(frame, 2);
        assert_eq!(a.charge(), (0, 3));
        a.advance(2);
        assert_eq!(a.as_slice(), b"llo");
        assert_eq!(b.as_slice(), b"hello");
        assert_eq!(a.len(), 3);
    }

    #[test]
    #[should_panic(expected = "advance past the end")]
    fn advancing_past_the_end_is_a_bug() {
        let mut a = OutBuf::from(Bytes::from_static(b"ab"));
        a.advance(3);
    }
}
