//! Order settlement and bandwidth rollups.
//!
//! Nodes keep the largest uplink-signed order of every transfer and settle
//! them per *window* (order limits grouped by creation time, `window_secs`
//! long, aligned to the epoch). A node sends a whole window at once; the
//! satellite verifies every order (its own signature on the limit, the
//! uplink's on the order, the node, the window, the amount within the
//! limit), counts each serial once, adds the bytes to per-node, per-action
//! rollups (and per-bucket ones, from the billing metadata the satellite
//! sealed into the limit), and marks the window settled, all in one atomic
//! write. A window sent again counts nothing. No serial is stored: the
//! window marker is enough, and markers are pruned once windows that old
//! can no longer be settled (`max_age_secs`).

use std::collections::HashMap;
use std::sync::Arc;

use loam_common::encryption::{self, Key};
use loam_common::identity::{Domain, verify_batch};
use loam_common::orders::{OrderLimit, PieceAction, SerialNumber};
use loam_common::{Identity, NodeId, PublicKey, pb};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::db::{DbError, Kv};
use crate::metainfo::ProjectId;
use crate::satellitedb::accounting::{AccountingStore, BucketBytes};

/// The `[orders]` table of the satellite's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OrdersConfig {
    /// Length of a settlement window, in seconds. Default 3600.
    pub window_secs: f64,
    /// Windows older than this can no longer be settled. Default 2 days.
    pub max_age_secs: f64,
    /// Most orders a node may send for one window (a settlement holds the
    /// best order of each serial in memory until the window is recorded).
    /// Default 2 000 000: about 550 transfers a second for an hour.
    pub max_window_orders: u64,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            window_secs: 3600.0,
            max_age_secs: 2.0 * 86_400.0,
            max_window_orders: 2_000_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettleError {
    #[error("window start {0} is not aligned to the {1} ms settlement window")]
    Unaligned(i64, i64),
    #[error("window starting at {0} has not begun yet")]
    Future(i64),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl SettleError {
    pub fn code(&self) -> pb::ErrorCode {
        match self {
            Self::Unaligned(..) | Self::Future(_) => pb::ErrorCode::InvalidArgument,
            Self::Db(_) => pb::ErrorCode::Internal,
        }
    }
}

/// Why one order was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    Malformed,
    OtherSatellite,
    OtherNode,
    OutsideWindow,
    BadSatelliteSignature,
    BadUplinkSignature,
    WrongSerial,
    AboveLimit,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed order or limit",
            Self::OtherSatellite => "limit of another satellite",
            Self::OtherNode => "limit for another node",
            Self::OutsideWindow => "limit created outside the window",
            Self::BadSatelliteSignature => "limit signature does not verify",
            Self::BadUplinkSignature => "order signature does not verify",
            Self::WrongSerial => "order serial differs from its limit's",
            Self::AboveLimit => "order amount above its limit",
        }
    }
}

/// One order, decoded but not yet verified.
struct Candidate<'a> {
    limit: OrderLimit,
    signed_limit: &'a pb::SignedOrderLimit,
    signed_order: &'a pb::SignedOrder,
    serial: SerialNumber,
    amount: u64,
}

/// Orders verified in one batch; on a failed batch each is checked alone.
const VERIFY_CHUNK: usize = 64;

pub struct Orders {
    store: AccountingStore,
    id: NodeId,
    public_key: PublicKey,
    seal_key: Key,
    config: OrdersConfig,
}

/// Per-node bandwidth of one action over a time range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub put: u64,
    pub get: u64,
    pub get_audit: u64,
    pub get_repair: u64,
    pub put_repair: u64,
}

impl Bandwidth {
    /// Adds `bytes` of `action`; `None` (and nothing added) on overflow.
    fn add(&mut self, action: PieceAction, bytes: u64) -> Option<()> {
        let slot = match action {
            PieceAction::Put => &mut self.put,
            PieceAction::Get => &mut self.get,
            PieceAction::GetAudit => &mut self.get_audit,
            PieceAction::GetRepair => &mut self.get_repair,
            PieceAction::PutRepair => &mut self.put_repair,
        };
        *slot = slot.checked_add(bytes)?;
        Some(())
    }
}

impl Orders {
    pub fn new(kv: Arc<dyn Kv>, identity: &Identity, config: OrdersConfig) -> Self {
        let seal_key = Key::from_bytes(blake3::derive_key(
            "loam satellite order billing metadata v1",
            &identity.key().seed(),
        ));
        Self {
            store: AccountingStore::new(kv),
            id: identity.id(),
            public_key: identity.public(),
            seal_key,
            config,
        }
    }

    /// Settled bandwidth, storage tallies and compute work as stored.
    pub fn accounting(&self) -> &AccountingStore {
        &self.store
    }

    pub fn window_ms(&self) -> i64 {
        ((self.config.window_secs * 1000.0) as i64).max(1)
    }

    pub fn window_of(&self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.window_ms()) * self.window_ms()
    }

    fn max_age_ms(&self) -> i64 {
        (self.config.max_age_secs * 1000.0) as i64
    }

    /// Billing metadata for an order limit: the project and bucket, sealed
    /// so that only this satellite can read them.
    pub fn seal_billing(&self, project: &ProjectId, bucket: &str) -> Vec<u8> {
        let mut plain = project.to_vec();
        plain.extend_from_slice(bucket.as_bytes());
        encryption::seal(&self.seal_key, &plain)
    }

    fn open_billing(&self, sealed: &[u8]) -> Option<(ProjectId, String)> {
        let plain = encryption::open(&self.seal_key, sealed).ok()?;
        let project = ProjectId::try_from(plain.get(..16)?).ok()?;
        Some((project, String::from_utf8(plain[16..].to_vec()).ok()?))
    }

    /// Settles one node's window. Every order is checked; the good ones are
    /// counted once per serial (the largest amount) unless the window was
    /// settled before. (The whole window at once; the endpoint streams it
    /// through [`Orders::begin_settlement`] instead.)
    pub fn settle(
        &self,
        node: NodeId,
        window_start: i64,
        orders: &[pb::UnsentOrder],
        now_ms: i64,
    ) -> Result<pb::SettleOrdersResponse, SettleError> {
        match self.begin_settlement(node, window_start, now_ms)? {
            Err(done) => Ok(done),
            Ok(mut s) => {
                s.add(orders);
                s.finish()
            }
        }
    }

    /// Most orders one window may carry.
    pub fn max_window_orders(&self) -> u64 {
        self.config.max_window_orders
    }

    /// Starts settling one node's window: `Err` holds the answer when there
    /// is nothing to settle (expired, or settled before). Orders are then
    /// fed in batches as they arrive and verified at once; only the best
    /// order per serial is kept, in a compact form, so memory grows with
    /// the serials paid, not with the bytes the node sends.
    pub fn begin_settlement(
        &self,
        node: NodeId,
        window_start: i64,
        now_ms: i64,
    ) -> Result<Result<Settlement<'_>, pb::SettleOrdersResponse>, SettleError> {
        use pb::settle_orders_response::Status;
        let w = self.window_ms();
        if window_start.rem_euclid(w) != 0 {
            return Err(SettleError::Unaligned(window_start, w));
        }
        if window_start > now_ms {
            return Err(SettleError::Future(window_start));
        }
        let mut resp = pb::SettleOrdersResponse::default();
        if window_start + w <= now_ms - self.max_age_ms() {
            resp.status = Status::Expired as i32;
            metrics::counter!("loam_satellite_settlement_windows_total", "result" => "expired")
                .increment(1);
            return Ok(Err(resp));
        }
        if self.store.window_settled(&node, window_start)? {
            resp.status = Status::AlreadySettled as i32;
            metrics::counter!("loam_satellite_settlement_windows_total", "result" => "already_settled")
                .increment(1);
            return Ok(Err(resp));
        }
        Ok(Ok(Settlement {
            orders: self,
            node,
            window_start,
            now_ms,
            best: HashMap::new(),
            rejections: HashMap::new(),
            received: 0,
        }))
    }

    /// Decodes one order and checks what needs no signature. `None` for a
    /// transfer without an order (nothing to pay).
    fn decode<'a>(
        &self,
        node: &NodeId,
        window_start: i64,
        o: &'a pb::UnsentOrder,
    ) -> Result<Option<Candidate<'a>>, Rejection> {
        let signed_limit = o.limit.as_ref().ok_or(Rejection::Malformed)?;
        let limit =
            OrderLimit::decode_unverified(signed_limit).map_err(|_| Rejection::Malformed)?;
        if limit.satellite_id != self.id {
            return Err(Rejection::OtherSatellite);
        }
        if &limit.node_id != node {
            return Err(Rejection::OtherNode);
        }
        if self.window_of(limit.created_ms) != window_start {
            return Err(Rejection::OutsideWindow);
        }
        let Some(signed_order) = o.order.as_ref() else {
            return Ok(None);
        };
        let order =
            pb::Order::decode(signed_order.order.as_ref()).map_err(|_| Rejection::Malformed)?;
        let serial = SerialNumber::try_from(order.serial_number.as_ref())
            .map_err(|_| Rejection::Malformed)?;
        if serial != limit.serial {
            return Err(Rejection::WrongSerial);
        }
        let amount = u64::try_from(order.amount).map_err(|_| Rejection::Malformed)?;
        if amount > limit.limit {
            return Err(Rejection::AboveLimit);
        }
        Ok(Some(Candidate {
            limit,
            signed_limit,
            signed_order,
            serial,
            amount,
        }))
    }

    /// Both signatures of every candidate: in batches, on every core.
    fn verify_all(&self, candidates: &[Candidate<'_>]) -> Vec<Result<(), Rejection>> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(candidates.len().div_ceil(VERIFY_CHUNK).max(1));
        let per_thread = candidates.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = candidates
                .chunks(per_thread)
                .map(|part| {
                    scope.spawn(move || {
                        part.chunks(VERIFY_CHUNK)
                            .flat_map(|chunk| self.verify_chunk(chunk))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }

    fn verify_chunk(&self, chunk: &[Candidate<'_>]) -> Vec<Result<(), Rejection>> {
        let mut items = Vec::with_capacity(chunk.len() * 2);
        for c in chunk {
            items.push((
                Domain::OrderLimit,
                c.signed_limit.limit.as_ref(),
                c.signed_limit.signature.as_ref(),
                &self.public_key,
            ));
            items.push((
                Domain::Order,
                c.signed_order.order.as_ref(),
                c.signed_order.signature.as_ref(),
                &c.limit.piece_public_key,
            ));
        }
        if verify_batch(&items) {
            return vec![Ok(()); chunk.len()];
        }
        chunk
            .iter()
            .map(|c| {
                self.public_key
                    .verify(
                        Domain::OrderLimit,
                        &c.signed_limit.limit,
                        &c.signed_limit.signature,
                    )
                    .map_err(|_| Rejection::BadSatelliteSignature)?;
                c.limit
                    .piece_public_key
                    .verify(
                        Domain::Order,
                        &c.signed_order.order,
                        &c.signed_order.signature,
                    )
                    .map_err(|_| Rejection::BadUplinkSignature)
            })
            .collect()
    }

    /// Settled bandwidth of `node` in windows starting in `[from, to)`.
    pub fn node_bandwidth(&self, node: &NodeId, from: i64, to: i64) -> Result<Bandwidth, DbError> {
        let mut out = Bandwidth::default();
        self.store
            .for_each_node_bandwidth(node, from, to, |_, action, bytes| {
                out.add(action, bytes)
                    .ok_or(DbError::Overflow("node bandwidth"))?;
                Ok(())
            })?;
        Ok(out)
    }

    /// Settled bytes per bucket and action of `project` in windows starting
    /// in `[from, to)`.
    pub fn bucket_bandwidth(
        &self,
        project: &ProjectId,
        from: i64,
        to: i64,
    ) -> Result<HashMap<String, Bandwidth>, DbError> {
        let mut out: HashMap<String, Bandwidth> = HashMap::new();
        self.store
            .for_each_bucket_bandwidth(project, from, to, |_, bucket, action, bytes| {
                out.entry(bucket.to_string())
                    .or_default()
                    .add(action, bytes)
                    .ok_or(DbError::Overflow("bucket bandwidth"))?;
                Ok(())
            })?;
        Ok(out)
    }

    /// Forgets window markers too old to be settled again anyway.
    pub fn prune_windows(&self, now_ms: i64) -> Result<usize, DbError> {
        let horizon = now_ms - self.max_age_ms() - self.window_ms();
        let n = self.store.prune_settled_windows(horizon)?;
        Ok(n)
    }
}

impl Bandwidth {
    pub fn of(&self, action: PieceAction) -> u64 {
        match action {
            PieceAction::Put => self.put,
            PieceAction::Get => self.get,
            PieceAction::GetAudit => self.get_audit,
            PieceAction::GetRepair => self.get_repair,
            PieceAction::PutRepair => self.put_repair,
        }
    }
}

/// What settlement keeps of the best order of one serial.
struct Best {
    amount: u64,
    action: PieceAction,
    /// The sealed billing metadata of the order limit.
    billing: Vec<u8>,
}

/// One node's window being settled; see [`Orders::begin_settlement`].
pub struct Settlement<'a> {
    orders: &'a Orders,
    node: NodeId,
    window_start: i64,
    now_ms: i64,
    best: HashMap<SerialNumber, Best>,
    rejections: HashMap<Rejection, u64>,
    received: u64,
}

impl Settlement<'_> {
    /// Orders received so far, good or bad.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Serials with a verified order so far.
    pub fn serials(&self) -> usize {
        self.best.len()
    }

    /// Checks a batch of orders and keeps the best one per serial.
    pub fn add(&mut self, batch: &[pb::UnsentOrder]) {
        self.received = self.received.saturating_add(batch.len() as u64);
        let mut candidates = Vec::with_capacity(batch.len());
        for o in batch {
            match self.orders.decode(&self.node, self.window_start, o) {
                Ok(Some(c)) => candidates.push(c),
                Ok(None) => {}
                Err(r) => *self.rejections.entry(r).or_default() += 1,
            }
        }
        let verdicts = self.orders.verify_all(&candidates);
        for (c, v) in candidates.iter().zip(verdicts) {
            if let Err(r) = v {
                *self.rejections.entry(r).or_default() += 1;
                continue;
            }
            match self.best.get_mut(&c.serial) {
                Some(b) if b.amount >= c.amount => {}
                Some(b) => b.amount = c.amount,
                None => {
                    self.best.insert(
                        c.serial,
                        Best {
                            amount: c.amount,
                            action: c.limit.action,
                            billing: c.limit.metadata.clone(),
                        },
                    );
                }
            }
        }
    }

    /// Records what was settled, once per window.
    pub fn finish(self) -> Result<pb::SettleOrdersResponse, SettleError> {
        use pb::settle_orders_response::Status;
        let Settlement {
            orders,
            node,
            window_start,
            now_ms,
            best,
            rejections,
            ..
        } = self;
        let overflow = || SettleError::Db(DbError::Overflow("settled bandwidth"));
        let mut by_action = Bandwidth::default();
        let mut by_bucket: HashMap<(ProjectId, String, PieceAction), u64> = HashMap::new();
        let mut total = 0u64;
        for b in best.values() {
            by_action.add(b.action, b.amount).ok_or_else(overflow)?;
            total = total.checked_add(b.amount).ok_or_else(overflow)?;
            if let Some((project, bucket)) = orders.open_billing(&b.billing) {
                let e = by_bucket.entry((project, bucket, b.action)).or_default();
                *e = e.checked_add(b.amount).ok_or_else(overflow)?;
            }
        }
        let mut resp = pb::SettleOrdersResponse::default();
        // One transaction: the window marker read absent and the rollups
        // read are expected unchanged at commit, so the same window sent to
        // two satellite processes at once is paid once.
        let by_action_list: Vec<(PieceAction, u64)> = PieceAction::ALL
            .iter()
            .map(|a| (*a, by_action.of(*a)))
            .collect();
        let by_bucket_list: Vec<BucketBytes<'_>> = by_bucket
            .iter()
            .map(|((project, bucket, action), bytes)| BucketBytes {
                project,
                bucket,
                action: *action,
                bytes: *bytes,
            })
            .collect();
        // One transaction: the same window sent to two satellite processes
        // at once is paid once.
        let settled = orders.store.settle_window(
            &node,
            window_start,
            &by_action_list,
            &by_bucket_list,
            &pb::SettledWindow {
                settled_unix_ms: now_ms,
                orders: best.len() as u64,
                bytes: total,
            },
        )?;
        if !settled {
            resp.status = Status::AlreadySettled as i32;
            return Ok(resp);
        }
        for action in PieceAction::ALL {
            let bytes = by_action.of(action);
            if bytes == 0 {
                continue;
            }
            resp.bytes_by_action.insert(action.code(), bytes);
            metrics::counter!("loam_satellite_settled_bytes_total", "action" => action.as_str())
                .increment(bytes);
        }
        resp.status = Status::Accepted as i32;
        resp.orders_accepted = best.len() as u64;
        resp.orders_rejected = rejections.values().sum();
        let mut lines: Vec<String> = rejections
            .iter()
            .map(|(r, n)| format!("{n} x {}", r.as_str()))
            .collect();
        lines.sort();
        resp.rejections = lines;
        metrics::counter!("loam_satellite_settlement_windows_total", "result" => "accepted")
            .increment(1);
        metrics::counter!("loam_satellite_settled_orders_total", "result" => "accepted")
            .increment(resp.orders_accepted);
        metrics::counter!("loam_satellite_settled_orders_total", "result" => "rejected")
            .increment(resp.orders_rejected);
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use loam_common::orders::{Order, PieceId, now_ms};
    use loam_common::{Identity, KeyPair};

    use super::*;
    use crate::db::MemKv;

    struct Fixture {
        sat: Identity,
        orders: Orders,
        kv: Arc<dyn Kv>,
        node: NodeId,
        window: i64,
    }

    fn fixture() -> Fixture {
        let sat = Identity::generate(0, |_| {});
        let kv: Arc<dyn Kv> = Arc::new(MemKv::default());
        let orders = Orders::new(kv.clone(), &sat, OrdersConfig::default());
        let window = orders.window_of(now_ms() - orders.window_ms());
        Fixture {
            kv,
            node: Identity::generate(0, |_| {}).id(),
            sat,
            orders,
            window,
        }
    }

    impl Fixture {
        /// A transfer of `amount` bytes under a fresh limit of `max`.
        fn order(&self, action: PieceAction, max: u64, amount: u64) -> pb::UnsentOrder {
            self.order_with(action, max, amount, &self.sat, self.node, Vec::new())
        }

        fn order_with(
            &self,
            action: PieceAction,
            max: u64,
            amount: u64,
            signer: &Identity,
            node: NodeId,
            metadata: Vec<u8>,
        ) -> pb::UnsentOrder {
            let key = KeyPair::generate();
            let limit = OrderLimit {
                serial: SerialNumber::random(),
                satellite_id: self.sat.id(),
                node_id: node,
                piece_id: PieceId::random(),
                action,
                limit: max,
                piece_public_key: key.public(),
                created_ms: self.window + 10,
                expires_ms: self.window + 86_400_000,
                piece_expires_ms: 0,
                metadata,
            };
            let order = Order {
                serial: limit.serial,
                amount,
            }
            .sign(&key);
            pb::UnsentOrder {
                limit: Some(limit.sign(signer)),
                order: Some(order),
            }
        }

        fn settle(&self, orders: &[pb::UnsentOrder]) -> pb::SettleOrdersResponse {
            self.orders
                .settle(self.node, self.window, orders, now_ms())
                .expect("settle")
        }

        fn settled(&self) -> Bandwidth {
            self.orders
                .node_bandwidth(&self.node, 0, i64::MAX)
                .expect("rollups")
        }
    }

    #[test]
    fn a_window_counts_once_however_often_it_is_sent() {
        let f = fixture();
        let batch = vec![
            f.order(PieceAction::Get, 1000, 700),
            f.order(PieceAction::Get, 1000, 1000),
            f.order(PieceAction::Put, 5000, 4000),
            f.order(PieceAction::GetAudit, 100, 64),
            f.order(PieceAction::GetRepair, 100, 90),
            f.order(PieceAction::PutRepair, 100, 80),
        ];
        let r = f.settle(&batch);
        assert_eq!(
            r.status,
            pb::settle_orders_response::Status::Accepted as i32
        );
        assert_eq!((r.orders_accepted, r.orders_rejected), (6, 0));
        let want = Bandwidth {
            put: 4000,
            get: 1700,
            get_audit: 64,
            get_repair: 90,
            put_repair: 80,
        };
        assert_eq!(f.settled(), want);
        // The same batch again, or part of it: nothing more.
        let again = f.settle(&batch);
        assert_eq!(
            again.status,
            pb::settle_orders_response::Status::AlreadySettled as i32
        );
        f.settle(&batch[..2]);
        assert_eq!(f.settled(), want);
    }

    /// A node sending one window to two satellite processes on one
    /// database at the same moment, many times over, is paid for it once.
    #[test]
    fn a_window_sent_to_two_processes_at_once_counts_once() {
        let f = fixture();
        let kv = f.kv.clone();
        let second = Orders::new(kv, &f.sat, OrdersConfig::default());
        let batch = vec![
            f.order(PieceAction::Get, 1000, 900),
            f.order(PieceAction::Put, 5000, 4000),
        ];
        let accepted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for i in 0..8 {
                let orders = if i % 2 == 0 { &f.orders } else { &second };
                let (batch, accepted, node, window) = (&batch, &accepted, f.node, f.window);
                s.spawn(move || {
                    let r = orders
                        .settle(node, window, batch, now_ms())
                        .expect("settle");
                    if r.status == pb::settle_orders_response::Status::Accepted as i32 {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(accepted.into_inner(), 1);
        assert_eq!((f.settled().get, f.settled().put), (900, 4000));
    }

    #[test]
    fn a_reused_serial_counts_once_at_its_largest_amount() {
        let f = fixture();
        let key = KeyPair::generate();
        let limit = OrderLimit {
            serial: SerialNumber::random(),
            satellite_id: f.sat.id(),
            node_id: f.node,
            piece_id: PieceId::random(),
            action: PieceAction::Get,
            limit: 1000,
            piece_public_key: key.public(),
            created_ms: f.window + 5,
            expires_ms: f.window + 86_400_000,
            piece_expires_ms: 0,
            metadata: Vec::new(),
        };
        let signed = limit.sign(&f.sat);
        // The uplink's orders of one transfer grow: 300, then 800. The node
        // sends both (and one twice); only the largest counts.
        let with = |amount| pb::UnsentOrder {
            limit: Some(signed.clone()),
            order: Some(
                Order {
                    serial: limit.serial,
                    amount,
                }
                .sign(&key),
            ),
        };
        let r = f.settle(&[with(300), with(800), with(800)]);
        assert_eq!(r.orders_accepted, 1);
        assert_eq!(f.settled().get, 800);
    }

    #[test]
    fn bad_orders_are_rejected_and_earn_nothing() {
        let f = fixture();
        let stranger = Identity::generate(0, |_| {});
        let good = f.order(PieceAction::Get, 1000, 500);
        // Limit signed by another key than the satellite's.
        let forged = f.order_with(PieceAction::Get, 1000, 500, &stranger, f.node, Vec::new());
        // Order signed by a key other than the limit's piece key.
        let mut wrong_uplink = f.order(PieceAction::Get, 1000, 500);
        wrong_uplink.order = f.order(PieceAction::Get, 1000, 500).order;
        // The node raises the amount the uplink signed: the signature no
        // longer covers the bytes.
        let mut raised = f.order(PieceAction::Get, 1000, 100);
        {
            let signed = raised.order.as_mut().expect("order");
            let mut o = pb::Order::decode(signed.order.as_ref()).expect("decode");
            o.amount = 1000;
            signed.order = o.encode_to_vec().into();
        }
        // An amount above the limit (signed by the uplink, still refused).
        let above = f.order(PieceAction::Get, 1000, 1001);
        // Another node's order.
        let other = Identity::generate(0, |_| {}).id();
        let theirs = f.order_with(PieceAction::Get, 1000, 500, &f.sat, other, Vec::new());
        let r = f.settle(&[good, forged, wrong_uplink, raised, above, theirs]);
        assert_eq!((r.orders_accepted, r.orders_rejected), (1, 5));
        assert_eq!(f.settled().get, 500);
        let text = r.rejections.join("\n");
        for why in [
            Rejection::BadSatelliteSignature,
            Rejection::BadUplinkSignature,
            Rejection::AboveLimit,
            Rejection::OtherNode,
        ] {
            assert!(text.contains(why.as_str()), "{why:?} missing from {text}");
        }
    }

    #[test]
    fn old_windows_expire_and_billing_reaches_the_bucket() {
        let f = fixture();
        let now = now_ms();
        let old = f.orders.window_of(now - 3 * 86_400_000);
        let r = f.orders.settle(f.node, old, &[], now).expect("settle");
        assert_eq!(r.status, pb::settle_orders_response::Status::Expired as i32);
        assert!(
            f.orders.settle(f.node, old + 1, &[], now).is_err(),
            "unaligned"
        );

        let project: ProjectId = [7; 16];
        let billing = f.orders.seal_billing(&project, "photos");
        let o = f.order_with(PieceAction::Get, 1000, 900, &f.sat, f.node, billing);
        f.settle(&[o]);
        let buckets = f
            .orders
            .bucket_bandwidth(&project, 0, i64::MAX)
            .expect("buckets");
        assert_eq!(buckets.get("photos").map(|b| b.get), Some(900));
        // Markers older than the settlement horizon are pruned.
        assert_eq!(
            f.orders.prune_windows(now + 4 * 86_400_000).expect("prune"),
            1
        );
    }
}
