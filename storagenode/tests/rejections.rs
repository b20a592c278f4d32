//! Every way a piece transfer can be refused: the node answers with a typed
//! rejection, never panics, and keeps serving everyone else.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use loam_common::orders::{
    Order, OrderLimit, PieceAction, PieceHash, PieceId, SerialNumber, now_ms,
};
use loam_common::rpc::RemoteError;
use loam_common::transport::{Endpoint, TransportConfig};
use loam_common::wire::{FrameReader, FrameWriter};
use loam_common::{Identity, KeyPair, NodeId, NodeUrl, pb};
use loam_piece_transfer::feed::PieceFeed;
use loam_piece_transfer::piece::{self, PieceError};
use loam_storagenode::{Config, StorageNode};
use tokio_util::sync::CancellationToken;

struct Harness {
    satellite: Identity,
    node: NodeId,
    addr: std::net::SocketAddr,
    client: Endpoint,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let satellite = Identity::generate(0, |_| {});
        let identity = Identity::generate(0, |_| {});
        let config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            http_listen: "127.0.0.1:0".parse().expect("addr"),
            // Never reached: the test hands the node the satellite's key.
            satellites: vec![NodeUrl {
                id: satellite.id(),
                address: "127.0.0.1:9".into(),
            }],
            checkin_interval_secs: 3600.0,
            allocated_bytes: 10 << 20,
            sync_writes: false,
            ..Default::default()
        };
        let node = StorageNode::new(dir.path(), identity.clone(), config)
            .await
            .expect("node");
        assert!(node.piecestore.trust().learn(satellite.public()));
        let addr = node.addr();
        let cancel = CancellationToken::new();
        tokio::spawn(node.run(cancel.clone()));
        let client = Endpoint::bind(
            Identity::generate(0, |_| {}),
            "127.0.0.1:0".parse().expect("addr"),
            TransportConfig::default(),
        )
        .expect("client");
        Self {
            satellite,
            node: identity.id(),
            addr,
            client,
            cancel,
            _dir: dir,
        }
    }

    fn limit(&self, action: PieceAction, max: u64, piece_key: &KeyPair) -> OrderLimit {
        OrderLimit {
            serial: SerialNumber::random(),
            satellite_id: self.satellite.id(),
            node_id: self.node,
            piece_id: PieceId::random(),
            action,
            limit: max,
            piece_public_key: piece_key.public(),
            created_ms: now_ms(),
            expires_ms: now_ms() + 60_000,
            piece_expires_ms: 0,
            metadata: Vec::new(),
        }
    }

    fn addressed(
        &self,
        signed: pb::SignedOrderLimit,
        hash: Option<[u8; 32]>,
    ) -> pb::AddressedOrderLimit {
        pb::AddressedOrderLimit {
            limit: Some(signed),
            address: self.addr.to_string(),
            node_id: self.node.as_bytes().to_vec().into(),
            piece_num: 0,
            piece_hash: hash.map(|h| h.to_vec().into()).unwrap_or_default(),
        }
    }

    async fn upload(
        &self,
        signed: pb::SignedOrderLimit,
        key: &KeyPair,
        data: &[u8],
    ) -> Result<pb::SignedPieceHash, PieceError> {
        let hash = loam_common::merkle::root(data);
        piece::upload(
            &self.client,
            &self.addressed(signed, None),
            key,
            PieceFeed::whole(Bytes::copy_from_slice(data), hash),
            Duration::from_secs(5),
            None,
        )
        .await
    }

    async fn download(
        &self,
        signed: pb::SignedOrderLimit,
        key: &KeyPair,
        data: &[u8],
    ) -> Result<Vec<u8>, PieceError> {
        let hash = loam_common::merkle::root(data);
        piece::download(
            &self.client,
            &self.addressed(signed, Some(hash)),
            key,
            data.len() as u64,
            Duration::from_secs(5),
            Arc::new(AtomicU64::new(0)),
            true,
        )
        .await
    }

    /// Starts an upload by hand: the limit, then one order for `amount`.
    async fn start_upload(
        &self,
        limit: &OrderLimit,
        key: &KeyPair,
        amount: u64,
    ) -> (FrameWriter, FrameReader) {
        let (mut w, r) = self.raw_stream().await;
        w.message(&pb::PieceRequest {
            request: Some(pb::piece_request::Request::Upload(pb::PieceUploadRequest {
                limit: Some(limit.sign(&self.satellite)),
            })),
        })
        .await
        .expect("send");
        let order = Order {
            serial: limit.serial,
            amount,
        }
        .sign(key);
        w.message(&pb::PieceUploadMessage {
            message: Some(pb::piece_upload_message::Message::Order(order)),
        })
        .await
        .expect("send");
        (w, r)
    }

    /// Opens a raw stream for hand-made frames.
    async fn raw_stream(&self) -> (FrameWriter, FrameReader) {
        let conn = self
            .client
            .dial(self.node, self.addr)
            .await
            .expect("connect");
        let (send, recv) = conn.open_bi().await.expect("stream");
        (FrameWriter::new(send), FrameReader::new(recv))
    }
}

fn rejection(result: Result<impl std::fmt::Debug, PieceError>) -> pb::OrderRejection {
    match result {
        Err(PieceError::Remote(RemoteError { rejection, .. })) => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Proves the node still serves: a full upload and download.
async fn still_serving(h: &Harness) {
    let key = KeyPair::generate();
    let data = vec![42u8; 100_000];
    let put = h.limit(PieceAction::Put, data.len() as u64, &key);
    h.upload(put.sign(&h.satellite), &key, &data)
        .await
        .expect("upload after rejections");
    let mut get = h.limit(PieceAction::Get, data.len() as u64, &key);
    get.piece_id = put.piece_id;
    assert_eq!(
        h.download(get.sign(&h.satellite), &key, &data)
            .await
            .expect("download"),
        data
    );
}

#[tokio::test]
async fn order_limit_rejections() {
    let h = Harness::start().await;
    let key = KeyPair::generate();
    let data = vec![1u8; 50_000];

    // Signed by another key.
    let impostor = Identity::generate(0, |_| {});
    let l = h.limit(PieceAction::Put, 50_000, &key);
    assert_eq!(
        rejection(h.upload(l.sign(&impostor), &key, &data).await),
        pb::OrderRejection::BadSatelliteSignature
    );

    // Issued by a satellite the node does not trust.
    let mut l = h.limit(PieceAction::Put, 50_000, &key);
    l.satellite_id = impostor.id();
    assert_eq!(
        rejection(h.upload(l.sign(&impostor), &key, &data).await),
        pb::OrderRejection::UntrustedSatellite
    );

    // For another node.
    let mut l = h.limit(PieceAction::Put, 50_000, &key);
    l.node_id = Identity::generate(0, |_| {}).id();
    assert_eq!(
        rejection(h.upload(l.sign(&h.satellite), &key, &data).await),
        pb::OrderRejection::WrongNode
    );

    // Expired.
    let mut l = h.limit(PieceAction::Put, 50_000, &key);
    l.expires_ms = now_ms() - 1;
    assert_eq!(
        rejection(h.upload(l.sign(&h.satellite), &key, &data).await),
        pb::OrderRejection::Expired
    );

    // A GET limit on the upload path.
    let l = h.limit(PieceAction::Get, 50_000, &key);
    assert_eq!(
        rejection(h.upload(l.sign(&h.satellite), &key, &data).await),
        pb::OrderRejection::WrongAction
    );

    // Replayed serial.
    let l = h.limit(PieceAction::Put, 50_000, &key).sign(&h.satellite);
    h.upload(l.clone(), &key, &data).await.expect("first use");
    assert_eq!(
        rejection(h.upload(l, &key, &data).await),
        pb::OrderRejection::SerialReused
    );

    still_serving(&h).await;
    h.cancel.cancel();
}

#[tokio::test]
async fn order_rejections() {
    let h = Harness::start().await;
    let key = KeyPair::generate();

    // Order above the limit: the uplink signs for more bytes than allowed.
    let data = vec![2u8; 80_000];
    let l = h.limit(PieceAction::Put, 50_000, &key);
    assert_eq!(
        rejection(h.upload(l.sign(&h.satellite), &key, &data).await),
        pb::OrderRejection::AmountAboveLimit
    );

    // Orders signed by a key other than the limit's piece key.
    let l = h.limit(PieceAction::Put, 50_000, &key);
    assert_eq!(
        rejection(
            h.upload(l.sign(&h.satellite), &KeyPair::generate(), &data[..40_000])
                .await
        ),
        pb::OrderRejection::BadUplinkSignature
    );

    // Data beyond what was ordered.
    let l = h.limit(PieceAction::Put, 50_000, &key);
    let (mut w, mut r) = h.start_upload(&l, &key, 100).await;
    let _ = w.data(Bytes::from(vec![0u8; 1000])).await;
    let _ = w.finish();
    let resp: pb::PieceUploadResponse = r.message().await.expect("response");
    let Some(pb::piece_upload_response::Result::Error(e)) = resp.result else {
        panic!("expected an error, got {resp:?}")
    };
    assert_eq!(e.order_rejection(), pb::OrderRejection::BytesBeyondOrder);

    // A piece hash that does not match the data.
    let l = h.limit(PieceAction::Put, 50_000, &key);
    let (mut w, mut r) = h.start_upload(&l, &key, 10).await;
    w.data(Bytes::from_static(b"0123456789"))
        .await
        .expect("send");
    let done = PieceHash {
        piece_id: l.piece_id,
        hash: [0u8; 32],
        size: 10,
        timestamp_ms: now_ms(),
    }
    .sign(&key);
    w.message(&pb::PieceUploadMessage {
        message: Some(pb::piece_upload_message::Message::Done(done)),
    })
    .await
    .expect("send");
    w.finish().expect("finish");
    let resp: pb::PieceUploadResponse = r.message().await.expect("response");
    let Some(pb::piece_upload_response::Result::Error(e)) = resp.result else {
        panic!("expected an error, got {resp:?}")
    };
    assert_eq!(e.order_rejection(), pb::OrderRejection::HashMismatch);

    // Download of a piece the node does not have.
    let l = h.limit(PieceAction::Get, 10, &key);
    match h.download(l.sign(&h.satellite), &key, b"0123456789").await {
        Err(PieceError::Remote(e)) => assert_eq!(e.code, pb::ErrorCode::NotFound),
        other => panic!("expected not found, got {other:?}"),
    }

    still_serving(&h).await;
    h.cancel.cancel();
}

#[tokio::test]
async fn malformed_streams() {
    let h = Harness::start().await;

    // A frame header announcing more than the cap: refused before buffering.
    let (mut w, mut r) = h.raw_stream().await;
    let mut header = vec![1u8];
    header.extend_from_slice(&(64u32 << 20).to_be_bytes());
    w.raw(&header).await.expect("send");
    let resp: pb::PieceUploadResponse = r.message().await.expect("response");
    let Some(pb::piece_upload_response::Result::Error(e)) = resp.result else {
        panic!("expected an error, got {resp:?}")
    };
    assert_eq!(e.code(), pb::ErrorCode::InvalidArgument);
    assert!(e.message.contains("exceeds"), "{}", e.message);

    // Garbage bytes.
    for garbage in [
        &b"\xff\xfe\xfd\xfc\xfb\xfa"[..],
        b"\x01\x00\x00\x00\x04\xde\xad\xbe\xef",
        b"\x01\x00",
    ] {
        let (mut w, mut r) = h.raw_stream().await;
        w.raw(garbage).await.expect("send");
        w.finish().expect("finish");
        let resp: pb::PieceUploadResponse = r.message().await.expect("response");
        assert!(
            matches!(
                resp.result,
                Some(pb::piece_upload_response::Result::Error(_))
            ),
            "garbage {garbage:?} got {resp:?}"
        );
    }

    // A stream closed without a word.
    let (mut w, _r) = h.raw_stream().await;
    w.finish().expect("finish");

    still_serving(&h).await;
    h.cancel.cancel();
}

#[tokio::test]
async fn download_orders_are_enforced() {
    let h = Harness::start().await;
    let key = KeyPair::generate();
    let data = vec![9u8; 64_000];
    let put = h.limit(PieceAction::Put, data.len() as u64, &key);
    h.upload(put.sign(&h.satellite), &key, &data)
        .await
        .expect("upload");

    // GET limit smaller than the requested range.
    let mut get = h.limit(PieceAction::Get, 1000, &key);
    get.piece_id = put.piece_id;
    assert_eq!(
        rejection(h.download(get.sign(&h.satellite), &key, &data).await),
        pb::OrderRejection::AmountAboveLimit
    );

    // Replayed GET serial.
    let mut get = h.limit(PieceAction::Get, data.len() as u64, &key);
    get.piece_id = put.piece_id;
    let signed = get.sign(&h.satellite);
    h.download(signed.clone(), &key, &data)
        .await
        .expect("first download");
    assert_eq!(
        rejection(h.download(signed, &key, &data).await),
        pb::OrderRejection::SerialReused
    );
    h.cancel.cancel();
}

#[tokio::test]
async fn full_disk_is_refused_up_front() {
    let h = Harness::start().await;
    let key = KeyPair::generate();
    // The harness allocates 10 MiB.
    let l = h.limit(PieceAction::Put, 20 << 20, &key);
    match h.upload(l.sign(&h.satellite), &key, &[1u8; 10]).await {
        Err(PieceError::Remote(e)) => {
            assert_eq!(e.code, pb::ErrorCode::ResourceExhausted);
            assert_eq!(e.rejection, pb::OrderRejection::NoSpace);
        }
        other => panic!("expected no space, got {other:?}"),
    }
    still_serving(&h).await;
    h.cancel.cancel();
}
