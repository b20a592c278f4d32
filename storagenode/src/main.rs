//! `storagenode`: set up and run a Loam storage node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loam_common::config::DocumentedConfig;
use loam_common::{Identity, NodeUrl, telemetry};
use loam_storagenode::{Config, StorageNode, preflight};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "storagenode",
    version,
    about = "Loam storage node",
    after_help = "Exit codes: 0 success, 1 error, 2 bad command line."
)]
struct Cli {
    #[command(flatten)]
    log: loam_common::cli::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the node's identity (at the satellites' proof-of-work
    /// difficulty) and a documented config.toml in DIR, after checking
    /// that the setup can work.
    Setup {
        /// The node's data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// Satellite to trust, as ID@HOST:PORT (repeatable).
        #[arg(long = "satellite", env = "LOAM_SATELLITE", required = true)]
        satellites: Vec<NodeUrl>,
        /// Disk space to offer, with a unit: 2TB, 500GB, 512GiB, ... (a
        /// bare number is refused).
        #[arg(long, alias = "allocated-bytes", value_parser = parse_size)]
        storage: u64,
        /// HOST:PORT where satellites and uplinks reach this node.
        #[arg(long)]
        address: Option<String>,
        /// Payout address (0x + 40 hex digits, EIP-55 checksummed).
        #[arg(long, env = "LOAM_WALLET")]
        wallet: String,
        /// The operator's contact address.
        #[arg(long)]
        email: Option<String>,
        /// Proof-of-work difficulty of the identity (default: the highest
        /// minimum of the satellites).
        #[arg(long)]
        difficulty: Option<u32>,
        /// QUIC listen address (default: every interface, the port of
        /// --address).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// HTTP address of the dashboard, /health and /metrics.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Seconds between check-ins.
        #[arg(long)]
        checkin_interval: Option<f64>,
        /// Seconds to wait for each satellite's answer.
        #[arg(long, default_value_t = 10)]
        satellite_timeout: u64,
    },
    /// Fetch this node's payout ledgers from its satellites (appending to
    /// the local copies under DIR/payouts) and show the payout history.
    Payouts {
        /// The node's data directory.
        #[arg(long, env = "LOAM_DIR", global = true)]
        dir: Option<PathBuf>,
        /// Output format: text (a table per satellite), or json (one
        /// paystub per line, amounts in base units).
        #[arg(short, long, value_enum, default_value = "text")]
        output: loam_common::cli::Output,
        #[command(subcommand)]
        command: Option<PayoutsCommand>,
    },
    /// Run the node in DIR until interrupted. Settings come from
    /// DIR/config.toml, then LOAM_* environment variables, then these
    /// flags.
    Run {
        /// The node's data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// QUIC listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// HTTP address of the dashboard, /health and /metrics.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Disk space to offer, with a unit: 2TB, 500GB, ...
        #[arg(long, value_parser = parse_size)]
        storage: Option<u64>,
        /// HOST:PORT where satellites and uplinks reach this node.
        #[arg(long)]
        address: Option<String>,
    },
    /// Leave a satellite gracefully: it stops sending uploads here and
    /// moves every piece this node holds for it to other nodes. Keep the
    /// node running until the exit is finished.
    ExitSatellite {
        /// The node's data directory.
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// The satellite's id (default: every configured satellite).
        #[arg(long)]
        satellite: Option<String>,
        /// Wait until every piece has moved.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
enum PayoutsCommand {
    /// Check every local ledger offline: each entry's signature, the hash
    /// chain, and the satellite's signed head. Says which entry is wrong.
    Verify,
}

/// mimalloc, with ordinary pages for sparse reservations (see
/// `loam_common::alloc`).
#[global_allocator]
static ALLOCATOR: loam_common::alloc::Allocator = loam_common::alloc::Allocator;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    telemetry::init_logging_as("info", cli.log.log_format);
    if let Err(e) = run(cli).await {
        eprintln!("storagenode: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::ExitSatellite {
            dir,
            satellite,
            wait,
        } => {
            let identity = Identity::load(&dir.join("identity.key"))?;
            let config = Config::load(&dir)?;
            let sats: Vec<&NodeUrl> = config
                .satellites
                .iter()
                .filter(|s| satellite.as_ref().is_none_or(|id| s.id.to_string() == *id))
                .collect();
            anyhow::ensure!(!sats.is_empty(), "no such satellite in {}", dir.display());
            let endpoint = loam_common::transport::Endpoint::bind(
                identity,
                "0.0.0.0:0".parse().expect("literal"),
                Default::default(),
            )?;
            for sat in sats {
                loop {
                    let conn = endpoint.connect_url(sat).await?;
                    let resp = loam_common::rpc::satellite(
                        &conn,
                        &[],
                        loam_common::pb::satellite_request::Request::Exit(
                            loam_common::pb::ExitRequest {},
                        ),
                    )
                    .await?;
                    let loam_common::pb::satellite_response::Response::Exit(e) = resp else {
                        anyhow::bail!("satellite gave an unexpected answer");
                    };
                    if e.disqualified_unix_ms > 0 {
                        anyhow::bail!(
                            "exit from {} failed: the node could not produce pieces it stores \
                             and was disqualified; its held amount is forfeited",
                            sat.id.short()
                        );
                    }
                    if e.finished_unix_ms > 0 {
                        println!("exit from {} finished: every piece moved", sat.id.short());
                        break;
                    }
                    if e.pieces_counted {
                        println!(
                            "exit from {} under way: {} pieces left to move",
                            sat.id.short(),
                            e.pieces_left
                        );
                    } else {
                        println!(
                            "exit from {} under way: the satellite is counting the pieces to move",
                            sat.id.short()
                        );
                    }
                    if !wait {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            }
        }
        Command::Setup {
            dir,
            satellites,
            storage,
            address,
            wallet,
            email,
            difficulty,
            listen,
            http_listen,
            checkin_interval,
            satellite_timeout,
        } => {
            // Everything is checked before anything is written.
            let wallet = wallet
                .parse::<loam_common::wallet::Wallet>()?
                .to_checksummed();
            if let Some(a) = &address {
                preflight::check_address(a)?;
            }
            let id_path = dir.join("identity.key");
            if id_path.exists() {
                anyhow::bail!(
                    "{} already holds an identity; refusing to overwrite it",
                    dir.display()
                );
            }
            preflight::check_writable(&dir)?;
            preflight::check_allocation(&dir, storage, 0)?;
            let mut min_difficulty = 0;
            for sat in &satellites {
                let info =
                    preflight::probe_satellite(sat, Duration::from_secs(satellite_timeout)).await?;
                eprintln!(
                    "satellite {} at {}: reachable, version {}, node ids need difficulty {}",
                    sat.id.short(),
                    sat.address,
                    info.version,
                    info.min_difficulty
                );
                min_difficulty = min_difficulty.max(info.min_difficulty);
            }
            let difficulty = difficulty.unwrap_or(min_difficulty);
            if difficulty < min_difficulty {
                anyhow::bail!(
                    "difficulty {difficulty} is below the satellites' minimum {min_difficulty}: \
                     they would refuse this node"
                );
            }
            let identity = generate_identity(difficulty);
            identity.save(&id_path)?;
            let mut config = Config {
                satellites,
                allocated_bytes: storage,
                wallet,
                ..Default::default()
            };
            if let Some(a) = address {
                if listen.is_none()
                    && let Some(port) = a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok())
                {
                    config.listen = SocketAddr::from(([0, 0, 0, 0], port));
                }
                config.external_address = a;
            }
            if let Some(l) = listen {
                config.listen = l;
            }
            if let Some(h) = http_listen {
                config.http_listen = h;
            }
            if let Some(c) = checkin_interval {
                config.checkin_interval_secs = c;
            }
            if let Some(e) = email {
                config.email = e;
            }
            offer_gpu(&mut config.compute);
            config.save(&dir)?;
            eprintln!(
                "node {} set up in {}; start it with `storagenode run --dir {}`",
                identity.id(),
                dir.display(),
                dir.display()
            );
            println!("{}", identity.id());
        }
        Command::Payouts {
            dir,
            output,
            command,
        } => {
            let dir = dir.context("--dir (or LOAM_DIR) is required")?;
            let identity = Identity::load(&dir.join("identity.key"))?;
            let config = Config::load(&dir)?;
            let node = identity.id();
            match command {
                Some(PayoutsCommand::Verify) => {
                    let mut bad = 0;
                    for (sat, result) in
                        loam_storagenode::payouts::verify_all(&dir, &node, &config.satellites)
                    {
                        match result {
                            Ok(entries) => println!(
                                "satellite {}: ledger intact, {} entries, every signature and link verified",
                                sat.short(),
                                entries.len()
                            ),
                            Err(e) => {
                                bad += 1;
                                println!("satellite {}: LEDGER INVALID: {e}", sat.short());
                            }
                        }
                    }
                    anyhow::ensure!(bad == 0, "{bad} ledger(s) failed verification");
                }
                None => {
                    let endpoint = loam_common::transport::Endpoint::bind(
                        identity,
                        "0.0.0.0:0".parse().expect("literal"),
                        Default::default(),
                    )?;
                    for sat in &config.satellites {
                        let file = loam_storagenode::payouts::fetch(&dir, &endpoint, &node, sat)
                            .await
                            .with_context(|| format!("satellite {}", sat.id.short()))?;
                        let entries = file.verify(&node)?;
                        if output == loam_common::cli::Output::Json {
                            for row in loam_storagenode::payouts::history(&entries) {
                                let mut v = serde_json::to_value(&row)?;
                                v["satellite"] = sat.id.to_string().into();
                                loam_common::cli::print_json_line(&v)?;
                            }
                            continue;
                        }
                        println!(
                            "satellite {} ({} entries, verified)",
                            sat.id.short(),
                            entries.len()
                        );
                        print!("{}", loam_storagenode::payouts::history_table(&entries));
                    }
                }
            }
        }
        Command::Run {
            dir,
            listen,
            http_listen,
            storage,
            address,
        } => {
            let identity = Identity::load(&dir.join("identity.key"))?;
            let mut config = Config::load(&dir)?.with_env(std::env::vars())?;
            if let Some(l) = listen {
                config.listen = l;
            }
            if let Some(h) = http_listen {
                config.http_listen = h;
            }
            if let Some(s) = storage {
                config.allocated_bytes = s;
            }
            if let Some(a) = address {
                preflight::check_address(&a)?;
                config.external_address = a;
            }
            let node = StorageNode::new(&dir, identity, config).await?;
            node.write_run_info()
                .context("cannot write run/node.json")?;
            tracing::info!(id = %node.id(), addr = %node.addr(), "storage node running");
            let cancel = CancellationToken::new();
            {
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    telemetry::shutdown_signal().await;
                    cancel.cancel();
                });
            }
            node.run(cancel).await?;
        }
    }
    Ok(())
}

fn parse_size(s: &str) -> Result<u64, String> {
    loam_common::size::parse_size_arg(s).map_err(|e| e.to_string())
}

/// Generates the identity, with a progress bar and an estimate of the time
/// left on a terminal (each try succeeds with probability 2^-difficulty).
fn generate_identity(difficulty: u32) -> Identity {
    if difficulty < 12 {
        return Identity::generate(difficulty, |_| {});
    }
    let expected = 2f64.powi(difficulty as i32);
    let bar = indicatif::ProgressBar::new(expected as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "creating identity (difficulty {msg}) [{bar:30}] {percent}% of the expected tries, ~{eta} left",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(difficulty.to_string());
    let identity = Identity::generate(difficulty, |tries| {
        // Past the expected count the bar stays full: it is luck from here.
        bar.set_position(tries.min(expected as u64 - 1));
    });
    bar.finish_and_clear();
    identity
}

/// Finds the machine's GPU, says what it found, and offers a hardware one
/// to GPU jobs (`compute.backend = "gpu"`).
fn offer_gpu(compute: &mut loam_storagenode::compute::ComputeConfig) {
    use loam_compute::Backend;
    match loam_compute::gpu::detected() {
        Some(a) if !a.software => {
            compute.backend = Backend::Gpu;
            eprintln!(
                "GPU: {}; offered to GPU jobs (compute.backend = \"gpu\")",
                a.describe()
            );
        }
        Some(a) => eprintln!(
            "GPU: only a software adapter, {}; not offered (set compute.backend = \"gpu\" to offer it anyway)",
            a.describe()
        ),
        None if Backend::Gpu.available() => {
            eprintln!("GPU: none found; the node trains on its CPU")
        }
        None => eprintln!(
            "GPU: this build has no GPU support (build with --features loam-compute/wgpu); \
             the node trains on its CPU"
        ),
    }
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
        let unit = include_str!("../../deploy/systemd/loam-storagenode.service");
        let words = loam_common::cli::unit_exec_start(unit, "storagenode").expect("ExecStart");
        let cli = Cli::try_parse_from(&words).expect("the unit's command line parses");
        assert!(matches!(cli.command, Command::Run { .. }));
    }
}
