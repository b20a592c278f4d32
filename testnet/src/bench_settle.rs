//! `testnet bench-settle`: the satellite's settlement path (decode, checks,
//! both signatures, serial dedup, rollups written to RocksDB) on a million
//! orders, next to the floor measured in the same run: single-core Ed25519
//! verifications per second divided by the two signatures each order
//! needs.

use std::sync::Arc;
use std::time::Instant;

use loam_common::identity::Domain;
use loam_common::orders::{Order, OrderLimit, PieceAction, PieceId, SerialNumber, now_ms};
use loam_common::{Identity, KeyPair, pb};
use loam_satellite::db::{Kv, RocksKv};
use loam_satellite::orders::{Orders, OrdersConfig};

pub struct SettleReport {
    pub orders: usize,
    pub windows: usize,
    pub settle_secs: f64,
    pub verify_per_sec: f64,
    pub threads: usize,
}

impl SettleReport {
    pub fn print(&self) {
        let rate = self.orders as f64 / self.settle_secs;
        let floor = self.verify_per_sec / 2.0;
        println!(
            "settled {} orders in {} windows in {:.2} s ({} threads, batch verification)",
            self.orders, self.windows, self.settle_secs, self.threads
        );
        println!("settlement path:                        {rate:>10.0} orders/s");
        println!(
            "floor (1-core Ed25519 verifies/s / 2):  {floor:>10.0} orders/s   ({:.0} verifies/s)",
            self.verify_per_sec
        );
        println!(
            "ratio to the floor:                     {:>10.2}",
            rate / floor
        );
    }
}

/// Signs `n` orders for `node` in windows of `per_window`, on every core.
fn make_orders(
    sat: &Identity,
    node: loam_common::NodeId,
    n: usize,
    per_window: usize,
    window_start: impl Fn(usize) -> i64 + Sync,
) -> Vec<Vec<pb::UnsentOrder>> {
    let windows = n.div_ceil(per_window);
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let mut out: Vec<Vec<pb::UnsentOrder>> = vec![Vec::new(); windows];
    std::thread::scope(|scope| {
        let chunks: Vec<_> = out
            .chunks_mut(windows.div_ceil(threads).max(1))
            .enumerate()
            .map(|(c, chunk)| {
                let window_start = &window_start;
                let per_chunk = windows.div_ceil(threads).max(1);
                scope.spawn(move || {
                    for (j, slot) in chunk.iter_mut().enumerate() {
                        let w = c * per_chunk + j;
                        let count = per_window.min(n - w * per_window);
                        // One piece key per segment, as an uplink does.
                        let key = KeyPair::generate();
                        for i in 0..count {
                            let limit = OrderLimit {
                                serial: SerialNumber::random(),
                                satellite_id: sat.id(),
                                node_id: node,
                                piece_id: PieceId::random(),
                                action: PieceAction::Get,
                                limit: 2 << 20,
                                piece_public_key: key.public(),
                                created_ms: window_start(w) + (i % 1000) as i64,
                                expires_ms: window_start(w) + 86_400_000,
                                piece_expires_ms: 0,
                                metadata: Vec::new(),
                            };
                            let order = Order {
                                serial: limit.serial,
                                amount: 1 << 20,
                            }
                            .sign(&key);
                            slot.push(pb::UnsentOrder {
                                limit: Some(limit.sign(sat)),
                                order: Some(order),
                            });
                        }
                    }
                })
            })
            .collect();
        for c in chunks {
            c.join().expect("signer thread");
        }
    });
    out
}

/// Single-core Ed25519 verifications per second.
fn verify_rate(sat: &Identity) -> f64 {
    let msgs: Vec<(Vec<u8>, Vec<u8>)> = (0..2000u32)
        .map(|i| {
            let m = i.to_be_bytes().repeat(40);
            let s = sat.sign(Domain::Test, &m);
            (m, s)
        })
        .collect();
    let key = sat.public();
    let started = Instant::now();
    let mut n = 0usize;
    while started.elapsed().as_secs_f64() < 2.0 {
        for (m, s) in &msgs {
            key.verify(Domain::Test, m, s).expect("valid");
            n += 1;
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

pub fn run(
    orders: usize,
    per_window: usize,
    dir: &std::path::Path,
) -> anyhow::Result<SettleReport> {
    let sat = Identity::generate(0, |_| {});
    let node = Identity::generate(0, |_| {}).id();
    let kv: Arc<dyn Kv> = Arc::new(RocksKv::open(&dir.join("db"))?);
    let config = OrdersConfig {
        window_secs: 60.0,
        max_age_secs: 30.0 * 86_400.0,
        ..OrdersConfig::default()
    };
    let settlement = Orders::new(kv, &sat, config);
    let base = settlement.window_of(now_ms() - 20 * 86_400_000);
    let w = settlement.window_ms();
    eprintln!("signing {orders} orders (limits and orders)...");
    let windows = make_orders(&sat, node, orders, per_window, |i| base + i as i64 * w);
    eprintln!("measuring single-core verification...");
    let verify_per_sec = verify_rate(&sat);
    eprintln!("settling...");
    let now = now_ms();
    let started = Instant::now();
    let mut accepted = 0u64;
    for (i, batch) in windows.iter().enumerate() {
        let r = settlement.settle(node, base + i as i64 * w, batch, now)?;
        accepted += r.orders_accepted;
        anyhow::ensure!(
            r.orders_rejected == 0,
            "orders rejected: {:?}",
            r.rejections
        );
    }
    let settle_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        accepted as usize == orders,
        "accepted {accepted} of {orders}"
    );
    let settled = settlement.node_bandwidth(&node, 0, i64::MAX)?;
    anyhow::ensure!(settled.get == orders as u64 * (1 << 20), "rollup mismatch");
    Ok(SettleReport {
        orders,
        windows: windows.len(),
        settle_secs,
        verify_per_sec,
        threads: std::thread::available_parallelism().map_or(1, |t| t.get()),
    })
}
