//! The satellite's metadata store.
//!
//! Tables are column families of a small key-value trait, [`Kv`], so the
//! same typed tables run on embedded RocksDB (the default) or in memory
//! (tests), and a distributed SQL backend can implement the trait for a
//! satellite that outgrows one machine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::RwLock;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};

/// Every table the satellite keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    Nodes,
    Projects,
    ApiKeys,
    Buckets,
    Objects,
    PendingObjects,
    PendingSegments,
    Segments,
    /// Compute jobs by id.
    Jobs,
    /// The current weights of each job (little-endian f32), by job id.
    JobWeights,
    /// Per-node compute accounting (work units, verification failures).
    ComputeNodes,
    /// Per-node audit reputation.
    Reputation,
    /// Settled bytes by node, window and action.
    BandwidthRollups,
    /// Settled bytes by project, window, bucket and action.
    BucketBandwidth,
    /// Windows each node has settled (pruned when too old to settle).
    SettledWindows,
    /// Stored byte-milliseconds by node and tally.
    StorageRollups,
    /// Stored byte-milliseconds by project, tally and bucket.
    BucketStorage,
    /// Accepted compute work (micro work units) by node and window.
    ComputeRollups,
    /// Download bytes allowed by project and month (egress limits).
    ProjectEgress,
    /// Per-node payout ledgers: node, sequence number -> signed entry.
    Ledger,
    /// Paystubs by period and node.
    Paystubs,
    /// Single values: the last tally time.
    Meta,
    /// How many objects share a stream's segments (server-side copies),
    /// by stream id; absent means one.
    StreamRefs,
    /// Caveated API keys' secrets and records, by head.
    KeySecrets,
    /// Revoked API key tails.
    Revocations,
    /// Marketplace listings by id.
    Listings,
    /// Project ids by project name (the index `find_project` reads).
    ProjectNames,
    /// A project's jobs: project id, job id -> nothing.
    ProjectJobs,
    /// A project's API keys: project id, 1, head (caveated keys) or
    /// project id, 0, key (keys from before caveats) -> nothing.
    ProjectKeys,
    /// A project's uploads in progress: project id, stream id -> nothing.
    ProjectPending,
    /// Charges to projects for their jobs: project, time, job, round.
    Charges,
    /// Data fees earned by owners: owner project, time, job, listing.
    Earnings,
}

impl Table {
    const ALL: [Table; 32] = [
        Table::Nodes,
        Table::Projects,
        Table::ApiKeys,
        Table::Buckets,
        Table::Objects,
        Table::PendingObjects,
        Table::PendingSegments,
        Table::Segments,
        Table::Jobs,
        Table::JobWeights,
        Table::ComputeNodes,
        Table::Reputation,
        Table::BandwidthRollups,
        Table::BucketBandwidth,
        Table::SettledWindows,
        Table::StorageRollups,
        Table::BucketStorage,
        Table::ComputeRollups,
        Table::ProjectEgress,
        Table::Ledger,
        Table::Paystubs,
        Table::Meta,
        Table::StreamRefs,
        Table::KeySecrets,
        Table::Revocations,
        Table::Listings,
        Table::Charges,
        Table::Earnings,
        Table::ProjectNames,
        Table::ProjectJobs,
        Table::ProjectKeys,
        Table::ProjectPending,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Nodes => "nodes",
            Table::Projects => "projects",
            Table::ApiKeys => "api_keys",
            Table::Buckets => "buckets",
            Table::Objects => "objects",
            Table::PendingObjects => "pending_objects",
            Table::PendingSegments => "pending_segments",
            Table::Segments => "segments",
            Table::Jobs => "jobs",
            Table::JobWeights => "job_weights",
            Table::ComputeNodes => "compute_nodes",
            Table::Reputation => "reputation",
            Table::BandwidthRollups => "bandwidth_rollups",
            Table::BucketBandwidth => "bucket_bandwidth",
            Table::SettledWindows => "settled_windows",
            Table::StorageRollups => "storage_rollups",
            Table::BucketStorage => "bucket_storage",
            Table::ComputeRollups => "compute_rollups",
            Table::ProjectEgress => "project_egress",
            Table::Ledger => "ledger",
            Table::Paystubs => "paystubs",
            Table::Meta => "meta",
            Table::StreamRefs => "stream_refs",
            Table::KeySecrets => "api_key_secrets",
            Table::Revocations => "api_key_revocations",
            Table::Listings => "listings",
            Table::Charges => "charges",
            Table::Earnings => "earnings",
            Table::ProjectNames => "project_names",
            Table::ProjectJobs => "project_jobs",
            Table::ProjectKeys => "project_keys",
            Table::ProjectPending => "project_pending",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("corrupt {0} record")]
    Corrupt(&'static str),
    #[error("{0} would overflow; refused")]
    Overflow(&'static str),
}

/// Key-value pairs returned by a scan.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One change in an atomic batch.
pub enum Op {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
}

/// Pairs a paged walk reads at a time.
pub const PAGE: usize = 1000;

/// Calls `f` with every pair of `table` under `prefix`, [`PAGE`] pairs at a
/// time, so that memory stays bounded whatever the table's size.
pub fn for_each_page(
    kv: &dyn Kv,
    table: Table,
    prefix: &[u8],
    mut f: impl FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), DbError>,
) -> Result<(), DbError> {
    let mut start: Vec<u8> = Vec::new();
    loop {
        let page = kv.scan(table, prefix, &start, PAGE)?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        // The next page starts just after the last key.
        start.clone_from(last);
        start.push(0);
        let full = page.len() == PAGE;
        f(page)?;
        if !full {
            return Ok(());
        }
    }
}

/// Remembers in this process that an index [`index_once`] builds is there,
/// so that only its first use asks the database.
#[derive(Debug, Default)]
pub struct Built(std::sync::OnceLock<()>);

impl Built {
    /// Runs `build` unless it already succeeded in this process.
    pub fn ensure<E>(&self, build: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        if self.0.get().is_none() {
            build()?;
            let _ = self.0.set(());
        }
        Ok(())
    }
}

/// Builds an index over `table` once per database (one created before the
/// index existed): `entry` makes the index write for each pair; a marker in
/// [`Table::Meta`] records that it is done. New records write their index
/// entries themselves, in the same batch.
pub fn index_once(
    kv: &dyn Kv,
    marker: &str,
    table: Table,
    entry: impl Fn(&[u8], &[u8]) -> Result<Option<Op>, DbError>,
) -> Result<(), DbError> {
    let marker = format!("index:{marker}");
    if kv.get(Table::Meta, marker.as_bytes())?.is_some() {
        return Ok(());
    }
    for_each_page(kv, table, b"", |page| {
        let mut ops = Vec::with_capacity(page.len());
        for (k, v) in &page {
            ops.extend(entry(k, v)?);
        }
        kv.write(ops)
    })?;
    kv.put(Table::Meta, marker.into_bytes(), vec![1])
}

/// The storage boundary of the satellite.
pub trait Kv: Send + Sync + 'static {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, DbError>;
    /// Applies every op or none.
    fn write(&self, ops: Vec<Op>) -> Result<(), DbError>;
    /// Up to `limit` pairs with keys starting with `prefix` and `>= start`
    /// (`start` empty: from the prefix), in key order.
    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Pairs, DbError>;

    fn put(&self, table: Table, key: Vec<u8>, value: Vec<u8>) -> Result<(), DbError> {
        self.write(vec![Op::Put(table, key, value)])
    }
}

/// RocksDB with one column family per table.
pub struct RocksKv {
    db: DB,
    /// Whether every write is synced to disk before it returns.
    sync: bool,
}

impl RocksKv {
    /// Opens the database with every write synced.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Self::open_with(path, true)
    }

    /// Opens the database; with `sync`, a write returns only once it is on
    /// disk (survives power loss); without, once it is in the operating
    /// system's hands (survives a crash of the process).
    pub fn open_with(path: &Path, sync: bool) -> Result<Self, DbError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = Table::ALL
            .iter()
            .map(|t| ColumnFamilyDescriptor::new(t.name(), Options::default()));
        Ok(Self {
            db: DB::open_cf_descriptors(&opts, path, cfs)?,
            sync,
        })
    }

    fn cf(&self, t: Table) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(t.name())
            .expect("every table is created at open")
    }
}

impl Kv for RocksKv {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self.db.get_cf(self.cf(table), key)?)
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), DbError> {
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                Op::Put(t, k, v) => batch.put_cf(self.cf(t), k, v),
                Op::Delete(t, k) => batch.delete_cf(self.cf(t), k),
            }
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(self.sync);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Pairs, DbError> {
        let from = if start > prefix { start } else { prefix };
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(table), IteratorMode::From(from, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

type MemTables = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// In-memory tables for tests.
#[derive(Default)]
pub struct MemKv {
    tables: RwLock<MemTables>,
}

impl Kv for MemKv {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self
            .tables
            .read()
            .expect("lock")
            .get(&(table, key.to_vec()))
            .cloned())
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), DbError> {
        let mut t = self.tables.write().expect("lock");
        for op in ops {
            match op {
                Op::Put(tb, k, v) => {
                    t.insert((tb, k), v);
                }
                Op::Delete(tb, k) => {
                    t.remove(&(tb, k));
                }
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Pairs, DbError> {
        let from = if start > prefix { start } else { prefix };
        let t = self.tables.read().expect("lock");
        Ok(t.range((table, from.to_vec())..)
            .take_while(|((tb, k), _)| *tb == table && k.starts_with(prefix))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One suite for every backend.
    fn exercise(kv: &dyn Kv) {
        kv.put(Table::Objects, b"p/a".to_vec(), b"1".to_vec())
            .expect("put");
        kv.put(Table::Objects, b"p/b".to_vec(), b"2".to_vec())
            .expect("put");
        kv.put(Table::Objects, b"q/a".to_vec(), b"3".to_vec())
            .expect("put");
        kv.put(Table::Buckets, b"p/z".to_vec(), b"4".to_vec())
            .expect("put");
        let all = kv.scan(Table::Objects, b"p/", b"", 10).expect("scan");
        assert_eq!(all.len(), 2);
        let after = kv.scan(Table::Objects, b"p/", b"p/b", 10).expect("scan");
        assert_eq!(after, vec![(b"p/b".to_vec(), b"2".to_vec())]);
        assert_eq!(kv.scan(Table::Objects, b"", b"", 1).expect("scan").len(), 1);
        kv.write(vec![
            Op::Delete(Table::Objects, b"p/a".to_vec()),
            Op::Put(Table::Objects, b"p/c".to_vec(), b"5".to_vec()),
        ])
        .expect("batch");
        assert_eq!(kv.get(Table::Objects, b"p/a").expect("get"), None);
        assert_eq!(
            kv.get(Table::Objects, b"p/c").expect("get"),
            Some(b"5".to_vec())
        );
        assert_eq!(kv.get(Table::Buckets, b"p/a").expect("get"), None);

        // Paged walks: every key under the prefix once, in order, across
        // page boundaries (keys that extend others included), nothing else.
        let mut ops = Vec::new();
        for i in 0..2 * PAGE + 7 {
            ops.push(Op::Put(
                Table::Nodes,
                format!("n/{i:05}").into_bytes(),
                vec![],
            ));
        }
        ops.push(Op::Put(Table::Nodes, b"n/00010x".to_vec(), vec![]));
        ops.push(Op::Put(Table::Nodes, b"o/1".to_vec(), vec![]));
        kv.write(ops).expect("batch");
        let mut seen = Vec::new();
        for_each_page(kv, Table::Nodes, b"n/", |page| {
            assert!(page.len() <= PAGE);
            seen.extend(page.into_iter().map(|(k, _)| k));
            Ok(())
        })
        .expect("walk");
        assert_eq!(seen.len(), 2 * PAGE + 8);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert!(seen.iter().all(|k| k.starts_with(b"n/")));

        // An index is built once: a second call writes nothing.
        let built = |kv: &dyn Kv| {
            index_once(kv, "test", Table::Nodes, |k, _| {
                Ok(Some(Op::Put(Table::Buckets, k.to_vec(), vec![1])))
            })
        };
        built(kv).expect("index");
        assert_eq!(
            kv.scan(Table::Buckets, b"n/", b"", usize::MAX)
                .expect("scan")
                .len(),
            2 * PAGE + 8
        );
        kv.write(vec![Op::Delete(Table::Buckets, b"n/00000".to_vec())])
            .expect("delete");
        built(kv).expect("index again");
        assert_eq!(kv.get(Table::Buckets, b"n/00000").expect("get"), None);
    }

    #[test]
    fn memory_backend() {
        exercise(&MemKv::default());
    }

    #[test]
    fn rocksdb_backend() {
        let dir = tempfile::tempdir().expect("tmp");
        exercise(&RocksKv::open(dir.path()).expect("open"));
    }
}
