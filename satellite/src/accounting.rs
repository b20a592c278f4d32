//! Usage accounting: the storage tally and compute work rollups.
//!
//! The tally chore walks the segment table on a schedule and, for the time
//! since the previous tally, adds each node's stored bytes × elapsed time
//! (byte-milliseconds, integers) to its storage rollup, and each bucket's
//! stored bytes × elapsed time to the bucket's. Bandwidth comes from
//! settled orders ([`crate::orders`]); compute from the work units the
//! scheduler accepted ([`add_work`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use loam_common::NodeId;
use loam_common::orders::now_ms;
use serde::{Deserialize, Serialize};

use crate::db::{DbError, Kv};
use crate::metainfo::{Metainfo, ProjectId};
use crate::satellitedb::accounting::AccountingStore;
use crate::satellitedb::metabase::ObjectScope;

/// The `[accounting]` table of the satellite's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AccountingConfig {
    /// Seconds between storage tallies. Default 3600.
    pub tally_interval_secs: f64,
}

impl Default for AccountingConfig {
    fn default() -> Self {
        Self {
            tally_interval_secs: 3600.0,
        }
    }
}

/// What one tally recorded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TallyStats {
    pub nodes: usize,
    pub buckets: usize,
    /// Milliseconds since the previous tally (0 on the first).
    pub elapsed_ms: i64,
}

pub struct Accounting {
    store: AccountingStore,
    metainfo: Arc<Metainfo>,
    config: AccountingConfig,
}

impl Accounting {
    pub fn new(kv: Arc<dyn Kv>, metainfo: Arc<Metainfo>, config: AccountingConfig) -> Self {
        Self {
            store: AccountingStore::new(kv),
            metainfo,
            config,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.config.tally_interval_secs.max(0.1))
    }

    /// One tally at `now`: stored bytes × time since the last tally.
    pub fn tally(&self, now: i64) -> Result<TallyStats, DbError> {
        let read = self.store.last_tally()?;
        let Some(last) = read.filter(|l| *l < now) else {
            self.store
                .record_tally(read, now, &HashMap::new(), &HashMap::new())?;
            return Ok(TallyStats::default());
        };
        let elapsed = (now - last) as u128;
        let mut per_node: HashMap<NodeId, u128> = HashMap::new();
        self.metainfo
            .for_each_segment(|_, seg| {
                let size = seg.meta.as_ref().map_or(0, |m| m.piece_size.max(0) as u128);
                for p in &seg.pieces {
                    if let Ok(node) = NodeId::try_from(p.node_id.as_ref()) {
                        *per_node.entry(node).or_default() += size;
                    }
                }
            })
            .map_err(|e| match e {
                crate::metainfo::MetainfoError::Db(d) => d,
                _ => DbError::Corrupt("segment"),
            })?;
        let mut per_bucket: HashMap<(ProjectId, String), u128> = HashMap::new();
        self.metainfo
            .metabase()
            .for_each_object(ObjectScope::All, |at, rec| {
                *per_bucket.entry((at.project, at.bucket)).or_default() +=
                    u128::from(crate::metainfo::stored_size(&rec));
                Ok::<_, DbError>(std::ops::ControlFlow::Continue(()))
            })?;
        let stats = TallyStats {
            nodes: per_node.len(),
            buckets: per_bucket.len(),
            elapsed_ms: now - last,
        };
        let by_time = |bytes: u128, what| bytes.checked_mul(elapsed).ok_or(DbError::Overflow(what));
        let per_node = per_node
            .into_iter()
            .map(|(node, bytes)| Ok((node, by_time(bytes, "storage tally")?)))
            .collect::<Result<_, DbError>>()?;
        let per_bucket = per_bucket
            .into_iter()
            .map(|(bucket, bytes)| Ok((bucket, by_time(bytes, "bucket tally")?)))
            .collect::<Result<_, DbError>>()?;
        self.store
            .record_tally(Some(last), now, &per_node, &per_bucket)?;
        metrics::counter!("loam_satellite_tallies_total").increment(1);
        Ok(stats)
    }

    /// Runs a tally now and prunes settlement markers; for the chore.
    pub fn run_once(&self) {
        let now = now_ms();
        if let Err(e) = self.tally(now) {
            tracing::warn!(error = %e, "storage tally failed");
        }
        if let Err(e) = self.metainfo.orders().prune_windows(now) {
            tracing::warn!(error = %e, "cannot prune settled windows");
        }
    }
}
