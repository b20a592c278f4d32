//! Downloading a segment straight into its file: each data piece is
//! decrypted block by block as it arrives and its plaintext written where
//! its row lies in the file, so nothing waits for a whole segment and no
//! piece is ever held in memory.
//!
//! This is the path of every download into a file whose segments' places
//! are known. It fetches exactly the `k` data pieces; when one of them
//! cannot be had (a node offline or stalled, a block that fails to
//! authenticate), the caller fetches the segment the ordinary way, with
//! parity and hedging, and writes it over whatever was written.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use loam_common::transport::Endpoint;
use loam_common::{KeyPair, pb};
use loam_piece_transfer::piece::{self, PieceError, PieceSink};
use loam_piece_transfer::segment::{PlainRun, RowStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

use crate::direct::BlockWriter;

/// Why a segment could not be streamed.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// Writing the file failed: fetching again would not help.
    Output(std::io::Error),
    /// A piece could not be had whole and authentic from its node.
    Fetch(String),
}

/// How much of a segment's pieces has arrived, and a signal once that
/// passes a threshold (when the next segment may start).
pub(crate) struct SegmentProgress {
    received: AtomicU64,
    threshold: u64,
    passed: AtomicBool,
    /// Notified once, when the threshold is passed or the segment is
    /// released.
    pub(crate) reached: Notify,
}

impl SegmentProgress {
    pub(crate) fn new(threshold: u64) -> Self {
        Self {
            received: AtomicU64::new(0),
            threshold,
            passed: AtomicBool::new(threshold == 0),
            reached: Notify::new(),
        }
    }

    /// Whether the threshold was passed (or the segment released).
    pub(crate) fn passed(&self) -> bool {
        self.passed.load(Ordering::Acquire)
    }

    fn add(&self, n: u64) {
        let before = self.received.fetch_add(n, Ordering::Relaxed);
        if before < self.threshold && before.saturating_add(n) >= self.threshold {
            self.release();
        }
    }

    /// Counts the threshold as passed: the segment is done, or fetched
    /// another way.
    pub(crate) fn release(&self) {
        if !self.passed.swap(true, Ordering::AcqRel) {
            self.reached.notify_one();
        }
    }
}

/// Releases a segment's progress when dropped, however its download ends.
pub(crate) struct ReleaseOnDrop(pub(crate) Arc<SegmentProgress>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Runs being written per row at once: one written while the next fills.
const WRITES_PER_ROW: usize = 2;

/// The plaintext of one row, written at `base` (the row's place in the
/// file) run by run.
struct RowWriter {
    stream: RowStream,
    file: Arc<BlockWriter>,
    progress: Arc<SegmentProgress>,
    base: u64,
    writes: VecDeque<JoinHandle<std::io::Result<()>>>,
    /// The output error that stopped the download, kept to be reported as
    /// what it is rather than as a piece's failure.
    failed: Option<std::io::Error>,
}

impl RowWriter {
    async fn write(&mut self, run: PlainRun) -> Result<(), PieceError> {
        while self.writes.len() >= WRITES_PER_ROW {
            self.wait_one().await?;
        }
        let (file, at) = (self.file.clone(), self.base + run.offset);
        self.writes.push_back(tokio::task::spawn_blocking(move || {
            file.write_at(at, run.bytes())
        }));
        Ok(())
    }

    async fn wait_one(&mut self) -> Result<(), PieceError> {
        let Some(write) = self.writes.pop_front() else {
            return Ok(());
        };
        match write.await.map_err(std::io::Error::other).and_then(|r| r) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.failed = Some(e);
                Err(PieceError::Rejected(
                    "the output could not be written".into(),
                ))
            }
        }
    }

    /// Waits for every write of the row.
    async fn finish(&mut self) -> Result<(), PieceError> {
        while !self.writes.is_empty() {
            self.wait_one().await?;
        }
        Ok(())
    }
}

impl PieceSink for RowWriter {
    async fn put(&mut self, chunk: Bytes) -> Result<(), PieceError> {
        self.progress.add(chunk.len() as u64);
        let runs = self
            .stream
            .push(&chunk)
            .map_err(|e| PieceError::Rejected(e.to_string()))?;
        for run in runs {
            self.write(run).await?;
        }
        Ok(())
    }
}

/// One data piece of a segment to stream into the file.
pub(crate) struct RowJob {
    pub(crate) limit: pb::AddressedOrderLimit,
    /// Where the row lies in the segment's plaintext.
    pub(crate) span: Range<u64>,
    pub(crate) stream: RowStream,
}

/// What every row of a segment shares.
pub(crate) struct StreamSetup {
    pub(crate) endpoint: Endpoint,
    pub(crate) piece_key: KeyPair,
    pub(crate) piece_size: u64,
    pub(crate) dial_timeout: Duration,
    /// A piece that receives nothing for this long ends the attempt.
    pub(crate) stall_after: Duration,
    pub(crate) file: Arc<BlockWriter>,
    /// Where the segment starts in the file.
    pub(crate) start: u64,
    /// Counts what the segment's pieces receive.
    pub(crate) progress: Arc<SegmentProgress>,
}

/// Streams every row of a segment into the file, one task per data piece
/// (so decryption runs on every core). Returns when all rows are written,
/// or at the first failure, cancelling the rest.
pub(crate) async fn stream_rows(setup: StreamSetup, rows: Vec<RowJob>) -> Result<(), StreamError> {
    let setup = Arc::new(setup);
    let mut tasks = JoinSet::new();
    let mut progress = Vec::with_capacity(rows.len());
    for row in rows {
        let counter = Arc::new(AtomicU64::new(0));
        progress.push((counter.clone(), 0u64, Instant::now()));
        let setup = setup.clone();
        tasks.spawn(async move {
            let piece_num = row.limit.piece_num;
            let mut sink = RowWriter {
                stream: row.stream,
                file: setup.file.clone(),
                progress: setup.progress.clone(),
                base: setup.start + row.span.start,
                writes: VecDeque::new(),
                failed: None,
            };
            let fetched = piece::download_into(
                &setup.endpoint,
                &row.limit,
                &setup.piece_key,
                setup.piece_size,
                setup.dial_timeout,
                &counter,
                &mut sink,
            )
            .await;
            let done = match fetched {
                Ok(()) => sink.finish().await,
                Err(e) => Err(e),
            };
            match (done, sink.failed.take()) {
                (_, Some(io)) => Err(StreamError::Output(io)),
                (Err(e), None) => Err(StreamError::Fetch(format!("piece {piece_num}: {e}"))),
                (Ok(()), None) if sink.stream.is_complete() => Ok(()),
                (Ok(()), None) => Err(StreamError::Fetch(format!("piece {piece_num} ended early"))),
            }
        });
    }
    let mut tick = tokio::time::interval((setup.stall_after / 3).max(Duration::from_millis(1)));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(StreamError::Fetch(format!("a piece's task failed: {e}"))),
            },
            _ = tick.tick() => {
                let now = Instant::now();
                for (counter, seen, moved) in &mut progress {
                    let got = counter.load(Ordering::Relaxed);
                    if got != *seen || got == setup.piece_size {
                        (*seen, *moved) = (got, now);
                    } else if now.duration_since(*moved) >= setup.stall_after {
                        return Err(StreamError::Fetch(format!(
                            "a piece made no progress for {} ms",
                            setup.stall_after.as_millis()
                        )));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_passes_its_threshold_once() {
        let p = SegmentProgress::new(100);
        p.add(60);
        assert!(!p.passed());
        p.add(40);
        assert!(p.passed());
        p.add(500);
        // One notification, stored for whoever waits next.
        let waited = futures::FutureExt::now_or_never(p.reached.notified());
        assert!(waited.is_some());
        assert!(futures::FutureExt::now_or_never(p.reached.notified()).is_none());
    }

    #[test]
    fn a_segment_that_ends_early_releases_the_next() {
        let p = Arc::new(SegmentProgress::new(1 << 20));
        {
            let _release = ReleaseOnDrop(p.clone());
            p.add(10);
            assert!(!p.passed());
        }
        assert!(p.passed());
        assert!(futures::FutureExt::now_or_never(p.reached.notified()).is_some());
    }

    #[test]
    fn an_empty_segment_does_not_hold_the_next() {
        assert!(SegmentProgress::new(0).passed());
    }
}
