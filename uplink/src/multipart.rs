//! Objects uploaded in parts (what S3 calls multipart uploads).
//!
//! An upload begun with [`Project::begin_multipart`] takes parts numbered
//! 1 to [`MAX_PART_NUMBER`] in any order, each uploaded (and uploaded
//! again) on its own, from any process holding the grant. A part is split
//! into segments like any object; segment `j` of part `p` is stored at
//! position `p << 16 | j` and its rows are encrypted under that position.
//! The last segment of a part carries the part's record (size, segment
//! count, the caller's digest), sealed with the object's key, so listing
//! the upload's segments is listing its parts.
//!
//! The commit names the parts that make the object, in order: the
//! satellite renumbers their segments 0..n and deletes every other segment
//! of the upload, and the object's sealed metadata keeps the parts' sizes
//! (as runs of equal parts), which downloads need to find a byte and to
//! decrypt each segment under the position it was encrypted at.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use loam_common::encryption;
use loam_common::erasure::ErasureCoder;
use loam_common::pb;
use loam_common::pb::satellite_request::Request as Req;
use loam_common::pb::satellite_response::Response as Resp;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::transfer::{Plaintext, Progress};
use crate::{Item, ObjectMeta, Project, UplinkError};

/// Highest part number (as in S3).
pub const MAX_PART_NUMBER: u32 = 10_000;

/// Bits of a segment position below the part number.
const PART_SHIFT: u32 = 16;

/// Largest sealed object metadata the satellite keeps (its
/// `MAX_ENCRYPTED_METADATA_LEN`).
const MAX_SEALED_METADATA: usize = 64 << 10;

/// Overhead of [`encryption::seal`].
const SEAL_OVERHEAD: usize = 28;

/// A part as uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub number: u32,
    pub size: u64,
    /// What the uploader computed over the part's bytes (the gateway's
    /// MD5), kept encrypted.
    pub digest: String,
    /// When its last segment was committed.
    pub modified_ms: i64,
    /// How many segments hold it, and the largest of them.
    segments: u32,
    segment_size: u64,
}

/// An upload in parts, as listed by [`Project::list_parts`].
#[derive(Debug, Clone)]
pub struct MultipartUpload {
    pub key: String,
    pub upload_id: String,
    pub created_ms: i64,
    /// Given to [`Project::begin_multipart`].
    pub metadata: BTreeMap<String, String>,
    /// The parts whose every segment is stored, by number (the latest
    /// upload of each).
    pub parts: Vec<Part>,
}

/// Sealed on the last segment of a part.
#[derive(Serialize, Deserialize)]
struct PartRecord {
    part: u32,
    size: u64,
    segments: u32,
    segment_size: u64,
    digest: String,
}

/// `count` parts numbered from `first`, each of `size` bytes split into
/// segments of at most `segment_size`: how the segments of an object
/// uploaded in parts lie, in the object's sealed metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartRun(u32, u32, u64, u64);

/// Where one segment lies in the object, and the position its rows were
/// encrypted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub cipher: u32,
    pub offset: u64,
    pub len: u64,
}

/// Segments a part of `size` bytes is split into (an empty part is one
/// empty segment, which carries its record).
fn segments_of(size: u64, segment_size: u64) -> u64 {
    size.div_ceil(segment_size.max(1)).max(1)
}

fn position(part: u32, index: u32) -> u32 {
    part << PART_SHIFT | index
}

/// The segments' places in an object of `size` bytes and `count`
/// segments uploaded as `runs`; an error when they do not add up (the
/// metadata does not match what the satellite holds).
pub(crate) fn spans(runs: &[PartRun], count: u32, size: u64) -> Result<Vec<Span>, UplinkError> {
    let corrupt = || UplinkError::Corrupt("the object's parts do not match its segments".into());
    let mut out = Vec::with_capacity(count as usize);
    let mut offset = 0u64;
    for &PartRun(first, parts, part_size, segment_size) in runs {
        let per_part = segments_of(part_size, segment_size);
        if per_part > 1 << PART_SHIFT || out.len() as u64 + per_part * parts as u64 > count as u64 {
            return Err(corrupt());
        }
        for p in 0..parts {
            let part = first.checked_add(p).filter(|p| *p <= MAX_PART_NUMBER);
            let part = part.ok_or_else(corrupt)?;
            let mut left = part_size;
            for j in 0..per_part as u32 {
                let len = left.min(segment_size);
                out.push(Span {
                    cipher: position(part, j),
                    offset,
                    len,
                });
                offset = offset.checked_add(len).ok_or_else(corrupt)?;
                left -= len;
            }
        }
    }
    if out.len() != count as usize || offset != size {
        return Err(corrupt());
    }
    Ok(out)
}

/// Each part's size, in order.
pub(crate) fn part_sizes(runs: &[PartRun]) -> Vec<u64> {
    runs.iter()
        .flat_map(|&PartRun(_, n, size, _)| std::iter::repeat_n(size, n as usize))
        .collect()
}

/// `parts` (in order) as runs of consecutive numbers of equal size.
fn runs_of(parts: &[&Part]) -> Vec<PartRun> {
    let mut runs: Vec<PartRun> = Vec::new();
    for p in parts {
        match runs.last_mut() {
            Some(PartRun(first, n, size, seg))
                if *size == p.size
                    && *seg == p.segment_size
                    && first.checked_add(*n) == Some(p.number) =>
            {
                *n += 1
            }
            _ => runs.push(PartRun(p.number, 1, p.size, p.segment_size)),
        }
    }
    runs
}

fn stream_id(upload_id: &str) -> Result<bytes::Bytes, UplinkError> {
    hex::decode(upload_id)
        .ok()
        .filter(|id| id.len() == 16)
        .map(Into::into)
        .ok_or_else(|| UplinkError::UploadNotFound(upload_id.to_string()))
}

impl Project {
    /// Begins an upload in parts of `bucket/key`, with the owner's
    /// key-value pairs (sealed with the object's key) that the object will
    /// have. Returns the upload id the other calls take.
    pub async fn begin_multipart(
        &self,
        bucket: &str,
        key: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<String, UplinkError> {
        self.bucket(bucket).await?;
        let obj_key = self.object_key(bucket, key)?;
        let sealed = if metadata.is_empty() {
            Vec::new()
        } else {
            let plain = serde_json::to_vec(metadata).expect("metadata serializes");
            encryption::seal(&obj_key, &plain)
        };
        if sealed.len() > MAX_SEALED_METADATA / 2 {
            return Err(UplinkError::Refused(
                "the object's metadata is too large".into(),
            ));
        }
        let req = pb::BeginObjectRequest {
            bucket: bucket.to_string(),
            encrypted_key: self.encrypt_path(bucket, key)?.into(),
            multipart: true,
            encrypted_metadata: sealed.into(),
        };
        match self
            .call(Req::BeginObject(req))
            .await
            .map_err(|e| crate::not_found_as(e, || UplinkError::BucketNotFound(bucket.into())))?
        {
            Resp::BeginObject(b) => Ok(hex::encode(&b.stream_id)),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// One page of an upload's committed segments from `cursor` on,
    /// checked to be a multipart upload of `bucket/key`.
    async fn upload_segments_page(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        cursor: u32,
        limit: u32,
    ) -> Result<pb::ListUploadSegmentsResponse, UplinkError> {
        let req = pb::ListUploadSegmentsRequest {
            bucket: bucket.to_string(),
            stream_id: stream_id(upload_id)?,
            cursor,
            limit,
        };
        let not_found = || UplinkError::UploadNotFound(upload_id.to_string());
        let resp = match self
            .call(Req::ListUploadSegments(req))
            .await
            .map_err(|e| crate::not_found_as(e, not_found))?
        {
            Resp::ListUploadSegments(r) => r,
            _ => return Err(UplinkError::Unexpected),
        };
        if !resp.multipart || resp.encrypted_key.as_ref() != self.encrypt_path(bucket, key)? {
            return Err(not_found());
        }
        Ok(resp)
    }

    /// Uploads part `number` of an upload in parts from `reader`, streamed
    /// a segment at a time. `digest` is asked once the last byte is read;
    /// it is kept (encrypted) with the part. A part uploaded again
    /// replaces the earlier one.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_part<R, D>(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: u32,
        reader: R,
        digest: D,
        progress: Option<Progress>,
    ) -> Result<Part, UplinkError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        D: FnOnce() -> Result<String, String> + Send,
    {
        if !(1..=MAX_PART_NUMBER).contains(&number) {
            return Err(UplinkError::InvalidPart(format!(
                "part numbers go from 1 to {MAX_PART_NUMBER}, not {number}"
            )));
        }
        let upload = self
            .upload_segments_page(bucket, key, upload_id, 0, 1)
            .await?;
        let stream = stream_id(upload_id)?;
        let scheme = crate::transfer::scheme_of(upload.redundancy.as_ref())?;
        let coder = Arc::new(ErasureCoder::new(scheme));
        let segment_size = upload
            .max_segment_size
            .clamp(1, crate::transfer::MAX_SEGMENT_SIZE) as usize;
        let obj_key = self.object_key(bucket, key)?;

        // A reader task keeps the next segment ready while others upload.
        let (tx, mut rx) = mpsc::channel::<std::io::Result<Plaintext>>(1);
        let reader_task = tokio::spawn(async move {
            let mut reader = reader;
            loop {
                let buf = crate::transfer::read_full(&mut reader, segment_size).await;
                let end = buf.as_ref().map_or(true, |b| b.len() < segment_size);
                if tx.send(buf.map(Plaintext::Memory)).await.is_err() || end {
                    return;
                }
            }
        });
        // Each segment goes once the next is read (or the reader ends), so
        // that the last one can carry the part's record.
        let mut held: Option<Plaintext> = None;
        let mut index = 0u32;
        let mut size = 0u64;
        let mut inflight = FuturesUnordered::new();
        let mut reading = true;
        let result = async {
            loop {
                tokio::select! {
                    buf = rx.recv(), if reading && inflight.len() < self.config.upload_concurrency => {
                        let Some(buf) = buf else {
                            reading = false;
                            continue;
                        };
                        let buf = buf?;
                        if buf.len() == 0 && held.is_some() {
                            continue;
                        }
                        size += buf.len() as u64;
                        if let Some(prev) = held.replace(buf) {
                            if index + 1 >= 1 << PART_SHIFT {
                                return Err(UplinkError::InvalidPart("the part is too large".into()));
                            }
                            inflight.push(self.upload_segment(coder.clone(), &stream, position(number, index), prev, None, None, &obj_key, progress.clone()));
                            index += 1;
                        }
                    }
                    r = inflight.next(), if !inflight.is_empty() => {
                        if let Some(r) = r {
                            r?;
                        }
                    }
                    else => break,
                }
            }
            let last = held.take().unwrap_or(Plaintext::Memory(Vec::new()));
            let record = PartRecord {
                part: number,
                size,
                segments: index + 1,
                segment_size: segment_size as u64,
                digest: digest().map_err(UplinkError::Refused)?,
            };
            let sealed = encryption::seal(
                &obj_key,
                &serde_json::to_vec(&record).expect("part record serializes"),
            );
            self.upload_segment(
                coder.clone(),
                &stream,
                position(number, index),
                last,
                None,
                Some(sealed.into()),
                &obj_key,
                progress.clone(),
            )
            .await?;
            Ok(Part {
                number,
                size,
                digest: record.digest,
                modified_ms: loam_common::orders::now_ms(),
                segments: record.segments,
                segment_size: record.segment_size,
            })
        }
        .await;
        drop(rx);
        let _ = reader_task.await;
        result
    }

    /// Abandons an upload in parts of `bucket/key`: the satellite forgets
    /// it and its parts' pieces become garbage.
    pub async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), UplinkError> {
        self.upload_segments_page(bucket, key, upload_id, 0, 1)
            .await?;
        self.abort(bucket, upload_id).await.map_err(|e| {
            crate::not_found_as(e, || UplinkError::UploadNotFound(upload_id.to_string()))
        })
    }

    /// An upload in parts of `bucket/key`, with the parts stored so far.
    pub async fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<MultipartUpload, UplinkError> {
        let obj_key = self.object_key(bucket, key)?;
        let mut cursor = 0u32;
        let mut first = None;
        let mut positions = HashSet::new();
        // Every record of each part number, newest last.
        let mut records: BTreeMap<u32, Vec<(i64, u32, PartRecord)>> = BTreeMap::new();
        loop {
            let page = self
                .upload_segments_page(bucket, key, upload_id, cursor, 1000)
                .await?;
            for s in &page.items {
                positions.insert(s.position);
                if s.encrypted_part_info.is_empty() {
                    continue;
                }
                let record = encryption::open(&obj_key, &s.encrypted_part_info)
                    .ok()
                    .and_then(|p| serde_json::from_slice::<PartRecord>(&p).ok())
                    .ok_or_else(|| UplinkError::Corrupt("a part record does not decrypt".into()))?;
                records.entry(record.part).or_default().push((
                    s.created_unix_ms,
                    s.position,
                    record,
                ));
            }
            let next = page.items.last().and_then(|s| s.position.checked_add(1));
            let more = page.more;
            if first.is_none() {
                first = Some(page);
            }
            match next {
                Some(next) if more => cursor = next,
                _ => break,
            }
        }
        let first = first.ok_or(UplinkError::Unexpected)?;
        let metadata = if first.encrypted_metadata.is_empty() {
            BTreeMap::new()
        } else {
            encryption::open(&obj_key, &first.encrypted_metadata)
                .ok()
                .and_then(|p| serde_json::from_slice(&p).ok())
                .ok_or_else(|| {
                    UplinkError::Corrupt("the upload's metadata does not decrypt".into())
                })?
        };
        let mut parts = Vec::new();
        for (number, mut recs) in records {
            // The latest upload of the part, if all of it is there: its
            // record is on its last segment, and every segment before it
            // is stored.
            recs.sort_by_key(|(t, at, _)| (*t, *at));
            let Some((modified_ms, at, record)) = recs.pop() else {
                continue;
            };
            let whole = record.segments >= 1
                && record.part == number
                && at == position(number, record.segments - 1)
                && (0..record.segments).all(|j| positions.contains(&position(number, j)))
                && segments_of(record.size, record.segment_size) == record.segments as u64;
            if whole {
                parts.push(Part {
                    number,
                    size: record.size,
                    digest: record.digest,
                    modified_ms,
                    segments: record.segments,
                    segment_size: record.segment_size,
                });
            }
        }
        Ok(MultipartUpload {
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            created_ms: first.created_unix_ms,
            metadata,
            parts,
        })
    }

    /// Makes `bucket/key` of the parts `numbers` (increasing) of an upload
    /// in parts, with the metadata it began with and `extra` (replacing
    /// equal keys). Parts left out are deleted.
    pub async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        numbers: &[u32],
        extra: BTreeMap<String, String>,
    ) -> Result<Item, UplinkError> {
        if numbers.is_empty() {
            return Err(UplinkError::InvalidPart(
                "an object is made of at least one part".into(),
            ));
        }
        if numbers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(UplinkError::InvalidPart(
                "parts must be listed in increasing order".into(),
            ));
        }
        let upload = self.list_parts(bucket, key, upload_id).await?;
        let mut chosen = Vec::with_capacity(numbers.len());
        for n in numbers {
            let part = upload
                .parts
                .iter()
                .find(|p| p.number == *n)
                .ok_or_else(|| UplinkError::InvalidPart(format!("part {n} was not uploaded")))?;
            chosen.push(part);
        }
        let positions: Vec<u32> = chosen
            .iter()
            .flat_map(|p| (0..p.segments).map(|j| position(p.number, j)))
            .collect();
        let size = chosen
            .iter()
            .try_fold(0u64, |sum, p| sum.checked_add(p.size))
            .ok_or(UplinkError::InvalidPart(
                "the parts add up to too much".into(),
            ))?;
        let mut custom = upload.metadata;
        custom.extend(extra);
        let meta = ObjectMeta {
            size,
            segment_size: None,
            parts: Some(runs_of(&chosen)),
            custom,
            dataset: None,
        };
        let plain_len = serde_json::to_vec(&meta)
            .expect("metadata serializes")
            .len();
        if plain_len + SEAL_OVERHEAD > MAX_SEALED_METADATA {
            return Err(UplinkError::InvalidPart(format!(
                "{} parts of differing sizes are more than an object's metadata can describe",
                chosen.len()
            )));
        }
        let obj_key = self.object_key(bucket, key)?;
        let created = self
            .commit_object(
                &stream_id(upload_id)?,
                &obj_key,
                &meta,
                positions.len() as u32,
                Vec::new(),
                false,
                0,
                positions,
            )
            .await
            .map_err(|e| {
                crate::not_found_as(e, || UplinkError::UploadNotFound(upload_id.to_string()))
            })?;
        Ok(Item {
            key: key.to_string(),
            is_prefix: false,
            size,
            created_ms: created,
            segments: meta.parts.as_deref().map_or(0, |r| {
                r.iter()
                    .map(|&PartRun(_, n, s, seg)| n as u64 * segments_of(s, seg))
                    .sum::<u64>() as u32
            }),
            expires_ms: None,
            parts: chosen.iter().map(|p| p.size).collect(),
            metadata: meta.custom,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, size: u64) -> Part {
        Part {
            number,
            size,
            digest: String::new(),
            modified_ms: 0,
            segments: segments_of(size, 10) as u32,
            segment_size: 10,
        }
    }

    #[test]
    fn equal_consecutive_parts_make_one_run() {
        let parts = [part(1, 25), part(2, 25), part(3, 25), part(4, 7)];
        let refs: Vec<&Part> = parts.iter().collect();
        let runs = runs_of(&refs);
        assert_eq!(runs, vec![PartRun(1, 3, 25, 10), PartRun(4, 1, 7, 10)]);
        assert_eq!(part_sizes(&runs), vec![25, 25, 25, 7]);
        // A gap in the numbers starts a new run.
        let parts = [part(1, 25), part(3, 25)];
        let refs: Vec<&Part> = parts.iter().collect();
        assert_eq!(runs_of(&refs).len(), 2);
    }

    #[test]
    fn spans_place_each_segment_under_its_part_position() {
        let runs = [PartRun(2, 2, 25, 10), PartRun(5, 1, 0, 10)];
        let spans = spans(&runs, 7, 50).expect("spans");
        let want = [
            (position(2, 0), 0, 10),
            (position(2, 1), 10, 10),
            (position(2, 2), 20, 5),
            (position(3, 0), 25, 10),
            (position(3, 1), 35, 10),
            (position(3, 2), 45, 5),
            (position(5, 0), 50, 0),
        ];
        let got: Vec<_> = spans.iter().map(|s| (s.cipher, s.offset, s.len)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn spans_that_do_not_add_up_are_refused() {
        let runs = [PartRun(1, 2, 25, 10)];
        assert!(spans(&runs, 6, 50).is_ok());
        assert!(
            spans(&runs, 5, 50).is_err(),
            "fewer segments than parts need"
        );
        assert!(
            spans(&runs, 7, 50).is_err(),
            "more segments than parts need"
        );
        assert!(spans(&runs, 6, 51).is_err(), "size differs");
        assert!(spans(&[PartRun(MAX_PART_NUMBER, 2, 1, 10)], 2, 2).is_err());
        assert!(spans(&[PartRun(1, 1, u64::MAX, 1)], 3, 0).is_err());
    }
}
