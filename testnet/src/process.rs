//! A whole network as separate OS processes on 127.0.0.1: a satellite (one
//! process, or several sharing a PostgreSQL database and the satellite's
//! identity) and N storage nodes started from the real binaries, so a test
//! can `kill -9` any of them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use loam_common::access::Access;
use loam_common::config::DocumentedConfig;
use loam_common::erasure::RedundancyScheme;
use loam_common::{Identity, NodeId};
use loam_satellite::admin::AdminClient;
use serde::Serialize;
use tokio::process::{Child, Command};

/// Settings of a process network.
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    pub nodes: usize,
    pub redundancy: RedundancyScheme,
    /// Identity difficulty for nodes; the satellite requires the same.
    pub difficulty: u32,
    pub passphrase: String,
    pub checkin_interval_secs: f64,
    pub online_window_secs: f64,
    /// Interval of the satellite's chores (garbage collection, audits,
    /// repair) and the nodes' trash grace period, in seconds.
    pub chore_interval_secs: f64,
    /// Nodes fsync each piece (and the satellite each metadata write)
    /// before acknowledging it. Off by default on a
    /// testnet: every node shares this machine's one disk, so ten nodes'
    /// fsyncs queue behind each other; a crashed *process* loses nothing
    /// either way (pieces are written to a temporary file and renamed).
    /// Production nodes default to on.
    pub sync_writes: bool,
    /// Storage nodes (by index) started each in a network namespace of
    /// its own, joined to the caller's by a veth pair, so that
    /// [`ProcessNetwork::partition`] can cut them off. Needs the right to
    /// create network namespaces and links: root, or root of a user
    /// namespace of one's own (`unshare --user --map-root-user --net`).
    /// The satellite then listens on every address of the caller's
    /// namespace, not only loopback.
    pub isolated: Vec<usize>,
    /// The satellite's database: `None` for RocksDB in its directory,
    /// `Some("postgres")` for a throwaway PostgreSQL server this network
    /// starts (and stops), or a `postgres://` address.
    pub database: Option<String>,
    /// Satellite processes sharing the database and identity (more than
    /// one needs PostgreSQL). Clients get every address and fail over.
    pub satellites: usize,
    /// Also start an S3 gateway with a credential for the network's grant
    /// (`DIR/s3.json`).
    pub gateway: bool,
    /// The satellite's largest segment (its default when None).
    pub max_segment_size: Option<u64>,
}

/// The S3 gateway of a network, as `DIR/s3.json` gives it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct S3Endpoint {
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    pub pid: u32,
    /// The gateway's Prometheus metrics.
    #[serde(default)]
    pub metrics_url: Option<String>,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            nodes: 10,
            redundancy: RedundancyScheme::new(4, 6, 8, 10).expect("valid scheme"),
            difficulty: 8,
            passphrase: "testnet".into(),
            checkin_interval_secs: 2.0,
            online_window_secs: 10.0,
            chore_interval_secs: 5.0,
            sync_writes: false,
            isolated: Vec::new(),
            database: crate::test_database(),
            satellites: 1,
            gateway: false,
            max_segment_size: None,
        }
    }
}

/// Addresses of an isolated node's veth pair: the caller's end
/// (`lveth<i>`) and the node's (`eth0`).
fn veth_addresses(i: usize) -> anyhow::Result<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    let i = u8::try_from(i).context("at most 256 isolated nodes")?;
    Ok((
        std::net::Ipv4Addr::new(10, 200, i, 1),
        std::net::Ipv4Addr::new(10, 200, i, 2),
    ))
}

/// Runs `ip ARGS...` (iproute2) here, or with `netns` (a namespace file)
/// inside that network namespace; says what failed.
fn ip_in(netns: Option<&str>, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("nsenter");
            c.arg(format!("--net={ns}")).args(["--", "ip"]);
            c
        }
        None => std::process::Command::new("ip"),
    };
    let out = cmd.args(args).output().context(
        "cannot run ip or nsenter (iproute2, util-linux; scripts/install-deps installs them)",
    )?;
    if !out.status.success() {
        bail!(
            "ip {}{}: {}",
            args.join(" "),
            netns.map(|ns| format!(" in {ns}")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_in(None, args)
}

/// Starts storage node `i` in a new network namespace, linked to this one
/// by a veth pair with [`veth_addresses`]. The node is held (reading its
/// standard input) until its side of the link is configured.
async fn spawn_isolated(i: usize, bin: &Path, args: &[&str], log: &Path) -> anyhow::Result<Child> {
    use tokio::io::AsyncWriteExt;
    let (out, err) = log_files(log)?;
    let mut child = Command::new("unshare")
        .args(["--net", "--", "sh", "-c", "read go && exec \"$0\" \"$@\""])
        .arg(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .context("cannot run unshare (util-linux)")?;
    let pid = child.id().context("isolated node exited at once")?;
    let (hub, node) = veth_addresses(i)?;
    let netns = format!("/proc/{pid}/ns/net");
    // The namespace exists once unshare has run; wait for it to differ
    // from ours.
    let ours = std::fs::read_link("/proc/self/ns/net")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&netns).ok().is_none_or(|ns| ns == ours) {
        if Instant::now() > deadline {
            bail!("node {i}'s network namespace did not appear");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let link = format!("lveth{i}");
    let pid = pid.to_string();
    ip(&[
        "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &pid,
    ])?;
    ip(&["addr", "add", &format!("{hub}/24"), "dev", &link])?;
    ip(&["link", "set", &link, "up"])?;
    let inside = |args: &[&str]| ip_in(Some(&netns), args);
    inside(&["link", "set", "lo", "up"])?;
    inside(&["addr", "add", &format!("{node}/24"), "dev", "eth0"])?;
    inside(&["link", "set", "eth0", "up"])?;
    let mut stdin = child.stdin.take().context("stdin is piped")?;
    stdin.write_all(b"go\n").await?;
    drop(stdin);
    Ok(child)
}

/// One entry of `network.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessInfo {
    pub role: &'static str,
    pub node_id: NodeId,
    pub address: String,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub metrics_url: String,
}

pub struct ProcessNetwork {
    pub dir: PathBuf,
    pub access: Access,
    pub processes: Vec<ProcessInfo>,
    /// The S3 gateway, when started.
    pub s3: Option<S3Endpoint>,
    /// The configuration the satellite was started with.
    pub satellite_config: loam_satellite::Config,
    children: Vec<Child>,
    /// The PostgreSQL server this network started, if any (stopped after
    /// every process).
    database: Option<loam_satellite::pg::Cluster>,
}

/// Sleeps until the wall-clock instant `t_ms` (Unix milliseconds).
async fn sleep_until_ms(t_ms: i64) {
    let left = t_ms.saturating_sub(loam_common::orders::now_ms()).max(0);
    tokio::time::sleep(Duration::from_millis(left as u64)).await;
}

/// Directory of the running executable, where the other binaries live.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the testnet binary")?;
    let dir = exe.parent().context("testnet binary has no directory")?;
    // `cargo test` puts test binaries in target/*/deps.
    if dir.ends_with("deps") {
        return Ok(dir.parent().context("deps has a parent")?.to_path_buf());
    }
    Ok(dir.to_path_buf())
}

/// Path of one of Loam's binaries, next to the running one.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} not found; build every binary first (cargo build --release --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// A process's log, opened for its standard output and error. Appended
/// to: a restarted process's log follows its predecessor's.
fn log_files(log: &Path) -> anyhow::Result<(std::fs::File, std::fs::File)> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    Ok((out, err))
}

/// Starts the satellite on `sat_dir` (its configuration saved there) and
/// waits for the run file it publishes once it serves.
async fn start_satellite(sat_dir: &Path) -> anyhow::Result<(Child, loam_satellite::RunInfo)> {
    let run_file = sat_dir.join(loam_satellite::RunInfo::PATH);
    let _ = std::fs::remove_file(&run_file);
    let log = sat_dir.join("satellite.log");
    let mut child = spawn(
        &binary("satellite")?,
        &["run", "--dir", path_str(sat_dir)?],
        &log,
    )?;
    let info = serde_json::from_slice(&wait_for_file(&run_file, &mut child, &log).await?)?;
    Ok((child, info))
}

/// Makes a gateway credential for `access` in `DIR/gateway`, starts the
/// gateway on a free loopback port, waits for it to listen, and writes
/// `DIR/s3.json`.
async fn start_gateway(dir: &Path, access: &Access) -> anyhow::Result<(Child, S3Endpoint)> {
    let gw_dir = dir.join("gateway");
    std::fs::create_dir_all(&gw_dir)?;
    let bin = binary("gateway")?;
    let setup = Command::new(&bin)
        .args(["--config-dir", path_str(&gw_dir)?, "setup", "--json"])
        .env("LOAM_ACCESS", access.serialize())
        .output()
        .await
        .context("cannot run gateway setup")?;
    if !setup.status.success() {
        bail!(
            "gateway setup failed: {}",
            String::from_utf8_lossy(&setup.stderr).trim()
        );
    }
    #[derive(serde::Deserialize)]
    struct Made {
        access_key_id: String,
        secret_access_key: String,
    }
    let made: Made =
        serde_json::from_slice(&setup.stdout).context("gateway setup printed no credential")?;
    let run_file = gw_dir.join(loam_gateway::RUN_FILE);
    let _ = std::fs::remove_file(&run_file);
    let log = gw_dir.join("gateway.log");
    let mut child = spawn(
        &bin,
        &[
            "--config-dir",
            path_str(&gw_dir)?,
            "run",
            "--address",
            "127.0.0.1:0",
            "--metrics-address",
            "127.0.0.1:0",
        ],
        &log,
    )?;
    let run: loam_gateway::RunInfo =
        serde_json::from_slice(&wait_for_file(&run_file, &mut child, &log).await?)?;
    let s3 = S3Endpoint {
        endpoint: format!("http://{}", run.address),
        access_key_id: made.access_key_id,
        secret_access_key: made.secret_access_key,
        region: loam_gateway::REGION.to_string(),
        pid: run.pid,
        metrics_url: run.metrics_address.map(|a| format!("http://{a}/metrics")),
    };
    loam_common::config::write_private(&dir.join("s3.json"), &serde_json::to_vec_pretty(&s3)?)?;
    Ok((child, s3))
}

fn spawn(bin: &Path, args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let (out, err) = log_files(log)?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

/// Waits for a process to publish its run file.
async fn wait_for_file(path: &Path, child: &mut Child, log: &Path) -> anyhow::Result<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut delay = Duration::from_millis(10);
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            return Ok(bytes);
        }
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!(
                "process exited ({status}) before it was ready: {}",
                tail.lines().last().unwrap_or("no output")
            );
        }
        if Instant::now() > deadline {
            bail!("{} did not appear within 60 s", path.display());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

impl ProcessNetwork {
    /// Sets up (or reuses) `dir` and starts every process; returns once all
    /// nodes have checked in and an access grant is written.
    pub async fn start(dir: &Path, opts: &NetworkOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let sat_dir = dir.join("satellite");
        std::fs::create_dir_all(&sat_dir)?;
        if !sat_dir.join("identity.key").exists() {
            Identity::generate(0, |_| {}).save(&sat_dir.join("identity.key"))?;
        }
        if opts.satellites == 0 {
            bail!("a network needs at least one satellite process");
        }
        let (cluster, database) = match opts.database.as_deref() {
            None | Some("") | Some("rocksdb") => (None, String::new()),
            Some("postgres") | Some("postgresql") => {
                let cluster = loam_satellite::pg::Cluster::start(None)
                    .context("cannot start a PostgreSQL server for the satellite")?;
                let url = cluster.create_database("loam")?;
                (Some(cluster), url)
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                (None, url.to_string())
            }
            Some(other) => bail!(
                "--database {other:?}: expected postgres (a throwaway server), a postgres:// address, or nothing for RocksDB"
            ),
        };
        if opts.satellites > 1 && database.is_empty() {
            bail!("several satellite processes share one database: add --database postgres");
        }
        let sat_config = loam_satellite::Config {
            database: database.clone(),
            listen: if opts.isolated.is_empty() {
                "127.0.0.1:0".parse()?
            } else {
                "0.0.0.0:0".parse()?
            },
            http_listen: "127.0.0.1:0".parse()?,
            redundancy: opts.redundancy,
            min_difficulty: opts.difficulty,
            sync_writes: opts.sync_writes,
            online_window_secs: opts.online_window_secs,
            distinct_subnets: false,
            audit: loam_satellite::audit::AuditConfig {
                interval_secs: opts.chore_interval_secs,
                per_node: 4,
                online_interval_secs: opts.chore_interval_secs,
                online_lambda: 0.95,
                online_min_observations: 12,
                suspension_grace_secs: 60.0 * opts.chore_interval_secs,
                offline_review_secs: 120.0 * opts.chore_interval_secs,
                ..Default::default()
            },
            repair: loam_satellite::repair::RepairConfig {
                interval_secs: opts.chore_interval_secs,
                ..Default::default()
            },
            gc: loam_satellite::gc::GcConfig {
                interval_secs: opts.chore_interval_secs,
                margin_secs: 1.0,
                ..Default::default()
            },
            orders: loam_satellite::orders::OrdersConfig {
                window_secs: 2.0 * opts.chore_interval_secs,
                ..Default::default()
            },
            accounting: loam_satellite::accounting::AccountingConfig {
                tally_interval_secs: opts.chore_interval_secs,
            },
            payouts: loam_satellite::payouts::PayoutConfig {
                period_secs: 24.0 * opts.chore_interval_secs,
                settle_delay_secs: 5.0 * opts.chore_interval_secs,
                ..Default::default()
            },
            max_segment_size: opts
                .max_segment_size
                .unwrap_or(loam_satellite::Config::default().max_segment_size),
            ..Default::default()
        };
        sat_config.save(&sat_dir)?;

        let mut children = Vec::new();
        let mut processes = Vec::new();
        // Satellite processes: the first in `satellite/`, the others in
        // `satellite-<i>/` with the same identity and settings, all on the
        // one database.
        let mut sat_addresses = Vec::new();
        let mut info = None;
        for i in 0..opts.satellites {
            let this_dir = if i == 0 {
                sat_dir.clone()
            } else {
                let d = dir.join(format!("satellite-{i}"));
                std::fs::create_dir_all(&d)?;
                std::fs::copy(sat_dir.join("identity.key"), d.join("identity.key"))?;
                sat_config.save(&d)?;
                d
            };
            let (sat, this) = start_satellite(&this_dir).await?;
            // Reached on loopback, whatever it listens on.
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], this.address.port()));
            processes.push(ProcessInfo {
                role: "satellite",
                node_id: this.node_id,
                address: address.to_string(),
                pid: this.pid,
                data_dir: this_dir,
                metrics_url: this.metrics_url.clone(),
            });
            children.push(sat);
            sat_addresses.push(address.to_string());
            info.get_or_insert(this);
        }
        let info = info.expect("at least one satellite");
        let sat_url = loam_common::NodeUrl {
            id: info.node_id,
            address: sat_addresses.join(","),
        };

        let node_bin = binary("storagenode")?;
        // Each node is allocated its share of the disk (at most 100 GB), so
        // that what it advertises is what it could really store.
        let disk = loam_storagenode::preflight::free_space(&dir).unwrap_or(0);
        let allocation = (disk / (opts.nodes as u64 + 1)).clamp(1 << 30, 100_000_000_000);
        let mut pending = Vec::new();
        for i in 0..opts.nodes {
            let node_dir = dir.join(format!("storagenode-{i:02}"));
            std::fs::create_dir_all(&node_dir)?;
            if !node_dir.join("identity.key").exists() {
                Identity::generate(opts.difficulty, |_| {}).save(&node_dir.join("identity.key"))?;
            }
            let isolated = opts.isolated.contains(&i);
            let (listen, satellite) = if isolated {
                if opts.satellites > 1 {
                    bail!("isolated nodes with several satellite processes are not supported");
                }
                let (hub, node) = veth_addresses(i)?;
                let url = loam_common::NodeUrl {
                    id: info.node_id,
                    address: std::net::SocketAddr::from((hub, info.address.port())).to_string(),
                };
                (std::net::SocketAddr::from((node, 0)), url)
            } else {
                ("127.0.0.1:0".parse()?, sat_url.clone())
            };
            let config = loam_storagenode::Config {
                listen,
                // An isolated node's dashboard is on its own loopback.
                http_listen: "127.0.0.1:0".parse()?,
                satellites: vec![satellite],
                allocated_bytes: allocation,
                sync_writes: opts.sync_writes,
                checkin_interval_secs: opts.checkin_interval_secs,
                trash_grace_secs: opts.chore_interval_secs,
                settle_interval_secs: opts.chore_interval_secs,
                wallet: crate::test_wallet(i),
                ..Default::default()
            };
            config.save(&node_dir)?;
            let _ = std::fs::remove_file(node_dir.join("run/node.json"));
            let log = node_dir.join("storagenode.log");
            let args = ["run", "--dir", path_str(&node_dir)?];
            let child = if isolated {
                spawn_isolated(i, &node_bin, &args, &log).await?
            } else {
                spawn(&node_bin, &args, &log)?
            };
            pending.push((node_dir, log, child));
        }
        for (node_dir, log, mut child) in pending {
            let info: loam_storagenode::RunInfo = serde_json::from_slice(
                &wait_for_file(&node_dir.join("run/node.json"), &mut child, &log).await?,
            )?;
            processes.push(ProcessInfo {
                role: "storagenode",
                node_id: info.node_id,
                address: info.address.to_string(),
                pid: info.pid,
                data_dir: node_dir,
                metrics_url: info.metrics_url,
            });
            children.push(child);
        }

        let admin = AdminClient::connect(&sat_dir).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let want: Vec<NodeId> = processes
            .iter()
            .filter(|p| p.role == "storagenode")
            .map(|p| p.node_id)
            .collect();
        loop {
            let nodes = admin.list_nodes().await?;
            let online = want
                .iter()
                .filter(|id| {
                    nodes
                        .iter()
                        .any(|n| n.online && n.node_id.as_ref() == id.as_bytes())
                })
                .count();
            if online == want.len() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "only {online} of {} storage nodes checked in within 60 s",
                    want.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let key = admin.create_api_key("testnet", "testnet").await?;
        let access = Access::derive(sat_url, key.api_key.to_vec(), &opts.passphrase, &key.salt)?;
        loam_common::config::write_private(&dir.join("access"), access.serialize().as_bytes())?;
        let s3 = if opts.gateway {
            let (child, s3) = start_gateway(&dir, &access).await?;
            children.push(child);
            Some(s3)
        } else {
            None
        };
        let net = Self {
            dir: dir.clone(),
            access,
            processes,
            s3,
            satellite_config: sat_config,
            children,
            database: cluster,
        };
        std::fs::write(
            dir.join("network.json"),
            serde_json::to_vec_pretty(&serde_json::json!({ "processes": net.processes }))?,
        )?;
        Ok(net)
    }

    pub fn storage_nodes(&self) -> impl Iterator<Item = &ProcessInfo> {
        self.processes.iter().filter(|p| p.role == "storagenode")
    }

    /// Runs a chore (`check-in`, `settle`) on every storage node now and
    /// returns once each node has finished a run of it.
    pub async fn run_node_chore(&self, chore: &str) -> anyhow::Result<()> {
        let runs = self.storage_nodes().map(|p| {
            let base = p.metrics_url.trim_end_matches("/metrics").to_string();
            async move { crate::http_post(&format!("{base}/api/chores/{chore}")).await }
        });
        futures::future::try_join_all(runs).await?;
        Ok(())
    }

    /// Has every node settle the orders of all bandwidth used before this
    /// call. Settlement goes by order windows, so this first waits (on the
    /// clock, to a computed instant) until the current window is closed
    /// and past its grace, then runs each node's settle chore once.
    pub async fn settle_orders(&self) -> anyhow::Result<()> {
        let window_ms = (self.satellite_config.orders.window_secs * 1000.0) as i64;
        let now = loam_common::orders::now_ms();
        sleep_until_ms(loam_storagenode::orders::sent_from(now, window_ms)).await;
        self.run_node_chore("settle").await
    }

    /// Waits (on the clock, to a computed instant) until the payouts of the
    /// payout period containing `t_ms` can be computed, and returns it.
    pub async fn payout_period_ready(&self, t_ms: i64) -> loam_satellite::payouts::Period {
        let payouts = &self.satellite_config.payouts;
        let period = payouts.period_at(t_ms);
        sleep_until_ms(period.end + (payouts.settle_delay_secs * 1000.0) as i64).await;
        period
    }

    /// Kills storage node `i` with SIGKILL, as a crash or a pulled plug would.
    pub fn kill_storage_node(&self, i: usize) -> anyhow::Result<NodeId> {
        let p = self
            .storage_nodes()
            .nth(i)
            .with_context(|| format!("there is no storage node {i}"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        Ok(p.node_id)
    }

    /// Cuts isolated storage node `i` off the network (`cut`) or joins it
    /// again, by taking its veth link down or up: packets either way are
    /// lost, as in a network partition.
    pub fn partition(&self, i: usize, cut: bool) -> anyhow::Result<()> {
        ip(&[
            "link",
            "set",
            &format!("lveth{i}"),
            if cut { "down" } else { "up" },
        ])
    }

    /// Kills the satellite with SIGKILL, as a crash or a pulled plug would
    /// (its first process, when there are several).
    pub fn kill_satellite(&self) -> anyhow::Result<()> {
        self.kill_satellite_process(0)
    }

    /// Kills satellite process `i` with SIGKILL.
    pub fn kill_satellite_process(&self, i: usize) -> anyhow::Result<()> {
        let sat = self
            .processes
            .iter()
            .filter(|p| p.role == "satellite")
            .nth(i)
            .with_context(|| format!("there is no satellite process {i}"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sat.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        Ok(())
    }

    /// Starts the satellite again on its data directory and on the QUIC
    /// address it had, so nodes and access grants still find it; returns
    /// once it has published its run file. The old process is reaped
    /// first (kill it before, or this waits for it to exit).
    pub async fn restart_satellite(&mut self) -> anyhow::Result<()> {
        let _ = self.children[0].wait().await;
        let sat_dir = self.processes[0].data_dir.clone();
        let address: std::net::SocketAddr = self.processes[0]
            .address
            .parse()
            .context("satellite address")?;
        self.satellite_config.listen.set_port(address.port());
        self.satellite_config.save(&sat_dir)?;
        let (child, info) = start_satellite(&sat_dir).await?;
        self.processes[0].pid = info.pid;
        self.processes[0].metrics_url = info.metrics_url;
        self.children[0] = child;
        Ok(())
    }

    /// Stops every process: SIGTERM, then SIGKILL after 5 s.
    pub async fn stop(mut self) {
        for child in &self.children {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        // The database goes last, once no satellite uses it.
        if let Some(cluster) = self.database.take() {
            tokio::task::spawn_blocking(move || drop(cluster))
                .await
                .ok();
        }
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}
