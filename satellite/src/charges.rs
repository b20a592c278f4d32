//! What projects are charged for their jobs and what data owners earn from
//! them, round by round.
//!
//! Every finished round of a job writes one [`pb::ChargeRecord`] for the
//! job's project (the data fees of each listing it used, the compute of its
//! accepted first runs, the piece bytes its training runs fetched) and one
//! [`pb::DataFee`] per listing for the listing's owner, in the same batch as
//! the round's weights. The owner's side is the consumer's side, entry for
//! entry, so the two always reconcile to the unit; payouts read the owners'
//! side per period.
//!
//! Amounts are integers. A fee that does not come out whole carries its
//! remainder (thousandths of a unit for data fees, millionths for compute)
//! to the job's next round, so over a whole job each listing earns exactly
//! `floor(sample-epochs × price / 1000)`.

use std::collections::BTreeMap;
use std::sync::Arc;

use loam_common::pb;
use prost::Message;

use crate::db::{DbError, Kv, Op, Table};
use crate::metainfo::ProjectId;

/// `(carry + quantity × rate) / per`, and the new carry; checked.
pub fn carried(carry: u64, quantity: u64, rate: u64, per: u64) -> Result<(u64, u64), DbError> {
    let total = u128::from(quantity)
        .checked_mul(u128::from(rate))
        .and_then(|p| p.checked_add(u128::from(carry)))
        .ok_or(DbError::Overflow("a charge"))?;
    let per = u128::from(per.max(1));
    let amount = u64::try_from(total / per).map_err(|_| DbError::Overflow("a charge"))?;
    Ok((amount, (total % per) as u64))
}

fn charge_key(project: &[u8], t: i64, job: &[u8], round: u32) -> Vec<u8> {
    let mut k = project.to_vec();
    k.extend_from_slice(&t.to_be_bytes());
    k.extend_from_slice(job);
    k.extend_from_slice(&round.to_be_bytes());
    k
}

fn earning_key(owner: &[u8], t: i64, job: &[u8], listing: &[u8]) -> Vec<u8> {
    let mut k = owner.to_vec();
    k.extend_from_slice(&t.to_be_bytes());
    k.extend_from_slice(job);
    k.extend_from_slice(listing);
    k
}

/// The writes that record one round's charges (nothing when it charged
/// nothing and used no listing).
pub fn record_ops(project: &[u8], charge: &pb::ChargeRecord) -> Vec<Op> {
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

fn time_of(key: &[u8]) -> Option<i64> {
    key.get(16..24)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_be_bytes)
}

/// A project's charges from `from` on, oldest first.
pub fn project_charges(
    kv: &Arc<dyn Kv>,
    project: &ProjectId,
    from: i64,
) -> Result<Vec<pb::ChargeRecord>, DbError> {
    let mut start = project.to_vec();
    start.extend_from_slice(&from.max(0).to_be_bytes());
    kv.scan(Table::Charges, project, &start, usize::MAX)?
        .into_iter()
        .map(|(_, v)| {
            pb::ChargeRecord::decode(v.as_slice()).map_err(|_| DbError::Corrupt("charge"))
        })
        .collect()
}

/// What a project was charged from `from` on.
pub fn project_total(kv: &Arc<dyn Kv>, project: &ProjectId, from: i64) -> Result<u64, DbError> {
    project_charges(kv, project, from)?
        .iter()
        .try_fold(0u64, |acc, c| acc.checked_add(c.total))
        .ok_or(DbError::Overflow("a project's charges"))
}

/// An owner's data fees, one per job, round and listing.
fn owner_fees(kv: &Arc<dyn Kv>, owner: &[u8]) -> Result<Vec<(i64, Vec<u8>, pb::DataFee)>, DbError> {
    kv.scan(Table::Earnings, owner, b"", usize::MAX)?
        .into_iter()
        .map(|(k, v)| {
            let fee =
                pb::DataFee::decode(v.as_slice()).map_err(|_| DbError::Corrupt("data fee"))?;
            let t = time_of(&k).ok_or(DbError::Corrupt("data fee key"))?;
            let job = k.get(24..40).unwrap_or_default().to_vec();
            Ok((t, job, fee))
        })
        .collect()
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
        let overflow = DbError::Overflow("an owner's earnings");
        self.sample_epochs = self
            .sample_epochs
            .checked_add(fee.sample_epochs)
            .ok_or(overflow)?;
        self.amount = self
            .amount
            .checked_add(fee.amount)
            .ok_or(DbError::Overflow("an owner's earnings"))?;
        self.downloads = self.downloads.saturating_add(fee.downloads);
        Ok(())
    }
}

/// What each owner earned in `[from, to)`.
pub fn owners_earned(
    kv: &Arc<dyn Kv>,
    from: i64,
    to: i64,
) -> Result<BTreeMap<ProjectId, Earned>, DbError> {
    let mut out: BTreeMap<ProjectId, Earned> = BTreeMap::new();
    crate::db::for_each_page(&**kv, Table::Earnings, b"", |page| {
        for (k, v) in page {
            let t = time_of(&k).ok_or(DbError::Corrupt("data fee key"))?;
            if t < from || t >= to {
                continue;
            }
            let owner = k
                .get(..16)
                .and_then(|b| ProjectId::try_from(b).ok())
                .ok_or(DbError::Corrupt("data fee key"))?;
            let fee =
                pb::DataFee::decode(v.as_slice()).map_err(|_| DbError::Corrupt("data fee"))?;
            out.entry(owner).or_default().add(&fee)?;
        }
        Ok(())
    })?;
    Ok(out)
}

/// What one owner earned from `since` on, and per listing over all time
/// (with the jobs that used each); one scan.
pub fn owner_earned(
    kv: &Arc<dyn Kv>,
    owner: &ProjectId,
    since: i64,
) -> Result<(Earned, BTreeMap<Vec<u8>, Earned>), DbError> {
    let mut all = Earned::default();
    let mut per: BTreeMap<Vec<u8>, Earned> = BTreeMap::new();
    let mut jobs: BTreeMap<Vec<u8>, std::collections::BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (t, job, fee) in owner_fees(kv, owner)? {
        if t >= since {
            all.add(&fee)?;
        }
        per.entry(fee.listing_id.to_vec()).or_default().add(&fee)?;
        if fee.downloads == 0 {
            jobs.entry(fee.listing_id.to_vec()).or_default().insert(job);
        }
    }
    for (listing, e) in per.iter_mut() {
        e.jobs = jobs.get(listing).map_or(0, |j| j.len() as u64);
    }
    Ok((all, per))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remainders_carry_so_a_job_pays_the_whole_fee() {
        // 7 sample-epochs at 50 per 1 000, three rounds: 1 050 / 1 000 = 1
        // in all (3 × 0.35 would be 0 each when floored per round).
        let mut carry = 0;
        let mut paid = 0;
        for _ in 0..3 {
            let (amount, c) = carried(carry, 7, 50, 1000).expect("fits");
            paid += amount;
            carry = c;
        }
        assert_eq!((paid, carry), (1, 50));
        assert!(
            carried(0, u64::MAX, u64::MAX, 1).is_err(),
            "refused, not wrapped"
        );
        assert_eq!(carried(999, 1, 1, 1000).expect("fits"), (1, 0));
    }
}
