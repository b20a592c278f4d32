//! Payouts: each payee's signed, hash-chained ledger, the paystubs of
//! each period, and the markers of periods computed and paid.
//!
//! A chain never forks: an entry is written only where its sequence number
//! is free, so of two processes appending to one ledger at once, one fails
//! whole ([`DbError::Conflict`]). A period is computed once and paid once
//! for the same reason (its marker is expected absent). Each ledger's last
//! entry is kept beside it, so an append reads one row, not the chain.
//! Layout in the backend: `ledger` by payee id and big-endian sequence
//! number (protobuf); `paystubs` by period start and payee id; in `meta`,
//! `ledger-tail:` + payee id (the last entry), `computed:` and `paid:` +
//! period start.

use std::ops::ControlFlow;
use std::sync::Arc;

use loam_common::{NodeId, pb};
use prost::Message;

use super::{decode, walk};
use crate::db::{DbError, Kv, Op, Table};

fn ledger_key(payee: &NodeId, seq: u64) -> Vec<u8> {
    [payee.as_bytes().as_slice(), &seq.to_be_bytes()].concat()
}

fn tail_key(payee: &NodeId) -> Vec<u8> {
    [b"ledger-tail:".as_slice(), payee.as_bytes()].concat()
}

fn computed_key(period_start: i64) -> Vec<u8> {
    format!("computed:{period_start}").into_bytes()
}

fn paid_key(period_start: i64) -> Vec<u8> {
    format!("paid:{period_start}").into_bytes()
}

/// An entry's sequence number.
pub fn entry_seq(e: &pb::SignedLedgerEntry) -> Result<u64, DbError> {
    Ok(decode::<pb::LedgerEntry>(&e.entry, "ledger entry")?.seq)
}

/// Writes to the payout tables, applied whole or not at all by
/// [`PayoutStore::write`].
#[derive(Default, Debug)]
#[must_use]
pub struct PayoutBatch {
    ops: Vec<Op>,
}

impl PayoutBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `entry` (sequence number `seq`) to `payee`'s ledger, only
    /// where that number is still free.
    pub fn append(&mut self, payee: &NodeId, seq: u64, entry: &pb::SignedLedgerEntry) {
        let bytes = entry.encode_to_vec();
        self.ops
            .push(Op::Expect(Table::Ledger, ledger_key(payee, seq), None));
        self.ops.push(Op::Put(
            Table::Ledger,
            ledger_key(payee, seq),
            bytes.clone(),
        ));
        self.ops.push(Op::Put(Table::Meta, tail_key(payee), bytes));
    }

    pub fn put_paystub(&mut self, period_start: i64, payee: &NodeId, stub: &pb::Paystub) {
        self.ops.push(Op::Put(
            Table::Paystubs,
            [&period_start.to_be_bytes(), payee.as_bytes().as_slice()].concat(),
            stub.encode_to_vec(),
        ));
    }

    /// Marks the period computed at `now`, only if nobody did first.
    pub fn mark_computed(&mut self, period_start: i64, now: i64) {
        let key = computed_key(period_start);
        self.ops.push(Op::Expect(Table::Meta, key.clone(), None));
        self.ops
            .push(Op::Put(Table::Meta, key, now.to_be_bytes().to_vec()));
    }

    /// Marks the period paid with `reference`, only if nobody did first.
    pub fn mark_paid(&mut self, period_start: i64, reference: &str) {
        let key = paid_key(period_start);
        self.ops.push(Op::Expect(Table::Meta, key.clone(), None));
        self.ops
            .push(Op::Put(Table::Meta, key, reference.as_bytes().to_vec()));
    }
}

/// Ledgers and paystubs over one of the satellite's databases.
pub struct PayoutStore {
    kv: Arc<dyn Kv>,
}

impl PayoutStore {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self { kv }
    }

    pub fn write(&self, batch: PayoutBatch) -> Result<(), DbError> {
        self.kv.write(batch.ops)
    }

    /// Calls `f` with `payee`'s entries from sequence number `since` up to
    /// `until` (inclusive), in order, a page at a time.
    pub fn for_each_entry(
        &self,
        payee: &NodeId,
        since: u64,
        until: u64,
        mut f: impl FnMut(pb::SignedLedgerEntry) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        walk(
            &*self.kv,
            Table::Ledger,
            payee.as_bytes(),
            &ledger_key(payee, since),
            |k, v| {
                let seq = k
                    .get(32..40)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or(DbError::Corrupt("ledger key"))?;
                if seq > until {
                    return Ok(ControlFlow::Break(()));
                }
                f(decode(&v, "ledger entry")?)?;
                Ok(ControlFlow::Continue(()))
            },
        )
    }

    /// `payee`'s last entry: kept beside the ledger, or (a database from
    /// before that) found by walking it.
    pub fn tail(&self, payee: &NodeId) -> Result<Option<pb::SignedLedgerEntry>, DbError> {
        if let Some(v) = self.kv.get(Table::Meta, &tail_key(payee))? {
            return Ok(Some(decode(&v, "ledger entry")?));
        }
        let mut last = None;
        self.for_each_entry(payee, 0, u64::MAX, |e| {
            last = Some(e);
            Ok(())
        })?;
        Ok(last)
    }

    /// The paystubs of the period starting at `period_start`, by payee.
    pub fn paystubs(&self, period_start: i64) -> Result<Vec<(NodeId, pb::Paystub)>, DbError> {
        let mut out = Vec::new();
        walk(
            &*self.kv,
            Table::Paystubs,
            &period_start.to_be_bytes(),
            b"",
            |k, v| {
                let payee = k
                    .get(8..)
                    .and_then(|b| NodeId::try_from(b).ok())
                    .ok_or(DbError::Corrupt("paystub key"))?;
                out.push((payee, decode(&v, "paystub")?));
                Ok::<_, DbError>(ControlFlow::Continue(()))
            },
        )?;
        Ok(out)
    }

    pub fn is_computed(&self, period_start: i64) -> Result<bool, DbError> {
        Ok(self
            .kv
            .get(Table::Meta, &computed_key(period_start))?
            .is_some())
    }

    pub fn is_paid(&self, period_start: i64) -> Result<bool, DbError> {
        Ok(self.kv.get(Table::Meta, &paid_key(period_start))?.is_some())
    }
}

/// One suite for payouts on every backend; two stores on one database
/// stand for two satellite processes.
#[cfg(test)]
mod tests {
    use loam_common::Identity;
    use loam_common::ledger;

    use super::*;
    use crate::satellitedb::backends;

    fn payment(amount: u64) -> pb::ledger_entry::Body {
        pb::ledger_entry::Body::Payment(pb::Payment {
            amount,
            ..Default::default()
        })
    }

    /// Appends one entry after the store's tail, as a process would.
    fn append(
        store: &PayoutStore,
        sat: &Identity,
        payee: &NodeId,
        amount: u64,
    ) -> Result<(), DbError> {
        let prev = store.tail(payee)?;
        let entry = ledger::append(sat, payee, prev.as_ref(), payment(amount), 1)
            .map_err(|_| DbError::Corrupt("append"))?;
        let mut batch = PayoutBatch::new();
        batch.append(payee, entry_seq(&entry)?, &entry);
        store.write(batch)
    }

    fn conformance(a: &PayoutStore, b: &PayoutStore, kv: &dyn Kv) {
        let sat = Identity::generate(0, |_| {});
        let payee = NodeId::from_bytes([3; 32]);
        assert!(a.tail(&payee).expect("tail").is_none());
        // More entries than a page, through both processes.
        for i in 0..(crate::db::PAGE as u64 + 20) {
            let store = if i % 2 == 0 { a } else { b };
            append(store, &sat, &payee, i).expect("append");
        }
        let mut entries = Vec::new();
        b.for_each_entry(&payee, 0, u64::MAX, |e| {
            entries.push(e);
            Ok(())
        })
        .expect("walk");
        assert_eq!(entries.len(), crate::db::PAGE + 20);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(entry_seq(e).expect("seq"), i as u64);
        }
        let tail = a.tail(&payee).expect("tail").expect("there");
        assert_eq!(&tail, entries.last().expect("last"));
        let mut some = 0;
        a.for_each_entry(&payee, 5, 9, |_| {
            some += 1;
            Ok(())
        })
        .expect("walk");
        assert_eq!(some, 5, "[since, until]");

        // Two appends after the same tail: one lands, the chain does not
        // fork.
        let prev = a.tail(&payee).expect("tail");
        let (mut first, mut second) = (PayoutBatch::new(), PayoutBatch::new());
        for (batch, amount) in [(&mut first, 1), (&mut second, 2)] {
            let e = ledger::append(&sat, &payee, prev.as_ref(), payment(amount), 1).expect("entry");
            batch.append(&payee, entry_seq(&e).expect("seq"), &e);
        }
        a.write(first).expect("first");
        assert!(matches!(b.write(second), Err(DbError::Conflict)));
        let mut count = 0;
        a.for_each_entry(&payee, 0, u64::MAX, |_| {
            count += 1;
            Ok(())
        })
        .expect("walk");
        assert_eq!(count, crate::db::PAGE + 21);

        // A database from before the tail row: the tail is found by walking.
        let old = NodeId::from_bytes([6; 32]);
        let e0 = ledger::append(&sat, &old, None, payment(1), 1).expect("entry");
        let e1 = ledger::append(&sat, &old, Some(&e0), payment(2), 1).expect("entry");
        for (seq, e) in [(0u64, &e0), (1, &e1)] {
            kv.put(Table::Ledger, ledger_key(&old, seq), e.encode_to_vec())
                .expect("put");
        }
        assert_eq!(a.tail(&old).expect("tail"), Some(e1));

        // Paystubs and the period markers.
        let mut batch = PayoutBatch::new();
        batch.put_paystub(
            1000,
            &payee,
            &pb::Paystub {
                paid: 5,
                ..Default::default()
            },
        );
        batch.put_paystub(2000, &old, &pb::Paystub::default());
        batch.mark_computed(1000, 7);
        a.write(batch).expect("computed");
        let mut again = PayoutBatch::new();
        again.mark_computed(1000, 8);
        assert!(
            matches!(b.write(again), Err(DbError::Conflict)),
            "computed once"
        );
        assert!(b.is_computed(1000).expect("read"));
        assert!(!b.is_computed(2000).expect("read"));
        let stubs = b.paystubs(1000).expect("stubs");
        assert_eq!(stubs.len(), 1);
        assert_eq!((stubs[0].0, stubs[0].1.paid), (payee, 5));
        let mut paid = PayoutBatch::new();
        paid.mark_paid(1000, "tx-1");
        a.write(paid).expect("paid");
        let mut paid = PayoutBatch::new();
        paid.mark_paid(1000, "tx-2");
        assert!(matches!(b.write(paid), Err(DbError::Conflict)), "paid once");
        assert!(b.is_paid(1000).expect("read"));
    }

    fn run(kv: Arc<dyn Kv>, other: Arc<dyn Kv>) {
        conformance(
            &PayoutStore::new(kv.clone()),
            &PayoutStore::new(other),
            &*kv,
        );
    }

    #[test]
    fn memory_backend() {
        let kv = backends::memory();
        run(kv.clone(), kv);
    }

    #[test]
    fn rocksdb_backend() {
        backends::rocksdb(|kv| run(kv.clone(), kv));
    }

    #[test]
    fn postgres_backend() {
        backends::postgres(|connect| run(connect(), connect()));
    }
}
