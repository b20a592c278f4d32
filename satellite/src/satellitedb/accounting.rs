//! Accounting: settled bandwidth by node and by bucket, the windows each
//! node settled, storage tallies by node and by bucket, and accepted
//! compute work by node.
//!
//! Every figure that decides money is added in a transaction with checked
//! arithmetic: a window sent to two processes at once is counted once, an
//! overflow refuses the write whole. Reads over a period walk only the
//! period's rows, a page at a time. Layout in the backend (times
//! big-endian, so a node's or project's rows are in time order):
//! `bandwidth_rollups` node, window, action → u64; `bucket_bandwidth`
//! project, window, bucket, action → u64; `settled_windows` node, window →
//! protobuf; `storage_rollups` node, tally time → u128 byte-ms;
//! `bucket_storage` project, tally time, bucket → u128; `compute_rollups`
//! node, time → u64 micro work units; the last tally time in `meta`.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use loam_common::orders::PieceAction;
use loam_common::{NodeId, pb};
use prost::Message;

use super::{delete_where, walk};
use crate::db::{DbError, Kv, Op, Table, Txn, transact};
use crate::metainfo::ProjectId;

const LAST_TALLY: &[u8] = b"last_tally_unix_ms";

fn u64_value(v: &[u8]) -> u64 {
    <[u8; 8]>::try_from(v).map_or(0, u64::from_be_bytes)
}

fn u128_value(v: &[u8]) -> u128 {
    <[u8; 16]>::try_from(v).map_or(0, u128::from_be_bytes)
}

fn time_at(k: &[u8], at: usize) -> Option<i64> {
    k.get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_be_bytes)
}

fn window_key(node: &NodeId, window: i64) -> Vec<u8> {
    [node.as_bytes().as_slice(), &window.to_be_bytes()].concat()
}

fn rollup_key(node: &NodeId, window: i64, action: PieceAction) -> Vec<u8> {
    let mut k = window_key(node, window);
    k.push(action.code() as u8);
    k
}

fn bucket_rollup_key(
    project: &ProjectId,
    window: i64,
    bucket: &str,
    action: PieceAction,
) -> Vec<u8> {
    [
        project.as_slice(),
        &window.to_be_bytes(),
        bucket.as_bytes(),
        &[action.code() as u8],
    ]
    .concat()
}

/// Walks the rows of `table` under `owner` whose time (right after the
/// owner) is in `[from, to)`, in time order, a page at a time.
fn walk_period(
    kv: &dyn Kv,
    table: Table,
    owner: &[u8],
    from: i64,
    to: i64,
    mut f: impl FnMut(i64, &[u8], Vec<u8>) -> Result<(), DbError>,
) -> Result<(), DbError> {
    let start = [owner, &from.max(0).to_be_bytes()].concat();
    walk(kv, table, owner, &start, |k, v| {
        let Some(t) = time_at(&k, owner.len()) else {
            return Ok(ControlFlow::Continue(()));
        };
        if t >= to {
            return Ok(ControlFlow::Break(()));
        }
        f(t, &k[owner.len() + 8..], v)?;
        Ok(ControlFlow::Continue(()))
    })
}

/// Bytes one settlement adds to a bucket's rollups.
pub struct BucketBytes<'a> {
    pub project: &'a ProjectId,
    pub bucket: &'a str,
    pub action: PieceAction,
    pub bytes: u64,
}

/// Accounting over one of the satellite's databases.
pub struct AccountingStore {
    kv: Arc<dyn Kv>,
}

impl AccountingStore {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self { kv }
    }

    // --------------------------------------------------------- bandwidth

    /// Whether `node` settled the window starting at `window`.
    pub fn window_settled(&self, node: &NodeId, window: i64) -> Result<bool, DbError> {
        Ok(self
            .kv
            .get(Table::SettledWindows, &window_key(node, window))?
            .is_some())
    }

    /// Adds a window's settled bytes to the node's and the buckets'
    /// rollups and marks the window settled, in one transaction; `false`
    /// (and nothing written) when the window was settled already, by this
    /// process or another.
    pub fn settle_window(
        &self,
        node: &NodeId,
        window: i64,
        by_action: &[(PieceAction, u64)],
        by_bucket: &[BucketBytes<'_>],
        marker: &pb::SettledWindow,
    ) -> Result<bool, DbError> {
        let overflow = || DbError::Overflow("settled bandwidth");
        let marker_key = window_key(node, window);
        transact(self.kv.as_ref(), |txn| {
            if txn.get(Table::SettledWindows, &marker_key)?.is_some() {
                return Ok(false);
            }
            for &(action, bytes) in by_action.iter().filter(|(_, b)| *b > 0) {
                let key = rollup_key(node, window, action);
                let old = txn
                    .get(Table::BandwidthRollups, &key)?
                    .map_or(0, |v| u64_value(&v));
                let new = old.checked_add(bytes).ok_or_else(overflow)?;
                txn.put(Table::BandwidthRollups, key, new.to_be_bytes().to_vec());
            }
            for b in by_bucket {
                let key = bucket_rollup_key(b.project, window, b.bucket, b.action);
                let old = txn
                    .get(Table::BucketBandwidth, &key)?
                    .map_or(0, |v| u64_value(&v));
                let new = old.checked_add(b.bytes).ok_or_else(overflow)?;
                txn.put(Table::BucketBandwidth, key, new.to_be_bytes().to_vec());
            }
            txn.put(
                Table::SettledWindows,
                marker_key.clone(),
                marker.encode_to_vec(),
            );
            Ok(true)
        })
    }

    /// Calls `f` with each (window, action, bytes) settled by `node` in
    /// windows starting in `[from, to)`.
    pub fn for_each_node_bandwidth(
        &self,
        node: &NodeId,
        from: i64,
        to: i64,
        mut f: impl FnMut(i64, PieceAction, u64) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        walk_period(
            &*self.kv,
            Table::BandwidthRollups,
            node.as_bytes(),
            from,
            to,
            |window, rest, v| match rest {
                [code] => match PieceAction::try_from(i32::from(*code)) {
                    Ok(action) => f(window, action, u64_value(&v)),
                    Err(_) => Ok(()),
                },
                _ => Ok(()),
            },
        )
    }

    /// Calls `f` with each (window, bucket, action, bytes) of `project` in
    /// windows starting in `[from, to)`.
    pub fn for_each_bucket_bandwidth(
        &self,
        project: &ProjectId,
        from: i64,
        to: i64,
        mut f: impl FnMut(i64, &str, PieceAction, u64) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        walk_period(
            &*self.kv,
            Table::BucketBandwidth,
            project,
            from,
            to,
            |window, rest, v| {
                let Some((code, bucket)) = rest.split_last() else {
                    return Ok(());
                };
                let Ok(action) = PieceAction::try_from(i32::from(*code)) else {
                    return Ok(());
                };
                f(
                    window,
                    &String::from_utf8_lossy(bucket),
                    action,
                    u64_value(&v),
                )
            },
        )
    }

    /// Forgets the settled-window markers of windows starting before
    /// `before`, deleting a page at a time behind the walk. Returns how
    /// many.
    pub fn prune_settled_windows(&self, before: i64) -> Result<usize, DbError> {
        delete_where(&*self.kv, Table::SettledWindows, b"", |k, _| {
            k.len() == 40 && time_at(k, 32).is_some_and(|t| t < before)
        })
    }

    // ----------------------------------------------------------- storage

    /// When the last tally was taken.
    pub fn last_tally(&self) -> Result<Option<i64>, DbError> {
        Ok(self
            .kv
            .get(Table::Meta, LAST_TALLY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(i64::from_be_bytes))
    }

    /// Records a tally taken at `now` over the one taken at `last` (as
    /// [`Self::last_tally`] read it): the byte-milliseconds per node and per
    /// bucket. Refused ([`DbError::Conflict`]) when another tally was
    /// recorded since `last` was read, so no period is counted twice.
    pub fn record_tally(
        &self,
        last: Option<i64>,
        now: i64,
        per_node: &HashMap<NodeId, u128>,
        per_bucket: &HashMap<(ProjectId, String), u128>,
    ) -> Result<(), DbError> {
        let mut ops = vec![
            Op::Expect(
                Table::Meta,
                LAST_TALLY.to_vec(),
                last.map(|l| l.to_be_bytes().to_vec()),
            ),
            Op::Put(Table::Meta, LAST_TALLY.to_vec(), now.to_be_bytes().to_vec()),
        ];
        for (node, byte_ms) in per_node {
            ops.push(Op::Put(
                Table::StorageRollups,
                window_key(node, now),
                byte_ms.to_be_bytes().to_vec(),
            ));
        }
        for ((project, bucket), byte_ms) in per_bucket {
            ops.push(Op::Put(
                Table::BucketStorage,
                [project.as_slice(), &now.to_be_bytes(), bucket.as_bytes()].concat(),
                byte_ms.to_be_bytes().to_vec(),
            ));
        }
        self.kv.write(ops)
    }

    /// The sum of the values (read by `value`) of `owner`'s rows of `table`
    /// in `[from, to)`, checked.
    fn sum_period(
        &self,
        table: Table,
        owner: &[u8],
        from: i64,
        to: i64,
        value: fn(&[u8]) -> u128,
        what: &'static str,
    ) -> Result<u128, DbError> {
        let mut total = 0u128;
        walk_period(&*self.kv, table, owner, from, to, |_, _, v| {
            total = total
                .checked_add(value(&v))
                .ok_or(DbError::Overflow(what))?;
            Ok(())
        })?;
        Ok(total)
    }

    /// Byte-milliseconds `node` stored in tallies taken in `[from, to)`.
    pub fn node_byte_ms(&self, node: &NodeId, from: i64, to: i64) -> Result<u128, DbError> {
        self.sum_period(
            Table::StorageRollups,
            node.as_bytes(),
            from,
            to,
            u128_value,
            "storage",
        )
    }

    /// Byte-milliseconds per bucket of `project` in tallies taken in
    /// `[from, to)`.
    pub fn bucket_byte_ms(
        &self,
        project: &ProjectId,
        from: i64,
        to: i64,
    ) -> Result<HashMap<String, u128>, DbError> {
        let mut out: HashMap<String, u128> = HashMap::new();
        walk_period(
            &*self.kv,
            Table::BucketStorage,
            project,
            from,
            to,
            |_, bucket, v| {
                let e = out
                    .entry(String::from_utf8_lossy(bucket).into_owned())
                    .or_default();
                *e = e
                    .checked_add(u128_value(&v))
                    .ok_or(DbError::Overflow("bucket storage"))?;
                Ok(())
            },
        )?;
        Ok(out)
    }

    // ----------------------------------------------------------- compute

    /// Adds `micro_units` (work units × 10⁶) accepted from `node` at `t`.
    pub fn add_work(&self, node: &NodeId, t: i64, micro_units: u64) -> Result<(), DbError> {
        transact(self.kv.as_ref(), |txn| {
            add_work_in(txn, node, t, micro_units)
        })
    }

    /// Micro work units accepted from `node` in `[from, to)`.
    pub fn node_work(&self, node: &NodeId, from: i64, to: i64) -> Result<u64, DbError> {
        let total = self.sum_period(
            Table::ComputeRollups,
            node.as_bytes(),
            from,
            to,
            |v| u128::from(u64_value(v)),
            "compute work",
        )?;
        u64::try_from(total).map_err(|_| DbError::Overflow("compute work"))
    }
}

/// [`AccountingStore::add_work`] inside the caller's transaction, so that
/// a credit lands with what it pays for (a job's round) or not at all.
pub(crate) fn add_work_in(
    txn: &mut Txn<'_>,
    node: &NodeId,
    t: i64,
    micro_units: u64,
) -> Result<(), DbError> {
    let key = window_key(node, t);
    let old = txn
        .get(Table::ComputeRollups, &key)?
        .map_or(0, |v| u64_value(&v));
    let new = old
        .checked_add(micro_units)
        .ok_or(DbError::Overflow("compute rollup"))?;
    txn.put(Table::ComputeRollups, key, new.to_be_bytes().to_vec());
    Ok(())
}

/// One suite for accounting on every backend; two stores on one database
/// stand for two satellite processes.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::satellitedb::backends;

    const NODE: NodeId = NodeId::from_bytes([4; 32]);
    const OTHER: NodeId = NodeId::from_bytes([5; 32]);
    const P: ProjectId = [1; 16];

    fn marker() -> pb::SettledWindow {
        pb::SettledWindow {
            settled_unix_ms: 1,
            orders: 2,
            bytes: 3,
        }
    }

    fn node_rows(s: &AccountingStore, node: &NodeId, from: i64, to: i64) -> Vec<(i64, u64)> {
        let mut out = Vec::new();
        s.for_each_node_bandwidth(node, from, to, |w, _, b| {
            out.push((w, b));
            Ok(())
        })
        .expect("walk");
        out
    }

    fn bandwidth(a: &AccountingStore, b: &AccountingStore) {
        let buckets = [
            BucketBytes {
                project: &P,
                bucket: "ab",
                action: PieceAction::Get,
                bytes: 10,
            },
            BucketBytes {
                project: &P,
                bucket: "abc",
                action: PieceAction::Get,
                bytes: 20,
            },
        ];
        for window in [100, 200, 300] {
            assert!(
                a.settle_window(
                    &NODE,
                    window,
                    &[(PieceAction::Get, 30)],
                    &buckets,
                    &marker()
                )
                .expect("settle")
            );
        }
        // The same window again, in either process: nothing more counted.
        assert!(
            !b.settle_window(&NODE, 200, &[(PieceAction::Get, 30)], &buckets, &marker())
                .expect("again")
        );
        assert!(b.window_settled(&NODE, 200).expect("read"));
        assert!(!b.window_settled(&OTHER, 200).expect("read"));
        assert_eq!(node_rows(b, &NODE, 150, 300), [(200, 30)], "[from, to)");
        assert_eq!(node_rows(b, &NODE, 0, i64::MAX).len(), 3);
        assert!(node_rows(b, &OTHER, 0, i64::MAX).is_empty());
        let mut per_bucket: HashMap<String, u64> = HashMap::new();
        b.for_each_bucket_bandwidth(&P, 0, 250, |_, bucket, action, bytes| {
            assert_eq!(action, PieceAction::Get);
            *per_bucket.entry(bucket.to_string()).or_default() += bytes;
            Ok(())
        })
        .expect("walk");
        assert_eq!(per_bucket["ab"], 20);
        assert_eq!(per_bucket["abc"], 40);

        // An overflow refuses the whole settlement: no marker, no rollup.
        let too_much = a.settle_window(&NODE, 100, &[(PieceAction::Get, u64::MAX)], &[], &marker());
        assert!(!too_much.expect("already settled: not even tried"));
        let too_much = a.settle_window(
            &OTHER,
            100,
            &[(PieceAction::Get, 1), (PieceAction::Put, 2)],
            &[BucketBytes {
                project: &P,
                bucket: "ab",
                action: PieceAction::Get,
                bytes: u64::MAX,
            }],
            &marker(),
        );
        assert!(matches!(too_much, Err(DbError::Overflow(_))));
        assert!(!a.window_settled(&OTHER, 100).expect("read"));
        assert!(node_rows(a, &OTHER, 0, i64::MAX).is_empty());

        // One window sent to both processes at once, many times: once.
        let settled = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for i in 0..8 {
                let store = if i % 2 == 0 { a } else { b };
                let settled = &settled;
                s.spawn(move || {
                    if store
                        .settle_window(&OTHER, 400, &[(PieceAction::Put, 7)], &[], &marker())
                        .expect("settle")
                    {
                        settled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(settled.into_inner(), 1);
        assert_eq!(node_rows(a, &OTHER, 0, i64::MAX), [(400, 7)]);

        assert_eq!(a.prune_settled_windows(250).expect("prune"), 2);
        assert!(!a.window_settled(&NODE, 200).expect("read"));
        assert!(a.window_settled(&NODE, 300).expect("read"));
        assert_eq!(node_rows(a, &NODE, 0, i64::MAX).len(), 3, "rollups stay");
    }

    fn tallies(a: &AccountingStore, b: &AccountingStore) {
        assert_eq!(a.last_tally().expect("read"), None);
        a.record_tally(None, 1000, &HashMap::new(), &HashMap::new())
            .expect("first");
        let per_node = HashMap::from([(NODE, 5u128), (OTHER, u128::MAX)]);
        let per_bucket = HashMap::from([((P, "ab".to_string()), 7u128)]);
        a.record_tally(Some(1000), 2000, &per_node, &per_bucket)
            .expect("tally");
        // Another process that read the same last tally cannot count the
        // same period again.
        assert!(matches!(
            b.record_tally(Some(1000), 2001, &per_node, &per_bucket),
            Err(DbError::Conflict)
        ));
        a.record_tally(Some(2000), 3000, &per_node, &per_bucket)
            .expect("tally");
        assert_eq!(b.last_tally().expect("read"), Some(3000));
        assert_eq!(b.node_byte_ms(&NODE, 0, i64::MAX).expect("sum"), 10);
        assert_eq!(b.node_byte_ms(&NODE, 2500, 3001).expect("sum"), 5);
        assert!(matches!(
            b.node_byte_ms(&OTHER, 0, i64::MAX),
            Err(DbError::Overflow(_))
        ));
        assert_eq!(b.bucket_byte_ms(&P, 0, 2001).expect("sum")["ab"], 7);
    }

    fn work(a: &AccountingStore, b: &AccountingStore) {
        // More rows than a page, walked up to the end of the period only.
        for t in 0..(crate::db::PAGE as i64 + 500) {
            a.add_work(&NODE, t, 1).expect("add");
        }
        std::thread::scope(|s| {
            for store in [a, b, a, b] {
                s.spawn(move || {
                    for _ in 0..20 {
                        store.add_work(&OTHER, 50, 3).expect("add");
                    }
                });
            }
        });
        assert_eq!(b.node_work(&OTHER, 0, i64::MAX).expect("sum"), 240);
        assert_eq!(b.node_work(&NODE, 0, i64::MAX).expect("sum"), 1500);
        assert_eq!(b.node_work(&NODE, 100, 1200).expect("sum"), 1100);
        a.add_work(&NODE, 5, u64::MAX)
            .expect_err("overflow refused");
        assert_eq!(b.node_work(&NODE, 5, 6).expect("sum"), 1);
    }

    fn conformance(connect: impl Fn() -> Arc<dyn Kv>) {
        let (a, b) = (
            AccountingStore::new(connect()),
            AccountingStore::new(connect()),
        );
        bandwidth(&a, &b);
        tallies(&a, &b);
        work(&a, &b);
    }

    #[test]
    fn memory_backend() {
        let kv = backends::memory();
        conformance(|| kv.clone());
    }

    #[test]
    fn rocksdb_backend() {
        backends::rocksdb(|kv| conformance(|| kv.clone()));
    }

    #[test]
    fn postgres_backend() {
        backends::postgres(|connect| conformance(connect));
    }
}
