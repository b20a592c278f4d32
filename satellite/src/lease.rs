//! Leases in the database: which satellite process runs a chore (or drives
//! a job) when several share one database.
//!
//! A lease is a row `lease:<name>` in [`Table::Meta`] holding the holder's
//! process id (random, fresh at each start) and when it lapses. Taking or
//! renewing one is a [`db::transact`]ion, so two processes never both hold
//! it; a holder that dies stops renewing, and another takes the lease once
//! it lapses. On a database no other process writes (RocksDB) every lease
//! is simply held, without a write: a restarted satellite does not wait for
//! its dead predecessor's leases to lapse.

use std::sync::Arc;
use std::time::Duration;

use crate::db::{self, DbError, Kv, Table};

/// Who holds a lease, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub process: [u8; 16],
    pub until_ms: i64,
}

impl Holder {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.process.to_vec();
        v.extend_from_slice(&self.until_ms.to_be_bytes());
        v
    }

    fn decode(v: &[u8]) -> Result<Self, DbError> {
        let (process, until) = v
            .split_first_chunk::<16>()
            .ok_or(DbError::Corrupt("lease"))?;
        let until: [u8; 8] = until.try_into().map_err(|_| DbError::Corrupt("lease"))?;
        Ok(Self {
            process: *process,
            until_ms: i64::from_be_bytes(until),
        })
    }
}

/// This process's leases.
pub struct Leases {
    kv: Arc<dyn Kv>,
    process: [u8; 16],
    /// Whether other processes share the database (else no lease is
    /// written).
    shared: bool,
}

fn key(name: &str) -> Vec<u8> {
    format!("lease:{name}").into_bytes()
}

impl Leases {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        let shared = kv.shared();
        Self {
            kv,
            process: rand::random(),
            shared,
        }
    }

    /// Leases written to the database even if no other process shares it
    /// (tests of the lease logic on a local database).
    pub fn always_written(kv: Arc<dyn Kv>) -> Self {
        Self {
            shared: true,
            ..Self::new(kv)
        }
    }

    /// This process's holder id, as written in the leases it holds.
    pub fn process(&self) -> [u8; 16] {
        self.process
    }

    /// Takes lease `name` for `ttl` from `now_ms`, or renews it if this
    /// process holds it; `false` while another process holds it unlapsed.
    pub fn hold(&self, name: &str, ttl: Duration, now_ms: i64) -> Result<bool, DbError> {
        if !self.shared {
            return Ok(true);
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        db::transact(self.kv.as_ref(), |txn| {
            if let Some(v) = txn.get(Table::Meta, &key(name))? {
                let h = Holder::decode(&v)?;
                if h.process != self.process && h.until_ms > now_ms {
                    return Ok::<_, DbError>(false);
                }
            }
            let holder = Holder {
                process: self.process,
                until_ms: now_ms.saturating_add(ttl_ms),
            };
            txn.put(Table::Meta, key(name), holder.encode());
            Ok(true)
        })
    }

    /// Gives lease `name` up if this process holds it (at shutdown), so
    /// another process need not wait for it to lapse.
    pub fn release(&self, name: &str) -> Result<(), DbError> {
        if !self.shared {
            return Ok(());
        }
        db::transact(self.kv.as_ref(), |txn| {
            if let Some(v) = txn.get(Table::Meta, &key(name))?
                && Holder::decode(&v)?.process == self.process
            {
                txn.delete(Table::Meta, key(name));
            }
            Ok::<_, DbError>(())
        })
    }

    /// Who holds lease `name`, if anyone does.
    pub fn holder(&self, name: &str) -> Result<Option<Holder>, DbError> {
        self.kv
            .get(Table::Meta, &key(name))?
            .map(|v| Holder::decode(&v))
            .transpose()
    }
}

/// How long a chore's lease lasts. Every process tries to take or renew
/// each chore's lease at a third of this, whatever the chore's interval, so
/// a dead holder's chores move within this time (and run at the new
/// holder's next tick).
pub const CHORE_LEASE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::MemKv;
    use crate::satellitedb::backends;

    /// One holder at a time, a lapsed lease moves, many contenders get one
    /// winner: `connect` opens the database again (another process).
    fn conformance(connect: &dyn Fn() -> Arc<dyn Kv>) {
        let (a, b) = (
            Leases::always_written(connect()),
            Leases::always_written(connect()),
        );
        let ttl = Duration::from_secs(10);
        assert!(a.hold("gc", ttl, 1_000).expect("take"));
        assert!(!b.hold("gc", ttl, 2_000).expect("held by a"));
        assert!(a.hold("gc", ttl, 5_000).expect("renew"));
        // a renewed to 15 000: still held at 14 999, lapsed at 15 000.
        assert!(!b.hold("gc", ttl, 14_999).expect("held"));
        assert!(b.hold("gc", ttl, 15_000).expect("lapsed"));
        assert!(!a.hold("gc", ttl, 15_001).expect("b holds it now"));
        // Another lease is independent.
        assert!(a.hold("audit", ttl, 15_001).expect("other"));
        // Releasing someone else's lease does nothing; one's own frees it.
        a.release("gc").expect("release");
        assert_eq!(
            b.holder("gc").expect("read").map(|h| h.process),
            Some(b.process())
        );
        b.release("gc").expect("release");
        assert!(a.hold("gc", ttl, 15_002).expect("free"));

        let contenders: Vec<Leases> = (0..8).map(|_| Leases::always_written(connect())).collect();
        let won = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for l in &contenders {
                let won = &won;
                s.spawn(move || {
                    if l.hold("repair", Duration::from_secs(30), 1_000)
                        .expect("hold")
                    {
                        won.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(won.into_inner(), 1);
    }

    #[test]
    fn memory_backend() {
        let kv = backends::memory();
        conformance(&|| kv.clone());
    }

    #[test]
    fn rocksdb_backend() {
        backends::rocksdb(|kv| conformance(&|| kv.clone()));
    }

    #[test]
    fn postgres_backend() {
        backends::postgres(conformance);
    }

    #[test]
    fn an_unshared_database_needs_no_lease() {
        let kv: Arc<dyn Kv> = Arc::new(MemKv::default());
        let (a, b) = (Leases::new(kv.clone()), Leases::new(kv));
        assert!(a.hold("gc", Duration::from_secs(10), 1_000).expect("hold"));
        // A restarted process (a new holder) runs its chores at once.
        assert!(b.hold("gc", Duration::from_secs(10), 1_001).expect("hold"));
        assert_eq!(a.holder("gc").expect("read"), None);
    }
}
