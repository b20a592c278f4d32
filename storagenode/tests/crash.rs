//! A storage node killed with SIGKILL in the middle of uploads serves every
//! piece it acknowledged after a restart, and never exposes a partial one.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use loam_common::config::DocumentedConfig;
use loam_common::orders::{OrderLimit, PieceAction, PieceId, SerialNumber, now_ms};
use loam_common::transport::{Endpoint, TransportConfig};
use loam_common::{Identity, KeyPair, NodeId, pb};
use loam_piece_transfer::feed::PieceFeed;
use loam_piece_transfer::piece::{self, PieceError};
use loam_satellite::Satellite;
use loam_storagenode::{Config, RunInfo};
use rand::{RngCore, SeedableRng};
use tokio_util::sync::CancellationToken;

/// A node process, killed when dropped (also when the test fails).
struct NodeProcess(Child);

impl NodeProcess {
    fn sigkill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.sigkill();
    }
}

fn start_node(dir: &Path) -> NodeProcess {
    let _ = std::fs::remove_file(dir.join("run/node.json"));
    let child = Command::new(env!("CARGO_BIN_EXE_storagenode"))
        .args(["run", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start storagenode");
    NodeProcess(child)
}

/// A satellite-signed order limit for `data` as piece `piece_id` on `node`,
/// addressed for the uplink, and the piece's hash.
fn order_for(
    sat: &Identity,
    node: NodeId,
    addr: std::net::SocketAddr,
    piece_id: PieceId,
    action: PieceAction,
    data: &[u8],
    key: &KeyPair,
) -> (pb::AddressedOrderLimit, [u8; 32]) {
    let hash = loam_common::merkle::root(data);
    let signed = OrderLimit {
        serial: SerialNumber::random(),
        satellite_id: sat.id(),
        node_id: node,
        piece_id,
        action,
        limit: data.len() as u64,
        piece_public_key: key.public(),
        created_ms: now_ms(),
        expires_ms: now_ms() + 60_000,
        piece_expires_ms: 0,
        metadata: Vec::new(),
    }
    .sign(sat);
    let addressed = pb::AddressedOrderLimit {
        limit: Some(signed),
        address: addr.to_string(),
        node_id: node.as_bytes().to_vec().into(),
        piece_num: 0,
        piece_hash: hash.to_vec().into(),
    };
    (addressed, hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_pieces_survive_sigkill() {
    let root = tempfile::tempdir().expect("tmp");
    let sat_identity = Identity::generate(0, |_| {});
    let sat_config = loam_satellite::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        min_difficulty: 0,
        ..Default::default()
    };
    std::fs::create_dir_all(root.path().join("sat")).expect("dir");
    let sat = Satellite::new(&root.path().join("sat"), sat_identity.clone(), sat_config)
        .await
        .expect("satellite");
    let sat_url = sat.url();
    let overlay = sat.overlay.clone();
    let cancel = CancellationToken::new();
    tokio::spawn(sat.run(cancel.clone()));

    let node_dir = root.path().join("node");
    std::fs::create_dir_all(&node_dir).expect("dir");
    let node_identity = Identity::generate(0, |_| {});
    node_identity
        .save(&node_dir.join("identity.key"))
        .expect("identity");
    let node_id = node_identity.id();
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        satellites: vec![sat_url],
        checkin_interval_secs: 0.2,
        sync_writes: true,
        ..Default::default()
    }
    .save(&node_dir)
    .expect("config");

    // The node writes run/node.json before it starts, and checks in once
    // it runs: the check-in is the readiness event.
    let wait = |since| {
        let overlay = overlay.clone();
        let dir = node_dir.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                overlay.wait_for_check_in(&node_id, since),
            )
            .await
            .expect("node checked in within 30 s");
            let bytes = std::fs::read(dir.join("run/node.json")).expect("run file");
            serde_json::from_slice::<RunInfo>(&bytes).expect("run info")
        }
    };

    let mut child = start_node(&node_dir);
    let info = wait(0).await;
    let client = Endpoint::bind(
        Identity::generate(0, |_| {}),
        "127.0.0.1:0".parse().expect("addr"),
        TransportConfig::default(),
    )
    .expect("client");

    // 60 uploads of 64 KiB..1 MiB; kill the node once 10 are acknowledged.
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let pieces: Vec<(PieceId, Vec<u8>)> = (0..60)
        .map(|_| {
            let mut data = vec![0u8; 65_536 + (rng.next_u32() as usize % (1 << 20))];
            rng.fill_bytes(&mut data);
            (PieceId::random(), data)
        })
        .collect();
    let key = KeyPair::generate();
    let mut uploads = FuturesUnordered::new();
    for (i, (piece_id, data)) in pieces.iter().enumerate() {
        let (l, hash) = order_for(
            &sat_identity,
            node_id,
            info.address,
            *piece_id,
            PieceAction::Put,
            data,
            &key,
        );
        let (client, key, data) = (&client, &key, Bytes::copy_from_slice(data));
        uploads.push(async move {
            let feed = PieceFeed::whole(data, hash);
            let r = piece::upload(client, &l, key, feed, Duration::from_secs(5), None).await;
            (i, r)
        });
    }
    let mut acked = Vec::new();
    while let Some((i, r)) = uploads.next().await {
        if r.is_ok() {
            acked.push(i);
        }
        if acked.len() == 10 {
            child.sigkill();
            break; // the rest are in flight to a dead node
        }
    }
    drop(uploads);
    assert!(
        acked.len() >= 10,
        "only {} uploads were acknowledged",
        acked.len()
    );
    assert!(
        acked.len() < pieces.len(),
        "the kill came too late to interrupt anything"
    );

    // Restart on the same directory.
    let restarted = now_ms();
    let mut child = start_node(&node_dir);
    let info = wait(restarted).await;
    client.forget(&node_id);
    assert_eq!(
        std::fs::read_dir(node_dir.join("storage/tmp"))
            .expect("tmp dir")
            .count(),
        0,
        "partial uploads were left behind"
    );

    for (i, (piece_id, data)) in pieces.iter().enumerate() {
        let (l, _) = order_for(
            &sat_identity,
            node_id,
            info.address,
            *piece_id,
            PieceAction::Get,
            data,
            &key,
        );
        let got = piece::download(
            &client,
            &l,
            &key,
            data.len() as u64,
            Duration::from_secs(5),
            Arc::new(AtomicU64::new(0)),
            true,
        )
        .await;
        match got {
            Ok(bytes) => assert_eq!(&bytes, data, "piece {i} differs"),
            Err(PieceError::Remote(e)) if e.code == pb::ErrorCode::NotFound => {
                assert!(!acked.contains(&i), "acknowledged piece {i} is gone");
            }
            Err(e) => panic!("piece {i}: {e}"),
        }
    }
    child.sigkill();
    cancel.cancel();
}
