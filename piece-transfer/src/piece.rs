//! Piece transfers with one storage node: the client side of the
//! piecestore protocol, signing orders as bytes flow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use loam_common::orders::{Order, OrderLimit, PieceHash, now_ms};
use loam_common::rpc::RemoteError;
use loam_common::transport::{self, Endpoint, TransportError};
use loam_common::wire::{Frame, FrameReader, FrameWriter, WireError};
use loam_common::{KeyPair, NodeId, pb};

use prost::Message;

use crate::feed::{FeedItem, PieceFeed};

/// Bytes covered by each order on uploads.
const ORDER_STEP: usize = 4 << 20;
/// How far ahead of received bytes download orders run.
const DOWNLOAD_WINDOW: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PieceError {
    #[error("node address {0:?} is invalid")]
    Address(String),
    #[error("node id is invalid")]
    NodeId,
    #[error("connecting timed out")]
    Timeout,
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("node refused: {0}")]
    Remote(#[from] RemoteError),
    #[error("node returned an invalid answer: {0}")]
    BadAnswer(&'static str),
    #[error("piece content does not match its committed hash")]
    HashMismatch,
    #[error("piece data ended before the piece was complete")]
    FeedEnded,
    #[error("piece data rejected: {0}")]
    Rejected(String),
}

impl From<quinn::ConnectionError> for PieceError {
    fn from(e: quinn::ConnectionError) -> Self {
        Self::Wire(WireError::Connection(e))
    }
}

/// The signed limit to send and what it says (the node checks the signature).
fn decode_limit(
    addressed: &pb::AddressedOrderLimit,
) -> Result<(pb::SignedOrderLimit, OrderLimit), PieceError> {
    let signed = addressed
        .limit
        .clone()
        .ok_or(PieceError::BadAnswer("missing limit"))?;
    let limit =
        OrderLimit::decode_unverified(&signed).map_err(|_| PieceError::BadAnswer("bad limit"))?;
    Ok((signed, limit))
}

fn target(limit: &pb::AddressedOrderLimit) -> Result<(NodeId, SocketAddr), PieceError> {
    let id = NodeId::try_from(limit.node_id.as_ref()).map_err(|_| PieceError::NodeId)?;
    let addr = limit
        .address
        .parse()
        .map_err(|_| PieceError::Address(limit.address.clone()))?;
    Ok((id, addr))
}

async fn connect(
    endpoint: &Endpoint,
    limit: &pb::AddressedOrderLimit,
    timeout: Duration,
) -> Result<(NodeId, quinn::Connection), PieceError> {
    let (id, addr) = target(limit)?;
    let conn = tokio::time::timeout(timeout, endpoint.dial(id, addr))
        .await
        .map_err(|_| PieceError::Timeout)??;
    Ok((id, conn))
}

/// Uploads one piece; returns the node-signed hash. `sent` counts the
/// bytes handed to QUIC (for progress reporting).
pub async fn upload(
    endpoint: &Endpoint,
    limit: &pb::AddressedOrderLimit,
    piece_key: &KeyPair,
    feed: PieceFeed,
    timeout: Duration,
    sent: Option<&AtomicU64>,
) -> Result<pb::SignedPieceHash, PieceError> {
    upload_after(
        endpoint,
        limit,
        piece_key,
        feed,
        timeout,
        sent,
        std::future::ready(()),
    )
    .await
}

/// Like [`upload`], but sends nothing until `start` completes: the
/// connection is set up at once, so a spare piece can begin the moment it
/// is wanted.
pub async fn upload_after(
    endpoint: &Endpoint,
    limit: &pb::AddressedOrderLimit,
    piece_key: &KeyPair,
    feed: PieceFeed,
    timeout: Duration,
    sent: Option<&AtomicU64>,
    start: impl Future<Output = ()>,
) -> Result<pb::SignedPieceHash, PieceError> {
    let (id, conn) = connect(endpoint, limit, timeout).await?;
    start.await;
    let result = upload_on(&conn, limit, piece_key, feed, sent).await;
    if matches!(result, Err(PieceError::Wire(WireError::Connection(_)))) {
        endpoint.forget(&id);
    }
    result
}

async fn upload_on(
    conn: &quinn::Connection,
    addressed: &pb::AddressedOrderLimit,
    piece_key: &KeyPair,
    mut feed: PieceFeed,
    sent_counter: Option<&AtomicU64>,
) -> Result<pb::SignedPieceHash, PieceError> {
    let (signed_limit, limit) = decode_limit(addressed)?;
    let (send, recv) = conn.open_bi().await?;
    let mut writer = FrameWriter::new(send);
    let mut reader = FrameReader::new(recv);
    let size = feed.size();
    let sending = async {
        writer
            .message(&pb::PieceRequest {
                request: Some(pb::piece_request::Request::Upload(pb::PieceUploadRequest {
                    limit: Some(signed_limit.clone()),
                })),
            })
            .await?;
        let mut sent = 0;
        let mut ordered = 0;
        let hash = loop {
            let chunk = match feed.next().await {
                Some(FeedItem::Data(chunk)) => chunk,
                Some(FeedItem::Hash(hash)) if sent == size => break hash,
                Some(FeedItem::Hash(_) | FeedItem::End) | None => {
                    return Err(PieceError::FeedEnded);
                }
            };
            let end = sent + chunk.len();
            if end > size {
                return Err(PieceError::FeedEnded);
            }
            // Orders run ahead of the data, a step at a time.
            while ordered < end {
                ordered = (ordered + ORDER_STEP).min(size);
                let order = Order {
                    serial: limit.serial,
                    amount: ordered as u64,
                }
                .sign(piece_key);
                writer
                    .message(&pb::PieceUploadMessage {
                        message: Some(pb::piece_upload_message::Message::Order(order)),
                    })
                    .await?;
            }
            writer.data(chunk).await?;
            if let Some(c) = sent_counter {
                c.fetch_add((end - sent) as u64, Ordering::Relaxed);
            }
            sent = end;
            feed.sent(sent as u64);
        };
        let done = PieceHash {
            piece_id: limit.piece_id,
            hash,
            size: size as u64,
            timestamp_ms: now_ms(),
        }
        .sign(piece_key);
        writer
            .message(&pb::PieceUploadMessage {
                message: Some(pb::piece_upload_message::Message::Done(done)),
            })
            .await?;
        writer.finish()?;
        Ok::<[u8; 32], PieceError>(hash)
    };
    // A node that refuses stops reading and answers at once: its answer is
    // the error to report, not the failed write.
    let sent = sending.await;
    if let Err(PieceError::FeedEnded) = sent {
        // Not a whole piece: the node discards what it got.
        writer.reset(1);
        return Err(PieceError::FeedEnded);
    }
    let response: pb::PieceUploadResponse = match reader.message().await {
        Ok(r) => r,
        Err(e) => return Err(sent.err().unwrap_or(e.into())),
    };
    match response.result {
        Some(pb::piece_upload_response::Result::Stored(signed)) => {
            let hash = sent?;
            let (_, node_key) = transport::peer_id(conn)?;
            let stored = PieceHash::verify(&signed, &node_key)
                .map_err(|_| PieceError::BadAnswer("piece hash signature"))?;
            if stored.hash != hash || stored.piece_id != limit.piece_id {
                return Err(PieceError::HashMismatch);
            }
            Ok(signed)
        }
        Some(pb::piece_upload_response::Result::Error(e)) => Err(RemoteError::from(&e).into()),
        None => Err(PieceError::BadAnswer("empty upload response")),
    }
}

/// Where a piece download puts the piece's bytes, in order, as they
/// arrive from the node.
pub trait PieceSink {
    /// Takes the next bytes of the piece. An error ends the download.
    fn put(&mut self, chunk: Bytes) -> impl Future<Output = Result<(), PieceError>> + Send;
}

/// The whole piece, in memory.
impl PieceSink for Vec<u8> {
    async fn put(&mut self, chunk: Bytes) -> Result<(), PieceError> {
        self.extend_from_slice(&chunk);
        Ok(())
    }
}

/// Downloads a whole piece, checking it against its committed hash when
/// `verify_hash` (data pieces are also protected by their AEAD tags).
/// `progress` counts bytes received (the caller watches it for stalls).
pub async fn download(
    endpoint: &Endpoint,
    limit: &pb::AddressedOrderLimit,
    piece_key: &KeyPair,
    size: u64,
    timeout: Duration,
    progress: Arc<AtomicU64>,
    verify_hash: bool,
) -> Result<Vec<u8>, PieceError> {
    let mut data = loam_common::buffers::BufferPool::global().take(size as usize);
    download_into(
        endpoint, limit, piece_key, size, timeout, &progress, &mut data,
    )
    .await?;
    if verify_hash
        && (limit.piece_hash.len() != 32
            || loam_common::merkle::root(&data).as_slice() != limit.piece_hash.as_ref())
    {
        return Err(PieceError::HashMismatch);
    }
    Ok(data)
}

/// Downloads a whole piece into `sink` as it arrives, without checking it
/// against its committed hash: for a sink that authenticates every byte
/// itself (a data piece's AEAD blocks, see
/// [`crate::segment::RowStream`]).
pub async fn download_into<S: PieceSink + Send>(
    endpoint: &Endpoint,
    limit: &pb::AddressedOrderLimit,
    piece_key: &KeyPair,
    size: u64,
    timeout: Duration,
    progress: &AtomicU64,
    sink: &mut S,
) -> Result<(), PieceError> {
    let (id, conn) = connect(endpoint, limit, timeout).await?;
    let result = download_on(&conn, limit, piece_key, size, progress, sink).await;
    if matches!(result, Err(PieceError::Wire(WireError::Connection(_)))) {
        endpoint.forget(&id);
    }
    result
}

async fn download_on<S: PieceSink + Send>(
    conn: &quinn::Connection,
    addressed: &pb::AddressedOrderLimit,
    piece_key: &KeyPair,
    size: u64,
    progress: &AtomicU64,
    sink: &mut S,
) -> Result<(), PieceError> {
    let (signed_limit, limit) = decode_limit(addressed)?;
    let order = |amount: u64| {
        Order {
            serial: limit.serial,
            amount,
        }
        .sign(piece_key)
    };
    let (send, recv) = conn.open_bi().await?;
    let mut writer = FrameWriter::new(send);
    let mut reader = FrameReader::new(recv);
    let mut ordered = size.min(DOWNLOAD_WINDOW);
    writer
        .message(&pb::PieceRequest {
            request: Some(pb::piece_request::Request::Download(
                pb::PieceDownloadRequest {
                    limit: Some(signed_limit),
                    offset: 0,
                    length: size as i64,
                    first_order: Some(order(ordered)),
                },
            )),
        })
        .await?;
    let header: pb::PieceDownloadHeader = reader.message().await?;
    match header.result {
        Some(pb::piece_download_header::Result::Ok(_)) => {}
        Some(pb::piece_download_header::Result::Error(e)) => {
            return Err(RemoteError::from(&e).into());
        }
        None => return Err(PieceError::BadAnswer("empty download header")),
    }
    let mut got = 0u64;
    while let Some(frame) = reader.next().await? {
        let Frame::Data(chunk) = frame else {
            let err = pb::RpcError::decode(match frame {
                Frame::Message(m) => m,
                Frame::Data(_) => Bytes::new(),
            })
            .map_err(|_| PieceError::BadAnswer("unexpected message"))?;
            return Err(RemoteError::from(&err).into());
        };
        if got + chunk.len() as u64 > size {
            return Err(PieceError::BadAnswer("more data than requested"));
        }
        got += chunk.len() as u64;
        sink.put(chunk).await?;
        progress.store(got, Ordering::Relaxed);
        if ordered < size && got + DOWNLOAD_WINDOW / 2 >= ordered {
            ordered = size.min(got + DOWNLOAD_WINDOW);
            writer
                .message(&pb::PieceDownloadMessage {
                    message: Some(pb::piece_download_message::Message::Order(order(ordered))),
                })
                .await?;
        }
        if got == size {
            break;
        }
    }
    let _ = writer.finish();
    if got != size {
        return Err(PieceError::BadAnswer("piece ended early"));
    }
    Ok(())
}
