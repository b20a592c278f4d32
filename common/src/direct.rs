//! Direct I/O (`O_DIRECT`): writes and reads that bypass the page cache.
//!
//! The kernel takes them only for whole blocks at aligned file offsets from
//! aligned memory; [`WriteBuffer`] gathers bytes into such blocks, and
//! [`open_direct`] tells a file system without direct I/O (older tmpfs,
//! some FUSE) from a real error, so callers can fall back to the page
//! cache.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::buffers::BufferPool;

/// Alignment of address, length and file offset that direct I/O needs
/// (the largest logical block size in common use).
pub const DIRECT_ALIGN: usize = 4096;

/// Opens `path` with `options` and `O_DIRECT`; `None` where the file
/// system (or the platform) does not offer direct I/O.
pub fn open_direct(options: &mut OpenOptions, path: &Path) -> std::io::Result<Option<File>> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match options.custom_flags(nix::libc::O_DIRECT).open(path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => Ok(None),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (options, path);
        Ok(None)
    }
}

/// Gathers bytes that arrive in pieces of any size (QUIC packets, rows)
/// into blocks of a fixed size that start at a [`DIRECT_ALIGN`]ed address,
/// so hashing runs on SIMD-wide input and the disk sees few large writes it
/// can take directly. The buffer comes from, and returns to, the pool.
pub struct WriteBuffer {
    buf: Vec<u8>,
    /// Where the aligned block starts in `buf`.
    start: usize,
    block: usize,
}

impl WriteBuffer {
    /// `block` is rounded up to a whole number of [`DIRECT_ALIGN`] units.
    pub fn new(block: usize) -> Self {
        let block = block.max(1).next_multiple_of(DIRECT_ALIGN);
        let mut buf = BufferPool::global().take(block + DIRECT_ALIGN);
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        buf.resize(start, 0);
        Self { buf, start, block }
    }

    /// Appends `data`, handing each full block to `flush`.
    pub fn push<E>(
        &mut self,
        mut data: &[u8],
        mut flush: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            let room = self.block - (self.buf.len() - self.start);
            let (now, later) = data.split_at(room.min(data.len()));
            self.buf.extend_from_slice(now);
            data = later;
            if self.buf.len() - self.start == self.block {
                flush(&self.buf[self.start..])?;
                self.buf.truncate(self.start);
            }
        }
        Ok(())
    }

    /// Hands what is left (less than a block, maybe nothing) to `flush`.
    pub fn finish<E>(mut self, flush: impl FnOnce(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let rest = &self.buf[self.start..];
        let result = if rest.is_empty() { Ok(()) } else { flush(rest) };
        self.buf.truncate(self.start);
        result
    }
}

impl Drop for WriteBuffer {
    fn drop(&mut self) {
        BufferPool::global().give(std::mem::take(&mut self.buf));
    }
}
