//! Repair: the checker finds segments whose healthy pieces (on nodes that
//! are online) fell to the repair threshold; the repairer, fewest healthy
//! pieces first, downloads `k` pieces — each checked against the hash
//! committed at upload, so a corrupt piece is detected and another one used
//! — rebuilds the missing pieces, uploads them to new distinct nodes under
//! PUT_REPAIR order limits, and swaps them into the segment.
//!
//! Pieces on nodes that are not healthy are dropped from the segment when it
//! is repaired; if such a node comes back, garbage collection removes them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use loam_common::erasure::{ErasureCoder, RedundancyScheme};
use loam_common::orders::{PieceAction, PieceId, now_ms};
use loam_common::transport::Endpoint as QuicEndpoint;
use loam_common::{KeyPair, NodeId, pb};
use loam_piece_transfer::feed::PieceFeed;
use serde::{Deserialize, Serialize};

use crate::metainfo::Metainfo;
use crate::overlay::Overlay;
use crate::satellitedb::Stored;
use crate::satellitedb::metabase::SegmentPosition;

/// The `[repair]` table of the satellite's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RepairConfig {
    /// Seconds between checker runs (each followed by repairs). Default 300.
    pub interval_secs: f64,
    /// Most segments repaired per run. Default 1000.
    pub max_per_run: usize,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            interval_secs: 300.0,
            max_per_run: 1000,
        }
    }
}

/// What one checker-and-repairer run did.
#[derive(Debug, Default, Clone)]
pub struct RepairStats {
    pub segments: usize,
    pub below_threshold: usize,
    pub repaired: usize,
    pub failed: usize,
    /// Per repaired segment: seconds, bytes downloaded + uploaded, segment
    /// plaintext bytes.
    pub timings: Vec<(f64, u64, u64)>,
}

/// The repair state for `satellite status`: the last checker run and
/// totals since start.
#[derive(Debug, Default, Clone, Copy)]
pub struct RepairSummary {
    pub checked_ms: i64,
    pub queue: usize,
    pub repaired_total: u64,
    pub failed_total: u64,
}

pub struct Repair {
    metainfo: Arc<Metainfo>,
    overlay: Arc<Overlay>,
    endpoint: QuicEndpoint,
    config: RepairConfig,
    summary: std::sync::Mutex<RepairSummary>,
    /// Checks exiting nodes' pieces and records what they fail.
    exit_checks: std::sync::OnceLock<(Arc<crate::audit::Auditor>, Arc<crate::audit::Reputation>)>,
    /// Pieces of exiting nodes checked so far: (produced, not produced).
    exit_tally: std::sync::Mutex<HashMap<NodeId, (u64, u64)>>,
    /// Committed pieces per node, counted by the last checker run.
    piece_counts: std::sync::RwLock<Option<HashMap<NodeId, u64>>>,
}

/// An exit fails (and the node is disqualified) once more than this share
/// of the pieces checked during it could not be produced.
pub const EXIT_FAILURE_SHARE: f64 = 0.1;

/// A segment the checker queued.
struct Queued {
    key: SegmentPosition,
    record: Stored<pb::SegmentRecord>,
    healthy: usize,
}

impl Repair {
    pub fn new(
        metainfo: Arc<Metainfo>,
        overlay: Arc<Overlay>,
        endpoint: QuicEndpoint,
        config: RepairConfig,
    ) -> Self {
        Self {
            metainfo,
            overlay,
            endpoint,
            config,
            summary: Default::default(),
            exit_checks: std::sync::OnceLock::new(),
            exit_tally: Default::default(),
            piece_counts: Default::default(),
        }
    }

    /// Lets graceful exits check the exiting nodes' pieces: a node that
    /// cannot produce what it was paid to store fails its exit.
    pub fn set_exit_checks(
        &self,
        auditor: Arc<crate::audit::Auditor>,
        reputation: Arc<crate::audit::Reputation>,
    ) {
        let _ = self.exit_checks.set((auditor, reputation));
    }

    /// Challenges the pieces of `seg` held by exiting nodes. Each piece not
    /// produced is a failed audit; an exit with more than
    /// [`EXIT_FAILURE_SHARE`] of its checks failed ends in
    /// disqualification, which forfeits the held amount.
    async fn check_exiting_pieces(&self, seg: &pb::SegmentRecord, exiting: &HashSet<NodeId>) {
        let Some((auditor, reputation)) = self.exit_checks.get() else {
            return;
        };
        for (node, piece_id, hash, size) in crate::audit::auditable_pieces(seg) {
            if !exiting.contains(&node) {
                continue;
            }
            let Some(info) = self.overlay.get(&node) else {
                continue;
            };
            if info.disqualified_ms.is_some() {
                continue;
            }
            let outcome = auditor
                .challenge(&node, &info.address, piece_id, hash, size)
                .await;
            let ok = outcome == crate::audit::Outcome::Success;
            let (checked, failed) = {
                let mut tally = self.exit_tally.lock().expect("exit tally lock");
                let t = tally.entry(node).or_insert((0, 0));
                if ok {
                    t.0 += 1;
                } else {
                    t.1 += 1;
                }
                (t.0 + t.1, t.1)
            };
            metrics::counter!("loam_satellite_exit_piece_checks_total", "result" => if ok { "ok" } else { "failed" }).increment(1);
            if ok {
                continue;
            }
            tracing::warn!(node = %node.short(), ?outcome, "an exiting node did not produce a piece");
            if let Err(e) = reputation.record(&node, crate::audit::Outcome::Failure) {
                tracing::warn!(error = %e, "cannot record a failed exit check");
            }
            if failed as f64 > EXIT_FAILURE_SHARE * checked as f64 {
                tracing::warn!(node = %node.short(), failed, checked, "graceful exit failed: node disqualified");
                metrics::counter!("loam_satellite_exits_failed_total").increment(1);
                if let Err(e) = self.overlay.disqualify(&node, now_ms()) {
                    tracing::warn!(error = %e, "cannot disqualify a node whose exit failed");
                }
            }
        }
    }

    /// Pieces each node holds, as of the last checker run (`None` before
    /// the first), without scanning anything.
    pub fn pieces_held(&self, node: &NodeId) -> Option<u64> {
        let counts = self.piece_counts.read().expect("piece counts lock");
        counts.as_ref().map(|c| c.get(node).copied().unwrap_or(0))
    }

    pub fn summary(&self) -> RepairSummary {
        *self.summary.lock().expect("summary lock")
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.config.interval_secs.max(0.1))
    }

    fn healthy_nodes(&self) -> HashSet<NodeId> {
        let now = now_ms();
        self.overlay
            .list()
            .into_iter()
            .filter(|n| self.overlay.is_healthy(n, now))
            .map(|n| n.id)
            .collect()
    }

    /// Checker then repairer, once.
    pub async fn run_once(&self) -> RepairStats {
        let mut stats = RepairStats::default();
        let healthy_nodes = self.healthy_nodes();
        let exiting: HashSet<NodeId> = self
            .overlay
            .list()
            .into_iter()
            .filter(|n| {
                n.exit_started_ms.is_some()
                    && n.exit_finished_ms.is_none()
                    && n.disqualified_ms.is_none()
            })
            .map(|n| n.id)
            .collect();
        // The checker: one pass over the segments, a page at a time,
        // keeping only those that need repair.
        let metainfo = self.metainfo.clone();
        let exiting_nodes = exiting.clone();
        let pass = std::time::Instant::now();
        let checked = tokio::task::spawn_blocking(move || {
            let mut segments = 0usize;
            let mut queue = Vec::new();
            let mut counts: HashMap<NodeId, u64> = HashMap::new();
            metainfo.for_each_segment(|key, record| {
                segments += 1;
                for p in &record.pieces {
                    if let Ok(n) = NodeId::try_from(p.node_id.as_ref()) {
                        *counts.entry(n).or_insert(0) += 1;
                    }
                }
                let Some(scheme) = record
                    .redundancy
                    .as_ref()
                    .and_then(|r| RedundancyScheme::try_from(r).ok())
                else {
                    return;
                };
                let healthy = record
                    .pieces
                    .iter()
                    .filter(|p| {
                        NodeId::try_from(p.node_id.as_ref())
                            .is_ok_and(|n| healthy_nodes.contains(&n))
                    })
                    .count();
                // Pieces of exiting nodes move whatever the segment's health.
                let on_exiting = record.pieces.iter().any(|p| {
                    NodeId::try_from(p.node_id.as_ref()).is_ok_and(|n| exiting_nodes.contains(&n))
                });
                if healthy <= scheme.repair() || on_exiting {
                    queue.push(Queued {
                        key,
                        record,
                        healthy,
                    });
                }
            })?;
            Ok::<_, crate::metainfo::MetainfoError>((segments, queue, counts))
        })
        .await;
        let (segments, mut queue, counts) = match checked {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "checker: cannot read segments");
                return stats;
            }
            Err(e) => {
                tracing::warn!(error = %e, "checker panicked");
                return stats;
            }
        };
        stats.segments = segments;
        metrics::gauge!("loam_satellite_checker_pass_seconds").set(pass.elapsed().as_secs_f64());
        metrics::gauge!("loam_satellite_checker_segments").set(segments as f64);
        *self.piece_counts.write().expect("piece counts lock") = Some(counts);
        stats.below_threshold = queue.len();
        metrics::gauge!("loam_satellite_segments_below_repair_threshold").set(queue.len() as f64);
        metrics::gauge!("loam_satellite_repair_queue_length").set(queue.len() as f64);
        // Fewest healthy pieces first: closest to loss.
        queue.sort_by_key(|q| q.healthy);
        for (done, q) in queue.into_iter().take(self.config.max_per_run).enumerate() {
            self.check_exiting_pieces(&q.record, &exiting).await;
            let t = Instant::now();
            match self.repair_segment(&q).await {
                Ok((moved, plain)) => {
                    stats.repaired += 1;
                    stats
                        .timings
                        .push((t.elapsed().as_secs_f64(), moved, plain));
                    metrics::counter!("loam_satellite_repairs_total", "result" => "ok")
                        .increment(1);
                    metrics::histogram!("loam_satellite_repair_duration_seconds")
                        .record(t.elapsed().as_secs_f64());
                    metrics::counter!("loam_satellite_repair_bytes_total").increment(moved);
                    metrics::counter!("loam_satellite_repaired_segment_bytes_total")
                        .increment(plain);
                }
                Err(e) => {
                    stats.failed += 1;
                    metrics::counter!("loam_satellite_repairs_total", "result" => "failed")
                        .increment(1);
                    tracing::warn!(healthy = q.healthy, error = %e, "segment repair failed");
                }
            }
            metrics::gauge!("loam_satellite_repair_queue_length")
                .set((stats.below_threshold - done - 1) as f64);
        }
        // Exits with nothing left to move are complete.
        if !exiting.is_empty()
            && let Ok(holding) = self.metainfo.pieces_per_node()
        {
            for n in exiting.iter().filter(|n| !holding.contains_key(n)) {
                if let Err(e) = self.overlay.finish_exit(n, now_ms()) {
                    tracing::warn!(error = %e, "cannot record a finished exit");
                }
            }
        }
        metrics::counter!("loam_satellite_repair_runs_total").increment(1);
        {
            let mut summary = self.summary.lock().expect("summary lock");
            summary.checked_ms = now_ms();
            summary.queue = stats.below_threshold.saturating_sub(stats.repaired);
            summary.repaired_total += stats.repaired as u64;
            summary.failed_total += stats.failed as u64;
        }
        stats
    }

    /// Repairs one segment; returns (bytes moved, segment plaintext bytes).
    async fn repair_segment(&self, q: &Queued) -> Result<(u64, u64), String> {
        let seg = &q.record;
        let scheme = seg
            .redundancy
            .as_ref()
            .and_then(|r| RedundancyScheme::try_from(r).ok())
            .ok_or("segment without redundancy")?;
        let meta = seg.meta.clone().unwrap_or_default();
        let root =
            PieceId::try_from(seg.root_piece_id.as_ref()).map_err(|_| "bad root piece id")?;
        let healthy_nodes = self.healthy_nodes();
        let healthy: Vec<&pb::StoredPieceRef> = seg
            .pieces
            .iter()
            .filter(|p| {
                NodeId::try_from(p.node_id.as_ref()).is_ok_and(|n| healthy_nodes.contains(&n))
            })
            .collect();
        if healthy.len() < scheme.k() {
            return Err(format!(
                "only {} healthy pieces, {} needed: the segment is lost",
                healthy.len(),
                scheme.k()
            ));
        }
        // Download k pieces, each checked against its committed hash.
        let limits = self
            .metainfo
            .segment_limits(seg, PieceAction::GetRepair, None);
        let piece_key =
            KeyPair::try_from(limits.piece_private_key.as_ref()).map_err(|_| "bad piece key")?;
        let piece_size = meta.piece_size.max(0) as u64;
        let mut pieces = loam_piece_transfer::fetch_pieces(
            &self.endpoint,
            Duration::from_secs(5),
            Duration::from_millis(750),
            &limits.limits,
            scheme,
            piece_size,
            &piece_key,
            true,
        )
        .await
        .map_err(|e| e.to_string())?;
        let downloaded: u64 = pieces.iter().flatten().map(|p| p.len() as u64).sum();
        let pieces = tokio::task::spawn_blocking(move || {
            ErasureCoder::new(scheme)
                .reconstruct_all(&mut pieces)
                .map(|()| pieces)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;

        // New pieces for the numbers no healthy node holds, on new nodes.
        let held: HashSet<u32> = healthy.iter().map(|p| p.piece_num).collect();
        let mut missing: Vec<u32> = (0..scheme.total() as u32)
            .filter(|n| !held.contains(n))
            .collect();
        // Back to `success`, and at least as many as leave with exiting
        // nodes.
        let leaving = seg.pieces.len().saturating_sub(healthy.len());
        let want = scheme
            .success()
            .saturating_sub(healthy.len())
            .max(leaving.min(missing.len()))
            .max(1);
        missing.truncate(want);
        let exclude: HashSet<NodeId> = seg
            .pieces
            .iter()
            .filter_map(|p| NodeId::try_from(p.node_id.as_ref()).ok())
            .collect();
        let nodes = self
            .overlay
            .select_excluding(missing.len(), piece_size, &exclude, now_ms());
        if nodes.is_empty() {
            return Err("no node available for new pieces".into());
        }
        let put_key = KeyPair::generate();
        let mut uploads = futures::stream::FuturesUnordered::new();
        for (num, node) in missing.iter().zip(&nodes) {
            let data = pieces[*num as usize].clone().ok_or("piece not rebuilt")?;
            let hash = loam_common::merkle::root(&data);
            let piece_id = PieceId::derive(&root, &node.id, *num);
            let limit = pb::AddressedOrderLimit {
                limit: Some(self.metainfo.order_limit(
                    node.id,
                    piece_id,
                    PieceAction::PutRepair,
                    piece_size,
                    &put_key,
                )),
                address: node.address.clone(),
                node_id: node.id.as_bytes().to_vec().into(),
                piece_num: *num,
                piece_hash: Default::default(),
            };
            let (endpoint, put_key) = (&self.endpoint, &put_key);
            uploads.push(async move {
                let r = loam_piece_transfer::piece::upload(
                    endpoint,
                    &limit,
                    put_key,
                    PieceFeed::whole(Bytes::from(data), hash),
                    Duration::from_secs(5),
                    None,
                )
                .await;
                (limit, hash, r)
            });
        }
        let mut added = Vec::new();
        let mut uploaded = 0u64;
        while let Some((limit, hash, r)) = futures::StreamExt::next(&mut uploads).await {
            match r {
                Ok(_) => {
                    uploaded += piece_size;
                    added.push(pb::StoredPieceRef {
                        piece_num: limit.piece_num,
                        node_id: limit.node_id.clone(),
                        hash: hash.to_vec().into(),
                    });
                }
                Err(e) => {
                    tracing::info!(piece = limit.piece_num, error = %e, "repair upload failed")
                }
            }
        }
        if added.is_empty() {
            return Err("every upload of a rebuilt piece failed".into());
        }
        let mut new_pieces: Vec<pb::StoredPieceRef> = healthy.into_iter().cloned().collect();
        new_pieces.extend(added);
        new_pieces.sort_by_key(|p| p.piece_num);
        let replaced = self
            .metainfo
            .metabase()
            .replace_segment_pieces(&q.key, seg, new_pieces)
            .map_err(|e| e.to_string())?;
        if !replaced {
            // Deleted, or changed by another repair, meanwhile: the pieces
            // uploaded now are garbage the collector frees.
            tracing::info!(segment = %q.key, "segment changed during its repair; result dropped");
        }
        Ok((downloaded + uploaded, meta.plain_size.max(0) as u64))
    }
}
