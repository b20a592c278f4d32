//! Garbage collection: the satellite tells every node, with a Bloom filter,
//! which pieces it should keep; the node trashes its other pieces older than
//! the filter (storagenode `retain`), and deletes its trash after a grace
//! period. So deleting an object frees its space within one cycle plus the
//! grace period, and an upload abandoned halfway leaves nothing behind.
//!
//! A piece is in the filter if any segment, committed or pending, places it
//! on that node. Pending segments are read before committed ones: a segment
//! committed between the two reads is found in the second. The cutoff is
//! taken before both reads (less a margin for clock skew), and nodes keep
//! every piece created after it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use loam_common::bloom::BloomFilter;
use loam_common::orders::now_ms;
use loam_common::transport::Endpoint as QuicEndpoint;
use loam_common::wire::{FrameReader, FrameWriter, MAX_DATA_FRAME_LEN};
use loam_common::{NodeId, pb};
use serde::{Deserialize, Serialize};

use crate::metainfo::Metainfo;
use crate::overlay::Overlay;

/// The `[gc]` table of the satellite's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Seconds between garbage-collection cycles. Default 3600.
    pub interval_secs: f64,
    /// False-positive rate of the filters (garbage that survives a cycle).
    /// Default 0.1.
    pub false_positive_rate: f64,
    /// Pieces created less than this many seconds before a cycle starts are
    /// kept whatever the filter says (clock skew between satellite and
    /// nodes). Default 3600.
    pub margin_secs: f64,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            interval_secs: 3600.0,
            false_positive_rate: 0.1,
            margin_secs: 3600.0,
        }
    }
}

/// What one cycle did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcStats {
    pub nodes: usize,
    pub failed: usize,
    pub trashed: u64,
    pub trashed_bytes: u64,
}

pub struct Gc {
    metainfo: Arc<Metainfo>,
    overlay: Arc<Overlay>,
    endpoint: QuicEndpoint,
    config: GcConfig,
}

impl Gc {
    pub fn new(
        metainfo: Arc<Metainfo>,
        overlay: Arc<Overlay>,
        endpoint: QuicEndpoint,
        config: GcConfig,
    ) -> Self {
        Self {
            metainfo,
            overlay,
            endpoint,
            config,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.config.interval_secs.max(0.1))
    }

    /// One cycle over every online node.
    pub async fn run_once(&self) -> GcStats {
        let cutoff = now_ms() - (self.config.margin_secs.max(0.0) * 1000.0) as i64;
        let now = now_ms();
        let online: Vec<_> = self
            .overlay
            .list()
            .into_iter()
            .filter(|n| self.overlay.is_online(n, now))
            .collect();
        let ids: HashSet<NodeId> = online.iter().map(|n| n.id).collect();
        let metainfo = self.metainfo.clone();
        let fpr = self.config.false_positive_rate;
        // Two passes over the placements, a page at a time: count each
        // online node's pieces to size its filter, then fill the filters.
        // Memory is the filters' bits, not a list of every piece. A piece
        // placed between the passes lands in a filter sized without it,
        // which only raises its false positives (keeps more), never drops
        // a live piece.
        let built = tokio::task::spawn_blocking(move || {
            let mut counts: HashMap<NodeId, usize> = HashMap::new();
            metainfo.for_each_placement(|node, _| {
                if ids.contains(&node) {
                    *counts.entry(node).or_insert(0) += 1;
                }
            })?;
            let mut filters: HashMap<NodeId, BloomFilter> = ids
                .iter()
                .map(|id| {
                    let n = counts.get(id).copied().unwrap_or(0);
                    (*id, BloomFilter::new(n, fpr))
                })
                .collect();
            metainfo.for_each_placement(|node, piece| {
                if let Some(f) = filters.get_mut(&node) {
                    f.insert(&piece);
                }
            })?;
            Ok::<_, crate::metainfo::MetainfoError>(filters)
        })
        .await;
        let mut filters = match built {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "gc: cannot read placements");
                return GcStats::default();
            }
            Err(e) => {
                tracing::warn!(error = %e, "gc: placement scan panicked");
                return GcStats::default();
            }
        };
        let mut stats = GcStats::default();
        for node in online {
            let Some(filter) = filters.remove(&node.id) else {
                continue;
            };
            stats.nodes += 1;
            match self.retain(&node.id, &node.address, &filter, cutoff).await {
                Ok(r) => {
                    stats.trashed += r.trashed;
                    stats.trashed_bytes += r.trashed_bytes;
                }
                Err(e) => {
                    stats.failed += 1;
                    tracing::info!(node = %node.id.short(), error = %e, "gc: retain failed");
                }
            }
        }
        metrics::counter!("loam_satellite_gc_cycles_total").increment(1);
        metrics::counter!("loam_satellite_gc_pieces_trashed_total").increment(stats.trashed);
        stats
    }

    async fn retain(
        &self,
        id: &NodeId,
        address: &str,
        filter: &BloomFilter,
        cutoff: i64,
    ) -> Result<pb::RetainResponse, String> {
        let addr = address
            .parse()
            .map_err(|_| format!("bad address {address}"))?;
        let conn = tokio::time::timeout(Duration::from_secs(5), self.endpoint.dial(*id, addr))
            .await
            .map_err(|_| "connecting timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let mut writer = FrameWriter::new(send);
            let bits = filter.bits();
            writer
                .message(&pb::PieceRequest {
                    request: Some(pb::piece_request::Request::Retain(pb::RetainRequest {
                        hash_count: filter.hashes(),
                        seed: filter.seed().to_vec().into(),
                        bits_len: bits.len() as u64,
                        created_before_unix_ms: cutoff,
                    })),
                })
                .await
                .map_err(|e| e.to_string())?;
            for chunk in bits.chunks(MAX_DATA_FRAME_LEN) {
                writer
                    .data(bytes::Bytes::copy_from_slice(chunk))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            writer.finish().map_err(|e| e.to_string())?;
            let resp: pb::RetainResponse = FrameReader::new(recv)
                .message()
                .await
                .map_err(|e| e.to_string())?;
            match &resp.error {
                Some(e) => Err(e.message.clone()),
                None => Ok(resp),
            }
        };
        let r = tokio::time::timeout(Duration::from_secs(300), exchange)
            .await
            .map_err(|_| "node did not answer".to_string())?;
        if r.is_err() {
            self.endpoint.forget(id);
        }
        r
    }
}
