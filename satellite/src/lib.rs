//! The Loam satellite: the coordinator. It keeps the metadata (buckets,
//! objects, segments, which node holds which piece), selects nodes, signs
//! order limits, and tracks the nodes that check in. It never sees
//! plaintext or keys.
//!
//! Read first: [`Satellite`] (the peer and its subsystems), then
//! [`endpoint::Endpoint`] (request routing and authentication),
//! [`metainfo::Metainfo`] (the upload/download/list/delete logic),
//! [`overlay::Overlay`] (check-ins, node selection) and [`db`] (the
//! key-value boundary under every table).

pub mod accounting;
pub mod admin;
pub mod apikeys;
pub mod audit;
pub mod charges;
pub mod compute;
pub mod config;
pub mod db;
pub mod endpoint;
pub mod gc;
pub mod lease;
pub mod market;
pub mod metainfo;
pub mod metrics_list;
pub mod orders;
pub mod overlay;
pub mod payouts;
pub mod pg;
pub mod repair;
pub mod satellitedb;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use loam_common::chore::Cycle;
use loam_common::transport::{self, Endpoint as QuicEndpoint, TransportConfig, TransportError};
use loam_common::{Identity, NodeId, NodeUrl, telemetry};
use tokio_util::sync::CancellationToken;

use compute::Compute;
pub use config::Config;
use db::{DbError, Kv, RocksKv};
use metainfo::{Metainfo, MetainfoConfig};
use overlay::{Overlay, OverlayConfig};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SatelliteError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot open the satellite database: {0}")]
    Db(#[from] DbError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// A chore running in this process.
struct Chore {
    task: tokio::task::JoinHandle<()>,
    control: ChoreControl,
}

/// What `POST /api/chores/{name}` needs of a chore: its cycle, and whether
/// this process holds its lease (runs it) now.
#[derive(Clone)]
struct ChoreControl {
    name: &'static str,
    cycle: Arc<Cycle>,
    held: tokio::sync::watch::Receiver<bool>,
}

/// Runs `work` on `service` every time `cycle` fires, until `cancel`, in
/// one satellite process at a time: a run starts only while this process
/// holds the chore's lease (`name`), which it renews while it works.
fn spawn_chore<S, F, Fut>(
    cycle: &Arc<Cycle>,
    cancel: &CancellationToken,
    (leases, name): (&Arc<lease::Leases>, &'static str),
    service: &Arc<S>,
    work: F,
) -> Chore
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (cycle, cancel, service) = (cycle.clone(), cancel.clone(), service.clone());
    let leases = leases.clone();
    let ttl = lease::CHORE_LEASE;
    // Whether this process holds the chore's lease, kept up to date by a
    // keeper that takes or renews it every third of its term.
    let held = Arc::new(tokio::sync::watch::Sender::new(false));
    let chore_cycle = cycle.clone();
    let held_rx = held.subscribe();
    let keeper = {
        let (leases, held, cancel) = (leases.clone(), held.clone(), cancel.clone());
        let cycle = cycle.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let leases2 = leases.clone();
                let now = loam_common::orders::now_ms();
                let got = tokio::task::spawn_blocking(move || leases2.hold(name, ttl, now)).await;
                let got = match got {
                    Ok(Ok(got)) => got,
                    Ok(Err(e)) => {
                        tracing::warn!(chore = name, error = %e, "cannot take or renew the chore's lease");
                        false
                    }
                    Err(_) => false,
                };
                let had = held.send_replace(got);
                if got && !had && !std::mem::take(&mut first) {
                    // Taken over (or first held): run now rather than at
                    // this process's next tick, which may be an interval away.
                    cycle.trigger();
                }
                first = false;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(ttl / 3) => {}
                }
            }
        })
    };
    let task = tokio::spawn(async move {
        cycle
            .run(cancel, || {
                let (leases, service, held) = (leases.clone(), service.clone(), held.clone());
                let work = &work;
                async move {
                    // The first tick may come before the keeper's first
                    // try: ask once here too.
                    let now = loam_common::orders::now_ms();
                    if !*held.borrow() {
                        let got = leases.hold(name, ttl, now).unwrap_or(false);
                        held.send_replace(got);
                    }
                    if *held.borrow() {
                        work(service).await;
                    }
                }
            })
            .await;
        keeper.abort();
        if let Err(e) = leases.release(name) {
            tracing::debug!(chore = name, error = %e, "chore lease not released");
        }
    });
    Chore {
        task,
        control: ChoreControl {
            name,
            cycle: chore_cycle,
            held: held_rx,
        },
    }
}

/// Longest a `POST /api/chores/...` waits, for the lease and for the run.
const RUN_NOW_TIMEOUT: Duration = Duration::from_secs(120);

/// `POST /api/chores/{name}`: runs a chore now in this process, the same
/// work it does every interval, and answers once a run that began after
/// the request is over (an operator's "repair now", and how tests wait for
/// a chore's effect instead of polling for it). With several processes on
/// one database only the holder of the chore's lease runs it: the request
/// waits until this process holds it (another process's lapses when that
/// process dies).
async fn run_chore_now(
    chores: Arc<Vec<ChoreControl>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let Some(chore) = chores.iter().find(|c| c.name == name) else {
        let names: Vec<&str> = chores.iter().map(|c| c.name).collect();
        return (
            StatusCode::NOT_FOUND,
            format!("no chore {name:?}; chores: {}\n", names.join(", ")),
        );
    };
    let mut held = chore.held.clone();
    let run = async {
        if held.wait_for(|h| *h).await.is_err() {
            return Err("the satellite is stopping");
        }
        chore.cycle.trigger_wait().await;
        Ok(())
    };
    match tokio::time::timeout(RUN_NOW_TIMEOUT, run).await {
        Ok(Ok(())) => (StatusCode::OK, "done\n".into()),
        Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        Err(_) if !*held.borrow() => (
            StatusCode::CONFLICT,
            format!("another satellite process holds the {name} lease; ask that one\n"),
        ),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the {name} chore did not finish within {} s\n",
                RUN_NOW_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// `GET /api/nodes/{id}/offline`: answers once the node no longer counts
/// as online here (one online window after its last check-in, later if it
/// checks in again): how an operator or a test waits for a dead node to
/// be treated as gone, instead of guessing a time.
async fn wait_node_offline(
    overlay: Arc<Overlay>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let Ok(id) = id.parse::<NodeId>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a node id\n"),
        );
    };
    if overlay.get(&id).is_none() {
        return (StatusCode::NOT_FOUND, format!("no node {id}\n"));
    }
    match tokio::time::timeout(RUN_NOW_TIMEOUT, overlay.wait_offline(&id)).await {
        Ok(()) => (StatusCode::OK, "offline\n".into()),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "node {id} still online after {} s\n",
                RUN_NOW_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// Where a running satellite can be reached, written to `DIR/run/satellite.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    pub node_id: NodeId,
    pub address: SocketAddr,
    pub url: String,
    pub metrics_url: String,
    pub pid: u32,
}

impl RunInfo {
    pub const PATH: &'static str = "run/satellite.json";

    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(dir.join(Self::PATH))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

pub struct Satellite {
    pub identity: Identity,
    pub config: Config,
    pub endpoint: QuicEndpoint,
    pub overlay: Arc<Overlay>,
    pub metainfo: Arc<Metainfo>,
    /// Compute jobs: planning, scheduling, aggregation.
    pub compute: Arc<Compute>,
    compute_stop: CancellationToken,
    /// Audits, reputation, and the audit chore.
    pub reputation: Arc<audit::Reputation>,
    pub auditor: Arc<audit::Auditor>,
    pub audit_cycle: Arc<Cycle>,
    /// Online tracking: observes every node's check-ins for its online
    /// score.
    pub online_cycle: Arc<Cycle>,
    /// Checker and repairer, and their chore.
    pub repair: Arc<repair::Repair>,
    pub repair_cycle: Arc<Cycle>,
    /// Garbage collection and its chore.
    pub gc: Arc<gc::Gc>,
    pub gc_cycle: Arc<Cycle>,
    /// Storage tally (and pruning of settlement markers), and its chore.
    pub accounting: Arc<accounting::Accounting>,
    pub tally_cycle: Arc<Cycle>,
    /// Paystubs, payments and the nodes' ledgers.
    pub payouts: Arc<payouts::Payouts>,
    /// Chore deleting uploads that were never committed.
    pub abandoned_uploads: Arc<Cycle>,
    http: tokio::net::TcpListener,
    /// The database, for the chore leases.
    kv: Arc<dyn Kv>,
    dir: PathBuf,
}

/// The database `config` names: RocksDB under `dir` when it names none.
pub fn open_database(dir: &Path, config: &Config) -> Result<Arc<dyn Kv>, db::DbError> {
    let url = config.database.trim();
    if url.is_empty() {
        return Ok(Arc::new(RocksKv::open_with(
            &dir.join("db"),
            config.sync_writes,
        )?));
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(db::DbError::Backend(format!(
            "database {url:?} is not a postgres:// address (leave it empty for RocksDB in {})",
            dir.join("db").display()
        )));
    }
    Ok(Arc::new(pg::PgKv::connect(url)?))
}

impl Satellite {
    /// Opens the database (RocksDB under `dir`, or the PostgreSQL database
    /// `config.database` names) and binds the sockets.
    pub async fn new(
        dir: &Path,
        identity: Identity,
        config: Config,
    ) -> Result<Self, SatelliteError> {
        let kv = open_database(dir, &config)?;
        Self::with_kv(dir, identity, config, kv).await
    }

    pub async fn with_kv(
        dir: &Path,
        identity: Identity,
        config: Config,
        kv: Arc<dyn Kv>,
    ) -> Result<Self, SatelliteError> {
        let overlay = Arc::new(Overlay::open(
            kv.clone(),
            OverlayConfig {
                online_window: Duration::from_secs_f64(config.online_window_secs.max(0.0)),
                distinct_subnets: config.distinct_subnets,
                min_difficulty: config.min_difficulty,
                new_node_fraction: config.new_node_fraction,
            },
        )?);
        let metainfo = Arc::new(Metainfo::new(
            kv.clone(),
            overlay.clone(),
            identity.clone(),
            MetainfoConfig {
                redundancy: config.redundancy,
                max_segment_size: config.max_segment_size,
                max_inline_size: config.max_inline_size,
                order_expiration: Duration::from_secs_f64(config.order_expiration_secs.max(1.0)),
                pending_expiration: Duration::from_secs_f64(
                    config.pending_expiration_secs.max(1.0),
                ),
                orders: config.orders.clone(),
                default_storage_limit: config.default_storage_limit,
                default_egress_limit: config.default_egress_limit,
            },
        ));
        let endpoint =
            QuicEndpoint::bind(identity.clone(), config.listen, TransportConfig::default())?;
        let http = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| SatelliteError::Io {
                what: "cannot bind HTTP listener",
                source,
            })?;
        let reputation = Arc::new(audit::Reputation::new(
            kv.clone(),
            overlay.clone(),
            config.audit.clone(),
        ));
        let compute_stop = CancellationToken::new();
        let compute = Arc::new(Compute::new(
            kv.clone(),
            metainfo.clone(),
            overlay.clone(),
            endpoint.clone(),
            config.compute.clone(),
            compute_stop.clone(),
        ));
        let auditor = Arc::new(audit::Auditor::new(
            metainfo.clone(),
            overlay.clone(),
            reputation.clone(),
            endpoint.clone(),
            config.audit.clone(),
        ));
        let audit_cycle = Arc::new(Cycle::new(auditor.interval()));
        let online_cycle = Arc::new(Cycle::new(Duration::from_secs_f64(
            config.audit.online_interval_secs.max(0.1),
        )));
        compute.set_reputation(reputation.clone());
        compute.set_rates(compute::Rates::from(&config.payouts));
        let gc = Arc::new(gc::Gc::new(
            metainfo.clone(),
            overlay.clone(),
            endpoint.clone(),
            config.gc.clone(),
        ));
        let gc_cycle = Arc::new(Cycle::new(gc.interval()));
        let repair = Arc::new(repair::Repair::new(
            metainfo.clone(),
            overlay.clone(),
            endpoint.clone(),
            config.repair.clone(),
        ));
        repair.set_exit_checks(auditor.clone(), reputation.clone());
        let repair_cycle = Arc::new(Cycle::new(repair.interval()));
        let accounting = Arc::new(accounting::Accounting::new(
            kv.clone(),
            metainfo.clone(),
            config.accounting.clone(),
        ));
        let tally_cycle = Arc::new(Cycle::new(accounting.interval()));
        let payouts = Arc::new(payouts::Payouts::new(
            kv.clone(),
            identity.clone(),
            overlay.clone(),
            metainfo.clone(),
            config.payouts.clone(),
        ));
        let abandoned_uploads = Arc::new(Cycle::new(Duration::from_secs_f64(
            (config.pending_expiration_secs / 4.0).clamp(1.0, 3600.0),
        )));
        Ok(Self {
            identity,
            config,
            endpoint,
            overlay,
            metainfo,
            compute,
            compute_stop,
            reputation,
            auditor,
            audit_cycle,
            online_cycle,
            gc,
            gc_cycle,
            repair,
            repair_cycle,
            accounting,
            tally_cycle,
            payouts,
            abandoned_uploads,
            http,
            kv,
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

    /// `ID@HOST:PORT` for nodes and access grants.
    pub fn url(&self) -> NodeUrl {
        let address = if self.config.external_address.is_empty() {
            let a = self.addr();
            if a.ip().is_unspecified() {
                format!("127.0.0.1:{}", a.port())
            } else {
                a.to_string()
            }
        } else {
            self.config.external_address.clone()
        };
        NodeUrl {
            id: self.id(),
            address,
        }
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
            url: self.url().to_string(),
            metrics_url: format!("http://{}/metrics", self.http_addr()),
            pid: std::process::id(),
        }
    }

    pub fn write_run_info(&self) -> std::io::Result<()> {
        loam_common::config::write_json_atomic(&self.dir.join(RunInfo::PATH), &self.run_info())
    }

    /// Serves until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), SatelliteError> {
        let endpoint = Arc::new(endpoint::Endpoint {
            own_id: self.id(),
            overlay: self.overlay.clone(),
            metainfo: self.metainfo.clone(),
            compute: self.compute.clone(),
            reputation: self.reputation.clone(),
            payouts: self.payouts.clone(),
            repair: self.repair.clone(),
            minimum_node_version: self.config.minimum_node_version.clone(),
            started_ms: loam_common::orders::now_ms(),
            quic: self.endpoint.clone(),
            settling: Default::default(),
            settlements: tokio::sync::Semaphore::new(endpoint::MAX_SETTLEMENTS),
        });
        match self.compute.resume_jobs() {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "resumed compute jobs"),
            Err(e) => tracing::warn!(error = %e, "cannot resume compute jobs"),
        }
        crate::metrics_list::describe(self.overlay.online_count(loam_common::orders::now_ms()));
        let leases = Arc::new(lease::Leases::new(self.kv.clone()));
        let sweeper = spawn_chore(
            &self.abandoned_uploads,
            &cancel,
            (&leases, "abandoned-uploads"),
            &self.metainfo,
            |metainfo| async move {
                let now = loam_common::orders::now_ms();
                match tokio::task::spawn_blocking(move || {
                    let expired = metainfo.delete_expired_objects(now)?;
                    if expired > 0 {
                        tracing::info!(objects = expired, "deleted expired objects");
                    }
                    metainfo.delete_abandoned_uploads(now)
                })
                .await
                {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(uploads = n, "deleted abandoned uploads"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "abandoned-upload sweep failed"),
                    Err(e) => tracing::warn!(error = %e, "abandoned-upload sweep panicked"),
                }
            },
        );
        // Jobs whose driver stopped (here, or in another process on the
        // same database) are picked up again once their lease lapses; the
        // node table is reloaded when other processes write it too.
        let background = {
            let (compute, overlay, cancel) =
                (self.compute.clone(), self.overlay.clone(), cancel.clone());
            let shared = self.kv.shared();
            let kv = self.kv.clone();
            tokio::spawn(async move {
                let mut jobs = tokio::time::interval(compute::JOB_LEASE / 3);
                let mut nodes = tokio::time::interval(overlay::REFRESH_INTERVAL);
                jobs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                nodes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = jobs.tick() => {
                            for (kind, bytes) in kv.memory() {
                                metrics::gauge!("loam_satellite_database_memory_bytes", "kind" => kind)
                                    .set(bytes as f64);
                            }
                            let compute = compute.clone();
                            match tokio::task::spawn_blocking(move || compute.resume_jobs()).await {
                                Ok(Ok(0)) => {}
                                Ok(Ok(n)) => tracing::info!(jobs = n, "took over compute jobs"),
                                Ok(Err(e)) => tracing::warn!(error = %e, "cannot resume compute jobs"),
                                Err(e) => tracing::warn!(error = %e, "job resumption panicked"),
                            }
                        }
                        _ = nodes.tick(), if shared => {
                            let overlay = overlay.clone();
                            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || overlay.refresh()).await {
                                tracing::warn!(error = %e, "cannot reload the node table");
                            }
                        }
                    }
                }
            })
        };
        let gc_task = spawn_chore(
            &self.gc_cycle,
            &cancel,
            (&leases, "gc"),
            &self.gc,
            |gc| async move {
                let s = gc.run_once().await;
                if s.trashed > 0 || s.failed > 0 {
                    tracing::info!(
                        nodes = s.nodes,
                        failed = s.failed,
                        trashed = s.trashed,
                        bytes = s.trashed_bytes,
                        "garbage collection"
                    );
                }
            },
        );
        let audit_task = spawn_chore(
            &self.audit_cycle,
            &cancel,
            (&leases, "audit"),
            &self.auditor,
            |a| async move {
                let (ok, failed, offline) = a.run_once().await;
                if failed > 0 {
                    tracing::info!(ok, failed, offline, "audits");
                }
            },
        );
        let online_task = spawn_chore(
            &self.online_cycle,
            &cancel,
            (&leases, "online"),
            &self.reputation,
            |r| async move {
                let now = loam_common::orders::now_ms();
                match tokio::task::spawn_blocking(move || r.track_online(now)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "online tracking failed"),
                    Err(e) => tracing::warn!(error = %e, "online tracking panicked"),
                }
            },
        );
        let tally_task = spawn_chore(
            &self.tally_cycle,
            &cancel,
            (&leases, "tally"),
            &self.accounting,
            |a| async move {
                if let Err(e) = tokio::task::spawn_blocking(move || a.run_once()).await {
                    tracing::warn!(error = %e, "storage tally panicked");
                }
            },
        );
        let repair_task = spawn_chore(
            &self.repair_cycle,
            &cancel,
            (&leases, "repair"),
            &self.repair,
            |r| async move {
                let s = r.run_once().await;
                if s.below_threshold > 0 {
                    tracing::info!(
                        segments = s.segments,
                        below = s.below_threshold,
                        repaired = s.repaired,
                        failed = s.failed,
                        "repair"
                    );
                }
            },
        );
        let chores = [
            sweeper,
            gc_task,
            audit_task,
            online_task,
            tally_task,
            repair_task,
        ];
        let runnable = Arc::new(chores.iter().map(|c| c.control.clone()).collect::<Vec<_>>());
        let chore_routes = axum::Router::new().route(
            "/api/chores/{name}",
            axum::routing::post(move |name| run_chore_now(runnable.clone(), name)),
        );
        let overlay = self.overlay.clone();
        let router = telemetry::metrics_router("satellite")
            .route("/health", axum::routing::get(|| async { "ok" }))
            .route(
                "/api/nodes/{id}/offline",
                axum::routing::get(move |id| wait_node_offline(overlay.clone(), id)),
            )
            .merge(telemetry::same_origin_only(chore_routes, Vec::new()));
        let http_task = tokio::spawn(telemetry::serve_http(self.http, router, cancel.clone()));
        let quic = self.endpoint.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                incoming = quic.accept() => {
                    let Some(incoming) = incoming else { break };
                    let endpoint = endpoint.clone();
                    tokio::spawn(async move {
                        let conn = match incoming.await {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::debug!(error = %e, "handshake failed");
                                return;
                            }
                        };
                        let Ok((peer, _)) = transport::peer_id(&conn) else {
                            conn.close(1u32.into(), b"no identity");
                            return;
                        };
                        let remote = conn.remote_address();
                        while let Ok((send, recv)) = conn.accept_bi().await {
                            tokio::spawn(endpoint.clone().handle_stream(peer, remote, send, recv));
                        }
                    });
                }
            }
        }
        self.compute_stop.cancel();
        quic.close();
        for chore in chores {
            let _ = chore.task.await;
        }
        let _ = tokio::join!(http_task, background);
        let _ = tokio::time::timeout(Duration::from_secs(2), quic.wait_idle()).await;
        Ok(())
    }
}
