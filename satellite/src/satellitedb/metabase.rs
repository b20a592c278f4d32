//! The metabase: buckets, objects, uploads in progress, segments and the
//! pieces they place, and the receipts of commits.
//!
//! Reads return typed records ([`Stored`] where a later write must land
//! over exactly what was read); writes are gathered in a [`Batch`] of typed
//! changes and expectations and applied whole or not at all by
//! [`Metabase::write`]. Walks go a page at a time, so memory stays bounded
//! whatever the number of objects or segments.
//!
//! Layout in the backend (the only place that knows it): buckets by
//! project id (16 bytes) and name; objects by project id, bucket name, a
//! zero byte and the encrypted key (so a bucket's objects, and a prefix of
//! them, are one key range in key order); pending uploads and reference
//! counts by stream id; pending and committed segments by stream id and
//! big-endian index; a project's uploads by project id and stream id;
//! receipts under `committed:` and the stream id in the `meta` table.

use std::ops::ControlFlow;
use std::sync::Arc;

use loam_common::pb;
use prost::Message;

use super::{Stored, decode, delete_where, stored, walk};
use crate::db::{Built, DbError, Kv, Op, Table};
use crate::metainfo::ProjectId;

/// Where an object is: its project, bucket and encrypted key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectLocation {
    pub project: ProjectId,
    pub bucket: String,
    pub key: Vec<u8>,
}

impl ObjectLocation {
    pub fn new(project: &ProjectId, bucket: &str, key: &[u8]) -> Self {
        Self {
            project: *project,
            bucket: bucket.to_string(),
            key: key.to_vec(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut k = bucket_prefix(&self.project, &self.bucket);
        k.extend_from_slice(&self.key);
        k
    }

    fn decode(k: &[u8]) -> Option<Self> {
        let (project, rest) = k.split_first_chunk::<16>()?;
        let end = rest.iter().position(|b| *b == 0)?;
        Some(Self {
            project: *project,
            bucket: String::from_utf8(rest[..end].to_vec()).ok()?,
            key: rest[end + 1..].to_vec(),
        })
    }
}

/// A segment's place: its stream and index in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SegmentPosition {
    pub stream: Vec<u8>,
    pub index: u32,
}

impl SegmentPosition {
    pub fn new(stream: &[u8], index: u32) -> Self {
        Self {
            stream: stream.to_vec(),
            index,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut k = self.stream.clone();
        k.extend_from_slice(&self.index.to_be_bytes());
        k
    }

    fn decode(k: &[u8]) -> Option<Self> {
        let (stream, index) = k.split_last_chunk::<4>()?;
        Some(Self {
            stream: stream.to_vec(),
            index: u32::from_be_bytes(*index),
        })
    }
}

impl std::fmt::Display for SegmentPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", hex::encode(&self.stream), self.index)
    }
}

/// What a commit leaves behind for the same commit asked again: where the
/// object went and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub project: ProjectId,
    pub created_unix_ms: i64,
    pub bucket: String,
    pub encrypted_key: Vec<u8>,
}

impl Receipt {
    /// project (16 bytes), commit time (8, big-endian), bucket, 0, key.
    fn encode(&self) -> Vec<u8> {
        [
            self.project.as_slice(),
            &self.created_unix_ms.to_be_bytes(),
            self.bucket.as_bytes(),
            &[0],
            &self.encrypted_key,
        ]
        .concat()
    }

    fn decode(v: &[u8]) -> Result<Self, DbError> {
        let corrupt = || DbError::Corrupt("commit receipt");
        let (project, rest) = v.split_first_chunk::<16>().ok_or_else(corrupt)?;
        let (created, rest) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
        let end = rest.iter().position(|b| *b == 0).ok_or_else(corrupt)?;
        Ok(Self {
            project: *project,
            created_unix_ms: i64::from_be_bytes(*created),
            bucket: String::from_utf8(rest[..end].to_vec()).map_err(|_| corrupt())?,
            encrypted_key: rest[end + 1..].to_vec(),
        })
    }
}

const RECEIPT_PREFIX: &[u8] = b"committed:";

/// A stored stream reference count; absent: the one object that committed
/// the stream.
fn ref_count(raw: Option<&[u8]>) -> Result<u64, DbError> {
    match raw {
        Some(v) => Ok(u64::from_le_bytes(
            v.try_into()
                .map_err(|_| DbError::Corrupt("stream reference count"))?,
        )),
        None => Ok(1),
    }
}

fn receipt_key(stream: &[u8]) -> Vec<u8> {
    [RECEIPT_PREFIX, stream].concat()
}

fn bucket_key(project: &ProjectId, name: &str) -> Vec<u8> {
    [project.as_slice(), name.as_bytes()].concat()
}

/// Where a bucket's objects start (bucket names hold no zero byte).
fn bucket_prefix(project: &ProjectId, name: &str) -> Vec<u8> {
    [project.as_slice(), name.as_bytes(), &[0]].concat()
}

fn project_upload_key(project: &[u8], stream: &[u8]) -> Vec<u8> {
    [project, stream].concat()
}

/// Typed changes to the metabase, applied whole or not at all by
/// [`Metabase::write`]. An `expect_*` makes the batch apply only if the
/// record is still what was read (or still absent).
#[derive(Default, Debug)]
#[must_use]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn expect_bucket(
        &mut self,
        project: &ProjectId,
        name: &str,
        read: Option<&Stored<pb::BucketRecord>>,
    ) {
        self.ops.push(Op::Expect(
            Table::Buckets,
            bucket_key(project, name),
            read.map(|r| r.raw().to_vec()),
        ));
    }

    pub fn put_bucket(&mut self, project: &ProjectId, name: &str, rec: &pb::BucketRecord) {
        self.ops.push(Op::Put(
            Table::Buckets,
            bucket_key(project, name),
            rec.encode_to_vec(),
        ));
    }

    pub fn delete_bucket(&mut self, project: &ProjectId, name: &str) {
        self.ops
            .push(Op::Delete(Table::Buckets, bucket_key(project, name)));
    }

    pub fn expect_object(&mut self, at: &ObjectLocation, read: Option<&Stored<pb::ObjectRecord>>) {
        self.ops.push(Op::Expect(
            Table::Objects,
            at.encode(),
            read.map(|r| r.raw().to_vec()),
        ));
    }

    pub fn put_object(&mut self, at: &ObjectLocation, rec: &pb::ObjectRecord) {
        self.ops
            .push(Op::Put(Table::Objects, at.encode(), rec.encode_to_vec()));
    }

    pub fn delete_object(&mut self, at: &ObjectLocation) {
        self.ops.push(Op::Delete(Table::Objects, at.encode()));
    }

    /// A new upload, found by its stream id and among its project's.
    pub fn put_pending(&mut self, stream: &[u8], rec: &pb::PendingObject) {
        self.ops.push(Op::Put(
            Table::PendingObjects,
            stream.to_vec(),
            rec.encode_to_vec(),
        ));
        self.ops.push(Op::Put(
            Table::ProjectPending,
            project_upload_key(&rec.project_id, stream),
            Vec::new(),
        ));
    }

    pub fn expect_pending(&mut self, stream: &[u8], read: &Stored<pb::PendingObject>) {
        self.ops.push(Op::Expect(
            Table::PendingObjects,
            stream.to_vec(),
            Some(read.raw().to_vec()),
        ));
    }

    /// The upload's record goes (its segments stay: a commit keeps them).
    pub fn delete_pending(&mut self, project: &[u8], stream: &[u8]) {
        self.ops
            .push(Op::Delete(Table::PendingObjects, stream.to_vec()));
        self.ops.push(Op::Delete(
            Table::ProjectPending,
            project_upload_key(project, stream),
        ));
    }

    pub fn put_pending_segment(&mut self, at: &SegmentPosition, rec: &pb::PendingSegment) {
        self.ops.push(Op::Put(
            Table::PendingSegments,
            at.encode(),
            rec.encode_to_vec(),
        ));
    }

    pub fn delete_pending_segment(&mut self, at: &SegmentPosition) {
        self.ops
            .push(Op::Delete(Table::PendingSegments, at.encode()));
    }

    pub fn put_segment(&mut self, at: &SegmentPosition, rec: &pb::SegmentRecord) {
        self.ops
            .push(Op::Put(Table::Segments, at.encode(), rec.encode_to_vec()));
    }

    pub fn delete_segment(&mut self, at: &SegmentPosition) {
        self.ops.push(Op::Delete(Table::Segments, at.encode()));
    }

    pub fn expect_segment(&mut self, at: &SegmentPosition, read: &Stored<pb::SegmentRecord>) {
        self.ops.push(Op::Expect(
            Table::Segments,
            at.encode(),
            Some(read.raw().to_vec()),
        ));
    }

    pub fn put_receipt(&mut self, stream: &[u8], receipt: &Receipt) {
        self.ops
            .push(Op::Put(Table::Meta, receipt_key(stream), receipt.encode()));
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The metabase over one of the satellite's databases.
pub struct Metabase {
    kv: Arc<dyn Kv>,
    /// Whether this process knows the project-to-uploads index is built.
    uploads_indexed: Built,
}

impl Metabase {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self {
            kv,
            uploads_indexed: Built::default(),
        }
    }

    /// Whether other processes write this database too.
    pub fn shared(&self) -> bool {
        self.kv.shared()
    }

    /// Applies `batch` whole, or nothing of it ([`DbError::Conflict`] when
    /// one of its expectations no longer holds).
    pub fn write(&self, batch: Batch) -> Result<(), DbError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        self.kv.write(batch.ops)
    }

    // ------------------------------------------------------------ buckets

    /// A bucket's record, also while it is being deleted.
    pub fn bucket(
        &self,
        project: &ProjectId,
        name: &str,
    ) -> Result<Option<Stored<pb::BucketRecord>>, DbError> {
        self.kv
            .get(Table::Buckets, &bucket_key(project, name))?
            .map(|v| stored(v, "bucket"))
            .transpose()
    }

    /// Creates a bucket unless one of that name exists (in this process or
    /// any other): returns whether it did.
    pub fn create_bucket(
        &self,
        project: &ProjectId,
        name: &str,
        rec: &pb::BucketRecord,
    ) -> Result<bool, DbError> {
        let mut batch = Batch::new();
        batch.expect_bucket(project, name, None);
        batch.put_bucket(project, name, rec);
        match self.write(batch) {
            Ok(()) => Ok(true),
            Err(DbError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets or clears a bucket's `deleting` mark, only over the record as
    /// `read`; returns the record as now stored.
    pub fn mark_bucket_deleting(
        &self,
        project: &ProjectId,
        name: &str,
        read: &Stored<pb::BucketRecord>,
        deleting: bool,
    ) -> Result<Stored<pb::BucketRecord>, DbError> {
        let marked = pb::BucketRecord {
            deleting,
            ..(**read).clone()
        };
        let raw = marked.encode_to_vec();
        let mut batch = Batch::new();
        batch.expect_bucket(project, name, Some(read));
        batch.ops.push(Op::Put(
            Table::Buckets,
            bucket_key(project, name),
            raw.clone(),
        ));
        self.write(batch)?;
        Ok(Stored::new(marked, raw))
    }

    /// Calls `f` with each of the project's buckets (name, record) in name
    /// order, a page at a time.
    pub fn for_each_bucket<E: From<DbError>>(
        &self,
        project: &ProjectId,
        mut f: impl FnMut(String, pb::BucketRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        walk(&*self.kv, Table::Buckets, project, b"", |k, v| {
            let name = String::from_utf8_lossy(&k[project.len()..]).into_owned();
            f(name, decode(&v, "bucket")?)?;
            Ok(ControlFlow::Continue(()))
        })
    }

    // ------------------------------------------------------------ objects

    pub fn object(&self, at: &ObjectLocation) -> Result<Option<Stored<pb::ObjectRecord>>, DbError> {
        self.kv
            .get(Table::Objects, &at.encode())?
            .map(|v| stored(v, "object"))
            .transpose()
    }

    /// Up to `limit` objects of a bucket whose keys start with `prefix`,
    /// from key `start` on (inclusive; empty: from the prefix), in key
    /// order, with their keys.
    pub fn objects_page(
        &self,
        project: &ProjectId,
        bucket: &str,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyedObject>, DbError> {
        let base = bucket_prefix(project, bucket);
        let full_prefix = [base.as_slice(), prefix].concat();
        let from = if start.is_empty() {
            Vec::new()
        } else {
            [base.as_slice(), start].concat()
        };
        self.kv
            .scan(Table::Objects, &full_prefix, &from, limit)?
            .into_iter()
            .map(|(k, v)| Ok((k[base.len()..].to_vec(), stored(v, "object")?)))
            .collect()
    }

    /// Calls `f` with every object of `project` (all projects: `None`), or
    /// of one of its buckets, in key order a page at a time, until `f`
    /// breaks. `f` may write. A record that does not decode is logged and
    /// skipped: one bad record must not stop every chore.
    pub fn for_each_object<E: From<DbError>>(
        &self,
        scope: ObjectScope<'_>,
        mut f: impl FnMut(ObjectLocation, Stored<pb::ObjectRecord>) -> Result<ControlFlow<()>, E>,
    ) -> Result<(), E> {
        let prefix = match scope {
            ObjectScope::All => Vec::new(),
            ObjectScope::Project(p) => p.to_vec(),
            ObjectScope::Bucket(p, b) => bucket_prefix(p, b),
        };
        walk(&*self.kv, Table::Objects, &prefix, b"", |k, v| {
            let (Some(at), Ok(rec)) = (ObjectLocation::decode(&k), stored(v, "object")) else {
                tracing::error!(
                    key = hex::encode(&k),
                    "an object record does not decode; skipped"
                );
                return Ok(ControlFlow::Continue(()));
            };
            f(at, rec)
        })
    }

    // ------------------------------------------------- uploads in progress

    pub fn pending(&self, stream: &[u8]) -> Result<Option<Stored<pb::PendingObject>>, DbError> {
        self.kv
            .get(Table::PendingObjects, stream)?
            .map(|v| stored(v, "pending object"))
            .transpose()
    }

    /// The stream ids of the project's uploads in progress.
    pub fn project_uploads(&self, project: &ProjectId) -> Result<Vec<Vec<u8>>, DbError> {
        self.index_uploads()?;
        let mut streams = Vec::new();
        walk(&*self.kv, Table::ProjectPending, project, b"", |k, _| {
            streams.push(k[project.len()..].to_vec());
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })?;
        Ok(streams)
    }

    /// Builds the project-to-uploads index of a database from before it,
    /// once.
    fn index_uploads(&self) -> Result<(), DbError> {
        self.uploads_indexed.ensure(|| {
            crate::db::index_once(
                &*self.kv,
                "project-pending",
                Table::PendingObjects,
                |k, v| {
                    let p: pb::PendingObject = decode(v, "pending object")?;
                    Ok(Some(Op::Put(
                        Table::ProjectPending,
                        project_upload_key(&p.project_id, k),
                        Vec::new(),
                    )))
                },
            )
        })
    }

    /// Calls `f` with every upload in progress (stream id, record), a page
    /// at a time.
    pub fn for_each_pending<E: From<DbError>>(
        &self,
        mut f: impl FnMut(Vec<u8>, pb::PendingObject) -> Result<(), E>,
    ) -> Result<(), E> {
        walk(&*self.kv, Table::PendingObjects, b"", b"", |k, v| {
            f(k, decode(&v, "pending object")?)?;
            Ok(ControlFlow::Continue(()))
        })
    }

    pub fn pending_segment(
        &self,
        at: &SegmentPosition,
    ) -> Result<Option<pb::PendingSegment>, DbError> {
        self.kv
            .get(Table::PendingSegments, &at.encode())?
            .map(|v| decode(&v, "pending segment"))
            .transpose()
    }

    /// Calls `f` with every segment begun and not committed, a page at a
    /// time.
    pub fn for_each_pending_segment<E: From<DbError>>(
        &self,
        mut f: impl FnMut(pb::PendingSegment) -> Result<(), E>,
    ) -> Result<(), E> {
        walk(&*self.kv, Table::PendingSegments, b"", b"", |_, v| {
            f(decode(&v, "pending segment")?)?;
            Ok(ControlFlow::Continue(()))
        })
    }

    /// Adds to `batch` the deletion of an upload in progress with every
    /// segment it began or committed.
    pub fn delete_upload(
        &self,
        project: &[u8],
        stream: &[u8],
        batch: &mut Batch,
    ) -> Result<(), DbError> {
        batch.delete_pending(project, stream);
        for table in [Table::PendingSegments, Table::Segments] {
            walk(&*self.kv, table, stream, b"", |k, _| {
                batch.ops.push(Op::Delete(table, k));
                Ok::<_, DbError>(ControlFlow::Continue(()))
            })?;
        }
        Ok(())
    }

    // ----------------------------------------------------------- segments

    pub fn segment(
        &self,
        at: &SegmentPosition,
    ) -> Result<Option<Stored<pb::SegmentRecord>>, DbError> {
        self.kv
            .get(Table::Segments, &at.encode())?
            .map(|v| stored(v, "segment"))
            .transpose()
    }

    /// Up to `limit` committed segments of `stream` from position `from`
    /// on, in position order.
    pub fn stream_segments(
        &self,
        stream: &[u8],
        from: u32,
        limit: usize,
    ) -> Result<Vec<(u32, Stored<pb::SegmentRecord>)>, DbError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let start = SegmentPosition::new(stream, from).encode();
        walk(&*self.kv, Table::Segments, stream, &start, |k, v| {
            let at = SegmentPosition::decode(&k).ok_or(DbError::Corrupt("segment key"))?;
            out.push((at.index, stored(v, "segment")?));
            Ok::<_, DbError>(if out.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        Ok(out)
    }

    /// The positions of `stream`'s segments begun and not committed.
    pub fn pending_segment_positions(&self, stream: &[u8]) -> Result<Vec<u32>, DbError> {
        let mut out = Vec::new();
        walk(&*self.kv, Table::PendingSegments, stream, b"", |k, _| {
            let at = SegmentPosition::decode(&k).ok_or(DbError::Corrupt("segment key"))?;
            out.push(at.index);
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    /// How many segments of `stream` are committed.
    pub fn segment_count(&self, stream: &[u8]) -> Result<u32, DbError> {
        let mut n = 0u32;
        walk(&*self.kv, Table::Segments, stream, b"", |_, _| {
            n = n.saturating_add(1);
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })?;
        Ok(n)
    }

    /// Calls `f` with every committed segment, a page at a time: the one
    /// segment loop the chores (checker, audit sampling, tally, garbage
    /// collection) walk. A record that does not decode is logged and
    /// skipped.
    pub fn for_each_segment<E: From<DbError>>(
        &self,
        mut f: impl FnMut(SegmentPosition, Stored<pb::SegmentRecord>) -> Result<(), E>,
    ) -> Result<(), E> {
        walk(&*self.kv, Table::Segments, b"", b"", |k, v| {
            match (SegmentPosition::decode(&k), stored(v, "segment")) {
                (Some(at), Ok(seg)) => f(at, seg)?,
                _ => tracing::error!(
                    key = hex::encode(&k),
                    "a segment record does not decode; skipped"
                ),
            }
            Ok(ControlFlow::Continue(()))
        })
    }

    /// Replaces a segment's pieces if the segment is still exactly `read`
    /// (not deleted, repaired or otherwise changed meanwhile, by this
    /// process or another). Returns whether it did.
    pub fn replace_segment_pieces(
        &self,
        at: &SegmentPosition,
        read: &Stored<pb::SegmentRecord>,
        pieces: Vec<pb::StoredPieceRef>,
    ) -> Result<bool, DbError> {
        let mut new = (**read).clone();
        new.pieces = pieces;
        let mut batch = Batch::new();
        batch.expect_segment(at, read);
        batch.put_segment(at, &new);
        match self.write(batch) {
            Ok(()) => Ok(true),
            Err(DbError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds to `batch` the reference changes to the streams of `changes`
    /// (+1: a copy now shares it; -1: an object that used it is gone),
    /// expecting each count as read. A stream nobody uses any more loses
    /// its segments.
    pub fn change_stream_refs(
        &self,
        changes: &[(&pb::ObjectRecord, i64)],
        batch: &mut Batch,
    ) -> Result<(), DbError> {
        let mut deltas: Vec<(&[u8], i64)> = Vec::new();
        for (obj, delta) in changes {
            if obj.segment_count == 0 {
                continue;
            }
            match deltas.iter_mut().find(|(s, _)| *s == &obj.stream_id[..]) {
                Some((_, d)) => *d += delta,
                None => deltas.push((&obj.stream_id, *delta)),
            }
        }
        for (stream, delta) in deltas.into_iter().filter(|(_, d)| *d != 0) {
            let raw = self.kv.get(Table::StreamRefs, stream)?;
            let current = ref_count(raw.as_deref())?;
            // Another process changing the count meanwhile fails the batch.
            batch
                .ops
                .push(Op::Expect(Table::StreamRefs, stream.to_vec(), raw));
            let count = i128::from(current) + i128::from(delta);
            if count <= 0 {
                batch
                    .ops
                    .push(Op::Delete(Table::StreamRefs, stream.to_vec()));
                walk(&*self.kv, Table::Segments, stream, b"", |k, _| {
                    batch.ops.push(Op::Delete(Table::Segments, k));
                    Ok::<_, DbError>(ControlFlow::Continue(()))
                })?;
            } else if count == 1 {
                batch
                    .ops
                    .push(Op::Delete(Table::StreamRefs, stream.to_vec()));
            } else {
                let count =
                    u64::try_from(count).map_err(|_| DbError::Overflow("stream references"))?;
                batch.ops.push(Op::Put(
                    Table::StreamRefs,
                    stream.to_vec(),
                    count.to_le_bytes().to_vec(),
                ));
            }
        }
        Ok(())
    }

    /// How many objects share `stream` (one when never copied).
    pub fn stream_refs(&self, stream: &[u8]) -> Result<u64, DbError> {
        ref_count(self.kv.get(Table::StreamRefs, stream)?.as_deref())
    }

    // ----------------------------------------------------------- receipts

    /// The receipt of the commit of upload `stream`, if it was kept.
    pub fn receipt(&self, stream: &[u8]) -> Result<Option<Receipt>, DbError> {
        self.kv
            .get(Table::Meta, &receipt_key(stream))?
            .map(|v| Receipt::decode(&v))
            .transpose()
    }

    /// Deletes the receipts of commits at or before `cutoff_ms` (and any
    /// that do not parse); returns how many.
    pub fn delete_receipts_until(&self, cutoff_ms: i64) -> Result<usize, DbError> {
        delete_where(&*self.kv, Table::Meta, RECEIPT_PREFIX, |_, v| {
            // One that does not parse is of no use either.
            Receipt::decode(v)
                .ok()
                .is_none_or(|r| r.created_unix_ms <= cutoff_ms)
        })
    }
}

/// An object's encrypted key and record.
pub type KeyedObject = (Vec<u8>, Stored<pb::ObjectRecord>);

/// Which objects [`Metabase::for_each_object`] walks.
#[derive(Clone, Copy, Debug)]
pub enum ObjectScope<'a> {
    All,
    Project(&'a ProjectId),
    Bucket(&'a ProjectId, &'a str),
}

/// One suite for the metabase on every backend.
#[cfg(test)]
mod tests {
    use super::*;

    const P: ProjectId = [1; 16];
    const Q: ProjectId = [2; 16];

    fn bucket_rec(created: i64) -> pb::BucketRecord {
        pb::BucketRecord {
            version: 1,
            created_unix_ms: created,
            ..Default::default()
        }
    }

    fn object_rec(stream: &[u8], segments: u32) -> pb::ObjectRecord {
        pb::ObjectRecord {
            version: 2,
            stream_id: stream.to_vec().into(),
            segment_count: segments,
            stored_size: 10,
            ..Default::default()
        }
    }

    fn segment_rec(piece: u8) -> pb::SegmentRecord {
        pb::SegmentRecord {
            version: 1,
            pieces: vec![pb::StoredPieceRef {
                piece_num: u32::from(piece),
                node_id: vec![piece; 32].into(),
                hash: Default::default(),
            }],
            ..Default::default()
        }
    }

    fn put(m: &Metabase, f: impl FnOnce(&mut Batch)) -> Result<(), DbError> {
        let mut batch = Batch::new();
        f(&mut batch);
        m.write(batch)
    }

    fn keys_in(m: &Metabase, scope: ObjectScope<'_>) -> Vec<ObjectLocation> {
        let mut out = Vec::new();
        m.for_each_object(scope, |at, _| {
            out.push(at);
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })
        .expect("walk");
        out
    }

    fn buckets(m: &Metabase) {
        assert!(m.create_bucket(&P, "ab", &bucket_rec(1)).expect("create"));
        assert!(!m.create_bucket(&P, "ab", &bucket_rec(2)).expect("again"));
        assert_eq!(
            m.bucket(&P, "ab")
                .expect("read")
                .expect("there")
                .created_unix_ms,
            1,
            "a second create changes nothing"
        );
        assert!(m.create_bucket(&P, "abc", &bucket_rec(3)).expect("create"));
        assert!(m.create_bucket(&Q, "aa", &bucket_rec(4)).expect("create"));
        assert!(m.bucket(&Q, "ab").expect("read").is_none());
        let mut names = Vec::new();
        m.for_each_bucket(&P, |name, _| {
            names.push(name);
            Ok::<_, DbError>(())
        })
        .expect("walk");
        assert_eq!(names, ["ab", "abc"]);
        // A write over a bucket changed since it was read fails whole.
        let read = m.bucket(&P, "ab").expect("read").expect("there");
        put(m, |b| {
            b.expect_bucket(&P, "ab", Some(&read));
            b.put_bucket(&P, "ab", &bucket_rec(5));
        })
        .expect("over what was read");
        let err = put(m, |b| {
            b.expect_bucket(&P, "ab", Some(&read));
            b.delete_bucket(&P, "ab");
        });
        assert!(matches!(err, Err(DbError::Conflict)));
        assert!(m.bucket(&P, "ab").expect("read").is_some());
    }

    fn objects(m: &Metabase) {
        // Keys at the ends of the byte range, and a bucket whose name
        // starts another's.
        let keys: [&[u8]; 5] = [b"\x00", b"a/1", b"a/2", b"b", b"\xff\xff"];
        for (i, k) in keys.iter().enumerate() {
            let at = ObjectLocation::new(&P, "ab", k);
            put(m, |b| b.put_object(&at, &object_rec(&[i as u8; 16], 0))).expect("put");
        }
        let other = ObjectLocation::new(&P, "abc", b"a/1");
        put(m, |b| b.put_object(&other, &object_rec(&[9; 16], 0))).expect("put");
        let elsewhere = ObjectLocation::new(&Q, "aa", b"a/1");
        put(m, |b| b.put_object(&elsewhere, &object_rec(&[8; 16], 0))).expect("put");

        let in_ab = keys_in(m, ObjectScope::Bucket(&P, "ab"));
        assert_eq!(
            in_ab.iter().map(|a| a.key.as_slice()).collect::<Vec<_>>(),
            keys,
            "a bucket's objects in key order, none of the longer-named bucket's"
        );
        assert!(in_ab.iter().all(|a| a.project == P && a.bucket == "ab"));
        assert_eq!(keys_in(m, ObjectScope::Project(&P)).len(), 6);
        let all = keys_in(m, ObjectScope::All);
        assert_eq!(all.len(), 7);
        assert!(all.contains(&elsewhere) && all.contains(&other));

        let page = m.objects_page(&P, "ab", b"a/", b"", 10).expect("page");
        assert_eq!(
            page.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(),
            [b"a/1".as_slice(), b"a/2"]
        );
        let page = m.objects_page(&P, "ab", b"", b"a/2", 2).expect("page");
        assert_eq!(
            page.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(),
            [b"a/2".as_slice(), b"b"],
            "from a start key, inclusive, at most the limit"
        );
        assert_eq!(page[0].1.stream_id.as_ref(), [2; 16]);

        // Conditional writes: over what was read, or over absence.
        let at = ObjectLocation::new(&P, "ab", b"b");
        let read = m.object(&at).expect("read").expect("there");
        put(m, |b| {
            b.expect_object(&at, Some(&read));
            b.put_object(&at, &object_rec(&[7; 16], 0));
        })
        .expect("over what was read");
        let stale = put(m, |b| {
            b.expect_object(&at, Some(&read));
            b.delete_object(&at);
            b.put_object(
                &ObjectLocation::new(&P, "ab", b"new"),
                &object_rec(&[6; 16], 0),
            );
        });
        assert!(matches!(stale, Err(DbError::Conflict)));
        assert!(
            m.object(&at).expect("read").is_some(),
            "nothing of it applied"
        );
        assert!(
            m.object(&ObjectLocation::new(&P, "ab", b"new"))
                .expect("read")
                .is_none()
        );
        let taken = put(m, |b| {
            b.expect_object(&at, None);
            b.put_object(&at, &object_rec(&[5; 16], 0));
        });
        assert!(matches!(taken, Err(DbError::Conflict)));

        // A walk stops where it is told.
        let mut seen = 0;
        m.for_each_object(ObjectScope::All, |_, _| {
            seen += 1;
            Ok::<_, DbError>(if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })
        .expect("walk");
        assert_eq!(seen, 3);
    }

    /// More objects than a page, deleted while they are walked (as the
    /// expiry sweep does).
    fn paged_walk_that_deletes(m: &Metabase) {
        let n = crate::db::PAGE * 2 + 7;
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            put(m, |b| {
                for i in chunk {
                    let at = ObjectLocation::new(&Q, "many", format!("{i:05}").as_bytes());
                    b.put_object(&at, &object_rec(&[3; 16], 0));
                }
            })
            .expect("put");
        }
        let mut walked = 0;
        m.for_each_object(ObjectScope::Bucket(&Q, "many"), |at, rec| {
            walked += 1;
            put(m, |b| {
                b.expect_object(&at, Some(&rec));
                b.delete_object(&at);
            })?;
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })
        .expect("walk");
        assert_eq!(walked, n);
        assert!(keys_in(m, ObjectScope::Bucket(&Q, "many")).is_empty());
    }

    fn uploads_and_segments(m: &Metabase) {
        let (s1, s2) = ([0x11u8; 16], [0x12u8; 16]);
        let pending = pb::PendingObject {
            version: 1,
            project_id: P.to_vec().into(),
            bucket: "ab".into(),
            encrypted_key: b"up".to_vec().into(),
            ..Default::default()
        };
        put(m, |b| {
            b.put_pending(&s1, &pending);
            b.put_pending(
                &s2,
                &pb::PendingObject {
                    project_id: Q.to_vec().into(),
                    ..pending.clone()
                },
            );
        })
        .expect("begin");
        assert_eq!(m.project_uploads(&P).expect("uploads"), [s1.to_vec()]);
        assert_eq!(m.pending(&s1).expect("read").expect("there").bucket, "ab");
        let mut all = Vec::new();
        m.for_each_pending(|s, _| {
            all.push(s);
            Ok::<_, DbError>(())
        })
        .expect("walk");
        assert_eq!(all, [s1.to_vec(), s2.to_vec()]);

        // Segments: pending, then committed, of both streams.
        for (stream, piece) in [(s1, 1u8), (s2, 2)] {
            for index in [0u32, 1, 256] {
                let at = SegmentPosition::new(&stream, index);
                put(m, |b| {
                    b.put_pending_segment(
                        &at,
                        &pb::PendingSegment {
                            version: 1,
                            ..Default::default()
                        },
                    )
                })
                .expect("begin segment");
                assert!(m.pending_segment(&at).expect("read").is_some());
                put(m, |b| {
                    b.delete_pending_segment(&at);
                    b.put_segment(&at, &segment_rec(piece));
                })
                .expect("commit segment");
            }
        }
        put(m, |b| {
            b.put_pending_segment(
                &SegmentPosition::new(&s1, 3),
                &pb::PendingSegment::default(),
            )
        })
        .expect("begin segment");
        assert_eq!(m.segment_count(&s1).expect("count"), 3);
        let mut positions = Vec::new();
        m.for_each_segment(|at, _| {
            positions.push(at);
            Ok::<_, DbError>(())
        })
        .expect("walk");
        assert_eq!(
            positions,
            [0, 1, 256]
                .map(|i| SegmentPosition::new(&s1, i))
                .into_iter()
                .chain([0, 1, 256].map(|i| SegmentPosition::new(&s2, i)))
                .collect::<Vec<_>>(),
            "positions decode back, in stream and index order"
        );
        let mut pending_segments = 0;
        m.for_each_pending_segment(|_| {
            pending_segments += 1;
            Ok::<_, DbError>(())
        })
        .expect("walk");
        assert_eq!(pending_segments, 1);

        // Pieces are replaced over what was read only.
        let at = SegmentPosition::new(&s2, 1);
        let read = m.segment(&at).expect("read").expect("there");
        assert!(
            m.replace_segment_pieces(&at, &read, segment_rec(5).pieces)
                .expect("replace")
        );
        assert!(
            !m.replace_segment_pieces(&at, &read, segment_rec(6).pieces)
                .expect("stale"),
            "a second repair from the same read does not land"
        );
        assert_eq!(
            m.segment(&at).expect("read").expect("there").pieces[0].piece_num,
            5
        );

        // Deleting an upload takes its record, its index entry and every
        // segment it began or committed, and nothing of another stream.
        let mut batch = Batch::new();
        m.delete_upload(&P, &s1, &mut batch).expect("ops");
        m.write(batch).expect("delete");
        assert!(m.pending(&s1).expect("read").is_none());
        assert!(m.project_uploads(&P).expect("uploads").is_empty());
        assert_eq!(m.segment_count(&s1).expect("count"), 0);
        assert!(
            m.pending_segment(&SegmentPosition::new(&s1, 3))
                .expect("read")
                .is_none()
        );
        assert_eq!(m.segment_count(&s2).expect("count"), 3);
    }

    fn stream_references(m: &Metabase) {
        let stream = [0x21u8; 16];
        for i in 0..2 {
            put(m, |b| {
                b.put_segment(&SegmentPosition::new(&stream, i), &segment_rec(1))
            })
            .expect("segment");
        }
        let obj = object_rec(&stream, 2);
        assert_eq!(m.stream_refs(&stream).expect("refs"), 1);
        // A copy shares the stream.
        let mut batch = Batch::new();
        m.change_stream_refs(&[(&obj, 1)], &mut batch).expect("ops");
        m.write(batch).expect("copy");
        assert_eq!(m.stream_refs(&stream).expect("refs"), 2);
        // Two deletions computed from the same count: the second fails
        // rather than lose the first.
        let (mut first, mut second) = (Batch::new(), Batch::new());
        m.change_stream_refs(&[(&obj, -1)], &mut first)
            .expect("ops");
        m.change_stream_refs(&[(&obj, -1)], &mut second)
            .expect("ops");
        m.write(first).expect("first");
        assert!(matches!(m.write(second), Err(DbError::Conflict)));
        assert_eq!(m.stream_refs(&stream).expect("refs"), 1);
        assert_eq!(m.segment_count(&stream).expect("count"), 2);
        // The last one takes the segments with it.
        let mut batch = Batch::new();
        m.change_stream_refs(&[(&obj, -1)], &mut batch)
            .expect("ops");
        m.write(batch).expect("last");
        assert_eq!(m.segment_count(&stream).expect("count"), 0);
        // Objects without segments (inline) share nothing.
        let mut batch = Batch::new();
        m.change_stream_refs(&[(&object_rec(&stream, 0), -1)], &mut batch)
            .expect("ops");
        assert!(batch.is_empty());
    }

    fn receipts(m: &Metabase) {
        for (stream, at) in [([0x31u8; 16], 100), ([0x32; 16], 200)] {
            let receipt = Receipt {
                project: P,
                created_unix_ms: at,
                bucket: "ab".into(),
                encrypted_key: b"k\x00with zero".to_vec(),
            };
            put(m, |b| b.put_receipt(&stream, &receipt)).expect("put");
            assert_eq!(m.receipt(&stream).expect("read"), Some(receipt));
        }
        assert_eq!(m.delete_receipts_until(150).expect("sweep"), 1);
        assert!(m.receipt(&[0x31; 16]).expect("read").is_none());
        assert!(m.receipt(&[0x32; 16]).expect("read").is_some());
    }

    fn conformance(kv: Arc<dyn Kv>) {
        let m = Metabase::new(kv);
        buckets(&m);
        objects(&m);
        paged_walk_that_deletes(&m);
        uploads_and_segments(&m);
        stream_references(&m);
        receipts(&m);
    }

    crate::satellitedb::on_every_backend!(conformance);
}
