//! Upload and download of pieces over one QUIC stream each.
//!
//! Every transfer is checked before a byte moves: the order limit must be
//! signed by a trusted satellite, name this node, be unexpired, be for the
//! right action, and carry a serial number never seen before. Every byte
//! then has to be covered by an uplink-signed order within the limit.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use loam_common::orders::{Order, OrderError, OrderLimit, PieceAction, PieceHash, now_ms};
use loam_common::pb::piece_request::Request;
use loam_common::rpc::RemoteError;
use loam_common::wire::{Frame, FrameReader, FrameWriter, WireError};
use loam_common::{Identity, NodeId, PublicKey};
use loam_common::{merkle, pb};
use prost::Message;
use tokio::sync::watch;

use loam_common::direct::WriteBuffer;

use super::blobs::Blobs;
use super::db::{DbError, NodeDb};

/// Largest control message a piece transfer may carry.
const MAX_PIECE_MESSAGE: usize = 64 * 1024;
/// Bytes gathered before hashing and writing on uploads.
const WRITE_BUFFER: usize = 1 << 20;
/// Data sent per frame on downloads.
const DOWNLOAD_CHUNK: usize = 1 << 20;

/// Chunk reads a download keeps in flight: pieces are read past the page
/// cache, and the disk answers several requests at once faster than one
/// after another.
const READ_AHEAD: usize = 4;

/// Satellites this node trusts, and their keys once learned at check-in.
#[derive(Default)]
pub struct Trust {
    allowed: Vec<NodeId>,
    keys: RwLock<HashMap<NodeId, PublicKey>>,
}

impl Trust {
    pub fn new(allowed: Vec<NodeId>) -> Self {
        Self {
            allowed,
            keys: RwLock::default(),
        }
    }

    /// Records a satellite's key (verified by the TLS handshake to hash to its id).
    pub fn learn(&self, key: PublicKey) -> bool {
        let id = key.node_id();
        if !self.allowed.contains(&id) {
            return false;
        }
        self.keys.write().expect("trust lock").insert(id, key);
        true
    }

    pub fn key(&self, id: &NodeId) -> Option<PublicKey> {
        self.keys.read().expect("trust lock").get(id).copied()
    }

    /// The satellites this node trusts.
    pub fn satellites(&self) -> Vec<NodeId> {
        self.allowed.clone()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PieceError {
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("piece not found")]
    NotFound,
    #[error("not enough free space: {need} bytes requested, {free} free")]
    NoSpace { need: u64, free: u64 },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("protocol: {0}")]
    Wire(#[from] WireError),
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Db(#[from] DbError),
}

impl PieceError {
    /// A write that found the file system full (before the operator's
    /// allocation was).
    fn disk_full(&self) -> bool {
        matches!(self, Self::Io(e) if e.kind() == std::io::ErrorKind::StorageFull)
    }

    fn remote(&self) -> RemoteError {
        match self {
            Self::Order(e) => RemoteError::order_rejected(e),
            Self::NotFound => RemoteError::new(pb::ErrorCode::NotFound, self.to_string()),
            Self::NoSpace { .. } => RemoteError {
                code: pb::ErrorCode::ResourceExhausted,
                message: self.to_string(),
                rejection: pb::OrderRejection::NoSpace,
            },
            Self::BadRequest(_) | Self::Wire(_) => {
                RemoteError::new(pb::ErrorCode::InvalidArgument, self.to_string())
            }
            // The file system filled up before the operator's allocation
            // did (other data on the same disk): as plain as a full
            // allocation, and no detail of the node's paths.
            Self::Io(_) if self.disk_full() => RemoteError {
                code: pb::ErrorCode::ResourceExhausted,
                message: "the node's disk is full".into(),
                rejection: pb::OrderRejection::NoSpace,
            },
            Self::Io(_) | Self::Db(_) => {
                RemoteError::new(pb::ErrorCode::Internal, "storage node internal error")
            }
        }
    }

    /// Metric label of this failure.
    fn reason(&self) -> &'static str {
        match self {
            Self::Order(e) => match e.rejection() {
                pb::OrderRejection::BadSatelliteSignature => "bad_satellite_signature",
                pb::OrderRejection::UntrustedSatellite => "untrusted_satellite",
                pb::OrderRejection::WrongNode => "wrong_node",
                pb::OrderRejection::Expired => "expired",
                pb::OrderRejection::SerialReused => "serial_reused",
                pb::OrderRejection::AmountAboveLimit => "amount_above_limit",
                pb::OrderRejection::BadUplinkSignature => "bad_uplink_signature",
                pb::OrderRejection::WrongAction => "wrong_action",
                pb::OrderRejection::WrongSerial => "wrong_serial",
                pb::OrderRejection::BytesBeyondOrder => "bytes_beyond_order",
                pb::OrderRejection::HashMismatch => "hash_mismatch",
                pb::OrderRejection::AmountDecreased => "amount_decreased",
                _ => "malformed",
            },
            Self::NotFound => "not_found",
            Self::NoSpace { .. } => "no_space",
            Self::Io(_) if self.disk_full() => "no_space",
            Self::BadRequest(_) | Self::Wire(_) => "bad_request",
            Self::Io(_) | Self::Db(_) => "internal",
        }
    }
}

/// Answers a stream whose request could not be read at all.
async fn reject_request(err: PieceError, mut reader: FrameReader, mut writer: FrameWriter) {
    metrics::counter!("loam_storagenode_requests_rejected_total", "reason" => err.reason())
        .increment(1);
    tracing::debug!(error = %err, "bad piece request");
    let _ = writer
        .message(&pb::PieceUploadResponse {
            result: Some(pb::piece_upload_response::Result::Error(
                (&err.remote()).into(),
            )),
        })
        .await;
    let _ = writer.finish();
    reader.stop(1);
}

/// The piece-transfer endpoint of one storage node.
pub struct Piecestore {
    identity: Identity,
    db: Arc<NodeDb>,
    blobs: Arc<dyn Blobs>,
    trust: Arc<Trust>,
    allocated: u64,
    trainer: std::sync::OnceLock<Arc<crate::compute::Trainer>>,
    /// A dishonest node's answer to every audit (tests only).
    audit_lie: std::sync::OnceLock<pb::ErrorCode>,
}

impl Piecestore {
    pub fn new(
        identity: Identity,
        db: Arc<NodeDb>,
        blobs: Arc<dyn Blobs>,
        trust: Arc<Trust>,
        allocated: u64,
    ) -> Self {
        Self {
            identity,
            db,
            blobs,
            trust,
            allocated,
            trainer: std::sync::OnceLock::new(),
            audit_lie: std::sync::OnceLock::new(),
        }
    }

    /// Makes this node answer every audit with `code` instead of the
    /// leaf: how tests play a node that hides lost data behind errors.
    pub fn lie_to_audits(&self, code: pb::ErrorCode) {
        let _ = self.audit_lie.set(code);
    }

    /// An audit: one leaf of a stored piece with its Merkle proof.
    async fn serve_audit(&self, req: pb::AuditRequest, mut writer: FrameWriter) {
        if let Some(&code) = self.audit_lie.get() {
            let lie = RemoteError::new(code, "internal error".to_string());
            let _ = writer
                .message(&pb::AuditResponse {
                    error: Some((&lie).into()),
                    ..Default::default()
                })
                .await;
            let _ = writer.finish();
            return;
        }
        let resp = match self.audit(req).await {
            Ok(r) => {
                metrics::counter!("loam_storagenode_audits_total", "result" => "answered")
                    .increment(1);
                r
            }
            Err(e) => {
                metrics::counter!("loam_storagenode_audits_total", "result" => "error")
                    .increment(1);
                pb::AuditResponse {
                    error: Some((&e.remote()).into()),
                    ..Default::default()
                }
            }
        };
        let _ = writer.message(&resp).await;
        let _ = writer.finish();
    }

    async fn audit(&self, req: pb::AuditRequest) -> Result<pb::AuditResponse, PieceError> {
        let limit = self.verify_limit(req.limit.as_ref(), PieceAction::GetAudit)?;
        let record = self
            .db
            .piece(&limit.satellite_id, &limit.piece_id)?
            .ok_or(PieceError::NotFound)?;
        // The satellite pays for the answer with an order signed under the
        // limit's piece key; kept for settlement like any paid transfer.
        let order = req
            .order
            .as_ref()
            .map(|o| Order::verify(o, &limit))
            .transpose()?;
        let (blobs, sat, piece) = (self.blobs.clone(), limit.satellite_id, limit.piece_id);
        let size = record.size.max(0) as usize;
        let leaf = req.leaf as usize;
        // The leaf hashes kept at upload, if they fit the piece's size;
        // pieces stored without them are read and hashed whole.
        let kept = self
            .db
            .piece_leaves(&sat, &piece)?
            .filter(|l| l.len() as u64 == merkle::leaf_count(size as u64));
        let resp = tokio::task::spawn_blocking(move || {
            // A piece the database lists but the disk lost is lost, not an
            // internal error: the satellite counts it as a failed audit.
            let read = |offset: usize, len: usize| {
                blobs
                    .read(&sat, &piece, offset as u64, len)
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof => {
                            PieceError::NotFound
                        }
                        _ => PieceError::Io(e),
                    })
            };
            let start = leaf.saturating_mul(merkle::LEAF_SIZE);
            if leaf as u64 >= merkle::leaf_count(size as u64) || start > size {
                return Err(PieceError::BadRequest("leaf beyond the piece"));
            }
            let end = (start + merkle::LEAF_SIZE).min(size);
            let (leaf_data, leaves) = match kept {
                Some(leaves) => (read(start, end - start)?, leaves),
                None => {
                    let data = read(0, size)?;
                    let leaves = merkle::leaves(&data);
                    (data.slice(start..end), leaves)
                }
            };
            Ok(pb::AuditResponse {
                leaf_data,
                proof: merkle::proof(&leaves, leaf)
                    .into_iter()
                    .map(|h| h.to_vec().into())
                    .collect(),
                error: None,
            })
        })
        .await
        .map_err(|e| PieceError::Io(std::io::Error::other(e)))??;
        if let (Some(signed), Some(order)) = (&req.limit, &req.order) {
            self.db.put_order(&pb::UnsentOrder {
                limit: Some(signed.clone()),
                order: Some(order.clone()),
            })?;
        }
        let served = resp.leaf_data.len() as u64;
        let amount = order.map_or(0, |o| o.amount);
        self.db.add_bandwidth(
            &limit.satellite_id,
            limit.action,
            served.min(amount),
            now_ms(),
        )?;
        Ok(resp)
    }

    /// Garbage collection: trashes this satellite's pieces created before
    /// the filter's cutoff that the filter does not contain.
    async fn serve_retain(
        &self,
        peer: NodeId,
        req: pb::RetainRequest,
        mut reader: FrameReader,
        mut writer: FrameWriter,
    ) {
        let result = self.retain(peer, req, &mut reader).await;
        let resp = match result {
            Ok((kept, trashed, bytes)) => {
                metrics::counter!("loam_storagenode_gc_pieces_trashed_total").increment(trashed);
                tracing::info!(satellite = %peer.short(), kept, trashed, bytes, "garbage collected");
                pb::RetainResponse {
                    kept,
                    trashed,
                    trashed_bytes: bytes,
                    error: None,
                }
            }
            Err(e) => pb::RetainResponse {
                error: Some((&e.remote()).into()),
                ..Default::default()
            },
        };
        let _ = writer.message(&resp).await;
        let _ = writer.finish();
    }

    async fn retain(
        &self,
        peer: NodeId,
        req: pb::RetainRequest,
        reader: &mut FrameReader,
    ) -> Result<(u64, u64, u64), PieceError> {
        if self.trust.key(&peer).is_none() {
            return Err(PieceError::BadRequest(
                "retain requests come from trusted satellites only",
            ));
        }
        const MAX_FILTER: u64 = 256 << 20;
        if req.bits_len == 0 || req.bits_len > MAX_FILTER {
            return Err(PieceError::BadRequest("filter size out of range"));
        }
        let mut bits = Vec::with_capacity(req.bits_len as usize);
        while (bits.len() as u64) < req.bits_len {
            match reader.next().await? {
                Some(Frame::Data(d)) if bits.len() as u64 + d.len() as u64 <= req.bits_len => {
                    bits.extend_from_slice(&d)
                }
                _ => return Err(PieceError::BadRequest("filter cut short")),
            }
        }
        let filter = loam_common::bloom::BloomFilter::from_parts(bits, req.hash_count, &req.seed)
            .ok_or(PieceError::BadRequest("malformed filter"))?;
        let (db, blobs) = (self.db.clone(), self.blobs.clone());
        let cutoff = req.created_before_unix_ms;
        tokio::task::spawn_blocking(move || {
            let now = loam_common::orders::now_ms();
            let (mut kept, mut trashed, mut bytes) = (0u64, 0u64, 0u64);
            for (id, rec) in db.pieces_of(&peer)? {
                if rec.created_unix_ms >= cutoff || filter.contains(&id) {
                    kept += 1;
                    continue;
                }
                blobs.trash(&peer, &id, now)?;
                if let Some(size) = db.trash_piece(&peer, &id)? {
                    bytes += size;
                }
                trashed += 1;
            }
            Ok((kept, trashed, bytes))
        })
        .await
        .map_err(|e| PieceError::Io(std::io::Error::other(e)))?
    }

    /// Lets this endpoint take training tasks.
    pub fn set_trainer(&self, trainer: Arc<crate::compute::Trainer>) {
        let _ = self.trainer.set(trainer);
    }

    pub fn blobs(&self) -> &Arc<dyn Blobs> {
        &self.blobs
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn db(&self) -> &Arc<NodeDb> {
        &self.db
    }

    pub fn trust(&self) -> &Arc<Trust> {
        &self.trust
    }

    /// Bytes the node can still take: what is left of the allocation
    /// (pieces in the trash count as used until they are deleted), but
    /// never more than the file system has free. A node whose disk filled
    /// up with other files advertises what it can really store.
    pub fn free_bytes(&self) -> u64 {
        self.allocation_left().min(self.filesystem_free())
    }

    /// What is left of the allocation.
    pub fn allocation_left(&self) -> u64 {
        let usage = self.db.usage();
        self.allocated
            .saturating_sub(usage.used_bytes)
            .saturating_sub(usage.trash_bytes)
    }

    /// Bytes free on the file system holding the pieces (0 if it cannot
    /// be read: a disk the node cannot query is no disk to promise).
    pub fn filesystem_free(&self) -> u64 {
        self.blobs.available().unwrap_or(0)
    }

    /// Bytes of disk the operator allocated.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated
    }

    /// Serves one RPC stream. Errors are answered on the stream and counted;
    /// they never affect other streams.
    pub async fn handle_stream(
        self: Arc<Self>,
        peer: NodeId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let mut reader = FrameReader::with_max_message(recv, MAX_PIECE_MESSAGE);
        let writer = FrameWriter::new(send);
        let request = match reader.message::<pb::PieceRequest>().await {
            Ok(r) => r.request,
            Err(e) => return reject_request(PieceError::from(e), reader, writer).await,
        };
        match request {
            Some(Request::Upload(up)) => self.serve_upload(up, reader, writer).await,
            Some(Request::Download(down)) => self.serve_download(down, reader, writer).await,
            Some(Request::Retain(r)) => self.serve_retain(peer, r, reader, writer).await,
            Some(Request::Audit(r)) => self.serve_audit(r, writer).await,
            Some(Request::Train(train)) => match self.trainer.get() {
                Some(t) => t.serve(peer, train, reader, writer).await,
                None => {
                    reject_request(
                        PieceError::BadRequest("this node does not run training tasks"),
                        reader,
                        writer,
                    )
                    .await
                }
            },
            None => reject_request(PieceError::BadRequest("empty request"), reader, writer).await,
        }
    }

    fn verify_limit(
        &self,
        signed: Option<&pb::SignedOrderLimit>,
        action: PieceAction,
    ) -> Result<OrderLimit, PieceError> {
        let signed = signed.ok_or(PieceError::BadRequest("missing order limit"))?;
        let claimed = OrderLimit::decode_unverified(signed)?;
        let key = self
            .trust
            .key(&claimed.satellite_id)
            .ok_or(OrderError::UntrustedSatellite(claimed.satellite_id))?;
        let limit = OrderLimit::verify(signed, &key)?;
        limit.check(&self.identity.id(), action, now_ms())?;
        if !self.db.use_serial(&limit.serial, limit.expires_ms)? {
            return Err(OrderError::SerialReused.into());
        }
        Ok(limit)
    }

    async fn serve_upload(
        &self,
        req: pb::PieceUploadRequest,
        mut reader: FrameReader,
        mut writer: FrameWriter,
    ) {
        let started = Instant::now();
        let result = self.upload(req, &mut reader).await;
        let response = match &result {
            Ok((hash, size)) => {
                metrics::counter!("loam_storagenode_uploads_total", "result" => "ok").increment(1);
                metrics::counter!("loam_storagenode_piece_bytes_received_total").increment(*size);
                metrics::counter!("loam_storagenode_pieces_received_total").increment(1);
                metrics::histogram!("loam_storagenode_upload_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                let usage = self.db.usage();
                metrics::gauge!("loam_storagenode_used_bytes").set(usage.used_bytes as f64);
                metrics::gauge!("loam_storagenode_pieces_stored").set(usage.pieces as f64);
                pb::piece_upload_response::Result::Stored(hash.clone())
            }
            Err(e) => {
                self.count_failure("upload", e);
                reader.stop(1);
                pb::piece_upload_response::Result::Error((&e.remote()).into())
            }
        };
        let _ = writer
            .message(&pb::PieceUploadResponse {
                result: Some(response),
            })
            .await;
        let _ = writer.finish();
    }

    fn count_failure(&self, op: &'static str, e: &PieceError) {
        let result = match e {
            PieceError::Io(_) | PieceError::Db(_) => "error",
            PieceError::Wire(WireError::Read(_) | WireError::Connection(_)) => "cancelled",
            _ => "rejected",
        };
        let name = if op == "upload" {
            "loam_storagenode_uploads_total"
        } else {
            "loam_storagenode_downloads_total"
        };
        metrics::counter!(name, "result" => result).increment(1);
        if let PieceError::Order(_) = e {
            metrics::counter!("loam_storagenode_order_rejections_total", "reason" => e.reason())
                .increment(1);
        }
        if result == "error" {
            tracing::warn!(op, error = %e, "piece transfer failed");
        } else {
            tracing::debug!(op, error = %e, "piece transfer refused");
        }
    }

    async fn upload(
        &self,
        req: pb::PieceUploadRequest,
        reader: &mut FrameReader,
    ) -> Result<(pb::SignedPieceHash, u64), PieceError> {
        let limit = self.verify_limit(req.limit.as_ref(), PieceAction::Put)?;
        let free = self.free_bytes();
        if limit.limit > free {
            return Err(PieceError::NoSpace {
                need: limit.limit,
                free,
            });
        }
        let mut blob = self.blobs.create()?;
        let mut hasher = loam_common::merkle::MerkleHasher::new();
        let mut pending = WriteBuffer::new(WRITE_BUFFER);
        let mut received = 0u64;
        let mut ordered = 0u64;
        let mut last_order = None;
        let uplink_hash = loop {
            match reader.next().await? {
                None => return Err(PieceError::BadRequest("upload ended without a piece hash")),
                Some(Frame::Data(chunk)) => {
                    received += chunk.len() as u64;
                    if received > ordered {
                        return Err(OrderError::BytesBeyondOrder {
                            sent: received,
                            ordered,
                        }
                        .into());
                    }
                    pending.push(&chunk, |block| {
                        hasher.update(block);
                        blob.write(block)
                    })?;
                }
                Some(Frame::Message(bytes)) => {
                    let msg = pb::PieceUploadMessage::decode(bytes)
                        .map_err(|_| OrderError::Malformed("upload message"))?;
                    match msg.message {
                        Some(pb::piece_upload_message::Message::Order(signed)) => {
                            ordered = Order::verify_after(&signed, &limit, ordered)?.amount;
                            last_order = Some(signed);
                        }
                        Some(pb::piece_upload_message::Message::Done(signed)) => {
                            break PieceHash::verify(&signed, &limit.piece_public_key)?;
                        }
                        None => return Err(PieceError::BadRequest("empty upload message")),
                    }
                }
            }
        };
        pending.finish(|rest| {
            hasher.update(rest);
            blob.write(rest)
        })?;
        let (hash, leaves) = hasher.finish();
        if uplink_hash.piece_id != limit.piece_id
            || uplink_hash.hash != hash
            || uplink_hash.size != received
        {
            return Err(OrderError::HashMismatch.into());
        }
        let stored = PieceHash {
            piece_id: limit.piece_id,
            hash,
            size: received,
            timestamp_ms: now_ms(),
        };
        let signed_hash = stored.sign(self.identity.key());
        let record = pb::StoredPiece {
            version: 1,
            size: received as i64,
            hash: hash.to_vec().into(),
            created_unix_ms: stored.timestamp_ms,
            expires_unix_ms: limit.piece_expires_ms,
            signed_hash: Some(signed_hash.clone()),
            limit: req.limit.clone(),
        };
        let order = last_order.map(|o| pb::UnsentOrder {
            limit: req.limit.clone(),
            order: Some(o),
        });
        let (blobs, db) = (self.blobs.clone(), self.db.clone());
        let (sat, piece, action) = (limit.satellite_id, limit.piece_id, limit.action);
        tokio::task::spawn_blocking(move || -> Result<(), PieceError> {
            blobs.commit(blob, &sat, &piece)?;
            db.put_piece(&sat, &piece, &record, &leaves, order.as_ref())?;
            db.add_bandwidth(&sat, action, received, now_ms())?;
            Ok(())
        })
        .await
        .map_err(|e| PieceError::Io(std::io::Error::other(e)))??;
        Ok((signed_hash, received))
    }

    async fn serve_download(
        &self,
        req: pb::PieceDownloadRequest,
        mut reader: FrameReader,
        mut writer: FrameWriter,
    ) {
        let started = Instant::now();
        match self.download(req, &mut reader, &mut writer).await {
            Ok(sent) => {
                metrics::counter!("loam_storagenode_downloads_total", "result" => "ok")
                    .increment(1);
                metrics::counter!("loam_storagenode_piece_bytes_sent_total").increment(sent);
                metrics::counter!("loam_storagenode_pieces_sent_total").increment(1);
                metrics::histogram!("loam_storagenode_download_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                let _ = writer.finish();
            }
            Err((e, header_sent)) => {
                self.count_failure("download", &e);
                let err: pb::RpcError = (&e.remote()).into();
                if header_sent {
                    writer.reset(1);
                } else {
                    let _ = writer
                        .message(&pb::PieceDownloadHeader {
                            result: Some(pb::piece_download_header::Result::Error(err)),
                        })
                        .await;
                    let _ = writer.finish();
                }
                reader.stop(1);
            }
        }
    }

    /// Returns bytes sent, or the error and whether the header went out.
    async fn download(
        &self,
        req: pb::PieceDownloadRequest,
        reader: &mut FrameReader,
        writer: &mut FrameWriter,
    ) -> Result<u64, (PieceError, bool)> {
        let early = |e: PieceError| (e, false);
        let limit = self
            .verify_limit(req.limit.as_ref(), PieceAction::Get)
            .map_err(early)?;
        let first = req
            .first_order
            .as_ref()
            .ok_or(PieceError::BadRequest("missing first order"))
            .map_err(early)?;
        let first = Order::verify(first, &limit).map_err(|e| early(e.into()))?;
        let record = self
            .db
            .piece(&limit.satellite_id, &limit.piece_id)
            .map_err(|e| early(e.into()))?
            .ok_or((PieceError::NotFound, false))?;
        let size = record.size as u64;
        let (offset, length) = (req.offset, req.length);
        if offset < 0 || length <= 0 || (offset as u64).saturating_add(length as u64) > size {
            return Err(early(PieceError::BadRequest("range outside the piece")));
        }
        let (offset, length) = (offset as u64, length as u64);
        if length > limit.limit {
            return Err(early(
                OrderError::AmountAboveLimit {
                    amount: length,
                    limit: limit.limit,
                }
                .into(),
            ));
        }
        // Read a few chunks ahead, so the first bytes leave before the
        // whole range is read from disk.
        let (blobs, sat, piece) = (self.blobs.clone(), limit.satellite_id, limit.piece_id);
        let read = move |at: u64| {
            let blobs = blobs.clone();
            let len = (length - at).min(DOWNLOAD_CHUNK as u64) as usize;
            tokio::task::spawn_blocking(move || blobs.read(&sat, &piece, offset + at, len))
        };
        let mut reads = std::collections::VecDeque::new();
        let mut read_to = 0u64;
        let mut read_ahead = |reads: &mut std::collections::VecDeque<_>| {
            while reads.len() < READ_AHEAD && read_to < length {
                reads.push_back(read(read_to));
                read_to = (read_to + DOWNLOAD_CHUNK as u64).min(length);
            }
        };
        read_ahead(&mut reads);
        writer
            .message(&pb::PieceDownloadHeader {
                result: Some(pb::piece_download_header::Result::Ok(pb::PieceDownloadOk {
                    piece_size: size as i64,
                    hash: record.signed_hash.clone(),
                })),
            })
            .await
            .map_err(|e| early(e.into()))?;

        // Orders arrive while data flows: they raise how far we may send.
        let (allowed_tx, mut allowed_rx) = watch::channel((first.amount, req.first_order.clone()));
        let final_rx = allowed_tx.subscribe();
        let order_limit = limit.clone();
        let orders = async {
            // Owned here so the sender drops when the uplink stops ordering.
            let allowed_tx = allowed_tx;
            let mut amount = first.amount;
            loop {
                match reader.next().await {
                    Ok(Some(Frame::Message(bytes))) => {
                        let msg = pb::PieceDownloadMessage::decode(bytes)
                            .map_err(|_| PieceError::from(OrderError::Malformed("order")))?;
                        let Some(pb::piece_download_message::Message::Order(signed)) = msg.message
                        else {
                            return Err(PieceError::BadRequest("empty download message"));
                        };
                        amount = Order::verify_after(&signed, &order_limit, amount)?.amount;
                        allowed_tx.send_replace((amount, Some(signed)));
                    }
                    Ok(Some(Frame::Data(_))) => {
                        return Err(PieceError::BadRequest("data sent to a download"));
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let send = async {
            let mut sent = 0u64;
            let mut buffered = Bytes::new();
            while sent < length {
                let allowed = allowed_rx.borrow_and_update().0.min(length);
                if sent >= allowed {
                    if allowed_rx.changed().await.is_err() {
                        break; // uplink stopped ordering: it has what it wants
                    }
                    continue;
                }
                if buffered.is_empty() {
                    let Some(pending) = reads.pop_front() else {
                        break;
                    };
                    read_ahead(&mut reads);
                    buffered = pending
                        .await
                        .map_err(|e| PieceError::Io(std::io::Error::other(e)))??;
                }
                let n = (allowed - sent).min(buffered.len() as u64) as usize;
                writer.data(buffered.split_to(n)).await?;
                sent += n as u64;
            }
            Ok::<u64, PieceError>(sent)
        };
        tokio::pin!(send);
        tokio::pin!(orders);
        let mut orders_done = false;
        let sent = loop {
            tokio::select! {
                r = &mut send => break r,
                r = &mut orders, if !orders_done => {
                    orders_done = true;
                    if let Err(e) = r {
                        return Err((e, true));
                    }
                }
            }
        };
        let sent = sent.map_err(|e| (e, true))?;
        if let Err(e) = self
            .db
            .add_bandwidth(&limit.satellite_id, limit.action, sent, now_ms())
        {
            tracing::warn!(error = %e, "cannot count bandwidth");
        }
        let latest = final_rx.borrow().1.clone();
        if let Some(order) = latest {
            let unsent = pb::UnsentOrder {
                limit: req.limit.clone(),
                order: Some(order),
            };
            if let Err(e) = self.db.put_order(&unsent) {
                tracing::warn!(error = %e, "cannot keep order for settlement");
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that hits a full file system is told as such, not as an
    /// internal error, and says nothing of the node's paths.
    #[test]
    fn a_full_disk_is_reported_as_no_space() {
        let full = PieceError::Io(std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
        let remote = full.remote();
        assert_eq!(remote.code, pb::ErrorCode::ResourceExhausted);
        assert_eq!(remote.rejection, pb::OrderRejection::NoSpace);
        assert_eq!(remote.message, "the node's disk is full");
        assert_eq!(full.reason(), "no_space");
        let other = PieceError::Io(std::io::Error::from_raw_os_error(nix::libc::EIO));
        assert_eq!(other.remote().code, pb::ErrorCode::Internal);
        assert_eq!(other.reason(), "internal");
    }
}
