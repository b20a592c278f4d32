//! Check-ins with satellites: the node tells each trusted satellite its
//! address, free space, version and compute capabilities, and learns the
//! satellite's key (pinned by id through the TLS handshake).

use std::sync::Arc;

use loam_common::chore::Cycle;
use loam_common::rpc::{self, CallError};
use loam_common::transport::{self, Endpoint, TransportError};
use loam_common::{NodeUrl, pb};
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

pub struct Contact {
    capabilities: pb::NodeCapabilities,
    endpoint: Endpoint,
    satellites: Vec<NodeUrl>,
    piecestore: Arc<Piecestore>,
    external_address: String,
    pub cycle: Cycle,
    /// Number of satellites checked in with successfully at least once.
    checked_in: watch::Sender<usize>,
}

impl Contact {
    pub fn new(
        endpoint: Endpoint,
        satellites: Vec<NodeUrl>,
        piecestore: Arc<Piecestore>,
        capabilities: pb::NodeCapabilities,
        external_address: String,
        interval: std::time::Duration,
    ) -> Self {
        Self {
            endpoint,
            satellites,
            piecestore,
            capabilities,
            external_address,
            cycle: Cycle::new(interval),
            checked_in: watch::channel(0).0,
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
        let addr = sat.socket_addr().map_err(|source| ContactError::Resolve {
            address: sat.address.clone(),
            source,
        })?;
        let conn = self.endpoint.dial(sat.id, addr).await?;
        let (_, key) = transport::peer_id(&conn)?;
        if !self.piecestore.trust().learn(key) {
            return Err(ContactError::Untrusted(sat.to_string()));
        }
        let request = pb::CheckInRequest {
            address: self.external_address.clone(),
            free_disk: self.piecestore.free_bytes() as i64,
            version: loam_common::VERSION.to_string(),
            capabilities: Some(self.capabilities),
            public_key: self.endpoint.identity().public().as_bytes().to_vec().into(),
        };
        rpc::satellite(&conn, &[], pb::satellite_request::Request::CheckIn(request)).await?;
        Ok(())
    }
}
