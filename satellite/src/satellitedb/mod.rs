//! Typed stores over the satellite's database.
//!
//! Services speak in records and locations; how those are keyed and
//! encoded in the backend's tables ([`crate::db::Kv`]: memory, RocksDB,
//! PostgreSQL) is decided here alone. A record read for a later write comes
//! as [`Stored`], which remembers the bytes it was read as, so that the
//! write can land only over exactly that record (another process's change
//! meanwhile fails it with [`DbError::Conflict`], and the caller reads
//! again).

pub mod accounting;
pub mod charges;
pub mod jobs;
pub mod keys;
pub mod listings;
pub mod metabase;
pub mod nodes;
pub mod payouts;
pub mod projects;

use std::ops::ControlFlow;

use crate::db::{DbError, Kv, PAGE, Table};

/// A record as read from the database, with the bytes it was stored as:
/// what a conditional write expects to be still there.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored<T> {
    value: T,
    raw: Vec<u8>,
}

impl<T> Stored<T> {
    pub(crate) fn new(value: T, raw: Vec<u8>) -> Self {
        Self { value, raw }
    }

    /// The record.
    pub fn into_inner(self) -> T {
        self.value
    }

    pub(crate) fn raw(&self) -> &[u8] {
        &self.raw
    }
}

impl<T> std::ops::Deref for Stored<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

/// Decodes a protobuf record, naming it if it does not decode.
pub(crate) fn decode<M: prost::Message + Default>(
    bytes: &[u8],
    what: &'static str,
) -> Result<M, DbError> {
    M::decode(bytes).map_err(|_| DbError::Corrupt(what))
}

/// Decodes a stored protobuf record, keeping its bytes.
pub(crate) fn stored<M: prost::Message + Default>(
    raw: Vec<u8>,
    what: &'static str,
) -> Result<Stored<M>, DbError> {
    Ok(Stored::new(decode(&raw, what)?, raw))
}

/// Walks the pairs of `table` under `prefix` from `start` (inclusive;
/// empty: from the prefix) in key order, a page at a time, until `f`
/// breaks. `f` may write: the walk goes on after the last key it saw.
pub(crate) fn walk<E: From<DbError>>(
    kv: &dyn Kv,
    table: Table,
    prefix: &[u8],
    start: &[u8],
    mut f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<ControlFlow<()>, E>,
) -> Result<(), E> {
    let mut start = start.to_vec();
    loop {
        let page = kv.scan(table, prefix, &start, PAGE)?;
        let full = page.len() == PAGE;
        if let Some((last, _)) = page.last() {
            start.clone_from(last);
            start.push(0);
        }
        for (k, v) in page {
            if f(k, v)?.is_break() {
                return Ok(());
            }
        }
        if !full {
            return Ok(());
        }
    }
}

/// Deletes the rows of `table` under `prefix` that `old` picks, a page at
/// a time behind the walk (which goes on after the last key it read).
/// Returns how many.
pub(crate) fn delete_where(
    kv: &dyn Kv,
    table: Table,
    prefix: &[u8],
    mut old: impl FnMut(&[u8], &[u8]) -> bool,
) -> Result<usize, DbError> {
    let (mut ops, mut n) = (Vec::new(), 0);
    walk(kv, table, prefix, b"", |k, v| {
        if old(&k, &v) {
            ops.push(crate::db::Op::Delete(table, k));
            n += 1;
        }
        if ops.len() >= PAGE {
            kv.write(std::mem::take(&mut ops))?;
        }
        Ok::<_, DbError>(ControlFlow::Continue(()))
    })?;
    if !ops.is_empty() {
        kv.write(ops)?;
    }
    Ok(n)
}

/// Declares the tests `memory_backend`, `rocksdb_backend` and
/// `postgres_backend` that run `suite` (taking the database) on each.
#[cfg(test)]
macro_rules! on_every_backend {
    ($suite:path) => {
        #[test]
        fn memory_backend() {
            $suite(crate::satellitedb::backends::memory());
        }

        #[test]
        fn rocksdb_backend() {
            crate::satellitedb::backends::rocksdb($suite);
        }

        #[test]
        fn postgres_backend() {
            crate::satellitedb::backends::postgres(|connect| $suite(connect()));
        }
    };
}
#[cfg(test)]
pub(crate) use on_every_backend;

/// The backends every store's conformance suite runs on.
#[cfg(test)]
pub(crate) mod backends {
    use std::sync::Arc;

    use crate::db::{Kv, MemKv, RocksKv};

    pub fn memory() -> Arc<dyn Kv> {
        Arc::new(MemKv::default())
    }

    /// Runs `suite` on a fresh RocksDB in a temporary directory.
    pub fn rocksdb(suite: impl FnOnce(Arc<dyn Kv>)) {
        let dir = tempfile::tempdir().expect("tmp");
        suite(Arc::new(
            RocksKv::open_with(dir.path(), false).expect("open"),
        ));
    }

    /// Runs `suite` on a throwaway PostgreSQL server, with a way to open
    /// another connection to the same database (another process).
    pub fn postgres(suite: impl FnOnce(&dyn Fn() -> Arc<dyn Kv>)) {
        let cluster = crate::pg::Cluster::start(None).expect("PostgreSQL starts");
        let url = cluster.create_database("conformance").expect("database");
        suite(&|| Arc::new(crate::pg::PgKv::connect(&url).expect("connect")));
    }
}
