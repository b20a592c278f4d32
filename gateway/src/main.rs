//! `gateway`: an S3-compatible endpoint in front of Loam.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use loam_gateway::credentials::Credentials;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "An S3-compatible gateway to Loam: S3 tools (the AWS CLI, boto3, rclone, s3cmd) store and read through it with credentials made for access grants"
)]
struct Cli {
    /// Directory of the gateway's credentials; default
    /// ~/.config/loam/gateway.
    #[arg(long, global = true, env = "LOAM_GATEWAY_CONFIG_DIR", help_heading = loam_common::cli::GLOBAL)]
    config_dir: Option<PathBuf>,
    #[command(flatten)]
    log: loam_common::cli::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make S3 credentials (access key id and secret) for an access
    /// grant and keep them; the credential can do what the grant allows,
    /// no more.
    Setup {
        /// The access grant (from `uplink access create` or `share`).
        #[arg(long, env = "LOAM_ACCESS")]
        access: String,
        /// Print the credential as JSON (access_key_id, secret_access_key).
        #[arg(long)]
        json: bool,
    },
    /// List the credentials kept (ids only).
    List,
    /// Forget a credential.
    Remove { access_key_id: String },
    /// Serve S3 until stopped.
    Run {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7777")]
        address: String,
        /// Address of the gateway's own HTTP side: Prometheus metrics at
        /// /metrics, a health check at /health.
        #[arg(long, default_value = "127.0.0.1:7778")]
        metrics_address: String,
    },
}

fn config_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(d) => Ok(d.to_path_buf()),
        None => Ok(dirs::config_dir()
            .context("no config directory on this system; pass --config-dir")?
            .join("loam")
            .join("gateway")),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    loam_common::telemetry::init_logging_as("info", cli.log.log_format);
    let dir = config_dir(cli.config_dir.as_deref())?;
    match cli.command {
        Command::Setup { access, json } => {
            let mut creds = Credentials::load(&dir)?;
            let c = creds.add(&access)?;
            creds.save(&dir)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "access_key_id": c.access_key_id,
                        "secret_access_key": c.secret_access_key,
                    })
                );
            } else {
                println!("Access key id:     {}", c.access_key_id);
                println!("Secret access key: {}", c.secret_access_key);
                println!(
                    "Kept in {}",
                    dir.join(loam_gateway::credentials::FILE).display()
                );
            }
        }
        Command::List => {
            let creds = Credentials::load(&dir)?;
            for c in creds.iter() {
                println!("{}", c.access_key_id);
            }
        }
        Command::Remove { access_key_id } => {
            let mut creds = Credentials::load(&dir)?;
            if !creds.remove(&access_key_id) {
                bail!("no credential {access_key_id} in {}", dir.display());
            }
            creds.save(&dir)?;
        }
        Command::Run {
            address,
            metrics_address,
        } => {
            let creds = Credentials::load(&dir)?;
            if creds.is_empty() {
                bail!(
                    "no credentials in {}: make one with `gateway setup --access GRANT`",
                    dir.display()
                );
            }
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&address)
                    .await
                    .with_context(|| format!("listening on {address}"))?;
                let keyring = loam_gateway::Keyring::new(creds, Some(dir.clone()));
                let server = loam_gateway::Server::start(listener, keyring)?;
                let http = tokio::net::TcpListener::bind(&metrics_address)
                    .await
                    .with_context(|| format!("listening on {metrics_address} for metrics"))?;
                let metrics_address = http.local_addr()?;
                tokio::spawn(loam_common::telemetry::serve_http(
                    http,
                    loam_gateway::http_router(),
                    tokio_util::sync::CancellationToken::new(),
                ));
                // What tools wait for: the address actually bound.
                let run = loam_gateway::RunInfo {
                    address: server.address,
                    pid: std::process::id(),
                    metrics_address: Some(metrics_address),
                };
                // Whole or not at all: written aside, then renamed.
                let run_file = dir.join(loam_gateway::RUN_FILE);
                let tmp = dir.join(format!("{}.tmp", loam_gateway::RUN_FILE));
                std::fs::write(&tmp, serde_json::to_vec(&run)?)
                    .and_then(|()| std::fs::rename(&tmp, &run_file))
                    .with_context(|| format!("writing {}", run_file.display()))?;
                println!(
                    "gateway listening on http://{} (metrics at http://{metrics_address}/metrics)",
                    server.address,
                );
                tokio::select! {
                    r = server.wait() => r,
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            })?;
        }
    }
    Ok(())
}
