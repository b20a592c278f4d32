//! The satellite's metadata store.
//!
//! Tables are column families of a small key-value trait, [`Kv`], so the
//! same typed tables run on embedded RocksDB (the default), in memory
//! (tests), or on PostgreSQL ([`crate::pg`]) shared by several satellite
//! processes. A batch may carry expectations ([`Op::Expect`]) and then
//! applies only if they all still hold: [`transact`] builds optimistic
//! read-modify-write transactions on that, which stay correct when another
//! process writes the same rows.

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
    pub(crate) const ALL: [Table; 32] = [
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

    pub(crate) fn name(self) -> &'static str {
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
    /// A batch's expectation no longer held: another writer got there
    /// first. [`transact`] retries on it.
    #[error("a concurrent write changed what this one read; try again")]
    Conflict,
    #[error("database: {0}")]
    Backend(String),
}

/// Key-value pairs returned by a scan.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One change in an atomic batch.
#[derive(Clone, Debug)]
pub enum Op {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
    /// The batch applies only if the key holds this value (`None`: is
    /// absent) when it commits; otherwise nothing is written and the write
    /// fails with [`DbError::Conflict`]. Checked against the state before
    /// the batch, whatever its position in it.
    Expect(Table, Vec<u8>, Option<Vec<u8>>),
}

/// A key's expected value (`None`: absent).
pub(crate) type Expectation = (Table, Vec<u8>, Option<Vec<u8>>);
/// Each key's final value after a batch (`None`: deleted).
pub(crate) type Changes = BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>;

/// Collapses a batch into its expectations and its final change per key
/// (a later op on a key wins; `None` deletes), for backends that apply
/// batches as sets.
pub(crate) fn split_batch(ops: Vec<Op>) -> (Vec<Expectation>, Changes) {
    let mut expects = Vec::new();
    let mut changes = BTreeMap::new();
    for op in ops {
        match op {
            Op::Put(t, k, v) => {
                changes.insert((t, k), Some(v));
            }
            Op::Delete(t, k) => {
                changes.insert((t, k), None);
            }
            Op::Expect(t, k, v) => expects.push((t, k, v)),
        }
    }
    (expects, changes)
}

/// An optimistic transaction: what it reads is recorded and expected to be
/// unchanged when its writes commit.
pub struct Txn<'a> {
    kv: &'a dyn Kv,
    expects: Vec<Op>,
    ops: Vec<Op>,
}

impl Txn<'_> {
    /// Reads a key; the commit fails (and [`transact`] retries) if another
    /// writer changes it first. Reads see the database, not this
    /// transaction's own writes.
    pub fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        let value = self.kv.get(table, key)?;
        self.expects
            .push(Op::Expect(table, key.to_vec(), value.clone()));
        Ok(value)
    }

    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put(table, key, value));
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push(Op::Delete(table, key));
    }

    /// Adds ready-made ops to the commit.
    pub fn extend(&mut self, ops: impl IntoIterator<Item = Op>) {
        self.ops.extend(ops);
    }
}

/// Tries a transaction this many times before giving up on contention.
pub(crate) const TRANSACT_ATTEMPTS: u32 = 32;

/// Pauses before try `attempt` (1, 2, ...) of a write that collided: a
/// random while whose bound doubles each time (to 50 ms), so that writers
/// that collided do not collide again in lock step and none is starved by
/// the others.
pub(crate) fn back_off(attempt: u32) {
    let bound = (100u64 << attempt.min(9)).min(50_000);
    let jitter = rand::random::<u64>() % bound;
    std::thread::sleep(std::time::Duration::from_micros(jitter));
}

/// Runs `f` as an optimistic transaction: its reads through [`Txn::get`]
/// become expectations of its writes, and when another writer (a task, or
/// another satellite process on the same database) changed one of them
/// first, `f` runs again on fresh reads. `f` must not have effects outside
/// the transaction (it may run several times).
pub fn transact<T, E: From<DbError>>(
    kv: &dyn Kv,
    mut f: impl FnMut(&mut Txn<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let mut attempt = 0;
    loop {
        let mut txn = Txn {
            kv,
            expects: Vec::new(),
            ops: Vec::new(),
        };
        let out = f(&mut txn)?;
        if txn.ops.is_empty() {
            return Ok(out);
        }
        let mut ops = txn.expects;
        ops.append(&mut txn.ops);
        match kv.write(ops) {
            Ok(()) => return Ok(out),
            Err(DbError::Conflict) if attempt + 1 < TRANSACT_ATTEMPTS => {
                attempt += 1;
                back_off(attempt);
            }
            Err(e) => return Err(e.into()),
        }
    }
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

/// Copies every table of `from` into `to`, a page at a time; `to` must be
/// empty (a half-filled target is refused rather than merged). Calls
/// `progress` with each table's name and row count. Returns the rows
/// copied.
pub fn copy_all(
    from: &dyn Kv,
    to: &dyn Kv,
    mut progress: impl FnMut(&str, u64),
) -> Result<u64, DbError> {
    for t in Table::ALL {
        if !to.scan(t, b"", b"", 1)?.is_empty() {
            return Err(DbError::Backend(format!(
                "the target database already has rows in table {}; copy into an empty one",
                t.name()
            )));
        }
    }
    let mut total = 0u64;
    for t in Table::ALL {
        let mut rows = 0u64;
        for_each_page(from, t, b"", |page| {
            rows += page.len() as u64;
            to.write(page.into_iter().map(|(k, v)| Op::Put(t, k, v)).collect())
        })?;
        progress(t.name(), rows);
        total += rows;
    }
    Ok(total)
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

    /// Whether other processes may write this database too (then what a
    /// process caches must be reloaded now and then).
    fn shared(&self) -> bool {
        false
    }

    /// Bytes the database holds in this process's memory, by kind (an
    /// embedded database's write buffers, table readers, cache).
    fn memory(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Bytes one table's write buffer holds before it is flushed.
const WRITE_BUFFER_BYTES: usize = 8 << 20;
/// Bytes all tables' write buffers hold together before the largest is
/// flushed (without it, every busy table fills its own and resident memory
/// peaks with however many are busy at once).
const WRITE_BUFFERS_TOTAL_BYTES: usize = 16 << 20;
/// Bytes of blocks (data, index and filter) the RocksDB tables keep cached,
/// all together. Full within a few hundred thousand objects; the files'
/// blocks beyond it are read through the operating system's page cache.
/// (32 MiB measured no faster for commits or listings.)
const BLOCK_CACHE_BYTES: usize = 8 << 20;

/// RocksDB with one column family per table.
pub struct RocksKv {
    db: DB,
    cache: rocksdb::Cache,
    /// Whether every write is synced to disk before it returns.
    sync: bool,
    /// Plain batches share it; a batch with expectations holds it alone
    /// from its checks to its write (only one process opens a RocksDB).
    writes: RwLock<()>,
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
        opts.set_db_write_buffer_size(WRITE_BUFFERS_TOTAL_BYTES);
        // Memory stays bounded whatever the data grows to: small write
        // buffers with a limit for all tables together, and one block cache
        // shared by every table that holds the index and filter blocks too
        // (outside it, they grew with the data: 5 MiB per million objects).
        // Indexes and filters are partitioned, so only their small top
        // levels are pinned and a lookup pulls in the partitions it needs;
        // whole per-file indexes in a cache this small were evicted by data
        // blocks and writes slowed to a fifth. Bloom filters answer most
        // lookups of absent keys (every commit expects some) without
        // reading a data block.
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES)?;
        let cfs = Table::ALL.iter().map(|t| {
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
            table.set_partition_filters(true);
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_top_level_index_and_filter(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            let mut o = Options::default();
            o.set_write_buffer_size(WRITE_BUFFER_BYTES);
            o.set_max_write_buffer_number(3);
            o.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(t.name(), o)
        });
        Ok(Self {
            db: DB::open_cf_descriptors(&opts, path, cfs)?,
            cache,
            sync,
            writes: RwLock::new(()),
        })
    }

    fn cf(&self, t: Table) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(t.name())
            .expect("every table is created at open")
    }
}

impl Kv for RocksKv {
    fn memory(&self) -> Vec<(&'static str, u64)> {
        let sum = |property: &str| -> u64 {
            Table::ALL
                .iter()
                .filter_map(|t| {
                    self.db
                        .property_int_value_cf(self.cf(*t), property)
                        .ok()
                        .flatten()
                })
                .sum()
        };
        vec![
            ("write_buffers", sum("rocksdb.cur-size-all-mem-tables")),
            ("table_readers", sum("rocksdb.estimate-table-readers-mem")),
            ("block_cache", self.cache.get_usage() as u64),
        ]
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self.db.get_cf(self.cf(table), key)?)
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), DbError> {
        let checked = ops.iter().any(|op| matches!(op, Op::Expect(..)));
        let (_shared, _alone);
        if checked {
            _alone = self.writes.write().expect("write lock");
        } else {
            _shared = self.writes.read().expect("write lock");
        }
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                Op::Put(t, k, v) => batch.put_cf(self.cf(t), k, v),
                Op::Delete(t, k) => batch.delete_cf(self.cf(t), k),
                Op::Expect(t, k, v) => {
                    if self.db.get_cf(self.cf(t), &k)? != v {
                        return Err(DbError::Conflict);
                    }
                }
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
    /// Whether it stands for a database other processes write too.
    shared: bool,
}

impl MemKv {
    /// One that reports itself shared ([`Kv::shared`]), for tests of what
    /// processes on one database must re-read.
    pub fn shared() -> Self {
        Self {
            shared: true,
            ..Default::default()
        }
    }
}

impl Kv for MemKv {
    fn shared(&self) -> bool {
        self.shared
    }

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
        let (expects, changes) = split_batch(ops);
        for (tb, k, v) in expects {
            if t.get(&(tb, k)) != v.as_ref() {
                return Err(DbError::Conflict);
            }
        }
        for (key, v) in changes {
            match v {
                Some(v) => {
                    t.insert(key, v);
                }
                None => {
                    t.remove(&key);
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

        // Expectations: a batch applies whole when they hold, not at all
        // when one does not.
        kv.write(vec![
            Op::Expect(Table::Meta, b"e".to_vec(), None),
            Op::Put(Table::Meta, b"e".to_vec(), b"1".to_vec()),
            Op::Put(Table::Meta, b"f".to_vec(), b"1".to_vec()),
        ])
        .expect("absent as expected");
        let stale = kv.write(vec![
            Op::Expect(Table::Meta, b"e".to_vec(), None),
            Op::Put(Table::Meta, b"e".to_vec(), b"2".to_vec()),
            Op::Delete(Table::Meta, b"f".to_vec()),
        ]);
        assert!(matches!(stale, Err(DbError::Conflict)), "{stale:?}");
        assert_eq!(kv.get(Table::Meta, b"e").expect("get"), Some(b"1".to_vec()));
        assert_eq!(kv.get(Table::Meta, b"f").expect("get"), Some(b"1".to_vec()));
        let wrong = kv.write(vec![
            Op::Expect(Table::Meta, b"e".to_vec(), Some(b"0".to_vec())),
            Op::Put(Table::Meta, b"g".to_vec(), vec![]),
        ]);
        assert!(matches!(wrong, Err(DbError::Conflict)), "{wrong:?}");
        assert_eq!(kv.get(Table::Meta, b"g").expect("get"), None);
        // A key expected absent and not written stays absent; two
        // expectations of one key that differ never hold.
        kv.write(vec![
            Op::Expect(Table::Meta, b"absent".to_vec(), None),
            Op::Expect(Table::Meta, b"e".to_vec(), Some(b"1".to_vec())),
            Op::Put(Table::Meta, b"g".to_vec(), vec![]),
        ])
        .expect("holds");
        assert_eq!(kv.get(Table::Meta, b"absent").expect("get"), None);
        let both = kv.write(vec![
            Op::Expect(Table::Meta, b"e".to_vec(), Some(b"1".to_vec())),
            Op::Expect(Table::Meta, b"e".to_vec(), None),
            Op::Delete(Table::Meta, b"g".to_vec()),
        ]);
        assert!(matches!(both, Err(DbError::Conflict)), "{both:?}");
        assert_eq!(kv.get(Table::Meta, b"g").expect("get"), Some(vec![]));
        kv.write(vec![Op::Delete(Table::Meta, b"g".to_vec())])
            .expect("delete");
        // Within one batch the last change to a key wins.
        kv.write(vec![
            Op::Expect(Table::Meta, b"e".to_vec(), Some(b"1".to_vec())),
            Op::Put(Table::Meta, b"e".to_vec(), b"3".to_vec()),
            Op::Delete(Table::Meta, b"e".to_vec()),
            Op::Put(Table::Meta, b"h".to_vec(), b"1".to_vec()),
            Op::Put(Table::Meta, b"h".to_vec(), b"2".to_vec()),
        ])
        .expect("holds");
        assert_eq!(kv.get(Table::Meta, b"e").expect("get"), None);
        assert_eq!(kv.get(Table::Meta, b"h").expect("get"), Some(b"2".to_vec()));
        // Keys at the top of the byte range and empty values scan right.
        kv.write(vec![
            Op::Put(Table::Listings, vec![0xff, 0xff], vec![]),
            Op::Put(Table::Listings, vec![0xff, 0xff, 0], b"x".to_vec()),
            Op::Put(Table::Listings, vec![0xfe], vec![]),
        ])
        .expect("batch");
        let top = kv.scan(Table::Listings, &[0xff], b"", 10).expect("scan");
        assert_eq!(
            top,
            vec![
                (vec![0xff, 0xff], vec![]),
                (vec![0xff, 0xff, 0], b"x".to_vec())
            ]
        );
    }

    /// Writers that all increment one counter through [`transact`] lose no
    /// increment, whether they share a handle (threads of one process) or
    /// each has its own (processes on one database).
    fn no_lost_updates(handles: &[&dyn Kv]) {
        const WRITERS: usize = 8;
        const EACH: u64 = 25;
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let kv = handles[w % handles.len()];
                s.spawn(move || {
                    for _ in 0..EACH {
                        transact(kv, |txn| {
                            let n = txn
                                .get(Table::Meta, b"counter")?
                                .map_or(0, |v| u64::from_be_bytes(v.try_into().expect("8 bytes")));
                            txn.put(
                                Table::Meta,
                                b"counter".to_vec(),
                                (n + 1).to_be_bytes().to_vec(),
                            );
                            Ok::<_, DbError>(())
                        })
                        .expect("commits in the end");
                    }
                });
            }
        });
        let n = handles[0]
            .get(Table::Meta, b"counter")
            .expect("get")
            .expect("set");
        assert_eq!(
            u64::from_be_bytes(n.try_into().expect("8 bytes")),
            WRITERS as u64 * EACH
        );
    }

    /// Two batches that each expect absent what the other writes (write
    /// skew), started together over and over: never both apply. Also with
    /// the expectation on a row that is there and only read.
    fn no_write_skew(a: &dyn Kv, b: &dyn Kv) {
        const ROUNDS: usize = 40;
        for round in 0..ROUNDS {
            let key = |name: &str| format!("skew/{round}/{name}").into_bytes();
            let shared = round % 2 == 1;
            if shared {
                a.put(Table::Meta, key("base"), b"1".to_vec()).expect("put");
            }
            let start = std::sync::Barrier::new(2);
            let applied = std::thread::scope(|s| {
                let one = |kv: &'static str, me: &'static str, other: &'static str| {
                    let (start, key) = (&start, &key);
                    let kv: &dyn Kv = if kv == "a" { a } else { b };
                    move || {
                        let mut ops = vec![
                            Op::Expect(Table::Meta, key(other), None),
                            Op::Put(Table::Meta, key(me), vec![1]),
                        ];
                        if shared {
                            ops.push(Op::Expect(Table::Meta, key("base"), Some(b"1".to_vec())));
                        }
                        start.wait();
                        match kv.write(ops) {
                            Ok(()) => 1,
                            Err(DbError::Conflict) => 0,
                            Err(e) => panic!("{e}"),
                        }
                    }
                };
                let x = s.spawn(one("a", "x", "y"));
                let y = s.spawn(one("b", "y", "x"));
                x.join().expect("x") + y.join().expect("y")
            });
            let written = [key("x"), key("y")]
                .iter()
                .filter(|k| a.get(Table::Meta, k).expect("get").is_some())
                .count();
            assert!(applied <= 1, "round {round}: both batches applied");
            assert_eq!(written, applied, "round {round}");
        }
    }

    #[test]
    fn memory_backend() {
        exercise(&MemKv::default());
        let kv = MemKv::default();
        no_write_skew(&kv, &kv);
    }

    #[test]
    fn rocksdb_backend() {
        let dir = tempfile::tempdir().expect("tmp");
        let kv = RocksKv::open_with(dir.path(), false).expect("open");
        exercise(&kv);
        no_lost_updates(&[&kv]);
        no_write_skew(&kv, &kv);
    }

    #[test]
    fn memory_backend_transactions() {
        no_lost_updates(&[&MemKv::default()]);
    }

    /// The same suite on a throwaway PostgreSQL server; two handles on one
    /// database stand for two satellite processes.
    #[test]
    fn postgres_backend() {
        let cluster = crate::pg::Cluster::start(None).expect("PostgreSQL starts");
        let url = cluster.create_database("conformance").expect("database");
        let a = crate::pg::PgKv::connect(&url).expect("connect");
        exercise(&a);
        let b = crate::pg::PgKv::connect(&url).expect("a second process connects");
        no_lost_updates(&[&a, &b]);
        no_write_skew(&a, &b);
        // Migrating again is a no-op.
        drop(crate::pg::PgKv::connect(&url).expect("again"));
        // A RocksDB satellite's tables copy over whole, into an empty
        // database only.
        let dir = tempfile::tempdir().expect("tmp");
        let rocks = RocksKv::open_with(dir.path(), false).expect("open");
        exercise(&rocks);
        let copy_url = cluster.create_database("copy").expect("database");
        let copy = crate::pg::PgKv::connect(&copy_url).expect("connect");
        let mut tables = 0;
        let rows = copy_all(&rocks, &copy, |_, _| tables += 1).expect("copy");
        assert_eq!(tables, Table::ALL.len());
        for t in Table::ALL {
            assert_eq!(
                rocks.scan(t, b"", b"", usize::MAX).expect("scan"),
                copy.scan(t, b"", b"", usize::MAX).expect("scan"),
                "{t:?}"
            );
        }
        assert!(rows > 2 * PAGE as u64);
        assert!(matches!(
            copy_all(&rocks, &copy, |_, _| {}),
            Err(DbError::Backend(_))
        ));
    }
}
