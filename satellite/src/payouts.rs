//! Payouts: per period, what each node earned for storage, egress, repair
//! and audit egress, ingress and compute work, less the held-back share,
//! in integer base units of the payout token; written as paystubs (and
//! later payments) to each node's hash-chained, signed ledger
//! ([`loam_common::ledger`]).
//!
//! Rates are base units per TB-month, per TB and per work unit; every
//! amount is `floor(quantity × rate / unit)` in 128-bit integers, so the
//! figures are exact and the export sums to the paystubs.

use std::sync::Arc;

use loam_common::ledger;
use loam_common::orders::now_ms;
use loam_common::{Identity, NodeId, pb};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::db::{DbError, Kv};
use crate::metainfo::{self, Metainfo};
use crate::overlay::{Node, Overlay};
use crate::satellitedb::charges::ChargeStore;
use crate::satellitedb::payouts::{PayoutBatch, PayoutStore, entry_seq};

/// The `[payouts]` table of the satellite's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PayoutConfig {
    /// Length of a payout period in seconds; 0 means calendar months (UTC).
    pub period_secs: f64,
    /// Decimals of the payout token: amounts are in units of 10^-decimals.
    /// Default 6.
    pub token_decimals: u32,
    /// Base units per TB-month stored (720 hours). Default 1 500 000
    /// ($1.50 with 6 decimals).
    pub storage_per_tb_month: u64,
    /// Base units per TB of download egress. Default 20 000 000 ($20).
    pub egress_per_tb: u64,
    /// Base units per TB of repair and audit egress. Default 10 000 000
    /// ($10).
    pub repair_audit_per_tb: u64,
    /// Base units per TB of ingress (uploads and repair uploads). Default 0.
    pub ingress_per_tb: u64,
    /// Base units per compute work unit. Default 1 ($0.000001).
    pub per_work_unit: u64,
    /// Seconds after a period's end before its payouts can be computed,
    /// so the orders of its last windows have been settled. Default 86400.
    pub settle_delay_secs: f64,
}

impl Default for PayoutConfig {
    fn default() -> Self {
        Self {
            period_secs: 0.0,
            token_decimals: 6,
            storage_per_tb_month: 1_500_000,
            egress_per_tb: 20_000_000,
            repair_audit_per_tb: 10_000_000,
            ingress_per_tb: 0,
            per_work_unit: 1,
            settle_delay_secs: 86_400.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayoutError {
    #[error(
        "unknown period {0:?}: use YYYY-MM (monthly periods), the start as \
         YYYY-MM-DDTHH:MM:SSZ (shorter periods), or \"last\""
    )]
    BadPeriod(String),
    #[error("period {0} has not ended yet")]
    Open(String),
    #[error(
        "period {0} ended, but its last orders may still be settling: payouts can be computed \
         from {1} (settle_delay_secs after its end)"
    )]
    Settling(String, String),
    #[error("payouts for period {0} were not computed yet; run `satellite payouts compute`")]
    NotComputed(String),
    #[error("payments for period {0} were already recorded")]
    AlreadyPaid(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("ledger: {0}")]
    Ledger(#[from] ledger::LedgerError),
    #[error("an amount in the payouts of period {0} does not fit in 64 bits; nothing was recorded")]
    Overflow(String),
    #[error("{0}")]
    Lookup(String),
}

impl PayoutError {
    pub fn code(&self) -> pb::ErrorCode {
        match self {
            Self::BadPeriod(_) => pb::ErrorCode::InvalidArgument,
            Self::Open(_) | Self::Settling(..) | Self::NotComputed(_) | Self::AlreadyPaid(_) => {
                pb::ErrorCode::FailedPrecondition
            }
            Self::Db(_) | Self::Ledger(_) | Self::Overflow(_) | Self::Lookup(_) => {
                pb::ErrorCode::Internal
            }
        }
    }
}

/// One payout period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub name: String,
    /// Sequence number: months since 1970-01, or periods since the epoch.
    pub index: i64,
    pub start: i64,
    pub end: i64,
}

/// Held-back share by node age in periods (Storj's schedule).
pub fn held_percent(age: u32) -> u32 {
    match age {
        0..=3 => 75,
        4..=6 => 50,
        7..=9 => 25,
        _ => 0,
    }
}

/// The age at which half of the held total is paid back.
pub const HELD_RETURN_AGE: u32 = 15;

const TB: u128 = 1_000_000_000_000;
const HOURS_PER_MONTH: u128 = 720;

/// What a node did in a period, the input of a paystub.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub byte_hours: u64,
    pub egress: u64,
    pub repair_egress: u64,
    pub audit_egress: u64,
    pub ingress: u64,
    pub work_micro_units: u64,
}

/// A node's standing for a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    pub age_periods: u32,
    /// Held back so far and not yet returned or forfeited.
    pub held_balance: u64,
    pub disqualified: bool,
    pub exited: bool,
}

impl PayoutConfig {
    fn period_ms(&self) -> Option<i64> {
        (self.period_secs > 0.0).then(|| ((self.period_secs * 1000.0) as i64).max(1))
    }

    /// The period containing `t`.
    pub fn period_at(&self, t: i64) -> Period {
        match self.period_ms() {
            None => {
                let name = metainfo::month_of(t);
                let (start, end) = metainfo::month_range(&name).expect("valid month");
                let (y, m) = name.split_once('-').expect("YYYY-MM");
                let index = (y.parse::<i64>().unwrap_or(1970) - 1970) * 12
                    + m.parse::<i64>().unwrap_or(1)
                    - 1;
                Period {
                    name,
                    index,
                    start,
                    end,
                }
            }
            Some(p) => {
                let index = t.div_euclid(p);
                let start = index * p;
                Period {
                    name: format_instant(start),
                    index,
                    start,
                    end: start + p,
                }
            }
        }
    }

    /// Parses a period name, or `last` (the latest period whose payouts can
    /// be computed: ended at least `settle_delay_secs` ago).
    pub fn parse_period(&self, s: &str, now: i64) -> Result<Period, PayoutError> {
        let bad = || PayoutError::BadPeriod(s.to_string());
        if s == "last" {
            let current = self.period_at(now - (self.settle_delay_secs * 1000.0) as i64);
            return Ok(self.period_at(current.start - 1));
        }
        let start = match self.period_ms() {
            None => metainfo::month_range(s).ok_or_else(bad)?.0,
            Some(_) => parse_instant(s).ok_or_else(bad)?,
        };
        let p = self.period_at(start);
        if p.start != start {
            return Err(bad());
        }
        Ok(p)
    }

    /// The paystub of one node: exact integer arithmetic throughout, every
    /// step checked; a figure that does not fit is an error, never a
    /// wrapped or truncated amount.
    pub fn paystub(
        &self,
        period: &Period,
        wallet: &str,
        u: &Usage,
        s: Standing,
    ) -> Result<pb::Paystub, PayoutError> {
        let overflow = || PayoutError::Overflow(period.name.clone());
        let amount = |quantity: u64, rate: u64, per: u128| -> Result<u64, PayoutError> {
            let product = u128::from(quantity)
                .checked_mul(u128::from(rate))
                .ok_or_else(overflow)?;
            u64::try_from(product / per).map_err(|_| overflow())
        };
        let storage_amount = amount(
            u.byte_hours,
            self.storage_per_tb_month,
            TB * HOURS_PER_MONTH,
        )?;
        let egress_amount = amount(u.egress, self.egress_per_tb, TB)?;
        let repair_audit_amount = amount(
            u.repair_egress
                .checked_add(u.audit_egress)
                .ok_or_else(overflow)?,
            self.repair_audit_per_tb,
            TB,
        )?;
        let ingress_amount = amount(u.ingress, self.ingress_per_tb, TB)?;
        let compute_amount = amount(u.work_micro_units, self.per_work_unit, 1_000_000)?;
        let gross = [
            storage_amount,
            egress_amount,
            repair_audit_amount,
            ingress_amount,
            compute_amount,
        ]
        .into_iter()
        .try_fold(0u64, u64::checked_add)
        .ok_or_else(overflow)?;
        let pct = held_percent(s.age_periods);
        let held = amount(gross, u64::from(pct), 100)?;
        let (held_returned, held_forfeited, paid) = if s.disqualified {
            (0, s.held_balance.checked_add(held).ok_or_else(overflow)?, 0)
        } else {
            let returned = if s.exited {
                s.held_balance.checked_add(held).ok_or_else(overflow)?
            } else if s.age_periods == HELD_RETURN_AGE {
                s.held_balance / 2
            } else {
                0
            };
            let paid = (gross - held).checked_add(returned).ok_or_else(overflow)?;
            (returned, 0, paid)
        };
        Ok(pb::Paystub {
            period: period.name.clone(),
            period_start_unix_ms: period.start,
            period_end_unix_ms: period.end,
            wallet: wallet.to_string(),
            storage_byte_hours: u.byte_hours,
            egress_bytes: u.egress,
            repair_egress_bytes: u.repair_egress,
            audit_egress_bytes: u.audit_egress,
            ingress_bytes: u.ingress,
            work_micro_units: u.work_micro_units,
            storage_amount,
            egress_amount,
            repair_audit_amount,
            ingress_amount,
            compute_amount,
            gross,
            age_periods: s.age_periods,
            held_percent: pct,
            held,
            held_returned,
            held_forfeited,
            disqualified: s.disqualified,
            exited: s.exited,
            paid,
            ..Default::default()
        })
    }
}

pub use loam_common::time::format_instant;

fn parse_instant(s: &str) -> Option<i64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let (month, day) = date.rsplit_once('-')?;
    let (start, end) = metainfo::month_range(month)?;
    let day: i64 = day.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some()
        || !(0..24).contains(&h)
        || !(0..60).contains(&m)
        || !(0..60).contains(&sec)
    {
        return None;
    }
    let t = start + (day - 1) * 86_400_000 + (h * 3600 + m * 60 + sec) * 1000;
    (day >= 1 && t < end).then_some(t)
}

pub struct Payouts {
    identity: Identity,
    overlay: Arc<Overlay>,
    metainfo: Arc<Metainfo>,
    config: PayoutConfig,
    /// Ledgers, paystubs and period markers.
    store: PayoutStore,
    /// The owners' data fees (and the projects' charges beside them).
    charges: ChargeStore,
}

impl Payouts {
    pub fn new(
        kv: Arc<dyn Kv>,
        identity: Identity,
        overlay: Arc<Overlay>,
        metainfo: Arc<Metainfo>,
        config: PayoutConfig,
    ) -> Self {
        Self {
            store: PayoutStore::new(kv.clone()),
            charges: ChargeStore::new(kv),
            identity,
            overlay,
            metainfo,
            config,
        }
    }

    pub fn config(&self) -> &PayoutConfig {
        &self.config
    }

    /// Projects' charges and owners' earnings.
    pub fn charges(&self) -> &ChargeStore {
        &self.charges
    }

    /// A data owner's ledger, what it earned since its last paystub, and
    /// what each of its listings earned.
    pub fn owner_earnings(
        &self,
        project: &metainfo::ProjectId,
    ) -> Result<pb::EarningsResponse, PayoutError> {
        let payee = ledger::project_payee(project);
        let ledger = self.ledger_response(&payee, 0)?;
        let mut paid_until = 0;
        for e in &ledger.entries {
            if let Ok(pb::LedgerEntry {
                body: Some(pb::ledger_entry::Body::Paystub(p)),
                ..
            }) = pb::LedgerEntry::decode(e.entry.as_ref())
            {
                paid_until = paid_until.max(p.period_end_unix_ms);
            }
        }
        let (unpaid, per) = self.charges.owner_earned(project, paid_until)?;
        let mut listings = Vec::new();
        for rec in self
            .metainfo
            .market()
            .owned(project)
            .map_err(|e| PayoutError::Lookup(e.to_string()))?
        {
            let l = rec.listing.unwrap_or_default();
            let e = per.get(l.id.as_ref()).copied().unwrap_or_default();
            listings.push(pb::ListingUsageResponse {
                jobs: l.jobs,
                listing: Some(l),
                sample_epochs: e.sample_epochs,
                earned: e.amount,
            });
        }
        let address = self
            .metainfo
            .project_record(project)
            .map_err(|e| PayoutError::Lookup(e.to_string()))?
            .payout_address;
        Ok(pb::EarningsResponse {
            payee_id: payee.as_bytes().to_vec().into(),
            payout_address: address,
            ledger: Some(ledger),
            unpaid: unpaid.amount,
            listings,
        })
    }

    /// The ledger from `since` and the signed head of the whole chain (as
    /// it stood at its last entry read; entries are never changed).
    pub fn ledger_response(
        &self,
        node: &NodeId,
        since: u64,
    ) -> Result<pb::LedgerResponse, PayoutError> {
        let tail = self.store.tail(node)?;
        let mut entries = Vec::new();
        let count = match &tail {
            Some(t) => {
                let last = entry_seq(t)?;
                self.store.for_each_entry(node, since, last, |e| {
                    entries.push(e);
                    Ok(())
                })?;
                last + 1
            }
            None => 0,
        };
        let head = ledger::sign_head(&self.identity, node, tail.as_ref(), count, now_ms());
        Ok(pb::LedgerResponse {
            entries,
            head: Some(head),
            satellite_public_key: self.identity.public().as_bytes().to_vec().into(),
        })
    }

    fn append(
        &self,
        node: &NodeId,
        body: pb::ledger_entry::Body,
        batch: &mut PayoutBatch,
        tails: &mut std::collections::HashMap<NodeId, pb::SignedLedgerEntry>,
    ) -> Result<(), PayoutError> {
        let prev = match tails.get(node) {
            Some(p) => Some(p.clone()),
            None => self.store.tail(node)?,
        };
        let entry = ledger::append(&self.identity, node, prev.as_ref(), body, now_ms())?;
        // Written only where its sequence number is free: another process
        // appending first fails the batch whole and the chain never forks.
        batch.append(node, entry_seq(&entry)?, &entry);
        tails.insert(*node, entry);
        Ok(())
    }

    /// Appends `stub` to `payee`'s ledger and stores it as the period's
    /// paystub (in `ops`, written together).
    fn issue(
        &self,
        period: &Period,
        payee: NodeId,
        stub: pb::Paystub,
        batch: &mut PayoutBatch,
        tails: &mut std::collections::HashMap<NodeId, pb::SignedLedgerEntry>,
        out: &mut Vec<(NodeId, pb::Paystub)>,
    ) -> Result<(), PayoutError> {
        self.append(
            &payee,
            pb::ledger_entry::Body::Paystub(stub.clone()),
            batch,
            tails,
        )?;
        batch.put_paystub(period.start, &payee, &stub);
        out.push((payee, stub));
        Ok(())
    }

    /// Held back from `node` so far and not yet returned or forfeited.
    fn held_balance(&self, node: &NodeId) -> Result<u64, DbError> {
        let mut balance: u64 = 0;
        self.store.for_each_entry(node, 0, u64::MAX, |e| {
            let Ok(e) = pb::LedgerEntry::decode(e.entry.as_ref()) else {
                return Err(DbError::Corrupt("ledger entry"));
            };
            if let Some(pb::ledger_entry::Body::Paystub(p)) = e.body {
                balance = (balance + p.held).saturating_sub(p.held_returned + p.held_forfeited);
            }
            Ok(())
        })?;
        Ok(balance)
    }

    /// What `node` did in `period`.
    pub fn usage(&self, node: &NodeId, period: &Period) -> Result<Usage, DbError> {
        let bw = self
            .metainfo
            .orders()
            .node_bandwidth(node, period.start, period.end)?;
        let stored = self.metainfo.orders().accounting();
        let byte_ms = stored.node_byte_ms(node, period.start, period.end)?;
        Ok(Usage {
            byte_hours: u64::try_from(byte_ms / 3_600_000)
                .map_err(|_| DbError::Overflow("storage byte-hours"))?,
            egress: bw.get,
            repair_egress: bw.get_repair,
            audit_egress: bw.get_audit,
            ingress: bw.put + bw.put_repair,
            work_micro_units: stored.node_work(node, period.start, period.end)?,
        })
    }

    fn standing(&self, node: &Node, period: &Period) -> Result<Standing, DbError> {
        let created = self.config.period_at(node.created_ms);
        Ok(Standing {
            age_periods: (period.index - created.index + 1).clamp(1, i64::from(u32::MAX)) as u32,
            held_balance: self.held_balance(&node.id)?,
            disqualified: node.disqualified_ms.is_some_and(|t| t < period.end),
            exited: node
                .exit_finished_ms
                .is_some_and(|t| t >= period.start && t < period.end),
        })
    }

    /// The paystubs of `period` (computed earlier), by node.
    pub fn paystubs(&self, period: &Period) -> Result<Vec<(NodeId, pb::Paystub)>, DbError> {
        self.store.paystubs(period.start)
    }

    /// Computes the paystubs of an ended period and appends them to the
    /// nodes' ledgers. Computing a period again returns what was computed.
    pub fn compute(
        &self,
        period: &Period,
        now: i64,
    ) -> Result<Vec<(NodeId, pb::Paystub)>, PayoutError> {
        if period.end > now {
            return Err(PayoutError::Open(period.name.clone()));
        }
        let ready = period.end + (self.config.settle_delay_secs * 1000.0) as i64;
        if ready > now && !self.is_computed(period)? {
            return Err(PayoutError::Settling(
                period.name.clone(),
                format_instant(ready),
            ));
        }
        if self.is_computed(period)? {
            return Ok(self.paystubs(period)?);
        }
        let mut batch = PayoutBatch::new();
        let mut tails = std::collections::HashMap::new();
        let mut out = Vec::new();
        for node in self.overlay.list() {
            if node.created_ms >= period.end {
                continue;
            }
            let usage = self.usage(&node.id, period)?;
            let standing = self.standing(&node, period)?;
            let mut stub = self
                .config
                .paystub(period, &node.wallet, &usage, standing)?;
            stub.payee_kind = "node".into();
            if stub.gross == 0 && stub.held_returned == 0 && stub.held_forfeited == 0 {
                continue;
            }
            self.issue(period, node.id, stub, &mut batch, &mut tails, &mut out)?;
        }
        // Data owners: their listings' fees, all paid (nothing held back:
        // an owner stores nothing and can vanish with nothing owed).
        for (owner, earned) in self.charges.owners_earned(period.start, period.end)? {
            if earned.amount == 0 && earned.sample_epochs == 0 {
                continue;
            }
            let payee = ledger::project_payee(&owner);
            let project = self
                .metainfo
                .project_record(&owner)
                .map_err(|e| PayoutError::Lookup(e.to_string()))?;
            let stub = pb::Paystub {
                period: period.name.clone(),
                period_start_unix_ms: period.start,
                period_end_unix_ms: period.end,
                wallet: project.payout_address,
                data_sample_epochs: earned.sample_epochs,
                data_amount: earned.amount,
                gross: earned.amount,
                paid: earned.amount,
                age_periods: 1,
                payee_kind: "owner".into(),
                payee_name: project.name,
                ..Default::default()
            };
            self.issue(period, payee, stub, &mut batch, &mut tails, &mut out)?;
        }
        // An empty period still counts as computed; computed once, however
        // many processes are asked at once (the others find its paystubs).
        batch.mark_computed(period.start, now);
        match self.store.write(batch) {
            Ok(()) => {}
            Err(DbError::Conflict) if self.is_computed(period)? => {
                return Ok(self.paystubs(period)?);
            }
            Err(e) => return Err(e.into()),
        }
        metrics::counter!("loam_satellite_paystubs_total").increment(out.len() as u64);
        Ok(out)
    }

    pub fn is_computed(&self, period: &Period) -> Result<bool, DbError> {
        self.store.is_computed(period.start)
    }

    /// Records that the period's payouts were sent (one payment entry per
    /// node with something to pay). Returns how many.
    pub fn record_payment(&self, period: &Period, reference: &str) -> Result<u32, PayoutError> {
        if !self.is_computed(period)? {
            return Err(PayoutError::NotComputed(period.name.clone()));
        }
        if self.store.is_paid(period.start)? {
            return Err(PayoutError::AlreadyPaid(period.name.clone()));
        }
        let mut batch = PayoutBatch::new();
        let mut tails = std::collections::HashMap::new();
        let mut n = 0;
        for (node, stub) in self.paystubs(period)? {
            if stub.paid == 0 {
                continue;
            }
            self.append(
                &node,
                pb::ledger_entry::Body::Payment(pb::Payment {
                    period: period.name.clone(),
                    wallet: stub.wallet.clone(),
                    amount: stub.paid,
                    reference: reference.to_string(),
                }),
                &mut batch,
                &mut tails,
            )?;
            n += 1;
        }
        // Paid once, however many processes are asked at once.
        batch.mark_paid(period.start, reference);
        match self.store.write(batch) {
            Ok(()) => Ok(n),
            Err(DbError::Conflict) if self.store.is_paid(period.start)? => {
                Err(PayoutError::AlreadyPaid(period.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_and_name_themselves() {
        let monthly = PayoutConfig::default();
        let p = monthly.parse_period("2026-02", 0).expect("month");
        assert_eq!(p.name, "2026-02");
        assert_eq!(p.end - p.start, 28 * 86_400_000);
        assert_eq!(
            monthly.period_at(p.start).index + 1,
            monthly.period_at(p.end).index
        );
        assert!(monthly.parse_period("2026-13", 0).is_err());
        let now = metainfo::month_range("2026-11").expect("month").0 + 2 * 86_400_000;
        assert_eq!(
            monthly.parse_period("last", now).expect("last").name,
            "2026-10"
        );

        let short = PayoutConfig {
            period_secs: 120.0,
            ..PayoutConfig::default()
        };
        let p = short.period_at(1_795_000_000_000);
        assert_eq!(p.end - p.start, 120_000);
        assert_eq!(short.parse_period(&p.name, 0).expect("round trip"), p);
        assert!(
            short.parse_period("2026-11-25T07:31:00Z", 0).is_err(),
            "not aligned"
        );
    }

    fn stub(c: &PayoutConfig, p: &Period, w: &str, u: &Usage, s: Standing) -> pb::Paystub {
        c.paystub(p, w, u, s).expect("amounts fit")
    }

    #[test]
    fn amounts_that_do_not_fit_are_refused_not_wrapped() {
        let c = PayoutConfig::default();
        let period = c.parse_period("2026-10", 0).expect("period");
        let huge = Usage {
            work_micro_units: u64::MAX,
            ..Default::default()
        };
        // u64::MAX micro-units at 1 per unit: fits.
        assert!(
            c.paystub(&period, "0xw", &huge, Standing::default())
                .is_ok()
        );
        let rich = PayoutConfig {
            per_work_unit: 2_000_000,
            ..PayoutConfig::default()
        };
        let e = rich.paystub(&period, "0xw", &huge, Standing::default());
        assert!(matches!(e, Err(PayoutError::Overflow(_))), "{e:?}");
        // Components that each fit but whose sum does not.
        let both = Usage {
            work_micro_units: u64::MAX,
            egress: 1_000_000_000_000,
            ..Default::default()
        };
        let at_par = PayoutConfig {
            per_work_unit: 1_000_000,
            ..PayoutConfig::default()
        };
        let e = at_par.paystub(&period, "0xw", &both, Standing::default());
        assert!(matches!(e, Err(PayoutError::Overflow(_))), "{e:?}");
        // A held balance that would overflow when returned.
        let e = c.paystub(
            &period,
            "0xw",
            &Usage {
                egress: 1_000_000_000_000,
                ..Default::default()
            },
            Standing {
                age_periods: 1,
                held_balance: u64::MAX,
                exited: true,
                ..Default::default()
            },
        );
        assert!(matches!(e, Err(PayoutError::Overflow(_))), "{e:?}");
    }

    /// A constructed scenario, every figure computed by hand.
    #[test]
    fn paystubs_match_hand_computed_figures() {
        let c = PayoutConfig::default();
        let period = c.parse_period("2026-10", 0).expect("period");
        // 2 TB for the whole month (720 h), 500 GB egress, 100 GB repair
        // and 10 GB audit egress, 3 TB ingress, 1.5 M work units.
        let usage = Usage {
            byte_hours: 2 * 1_000_000_000_000 * 720,
            egress: 500_000_000_000,
            repair_egress: 100_000_000_000,
            audit_egress: 10_000_000_000,
            ingress: 3_000_000_000_000,
            work_micro_units: 1_500_000 * 1_000_000,
        };
        // Storage: 2 TB-months x 1.50 = 3.00 -> 3 000 000.
        // Egress: 0.5 TB x 20 = 10.00 -> 10 000 000.
        // Repair + audit: 0.11 TB x 10 = 1.10 -> 1 100 000.
        // Ingress: free. Compute: 1.5 M units x 1 = 1 500 000.
        // Gross 15 600 000.
        let young = stub(
            &c,
            &period,
            "0xw",
            &usage,
            Standing {
                age_periods: 2,
                held_balance: 0,
                ..Default::default()
            },
        );
        assert_eq!(
            (
                young.storage_amount,
                young.egress_amount,
                young.repair_audit_amount,
                young.ingress_amount,
                young.compute_amount,
                young.gross
            ),
            (3_000_000, 10_000_000, 1_100_000, 0, 1_500_000, 15_600_000)
        );
        // Month 2: 75 % held -> 11 700 000 held, 3 900 000 paid.
        assert_eq!(
            (young.held_percent, young.held, young.paid),
            (75, 11_700_000, 3_900_000)
        );
        // Month 5: 50 %.
        let s5 = stub(
            &c,
            &period,
            "0xw",
            &usage,
            Standing {
                age_periods: 5,
                ..Default::default()
            },
        );
        assert_eq!((s5.held, s5.paid), (7_800_000, 7_800_000));
        // Month 8: 25 %.
        let s8 = stub(
            &c,
            &period,
            "0xw",
            &usage,
            Standing {
                age_periods: 8,
                ..Default::default()
            },
        );
        assert_eq!((s8.held, s8.paid), (3_900_000, 11_700_000));
        // Month 15: nothing held, half of a 30 000 001 balance returned
        // (rounded down).
        let s15 = stub(
            &c,
            &period,
            "0xw",
            &usage,
            Standing {
                age_periods: 15,
                held_balance: 30_000_001,
                ..Default::default()
            },
        );
        assert_eq!(
            (s15.held, s15.held_returned, s15.paid),
            (0, 15_000_000, 30_600_000)
        );
        // Graceful exit in month 4: this month's held share and the whole
        // balance are paid.
        let exit = stub(
            &c,
            &period,
            "0xw",
            &usage,
            Standing {
                age_periods: 4,
                held_balance: 20_000_000,
                exited: true,
                ..Default::default()
            },
        );
        assert_eq!(
            (exit.held, exit.held_returned, exit.paid),
            (7_800_000, 27_800_000, 35_600_000)
        );
        // Disqualified: nothing paid, everything held forfeited.
        let dq = stub(
            &c,
            &period,
            "0xw",
            &usage,
            Standing {
                age_periods: 6,
                held_balance: 20_000_000,
                disqualified: true,
                ..Default::default()
            },
        );
        assert_eq!(
            (dq.paid, dq.held_returned, dq.held_forfeited),
            (0, 0, 27_800_000)
        );
        // Rounding is down, per component: 1 byte-hour earns nothing, 1 TB
        // of egress minus one byte earns 19 999 999.
        let tiny = stub(
            &c,
            &period,
            "0xw",
            &Usage {
                byte_hours: 1,
                egress: 999_999_999_999,
                ..Default::default()
            },
            Standing {
                age_periods: 12,
                ..Default::default()
            },
        );
        assert_eq!(
            (tiny.storage_amount, tiny.egress_amount, tiny.paid),
            (0, 19_999_999, 19_999_999)
        );
    }
}
