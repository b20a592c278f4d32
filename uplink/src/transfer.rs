//! Object upload and download pipelines.

use std::collections::HashMap;

use crate::UploadOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use loam_common::buffers::BufferPool;
use loam_common::encryption::{self, Key};
use loam_common::erasure::{ErasureCoder, RedundancyScheme};
use loam_common::{KeyPair, pb};
use pb::satellite_request::Request as Req;
use pb::satellite_response::Response as Resp;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::direct::BlockWriter;
use crate::feed::{FeedItem, Pacer, PieceFeed};
use crate::multipart::Span;
use crate::rowstream::{
    ReleaseOnDrop, RowJob, SegmentProgress, StreamError, StreamSetup, stream_rows,
};
use crate::segment;
use crate::{Item, ObjectMeta, Project, UplinkError, not_found_as, piece};

/// Called with the number of plaintext bytes finished since the last call.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Sanity limits on what a satellite may claim before buffers are sized
/// from it.
pub(crate) const MAX_SEGMENT_SIZE: i64 = 1 << 30;
const MAX_PIECE_SIZE: i64 = 1 << 30;

/// Stripes the encoder may run ahead of the fastest piece upload.
const STRIPES_AHEAD: usize = 4;

/// A segment's plaintext: in memory, or a range of a file that the encoder
/// reads stripe by stripe (so the segment is never all in memory).
pub(crate) enum Plaintext {
    Memory(Vec<u8>),
    File {
        file: Arc<std::fs::File>,
        offset: u64,
        len: usize,
    },
}

impl Plaintext {
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Memory(v) => v.len(),
            Self::File { len, .. } => *len,
        }
    }

    /// Fills `buf` with the bytes at `at`.
    fn read(&self, at: usize, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Self::Memory(v) => {
                let src = v
                    .get(at..at + buf.len())
                    .ok_or(std::io::ErrorKind::UnexpectedEof)?;
                buf.copy_from_slice(src);
                Ok(())
            }
            Self::File { file, offset, len } => {
                if at + buf.len() > *len {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                std::os::unix::fs::FileExt::read_exact_at(&**file, buf, offset + at as u64).map_err(
                    |e| match e.kind() {
                        std::io::ErrorKind::UnexpectedEof => std::io::Error::other(
                            "the file became shorter while it was being uploaded",
                        ),
                        _ => e,
                    },
                )
            }
        }
    }

    /// All of it, in memory.
    fn into_vec(self) -> std::io::Result<Vec<u8>> {
        match self {
            Self::Memory(v) => Ok(v),
            file => {
                let mut v = BufferPool::global().zeroed(file.len());
                file.read(0, &mut v)?;
                Ok(v)
            }
        }
    }

    /// Returns a memory buffer to the pool.
    fn recycle(self) {
        if let Self::Memory(v) = self {
            BufferPool::global().give(v);
        }
    }
}

/// Overhead of [`encryption::seal`] on inline data.
const SEAL_OVERHEAD: usize = 28;

pub(crate) async fn read_full<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = BufferPool::global().take(max);
    while buf.len() < max {
        let n = (&mut *r)
            .take((max - buf.len()) as u64)
            .read_to_end(&mut buf)
            .await?;
        if n == 0 {
            break;
        }
    }
    Ok(buf)
}

/// The segment size the satellite asks for, within the sanity limit.
fn max_segment_of(begin: &pb::BeginObjectResponse) -> usize {
    begin.max_segment_size.clamp(1, MAX_SEGMENT_SIZE) as usize
}

pub(crate) fn scheme_of(r: Option<&pb::RedundancyScheme>) -> Result<RedundancyScheme, UplinkError> {
    r.and_then(|r| RedundancyScheme::try_from(r).ok())
        .ok_or(UplinkError::Unexpected)
}

/// How a dataset segment's plaintext lies in its data rows: the bytes and
/// the records of each row. The satellite keeps the record counts, which
/// decide what a training task on the row is worth.
#[derive(Debug, Clone)]
pub(crate) struct RowLayout {
    pub sizes: Vec<usize>,
    pub records: Vec<usize>,
}

impl Project {
    /// Uploads everything `reader` yields as `bucket/key`.
    pub async fn upload<R>(
        &self,
        bucket: &str,
        key: &str,
        reader: R,
        progress: Option<Progress>,
    ) -> Result<Item, UplinkError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        self.upload_with(bucket, key, reader, progress, &UploadOptions::default())
            .await
    }

    /// [`Project::upload`] with metadata and an expiry time.
    pub async fn upload_with<R>(
        &self,
        bucket: &str,
        key: &str,
        reader: R,
        progress: Option<Progress>,
        opts: &UploadOptions,
    ) -> Result<Item, UplinkError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let begin = self.begin_object(bucket, key).await?;
        let max_segment = max_segment_of(&begin);

        // A reader task keeps the next segment ready while others upload.
        let (tx, rx) = mpsc::channel::<std::io::Result<Plaintext>>(1);
        let reader_task = tokio::spawn(async move {
            let mut reader = reader;
            let mut first = true;
            loop {
                let buf = read_full(&mut reader, max_segment).await;
                let last = buf.as_ref().map_or(true, |b| b.len() < max_segment);
                let empty = buf.as_ref().is_ok_and(Vec::is_empty);
                if (!empty || first) && tx.send(buf.map(Plaintext::Memory)).await.is_err() {
                    return;
                }
                first = false;
                if last {
                    return;
                }
            }
        });
        let result = self
            .upload_segments(bucket, key, begin, rx, progress, opts)
            .await;
        let _ = reader_task.await;
        result
    }

    /// Uploads a regular file as `bucket/key`. Each segment is read from
    /// the file a stripe at a time as it is encoded, never whole.
    pub async fn upload_file(
        &self,
        bucket: &str,
        key: &str,
        file: std::fs::File,
        progress: Option<Progress>,
    ) -> Result<Item, UplinkError> {
        self.upload_file_with(bucket, key, file, progress, &UploadOptions::default())
            .await
    }

    /// [`Project::upload_file`] with metadata and an expiry time.
    pub async fn upload_file_with(
        &self,
        bucket: &str,
        key: &str,
        file: std::fs::File,
        progress: Option<Progress>,
        opts: &UploadOptions,
    ) -> Result<Item, UplinkError> {
        let len = file.metadata()?.len();
        let begin = self.begin_object(bucket, key).await?;
        let max_segment = max_segment_of(&begin) as u64;
        let file = Arc::new(file);
        let segments = len.div_ceil(max_segment).max(1);
        let (tx, rx) = mpsc::channel::<std::io::Result<Plaintext>>(segments as usize);
        for i in 0..segments {
            let offset = i * max_segment;
            let _ = tx.try_send(Ok(Plaintext::File {
                file: file.clone(),
                offset,
                len: (len - offset).min(max_segment) as usize,
            }));
        }
        drop(tx);
        self.upload_segments(bucket, key, begin, rx, progress, opts)
            .await
    }

    /// Encodes and uploads the segments `segments` yields, then commits
    /// the object; a first segment small enough is stored inline.
    async fn upload_segments(
        &self,
        bucket: &str,
        key: &str,
        begin: pb::BeginObjectResponse,
        segments: mpsc::Receiver<std::io::Result<Plaintext>>,
        progress: Option<Progress>,
        opts: &UploadOptions,
    ) -> Result<Item, UplinkError> {
        let stream_id = begin.stream_id.clone();
        let result = self
            .upload_and_commit(bucket, key, begin, segments, progress, opts)
            .await;
        if result.is_err() {
            // Best effort: a failed upload leaves nothing pending (the
            // satellite would sweep it later anyway).
            let req = pb::AbortObjectRequest {
                bucket: bucket.to_string(),
                stream_id,
            };
            if let Err(e) = self.call(Req::AbortObject(req)).await {
                tracing::debug!(error = %e, "abandoning the failed upload failed");
            }
        }
        result
    }

    async fn upload_and_commit(
        &self,
        bucket: &str,
        key: &str,
        begin: pb::BeginObjectResponse,
        mut segments: mpsc::Receiver<std::io::Result<Plaintext>>,
        progress: Option<Progress>,
        opts: &UploadOptions,
    ) -> Result<Item, UplinkError> {
        let obj_key = self.object_key(bucket, key)?;
        let scheme = scheme_of(begin.redundancy.as_ref())?;
        let coder = Arc::new(ErasureCoder::new(scheme));
        let max_segment = max_segment_of(&begin);
        let mut index = 0u32;
        let mut total = 0u64;
        let mut inline = None;
        let mut inflight = FuturesUnordered::new();
        let mut reading = true;
        loop {
            tokio::select! {
                buf = segments.recv(), if reading && inflight.len() < self.config.upload_concurrency => {
                    let Some(buf) = buf else {
                        reading = false;
                        continue;
                    };
                    let buf = buf?;
                    total += buf.len() as u64;
                    if index == 0 && buf.len() < max_segment && buf.len() + SEAL_OVERHEAD <= begin.max_inline_size as usize {
                        let buf = buf.into_vec()?;
                        inline = Some(encryption::seal(&obj_key, &buf));
                        if let Some(p) = &progress {
                            p(buf.len() as u64);
                        }
                        reading = false;
                        continue;
                    }
                    inflight.push(self.upload_segment(coder.clone(), &begin.stream_id, index, buf, None, None, &obj_key, progress.clone()));
                    index += 1;
                }
                r = inflight.next(), if !inflight.is_empty() => {
                    if let Some(r) = r {
                        r?;
                    }
                }
                else => break,
            }
        }
        drop(segments);
        let mut custom = opts.metadata.clone();
        if let Some(late) = &opts.late_metadata {
            custom.extend((late.0)().map_err(UplinkError::Refused)?);
        }
        let meta = ObjectMeta {
            size: total,
            segment_size: Some(max_segment as u64),
            parts: None,
            custom,
            dataset: None,
        };
        let created = self
            .commit_object(
                &begin.stream_id,
                &obj_key,
                &meta,
                index,
                inline.unwrap_or_default(),
                false,
                opts.expires_ms.unwrap_or(0),
                Vec::new(),
            )
            .await?;
        Ok(Item {
            key: key.to_string(),
            is_prefix: false,
            size: total,
            created_ms: created,
            segments: index,
            expires_ms: opts.expires_ms,
            metadata: meta.custom,
            parts: Vec::new(),
        })
    }

    pub(crate) async fn begin_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<pb::BeginObjectResponse, UplinkError> {
        self.bucket(bucket).await?;
        let enc_key = self.encrypt_path(bucket, key)?;
        match self
            .call(Req::BeginObject(pb::BeginObjectRequest {
                bucket: bucket.to_string(),
                encrypted_key: enc_key.into(),
                ..Default::default()
            }))
            .await
            .map_err(|e| not_found_as(e, || UplinkError::BucketNotFound(bucket.to_string())))?
        {
            Resp::BeginObject(b) => {
                tracing::debug!(upload_id = %hex::encode(&b.stream_id), "upload begun");
                Ok(b)
            }
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// Commits an object; `compute` marks a dataset opted in to compute,
    /// `expires_ms` (0: never) when the satellite deletes it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit_object(
        &self,
        stream_id: &bytes::Bytes,
        obj_key: &Key,
        meta: &ObjectMeta,
        segments: u32,
        inline: Vec<u8>,
        compute: bool,
        expires_ms: i64,
        positions: Vec<u32>,
    ) -> Result<i64, UplinkError> {
        let meta_bytes = serde_json::to_vec(meta).expect("metadata serializes");
        match self
            .call(Req::CommitObject(pb::CommitObjectRequest {
                stream_id: stream_id.clone(),
                encrypted_metadata: encryption::seal(obj_key, &meta_bytes).into(),
                plain_size: meta.size as i64,
                segment_count: segments,
                inline_data: inline.into(),
                dataset: meta.dataset.is_some(),
                compute_enabled: compute,
                expires_unix_ms: expires_ms,
                segment_positions: positions,
            }))
            .await?
        {
            Resp::CommitObject(c) => Ok(c.created_unix_ms),
            _ => Err(UplinkError::Unexpected),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn upload_segment(
        &self,
        coder: Arc<ErasureCoder>,
        stream_id: &bytes::Bytes,
        index: u32,
        plain: Plaintext,
        rows: Option<RowLayout>,
        part_info: Option<bytes::Bytes>,
        obj_key: &Key,
        progress: Option<Progress>,
    ) -> Result<(), UplinkError> {
        let plain_len = plain.len() as u64;
        let success = coder.scheme().success();
        let total = coder.scheme().total();
        let k = coder.scheme().k();
        let dataset = rows.is_some();
        let t0 = Instant::now();
        let row_sizes: Vec<i64> = rows
            .iter()
            .flat_map(|r| &r.sizes)
            .map(|&r| r as i64)
            .collect();
        let row_records: Vec<u64> = rows
            .iter()
            .flat_map(|r| &r.records)
            .map(|&r| r as u64)
            .collect();
        let mut encoder = segment::StripeEncoder::new(
            coder,
            index,
            plain.len(),
            rows.as_ref().map(|r| &r.sizes[..]),
        )
        .map_err(|e| UplinkError::Corrupt(e.to_string()))?;
        let piece_size = encoder.piece_size();
        let begin = match self
            .call(Req::BeginSegment(pb::BeginSegmentRequest {
                stream_id: stream_id.clone(),
                index,
                piece_size: piece_size as i64,
            }))
            .await
            .map_err(|e| not_found_as(e, || UplinkError::Unexpected))?
        {
            Resp::BeginSegment(b) => b,
            _ => return Err(UplinkError::Unexpected),
        };
        // Spares: the pieces beyond `success` with the highest numbers
        // (parity, so a dataset's data pieces are never among them).
        let spare_count = if self.config.race_spares {
            0
        } else {
            begin.limits.len().saturating_sub(success)
        };
        let mut spares: Vec<u32> = begin.limits.iter().map(|l| l.piece_num).collect();
        spares.sort_unstable_by(|a, b| b.cmp(a));
        spares.truncate(spare_count);
        // Whether each placed piece (in `begin.limits` order) is a spare.
        let spare_slots: Vec<bool> = begin
            .limits
            .iter()
            .map(|l| spares.contains(&l.piece_num))
            .collect();
        // One feed per piece the satellite placed; the encoder sends each
        // stripe to every feed and runs a few stripes ahead of the fastest.
        // A spare's feed hashes the piece itself, as its upload reads it:
        // most spares never start, and then nothing hashes them.
        let pacer = Pacer::new(begin.limits.len());
        let mut senders: Vec<Option<mpsc::UnboundedSender<FeedItem>>> = vec![None; total];
        let mut feeds = Vec::with_capacity(begin.limits.len());
        for (i, limit) in begin.limits.iter().enumerate() {
            let slot = senders
                .get_mut(limit.piece_num as usize)
                .filter(|s| s.is_none())
                .ok_or(UplinkError::Unexpected)?;
            let (tx, feed) = if spare_slots[i] {
                PieceFeed::hashing(piece_size, &pacer, i)
            } else {
                PieceFeed::channel(piece_size, &pacer, i)
            };
            *slot = Some(tx);
            feeds.push(feed);
        }
        encoder.leave_unhashed(spares.iter().map(|&n| n as usize));
        let progress_of = pacer.clone();
        let encoding = tokio::task::spawn_blocking(move || {
            let mut produced: Vec<u64> = Vec::new();
            loop {
                let behind = produced.len().checked_sub(STRIPES_AHEAD + 1);
                if let Some(&need) = behind.and_then(|i| produced.get(i))
                    && !pacer.wait_for(need)
                {
                    // Every upload has ended: nobody wants the rest.
                    return Ok(None);
                }
                let Some(stripe) = encoder.next_stripe(|at, buf| plain.read(at, buf))? else {
                    break;
                };
                produced.push(produced.last().copied().unwrap_or(0) + stripe[0].len() as u64);
                for (tx, bytes) in senders.iter().zip(stripe) {
                    if let Some(tx) = tx {
                        let _ = tx.send(FeedItem::Data(bytes));
                    }
                }
            }
            let (key, hashes) = encoder.finish();
            for (tx, hash) in senders.iter().zip(hashes) {
                if let Some(tx) = tx {
                    let _ = tx.send(hash.map_or(FeedItem::End, FeedItem::Hash));
                }
            }
            plain.recycle();
            Ok::<_, segment::StripeError>(Some(key))
        });
        let begun = t0.elapsed();
        let piece_key = KeyPair::try_from(begin.piece_private_key.as_ref())
            .map_err(|_| UplinkError::Unexpected)?;
        // Progress in plaintext bytes, from the piece bytes sent so far.
        let sent = AtomicU64::new(0);
        let all_piece_bytes = (piece_size * begin.limits.len()).max(1) as u64;
        let mut reported = 0u64;
        let report = |reported: &mut u64, done: u64| {
            if let Some(p) = &progress
                && done > *reported
            {
                p(done - *reported);
                *reported = done;
            }
        };
        // Opens for the spares when the long tail is long: see `lagging`.
        let (spares_go, spares_wait) = tokio::sync::watch::channel(false);
        let mut uploads = FuturesUnordered::new();
        for ((limit, feed), &spare) in begin.limits.iter().zip(feeds).zip(&spare_slots) {
            let (key, sent) = (&piece_key, &sent);
            let mut wait = spares_wait.clone();
            uploads.push(async move {
                let start = async move {
                    if spare {
                        let _ = wait.wait_for(|&go| go).await;
                    }
                };
                let r = piece::upload_after(
                    &self.endpoint,
                    limit,
                    key,
                    feed,
                    self.config.dial_timeout,
                    Some(sent),
                    start,
                )
                .await;
                (limit, r)
            });
        }
        let mut stored = Vec::new();
        let mut failed_data: Vec<u32> = Vec::new();
        // A dataset's records live in its data pieces: training runs on
        // them where they are, so every data piece that can be stored is
        // waited for, not cut off with the long tail.
        let data_settled = |stored: &[pb::PieceResult], failed: &[u32]| {
            !dataset
                || begin
                    .limits
                    .iter()
                    .map(|l| l.piece_num)
                    .filter(|&n| (n as usize) < k)
                    .all(|n| failed.contains(&n) || stored.iter().any(|p| p.piece_num == n))
        };
        let mut last_error = String::from("no nodes were offered");
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        // The spares start when a piece upload fails; when, as a piece is
        // stored, another upload (not a spare) has sent less than half its
        // piece (at its pace it would end after a spare started now); or
        // when `success` pieces are not all stored half the first piece's
        // time after it (a node that took the bytes and stopped answering).
        // Uploads to nodes that keep up end close together, and then the
        // spares are never sent, only encoded.
        let lagging = || lags(&progress_of.progress(), &spare_slots, piece_size as u64);
        let racing = Instant::now();
        let mut hedge_at: Option<tokio::time::Instant> = None;
        loop {
            let (limit, result) = tokio::select! {
                next = uploads.next() => match next {
                    Some(r) => r,
                    None => break,
                },
                _ = tick.tick(), if progress.is_some() => {
                    let done = (plain_len as u128 * sent.load(Ordering::Relaxed) as u128 / all_piece_bytes as u128) as u64;
                    report(&mut reported, done.min(plain_len));
                    continue;
                }
                _ = tokio::time::sleep_until(hedge_at.unwrap_or_else(tokio::time::Instant::now)),
                    if hedge_at.is_some() && !*spares_go.borrow() =>
                {
                    tracing::debug!(segment = index, "the long tail is long: spares start");
                    spares_go.send_replace(true);
                    continue;
                }
            };
            match result {
                Ok(hash) => {
                    stored.push(pb::PieceResult {
                        piece_num: limit.piece_num,
                        node_id: limit.node_id.clone(),
                        hash: Some(hash),
                    });
                    if stored.len() >= success && data_settled(&stored, &failed_data) {
                        break; // long tail: the rest are cancelled below
                    }
                    if hedge_at.is_none() {
                        let wait = (racing.elapsed() / 2).max(std::time::Duration::from_millis(5));
                        hedge_at = Some(tokio::time::Instant::now() + wait);
                    }
                    if !*spares_go.borrow() && lagging() {
                        tracing::debug!(segment = index, "an upload lags: spares start");
                        spares_go.send_replace(true);
                    }
                }
                Err(e) => {
                    spares_go.send_replace(true);
                    tracing::debug!(piece = limit.piece_num, error = %e, "piece upload failed");
                    last_error = e.to_string();
                    if (limit.piece_num as usize) < k {
                        failed_data.push(limit.piece_num);
                    }
                    if stored.len() >= success && data_settled(&stored, &failed_data) {
                        break;
                    }
                }
            }
        }
        drop(uploads);
        let uploaded = t0.elapsed();
        // The encoder has finished (every stored piece had its hash) or
        // stops now that no upload is left.
        let key = match encoding.await {
            Ok(Ok(key)) => key,
            Ok(Err(e)) => {
                return Err(match e {
                    segment::StripeError::Read(e) => UplinkError::Io(e),
                    e => UplinkError::Corrupt(e.to_string()),
                });
            }
            Err(e) => return Err(UplinkError::Io(std::io::Error::other(e))),
        };
        let key = match key {
            Some(key) if stored.len() >= success => key,
            _ => {
                return Err(UplinkError::UploadFailed {
                    stored: stored.len(),
                    needed: success,
                    last_error,
                });
            }
        };
        let meta = pb::SegmentMeta {
            encrypted_key: encryption::seal(obj_key, key.as_bytes()).into(),
            key_nonce: Default::default(),
            plain_size: plain_len as i64,
            piece_size: piece_size as i64,
            row_sizes,
            row_records,
            encrypted_part_info: part_info.unwrap_or_default(),
        };
        self.call(Req::CommitSegment(pb::CommitSegmentRequest {
            stream_id: stream_id.clone(),
            index,
            pieces: stored,
            meta: Some(meta),
            root_piece_id: begin.root_piece_id,
        }))
        .await?;
        tracing::debug!(
            segment = index,
            begin_ms = begun.as_millis() as u64,
            pieces_ms = (uploaded - begun).as_millis() as u64,
            commit_ms = (t0.elapsed() - uploaded).as_millis() as u64,
            "segment stored"
        );
        report(&mut reported, plain_len);
        Ok(())
    }

    /// Downloads `bucket/key` into `writer`; returns the bytes written.
    pub async fn download<W>(
        &self,
        bucket: &str,
        key: &str,
        writer: &mut W,
        progress: Option<Progress>,
    ) -> Result<u64, UplinkError>
    where
        W: AsyncWrite + Unpin,
    {
        self.download_into(bucket, key, StreamSink(writer), progress, None)
            .await
    }

    /// Downloads bytes `start..=end` of `bucket/key` (to the end when
    /// `end` is None) into `writer`; returns the bytes written. As in HTTP,
    /// an end past the object is cut to it and a start past it is refused.
    /// Only the segments that hold the range are fetched.
    pub async fn download_range<W>(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        end: Option<u64>,
        writer: &mut W,
        progress: Option<Progress>,
    ) -> Result<u64, UplinkError>
    where
        W: AsyncWrite + Unpin,
    {
        let sink = RangeSink {
            inner: StreamSink(writer),
            range: 0..0,
            delivered: 0,
        };
        self.download_into(bucket, key, sink, progress, Some((start, end)))
            .await
    }

    /// Downloads `bucket/key` into `file` (from its start), writing the rows
    /// of each segment at their offsets from several threads at once.
    pub async fn download_to_file(
        &self,
        bucket: &str,
        key: &str,
        file: std::fs::File,
        progress: Option<Progress>,
    ) -> Result<u64, UplinkError> {
        self.download_into(
            bucket,
            key,
            FileSink::new(file, self.config.direct_writes),
            progress,
            None,
        )
        .await
    }

    /// Downloads into `sink`; with `range`, only the segments holding it
    /// (when the segment size is known), the sink choosing the bytes.
    async fn download_into(
        &self,
        bucket: &str,
        key: &str,
        mut sink: impl RowSink,
        progress: Option<Progress>,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<u64, UplinkError> {
        let info = self.object_info(bucket, key).await?;
        let meta = self.decrypt_meta(bucket, key, &info)?;
        // A dataset stored with its records shuffled comes back whole, in
        // memory (as it went up), and in its original order.
        let shuffle = meta.dataset.as_ref().and_then(|d| d.shuffle);
        let mut segments = 0..info.segment_count;
        let range = match range {
            Some((start, end)) if start > end.unwrap_or(u64::MAX) || start >= meta.size => {
                return Err(UplinkError::Range {
                    start,
                    end: end.unwrap_or(meta.size),
                    size: meta.size,
                });
            }
            Some((start, end)) => {
                let r = start..end.map_or(meta.size, |e| e.saturating_add(1).min(meta.size));
                sink.set_range(r.clone());
                Some(r)
            }
            None => None,
        };
        let mut sink = Unshuffle {
            inner: sink,
            shuffle,
            stored: Vec::new(),
        };
        // An object uploaded in parts has segments of several sizes,
        // encrypted under their parts' positions: its metadata says where
        // each lies.
        let spans = match &meta.parts {
            Some(runs) => Some(Arc::new(crate::multipart::spans(
                runs,
                info.segment_count,
                meta.size,
            )?)),
            None => None,
        };
        if let Some(r) = &range
            && shuffle.is_none()
        {
            if let Some(spans) = &spans {
                let first = spans.partition_point(|s| s.offset + s.len <= r.start);
                let last = spans.partition_point(|s| s.offset < r.end).max(first);
                segments = first as u32..last as u32;
            } else if let Some(s) = meta.segment_size.filter(|s| *s > 0) {
                let first = u32::try_from(r.start / s).unwrap_or(u32::MAX);
                let last = u32::try_from(r.end.div_ceil(s)).unwrap_or(u32::MAX);
                segments = first.min(info.segment_count)..last.min(info.segment_count);
            }
        }
        let skipped = match &spans {
            Some(spans) => spans
                .get(segments.start as usize)
                .map_or(meta.size, |s| s.offset),
            None => u64::from(segments.start).saturating_mul(meta.segment_size.unwrap_or(0)),
        };
        let obj_key = self.read_key(bucket, key, &info.encrypted_metadata)?;
        let report = |n: u64| {
            if let Some(p) = &progress {
                p(n);
            }
        };
        if info.segment_count == 0 {
            let data = encryption::open(&obj_key, &info.inline_data)
                .map_err(|_| UplinkError::Corrupt("inline data does not decrypt".into()))?;
            let n = sink.write_rows(0, vec![data]).await?;
            sink.finish().await?;
            report(n);
            return Ok(n);
        }
        // A whole object into a file: every segment streams into its place.
        if range.is_none()
            && let Some(file) = sink.positional()
            && let Some(places) = places(
                &meta,
                info.segment_count,
                spans.as_deref().map(Vec::as_slice),
            )
        {
            let reserve = file.clone();
            let size = meta.size;
            tokio::task::spawn_blocking(move || reserve.reserve(size))
                .await
                .map_err(|e| UplinkError::Io(std::io::Error::other(e)))??;
            let n = self
                .stream_segments(
                    bucket,
                    &info.encrypted_key,
                    &obj_key,
                    &places,
                    file,
                    &report,
                )
                .await?;
            sink.finish().await?;
            if n != meta.size {
                return Err(UplinkError::Corrupt(format!(
                    "object has {n} bytes, its metadata says {}",
                    meta.size
                )));
            }
            return Ok(n);
        }
        // Fetching runs in its own task so that it keeps going while this
        // one is busy writing rows out.
        let (tx, mut rx) = mpsc::channel::<Result<(u64, Vec<Vec<u8>>), UplinkError>>(1);
        // Where each segment starts in the object, when the object says.
        let segment_start = {
            let (spans, size) = (spans.clone(), meta.segment_size.filter(|s| *s > 0));
            move |i: u32| match (&spans, size) {
                (Some(spans), _) => spans.get(i as usize).map(|s| s.offset),
                (None, Some(size)) => u64::from(i).checked_mul(size),
                (None, None) => None,
            }
        };
        // The part of a segment a range needs, relative to the segment's
        // start (None: all of it, or not known).
        let within = {
            let range = range.clone().filter(|_| shuffle.is_none());
            move |i: u32| {
                let r = range.as_ref()?;
                let start = segment_start(i)?;
                Some(r.start.saturating_sub(start)..r.end.saturating_sub(start))
            }
        };
        let fetcher = {
            let (this, bucket, enc_key) =
                (self.clone(), bucket.to_string(), info.encrypted_key.clone());
            let count = segments.end;
            let mut next = segments.start;
            tokio::spawn(async move {
                let coders: std::sync::Mutex<HashMap<String, Arc<ErasureCoder>>> =
                    Default::default();
                let mut pending = FuturesOrdered::new();
                loop {
                    while next < count && pending.len() < this.config.download_concurrency {
                        let span = spans.as_ref().and_then(|s| s.get(next as usize)).copied();
                        let cipher = span.map_or(next, |s| s.cipher);
                        let fetch = this.download_segment(
                            &bucket,
                            &enc_key,
                            next,
                            cipher,
                            &obj_key,
                            &coders,
                            within(next),
                        );
                        pending.push_back(async move {
                            let got = fetch.await?;
                            match span {
                                Some(s) if s.len != got.plain_size => {
                                    Err(UplinkError::Corrupt(format!(
                                        "segment {next} holds {} bytes, the object's parts say {}",
                                        got.plain_size, s.len
                                    )))
                                }
                                _ => Ok((got.offset, got.rows)),
                            }
                        });
                        next += 1;
                    }
                    let Some(segment) = pending.next().await else {
                        break;
                    };
                    let failed = segment.is_err();
                    if tx.send(segment).await.is_err() || failed {
                        break;
                    }
                }
            })
        };
        let mut written = skipped;
        let result = async {
            while let Some(segment) = rx.recv().await {
                let (offset, rows) = segment?;
                // Rows a range did not need were left out at the start.
                written += offset;
                let t = Instant::now();
                let n = sink.write_rows(written, rows).await?;
                tracing::debug!(
                    bytes = n,
                    write_ms = t.elapsed().as_millis() as u64,
                    "rows written"
                );
                written += n;
                report(n);
            }
            Ok::<(), UplinkError>(())
        }
        .await;
        drop(rx);
        fetcher.abort();
        result?;
        sink.finish().await?;
        if let Some(r) = range {
            if written < r.end {
                return Err(UplinkError::Corrupt(format!(
                    "object ends at byte {written}, its metadata says {}",
                    meta.size
                )));
            }
            return Ok(r.end - r.start);
        }
        if written != meta.size {
            return Err(UplinkError::Corrupt(format!(
                "object has {written} bytes, its metadata says {}",
                meta.size
            )));
        }
        Ok(written)
    }

    /// Fetches and decodes a segment: all its rows, or when `want` (a
    /// range relative to the segment's start) leaves some out, only the
    /// data pieces of the rows it needs (all of them again should one of
    /// those nodes fail).
    #[allow(clippy::too_many_arguments)]
    async fn download_segment(
        &self,
        bucket: &str,
        enc_key: &bytes::Bytes,
        index: u32,
        cipher_index: u32,
        obj_key: &Key,
        coders: &std::sync::Mutex<HashMap<String, Arc<ErasureCoder>>>,
        want: Option<std::ops::Range<u64>>,
    ) -> Result<SegmentRows, UplinkError> {
        // Data pieces are covered by the rows' AEAD tags, so the first try
        // skips hashing them; if a row then fails to decrypt, the second try
        // checks every piece against its committed hash and so routes
        // around the corrupt one.
        let mut attempt = 0;
        let t0 = Instant::now();
        loop {
            let strict = attempt > 0;
            let SegmentPlan {
                limits,
                scheme,
                coder,
                seg_key,
                piece_key,
                plain_size,
                piece_size,
                row_sizes,
            } = self
                .segment_plan(bucket, enc_key, index, obj_key, coders)
                .await?;
            let asked = t0.elapsed();
            let k = scheme.k();
            // The data rows the wanted bytes lie in, when not all of them,
            // and where the first of them starts in the segment.
            let (rows_wanted, rows_offset) = match (&want, strict) {
                (Some(w), false) => segment::row_spans(k, plain_size, &row_sizes)
                    .ok()
                    .map(|spans| {
                        let rows: Vec<usize> = (0..k)
                            .filter(|&i| spans[i].start < w.end && w.start < spans[i].end)
                            .collect();
                        let offset = rows.first().map_or(0, |&i| spans[i].start);
                        (rows, offset)
                    })
                    .filter(|(rows, _)| !rows.is_empty() && rows.len() < k)
                    .map_or((None, 0), |(rows, offset)| (Some(rows), offset)),
                _ => (None, 0),
            };
            let chosen = match &rows_wanted {
                Some(rows) => loam_piece_transfer::fetch_chosen(
                    &self.endpoint,
                    self.config.dial_timeout,
                    self.config.hedge_after,
                    &limits,
                    scheme,
                    rows,
                    rows.len(),
                    piece_size,
                    &piece_key,
                    false,
                )
                .await
                .inspect_err(|e| {
                    tracing::debug!(segment = index, error = %e, "rows of a range unavailable; fetching the segment")
                })
                .ok(),
                None => None,
            };
            let (mut pieces, rows_wanted, offset) = match chosen {
                Some(pieces) => (pieces, rows_wanted, rows_offset),
                None => (
                    self.fetch_pieces(&limits, scheme, piece_size, &piece_key, strict)
                        .await?,
                    None,
                    0,
                ),
            };
            let fetched = t0.elapsed();
            let decoded = tokio::task::spawn_blocking(move || match rows_wanted {
                Some(rows) => segment::decode_rows(
                    k,
                    &seg_key,
                    cipher_index,
                    plain_size,
                    &row_sizes,
                    &rows,
                    &mut pieces,
                ),
                None => segment::decode(
                    &coder,
                    &seg_key,
                    cipher_index,
                    plain_size,
                    &row_sizes,
                    &mut pieces,
                ),
            })
            .await
            .map_err(|e| UplinkError::Io(std::io::Error::other(e)))?;
            match decoded {
                Ok(rows) => {
                    tracing::debug!(
                        segment = index,
                        satellite_ms = asked.as_millis() as u64,
                        pieces_ms = (fetched - asked).as_millis() as u64,
                        decode_ms = (t0.elapsed() - fetched).as_millis() as u64,
                        "segment fetched"
                    );
                    return Ok(SegmentRows {
                        offset,
                        rows,
                        plain_size: plain_size as u64,
                    });
                }
                Err(segment::DecodeError::Crypto(e)) if !strict => {
                    tracing::warn!(segment = index, error = %e, "segment failed to decrypt; fetching again with every piece verified");
                    attempt += 1;
                }
                Err(e) => return Err(UplinkError::Corrupt(e.to_string())),
            }
        }
    }

    /// Streams every segment of an object into its place in `file`, a few
    /// at a time; returns the bytes written.
    async fn stream_segments(
        &self,
        bucket: &str,
        enc_key: &bytes::Bytes,
        obj_key: &Key,
        places: &[Span],
        file: Arc<BlockWriter>,
        report: &impl Fn(u64),
    ) -> Result<u64, UplinkError> {
        let coders = Default::default();
        let concurrency = self.config.download_concurrency.max(1);
        let mut running = FuturesUnordered::new();
        let mut next = places.iter().zip(0u32..).peekable();
        let mut written = 0u64;
        // The segment started last: the next starts once it is
        // 1/concurrency of the way through, so segments end one after
        // another, never together, and another is always in full flow
        // while one starts (asks for its pieces, waits for first reads).
        let mut youngest: Option<Arc<SegmentProgress>> = None;
        loop {
            while running.is_empty()
                || (running.len() < concurrency && youngest.as_ref().is_none_or(|p| p.passed()))
            {
                let Some((&place, index)) = next.next() else {
                    break;
                };
                let progress = Arc::new(SegmentProgress::new(place.len / concurrency as u64));
                running.push(self.stream_segment(
                    bucket,
                    enc_key,
                    index,
                    place,
                    obj_key,
                    &coders,
                    &file,
                    progress.clone(),
                ));
                youngest = Some(progress);
            }
            let may_start = running.len() < concurrency && next.peek().is_some();
            let waiting = async {
                match &youngest {
                    Some(p) if may_start => p.reached.notified().await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                done = running.next() => {
                    let Some(done) = done else {
                        return Ok(written);
                    };
                    let n = done?;
                    written += n;
                    report(n);
                }
                () = waiting => {}
            }
        }
    }

    /// Streams segment `index` into `place` in the file: its data pieces
    /// row by row as they arrive ([`crate::rowstream`]), or, when one of
    /// them cannot be had, the whole segment fetched and decoded as any
    /// other download does.
    #[allow(clippy::too_many_arguments)]
    async fn stream_segment(
        &self,
        bucket: &str,
        enc_key: &bytes::Bytes,
        index: u32,
        place: Span,
        obj_key: &Key,
        coders: &std::sync::Mutex<HashMap<String, Arc<ErasureCoder>>>,
        file: &Arc<BlockWriter>,
        progress: Arc<SegmentProgress>,
    ) -> Result<u64, UplinkError> {
        let t0 = Instant::now();
        // However this ends, the next segment need not wait for it.
        let _release = ReleaseOnDrop(progress.clone());
        let plan = self
            .segment_plan(bucket, enc_key, index, obj_key, coders)
            .await?;
        let wrong_size = |got: u64| {
            UplinkError::Corrupt(format!(
                "segment {index} holds {got} bytes, the object's metadata says {}",
                place.len
            ))
        };
        if plan.plain_size as u64 != place.len {
            return Err(wrong_size(plan.plain_size as u64));
        }
        let rows = segment::row_streams(
            plan.scheme.k(),
            &plan.seg_key,
            place.cipher,
            plan.plain_size,
            &plan.row_sizes,
            plan.piece_size,
        )
        .map_err(|e| StreamError::Fetch(e.to_string()))
        .and_then(|streams| {
            streams
                .into_iter()
                .zip(0u32..)
                .map(|((span, stream), i)| {
                    let limit = plan.limits.iter().find(|l| l.piece_num == i).cloned();
                    limit
                        .map(|limit| RowJob {
                            limit,
                            span,
                            stream,
                        })
                        .ok_or_else(|| StreamError::Fetch(format!("no node offers data piece {i}")))
                })
                .collect::<Result<Vec<_>, _>>()
        });
        let streamed = match rows {
            Ok(rows) => {
                let setup = StreamSetup {
                    endpoint: self.endpoint.clone(),
                    piece_key: plan.piece_key.clone(),
                    piece_size: plan.piece_size,
                    dial_timeout: self.config.dial_timeout,
                    stall_after: self.config.hedge_after,
                    file: file.clone(),
                    start: place.offset,
                    progress: progress.clone(),
                };
                stream_rows(setup, rows).await
            }
            Err(e) => Err(e),
        };
        match streamed {
            Ok(()) => {
                tracing::debug!(
                    segment = index,
                    ms = t0.elapsed().as_millis() as u64,
                    "segment streamed"
                );
                return Ok(place.len);
            }
            Err(StreamError::Output(e)) => return Err(UplinkError::Io(e)),
            Err(StreamError::Fetch(reason)) => {
                tracing::debug!(segment = index, %reason, "segment did not stream; fetching it whole");
                progress.release();
            }
        }
        let got = self
            .download_segment(bucket, enc_key, index, place.cipher, obj_key, coders, None)
            .await?;
        if got.plain_size != place.len {
            return Err(wrong_size(got.plain_size));
        }
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            let written = file.write_run(place.offset, &got.rows);
            for row in got.rows {
                BufferPool::global().give(row);
            }
            written
        })
        .await
        .map_err(|e| UplinkError::Io(std::io::Error::other(e)))??;
        Ok(place.len)
    }

    /// Asks the satellite for a segment's pieces and opens what it says:
    /// the scheme, the segment's key, and sizes within bounds.
    async fn segment_plan(
        &self,
        bucket: &str,
        enc_key: &bytes::Bytes,
        index: u32,
        obj_key: &Key,
        coders: &std::sync::Mutex<HashMap<String, Arc<ErasureCoder>>>,
    ) -> Result<SegmentPlan, UplinkError> {
        let resp = match self
            .call(Req::DownloadSegment(pb::DownloadSegmentRequest {
                bucket: bucket.to_string(),
                encrypted_key: enc_key.clone(),
                index,
            }))
            .await?
        {
            Resp::DownloadSegment(r) => r,
            _ => return Err(UplinkError::Unexpected),
        };
        let scheme = scheme_of(resp.redundancy.as_ref())?;
        let coder = coders
            .lock()
            .expect("coder cache")
            .entry(scheme.to_string())
            .or_insert_with(|| Arc::new(ErasureCoder::new(scheme)))
            .clone();
        let meta = resp.meta.ok_or(UplinkError::Unexpected)?;
        if !(0..=MAX_PIECE_SIZE).contains(&meta.piece_size)
            || !(0..=MAX_SEGMENT_SIZE).contains(&meta.plain_size)
        {
            return Err(UplinkError::Corrupt(format!(
                "segment metadata claims {} plaintext bytes in pieces of {} bytes",
                meta.plain_size, meta.piece_size
            )));
        }
        let seg_key = encryption::open(obj_key, &meta.encrypted_key)
            .ok()
            .and_then(|k| Key::try_from(k.as_slice()).ok())
            .ok_or_else(|| UplinkError::Corrupt("segment key does not decrypt".into()))?;
        let piece_key = KeyPair::try_from(resp.piece_private_key.as_ref())
            .map_err(|_| UplinkError::Unexpected)?;
        Ok(SegmentPlan {
            limits: resp.limits,
            scheme,
            coder,
            seg_key,
            piece_key,
            plain_size: meta.plain_size.max(0) as usize,
            piece_size: meta.piece_size.max(0) as u64,
            row_sizes: meta.row_sizes,
        })
    }

    async fn fetch_pieces(
        &self,
        limits: &[pb::AddressedOrderLimit],
        scheme: RedundancyScheme,
        piece_size: u64,
        piece_key: &KeyPair,
        verify_all: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, UplinkError> {
        loam_piece_transfer::fetch_pieces(
            &self.endpoint,
            self.config.dial_timeout,
            self.config.hedge_after,
            limits,
            scheme,
            piece_size,
            piece_key,
            verify_all,
        )
        .await
        .map_err(UplinkError::from)
    }
}

/// Where every segment of an object lies in it, when the object says:
/// its parts' spans, or whole segments of its segment size and a last
/// one that holds the rest.
fn places(meta: &ObjectMeta, count: u32, spans: Option<&[Span]>) -> Option<Vec<Span>> {
    if let Some(spans) = spans {
        return Some(spans.to_vec());
    }
    let size = meta.segment_size.filter(|&s| s > 0)?;
    let full = u64::from(count.checked_sub(1)?).checked_mul(size)?;
    if meta.size <= full || meta.size - full > size {
        return None;
    }
    Some(
        (0..count)
            .map(|i| {
                let offset = u64::from(i) * size;
                Span {
                    cipher: i,
                    offset,
                    len: size.min(meta.size - offset),
                }
            })
            .collect(),
    )
}

/// A segment's download as the satellite planned it, checked.
struct SegmentPlan {
    limits: Vec<pb::AddressedOrderLimit>,
    scheme: RedundancyScheme,
    coder: Arc<ErasureCoder>,
    seg_key: Key,
    piece_key: KeyPair,
    plain_size: usize,
    piece_size: u64,
    row_sizes: Vec<i64>,
}

/// What a segment's download gives: its rows from the one at `offset` in
/// the segment on, and the size of the whole segment.
struct SegmentRows {
    offset: u64,
    rows: Vec<Vec<u8>>,
    plain_size: u64,
}

/// Where a download's rows go, in order; `offset` is where the first row
/// of the batch starts in the object.
trait RowSink {
    /// Writes `rows` (consecutive) and returns their total length.
    fn write_rows(
        &mut self,
        offset: u64,
        rows: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<u64, UplinkError>>;
    fn finish(&mut self) -> impl Future<Output = Result<(), UplinkError>>;
    /// The object bytes to keep, for sinks that keep a range.
    fn set_range(&mut self, _range: std::ops::Range<u64>) {}
    /// The file behind a sink that takes the object's bytes at their
    /// offsets in any order, so segments can stream into it.
    fn positional(&self) -> Option<Arc<BlockWriter>> {
        None
    }
}

/// Passes rows through, or, for a dataset stored with its records
/// shuffled, gathers the whole object and passes it on in its original
/// order when it is complete.
struct Unshuffle<S> {
    inner: S,
    shuffle: Option<loam_compute::dataset::Shuffle>,
    stored: Vec<u8>,
}

impl<S: RowSink> RowSink for Unshuffle<S> {
    async fn write_rows(&mut self, offset: u64, rows: Vec<Vec<u8>>) -> Result<u64, UplinkError> {
        if self.shuffle.is_none() {
            return self.inner.write_rows(offset, rows).await;
        }
        let mut n = 0;
        for row in rows {
            self.stored.extend_from_slice(&row);
            n += row.len() as u64;
            BufferPool::global().give(row);
        }
        Ok(n)
    }

    async fn finish(&mut self) -> Result<(), UplinkError> {
        if let Some(shuffle) = self.shuffle.take() {
            let stored = std::mem::take(&mut self.stored);
            let original = tokio::task::spawn_blocking(move || {
                loam_compute::dataset::unshuffle_records(&stored, &shuffle)
            })
            .await
            .map_err(|e| UplinkError::Io(std::io::Error::other(e)))?
            .map_err(|e| UplinkError::Corrupt(e.to_string()))?;
            self.inner.write_rows(0, vec![original]).await?;
        }
        self.inner.finish().await
    }

    fn set_range(&mut self, range: std::ops::Range<u64>) {
        self.inner.set_range(range);
    }

    fn positional(&self) -> Option<Arc<BlockWriter>> {
        self.shuffle.is_none().then(|| self.inner.positional())?
    }
}

/// Any byte stream (stdout, memory): rows one after another.
struct StreamSink<'a, W>(&'a mut W);

impl<W: AsyncWrite + Unpin> RowSink for StreamSink<'_, W> {
    async fn write_rows(&mut self, _offset: u64, rows: Vec<Vec<u8>>) -> Result<u64, UplinkError> {
        let mut n = 0;
        for row in rows {
            self.0.write_all(&row).await?;
            n += row.len() as u64;
            BufferPool::global().give(row);
        }
        Ok(n)
    }

    async fn finish(&mut self) -> Result<(), UplinkError> {
        Ok(self.0.flush().await?)
    }
}

/// The bytes of `range` (object offsets) of whatever is written, passed on
/// to `inner`; the rest is dropped.
struct RangeSink<S> {
    inner: S,
    range: std::ops::Range<u64>,
    delivered: u64,
}

impl<S: RowSink> RowSink for RangeSink<S> {
    async fn write_rows(&mut self, offset: u64, rows: Vec<Vec<u8>>) -> Result<u64, UplinkError> {
        let mut at = offset;
        let mut keep = Vec::new();
        for mut row in rows {
            let len = row.len() as u64;
            let (from, to) = (
                self.range.start.clamp(at, at + len),
                self.range.end.clamp(at, at + len),
            );
            if from < to {
                row.truncate((to - at) as usize);
                row.drain(..(from - at) as usize);
                keep.push(row);
            } else {
                BufferPool::global().give(row);
            }
            at += len;
        }
        if !keep.is_empty() {
            self.delivered += self.inner.write_rows(self.delivered, keep).await?;
        }
        Ok(at - offset)
    }

    async fn finish(&mut self) -> Result<(), UplinkError> {
        self.inner.finish().await
    }

    fn set_range(&mut self, range: std::ops::Range<u64>) {
        self.range = range;
    }
}

/// A file: rows are written at their offsets, from several threads, mostly
/// around the page cache ([`BlockWriter`]: filling new page-cache pages is
/// the single largest cost of a download where fresh memory is slow). Up to
/// [`FileSink::IN_FLIGHT`] segments are being written at once while the next
/// ones download; errors surface at the next write or at `finish`.
struct FileSink {
    writer: Arc<BlockWriter>,
    writes: std::collections::VecDeque<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl FileSink {
    const IN_FLIGHT: usize = 2;

    fn new(file: std::fs::File, direct: bool) -> Self {
        Self {
            writer: Arc::new(BlockWriter::new(file, direct)),
            writes: Default::default(),
        }
    }

    async fn wait_one(&mut self) -> Result<(), UplinkError> {
        if let Some(w) = self.writes.pop_front() {
            w.await
                .map_err(|e| UplinkError::Io(std::io::Error::other(e)))??;
        }
        Ok(())
    }
}

impl RowSink for FileSink {
    async fn write_rows(&mut self, offset: u64, rows: Vec<Vec<u8>>) -> Result<u64, UplinkError> {
        while self.writes.len() >= Self::IN_FLIGHT {
            self.wait_one().await?;
        }
        let n: u64 = rows.iter().map(|r| r.len() as u64).sum();
        let writer = self.writer.clone();
        self.writes.push_back(tokio::task::spawn_blocking(move || {
            // Each thread writes a run of consecutive rows.
            let mut rows = rows;
            let starts: Vec<u64> = rows
                .iter()
                .scan(offset, |at, row| {
                    let start = *at;
                    *at += row.len() as u64;
                    Some(start)
                })
                .collect();
            let failed = std::sync::Mutex::new(None);
            segment::par_chunks(&mut rows, |first, run| {
                if let Err(e) = writer.write_run(starts[first], run) {
                    *failed.lock().expect("error slot") = Some(e);
                }
            });
            for row in rows {
                BufferPool::global().give(row);
            }
            failed.into_inner().expect("error slot").map_or(Ok(()), Err)
        }));
        Ok(n)
    }

    async fn finish(&mut self) -> Result<(), UplinkError> {
        while !self.writes.is_empty() {
            self.wait_one().await?;
        }
        Ok(())
    }

    fn positional(&self) -> Option<Arc<BlockWriter>> {
        Some(self.writer.clone())
    }
}

/// Whether an upload that is not a spare (`spare[i]` false) and has not
/// ended (`progress[i]` is `Some`) has handed QUIC less than half its
/// `piece_size` bytes. Asked when a piece has been stored after time `t`:
/// at its pace such an upload needs more than `2t` in all, and a spare
/// started now would end at about `2t`, so the spares should start.
fn lags(progress: &[Option<u64>], spare: &[bool], piece_size: u64) -> bool {
    progress
        .iter()
        .zip(spare)
        .any(|(p, &spare)| !spare && p.is_some_and(|sent| sent < piece_size / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_start_for_an_upload_far_behind_only() {
        let size = 1000;
        // Everyone past half way, one upload ended, spares not started.
        let near = [Some(950), Some(500), None, Some(0), Some(0)];
        let spare = [false, false, false, true, true];
        assert!(!lags(&near, &spare, size));
        // One upload below half: the spares start.
        let behind = [Some(950), Some(499), None, Some(0), Some(0)];
        assert!(lags(&behind, &spare, size));
        // A spare that has not started does not count as behind.
        assert!(!lags(&[Some(1000), Some(0)], &[false, true], size));
        // Nor does an upload that ended early (stored or failed).
        assert!(!lags(&[Some(1000), None], &[false, false], size));
    }

    #[test]
    fn a_file_that_shrinks_during_upload_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 100]).expect("write");
        let file = Arc::new(std::fs::File::open(&path).expect("open"));
        let segment = Plaintext::File {
            file,
            offset: 40,
            len: 60,
        };
        let mut buf = [0u8; 60];
        segment.read(0, &mut buf).expect("whole range");
        assert_eq!(buf, [7u8; 60]);
        std::fs::write(&path, [7u8; 50]).expect("truncate");
        let err = segment.read(0, &mut buf).expect_err("short file");
        assert!(err.to_string().contains("shorter"), "{err}");
        let mut past = [0u8; 1];
        assert!(segment.read(60, &mut past).is_err(), "beyond the segment");
    }
}
