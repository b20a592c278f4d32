//! Order settlement: every cycle, for each satellite, the node sends the
//! orders of every window that has closed (limits created in
//! `[start, start + window)`, the window length learnt at check-in) on one
//! stream, and forgets them once the satellite acknowledged the window
//! (accepted, already settled, or too old). Anything else — the satellite
//! unreachable, the stream broken — keeps them for the next cycle, and they
//! are in RocksDB, so a restart loses nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use loam_common::chore::Cycle;
use loam_common::orders::{OrderLimit, now_ms};
use loam_common::rpc::{CallError, RemoteError};
use loam_common::transport::Endpoint;
use loam_common::wire::{FrameReader, FrameWriter};
use loam_common::{NodeUrl, pb};

use crate::contact::Contact;
use crate::piecestore::NodeDb;

/// Orders per message of a settlement stream (well under the frame cap).
const BATCH: usize = 1500;

/// A window is settled once it has been closed this long (orders of
/// transfers still running at its end can still arrive).
const MAX_GRACE_MS: i64 = 60_000;

/// When an order created at `created_ms` is first sent for settlement:
/// once its window (of `window_ms`) has closed and the grace for late
/// orders of that window has passed.
pub fn sent_from(created_ms: i64, window_ms: i64) -> i64 {
    let window_ms = window_ms.max(1);
    (created_ms.div_euclid(window_ms) + 1) * window_ms + grace(window_ms)
}

/// How long after a window closes its orders are still held back, for
/// orders of that window that arrive late.
fn grace(window_ms: i64) -> i64 {
    window_ms.min(MAX_GRACE_MS)
}

/// What one settlement round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SettleStats {
    pub windows_settled: usize,
    pub orders_sent: usize,
    pub orders_accepted: u64,
    pub orders_rejected: u64,
    pub windows_failed: usize,
}

pub struct Settler {
    endpoint: Endpoint,
    contact: Arc<Contact>,
    db: Arc<NodeDb>,
    pub cycle: Cycle,
}

impl Settler {
    pub fn new(
        endpoint: Endpoint,
        contact: Arc<Contact>,
        db: Arc<NodeDb>,
        interval: std::time::Duration,
    ) -> Self {
        Self {
            endpoint,
            contact,
            db,
            cycle: Cycle::new(interval),
        }
    }

    /// One round with every satellite.
    pub async fn settle_all(&self) -> SettleStats {
        self.settle_all_at(now_ms()).await
    }

    /// One round as if the time were `now` (windows closed by then are
    /// sent; tests pass a later time instead of waiting).
    pub async fn settle_all_at(&self, now: i64) -> SettleStats {
        let mut stats = SettleStats::default();
        let standings = self.contact.standings();
        for sat in self.contact.satellites() {
            let window = standings.get(&sat.id).map_or(0, |s| s.order_window_ms);
            if window <= 0 {
                continue;
            }
            if let Err(e) = self.settle_satellite(sat, window, now, &mut stats).await {
                tracing::warn!(satellite = %sat.id.short(), error = %e, "order settlement failed");
            }
        }
        metrics::gauge!("loam_storagenode_unsent_orders").set(self.db.unsent_orders() as f64);
        stats
    }

    async fn settle_satellite(
        &self,
        sat: &NodeUrl,
        window: i64,
        now: i64,
        stats: &mut SettleStats,
    ) -> Result<(), CallError> {
        let closed_before = (now - grace(window)).div_euclid(window) * window;
        let (db, id) = (self.db.clone(), sat.id);
        let orders = tokio::task::spawn_blocking(move || db.orders_of(&id, closed_before))
            .await
            .map_err(|e| {
                CallError::Remote(RemoteError::new(pb::ErrorCode::Internal, e.to_string()))
            })?
            .map_err(|e| {
                CallError::Remote(RemoteError::new(pb::ErrorCode::Internal, e.to_string()))
            })?;
        let mut windows: BTreeMap<i64, Vec<(Vec<u8>, pb::UnsentOrder)>> = BTreeMap::new();
        for (key, order) in orders {
            let created = order
                .limit
                .as_ref()
                .and_then(|l| OrderLimit::decode_unverified(l).ok())
                .map_or(0, |l| l.created_ms);
            windows
                .entry(created.div_euclid(window) * window)
                .or_default()
                .push((key, order));
        }
        if windows.is_empty() {
            return Ok(());
        }
        let conn = self.endpoint.dial_url(sat).await?;
        for (start, entries) in windows {
            stats.orders_sent += entries.len();
            match settle_window(&conn, start, &entries).await {
                Ok(resp) => {
                    use pb::settle_orders_response::Status;
                    let status = Status::try_from(resp.status).unwrap_or(Status::Unspecified);
                    if status == Status::Unspecified {
                        stats.windows_failed += 1;
                        continue;
                    }
                    if !resp.rejections.is_empty() {
                        tracing::warn!(
                            window = start,
                            rejections = resp.rejections.join("; "),
                            "satellite rejected some orders"
                        );
                    }
                    stats.windows_settled += 1;
                    stats.orders_accepted += resp.orders_accepted;
                    stats.orders_rejected += resp.orders_rejected;
                    metrics::counter!("loam_storagenode_settled_orders_total", "result" => "accepted")
                        .increment(resp.orders_accepted);
                    metrics::counter!("loam_storagenode_settled_orders_total", "result" => "rejected")
                        .increment(resp.orders_rejected);
                    let keys: Vec<Vec<u8>> = entries.into_iter().map(|(k, _)| k).collect();
                    let db = self.db.clone();
                    if let Ok(Err(e)) =
                        tokio::task::spawn_blocking(move || db.delete_orders(&keys)).await
                    {
                        tracing::warn!(error = %e, "cannot forget settled orders");
                    }
                }
                Err(e) => {
                    stats.windows_failed += 1;
                    self.endpoint.forget(&sat.id);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Sends one window's orders on one stream and reads the verdict.
async fn settle_window(
    conn: &quinn::Connection,
    start: i64,
    entries: &[(Vec<u8>, pb::UnsentOrder)],
) -> Result<pb::SettleOrdersResponse, CallError> {
    let (send, recv) = conn.open_bi().await?;
    let mut writer = FrameWriter::new(send);
    writer
        .message(&pb::SatelliteRequest {
            api_key: Default::default(),
            request: Some(pb::satellite_request::Request::SettleOrders(
                pb::SettleOrdersRequest {
                    window_start_unix_ms: start,
                },
            )),
        })
        .await?;
    let mut chunks = entries.chunks(BATCH).peekable();
    if chunks.peek().is_none() {
        writer
            .message(&pb::OrderBatch {
                orders: Vec::new(),
                last: true,
            })
            .await?;
    }
    while let Some(chunk) = chunks.next() {
        writer
            .message(&pb::OrderBatch {
                orders: chunk.iter().map(|(_, o)| o.clone()).collect(),
                last: chunks.peek().is_none(),
            })
            .await?;
    }
    writer.finish()?;
    let resp: pb::SatelliteResponse = FrameReader::new(recv).message().await?;
    match resp.response {
        Some(pb::satellite_response::Response::SettleOrders(r)) => Ok(r),
        Some(pb::satellite_response::Response::Error(e)) => Err(RemoteError::from(&e).into()),
        _ => Err(CallError::UnexpectedResponse),
    }
}
