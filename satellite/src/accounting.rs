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

use crate::db::{DbError, Kv, Op, Table};
use crate::metainfo::{Metainfo, ProjectId};
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

const LAST_TALLY: &[u8] = b"last_tally_unix_ms";

fn u128_value(v: &[u8]) -> u128 {
    <[u8; 16]>::try_from(v).map_or(0, u128::from_be_bytes)
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
    kv: Arc<dyn Kv>,
    metainfo: Arc<Metainfo>,
    config: AccountingConfig,
}

impl Accounting {
    pub fn new(kv: Arc<dyn Kv>, metainfo: Arc<Metainfo>, config: AccountingConfig) -> Self {
        Self {
            kv,
            metainfo,
            config,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.config.tally_interval_secs.max(0.1))
    }

    /// One tally at `now`: stored bytes × time since the last tally.
    pub fn tally(&self, now: i64) -> Result<TallyStats, DbError> {
        let last = self
            .kv
            .get(Table::Meta, LAST_TALLY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(i64::from_be_bytes);
        let mut ops = vec![Op::Put(
            Table::Meta,
            LAST_TALLY.to_vec(),
            now.to_be_bytes().to_vec(),
        )];
        let Some(last) = last.filter(|l| *l < now) else {
            self.kv.write(ops)?;
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
        for (node, bytes) in per_node {
            let mut key = node.as_bytes().to_vec();
            key.extend_from_slice(&now.to_be_bytes());
            let byte_ms = bytes
                .checked_mul(elapsed)
                .ok_or(DbError::Overflow("storage tally"))?;
            ops.push(Op::Put(
                Table::StorageRollups,
                key,
                byte_ms.to_be_bytes().to_vec(),
            ));
        }
        for ((project, bucket), bytes) in per_bucket {
            let mut key = project.to_vec();
            key.extend_from_slice(&now.to_be_bytes());
            key.extend_from_slice(bucket.as_bytes());
            let byte_ms = bytes
                .checked_mul(elapsed)
                .ok_or(DbError::Overflow("bucket tally"))?;
            ops.push(Op::Put(
                Table::BucketStorage,
                key,
                byte_ms.to_be_bytes().to_vec(),
            ));
        }
        self.kv.write(ops)?;
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

/// Byte-milliseconds `node` stored in tallies taken in `[from, to)`.
pub fn node_byte_ms(kv: &Arc<dyn Kv>, node: &NodeId, from: i64, to: i64) -> Result<u128, DbError> {
    let mut start = node.as_bytes().to_vec();
    start.extend_from_slice(&from.max(0).to_be_bytes());
    let mut total = 0;
    for (k, v) in kv.scan(Table::StorageRollups, node.as_bytes(), &start, usize::MAX)? {
        let Some(t) = k.get(32..40).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            continue;
        };
        if i64::from_be_bytes(t) >= to {
            break;
        }
        total = u128::checked_add(total, u128_value(&v)).ok_or(DbError::Overflow("storage"))?;
    }
    Ok(total)
}

/// Byte-milliseconds per bucket of `project` in tallies taken in `[from, to)`.
pub fn bucket_byte_ms(
    kv: &Arc<dyn Kv>,
    project: &ProjectId,
    from: i64,
    to: i64,
) -> Result<HashMap<String, u128>, DbError> {
    let mut start = project.to_vec();
    start.extend_from_slice(&from.max(0).to_be_bytes());
    let mut out: HashMap<String, u128> = HashMap::new();
    for (k, v) in kv.scan(Table::BucketStorage, project, &start, usize::MAX)? {
        let Some(t) = k.get(16..24).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            continue;
        };
        if i64::from_be_bytes(t) >= to {
            break;
        }
        let bucket = String::from_utf8_lossy(&k[24..]).into_owned();
        let e = out.entry(bucket).or_default();
        *e = e
            .checked_add(u128_value(&v))
            .ok_or(DbError::Overflow("bucket storage"))?;
    }
    Ok(out)
}

/// Records `micro_units` (work units × 10⁶) accepted from `node` at `t`.
pub fn add_work(kv: &Arc<dyn Kv>, node: &NodeId, t: i64, micro_units: u64) -> Result<(), DbError> {
    let mut key = node.as_bytes().to_vec();
    key.extend_from_slice(&t.to_be_bytes());
    crate::db::transact(kv.as_ref(), |txn| {
        let old = txn
            .get(Table::ComputeRollups, &key)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        let new = old
            .checked_add(micro_units)
            .ok_or(DbError::Overflow("compute rollup"))?;
        txn.put(
            Table::ComputeRollups,
            key.clone(),
            new.to_be_bytes().to_vec(),
        );
        Ok(())
    })
}

/// Micro work units accepted from `node` in `[from, to)`.
pub fn node_work(kv: &Arc<dyn Kv>, node: &NodeId, from: i64, to: i64) -> Result<u64, DbError> {
    let mut start = node.as_bytes().to_vec();
    start.extend_from_slice(&from.max(0).to_be_bytes());
    let mut total = 0;
    for (k, v) in kv.scan(Table::ComputeRollups, node.as_bytes(), &start, usize::MAX)? {
        let Some(t) = k.get(32..40).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            continue;
        };
        if i64::from_be_bytes(t) >= to {
            break;
        }
        let units = <[u8; 8]>::try_from(v.as_slice()).map_or(0, u64::from_be_bytes);
        total = u64::checked_add(total, units).ok_or(DbError::Overflow("compute work"))?;
    }
    Ok(total)
}
