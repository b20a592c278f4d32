//! `storagenode`: set up and run a Loam storage node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loam_common::{Identity, NodeUrl, telemetry};
use loam_storagenode::{Config, StorageNode};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "storagenode", version, about = "Loam storage node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the node's identity and config.toml in DIR.
    Setup {
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
        /// Satellite to trust, as ID@HOST:PORT (repeatable).
        #[arg(long = "satellite", env = "LOAM_SATELLITE")]
        satellites: Vec<NodeUrl>,
        /// Proof-of-work difficulty (trailing zero bits) of the new identity.
        #[arg(long, default_value_t = 16)]
        difficulty: u32,
        /// QUIC listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// HTTP address for /metrics and /health.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Bytes of disk to offer.
        #[arg(long)]
        allocated_bytes: Option<u64>,
        /// Seconds between check-ins.
        #[arg(long)]
        checkin_interval: Option<f64>,
        /// Payout address (0x + 40 hex digits, EIP-55 checksummed).
        #[arg(long, env = "LOAM_WALLET")]
        wallet: Option<String>,
    },
    /// Fetch this node's payout ledgers from its satellites (appending to
    /// the local copies under DIR/payouts) and show the payout history.
    Payouts {
        #[arg(long, env = "LOAM_DIR", global = true)]
        dir: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<PayoutsCommand>,
    },
    /// Run the node in DIR until interrupted.
    Run {
        #[arg(long, env = "LOAM_DIR")]
        dir: PathBuf,
    },
    /// Leave a satellite gracefully: it stops sending uploads here and
    /// moves every piece this node holds for it to other nodes. Keep the
    /// node running until the exit is finished.
    ExitSatellite {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    match Cli::parse().command {
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
                    let conn = endpoint.connect(sat.id, sat.socket_addr()?).await?;
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
                    if e.finished_unix_ms > 0 {
                        println!("exit from {} finished: every piece moved", sat.id.short());
                        break;
                    }
                    println!(
                        "exit from {} under way: {} pieces left to move",
                        sat.id.short(),
                        e.pieces_left
                    );
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
            difficulty,
            listen,
            http_listen,
            allocated_bytes,
            checkin_interval,
            wallet,
        } => {
            let wallet = wallet
                .map(|w| w.parse::<loam_common::wallet::Wallet>())
                .transpose()?
                .map(|w| w.to_checksummed());
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let id_path = dir.join("identity.key");
            if id_path.exists() {
                anyhow::bail!(
                    "{} already holds an identity; refusing to overwrite it",
                    dir.display()
                );
            }
            let identity = Identity::generate(difficulty, |_| {});
            identity.save(&id_path)?;
            let mut config = Config {
                satellites,
                ..Default::default()
            };
            if let Some(l) = listen {
                config.listen = l;
            }
            if let Some(h) = http_listen {
                config.http_listen = h;
            }
            if let Some(a) = allocated_bytes {
                config.allocated_bytes = a;
            }
            if let Some(c) = checkin_interval {
                config.checkin_interval_secs = c;
            }
            if let Some(w) = wallet {
                config.wallet = w;
            }
            config.save(&dir)?;
            println!("{}", identity.id());
        }
        Command::Payouts { dir, command } => {
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
        Command::Run { dir } => {
            let identity = Identity::load(&dir.join("identity.key"))?;
            let config = Config::load(&dir)?;
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
