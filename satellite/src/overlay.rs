//! The overlay: every storage node the satellite knows, from check-ins, and
//! node selection for uploads.
//!
//! The database is the truth; each process keeps a copy of the node table
//! in memory for selection. Every change reads the node's record from the
//! database in a transaction, so that a disqualification written by one
//! satellite process is not undone by a check-in another one records; a
//! process sharing its database with others reloads its copy every
//! [`REFRESH_INTERVAL`] ([`Overlay::refresh`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use loam_common::{NodeId, PublicKey, pb};
use rand::seq::SliceRandom;

use crate::db::{DbError, Kv};
use crate::satellitedb::nodes::NodeStore;

/// How often a process that shares its database reloads the node table
/// (check-ins and standing changes recorded by the other processes).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// What the satellite knows of one node.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: NodeId,
    pub public_key: PublicKey,
    pub address: String,
    pub free_disk: i64,
    pub version: String,
    pub last_seen_ms: i64,
    pub created_ms: i64,
    pub capabilities: pb::NodeCapabilities,
    /// When reputation disqualified it; a disqualified node is never
    /// selected and its pieces count as lost.
    pub disqualified_ms: Option<i64>,
    /// Graceful exit: when asked, and when every piece had moved.
    pub exit_started_ms: Option<i64>,
    pub exit_finished_ms: Option<i64>,
    /// Passed the vetting audits; until then it gets only a small share of
    /// uploads.
    pub vetted: bool,
    /// Suspended (unknown audits or offline): gets no new pieces or
    /// compute tasks; its pieces still count.
    pub suspended_ms: Option<i64>,
    /// Payout address (EIP-55 checksummed), empty if none was given.
    pub wallet: String,
    /// The IP address its check-ins come from: what the one-piece-per-
    /// subnet rule uses, since the advertised address is the node's word.
    pub observed_ip: Option<IpAddr>,
    /// The satellite could not dial it back at its advertised address at
    /// the last check-in: it gets no new pieces or tasks.
    pub unreachable: bool,
}

impl Node {
    /// The network a node is in, for the one-piece-per-subnet rule: the /24
    /// of an IPv4 address, the /64 of an IPv6 one, else the host name.
    pub fn subnet(&self) -> String {
        let host = match self.observed_ip {
            Some(ip) => Ok(ip),
            None => self
                .address
                .parse::<SocketAddr>()
                .map(|a| a.ip())
                .or_else(|_| self.address.parse::<IpAddr>()),
        };
        match host {
            Ok(IpAddr::V4(v4)) => {
                let o = v4.octets();
                format!("{}.{}.{}.0/24", o[0], o[1], o[2])
            }
            Ok(IpAddr::V6(v6)) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            Err(_) => self
                .address
                .rsplit_once(':')
                .map_or(self.address.clone(), |(h, _)| h.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OverlayConfig {
    pub online_window: Duration,
    pub distinct_subnets: bool,
    pub min_difficulty: u32,
    /// Share of each upload's nodes that may be unvetted.
    pub new_node_fraction: f64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    #[error("node id {id} has difficulty {have}, this satellite requires {need}")]
    Difficulty { id: NodeId, have: u32, need: u32 },
    #[error("check-in public key does not match the connection's identity")]
    KeyMismatch,
    #[error(transparent)]
    Wallet(#[from] loam_common::wallet::WalletError),
    #[error("check-in address {0:?} is not HOST:PORT")]
    BadAddress(String),
    #[error("too few storage nodes available: need {need}, found {found}")]
    TooFewNodes { need: usize, found: usize },
    #[error(transparent)]
    Db(#[from] DbError),
}

pub struct Overlay {
    store: NodeStore,
    config: OverlayConfig,
    nodes: RwLock<HashMap<NodeId, Node>>,
    /// Bumped on every accepted check-in, so callers can await one.
    checkins: tokio::sync::watch::Sender<u64>,
}

impl Overlay {
    pub fn open(kv: Arc<dyn Kv>, config: OverlayConfig) -> Result<Self, DbError> {
        let overlay = Self {
            store: NodeStore::new(kv),
            config,
            nodes: RwLock::new(HashMap::new()),
            checkins: tokio::sync::watch::channel(0).0,
        };
        overlay.refresh()?;
        Ok(overlay)
    }

    /// Reloads the node table from the database, a page at a time, and
    /// wakes whoever awaits a check-in.
    pub fn refresh(&self) -> Result<(), DbError> {
        let mut nodes = HashMap::new();
        self.store.for_each_node(|node| {
            nodes.insert(node.id, node);
            Ok::<_, DbError>(())
        })?;
        *self.nodes.write().expect("overlay lock") = nodes;
        self.checkins.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Changes node `id`'s record in one transaction on what the database
    /// holds (not this process's copy): `change` returns whether it changed
    /// anything. Returns the node as it now is, `None` if unknown.
    fn modify(
        &self,
        id: &NodeId,
        mut change: impl FnMut(&mut Node) -> bool,
    ) -> Result<Option<Node>, DbError> {
        let node = self.store.update(id, |stored| {
            let Some(mut node) = stored else {
                return Ok::<_, DbError>((None, None));
            };
            let changed = change(&mut node);
            Ok((changed.then(|| node.clone()), Some(node)))
        })?;
        if let Some(n) = &node {
            self.nodes
                .write()
                .expect("overlay lock")
                .insert(*id, n.clone());
        }
        Ok(node)
    }

    pub fn config(&self) -> &OverlayConfig {
        &self.config
    }

    /// Records a check-in from the node authenticated as `peer` (with no
    /// observed address, taken as reachable: tests and tools).
    pub fn check_in(
        &self,
        peer: NodeId,
        req: &pb::CheckInRequest,
        now_ms: i64,
    ) -> Result<Node, OverlayError> {
        self.check_in_seen(peer, req, None, true, now_ms)
    }

    /// Records a check-in from the node authenticated as `peer`, as the
    /// satellite saw it: from `observed` (its source IP; `None` keeps the
    /// last one), and `reachable` or not at its advertised address.
    pub fn check_in_seen(
        &self,
        peer: NodeId,
        req: &pb::CheckInRequest,
        observed: Option<IpAddr>,
        reachable: bool,
        now_ms: i64,
    ) -> Result<Node, OverlayError> {
        let key =
            PublicKey::try_from(req.public_key.as_ref()).map_err(|_| OverlayError::KeyMismatch)?;
        if key.node_id() != peer {
            return Err(OverlayError::KeyMismatch);
        }
        let have = peer.difficulty();
        if have < self.config.min_difficulty {
            return Err(OverlayError::Difficulty {
                id: peer,
                have,
                need: self.config.min_difficulty,
            });
        }
        if req
            .address
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(OverlayError::BadAddress(req.address.clone()));
        }
        let wallet = if req.wallet.is_empty() {
            String::new()
        } else {
            req.wallet
                .parse::<loam_common::wallet::Wallet>()?
                .to_checksummed()
        };
        // What the node says is taken as its check-in; its standing
        // (disqualified, exiting, vetted, suspended) is what the database
        // holds, whichever process wrote it.
        let node = self.store.update(&peer, |previous| {
            let created_ms = previous.as_ref().map_or(now_ms, |n| n.created_ms);
            let disqualified_ms = previous.as_ref().and_then(|n| n.disqualified_ms);
            let exit_started_ms = previous.as_ref().and_then(|n| n.exit_started_ms);
            let exit_finished_ms = previous.as_ref().and_then(|n| n.exit_finished_ms);
            let vetted = previous.as_ref().is_some_and(|n| n.vetted);
            let suspended_ms = previous.as_ref().and_then(|n| n.suspended_ms);
            let observed_ip = observed.or(previous.as_ref().and_then(|n| n.observed_ip));
            let unreachable = !reachable;
            let free_disk = req.free_disk.clamp(0, MAX_CLAIMED_FREE_DISK);
            let node = Node {
                id: peer,
                public_key: key,
                address: req.address.clone(),
                free_disk,
                version: req.version.clone(),
                last_seen_ms: now_ms,
                created_ms,
                capabilities: bounded_capabilities(req.capabilities.clone().unwrap_or_default()),
                disqualified_ms,
                exit_started_ms,
                exit_finished_ms,
                vetted,
                suspended_ms,
                wallet: wallet.clone(),
                observed_ip,
                unreachable,
            };
            Ok::<_, DbError>((Some(node.clone()), node))
        })?;
        self.nodes
            .write()
            .expect("overlay lock")
            .insert(peer, node.clone());
        self.checkins.send_modify(|n| *n += 1);
        Ok(node)
    }

    /// Resolves once `id` has checked in at or after `since_ms`.
    pub async fn wait_for_check_in(&self, id: &NodeId, since_ms: i64) {
        let mut rx = self.checkins.subscribe();
        let _ = rx
            .wait_for(|_| self.get(id).is_some_and(|n| n.last_seen_ms >= since_ms))
            .await;
    }

    /// Resolves once at least `count` nodes are online; every check-in
    /// wakes the wait.
    pub async fn wait_online_count(&self, count: usize) {
        let mut rx = self.checkins.subscribe();
        let _ = rx
            .wait_for(|_| self.online_count(loam_common::orders::now_ms()) >= count)
            .await;
    }

    /// Resolves once `id` no longer counts as online: at the end of the
    /// online window after its last check-in (later if it checks in again).
    pub async fn wait_offline(&self, id: &NodeId) {
        loop {
            let Some(node) = self.get(id) else { return };
            let now = loam_common::orders::now_ms();
            if !self.is_online(&node, now) {
                return;
            }
            let deadline = node.last_seen_ms + self.config.online_window.as_millis() as i64 + 1;
            tokio::time::sleep(std::time::Duration::from_millis(
                (deadline - now).max(1) as u64
            ))
            .await;
        }
    }

    pub fn get(&self, id: &NodeId) -> Option<Node> {
        self.nodes.read().expect("overlay lock").get(id).cloned()
    }

    pub fn is_online(&self, node: &Node, now_ms: i64) -> bool {
        now_ms - node.last_seen_ms <= self.config.online_window.as_millis() as i64
    }

    /// Online and in good standing: its pieces count towards a segment's
    /// health, and it may be selected.
    pub fn is_healthy(&self, node: &Node, now_ms: i64) -> bool {
        self.is_online(node, now_ms)
            && node.disqualified_ms.is_none()
            && node.exit_started_ms.is_none()
    }

    /// May receive new pieces and compute tasks: healthy and not
    /// suspended.
    pub fn is_selectable(&self, node: &Node, now_ms: i64) -> bool {
        self.is_healthy(node, now_ms) && node.suspended_ms.is_none() && !node.unreachable
    }

    /// Records a suspension (`since_ms` > 0) or its end (0).
    pub fn set_suspended(&self, id: &NodeId, since_ms: i64) -> Result<(), DbError> {
        let want = (since_ms > 0).then_some(since_ms);
        let mut was = None;
        self.modify(id, |node| {
            was = Some(node.suspended_ms);
            let changed = node.suspended_ms != want;
            node.suspended_ms = want;
            changed
        })?;
        match (was, want) {
            (Some(None), Some(_)) => tracing::warn!(node = %id.short(), "node suspended"),
            (Some(Some(_)), None) => tracing::info!(node = %id.short(), "node suspension lifted"),
            _ => {}
        }
        Ok(())
    }

    /// Marks a node vetted (it passed the vetting audits).
    pub fn set_vetted(&self, id: &NodeId) -> Result<(), DbError> {
        self.modify(id, |node| !std::mem::replace(&mut node.vetted, true))?;
        Ok(())
    }

    /// Starts (or reports) a graceful exit; returns (started, finished).
    pub fn begin_exit(&self, id: &NodeId, now_ms: i64) -> Result<(i64, Option<i64>), DbError> {
        let mut started = false;
        let node = self.modify(id, |node| {
            started = node.exit_started_ms.is_none();
            node.exit_started_ms.get_or_insert(now_ms);
            started
        })?;
        let Some(node) = node else {
            return Ok((0, None));
        };
        if started {
            tracing::info!(node = %id.short(), "graceful exit started");
        }
        Ok((
            node.exit_started_ms.unwrap_or(now_ms),
            node.exit_finished_ms,
        ))
    }

    /// Marks a graceful exit complete.
    pub fn finish_exit(&self, id: &NodeId, now_ms: i64) -> Result<(), DbError> {
        let mut finished = false;
        self.modify(id, |node| {
            // A node disqualified during its exit (it failed to produce its
            // pieces) never finishes it: its held amount is forfeited.
            finished = node.exit_started_ms.is_some()
                && node.exit_finished_ms.is_none()
                && node.disqualified_ms.is_none();
            if finished {
                node.exit_finished_ms = Some(now_ms);
            }
            finished
        })?;
        if finished {
            tracing::info!(node = %id.short(), "graceful exit finished");
        }
        Ok(())
    }

    /// Disqualifies a node for good.
    pub fn disqualify(&self, id: &NodeId, now_ms: i64) -> Result<(), DbError> {
        let mut newly = false;
        self.modify(id, |node| {
            newly = node.disqualified_ms.is_none();
            node.disqualified_ms.get_or_insert(now_ms);
            newly
        })?;
        if newly {
            metrics::counter!("loam_satellite_nodes_disqualified_total").increment(1);
            tracing::warn!(node = %id.short(), "node disqualified");
        }
        Ok(())
    }

    /// Up to `want` healthy nodes with room for `piece_size`, none in
    /// `exclude` nor (with the subnet rule) in an excluded node's subnet.
    pub fn select_excluding(
        &self,
        want: usize,
        piece_size: u64,
        exclude: &HashSet<NodeId>,
        now_ms: i64,
    ) -> Vec<Node> {
        let nodes = self.nodes.read().expect("overlay lock");
        let taken: HashSet<String> = if self.config.distinct_subnets {
            exclude
                .iter()
                .filter_map(|id| nodes.get(id))
                .map(Node::subnet)
                .collect()
        } else {
            HashSet::new()
        };
        let candidates: Vec<Node> = nodes
            .values()
            .filter(|n| {
                self.is_selectable(n, now_ms)
                    && n.free_disk >= piece_size as i64
                    && !exclude.contains(&n.id)
                    && !taken.contains(&n.subnet())
            })
            .cloned()
            .collect();
        drop(nodes);
        select_nodes(
            candidates,
            want,
            self.config.distinct_subnets,
            &mut rand::thread_rng(),
        )
    }

    pub fn list(&self) -> Vec<Node> {
        let mut v: Vec<Node> = self
            .nodes
            .read()
            .expect("overlay lock")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|n| n.id);
        v
    }

    pub fn online_count(&self, now_ms: i64) -> usize {
        self.nodes
            .read()
            .expect("overlay lock")
            .values()
            .filter(|n| self.is_online(n, now_ms))
            .count()
    }

    /// Picks up to `want` (at least `need`) distinct online nodes with room
    /// for `piece_size` bytes.
    pub fn select(
        &self,
        need: usize,
        want: usize,
        piece_size: u64,
        now_ms: i64,
    ) -> Result<Vec<Node>, OverlayError> {
        let candidates: Vec<Node> = self
            .nodes
            .read()
            .expect("overlay lock")
            .values()
            .filter(|n| self.is_selectable(n, now_ms) && n.free_disk >= piece_size as i64)
            .cloned()
            .collect();
        let chosen = select_vetted(
            candidates,
            want,
            self.config.new_node_fraction,
            self.config.distinct_subnets,
            &mut rand::thread_rng(),
        );
        if chosen.len() < need {
            return Err(OverlayError::TooFewNodes {
                need,
                found: chosen.len(),
            });
        }
        Ok(chosen)
    }
}

/// Most CPU cores, GPUs and concurrent training tasks a node may claim.
/// Claims are the node's own word: past these bounds they buy nothing.
/// (Placement does not rank nodes by them either, see
/// `compute::Compute::candidates`.)
pub const MAX_CLAIMED_CORES: u32 = 256;
pub const MAX_CLAIMED_GPUS: u32 = 16;
pub const MAX_CLAIMED_TASKS: u32 = 16;
/// 4 TiB of memory.
pub const MAX_CLAIMED_MEMORY: u64 = 4 << 40;
/// A GPU's name, kind and API are kept to this many bytes.
pub const MAX_ADAPTER_TEXT: usize = 128;
/// 1 PB of free disk: more than one node could hold.
pub const MAX_CLAIMED_FREE_DISK: i64 = 1_000_000_000_000_000;

/// A node's compute claims, clamped to what any one machine could have.
pub fn bounded_capabilities(mut c: pb::NodeCapabilities) -> pb::NodeCapabilities {
    c.cpu_cores = c.cpu_cores.min(MAX_CLAIMED_CORES);
    c.gpus = c.gpus.min(MAX_CLAIMED_GPUS);
    c.max_tasks = c.max_tasks.min(MAX_CLAIMED_TASKS);
    c.memory_bytes = c.memory_bytes.min(MAX_CLAIMED_MEMORY);
    if let Some(a) = &mut c.adapter {
        for text in [&mut a.name, &mut a.kind, &mut a.api] {
            if text.len() > MAX_ADAPTER_TEXT {
                let mut end = MAX_ADAPTER_TEXT;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
        }
        a.memory_bytes = a.memory_bytes.min(MAX_CLAIMED_MEMORY);
        a.max_buffer_bytes = a.max_buffer_bytes.min(MAX_CLAIMED_MEMORY);
    }
    c
}

/// Random choice of up to `want` nodes of which at most
/// `floor(want × new_fraction)` are unvetted, unless there are too few
/// vetted nodes to fill the rest (a young network); at most one per subnet
/// if asked.
pub fn select_vetted(
    candidates: Vec<Node>,
    want: usize,
    new_fraction: f64,
    distinct_subnets: bool,
    rng: &mut impl rand::Rng,
) -> Vec<Node> {
    let (vetted, new): (Vec<Node>, Vec<Node>) = candidates.into_iter().partition(|n| n.vetted);
    let new_share = ((want as f64) * new_fraction.clamp(0.0, 1.0)).floor() as usize;
    let mut picked = select_nodes(new, want, distinct_subnets, rng);
    let reputable = select_nodes(vetted, want, distinct_subnets, rng);
    let keep_new = new_share.max(want.saturating_sub(reputable.len()));
    picked.truncate(keep_new);
    let mut subnets: HashSet<String> = picked.iter().map(Node::subnet).collect();
    for n in reputable {
        if picked.len() >= want {
            break;
        }
        if distinct_subnets && !subnets.insert(n.subnet()) {
            continue;
        }
        picked.push(n);
    }
    picked
}

/// Random choice of up to `want` nodes, at most one per subnet if asked.
pub fn select_nodes(
    mut candidates: Vec<Node>,
    want: usize,
    distinct_subnets: bool,
    rng: &mut impl rand::Rng,
) -> Vec<Node> {
    candidates.shuffle(rng);
    let mut subnets = HashSet::new();
    let mut out = Vec::with_capacity(want);
    for node in candidates {
        if out.len() >= want {
            break;
        }
        if distinct_subnets && !subnets.insert(node.subnet()) {
            continue;
        }
        out.push(node);
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn node(addr: &str) -> Node {
        let key = loam_common::KeyPair::generate().public();
        Node {
            id: key.node_id(),
            public_key: key,
            address: addr.to_string(),
            free_disk: 1 << 40,
            version: "test".into(),
            last_seen_ms: 0,
            created_ms: 0,
            capabilities: Default::default(),
            disqualified_ms: None,
            exit_started_ms: None,
            exit_finished_ms: None,
            vetted: false,
            suspended_ms: None,
            wallet: String::new(),
            observed_ip: None,
            unreachable: false,
        }
    }

    #[test]
    fn the_subnet_rule_uses_the_observed_address_not_the_claimed_one() {
        // Two Sybil nodes on one machine claim addresses in different
        // subnets; their check-ins come from the same one.
        let mut a = node("10.1.0.5:7000");
        let mut b = node("10.2.0.5:7000");
        assert_ne!(a.subnet(), b.subnet());
        a.observed_ip = "192.0.2.7".parse().ok();
        b.observed_ip = "192.0.2.8".parse().ok();
        assert_eq!(a.subnet(), b.subnet());
        let picked = select_nodes(
            vec![a, b],
            2,
            true,
            &mut rand::rngs::StdRng::seed_from_u64(1),
        );
        assert_eq!(picked.len(), 1, "one piece per observed subnet");
    }

    #[test]
    fn claims_are_bounded_and_unreachable_nodes_get_nothing() {
        let kv: Arc<dyn Kv> = Arc::new(crate::db::MemKv::default());
        let overlay = Overlay::open(
            kv,
            OverlayConfig {
                online_window: Duration::from_secs(60),
                distinct_subnets: false,
                min_difficulty: 0,
                new_node_fraction: 0.05,
            },
        )
        .expect("overlay");
        let key = loam_common::KeyPair::generate();
        let req = pb::CheckInRequest {
            address: "127.0.0.1:7000".into(),
            free_disk: i64::MAX,
            public_key: key.public().as_bytes().to_vec().into(),
            capabilities: Some(pb::NodeCapabilities {
                cpu_cores: 1_000_000,
                gpus: 10_000,
                max_tasks: 1_000,
                memory_bytes: u64::MAX,
                compute_enabled: true,
                adapter: Some(pb::GpuAdapter {
                    name: "é".repeat(1 << 20),
                    kind: "discrete".into(),
                    memory_bytes: u64::MAX,
                    max_buffer_bytes: u64::MAX,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let now = 1_000;
        let n = overlay
            .check_in_seen(
                key.public().node_id(),
                &req,
                "192.0.2.1".parse().ok(),
                false,
                now,
            )
            .expect("check in");
        assert_eq!(n.free_disk, MAX_CLAIMED_FREE_DISK);
        assert_eq!(
            (
                n.capabilities.cpu_cores,
                n.capabilities.gpus,
                n.capabilities.max_tasks
            ),
            (MAX_CLAIMED_CORES, MAX_CLAIMED_GPUS, MAX_CLAIMED_TASKS)
        );
        let adapter = n.capabilities.adapter.as_ref().expect("adapter kept");
        assert_eq!(adapter.name, "é".repeat(MAX_ADAPTER_TEXT / 2));
        assert_eq!(adapter.kind, "discrete");
        assert_eq!(
            (adapter.memory_bytes, adapter.max_buffer_bytes),
            (MAX_CLAIMED_MEMORY, MAX_CLAIMED_MEMORY)
        );
        assert!(!overlay.is_selectable(&n, now), "not reachable: no pieces");
        let n = overlay
            .check_in_seen(
                key.public().node_id(),
                &req,
                "192.0.2.1".parse().ok(),
                true,
                now,
            )
            .expect("check in");
        assert!(overlay.is_selectable(&n, now));
        assert_eq!(n.subnet(), "192.0.2.0/24");
    }

    #[test]
    fn unvetted_nodes_get_a_small_share_unless_vetted_ones_run_out() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut nodes: Vec<Node> = (0..40).map(|i| node(&format!("10.0.{i}.1:1"))).collect();
        for n in nodes.iter_mut().take(30) {
            n.vetted = true;
        }
        for _ in 0..20 {
            let picked = select_vetted(nodes.clone(), 20, 0.1, true, &mut rng);
            assert_eq!(picked.len(), 20);
            assert!(picked.iter().filter(|n| !n.vetted).count() <= 2);
        }
        // Only 5 vetted nodes: the new ones fill the rest.
        let young: Vec<Node> = nodes.iter().skip(25).cloned().collect();
        let picked = select_vetted(young, 12, 0.1, true, &mut rng);
        assert_eq!(picked.len(), 12);
        assert_eq!(picked.iter().filter(|n| n.vetted).count(), 5);
    }

    #[test]
    fn subnet_rule_keeps_one_node_per_24() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let nodes = vec![
            node("10.0.0.1:1"),
            node("10.0.0.2:1"),
            node("10.0.1.1:1"),
            node("10.0.2.1:1"),
        ];
        let picked = select_nodes(nodes.clone(), 4, true, &mut rng);
        assert_eq!(picked.len(), 3);
        let subnets: HashSet<String> = picked.iter().map(Node::subnet).collect();
        assert_eq!(subnets.len(), 3);
        assert_eq!(select_nodes(nodes, 4, false, &mut rng).len(), 4);
    }

    #[test]
    fn check_in_enforces_difficulty_and_key() {
        let kv: Arc<dyn Kv> = Arc::new(crate::db::MemKv::default());
        let overlay = Overlay::open(
            kv.clone(),
            OverlayConfig {
                online_window: Duration::from_secs(60),
                distinct_subnets: false,
                min_difficulty: 4,
                new_node_fraction: 0.05,
            },
        )
        .expect("open");
        let weak = loop {
            let id = loam_common::Identity::generate(0, |_| {});
            if id.id().difficulty() < 4 {
                break id;
            }
        };
        let req = |id: &loam_common::Identity| pb::CheckInRequest {
            address: "127.0.0.1:5".into(),
            public_key: id.public().as_bytes().to_vec().into(),
            ..Default::default()
        };
        assert!(matches!(
            overlay.check_in(weak.id(), &req(&weak), 0),
            Err(OverlayError::Difficulty { .. })
        ));
        let strong = loam_common::Identity::generate(4, |_| {});
        assert!(matches!(
            overlay.check_in(weak.id(), &req(&strong), 0),
            Err(OverlayError::KeyMismatch)
        ));
        overlay
            .check_in(strong.id(), &req(&strong), 0)
            .expect("check in");
        // persisted
        let again = Overlay::open(kv, overlay.config().clone()).expect("reopen");
        assert_eq!(again.list().len(), 1);
        assert_eq!(again.online_count(1000), 1);
        assert_eq!(again.online_count(100_000), 0);
    }
}
