//! Writing a download into its file, through the page cache or around it.
//!
//! A buffered write into a new file pays for every page-cache page it
//! allocates. Where the kernel's fresh memory is slow (virtual machines
//! that back guest memory lazily) that can cost more than the transfer: on
//! the 2-core test machine, on one day, `dd` wrote a new 64 MiB file in
//! ~210 ms buffered and in ~55 ms with `O_DIRECT`. On another (2026-12-06)
//! the page cache took 256 MiB at 2.5 GB/s and `O_DIRECT` at 1.3 GB/s, the
//! disk's own speed. So both are offered ([`UplinkConfig::direct_writes`](crate::UplinkConfig::direct_writes)),
//! and the page cache is the default, as for any other program that writes
//! files. With direct writes, [`BlockWriter`] sends whole 4 KiB blocks at
//! aligned offsets through a second, `O_DIRECT` handle on the same file.
//! Everything else (a run that starts unaligned, the last partial block,
//! filesystems that refuse `O_DIRECT`, such as tmpfs) goes through the
//! ordinary handle, so the bytes on disk are the same either way.
//!
//! Writes through the page cache take turns ([`BlockWriter`] holds a lock
//! around each). The kernel serializes them anyway (each takes the file's
//! inode lock) and has those waiting spin for it: on the 2-core machine,
//! eight threads writing 256 MiB through the page cache used 70–78 ms of
//! CPU, one thread 41 ms, in the same wall time. Waiting on the lock here
//! sleeps instead. A download whose size is known also reserves its bytes
//! on disk first ([`BlockWriter::reserve`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use loam_common::direct::{DIRECT_ALIGN, WriteBuffer, open_direct};

/// Bytes staged per direct write.
const CHUNK: usize = 4 << 20;

/// Writes runs of consecutive rows at their offsets in one file, from any
/// number of threads at once.
pub(crate) struct BlockWriter {
    file: File,
    /// The same file opened again with `O_DIRECT`, where that works.
    direct: Option<File>,
    /// Cleared when the filesystem refuses a direct write after all.
    direct_ok: AtomicBool,
    /// Held around each write through the page cache (see the module
    /// documentation).
    buffered_turn: Mutex<()>,
}

impl BlockWriter {
    /// A writer for `file`, with direct writes when `direct` and the file
    /// system takes them.
    pub(crate) fn new(file: File, direct: bool) -> Self {
        let direct = direct.then(|| reopen_direct(&file)).flatten();
        Self {
            direct_ok: AtomicBool::new(direct.is_some()),
            file,
            direct,
            buffered_turn: Mutex::new(()),
        }
    }

    /// Allocates the file's first `len` bytes on disk before any is
    /// written, where the filesystem can. A disk without room for the
    /// download fails here, before anything is fetched, and the writes that
    /// follow skip the filesystem's block reservation one page at a time
    /// (256 MiB in 1 MiB writes through the page cache: 34 against 41 ms of
    /// CPU on the 2-core machine). Filesystems that cannot preallocate are
    /// written as before.
    pub(crate) fn reserve(&self, len: u64) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use nix::errno::Errno;
            use nix::fcntl::{FallocateFlags, fallocate};
            let Ok(len) = i64::try_from(len) else {
                return Ok(());
            };
            if len == 0 {
                return Ok(());
            }
            match fallocate(&self.file, FallocateFlags::empty(), 0, len) {
                Ok(()) | Err(Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = len;
            Ok(())
        }
    }

    /// `data` at `at` through the page cache, in turn with the other
    /// writers of the file.
    fn write_buffered(&self, data: &[u8], at: u64) -> std::io::Result<()> {
        let _turn = self
            .buffered_turn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.file.write_all_at(data, at)
    }

    /// Writes `rows`, one after another, starting at file offset `offset`.
    pub(crate) fn write_run(&self, offset: u64, rows: &[Vec<u8>]) -> std::io::Result<()> {
        let direct = self
            .direct
            .as_ref()
            .filter(|_| self.direct_ok.load(Ordering::Relaxed));
        let Some(direct) = direct.filter(|_| offset.is_multiple_of(DIRECT_ALIGN as u64)) else {
            let mut at = offset;
            for row in rows {
                self.write_buffered(row, at)?;
                at += row.len() as u64;
            }
            return Ok(());
        };
        let mut stage = WriteBuffer::new(CHUNK);
        let mut at = offset;
        for row in rows {
            stage.push(row, |block| {
                self.write_direct(direct, block, at)?;
                at += block.len() as u64;
                Ok::<_, std::io::Error>(())
            })?;
        }
        stage.finish(|rest| {
            let whole = rest.len() - rest.len() % DIRECT_ALIGN;
            self.write_direct(direct, &rest[..whole], at)?;
            self.write_buffered(&rest[whole..], at + whole as u64)
        })
    }

    /// Writes `data` at file offset `offset`: the whole blocks directly
    /// when offset and memory are both aligned (a
    /// [`PlainRun`](loam_piece_transfer::segment::PlainRun) is), the rest
    /// through the page cache.
    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let direct = self
            .direct
            .as_ref()
            .filter(|_| self.direct_ok.load(Ordering::Relaxed))
            .filter(|_| offset.is_multiple_of(DIRECT_ALIGN as u64))
            .filter(|_| (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN));
        let whole = match direct {
            Some(direct) => {
                let whole = data.len() - data.len() % DIRECT_ALIGN;
                self.write_direct(direct, &data[..whole], offset)?;
                whole
            }
            None => 0,
        };
        self.write_buffered(&data[whole..], offset + whole as u64)
    }

    /// One aligned write through the direct handle, or through the
    /// ordinary one if the filesystem refuses it.
    fn write_direct(&self, direct: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
        match direct.write_all_at(buf, at) {
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                tracing::debug!(error = %e, "direct writes refused; writing through the page cache");
                self.direct_ok.store(false, Ordering::Relaxed);
                self.write_buffered(buf, at)
            }
            r => r,
        }
    }
}

/// `file` opened a second time for `O_DIRECT` writes, or `None` where the
/// file system does not offer them (or the handle cannot be reopened).
fn reopen_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    open_direct(std::fs::OpenOptions::new().write(true), path.as_ref())
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Rows of awkward sizes, written as runs at aligned and unaligned
    /// offsets, in an order that leaves holes until the end.
    fn check(make: impl Fn(File) -> BlockWriter) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        let writer = make(File::create(&path).expect("create"));
        let sizes = [CHUNK + 100, 4096, 3 * 4096 + 1, 1, CHUNK - 4096, 77_777];
        let rows: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (j * 31 + i * 7) as u8).collect())
            .collect();
        let expected: Vec<u8> = rows.concat();
        // Runs: rows 3..6 (starts unaligned), then 0..2 (aligned), then 2..3.
        let offset_of = |i: usize| sizes[..i].iter().sum::<usize>() as u64;
        writer
            .write_run(offset_of(3), &rows[3..])
            .expect("tail run");
        writer.write_run(0, &rows[..2]).expect("head run");
        writer
            .write_run(offset_of(2), &rows[2..3])
            .expect("middle run");
        drop(writer);
        assert_eq!(std::fs::read(&path).expect("read"), expected);
    }

    /// Aligned and unaligned slices at aligned and unaligned offsets, out
    /// of order, through `write_at`.
    fn check_write_at(make: impl Fn(File) -> BlockWriter) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        let writer = make(File::create(&path).expect("create"));
        let expected: Vec<u8> = (0..3 * CHUNK + 123).map(|i| (i * 7 + 1) as u8).collect();
        let mut stage = WriteBuffer::new(CHUNK);
        // An aligned copy of the middle, so that part can go direct.
        let mut middle = Vec::new();
        stage
            .push(&expected[CHUNK..2 * CHUNK + 5000], |block| {
                middle.push(block.as_ptr() as usize % DIRECT_ALIGN);
                writer.write_at(CHUNK as u64, block)
            })
            .expect("middle");
        stage
            .finish(|rest| writer.write_at((2 * CHUNK) as u64, rest))
            .expect("middle tail");
        assert_eq!(middle, [0]);
        writer
            .write_at((2 * CHUNK + 5000) as u64, &expected[2 * CHUNK + 5000..])
            .expect("tail");
        writer.write_at(0, &expected[..CHUNK]).expect("head");
        drop(writer);
        assert_eq!(std::fs::read(&path).expect("read"), expected);
    }

    #[test]
    fn slices_land_at_their_offsets() {
        check_write_at(|f| BlockWriter::new(f, true));
        check_write_at(|f| BlockWriter::new(f, false));
    }

    #[test]
    fn runs_land_at_their_offsets() {
        check(|f| BlockWriter::new(f, true));
    }

    #[test]
    fn runs_land_at_their_offsets_without_direct_writes() {
        check(|f| BlockWriter::new(f, false));
    }

    /// A reserved file takes its rows from many threads at once, through
    /// the page cache, and holds exactly them.
    #[test]
    fn a_reserved_file_takes_rows_from_many_threads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        let writer = Arc::new(BlockWriter::new(
            File::create(&path).expect("create"),
            false,
        ));
        let row = 300_001usize;
        let expected: Vec<u8> = (0..8 * row).map(|i| (i * 13 + 5) as u8).collect();
        writer.reserve(expected.len() as u64).expect("reserve");
        writer.reserve(0).expect("nothing to reserve");
        std::thread::scope(|s| {
            for (i, part) in expected.chunks(row).enumerate() {
                let writer = writer.clone();
                s.spawn(move || writer.write_at((i * row) as u64, part).expect("write"));
            }
        });
        drop(writer);
        assert_eq!(std::fs::read(&path).expect("read"), expected);
    }

    /// Room the disk does not have is refused before anything is written.
    #[test]
    fn reserving_more_than_the_disk_holds_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        let writer = BlockWriter::new(File::create(&path).expect("create"), false);
        writer.reserve(4096).expect("a page");
        if std::fs::metadata(&path).expect("stat").len() != 4096 {
            // This filesystem does not preallocate; nothing to check.
            return;
        }
        let err = writer.reserve(1 << 60).expect_err("an exabyte");
        assert!(
            matches!(
                err.raw_os_error(),
                Some(nix::libc::ENOSPC | nix::libc::EFBIG)
            ),
            "{err}"
        );
    }
}
