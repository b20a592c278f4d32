//! The satellite answers malformed or unauthenticated requests with a typed
//! error and keeps serving.

use loam_common::transport::{Endpoint, TransportConfig};
use loam_common::wire::{FrameReader, FrameWriter};
use loam_common::{Identity, pb, rpc};
use loam_satellite::Satellite;
use pb::satellite_request::Request as Req;
use pb::satellite_response::Response as Resp;
use tokio_util::sync::CancellationToken;

async fn start() -> (Satellite, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let config = loam_satellite::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        min_difficulty: 4,
        ..Default::default()
    };
    let sat = Satellite::new(dir.path(), Identity::generate(0, |_| {}), config)
        .await
        .expect("satellite");
    (sat, dir)
}

async fn raw(conn: &quinn::Connection, bytes: &[u8]) -> pb::SatelliteResponse {
    let (send, recv) = conn.open_bi().await.expect("stream");
    let mut w = FrameWriter::new(send);
    w.raw(bytes).await.expect("send");
    w.finish().expect("finish");
    FrameReader::new(recv).message().await.expect("an answer")
}

fn error_code(resp: &pb::SatelliteResponse) -> pb::ErrorCode {
    match &resp.response {
        Some(Resp::Error(e)) => e.code(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_and_unauthorised_requests() {
    let (sat, _dir) = start().await;
    let (url, own) = (sat.url(), sat.identity.clone());
    let metainfo = sat.metainfo.clone();
    let cancel = CancellationToken::new();
    tokio::spawn(sat.run(cancel.clone()));

    let stranger = Identity::generate(0, |_| {});
    let client = Endpoint::bind(
        stranger.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        TransportConfig::default(),
    )
    .expect("client");
    let conn = client
        .connect(url.id, url.socket_addr().expect("addr"))
        .await
        .expect("connect");

    // Garbage, an unknown frame kind, a header announcing 64 MiB.
    assert_eq!(
        error_code(&raw(&conn, b"\x01\x00\x00\x00\x03\xff\xff\xff").await),
        pb::ErrorCode::InvalidArgument
    );
    assert_eq!(
        error_code(&raw(&conn, b"\x07\x00\x00\x00\x00").await),
        pb::ErrorCode::InvalidArgument
    );
    let mut big = vec![1u8];
    big.extend_from_slice(&(64u32 << 20).to_be_bytes());
    assert_eq!(
        error_code(&raw(&conn, &big).await),
        pb::ErrorCode::InvalidArgument
    );

    // No or a wrong API key.
    let unauth = rpc::satellite(&conn, b"nope", Req::ListBuckets(pb::ListBucketsRequest {})).await;
    assert_eq!(
        unauth.expect_err("refused").code(),
        Some(pb::ErrorCode::Unauthenticated)
    );

    // Admin requests from anyone but the satellite itself.
    let admin = rpc::satellite(&conn, &[], Req::ListNodes(pb::ListNodesRequest {})).await;
    assert_eq!(
        admin.expect_err("refused").code(),
        Some(pb::ErrorCode::PermissionDenied)
    );

    // A check-in whose key does not match the connection, and one below the difficulty.
    let other = Identity::generate(0, |_| {});
    let bad_key = rpc::satellite(
        &conn,
        &[],
        Req::CheckIn(pb::CheckInRequest {
            address: "127.0.0.1:1000".into(),
            public_key: other.public().as_bytes().to_vec().into(),
            ..Default::default()
        }),
    )
    .await;
    assert!(bad_key.is_err());
    let weak = loop {
        let id = Identity::generate(0, |_| {});
        if id.id().difficulty() < 4 {
            break id;
        }
    };
    let weak_client = Endpoint::bind(
        weak.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        TransportConfig::default(),
    )
    .expect("client");
    let weak_conn = weak_client
        .connect(url.id, url.socket_addr().expect("addr"))
        .await
        .expect("connect");
    let low = rpc::satellite(
        &weak_conn,
        &[],
        Req::CheckIn(pb::CheckInRequest {
            address: "127.0.0.1:1000".into(),
            public_key: weak.public().as_bytes().to_vec().into(),
            ..Default::default()
        }),
    )
    .await;
    let err = low.expect_err("difficulty too low");
    assert!(err.to_string().contains("difficulty"), "{err}");

    // Still serving: the operator lists nodes, a project lists buckets.
    let admin_client = Endpoint::bind(
        own,
        "127.0.0.1:0".parse().expect("addr"),
        TransportConfig::default(),
    )
    .expect("client");
    let admin_conn = admin_client
        .connect(url.id, url.socket_addr().expect("addr"))
        .await
        .expect("connect");
    assert!(matches!(
        rpc::satellite(&admin_conn, &[], Req::ListNodes(pb::ListNodesRequest {})).await,
        Ok(Resp::ListNodes(_))
    ));
    let (key, _, _) = metainfo.create_api_key("p").expect("key");
    assert!(matches!(
        rpc::satellite(&conn, &key, Req::ListBuckets(pb::ListBucketsRequest {})).await,
        Ok(Resp::ListBuckets(_))
    ));
    cancel.cancel();
}

/// Opens a settlement stream for the window starting at `window` and sends
/// `batches` (orders per batch, whether it is the last).
async fn settlement_stream(
    conn: &quinn::Connection,
    window: i64,
    batches: &[(usize, bool)],
) -> (FrameWriter, FrameReader) {
    let (send, recv) = conn.open_bi().await.expect("stream");
    let mut w = FrameWriter::new(send);
    w.message(&pb::SatelliteRequest {
        api_key: Default::default(),
        request: Some(Req::SettleOrders(pb::SettleOrdersRequest {
            window_start_unix_ms: window,
        })),
    })
    .await
    .expect("header");
    for &(n, last) in batches {
        let orders = vec![pb::UnsentOrder::default(); n];
        w.message(&pb::OrderBatch { orders, last })
            .await
            .expect("batch");
    }
    (w, FrameReader::new(recv))
}

async fn answer(mut w: FrameWriter, mut r: FrameReader) -> pb::SatelliteResponse {
    let _ = w.finish();
    r.message().await.expect("an answer")
}

#[tokio::test]
async fn settlement_memory_is_bounded_and_partial_streams_settle_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = loam_satellite::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        min_difficulty: 0,
        sync_writes: false,
        ..Default::default()
    };
    config.orders.max_window_orders = 100;
    let sat = Satellite::new(dir.path(), Identity::generate(0, |_| {}), config)
        .await
        .expect("satellite");
    let node = Identity::generate(0, |_| {});
    sat.overlay
        .check_in(
            node.id(),
            &pb::CheckInRequest {
                address: "127.0.0.1:9".into(),
                public_key: node.public().as_bytes().to_vec().into(),
                ..Default::default()
            },
            loam_common::orders::now_ms(),
        )
        .expect("check in");
    let url = sat.url();
    let cancel = CancellationToken::new();
    tokio::spawn(sat.run(cancel.clone()));
    let client = Endpoint::bind(
        node.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        TransportConfig::default(),
    )
    .expect("client");
    let conn = client
        .connect(url.id, url.socket_addr().expect("addr"))
        .await
        .expect("connect");
    let now = loam_common::orders::now_ms();
    let window = now - now.rem_euclid(3_600_000);

    // More orders than a window may hold: refused as they arrive.
    let (w, r) = settlement_stream(&conn, window, &[(60, false), (60, true)]).await;
    assert_eq!(
        error_code(&answer(w, r).await),
        pb::ErrorCode::ResourceExhausted
    );

    // One settlement per node at a time.
    let (w1, r1) = settlement_stream(&conn, window, &[(10, false)]).await;
    // (a round trip on another stream makes sure the first one started)
    let _ = rpc::satellite(&conn, &[], Req::Info(Default::default())).await;
    let (w2, r2) = settlement_stream(&conn, window, &[(0, true)]).await;
    assert_eq!(
        error_code(&answer(w2, r2).await),
        pb::ErrorCode::ResourceExhausted
    );
    // A stream that ends before its last batch settles nothing.
    assert_eq!(
        error_code(&answer(w1, r1).await),
        pb::ErrorCode::InvalidArgument
    );
    let (w, r) = settlement_stream(&conn, window, &[(5, true)]).await;
    match answer(w, r).await.response {
        Some(Resp::SettleOrders(s)) => {
            assert_eq!(
                s.status,
                pb::settle_orders_response::Status::Accepted as i32,
                "the window was still open: {s:?}"
            );
            assert_eq!((s.orders_accepted, s.orders_rejected), (0, 5));
        }
        other => panic!("expected a settlement, got {other:?}"),
    }
    cancel.cancel();
}
