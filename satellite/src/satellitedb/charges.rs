//! What projects are charged for their jobs and model downloads, and what
//! data owners earn from them.
//!
//! A charge is written once, in the same batch as what it pays for (a
//! job's round, with the round's weights; a model download): consumer and
//! owner sides are written together, entry for entry, so they always
//! reconcile to the unit. Reads walk a page at a time and sum with checked
//! arithmetic.
//!
//! Layout in the backend: `charges` by project, time (ms, big-endian),
//! job and round; `earnings` by owner project, time, job and listing;
//! protobuf values ([`pb::ChargeRecord`], [`pb::DataFee`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::Arc;

use loam_common::pb;
use prost::Message;

use super::{decode, walk};
use crate::db::{DbError, Kv, Op, Table};
use crate::metainfo::ProjectId;

/// Where an earning key's time starts and its job starts.
const TIME_AT: usize = 16;
const JOB_AT: usize = 24;

fn charge_key(project: &[u8], t: i64, job: &[u8], round: u32) -> Vec<u8> {
    let mut k = project.to_vec();
    k.extend_from_slice(&t.max(0).to_be_bytes());
    k.extend_from_slice(job);
    k.extend_from_slice(&round.to_be_bytes());
    k
}

fn earning_key(owner: &[u8], t: i64, job: &[u8], listing: &[u8]) -> Vec<u8> {
    let mut k = owner.to_vec();
    k.extend_from_slice(&t.max(0).to_be_bytes());
    k.extend_from_slice(job);
    k.extend_from_slice(listing);
    k
}

fn time_of(key: &[u8]) -> Result<i64, DbError> {
    key.get(TIME_AT..JOB_AT)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_be_bytes)
        .ok_or(DbError::Corrupt("data fee key"))
}

/// The writes that record `charge` of `project` (nothing when it charged
/// nothing and used no listing): for callers that write it together with
/// what it pays for.
pub(crate) fn charge_ops(project: &[u8], charge: &pb::ChargeRecord) -> Vec<Op> {
    let mut ops = Vec::new();
    if charge.total == 0
        && charge
            .data
            .iter()
            .all(|d| d.sample_epochs == 0 && d.downloads == 0)
    {
        return ops;
    }
    ops.push(Op::Put(
        Table::Charges,
        charge_key(project, charge.unix_ms, &charge.job_id, charge.round),
        charge.encode_to_vec(),
    ));
    for fee in &charge.data {
        ops.push(Op::Put(
            Table::Earnings,
            earning_key(
                &fee.owner_project,
                charge.unix_ms,
                &charge.job_id,
                &fee.listing_id,
            ),
            fee.encode_to_vec(),
        ));
    }
    ops
}

/// Sample-epochs and fees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Earned {
    pub sample_epochs: u64,
    pub amount: u64,
    pub jobs: u64,
    /// Model downloads sold.
    pub downloads: u64,
}

impl Earned {
    fn add(&mut self, fee: &pb::DataFee) -> Result<(), DbError> {
        let overflow = || DbError::Overflow("an owner's earnings");
        self.sample_epochs = self
            .sample_epochs
            .checked_add(fee.sample_epochs)
            .ok_or_else(overflow)?;
        self.amount = self.amount.checked_add(fee.amount).ok_or_else(overflow)?;
        self.downloads = self
            .downloads
            .checked_add(fee.downloads)
            .ok_or_else(overflow)?;
        Ok(())
    }
}

/// Charges and earnings over one of the satellite's databases.
pub struct ChargeStore {
    kv: Arc<dyn Kv>,
}

impl ChargeStore {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self { kv }
    }

    /// Records one charge of `project` on its own (a model download).
    pub fn record(&self, project: &ProjectId, charge: &pb::ChargeRecord) -> Result<(), DbError> {
        self.kv.write(charge_ops(project, charge))
    }

    /// Calls `f` with each of a project's charges from `from` on, oldest
    /// first, until it breaks.
    pub fn for_each_charge(
        &self,
        project: &ProjectId,
        from: i64,
        mut f: impl FnMut(pb::ChargeRecord) -> ControlFlow<()>,
    ) -> Result<(), DbError> {
        let mut start = project.to_vec();
        start.extend_from_slice(&from.max(0).to_be_bytes());
        walk(&*self.kv, Table::Charges, project, &start, |_, v| {
            Ok::<_, DbError>(f(decode(&v, "charge")?))
        })
    }

    /// A project's charges from `from` on, oldest first.
    pub fn project_charges(
        &self,
        project: &ProjectId,
        from: i64,
    ) -> Result<Vec<pb::ChargeRecord>, DbError> {
        let mut out = Vec::new();
        self.for_each_charge(project, from, |c| {
            out.push(c);
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// What a project was charged from `from` on (summed a page at a time).
    pub fn project_total(&self, project: &ProjectId, from: i64) -> Result<u64, DbError> {
        let mut total = Some(0u64);
        self.for_each_charge(project, from, |c| {
            total = total.and_then(|t| t.checked_add(c.total));
            if total.is_some() {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        })?;
        total.ok_or(DbError::Overflow("a project's charges"))
    }

    /// What each owner earned in `[from, to)`.
    pub fn owners_earned(
        &self,
        from: i64,
        to: i64,
    ) -> Result<BTreeMap<ProjectId, Earned>, DbError> {
        let mut out: BTreeMap<ProjectId, Earned> = BTreeMap::new();
        walk(&*self.kv, Table::Earnings, b"", b"", |k, v| {
            let t = time_of(&k)?;
            if t >= from && t < to {
                let owner = k
                    .get(..TIME_AT)
                    .and_then(|b| ProjectId::try_from(b).ok())
                    .ok_or(DbError::Corrupt("data fee key"))?;
                out.entry(owner)
                    .or_default()
                    .add(&decode(&v, "data fee")?)?;
            }
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    /// What one owner earned from `since` on, and per listing over all
    /// time (with the jobs that used each); one walk.
    pub fn owner_earned(
        &self,
        owner: &ProjectId,
        since: i64,
    ) -> Result<(Earned, BTreeMap<Vec<u8>, Earned>), DbError> {
        let mut all = Earned::default();
        let mut per: BTreeMap<Vec<u8>, Earned> = BTreeMap::new();
        let mut jobs: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
        walk(&*self.kv, Table::Earnings, owner, b"", |k, v| {
            let t = time_of(&k)?;
            let fee: pb::DataFee = decode(&v, "data fee")?;
            if t >= since {
                all.add(&fee)?;
            }
            per.entry(fee.listing_id.to_vec()).or_default().add(&fee)?;
            if fee.downloads == 0 {
                let job = k.get(JOB_AT..JOB_AT + 16).unwrap_or_default().to_vec();
                jobs.entry(fee.listing_id.to_vec()).or_default().insert(job);
            }
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })?;
        for (listing, e) in per.iter_mut() {
            e.jobs = jobs.get(listing).map_or(0, |j| j.len() as u64);
        }
        Ok((all, per))
    }
}

/// One suite for charges and earnings on every backend.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::satellitedb::on_every_backend;

    fn fee(owner: ProjectId, listing: u8, sample_epochs: u64, amount: u64) -> pb::DataFee {
        pb::DataFee {
            listing_id: vec![listing; 8].into(),
            owner_project: owner.to_vec().into(),
            sample_epochs,
            amount,
            downloads: 0,
        }
    }

    fn conformance(kv: Arc<dyn Kv>) {
        let store = ChargeStore::new(kv.clone());
        let (consumer, owner, other) = ([1u8; 16], [0xffu8; 16], [0x80u8; 16]);
        // Two jobs, three rounds over a page of charges, each paying the
        // owner for two listings; one round that charged nothing.
        let mut want_total = 0u64;
        for i in 0..(crate::db::PAGE as i64 + 5) {
            let job = if i % 2 == 0 { [7u8; 16] } else { [8u8; 16] };
            let charge = pb::ChargeRecord {
                job_id: job.to_vec().into(),
                round: i as u32,
                unix_ms: 1_000 + i,
                data: vec![fee(owner, 1, 10, 3), fee(owner, 2, 5, 1)],
                total: 4,
                ..Default::default()
            };
            want_total += 4;
            store.record(&consumer, &charge).expect("record");
        }
        assert!(
            charge_ops(&consumer, &pb::ChargeRecord::default()).is_empty(),
            "a round that charged nothing writes nothing"
        );
        let all = store.project_charges(&consumer, 0).expect("charges");
        assert_eq!(all.len(), crate::db::PAGE + 5);
        assert!(all.windows(2).all(|w| w[0].unix_ms < w[1].unix_ms));
        assert_eq!(
            store.project_total(&consumer, 0).expect("total"),
            want_total
        );
        assert_eq!(
            store
                .project_total(&consumer, 1_000 + 1_000)
                .expect("total"),
            5 * 4,
            "from a time on"
        );
        assert_eq!(store.project_total(&other, 0).expect("none"), 0);

        // The owner's side reconciles with the consumer's, per listing and
        // per period; the jobs are counted once each.
        let (since, per) = store.owner_earned(&owner, 0).expect("earned");
        assert_eq!(since.amount, want_total);
        assert_eq!(per[&vec![1u8; 8]].amount, 3 * (crate::db::PAGE as u64 + 5));
        assert_eq!(per[&vec![1u8; 8]].jobs, 2);
        let period = store.owners_earned(1_000, 1_010).expect("period");
        assert_eq!(period.len(), 1);
        assert_eq!(period[&owner].amount, 10 * 4);
        assert_eq!(period[&owner].sample_epochs, 10 * 15);
        let later = store.owner_earned(&owner, 1_000 + 1_000).expect("since");
        assert_eq!(later.0.amount, 5 * 4);

        // A sum past u64 is refused, not wrapped.
        let huge = pb::ChargeRecord {
            job_id: vec![9; 16].into(),
            unix_ms: 5_000_000,
            data: vec![fee(other, 3, 1, u64::MAX)],
            total: u64::MAX,
            ..Default::default()
        };
        store.record(&other, &huge).expect("record");
        store.record(&consumer, &huge).expect("record");
        assert!(matches!(
            store.project_total(&consumer, 0),
            Err(DbError::Overflow(_))
        ));
        let mut again = huge.clone();
        again.unix_ms += 1;
        store.record(&other, &again).expect("record");
        assert!(matches!(
            store.owner_earned(&other, 0),
            Err(DbError::Overflow(_))
        ));
        // A corrupt row is named, not skipped.
        kv.put(Table::Earnings, vec![0; 4], vec![1]).expect("put");
        assert!(matches!(
            store.owners_earned(0, i64::MAX),
            Err(DbError::Corrupt(_))
        ));
    }

    on_every_backend!(conformance);
}
