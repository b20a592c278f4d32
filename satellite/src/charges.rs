//! What projects are charged for their jobs and what data owners earn from
//! them, round by round.
//!
//! Every finished round of a job writes one [`loam_common::pb::ChargeRecord`] for the
//! job's project (the data fees of each listing it used, the compute of its
//! accepted first runs, the piece bytes its training runs fetched) and one
//! [`loam_common::pb::DataFee`] per listing for the listing's owner, in the same batch as
//! the round's weights. The owner's side is the consumer's side, entry for
//! entry, so the two always reconcile to the unit; payouts read the owners'
//! side per period.
//!
//! Amounts are integers. A fee that does not come out whole carries its
//! remainder (thousandths of a unit for data fees, millionths for compute)
//! to the job's next round, so over a whole job each listing earns exactly
//! `floor(sample-epochs × price / 1000)`.
//!
//! Where charges and fees are stored: [`crate::satellitedb::charges`].

use crate::db::DbError;

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
