//! Check-ins with satellites: the node tells each trusted satellite its
//! address, free space, version and compute capabilities, and learns the
//! satellite's key (pinned by id through the TLS handshake).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use loam_common::chore::Cycle;
use loam_common::orders::now_ms;
use loam_common::rpc::{self, CallError};
use loam_common::transport::{self, Endpoint, TransportError};
use loam_common::{NodeId, NodeUrl, pb};
use tokio::sync::watch;

use crate::piecestore::Piecestore;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContactError {
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        address: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("satellite {0} is not in this node's trusted list")]
    Untrusted(String),
}

/// How long connecting to a satellite may take.
const DIAL_DEADLINE: Duration = Duration::from_secs(10);
/// How long a check-in may go unanswered before it is tried again on a
/// fresh connection (see [`Contact::check_in`]).
const CHECK_IN_HEDGE: Duration = Duration::from_secs(3);

/// Below this much free space on the piece file system a node reports
/// itself unhealthy: it can no longer take even a small piece.
pub const LOW_DISK: u64 = 64 << 20;

pub struct Contact {
    capabilities: pb::NodeCapabilities,
    endpoint: Endpoint,
    satellites: Vec<NodeUrl>,
    piecestore: Arc<Piecestore>,
    external_address: String,
    wallet: String,
    pub cycle: Cycle,
    /// Number of satellites checked in with successfully at least once.
    checked_in: watch::Sender<usize>,
    /// Per satellite: the last accepted check-in and the standing it
    /// reported.
    standings: RwLock<HashMap<NodeId, SatelliteStanding>>,
    /// A dishonest node's advertised free space (tests only).
    free_disk_lie: Option<i64>,
}

/// What one satellite last said about this node.
#[derive(Debug, Clone, Default)]
pub struct SatelliteStanding {
    pub last_check_in_ms: i64,
    pub standing: Option<pb::NodeStanding>,
    /// The satellite's order settlement window.
    pub order_window_ms: i64,
    /// What the satellite pays, for the earnings estimate.
    pub rates: Option<pb::PayoutRates>,
    /// Versions the satellite asks for (empty: none).
    pub minimum_version: String,
    pub suggested_version: String,
    /// The satellite could dial this node back at its advertised address.
    pub reachable: bool,
    /// Where the satellite saw the check-in come from.
    pub observed_address: String,
}

impl Contact {
    pub fn new(
        endpoint: Endpoint,
        satellites: Vec<NodeUrl>,
        piecestore: Arc<Piecestore>,
        capabilities: pb::NodeCapabilities,
        external_address: String,
        wallet: String,
        interval: std::time::Duration,
    ) -> Self {
        Self {
            endpoint,
            satellites,
            piecestore,
            capabilities,
            external_address,
            wallet,
            cycle: Cycle::new(interval),
            checked_in: watch::channel(0).0,
            standings: RwLock::new(HashMap::new()),
            free_disk_lie: None,
        }
    }

    /// Makes the node advertise what `lies` says about its free space and
    /// compute (tests only, see [`crate::adversary`]).
    pub fn lie(mut self, lies: &crate::adversary::Lies) -> Self {
        self.free_disk_lie = lies.free_disk;
        if let Some((cores, gpus)) = lies.compute {
            self.capabilities.cpu_cores = cores;
            self.capabilities.gpus = gpus;
            self.capabilities.max_tasks = u32::MAX;
            self.capabilities.memory_bytes = u64::MAX;
        }
        if let Some(adapter) = &lies.adapter {
            self.capabilities.adapter = Some(adapter.clone());
            self.capabilities.gpus = self.capabilities.gpus.max(1);
        }
        self
    }

    pub fn satellites(&self) -> &[NodeUrl] {
        &self.satellites
    }

    /// Three missed check-ins in a row mean the satellite cannot see us.
    pub fn stale_after_ms(&self) -> i64 {
        (self.cycle.interval().as_millis() as i64).saturating_mul(3)
    }

    /// What this node announces for compute.
    pub fn capabilities(&self) -> pb::NodeCapabilities {
        self.capabilities.clone()
    }

    /// What each satellite last reported (absent: never checked in).
    pub fn standings(&self) -> HashMap<NodeId, SatelliteStanding> {
        self.standings.read().expect("standings lock").clone()
    }

    /// `Ok` when the node is online and in good standing with every
    /// satellite and has room on its disk; otherwise the reasons, one per
    /// satellite in trouble, and one for a full disk.
    pub fn health(&self, now_ms: i64) -> Result<(), Vec<String>> {
        let standings = self.standings();
        let stale_ms = self.stale_after_ms();
        let mut problems = Vec::new();
        for sat in &self.satellites {
            let name = sat.id.short();
            let Some(s) = standings.get(&sat.id) else {
                problems.push(format!("satellite {name}: not checked in yet"));
                continue;
            };
            if now_ms - s.last_check_in_ms > stale_ms {
                problems.push(format!(
                    "satellite {name}: no successful check-in for {} s",
                    (now_ms - s.last_check_in_ms) / 1000
                ));
            }
            if !s.reachable {
                problems.push(format!(
                    "satellite {name}: cannot reach this node at {} over QUIC (its check-in came \
                     from {}); forward the UDP port or set external_address",
                    self.external_address, s.observed_address
                ));
            }
            let Some(st) = &s.standing else { continue };
            if st.disqualified_unix_ms > 0 {
                problems.push(format!(
                    "satellite {name}: disqualified (audit score {:.3}, threshold {})",
                    st.audit_score, st.dq_threshold
                ));
            } else if st.suspended_unix_ms > 0 {
                problems.push(format!(
                    "satellite {name}: suspended for audit errors (unknown-audit score {:.3} < {}); \
                     check the disk and the node's log",
                    st.unknown_score, st.suspend_threshold
                ));
            } else if st.offline_suspended_unix_ms > 0 {
                problems.push(format!(
                    "satellite {name}: suspended for downtime (online score {:.3} < {})",
                    st.online_score, st.offline_threshold
                ));
            }
        }
        let fs_free = self.piecestore.filesystem_free();
        if fs_free < LOW_DISK {
            problems.push(format!(
                "disk full: {fs_free} bytes free on the file system holding the pieces ({} left \
                 of the allocation); no new pieces are accepted",
                self.piecestore.allocation_left()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Resolves once every satellite has accepted a check-in.
    pub async fn wait_checked_in(&self) {
        let want = self.satellites.len();
        let _ = self.checked_in.subscribe().wait_for(|n| *n >= want).await;
    }

    /// One check-in round with every satellite.
    pub async fn check_in_all(&self) {
        let mut ok = 0;
        for sat in &self.satellites {
            match self.check_in(sat).await {
                Ok(()) => {
                    ok += 1;
                    metrics::counter!("loam_storagenode_checkins_total", "result" => "ok")
                        .increment(1);
                }
                Err(e) => {
                    self.endpoint.forget(&sat.id);
                    metrics::counter!("loam_storagenode_checkins_total", "result" => "error")
                        .increment(1);
                    tracing::warn!(satellite = %sat.id.short(), error = %e, "check-in failed");
                }
            }
        }
        self.checked_in.send_if_modified(|n| {
            let changed = ok > *n;
            *n = (*n).max(ok);
            changed
        });
    }

    async fn check_in(&self, sat: &NodeUrl) -> Result<(), ContactError> {
        let conn = tokio::time::timeout(DIAL_DEADLINE, self.endpoint.dial_url(sat))
            .await
            .map_err(|_| ContactError::Call(CallError::Deadline(DIAL_DEADLINE)))??;
        let result = match tokio::time::timeout(CHECK_IN_HEDGE, self.check_in_on(sat, &conn)).await
        {
            Ok(result) => result,
            // No answer yet: the connection may lead to a satellite process
            // that died (nothing tells a QUIC client so until its idle
            // timeout). Check in again on a fresh connection to whichever
            // of the satellite's addresses answers; a check-in is
            // idempotent, so the first one finishing late does no harm.
            Err(_) => {
                self.endpoint.forget(&sat.id);
                let fresh = tokio::time::timeout(DIAL_DEADLINE, self.endpoint.dial_url(sat))
                    .await
                    .map_err(|_| ContactError::Call(CallError::Deadline(DIAL_DEADLINE)))??;
                self.check_in_on(sat, &fresh).await
            }
        };
        if result.is_err() {
            // A satellite that restarted left this connection dead: the
            // next check-in dials afresh instead of waiting for the idle
            // timeout.
            self.endpoint.forget(&sat.id);
        }
        result
    }

    async fn check_in_on(
        &self,
        sat: &NodeUrl,
        conn: &quinn::Connection,
    ) -> Result<(), ContactError> {
        let (_, key) = transport::peer_id(conn)?;
        if !self.piecestore.trust().learn(key) {
            return Err(ContactError::Untrusted(sat.to_string()));
        }
        let request = pb::CheckInRequest {
            address: self.external_address.clone(),
            free_disk: self
                .free_disk_lie
                .unwrap_or(self.piecestore.free_bytes() as i64),
            version: loam_common::VERSION.to_string(),
            capabilities: Some(self.capabilities.clone()),
            public_key: self.endpoint.identity().public().as_bytes().to_vec().into(),
            wallet: self.wallet.clone(),
        };
        let resp =
            rpc::satellite(conn, &[], pb::satellite_request::Request::CheckIn(request)).await?;
        let r = match resp {
            pb::satellite_response::Response::CheckIn(r) => r,
            _ => Default::default(),
        };
        self.standings.write().expect("standings lock").insert(
            sat.id,
            SatelliteStanding {
                last_check_in_ms: now_ms(),
                standing: r.standing,
                order_window_ms: r.order_window_ms,
                rates: r.rates,
                minimum_version: r.minimum_version,
                suggested_version: r.suggested_version,
                reachable: r.reachable,
                observed_address: r.observed_address,
            },
        );
        Ok(())
    }
}
