//! `satellite`: set up, run and administer a Loam satellite.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loam_common::access::Access;
use loam_common::cli::{LogArgs, Output};
use loam_common::config::DocumentedConfig;
use loam_common::erasure::RedundancyScheme;
use loam_common::{Identity, NodeId, pb, telemetry};
use loam_satellite::admin::AdminClient;
use loam_satellite::{Config, Satellite};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "satellite",
    version,
    about = "Loam satellite: metadata, node selection and orders",
    after_help = "Exit codes: 0 success, 1 error, 2 bad command line."
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the satellite's identity and config.toml in DIR.
    Setup {
        /// The satellite\'s data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// QUIC listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// HTTP address for /metrics and /health.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Redundancy scheme k/repair/success/total for new segments.
        #[arg(long)]
        redundancy: Option<RedundancyScheme>,
        /// Least node-id difficulty accepted at check-in.
        #[arg(long)]
        min_difficulty: Option<u32>,
        /// Allow several pieces of a segment in one /24 subnet.
        #[arg(long)]
        no_subnet_rule: bool,
        /// Seconds after the last check-in a node still counts as online.
        #[arg(long)]
        online_window: Option<f64>,
        /// HOST:PORT nodes and uplinks use to reach the satellite (default:
        /// the listen address).
        #[arg(long)]
        address: Option<String>,
    },
    /// Run the satellite in DIR until interrupted.
    Run {
        /// The satellite\'s data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// Metadata database: a postgres://user@host:port/db address that
        /// several satellite processes may share (default: config.toml\'s
        /// `database`, empty for RocksDB in DIR/db).
        #[arg(long)]
        database: Option<String>,
    },
    /// The metadata database.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// API keys of projects.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Storage nodes known to the satellite.
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// Node payouts: compute a period's paystubs, export them for a
    /// payment run, record the payments.
    Payouts {
        #[command(subcommand)]
        command: PayoutsCommand,
    },
    /// The running satellite at a glance: nodes, storage, repair, jobs.
    Status {
        /// The satellite\'s data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// Output format: text (a table) or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
        /// Answer once at least this many nodes are online (fails if they
        /// are not within --timeout): for scripts that start a network.
        #[arg(long, value_name = "N")]
        wait_nodes: Option<u32>,
        /// How long --wait-nodes waits, in seconds (at most 600).
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Projects: storage and egress limits.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Copy a stopped satellite\'s RocksDB tables (DIR/db) into an empty
    /// PostgreSQL database; then run with `--database URL`.
    Migrate {
        /// The satellite\'s data directory (the satellite must be stopped).
        #[arg(long)]
        from: PathBuf,
        /// The postgres://user@host:port/db address to copy into.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum PayoutsCommand {
    /// Compute the paystubs of an ended period and append them to every
    /// node's ledger (again: shows what was computed).
    Compute {
        /// The satellite\'s data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// YYYY-MM (monthly periods), the start as YYYY-MM-DDTHH:MM:SSZ
        /// (shorter periods), or "last".
        #[arg(long, default_value = "last")]
        period: String,
    },
    /// Print the period's payment batch: address and amount in base units.
    Export {
        /// The satellite\'s data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// YYYY-MM, a period start, or "last".
        #[arg(long, default_value = "last")]
        period: String,
        /// csv or json.
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
    },
    /// Record that the period's batch was paid (a payment entry in every
    /// paid node's ledger).
    Paid {
        /// The satellite\'s data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// The period paid: YYYY-MM or its start.
        #[arg(long)]
        period: String,
        /// Reference of the payment run (transaction hash, batch id).
        #[arg(long)]
        reference: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Json,
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Set a project's limits (bytes; 0 = unlimited; suffixes like 10GB).
    Limits {
        /// The satellite\'s data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// The project's name.
        #[arg(long)]
        project: String,
        /// Storage limit with a unit (10GB, 2TiB; 0 = unlimited). Left as
        /// it is when not given.
        #[arg(long, value_parser = parse_bytes)]
        storage: Option<u64>,
        /// Monthly download (egress) limit with a unit (0 = unlimited).
        #[arg(long, value_parser = parse_bytes)]
        egress: Option<u64>,
        /// Most the project may be charged per month for its jobs (data
        /// fees, compute, egress), in the payout token's base units
        /// (0 = unlimited).
        #[arg(long)]
        spend: Option<u64>,
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// A payout line's payee as people read it: a node id, or owner:PROJECT.
fn payee_name(l: &pb::PayoutLine) -> String {
    match &l.paystub {
        Some(p) if p.payee_kind == "owner" => format!("owner:{}", p.payee_name),
        _ => NodeId::try_from(l.node_id.as_ref())
            .map(|i| i.to_string())
            .unwrap_or_default(),
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    loam_common::size::parse_size_arg(s).map_err(|e| e.to_string())
}

/// Runs one payouts action on the running satellite in `dir`.
async fn payouts(
    dir: &std::path::Path,
    action: pb::payouts_request::Action,
    period: &str,
    reference: &str,
) -> anyhow::Result<pb::PayoutsResponse> {
    let admin = AdminClient::connect(dir).await?;
    match admin
        .call(pb::satellite_request::Request::Payouts(
            pb::PayoutsRequest {
                action: action as i32,
                period: period.to_string(),
                reference: reference.to_string(),
            },
        ))
        .await?
    {
        pb::satellite_response::Response::Payouts(r) => Ok(r),
        _ => anyhow::bail!("satellite gave an unexpected answer"),
    }
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create an API key for a project (created if new) and print an
    /// access grant for uplink.
    Create {
        /// The satellite\'s data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// The project's name (created if new).
        #[arg(long)]
        project: String,
        /// Encryption passphrase baked into the printed access grant.
        #[arg(long, env = "LOAM_PASSPHRASE")]
        passphrase: String,
        /// A name for the key, shown by `api-key list`.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List a project's API keys.
    List {
        /// The satellite\'s data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// The project's name.
        #[arg(long)]
        project: String,
        /// Output format: text (a table) or json (one object per line).
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Revoke an API key, and every grant made from it, within seconds.
    Revoke {
        /// The satellite\'s data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// The project's name.
        #[arg(long)]
        project: String,
        /// The key's id (from `api-key list`; a unique prefix will do).
        id: String,
    },
}

#[derive(Subcommand)]
enum NodesCommand {
    /// List every node with its state.
    Ls {
        /// The satellite\'s data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// Output format: text (a table) or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// Worker threads of the satellite's runtime: at least this many, more on
/// a machine with more cores. Database calls block the thread that makes
/// them (a RocksDB read, or a round trip to PostgreSQL), so requests waiting
/// on the database must not starve the others of threads.
const MIN_WORKER_THREADS: usize = 16;

/// glibc's malloc arenas the process may use. By default it makes up to
/// eight per core, and with the satellite's many threads each arena keeps
/// its own freed memory: resident memory then climbs with the data served
/// (measured: 58 MiB at 100 000 objects, 116 MiB at 1 000 000) where four
/// keep it near flat at the same throughput.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 4;

/// Sets [`MALLOC_ARENAS`]; called first thing, before any thread starts.
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator, and no other
    // thread exists yet to be allocating.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

/// How often the satellite hands memory freed inside malloc's arenas back
/// to the operating system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts a thread that calls glibc's `malloc_trim` every [`TRIM_EVERY`].
/// glibc gives back only the free memory at the top of an arena by itself;
/// what the database's flushes and compactions free in the middle stays
/// resident until trimmed (measured at 1 000 000 objects: 101 MiB resident
/// without, 91 MiB with, at the same commit rate).
#[allow(unsafe_code)]
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(TRIM_EVERY);
                    // SAFETY: malloc_trim only returns free pages of the
                    // allocator's own arenas to the kernel; it takes the
                    // arenas' locks like any allocation does.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("warning: no thread to return freed memory: {e}");
        }
    }
}

fn main() {
    limit_malloc_arenas();
    return_freed_memory();
    let cli = Cli::parse();
    telemetry::init_logging_as("info", cli.log.log_format);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(MIN_WORKER_THREADS);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("satellite: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("satellite: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Setup {
            dir,
            listen,
            http_listen,
            redundancy,
            min_difficulty,
            no_subnet_rule,
            online_window,
            address,
        } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let id_path = dir.join("identity.key");
            if id_path.exists() {
                anyhow::bail!(
                    "{} already holds an identity; refusing to overwrite it",
                    dir.display()
                );
            }
            let identity = Identity::generate(0, |_| {});
            identity.save(&id_path)?;
            let mut config = Config::default();
            if let Some(v) = listen {
                config.listen = v;
            }
            if let Some(v) = http_listen {
                config.http_listen = v;
            }
            if let Some(v) = redundancy {
                config.redundancy = v;
            }
            if let Some(v) = min_difficulty {
                config.min_difficulty = v;
            }
            if let Some(v) = online_window {
                config.online_window_secs = v;
            }
            config.distinct_subnets = !no_subnet_rule;
            if let Some(a) = address {
                config.external_address = a;
            }
            config.save(&dir)?;
            let reach = if !config.external_address.is_empty() {
                config.external_address.clone()
            } else if config.listen.ip().is_unspecified() {
                format!("YOUR-HOST:{}", config.listen.port())
            } else {
                config.listen.to_string()
            };
            eprintln!(
                "satellite set up in {}; start it with `satellite run --dir {}`; nodes join with \
                 --satellite {}@{reach}",
                dir.display(),
                dir.display(),
                identity.id()
            );
            println!("{}", identity.id());
        }
        Command::Db {
            command: DbCommand::Migrate { from, to },
        } => {
            let source =
                loam_satellite::db::RocksKv::open(&from.join("db")).with_context(|| {
                    format!(
                        "cannot open {} (is the satellite still running?)",
                        from.join("db").display()
                    )
                })?;
            let target = loam_satellite::pg::PgKv::connect(&to)?;
            let copied = loam_satellite::db::copy_all(&source, &target, |table, rows| {
                eprintln!("{table}: {rows} rows");
            })?;
            println!(
                "copied {copied} rows into {to}; start the satellite with `satellite run --dir {} --database {to}`",
                from.display()
            );
        }
        Command::Run { dir, database } => {
            let identity = Identity::load(&dir.join("identity.key"))?;
            let mut config = Config::load(&dir)?.with_env(std::env::vars())?;
            if let Some(url) = database {
                config.database = url;
            }
            let sat = Satellite::new(&dir, identity, config).await?;
            sat.write_run_info()
                .context("cannot write run/satellite.json")?;
            tracing::info!(url = %sat.url(), "satellite running");
            let cancel = CancellationToken::new();
            {
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    telemetry::shutdown_signal().await;
                    cancel.cancel();
                });
            }
            sat.run(cancel).await?;
        }
        Command::ApiKey {
            command:
                ApiKeyCommand::List {
                    dir,
                    project,
                    output,
                },
        } => {
            let admin = AdminClient::connect(&dir).await?;
            let keys = match admin
                .call(pb::satellite_request::Request::ListApiKeys(
                    pb::ListApiKeysRequest {
                        project_name: project,
                    },
                ))
                .await?
            {
                pb::satellite_response::Response::ListApiKeys(r) => r.keys,
                _ => anyhow::bail!("satellite gave an unexpected answer"),
            };
            loam_common::cli::print_api_keys(&keys, output)?;
        }
        Command::ApiKey {
            command: ApiKeyCommand::Revoke { dir, project, id },
        } => {
            let head = loam_common::macaroon::parse_key_id(&id)?;
            let admin = AdminClient::connect(&dir).await?;
            admin
                .call(pb::satellite_request::Request::RevokeApiKey(
                    pb::RevokeApiKeyRequest {
                        key: Default::default(),
                        head: head.into(),
                        project_name: project,
                    },
                ))
                .await?;
            println!("revoked API key {id} and every grant made from it");
        }
        Command::ApiKey {
            command:
                ApiKeyCommand::Create {
                    dir,
                    project,
                    passphrase,
                    name,
                },
        } => {
            let admin = AdminClient::connect(&dir).await?;
            let key = admin.create_api_key(&project, &name).await?;
            let access = Access::derive(
                admin.url.clone(),
                key.api_key.to_vec(),
                &passphrase,
                &key.salt,
            )?;
            println!("{}", access.serialize());
            eprintln!(
                "API key {} (for `uplink access create` with another passphrase)",
                bs58::encode(&key.api_key).into_string()
            );
            if let Ok(k) = loam_common::macaroon::CaveatedKey::from_bytes(&key.api_key) {
                eprintln!("key id {}", loam_common::macaroon::key_id(k.head()));
            }
        }
        Command::Payouts { command } => match command {
            PayoutsCommand::Compute { dir, period } => {
                let r = payouts(&dir, pb::payouts_request::Action::Compute, &period, "").await?;
                println!("period {}: {} paystubs", r.period, r.lines.len());
                println!(
                    "{:<46} {:>12} {:>10} {:>12} {:>12} {:>12}  ADDRESS",
                    "PAYEE (NODE ID, or owner:PROJECT)",
                    "GROSS",
                    "HELD %",
                    "HELD",
                    "RETURNED",
                    "PAID"
                );
                for l in &r.lines {
                    let p = l.paystub.clone().unwrap_or_default();
                    println!(
                        "{:<46} {:>12} {:>10} {:>12} {:>12} {:>12}  {}{}",
                        payee_name(l),
                        p.gross,
                        p.held_percent,
                        p.held,
                        p.held_returned,
                        p.paid,
                        p.wallet,
                        if p.disqualified {
                            "  (disqualified)"
                        } else {
                            ""
                        }
                    );
                }
                let total: u64 = r
                    .lines
                    .iter()
                    .filter_map(|l| l.paystub.as_ref())
                    .map(|p| p.paid)
                    .sum();
                println!("total to pay: {total} base units");
            }
            PayoutsCommand::Export {
                dir,
                period,
                format,
            } => {
                let r = payouts(&dir, pb::payouts_request::Action::Show, &period, "").await?;
                // (payee id, address, amount, who: "node" or "owner:NAME")
                let lines: Vec<(String, String, u64, String)> = r
                    .lines
                    .iter()
                    .filter_map(|l| {
                        let p = l.paystub.as_ref()?;
                        let id = NodeId::try_from(l.node_id.as_ref()).ok()?.to_string();
                        let who = if p.payee_kind == "owner" {
                            format!("owner:{}", p.payee_name)
                        } else {
                            "node".to_string()
                        };
                        (p.paid > 0).then(|| (id, p.wallet.clone(), p.paid, who))
                    })
                    .collect();
                let missing = lines.iter().filter(|l| l.1.is_empty()).count();
                if missing > 0 {
                    eprintln!(
                        "warning: {missing} payee(s) have no payout address; their lines have an empty address"
                    );
                }
                match format {
                    ExportFormat::Csv => {
                        println!("address,amount,node_id,payee");
                        for (id, wallet, amount, who) in &lines {
                            println!("{wallet},{amount},{id},{who}");
                        }
                    }
                    ExportFormat::Json => {
                        let v: Vec<serde_json::Value> = lines
                            .iter()
                            .map(|(id, wallet, amount, who)| {
                                serde_json::json!({"address": wallet, "amount": amount.to_string(), "node_id": id, "payee": who})
                            })
                            .collect();
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&serde_json::json!({
                                "period": r.period,
                                "payments": v,
                                "total": lines.iter().map(|l| l.2).sum::<u64>().to_string(),
                            }))?
                        );
                    }
                }
            }
            PayoutsCommand::Paid {
                dir,
                period,
                reference,
            } => {
                let r = payouts(
                    &dir,
                    pb::payouts_request::Action::RecordPayment,
                    &period,
                    &reference,
                )
                .await?;
                println!(
                    "period {}: {} payments recorded in the nodes' ledgers",
                    r.period, r.payments_recorded
                );
            }
        },
        Command::Project {
            command:
                ProjectCommand::Limits {
                    dir,
                    project,
                    storage,
                    egress,
                    spend,
                    output,
                },
        } => {
            let admin = AdminClient::connect(&dir).await?;
            let pb::satellite_response::Response::SetProjectLimits(r) = admin
                .call(pb::satellite_request::Request::SetProjectLimits(
                    pb::SetProjectLimitsRequest {
                        project_name: project.clone(),
                        storage_limit: storage,
                        egress_limit: egress,
                        spend_limit: spend,
                    },
                ))
                .await?
            else {
                anyhow::bail!("satellite gave an unexpected answer");
            };
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::json!({
                        "project": project,
                        "storage_limit": r.storage_limit,
                        "egress_limit": r.egress_limit,
                        "spend_limit": r.spend_limit,
                    })
                );
                return Ok(());
            }
            let show = |v: u64| {
                if v == 0 {
                    "unlimited".to_string()
                } else {
                    loam_common::size::format_bytes(v)
                }
            };
            println!(
                "project {project}: storage limit {}, monthly egress limit {}, monthly spending \
                 limit {}",
                show(r.storage_limit),
                show(r.egress_limit),
                if r.spend_limit == 0 {
                    "unlimited".to_string()
                } else {
                    format!("{} base units", r.spend_limit)
                }
            );
        }
        Command::Status {
            dir,
            output,
            wait_nodes,
            timeout,
        } => {
            let admin = AdminClient::connect(&dir).await?;
            let pb::satellite_response::Response::Status(st) = admin
                .call(pb::satellite_request::Request::Status(pb::StatusRequest {
                    wait_online_nodes: wait_nodes.unwrap_or(0),
                    wait_ms: timeout.saturating_mul(1000),
                }))
                .await?
            else {
                anyhow::bail!("satellite gave an unexpected answer");
            };
            print_status(&admin.url, &st, output)?;
            if let Some(want) = wait_nodes
                && st.nodes_online < u64::from(want)
            {
                anyhow::bail!(
                    "only {} of {want} nodes online after {timeout} s",
                    st.nodes_online
                );
            }
        }
        Command::Nodes {
            command: NodesCommand::Ls { dir, output },
        } => {
            let admin = AdminClient::connect(&dir).await?;
            let nodes = admin.list_nodes().await?;
            let rows: Vec<serde_json::Value> = nodes
                .iter()
                .map(|n| {
                    let id = NodeId::try_from(n.node_id.as_ref())
                        .map(|i| i.to_string())
                        .unwrap_or_default();
                    serde_json::json!({
                        "node_id": id,
                        "address": n.address,
                        "online": n.online,
                        "free_disk": n.free_disk,
                        "version": n.version,
                        "last_seen_unix_ms": n.last_seen_unix_ms,
                        "disqualified": n.reputation.as_ref().filter(|r| r.disqualified_unix_ms > 0).map(|r| r.disqualified_unix_ms),
                        "suspended": n.reputation.as_ref().filter(|r| r.suspended_unix_ms > 0).map(|r| r.suspended_unix_ms),
                        "offline_suspended": n.reputation.as_ref().filter(|r| r.offline_suspended_unix_ms > 0).map(|r| r.offline_suspended_unix_ms),
                        "unknown_audit_score": n.reputation.as_ref().map_or(1.0, |r| {
                            if r.unknown_alpha + r.unknown_beta > 0.0 { r.unknown_alpha / (r.unknown_alpha + r.unknown_beta) } else { 1.0 }
                        }),
                        "audits_unknown": n.reputation.as_ref().map_or(0, |r| r.audits_unknown),
                        "exit_started": (n.exit_started_unix_ms > 0).then_some(n.exit_started_unix_ms),
                        "exit_finished": (n.exit_finished_unix_ms > 0).then_some(n.exit_finished_unix_ms),
                        "vetted": n.reputation.as_ref().is_some_and(|r| r.vetted),
                        "audit_score": n.reputation.as_ref().map_or(1.0, |r| {
                            if r.audit_alpha + r.audit_beta > 0.0 { r.audit_alpha / (r.audit_alpha + r.audit_beta) } else { 1.0 }
                        }),
                        "online_score": n.reputation.as_ref().map_or(1.0, |r| r.online_score),
                        "audits": n.reputation.as_ref().map_or(0, |r| r.audits),
                        "audits_failed": n.reputation.as_ref().map_or(0, |r| r.audits_failed),
                        "pieces": n.pieces,
                        "compute": {
                            "enabled": n.capabilities.as_ref().is_some_and(|c| c.compute_enabled),
                            "max_tasks": n.capabilities.as_ref().map_or(0, |c| c.max_tasks),
                            "cpu_cores": n.capabilities.as_ref().map_or(0, |c| c.cpu_cores),
                            "gpus": n.capabilities.as_ref().map_or(0, |c| c.gpus),
                            "adapter": n.capabilities.as_ref().and_then(|c| c.adapter.as_ref()).map(|a| serde_json::json!({
                                "name": a.name,
                                "kind": a.kind,
                                "api": a.api,
                                "software": a.software,
                                "memory_bytes": (a.memory_bytes > 0).then_some(a.memory_bytes),
                                "max_buffer_bytes": a.max_buffer_bytes,
                            })),
                            "work_units": n.compute.as_ref().map_or(0.0, |c| c.work_units),
                            "tasks_accepted": n.compute.as_ref().map_or(0, |c| c.tasks_accepted),
                            "tasks_failed": n.compute.as_ref().map_or(0, |c| c.tasks_failed),
                            "verification_failures": n.compute.as_ref().map_or(0, |c| c.verification_failures),
                        },
                    })
                })
                .collect();
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Text => {
                    println!(
                        "{:<46} {:<22} {:<7} {:>8} {:>7} {:>7} {:<13} {:>16} {:>8} {:>12} {:>7}",
                        "NODE ID",
                        "ADDRESS",
                        "ONLINE",
                        "PIECES",
                        "AUDIT",
                        "ONLINE%",
                        "STATUS",
                        "FREE",
                        "COMPUTE",
                        "WORK UNITS",
                        "FAILED"
                    );
                    for n in &rows {
                        let c = &n["compute"];
                        let status = if !n["disqualified"].is_null() {
                            "disqualified"
                        } else if !n["exit_finished"].is_null() {
                            "exited"
                        } else if !n["exit_started"].is_null() {
                            "exiting"
                        } else if !n["suspended"].is_null() {
                            "suspended"
                        } else if !n["offline_suspended"].is_null() {
                            "offline-susp"
                        } else if n["vetted"].as_bool().unwrap_or(false) {
                            "vetted"
                        } else {
                            "unvetted"
                        };
                        let compute = if c["enabled"].as_bool().unwrap_or(false) {
                            "on"
                        } else {
                            "off"
                        };
                        println!(
                            "{:<46} {:<22} {:<7} {:>8} {:>7.4} {:>7.3} {:<13} {:>16} {:>8} {:>12.4} {:>7}",
                            n["node_id"].as_str().unwrap_or(""),
                            n["address"].as_str().unwrap_or(""),
                            n["online"].as_bool().unwrap_or(false),
                            n["pieces"].as_u64().unwrap_or(0),
                            n["audit_score"].as_f64().unwrap_or(1.0),
                            n["online_score"].as_f64().unwrap_or(1.0),
                            status,
                            loam_common::size::format_bytes(n["free_disk"].as_u64().unwrap_or(0)),
                            compute,
                            c["work_units"].as_f64().unwrap_or(0.0),
                            c["verification_failures"].as_u64().unwrap_or(0)
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn print_status(
    url: &loam_common::NodeUrl,
    st: &pb::StatusResponse,
    output: Output,
) -> anyhow::Result<()> {
    let json = serde_json::json!({
        "satellite": url.to_string(),
        "version": st.version,
        "started_unix_ms": st.started_unix_ms,
        "nodes": {
            "total": st.nodes_total,
            "online": st.nodes_online,
            "vetted": st.nodes_vetted,
            "suspended": st.nodes_suspended,
            "disqualified": st.nodes_disqualified,
            "exited": st.nodes_exited,
            "free_disk_online": st.free_disk_online,
        },
        "storage": {
            "segments": st.segments,
            "stored_bytes": st.stored_bytes,
            "piece_bytes": st.piece_bytes,
        },
        "repair": {
            "last_check_unix_ms": (st.repair_checked_unix_ms > 0).then_some(st.repair_checked_unix_ms),
            "queue": st.repair_queue,
            "repaired": st.repaired_total,
            "failed": st.repair_failed_total,
        },
        "jobs": { "running": st.jobs_running, "total": st.jobs_total },
    });
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Output::Text => {
            let up = (loam_common::orders::now_ms() - st.started_unix_ms).max(0) / 1000;
            println!("satellite  {url}");
            println!(
                "version    {} (up {}h {:02}m {:02}s)",
                st.version,
                up / 3600,
                up / 60 % 60,
                up % 60
            );
            println!(
                "nodes      {} online of {} ({} vetted, {} suspended, {} disqualified, {} exited); {} free on online nodes",
                st.nodes_online,
                st.nodes_total,
                st.nodes_vetted,
                st.nodes_suspended,
                st.nodes_disqualified,
                st.nodes_exited,
                loam_common::size::format_bytes(st.free_disk_online)
            );
            println!(
                "storage    {} segments, {} stored, {} of pieces on nodes",
                st.segments,
                loam_common::size::format_bytes(st.stored_bytes),
                loam_common::size::format_bytes(st.piece_bytes)
            );
            if st.repair_checked_unix_ms > 0 {
                let ago = (loam_common::orders::now_ms() - st.repair_checked_unix_ms).max(0) / 1000;
                println!(
                    "repair     {} segments queued (checked {ago} s ago); {} repaired, {} failed since start",
                    st.repair_queue, st.repaired_total, st.repair_failed_total
                );
            } else {
                println!("repair     the checker has not run yet");
            }
            println!(
                "jobs       {} running, {} submitted",
                st.jobs_running, st.jobs_total
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod help_tests {
    use super::*;

    /// Every argument of every command, described in `--help`.
    #[test]
    fn every_argument_is_described() {
        use clap::CommandFactory;
        let missing = loam_common::cli::undescribed_args(&Cli::command());
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    /// The shipped systemd unit starts this binary with arguments it
    /// takes.
    #[test]
    fn the_systemd_unit_runs_a_valid_command() {
        let unit = include_str!("../../deploy/systemd/loam-satellite.service");
        let words = loam_common::cli::unit_exec_start(unit, "satellite").expect("ExecStart");
        let cli = Cli::try_parse_from(&words).expect("the unit's command line parses");
        assert!(matches!(cli.command, Command::Run { .. }));
    }
}
