//! A pool of large byte buffers.
//!
//! Pieces are megabytes each; a fresh allocation of that size is served by
//! new pages from the kernel, which are zeroed on first touch — on the
//! machines Loam was measured on, that page-fault cost was the largest
//! single item of a download's CPU time. Buffers taken from the pool have
//! their pages already in place. A [`Bytes`] made with [`BufferPool::freeze`]
//! returns its buffer to the pool when the last reference drops (for
//! example once QUIC has the data acknowledged).
//!
//! Large buffers are backed by transparent huge pages where the kernel
//! offers them on request (`madvise` mode, the usual default): one fault
//! per 2 MiB instead of one per 4 KiB. In a one-shot `uplink cp`, where
//! nothing is in the pool yet, those faults were a fifth of the client's CPU
//! time.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use crate::alloc::PageAdvice;

pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Most bytes kept idle in the pool.
    max_idle_bytes: usize,
}

/// Buffers smaller than this are not worth pooling.
const MIN_POOLED: usize = 256 * 1024;

/// Size of a transparent huge page on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the huge-page-aligned part of `buf`'s
/// allocation with huge pages (best effort).
fn advise_huge_pages(buf: &mut Vec<u8>) {
    crate::alloc::advise_pages(
        buf.as_mut_ptr(),
        buf.capacity(),
        HUGE_PAGE,
        PageAdvice::Huge,
    );
}

impl BufferPool {
    pub fn new(max_idle_bytes: usize) -> Self {
        Self {
            free: Mutex::new(Vec::new()),
            max_idle_bytes,
        }
    }

    /// The process-wide pool (512 MiB of idle buffers at most).
    pub fn global() -> &'static Arc<BufferPool> {
        static POOL: OnceLock<Arc<BufferPool>> = OnceLock::new();
        POOL.get_or_init(|| Arc::new(BufferPool::new(512 << 20)))
    }

    /// An empty buffer with at least `capacity` bytes of capacity.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let mut buf = self.take_used(capacity);
        buf.clear();
        buf
    }

    /// A buffer of exactly `len` bytes whose contents are unspecified: left
    /// over from the buffer's earlier use, or zero. For callers that
    /// overwrite all of it (a file read); it saves [`BufferPool::zeroed`]'s
    /// pass over a pooled buffer.
    pub fn scratch(&self, len: usize) -> Vec<u8> {
        let mut buf = self.take_used(len);
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        buf
    }

    /// A pooled buffer with at least `capacity` bytes of capacity and the
    /// contents it was given back with.
    fn take_used(&self, capacity: usize) -> Vec<u8> {
        if capacity >= MIN_POOLED {
            let mut free = self.free.lock().expect("pool lock");
            // Smallest idle buffer that fits.
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= capacity)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                return free.swap_remove(i);
            }
        }
        let mut buf = Vec::with_capacity(capacity);
        if capacity >= 2 * HUGE_PAGE {
            advise_huge_pages(&mut buf);
        }
        buf
    }

    /// A buffer of exactly `len` zero bytes.
    pub fn zeroed(&self, len: usize) -> Vec<u8> {
        let mut buf = self.take(len);
        buf.resize(len, 0);
        buf
    }

    /// Gives a buffer back for reuse.
    pub fn give(&self, buf: Vec<u8>) {
        if buf.capacity() < MIN_POOLED {
            return;
        }
        let mut free = self.free.lock().expect("pool lock");
        let idle: usize = free.iter().map(Vec::capacity).sum();
        if idle + buf.capacity() <= self.max_idle_bytes {
            free.push(buf);
        }
    }

    /// Wraps `buf` in [`Bytes`] that return it to this pool when dropped.
    pub fn freeze(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_bytes_drop() {
        let pool = Arc::new(BufferPool::new(4 << 20));
        let mut buf = pool.take(1 << 20);
        let ptr = buf.as_ptr();
        buf.extend_from_slice(&[1u8; 1 << 20]);
        let bytes = pool.freeze(buf);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(slice[0], 1);
        drop(slice);
        let again = pool.take(1 << 20);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
    }

    #[test]
    fn scratch_buffers_have_their_length_and_zeroed_ones_are_zero() {
        let pool = BufferPool::new(4 << 20);
        pool.give(vec![7u8; 1 << 20]);
        // A shorter scratch buffer reuses the pooled one as it is.
        let short = pool.scratch(300 << 10);
        assert_eq!(short.len(), 300 << 10);
        pool.give(short);
        // A longer one is filled up with zeros past what it held.
        let long = pool.scratch(900 << 10);
        assert_eq!(long.len(), 900 << 10);
        assert!(long[300 << 10..].iter().all(|&b| b == 0));
        pool.give(long);
        // `zeroed` never hands out leftovers.
        let zeroed = pool.zeroed(600 << 10);
        assert_eq!(zeroed.len(), 600 << 10);
        assert!(zeroed.iter().all(|&b| b == 0));
        // Nor does `take`.
        pool.give(vec![9u8; 1 << 20]);
        assert!(pool.take(1 << 20).is_empty());
    }

    #[test]
    fn pool_keeps_at_most_its_limit() {
        let pool = BufferPool::new(1 << 20);
        pool.give(Vec::with_capacity(1 << 20));
        pool.give(Vec::with_capacity(1 << 20));
        assert_eq!(pool.free.lock().expect("lock").len(), 1);
    }
}
