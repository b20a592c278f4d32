//! Audits and reputation.
//!
//! Each cycle the auditor samples, per node, a few of the pieces the
//! metadata places on it (reservoir sampling over one pass of the segments,
//! so a node with few pieces is audited as often as one with many), asks
//! the node for one random leaf of each with its Merkle proof under a
//! GET_AUDIT order limit, and checks the proof against the piece's
//! committed root. A wrong or missing answer is a failed audit; an
//! unreachable node is an offline audit, which counts for the online score
//! only.
//!
//! Reputation is Storj's beta model: after each audit
//! `α ← λα + w·success`, `β ← λβ + w·failure`; the audit score is
//! `α / (α + β)` and a node is disqualified, for good, when it falls to the
//! threshold. Failed compute verifications count as failed audits.
//!
//! Two more scores can suspend a node (no new pieces or compute tasks, its
//! pieces still count) rather than disqualify it at once:
//!
//! - the *unknown-audit score*, a second beta model over audits the node
//!   answered with an error other than "piece not found" (a failing disk,
//!   a bug): suspended below `suspend_threshold`, disqualified if still
//!   suspended after `suspension_grace_secs`. Such an answer also puts the
//!   node in containment: the same challenge is asked again, and a node
//!   that still cannot produce the leaf after `max_reverifies` retries
//!   fails the audit, whatever error it gives (otherwise "internal error"
//!   would hide lost data);
//! - the *online score*, the decayed share of observations that found the
//!   node online: every online-tracking cycle looks at its last check-in,
//!   and every audit contact counts too. Suspended below
//!   `offline_threshold` (once there are `online_min_observations`),
//!   disqualified if still suspended after `offline_review_secs`.
//!
//! Both suspensions lift by themselves when the score recovers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use loam_common::merkle;
use loam_common::orders::{Order, OrderLimit, PieceAction, PieceId, now_ms};
use loam_common::transport::Endpoint as QuicEndpoint;
use loam_common::wire::{FrameReader, FrameWriter};
use loam_common::{KeyPair, NodeId, pb};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::db::{DbError, Kv};
use crate::metainfo::Metainfo;
use crate::overlay::Overlay;

/// The `[audit]` table of the satellite's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Seconds between audit cycles. Default 60.
    pub interval_secs: f64,
    /// Pieces audited per node per cycle. Default 1.
    pub per_node: usize,
    /// Beta-model forgetting factor λ. Default 0.999.
    pub lambda: f64,
    /// Weight w of one audit. Default 1.
    pub weight: f64,
    /// Initial α (a new node's benefit of the doubt). Default 1000.
    pub initial_alpha: f64,
    /// Disqualify at α/(α+β) at or below this. Default 0.96.
    pub dq_threshold: f64,
    /// Audits passed before a node is vetted. Default 100.
    pub vetting_audits: u64,
    /// Times a node that connects but does not answer is asked the same
    /// challenge again before the audit counts as failed. Default 3.
    pub max_reverifies: u32,
    /// Seconds a node has to answer an audit. Default 30.
    pub answer_timeout_secs: f64,
    /// Forgetting factor of the unknown-audit score. Default 0.95: a node
    /// is suspended after a few unknown errors in a row and recovers after
    /// a few good answers.
    pub unknown_lambda: f64,
    /// Suspend at an unknown-audit score below this. Default 0.6.
    pub suspend_threshold: f64,
    /// Seconds a node may stay suspended for unknown audits before it is
    /// disqualified. Default 7 days.
    pub suspension_grace_secs: f64,
    /// Seconds between online-tracking observations. Default 300.
    pub online_interval_secs: f64,
    /// Forgetting factor of the online score, per observation. Default
    /// 0.999 (about the last 1000 observations matter).
    pub online_lambda: f64,
    /// Suspend at an online score below this. Default 0.6.
    pub offline_threshold: f64,
    /// Observations before the online score can suspend. Default 100.
    pub online_min_observations: u64,
    /// Seconds a node may stay suspended for being offline before it is
    /// disqualified. Default 30 days.
    pub offline_review_secs: f64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            interval_secs: 60.0,
            per_node: 1,
            lambda: 0.999,
            weight: 1.0,
            initial_alpha: 1000.0,
            dq_threshold: 0.96,
            vetting_audits: 100,
            max_reverifies: 3,
            answer_timeout_secs: 30.0,
            unknown_lambda: 0.95,
            suspend_threshold: 0.6,
            suspension_grace_secs: 7.0 * 86_400.0,
            online_interval_secs: 300.0,
            online_lambda: 0.999,
            offline_threshold: 0.6,
            online_min_observations: 100,
            offline_review_secs: 30.0 * 86_400.0,
        }
    }
}

/// What an audit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The node could not be reached: no penalty to the audit score.
    Offline,
    /// The node connected but did not answer in time: containment.
    Stalled,
    /// The node answered with an error other than "not found": counts
    /// towards suspension, and puts the node in containment like a stall,
    /// so that an error answered again and again is a failed audit.
    Unknown,
}

impl AuditConfig {
    /// The beta model's step: the new reputation after `outcome`.
    pub fn update(&self, mut r: pb::Reputation, outcome: Outcome) -> pb::Reputation {
        if r.audits == 0 && r.audit_alpha == 0.0 && r.audit_beta == 0.0 {
            r.audit_alpha = self.initial_alpha;
        }
        if r.unknown_alpha == 0.0 && r.unknown_beta == 0.0 {
            r.unknown_alpha = 1.0;
        }
        match outcome {
            Outcome::Success | Outcome::Failure => {
                let ok = f64::from(u8::from(outcome == Outcome::Success));
                r.audit_alpha = self.lambda * r.audit_alpha + self.weight * ok;
                r.audit_beta = self.lambda * r.audit_beta + self.weight * (1.0 - ok);
                r.audits += 1;
                r.audits_failed += u64::from(outcome == Outcome::Failure);
                if outcome == Outcome::Success {
                    r.unknown_alpha = self.unknown_lambda * r.unknown_alpha + self.weight;
                    r.unknown_beta *= self.unknown_lambda;
                }
            }
            Outcome::Unknown => {
                r.unknown_alpha *= self.unknown_lambda;
                r.unknown_beta = self.unknown_lambda * r.unknown_beta + self.weight;
                r.audits_unknown += 1;
            }
            Outcome::Offline => r.audits_offline += 1,
            Outcome::Stalled => {}
        }
        r = self.observe_online(r, outcome != Outcome::Offline);
        r.vetted = r.audits - r.audits_failed >= self.vetting_audits;
        r
    }

    /// One online observation: a tracking cycle or an audit contact.
    pub fn observe_online(&self, mut r: pb::Reputation, online: bool) -> pb::Reputation {
        r.online_hits = self.online_lambda * r.online_hits + f64::from(u8::from(online));
        r.online_total = self.online_lambda * r.online_total + 1.0;
        r.online_observations += 1;
        r.online_score = self.online_score(&r);
        r
    }

    pub fn score(&self, r: &pb::Reputation) -> f64 {
        if r.audit_alpha + r.audit_beta <= 0.0 {
            return 1.0;
        }
        r.audit_alpha / (r.audit_alpha + r.audit_beta)
    }

    pub fn unknown_score(&self, r: &pb::Reputation) -> f64 {
        if r.unknown_alpha + r.unknown_beta <= 0.0 {
            return 1.0;
        }
        r.unknown_alpha / (r.unknown_alpha + r.unknown_beta)
    }

    pub fn online_score(&self, r: &pb::Reputation) -> f64 {
        if r.online_total <= 0.0 {
            return 1.0;
        }
        r.online_hits / r.online_total
    }

    pub fn disqualifies(&self, r: &pb::Reputation) -> bool {
        self.score(r) <= self.dq_threshold
    }

    /// Starts or lifts the two suspensions from the current scores, and
    /// says whether a suspension has outlasted its grace period (the node
    /// is to be disqualified).
    pub fn update_suspensions(&self, r: &mut pb::Reputation, now_ms: i64) -> bool {
        let since = |flag: bool, at: i64| {
            if flag {
                if at > 0 { at } else { now_ms }
            } else {
                0
            }
        };
        r.suspended_unix_ms = since(
            self.unknown_score(r) < self.suspend_threshold,
            r.suspended_unix_ms,
        );
        r.offline_suspended_unix_ms = since(
            r.online_observations >= self.online_min_observations
                && self.online_score(r) < self.offline_threshold,
            r.offline_suspended_unix_ms,
        );
        let outlasted = |at: i64, secs: f64| at > 0 && (now_ms - at) as f64 >= secs * 1000.0;
        outlasted(r.suspended_unix_ms, self.suspension_grace_secs)
            || outlasted(r.offline_suspended_unix_ms, self.offline_review_secs)
    }

    /// When the node became suspended, for either reason; 0 when it is not.
    pub fn suspended_since(r: &pb::Reputation) -> i64 {
        [r.suspended_unix_ms, r.offline_suspended_unix_ms]
            .into_iter()
            .filter(|&t| t > 0)
            .min()
            .unwrap_or(0)
    }

    /// The standing a node is told at check-in.
    pub fn standing(&self, r: &pb::Reputation) -> pb::NodeStanding {
        pb::NodeStanding {
            audit_score: self.score(r),
            online_score: self.online_score(r),
            unknown_score: self.unknown_score(r),
            vetted: r.vetted,
            suspended_unix_ms: r.suspended_unix_ms,
            offline_suspended_unix_ms: r.offline_suspended_unix_ms,
            disqualified_unix_ms: r.disqualified_unix_ms,
            dq_threshold: self.dq_threshold,
            suspend_threshold: self.suspend_threshold,
            offline_threshold: self.offline_threshold,
            audits: r.audits,
            audits_failed: r.audits_failed,
        }
    }
}

/// Per-node reputation in the satellite's database.
pub struct Reputation {
    store: crate::satellitedb::nodes::NodeStore,
    overlay: Arc<Overlay>,
    config: AuditConfig,
}

impl Reputation {
    pub fn new(kv: Arc<dyn Kv>, overlay: Arc<Overlay>, config: AuditConfig) -> Self {
        Self {
            store: crate::satellitedb::nodes::NodeStore::new(kv),
            overlay,
            config,
        }
    }

    pub fn get(&self, node: &NodeId) -> Result<pb::Reputation, DbError> {
        Ok(self
            .store
            .reputation(node)?
            .unwrap_or_else(|| self.initial()))
    }

    /// A node's record before its first audit.
    fn initial(&self) -> pb::Reputation {
        pb::Reputation {
            audit_alpha: self.config.initial_alpha,
            unknown_alpha: 1.0,
            online_score: 1.0,
            ..Default::default()
        }
    }

    pub fn config(&self) -> &AuditConfig {
        &self.config
    }

    /// One online-tracking cycle: every node that is neither disqualified
    /// nor gone is observed online or not from its last check-in. Returns
    /// (observed, online).
    pub fn track_online(&self, now_ms: i64) -> Result<(usize, usize), DbError> {
        let mut counts = (0, 0);
        for node in self.overlay.list() {
            if node.disqualified_ms.is_some() || node.exit_finished_ms.is_some() {
                continue;
            }
            let online = self.overlay.is_online(&node, now_ms);
            self.modify(&node.id, now_ms, |c, r| c.observe_online(r, online))?;
            counts.0 += 1;
            counts.1 += usize::from(online);
        }
        metrics::gauge!("loam_satellite_nodes_suspended").set(
            self.overlay
                .list()
                .iter()
                .filter(|n| n.suspended_ms.is_some() && n.disqualified_ms.is_none())
                .count() as f64,
        );
        Ok(counts)
    }

    /// Read-modify-write of one node's record, then suspension,
    /// disqualification and vetting follow from the new scores.
    fn modify(
        &self,
        node: &NodeId,
        now_ms: i64,
        mut f: impl FnMut(&AuditConfig, pb::Reputation) -> pb::Reputation,
    ) -> Result<pb::Reputation, DbError> {
        // One transaction on the record (audits and compute verification
        // in several satellite processes may score one node at once); the
        // overlay changes that follow are idempotent, so a retry repeats
        // them harmlessly.
        self.store.update_reputation(node, |stored| {
            let mut r = f(&self.config, stored.unwrap_or_else(|| self.initial()));
            self.settle(node, &mut r, now_ms)?;
            Ok(r)
        })
    }

    /// Applies what the scores in `r` imply to the overlay.
    fn settle(&self, node: &NodeId, r: &mut pb::Reputation, now: i64) -> Result<(), DbError> {
        if r.vetted {
            self.overlay.set_vetted(node)?;
        }
        let outlasted = self.config.update_suspensions(r, now);
        self.overlay
            .set_suspended(node, AuditConfig::suspended_since(r))?;
        if (self.config.disqualifies(r) || outlasted) && r.disqualified_unix_ms == 0 {
            r.disqualified_unix_ms = now;
            self.overlay.disqualify(node, now)?;
        }
        Ok(())
    }

    /// Applies one audit (or audit-like) outcome; disqualifies the node
    /// when its score falls to the threshold.
    pub fn record(&self, node: &NodeId, outcome: Outcome) -> Result<pb::Reputation, DbError> {
        self.record_audit(node, outcome, None)
    }

    /// Like [`Reputation::record`], for an audit of `challenge`: a stall
    /// or an error answer puts the node in containment (same challenge
    /// next time) until it has failed to produce the leaf more than
    /// `max_reverifies` times, which is a failure; the leaf (right or
    /// wrong) ends containment.
    pub fn record_audit(
        &self,
        node: &NodeId,
        outcome: Outcome,
        challenge: Option<pb::PendingAudit>,
    ) -> Result<pb::Reputation, DbError> {
        let now = now_ms();
        let r = self.modify(node, now, |config, mut r| {
            let outcome = match outcome {
                // No leaf for a piece the node acknowledged, whatever the
                // reason it gives: the same challenge again, then a failure.
                Outcome::Stalled | Outcome::Unknown => {
                    let attempts = r.pending.as_ref().map_or(0, |p| p.attempts) + 1;
                    if attempts > self.config.max_reverifies {
                        r.pending = None;
                        metrics::counter!("loam_satellite_audit_containment_failures_total")
                            .increment(1);
                        Outcome::Failure
                    } else {
                        let base = r
                            .pending
                            .clone()
                            .or_else(|| challenge.clone())
                            .unwrap_or_default();
                        r.pending = Some(pb::PendingAudit { attempts, ..base });
                        outcome
                    }
                }
                Outcome::Offline => outcome,
                Outcome::Success | Outcome::Failure => {
                    r.pending = None;
                    outcome
                }
            };
            metrics::counter!("loam_satellite_audits_total", "result" => match outcome {
                Outcome::Success => "success",
                Outcome::Failure => "failure",
                Outcome::Offline => "offline",
                Outcome::Stalled => "contained",
                Outcome::Unknown => "unknown",
            })
            .increment(1);
            config.update(r, outcome)
        })?;
        Ok(r)
    }
}

/// A piece picked for an audit.
#[derive(Clone)]
struct Sample {
    piece_id: PieceId,
    root: [u8; 32],
    size: u64,
    /// The leaf of a contained audit; a random one otherwise.
    leaf: Option<u64>,
}

/// What an audit of each of a segment's pieces checks: (node, piece id,
/// Merkle root the node signed, piece size). Pieces with a malformed node
/// id or hash are left out.
pub(crate) fn auditable_pieces(
    seg: &pb::SegmentRecord,
) -> impl Iterator<Item = (NodeId, PieceId, [u8; 32], u64)> + '_ {
    let root = PieceId::try_from(seg.root_piece_id.as_ref()).ok();
    let size = seg.meta.as_ref().map_or(0, |m| m.piece_size.max(0) as u64);
    seg.pieces.iter().filter_map(move |p| {
        let root = root.as_ref()?;
        let node = NodeId::try_from(p.node_id.as_ref()).ok()?;
        let hash = <[u8; 32]>::try_from(p.hash.as_ref()).ok()?;
        Some((node, PieceId::derive(root, &node, p.piece_num), hash, size))
    })
}

pub struct Auditor {
    metainfo: Arc<Metainfo>,
    overlay: Arc<Overlay>,
    reputation: Arc<Reputation>,
    endpoint: QuicEndpoint,
    config: AuditConfig,
}

impl Auditor {
    pub fn new(
        metainfo: Arc<Metainfo>,
        overlay: Arc<Overlay>,
        reputation: Arc<Reputation>,
        endpoint: QuicEndpoint,
        config: AuditConfig,
    ) -> Self {
        Self {
            metainfo,
            overlay,
            reputation,
            endpoint,
            config,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.config.interval_secs.max(0.1))
    }

    /// One cycle: returns (successes, failures, offline).
    pub async fn run_once(&self) -> (usize, usize, usize) {
        // Reservoir sampling per node over one pass of the segments, a
        // page at a time.
        let metainfo = self.metainfo.clone();
        let k = self.config.per_node.max(1);
        let sampled = tokio::task::spawn_blocking(move || {
            let mut seen: HashMap<NodeId, usize> = HashMap::new();
            let mut reservoirs: HashMap<NodeId, Vec<Sample>> = HashMap::new();
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
            metainfo.for_each_segment(|_, seg| {
                for (node, piece_id, hash, size) in auditable_pieces(&seg) {
                    let sample = Sample {
                        piece_id,
                        root: hash,
                        size,
                        leaf: None,
                    };
                    let n = seen.entry(node).or_insert(0);
                    *n += 1;
                    let r = reservoirs.entry(node).or_default();
                    if r.len() < k {
                        r.push(sample);
                    } else {
                        let j = rng.gen_range(0..*n);
                        if j < k {
                            r[j] = sample;
                        }
                    }
                }
            })?;
            Ok::<_, crate::metainfo::MetainfoError>(reservoirs)
        })
        .await;
        let Ok(Ok(mut reservoirs)) = sampled else {
            return (0, 0, 0);
        };
        let now = now_ms();
        let mut audits = Vec::new();
        for node in self.overlay.list() {
            if node.disqualified_ms.is_some() || !self.overlay.is_online(&node, now) {
                continue;
            }
            let pending = self
                .reputation
                .get(&node.id)
                .ok()
                .and_then(|r| r.pending)
                .and_then(|p| {
                    Some(Sample {
                        piece_id: PieceId::try_from(p.piece_id.as_ref()).ok()?,
                        root: <[u8; 32]>::try_from(p.root.as_ref()).ok()?,
                        size: p.size,
                        leaf: Some(p.leaf),
                    })
                });
            match pending {
                // In containment: the same challenge, and nothing else.
                Some(s) => audits.push((node.clone(), s)),
                None => {
                    for s in reservoirs.remove(&node.id).unwrap_or_default() {
                        audits.push((node.clone(), s));
                    }
                }
            }
        }
        let results = futures::future::join_all(audits.into_iter().map(|(node, s)| async move {
            let leaf = s
                .leaf
                .unwrap_or_else(|| rand::thread_rng().gen_range(0..merkle::leaf_count(s.size)));
            let outcome = self.audit(&node.id, &node.address, &s, leaf).await;
            let challenge = pb::PendingAudit {
                piece_id: s.piece_id.as_bytes().to_vec().into(),
                root: s.root.to_vec().into(),
                size: s.size,
                leaf,
                attempts: 0,
            };
            (node.id, outcome, challenge)
        }))
        .await;
        let mut counts = (0, 0, 0);
        for (node, outcome, challenge) in results {
            match outcome {
                Outcome::Success => counts.0 += 1,
                Outcome::Failure | Outcome::Stalled | Outcome::Unknown => counts.1 += 1,
                Outcome::Offline => counts.2 += 1,
            }
            if let Err(e) = self
                .reputation
                .record_audit(&node, outcome, Some(challenge))
            {
                tracing::warn!(error = %e, "cannot record an audit");
            }
        }
        counts
    }

    /// Challenges `node` for one random leaf of a piece it should hold
    /// (committed Merkle root `root`, `size` bytes), records nothing, and
    /// returns what it found. Graceful exit uses it to check that an
    /// exiting node still has the pieces it is paid to hand over.
    pub async fn challenge(
        &self,
        node: &NodeId,
        address: &str,
        piece_id: PieceId,
        root: [u8; 32],
        size: u64,
    ) -> Outcome {
        let sample = Sample {
            piece_id,
            root,
            size,
            leaf: None,
        };
        let leaf = rand::thread_rng().gen_range(0..merkle::leaf_count(size));
        self.audit(node, address, &sample, leaf).await
    }

    async fn audit(&self, id: &NodeId, address: &str, s: &Sample, leaf: u64) -> Outcome {
        let key = KeyPair::generate();
        let limit = self
            .metainfo
            .order_limit(*id, s.piece_id, PieceAction::GetAudit, s.size, &key);
        // The satellite pays for the leaf it asks for, like any download.
        let leaf_bytes = s
            .size
            .saturating_sub(leaf.saturating_mul(merkle::LEAF_SIZE as u64))
            .min(merkle::LEAF_SIZE as u64);
        let order = match OrderLimit::decode_unverified(&limit) {
            Ok(l) => Order {
                serial: l.serial,
                amount: leaf_bytes,
            }
            .sign(&key),
            Err(_) => return Outcome::Offline,
        };
        let Ok(addr) = address.parse() else {
            return Outcome::Offline;
        };
        let conn = match tokio::time::timeout(Duration::from_secs(5), self.endpoint.dial(*id, addr))
            .await
        {
            Ok(Ok(c)) => c,
            _ => return Outcome::Offline,
        };
        let exchange = async {
            let (send, recv) = conn.open_bi().await.map_err(|_| Outcome::Offline)?;
            let mut writer = FrameWriter::new(send);
            writer
                .message(&pb::PieceRequest {
                    request: Some(pb::piece_request::Request::Audit(pb::AuditRequest {
                        limit: Some(limit),
                        leaf,
                        order: Some(order),
                    })),
                })
                .await
                .map_err(|_| Outcome::Offline)?;
            let _ = writer.finish();
            FrameReader::new(recv)
                .message::<pb::AuditResponse>()
                .await
                .map_err(|_| Outcome::Failure)
        };
        // A node that connects but does not answer in time is contained.
        let timeout = Duration::from_secs_f64(self.config.answer_timeout_secs.max(0.1));
        let resp = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(o)) => {
                self.endpoint.forget(id);
                return o;
            }
            Err(_) => return Outcome::Stalled,
        };
        if let Some(e) = &resp.error {
            // "Not found" (or a leaf the node claims is not there) is
            // data loss; any other error is the node's trouble, which
            // suspends rather than disqualifies.
            return match pb::ErrorCode::try_from(e.code) {
                Ok(pb::ErrorCode::NotFound | pb::ErrorCode::InvalidArgument) => Outcome::Failure,
                _ => Outcome::Unknown,
            };
        }
        let proof: Option<Vec<[u8; 32]>> = resp
            .proof
            .iter()
            .map(|p| <[u8; 32]>::try_from(p.as_ref()).ok())
            .collect();
        match proof {
            Some(p) if merkle::verify(&s.root, s.size, leaf, &resp.leaf_data, &p) => {
                Outcome::Success
            }
            _ => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Audits until disqualification for a node that fails each audit with
    /// probability `loss`; `None` if it survives `max` audits.
    fn audits_to_dq(config: &AuditConfig, loss: f64, max: u64, seed: u64) -> Option<u64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut r = pb::Reputation::default();
        for n in 1..=max {
            let outcome = if rng.gen_bool(loss) {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            r = config.update(r, outcome);
            if config.disqualifies(&r) {
                return Some(n);
            }
        }
        None
    }

    #[test]
    fn beta_model_disqualifies_lossy_nodes_and_never_honest_ones() {
        let c = AuditConfig::default();
        assert_eq!(
            audits_to_dq(&c, 0.0, 100_000, 1),
            None,
            "honest node survives 100 000 audits"
        );
        let all = audits_to_dq(&c, 1.0, 100_000, 1).expect("total loss");
        let ten: Vec<u64> = (0..20)
            .map(|s| audits_to_dq(&c, 0.10, 100_000, s).expect("10 % loss"))
            .collect();
        let five: Vec<u64> = (0..20)
            .map(|s| audits_to_dq(&c, 0.05, 100_000, s).expect("5 % loss"))
            .collect();
        let median = |v: &[u64]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v[v.len() / 2]
        };
        eprintln!(
            "audits to disqualification: 100 % loss {all}, 10 % loss median {}, 5 % loss median {}",
            median(&ten),
            median(&five)
        );
        assert!((30..=60).contains(&all), "{all}");
        assert!(median(&ten) < median(&five));
        // Offline audits do not move the audit score.
        let r = c.update(pb::Reputation::default(), Outcome::Offline);
        assert_eq!(c.score(&r), 1.0);
        assert!(r.online_score < 1.0);
    }

    #[test]
    fn unknown_errors_suspend_then_disqualify_after_the_grace_period() {
        let c = AuditConfig {
            suspension_grace_secs: 100.0,
            ..AuditConfig::default()
        };
        // A mature node: many good audits.
        let mut r = pb::Reputation::default();
        for _ in 0..200 {
            r = c.update(r, Outcome::Success);
        }
        assert!(!c.update_suspensions(&mut r, 0));
        assert_eq!(r.suspended_unix_ms, 0);
        // A run of disk errors suspends it, without touching the audit
        // score.
        let score = c.score(&r);
        let mut n = 0;
        while r.suspended_unix_ms == 0 {
            r = c.update(r, Outcome::Unknown);
            assert!(!c.update_suspensions(&mut r, 1_000));
            n += 1;
            assert!(n < 50, "never suspended");
        }
        assert!(n > 3, "one error does not suspend a mature node ({n})");
        assert_eq!(c.score(&r), score);
        assert_eq!(r.suspended_unix_ms, 1_000);
        // Still suspended within the grace period: no disqualification.
        assert!(!c.update_suspensions(&mut r, 1_000 + 99_000));
        assert_eq!(r.suspended_unix_ms, 1_000, "the start is kept");
        // Past it: disqualified.
        assert!(c.update_suspensions(&mut r, 1_000 + 100_000));
        // Recovery instead lifts the suspension.
        for _ in 0..20 {
            r = c.update(r, Outcome::Success);
        }
        assert!(!c.update_suspensions(&mut r, 1_000 + 100_000));
        assert_eq!(r.suspended_unix_ms, 0);
    }

    #[test]
    fn downtime_suspends_after_enough_observations_and_offline_review_disqualifies() {
        let c = AuditConfig {
            online_lambda: 0.9,
            online_min_observations: 10,
            offline_review_secs: 50.0,
            ..AuditConfig::default()
        };
        let mut r = pb::Reputation::default();
        // A new node offline from the start is not judged on 3 samples.
        for _ in 0..3 {
            r = c.observe_online(r, false);
        }
        assert!(!c.update_suspensions(&mut r, 0));
        assert_eq!(r.offline_suspended_unix_ms, 0);
        for _ in 0..20 {
            r = c.observe_online(r, true);
        }
        assert!(c.online_score(&r) > 0.9);
        // Offline for a while: suspended once the score is below 0.6.
        let mut n = 0;
        while r.offline_suspended_unix_ms == 0 {
            r = c.observe_online(r, false);
            c.update_suspensions(&mut r, 5_000);
            n += 1;
            assert!(n < 50);
        }
        assert!(c.online_score(&r) < c.offline_threshold);
        assert!(c.update_suspensions(&mut r, 5_000 + 50_000), "review over");
        // Offline audits count against the online score too.
        let mut a = pb::Reputation::default();
        for _ in 0..10 {
            a = c.update(a, Outcome::Offline);
        }
        assert!(c.online_score(&a) < 0.1);
        assert_eq!(c.score(&a), 1.0);
    }

    #[test]
    fn a_stalling_node_is_contained_then_failed_and_cannot_switch_challenges() {
        let kv: Arc<dyn Kv> = Arc::new(crate::db::MemKv::default());
        let overlay = Arc::new(
            Overlay::open(
                kv.clone(),
                crate::overlay::OverlayConfig {
                    online_window: Duration::from_secs(60),
                    distinct_subnets: false,
                    min_difficulty: 0,
                    new_node_fraction: 0.05,
                },
            )
            .expect("overlay"),
        );
        let config = AuditConfig {
            max_reverifies: 3,
            ..AuditConfig::default()
        };
        let rep = Reputation::new(kv, overlay, config.clone());
        let node = KeyPair::generate().public().node_id();
        let challenge = |leaf| pb::PendingAudit {
            piece_id: PieceId::random().as_bytes().to_vec().into(),
            root: vec![7; 32].into(),
            size: 1 << 20,
            leaf,
            attempts: 0,
        };
        let first = challenge(3);
        let r = rep
            .record_audit(&node, Outcome::Stalled, Some(first.clone()))
            .expect("record");
        assert_eq!(r.pending.as_ref().map(|p| p.attempts), Some(1));
        assert_eq!(config.score(&r), 1.0, "containment alone costs nothing");
        // Another worker's stalled audit of another piece does not replace
        // the contained challenge.
        let r = rep
            .record_audit(&node, Outcome::Stalled, Some(challenge(9)))
            .expect("record");
        let pending = r.pending.clone().expect("still contained");
        assert_eq!(
            (pending.piece_id, pending.leaf),
            (first.piece_id.clone(), 3)
        );
        rep.record_audit(&node, Outcome::Stalled, None)
            .expect("record");
        let r = rep
            .record_audit(&node, Outcome::Stalled, None)
            .expect("record");
        assert!(r.pending.is_none(), "retries exhausted");
        assert_eq!((r.audits, r.audits_failed), (1, 1));
        assert!(config.score(&r) < 1.0);

        // Errors instead of the leaf are contained the same way: a node
        // cannot keep a piece's pay by answering "internal error".
        let before = rep.get(&node).expect("rep").audits_failed;
        rep.record_audit(&node, Outcome::Unknown, Some(challenge(5)))
            .expect("record");
        for _ in 0..config.max_reverifies {
            let r = rep
                .record_audit(&node, Outcome::Unknown, Some(challenge(6)))
                .expect("record");
            if r.pending.is_some() {
                assert_eq!(r.pending.as_ref().map(|p| p.leaf), Some(5));
            }
        }
        let r = rep.get(&node).expect("rep");
        assert!(r.pending.is_none(), "retries exhausted");
        assert_eq!(
            r.audits_failed,
            before + 1,
            "an error answer fails in the end"
        );

        // An answer ends containment.
        rep.record_audit(&node, Outcome::Stalled, Some(challenge(1)))
            .expect("record");
        let r = rep
            .record_audit(&node, Outcome::Success, None)
            .expect("record");
        assert!(r.pending.is_none());
        assert_eq!((r.audits, r.audits_failed), (3, 2));
    }
}
