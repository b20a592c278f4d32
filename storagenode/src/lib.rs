//! The Loam storage node: holds erasure-coded, encrypted pieces on local
//! disk and serves them over QUIC to uplinks that carry satellite-signed
//! order limits.
//!
//! Read first: [`StorageNode`] (the peer: its subsystems as named fields and
//! how they are started), then [`piecestore::Piecestore`] (upload/download
//! endpoints and their checks), [`piecestore::NodeDb`] (piece metadata, used
//! space and orders in RocksDB) and [`contact::Contact`] (check-ins).
//!
//! Data flow of an upload: QUIC stream → `Piecestore::handle_stream` →
//! order-limit and order checks → bytes hashed and written to a temporary
//! file → fsync, rename, metadata committed → node-signed piece hash back.

pub mod adversary;
pub mod compute;
pub mod config;
pub mod contact;
pub mod dashboard;
pub mod metrics_list;
pub mod orders;
pub mod payouts;
pub mod piecestore;
pub mod preflight;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use loam_common::transport::{Endpoint, TransportConfig, TransportError};
use loam_common::{Identity, NodeId, telemetry};
use tokio_util::sync::CancellationToken;

pub use config::Config;
use contact::Contact;
use piecestore::{DbError, FileBlobs, NodeDb, Piecestore, Trust};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot open the node database: {0}")]
    Db(#[from] DbError),
    #[error(transparent)]
    Wallet(#[from] loam_common::wallet::WalletError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where a running node can be reached, written to `DIR/run/node.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    pub node_id: NodeId,
    pub address: SocketAddr,
    pub metrics_url: String,
    pub pid: u32,
}

/// One storage node with its subsystems.
pub struct StorageNode {
    pub identity: Identity,
    pub config: Config,
    pub endpoint: Endpoint,
    pub piecestore: Arc<Piecestore>,
    pub contact: Arc<Contact>,
    /// Order settlement with every satellite, and its chore.
    pub settler: Arc<orders::Settler>,
    http: tokio::net::TcpListener,
    dir: PathBuf,
}

impl StorageNode {
    /// Opens the node's storage under `dir` and binds its sockets.
    pub async fn new(dir: &Path, identity: Identity, config: Config) -> Result<Self, NodeError> {
        Self::with_lies(dir, identity, config, adversary::Lies::default()).await
    }

    /// Like [`StorageNode::new`], for a node that lies about what `lies`
    /// names: how tests play a dishonest node.
    pub async fn with_lies(
        dir: &Path,
        identity: Identity,
        config: Config,
        lies: adversary::Lies,
    ) -> Result<Self, NodeError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| NodeError::Io { what, path, source }
        };
        let storage = dir.join("storage");
        let durability = lies
            .durability
            .clone()
            .unwrap_or_else(|| Arc::new(piecestore::Fsync));
        let blobs = FileBlobs::open_with(&storage, config.sync_writes, durability)
            .map_err(io("cannot open piece storage", &storage))?;
        let db = Arc::new(NodeDb::open_with(&dir.join("db"), config.sync_writes)?);
        let trust = Arc::new(Trust::new(config.satellites.iter().map(|s| s.id).collect()));
        let endpoint = Endpoint::bind(identity.clone(), config.listen, TransportConfig::default())?;
        let addr = endpoint
            .local_addr()
            .map_err(io("cannot read bound address", dir))?;
        let http = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(io("cannot bind HTTP listener", dir))?;
        let mut blobs: Arc<dyn piecestore::Blobs> = Arc::new(blobs);
        if let Some(wrap) = &lies.blobs {
            blobs = wrap(blobs);
        }
        let piecestore = Arc::new(Piecestore::new(
            identity.clone(),
            db.clone(),
            blobs.clone(),
            trust.clone(),
            config.allocated_bytes,
        ));
        if let Some(code) = lies.audit_error {
            piecestore.lie_to_audits(code);
        }
        if config.compute.enabled {
            piecestore.set_trainer(Arc::new(compute::Trainer::new(
                identity.clone(),
                db,
                blobs,
                trust,
                endpoint.clone(),
                config.compute.clone(),
                lies.clone(),
            )));
        }
        let external = if config.external_address.is_empty() {
            advertised(addr)
        } else {
            config.external_address.clone()
        };
        let wallet = if config.wallet.trim().is_empty() {
            String::new()
        } else {
            config
                .wallet
                .parse::<loam_common::wallet::Wallet>()?
                .to_checksummed()
        };
        let contact = Arc::new(
            Contact::new(
                endpoint.clone(),
                config.satellites.clone(),
                piecestore.clone(),
                config.compute.capabilities(),
                external,
                wallet,
                Duration::from_secs_f64(config.checkin_interval_secs.max(0.05)),
            )
            .lie(&lies),
        );
        let settler = Arc::new(orders::Settler::new(
            endpoint.clone(),
            contact.clone(),
            piecestore.db().clone(),
            Duration::from_secs_f64(config.settle_interval_secs.max(0.05)),
        ));
        Ok(Self {
            identity,
            config,
            endpoint,
            piecestore,
            contact,
            settler,
            http,
            dir: dir.to_path_buf(),
        })
    }

    pub fn id(&self) -> NodeId {
        self.identity.id()
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("bound socket has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn run_info(&self) -> RunInfo {
        RunInfo {
            node_id: self.id(),
            address: self.addr(),
            metrics_url: format!("http://{}/metrics", self.http_addr()),
            pid: std::process::id(),
        }
    }

    /// Writes `DIR/run/node.json` atomically.
    pub fn write_run_info(&self) -> std::io::Result<()> {
        loam_common::config::write_json_atomic(&self.dir.join("run/node.json"), &self.run_info())
    }

    /// Runs every subsystem until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), NodeError> {
        let address = if self.config.external_address.is_empty() {
            advertised(self.addr())
        } else {
            self.config.external_address.clone()
        };
        let Self {
            endpoint,
            piecestore,
            contact,
            settler,
            http,
            config,
            dir,
            ..
        } = self;
        let dashboard = Arc::new(dashboard::Dashboard::new(
            contact.clone(),
            piecestore.clone(),
            dir.clone(),
            config.wallet.clone(),
            address,
        ));
        crate::metrics_list::describe(piecestore.db().usage(), config.allocated_bytes);
        let health = {
            let contact = contact.clone();
            move || {
                let contact = contact.clone();
                async move {
                    use axum::http::StatusCode;
                    match contact.health(loam_common::orders::now_ms()) {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(reasons) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("{}\n", reasons.join("\n")),
                        ),
                    }
                }
            }
        };
        let router = telemetry::metrics_router("storagenode")
            .route("/health", axum::routing::get(health))
            .route(
                "/api/chores/check-in",
                axum::routing::post({
                    let contact = contact.clone();
                    move || run_now(contact.clone(), |c| &c.cycle)
                }),
            )
            .route(
                "/api/chores/settle",
                axum::routing::post({
                    let settler = settler.clone();
                    move || run_now(settler.clone(), |s| &s.cycle)
                }),
            )
            .merge(dashboard.router());
        let router = telemetry::same_origin_only(router, config.dashboard_hosts.clone());
        let http_task = tokio::spawn(telemetry::serve_http(http, router, cancel.clone()));
        let contact_task = {
            let (contact, cancel) = (contact.clone(), cancel.clone());
            tokio::spawn(async move {
                let c = contact.clone();
                contact
                    .cycle
                    .run(cancel, move || {
                        let c = c.clone();
                        async move { c.check_in_all().await }
                    })
                    .await
            })
        };
        let settle_task = {
            let (settler, cancel) = (settler.clone(), cancel.clone());
            let (endpoint, dir, node) = (endpoint.clone(), dir.clone(), piecestore.identity().id());
            let satellites = config.satellites.clone();
            tokio::spawn(async move {
                let s = settler.clone();
                settler
                    .cycle
                    .run(cancel, move || {
                        let s = s.clone();
                        let (endpoint, dir, satellites) =
                            (endpoint.clone(), dir.clone(), satellites.clone());
                        async move {
                            // New paystubs for the dashboard, verified
                            // before they are kept.
                            for sat in &satellites {
                                if let Err(e) = payouts::fetch(&dir, &endpoint, &node, sat).await {
                                    tracing::debug!(satellite = %sat.id.short(), error = %e, "ledger not fetched");
                                }
                            }
                            let stats = s.settle_all().await;
                            if stats.windows_settled > 0 {
                                tracing::info!(
                                    windows = stats.windows_settled,
                                    accepted = stats.orders_accepted,
                                    rejected = stats.orders_rejected,
                                    "orders settled"
                                );
                            }
                        }
                    })
                    .await
            })
        };
        let prune_task = {
            let (db, cancel) = (piecestore.db().clone(), cancel.clone());
            tokio::spawn(async move {
                let cycle = loam_common::chore::Cycle::new(Duration::from_secs(600));
                cycle
                    .run(cancel, || {
                        let db = db.clone();
                        async move {
                            let now = loam_common::orders::now_ms();
                            if let Err(e) = tokio::task::spawn_blocking(move || {
                                // The day's disk figure for the dashboard.
                                let used = db.usage().used_bytes;
                                if let Err(e) = db.note_disk_day(now.div_euclid(86_400_000), used) {
                                    tracing::warn!(error = %e, "noting the day's disk use failed");
                                }
                                db.prune_serials(now)
                            })
                            .await
                            {
                                tracing::warn!(error = %e, "serial pruning failed");
                            }
                        }
                    })
                    .await
            })
        };
        let trash_task = {
            let (blobs, db, cancel) = (
                piecestore.blobs().clone(),
                piecestore.db().clone(),
                cancel.clone(),
            );
            let grace = config.trash_grace_secs.max(0.0);
            tokio::spawn(async move {
                let cycle = loam_common::chore::Cycle::new(Duration::from_secs_f64(
                    (grace / 4.0).clamp(0.5, 3600.0),
                ));
                cycle
                    .run(cancel, || {
                        let (blobs, db) = (blobs.clone(), db.clone());
                        async move {
                            let before = loam_common::orders::now_ms() - (grace * 1000.0) as i64;
                            match tokio::task::spawn_blocking(move || {
                                let n = blobs.empty_trash(before)?;
                                if n > 0 {
                                    db.trash_emptied(n).map_err(std::io::Error::other)?;
                                }
                                Ok::<_, std::io::Error>(n)
                            })
                            .await
                            {
                                Ok(Ok(0)) => {}
                                Ok(Ok(n)) => tracing::info!(bytes = n, "emptied trash"),
                                Ok(Err(e)) => tracing::warn!(error = %e, "emptying trash failed"),
                                Err(e) => tracing::warn!(error = %e, "emptying trash panicked"),
                            }
                        }
                    })
                    .await
            })
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let store = piecestore.clone();
                    tokio::spawn(async move {
                        let conn = match incoming.await {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::debug!(error = %e, "handshake failed");
                                return;
                            }
                        };
                        // Uplinks may be anonymous; satellites are known by id.
                        let peer = loam_common::transport::peer_id(&conn)
                            .map(|(id, _)| id)
                            .unwrap_or(NodeId::from_bytes([0; loam_common::identity::NODE_ID_LEN]));
                        while let Ok((send, recv)) = conn.accept_bi().await {
                            tokio::spawn(store.clone().handle_stream(peer, send, recv));
                        }
                    });
                }
            }
        }
        endpoint.close();
        let _ = tokio::join!(http_task, contact_task, prune_task, trash_task, settle_task);
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        Ok(())
    }
}

/// The address to announce for a socket bound to `addr`: loopback when
/// bound to the unspecified address.
fn advertised(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

/// `POST /api/chores/...`: runs a chore now, the same work it does every
/// interval, and answers once a run that began after the request is over
/// (an operator's "check in now", and how tests wait for a chore's effect
/// instead of polling for it).
async fn run_now<T>(
    owner: Arc<T>,
    cycle: impl Fn(&T) -> &loam_common::chore::Cycle,
) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    match tokio::time::timeout(Duration::from_secs(60), cycle(&owner).trigger_wait()).await {
        Ok(()) => (StatusCode::OK, "done\n"),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            "the chore did not finish within 60 s\n",
        ),
    }
}
