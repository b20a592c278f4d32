//! The in-process test network: one satellite and N storage nodes as tasks
//! in the calling process, on 127.0.0.1 with port 0, built from counts plus
//! reconfigure hooks (like Storj's testplanet). Every node can be stopped
//! and restarted; everything is removed when the planet is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use loam_common::access::Access;
use loam_common::chore::Cycle;
use loam_common::erasure::RedundancyScheme;
use loam_common::{Identity, NodeId, NodeUrl};
use loam_satellite::Satellite;
use loam_storagenode::StorageNode;
use loam_storagenode::adversary::Lies;
use loam_storagenode::piecestore::Piecestore;
use loam_uplink::Project;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type SatelliteHook = Box<dyn Fn(&mut loam_satellite::Config) + Send + Sync>;
type NodeHook = Box<dyn Fn(usize, &mut loam_storagenode::Config) + Send + Sync>;

/// What to start.
pub struct PlanetConfig {
    pub storage_nodes: usize,
    pub redundancy: RedundancyScheme,
    pub reconfigure_satellite: Option<SatelliteHook>,
    pub reconfigure_node: Option<NodeHook>,
    /// Nodes (by index) that lie about something (see
    /// [`loam_storagenode::adversary::Lies`]).
    pub liars: Vec<(usize, Lies)>,
}

impl PlanetConfig {
    pub fn new(storage_nodes: usize) -> Self {
        Self {
            storage_nodes,
            redundancy: RedundancyScheme::new(2, 3, 4, 5).expect("valid"),
            reconfigure_satellite: None,
            reconfigure_node: None,
            liars: Vec::new(),
        }
    }

    /// Makes node `i` lie as `lies` says.
    pub fn liar(mut self, i: usize, lies: Lies) -> Self {
        self.liars.push((i, lies));
        self
    }
}

pub struct PlanetNode {
    pub id: NodeId,
    pub identity: Identity,
    pub dir: std::path::PathBuf,
    pub addr: Option<SocketAddr>,
    pub piecestore: Option<Arc<Piecestore>>,
    /// Check-ins of the running node (what the satellite says of it).
    pub contact: Option<Arc<loam_storagenode::contact::Contact>>,
    /// Its HTTP server (`/metrics`, `/health`) while running.
    pub http_addr: Option<SocketAddr>,
    /// Its order settlement (trigger it instead of waiting).
    pub settler: Option<Arc<loam_storagenode::orders::Settler>>,
    config: loam_storagenode::Config,
    lies: Lies,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// The satellite's chores, to pause, resume and trigger-and-await.
pub struct Chores {
    pub audit: Arc<Cycle>,
    pub online: Arc<Cycle>,
    pub repair: Arc<Cycle>,
    pub gc: Arc<Cycle>,
    pub tally: Arc<Cycle>,
    pub abandoned_uploads: Arc<Cycle>,
}

pub struct Planet {
    pub satellite_url: NodeUrl,
    pub chores: Chores,
    pub satellite_identity: Identity,
    pub satellite: Arc<loam_satellite::metainfo::Metainfo>,
    pub satellite_overlay: Arc<loam_satellite::overlay::Overlay>,
    pub compute: Arc<loam_satellite::compute::Compute>,
    pub gc: Arc<loam_satellite::gc::Gc>,
    pub repair: Arc<loam_satellite::repair::Repair>,
    pub auditor: Arc<loam_satellite::audit::Auditor>,
    pub accounting: Arc<loam_satellite::accounting::Accounting>,
    pub payouts: Arc<loam_satellite::payouts::Payouts>,
    pub reputation: Arc<loam_satellite::audit::Reputation>,
    pub nodes: Vec<PlanetNode>,
    pub access: Access,
    cancel: CancellationToken,
    sat_task: JoinHandle<()>,
    /// The PostgreSQL server of a satellite on PostgreSQL
    /// ([`crate::test_database`]); after the satellite in drop order.
    _db: Option<loam_satellite::pg::Cluster>,
    _dir: tempfile::TempDir,
}

impl Planet {
    pub async fn start(config: PlanetConfig) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let cancel = CancellationToken::new();
        let sat_identity = Identity::generate(0, |_| {});
        let mut sat_config = loam_satellite::Config {
            listen: "127.0.0.1:0".parse()?,
            http_listen: "127.0.0.1:0".parse()?,
            redundancy: config.redundancy,
            min_difficulty: 0,
            distinct_subnets: false,
            online_window_secs: 3600.0,
            sync_writes: false,
            ..Default::default()
        };
        if let Some(hook) = &config.reconfigure_satellite {
            hook(&mut sat_config);
        }
        let db = match crate::test_database().as_deref() {
            Some("postgres") => {
                let cluster =
                    tokio::task::spawn_blocking(|| loam_satellite::pg::Cluster::start(None))
                        .await??;
                sat_config.database = cluster.create_database("planet")?;
                Some(cluster)
            }
            _ => None,
        };
        let sat_dir = dir.path().join("satellite");
        std::fs::create_dir_all(&sat_dir)?;
        let sat = Satellite::new(&sat_dir, sat_identity.clone(), sat_config).await?;
        let satellite_url = sat.url();
        let metainfo = sat.metainfo.clone();
        let compute = sat.compute.clone();
        let gc = sat.gc.clone();
        let overlay = sat.overlay.clone();
        let repair = sat.repair.clone();
        let (auditor, reputation) = (sat.auditor.clone(), sat.reputation.clone());
        let (accounting, payouts) = (sat.accounting.clone(), sat.payouts.clone());
        let chores = Chores {
            audit: sat.audit_cycle.clone(),
            online: sat.online_cycle.clone(),
            repair: sat.repair_cycle.clone(),
            gc: sat.gc_cycle.clone(),
            tally: sat.tally_cycle.clone(),
            abandoned_uploads: sat.abandoned_uploads.clone(),
        };
        let sat_task = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                if let Err(e) = sat.run(cancel).await {
                    tracing::error!(error = %e, "satellite stopped");
                }
            })
        };
        let mut nodes = Vec::new();
        for i in 0..config.storage_nodes {
            let identity = Identity::generate(0, |_| {});
            let mut node_config = loam_storagenode::Config {
                listen: "127.0.0.1:0".parse()?,
                http_listen: "127.0.0.1:0".parse()?,
                satellites: vec![satellite_url.clone()],
                allocated_bytes: 10_000_000_000,
                sync_writes: false,
                checkin_interval_secs: 3600.0,
                settle_interval_secs: 3600.0,
                wallet: crate::test_wallet(i),
                ..Default::default()
            };
            if let Some(hook) = &config.reconfigure_node {
                hook(i, &mut node_config);
            }
            let node_dir = dir.path().join(format!("storagenode-{i:02}"));
            std::fs::create_dir_all(&node_dir)?;
            let mut node = PlanetNode {
                id: identity.id(),
                identity,
                dir: node_dir,
                addr: None,
                piecestore: None,
                contact: None,
                http_addr: None,
                settler: None,
                config: node_config,
                lies: config
                    .liars
                    .iter()
                    .find(|(n, _)| *n == i)
                    .map(|(_, l)| l.clone())
                    .unwrap_or_default(),
                cancel: CancellationToken::new(),
                task: None,
            };
            node.start().await?;
            nodes.push(node);
        }
        let (key, _, salt) = metainfo.create_api_key("planet")?;
        let access = Access::derive(satellite_url.clone(), key, "planet passphrase", &salt)?;
        Ok(Self {
            satellite_url,
            chores,
            satellite_identity: sat_identity,
            satellite: metainfo,
            satellite_overlay: overlay,
            compute,
            gc,
            repair,
            auditor,
            accounting,
            payouts,
            reputation,
            nodes,
            access,
            cancel,
            sat_task,
            _db: db,
            _dir: dir,
        })
    }

    /// An uplink project on this planet's access.
    pub fn project(&self) -> anyhow::Result<Project> {
        Ok(Project::open(self.access.clone())?)
    }

    /// A raw QUIC connection to the satellite, for requests an uplink
    /// would never send (any key bytes, any fields). Keep the endpoint
    /// while the connection is used.
    pub async fn satellite_connection(
        &self,
    ) -> anyhow::Result<(loam_common::transport::Endpoint, quinn::Connection)> {
        let endpoint = loam_common::transport::Endpoint::bind(
            Identity::generate(0, |_| {}),
            "127.0.0.1:0".parse().expect("literal"),
            Default::default(),
        )?;
        let conn = endpoint
            .connect(self.satellite_url.id, self.satellite_url.socket_addr()?)
            .await?;
        Ok((endpoint, conn))
    }

    /// Stops node `i` (as a crash would: no goodbye to the satellite).
    pub async fn stop_node(&mut self, i: usize) {
        self.nodes[i].stop().await;
    }

    /// Starts node `i` again on its old directory.
    pub async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].start().await
    }

    /// Stops node `i` and starts it again lying as `lies` says (for a lie
    /// that needs the node to hold data first).
    pub async fn restart_node_lying(&mut self, i: usize, lies: Lies) -> anyhow::Result<()> {
        self.nodes[i].stop().await;
        self.nodes[i].lies = lies;
        self.nodes[i].start().await
    }

    /// Index of the node holding data piece `row` of the first segment
    /// that has one.
    pub fn holder_of_row(&self, row: u32) -> Option<usize> {
        let segments = self.satellite.segments().ok()?;
        let id = segments
            .iter()
            .flat_map(|(_, s)| &s.pieces)
            .find(|p| p.piece_num == row)
            .and_then(|p| NodeId::try_from(p.node_id.as_ref()).ok())?;
        self.nodes.iter().position(|n| n.id == id)
    }

    pub async fn shutdown(self) {
        self.cancel.cancel();
        for mut n in self.nodes {
            n.stop().await;
        }
        let _ = self.sat_task.await;
    }
}

impl PlanetNode {
    async fn start(&mut self) -> anyhow::Result<()> {
        // A restarted node keeps its address, so the satellite's records stay valid.
        if let Some(addr) = self.addr {
            self.config.listen = addr;
        }
        self.cancel = CancellationToken::new();
        // The old socket closes asynchronously after a stop: retry briefly.
        let mut attempt = 0;
        let node = loop {
            match StorageNode::with_lies(
                &self.dir,
                self.identity.clone(),
                self.config.clone(),
                self.lies.clone(),
            )
            .await
            {
                Ok(n) => break n,
                Err(loam_storagenode::NodeError::Transport(e)) if attempt < 50 => {
                    tracing::debug!(error = %e, "address still in use, retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("starting storage node"),
            }
        };
        self.addr = Some(node.addr());
        self.piecestore = Some(node.piecestore.clone());
        let contact = node.contact.clone();
        self.contact = Some(contact.clone());
        self.settler = Some(node.settler.clone());
        self.http_addr = Some(node.http_addr());
        let cancel = self.cancel.clone();
        self.task = Some(tokio::spawn(async move {
            if let Err(e) = node.run(cancel).await {
                tracing::error!(error = %e, "storage node stopped");
            }
        }));
        tokio::time::timeout(Duration::from_secs(30), contact.wait_checked_in())
            .await
            .context("storage node did not check in")?;
        Ok(())
    }

    async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.piecestore = None;
        self.contact = None;
        self.http_addr = None;
        self.settler = None;
    }
}
