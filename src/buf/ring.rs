//! A provided-buffer ring (io_uring `IORING_REGISTER_PBUF_RING`, Linux 5.19+).
//!
//! The ring holds `count` buffers of `buf_bytes` each. The kernel picks a free one for every
//! receive completion; user space hands it back with [`BufRing::recycle`] as soon as the bytes are
//! consumed. So receive memory is bounded per shard (`count * buf_bytes`), not per connection: an
//! idle connection holds no receive buffer at all.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// The ring of entries must be page aligned (io_uring_register_buf_ring(3)).
const RING_ALIGN: usize = 4096;

pub struct BufRing {
    /// INVARIANT: points to `count` initialised entries, page aligned, alive until drop.
    entries: NonNull<BufRingEntry>,
    entries_layout: Layout,
    /// INVARIANT: points to `count * buf_bytes` bytes, alive until drop.
    bufs: NonNull<u8>,
    bufs_layout: Layout,
    count: u16,
    buf_bytes: u32,
    /// Our copy of the tail: the next entry index (mod count) we fill.
    tail: u16,
    group: u16,
}

impl BufRing {
    /// Allocates the ring and its buffers, and offers every buffer to the kernel (once
    /// registered). `count` must be a power of two no larger than 32,768.
    pub fn new(count: u16, buf_bytes: u32, group: u16) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32_768 || buf_bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad buffer ring geometry",
            ));
        }
        let entries_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            RING_ALIGN,
        )
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ring layout"))?;
        let total = usize::from(count) * buf_bytes as usize;
        let bufs_layout = Layout::from_size_align(total, 64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer layout"))?;
        // SAFETY: entries_layout has a non-zero size (count >= 1).
        let entries = unsafe { alloc_zeroed(entries_layout) };
        let entries = NonNull::new(entries.cast::<BufRingEntry>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: bufs_layout has a non-zero size (count >= 1, buf_bytes >= 1). alloc_zeroed maps
        // pages lazily for large sizes, so untouched buffers cost no resident memory.
        let bufs = unsafe { alloc_zeroed(bufs_layout) };
        let Some(bufs) = NonNull::new(bufs) else {
            // SAFETY: entries was allocated above with entries_layout and not freed.
            unsafe { dealloc(entries.as_ptr().cast(), entries_layout) };
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        let mut ring = Self {
            entries,
            entries_layout,
            bufs,
            bufs_layout,
            count,
            buf_bytes,
            tail: 0,
            group,
        };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish_tail();
        Ok(ring)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    pub fn buf_bytes(&self) -> u32 {
        self.buf_bytes
    }

    /// Address of the entries, for `register_buf_ring_with_flags`.
    pub fn entries_addr(&self) -> u64 {
        self.entries.as_ptr() as u64
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// The first `len` bytes of buffer `bid`, which a completion just handed to user space.
    ///
    /// The kernel does not touch a buffer between the completion that selected it and its
    /// [`recycle`](Self::recycle); `&mut self` here and in `recycle` keeps the slice from
    /// outliving that window.
    pub fn buffer_mut(&mut self, bid: u16, len: usize) -> &mut [u8] {
        assert!(bid < self.count, "buffer id {bid} out of range");
        let len = len.min(self.buf_bytes as usize);
        let offset = usize::from(bid) * self.buf_bytes as usize;
        // SAFETY: offset + len <= count * buf_bytes (bid < count, len <= buf_bytes), inside the
        // allocation made in `new`; the kernel released this buffer with its completion and does
        // not write it again until `recycle(bid)` puts it back in the ring.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.as_ptr().add(offset), len) }
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        assert!(bid < self.count, "buffer id {bid} out of range");
        self.push(bid);
        self.publish_tail();
    }

    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * u64::from(self.buf_bytes);
        // SAFETY: index < count, so the entry lies inside the entries allocation; the kernel only
        // reads entries between head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        entry.set_addr(addr);
        entry.set_len(self.buf_bytes);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish_tail(&self) {
        // SAFETY: entries points at the first initialised entry of the ring (see INVARIANT).
        let tail = unsafe { BufRingEntry::tail(self.entries.as_ptr()) };
        // SAFETY: the tail field is a u16 inside the first entry, aligned to 2; the kernel reads
        // it concurrently, so it is written through an atomic with Release ordering to publish the
        // entries written before it.
        let tail = unsafe { &*tail.cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both were allocated in `new` with these layouts and are freed only here. The
        // ring's io_uring (which might still read them) is dropped before, see `driver::uring`.
        unsafe { dealloc(self.entries.as_ptr().cast(), self.entries_layout) };
        // SAFETY: as above.
        unsafe { dealloc(self.bufs.as_ptr(), self.bufs_layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ring_offers_every_buffer_in_order() {
        let ring = BufRing::new(8, 1024, 0).unwrap();
        assert_eq!(ring.tail, 8);
        for i in 0..8usize {
            // SAFETY: i < count.
            let e = unsafe { &*ring.entries.as_ptr().add(i) };
            assert_eq!(e.bid() as usize, i);
            assert_eq!(e.len(), 1024);
            assert_eq!(e.addr(), ring.bufs.as_ptr() as u64 + (i as u64) * 1024);
        }
    }

    #[test]
    fn recycle_wraps_around_the_ring() {
        let mut ring = BufRing::new(4, 512, 0).unwrap();
        for _ in 0..10 {
            ring.recycle(3);
        }
        assert_eq!(ring.tail, 14);
        assert_eq!(ring.buffer_mut(3, 10_000).len(), 512);
    }

    #[test]
    fn geometry_must_be_a_power_of_two() {
        assert!(BufRing::new(3, 512, 0).is_err());
        assert!(BufRing::new(4, 0, 0).is_err());
    }
}
