//! `uplink`: the Loam command-line client, in the style of Storj's uplink.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use loam_common::access::Access;
use loam_common::{NodeUrl, pb, rpc};
use loam_uplink::{Item, Progress, Project};

mod cli_compute;

#[derive(Parser)]
#[command(
    name = "uplink",
    version,
    about = "Loam client: store and retrieve encrypted objects"
)]
struct Cli {
    /// Access grant string.
    #[arg(long, global = true, env = "UPLINK_ACCESS", hide_env_values = true)]
    access: Option<String>,
    /// File holding the access grant.
    #[arg(long, global = true)]
    access_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Make a bucket: uplink mb loam://BUCKET
    Mb { url: String },
    /// Remove an empty bucket: uplink rb loam://BUCKET
    Rb { url: String },
    /// List buckets, or objects under loam://BUCKET[/PREFIX/]
    Ls {
        url: Option<String>,
        #[arg(short, long)]
        recursive: bool,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Storage and download usage of the project, per bucket, this month,
    /// with the project's limits
    Usage {
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Copy a file to or from the network ('-' is stdin/stdout)
    Cp {
        source: String,
        destination: String,
        /// Show a progress bar even when stderr is not a terminal.
        #[arg(long)]
        progress: bool,
        /// Never show a progress bar.
        #[arg(long, conflicts_with = "progress")]
        no_progress: bool,
    },
    /// Remove an object: uplink rm loam://BUCKET/KEY
    Rm { url: String },
    /// Create and inspect access grants.
    Access {
        #[command(subcommand)]
        command: AccessCommand,
    },
    /// Upload datasets and opt them in to compute.
    Dataset {
        #[command(subcommand)]
        command: cli_compute::DatasetCommand,
    },
    /// Train a model on a dataset where its pieces are stored.
    Train(cli_compute::TrainArgs),
    /// List, follow and cancel training jobs.
    Job {
        #[command(subcommand)]
        command: cli_compute::JobCommand,
    },
    /// Evaluate a trained model or predict with it, locally.
    Model {
        #[command(subcommand)]
        command: cli_compute::ModelCommand,
    },
}

#[derive(Subcommand)]
enum AccessCommand {
    /// Derive an access grant from an API key and a passphrase.
    Create {
        /// Satellite as ID@HOST:PORT.
        #[arg(long)]
        satellite: NodeUrl,
        #[arg(long)]
        api_key: String,
        #[arg(long, env = "UPLINK_PASSPHRASE", hide_env_values = true)]
        passphrase: String,
    },
    /// Show which satellite and project an access grant is for.
    Inspect,
}

/// A parsed `loam://bucket/key` URL.
pub(crate) struct LoamUrl {
    pub(crate) bucket: String,
    pub(crate) key: String,
}

pub(crate) fn parse_loam(url: &str) -> anyhow::Result<LoamUrl> {
    let rest = url
        .strip_prefix("loam://")
        .with_context(|| format!("{url:?} is not a loam:// URL"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("{url:?} names no bucket");
    }
    Ok(LoamUrl {
        bucket: bucket.to_string(),
        key: key.to_string(),
    })
}

fn load_access(cli: &Cli) -> anyhow::Result<Access> {
    let text = match (&cli.access, &cli.access_file) {
        (Some(a), _) => a.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read access file {}", path.display()))?,
        (None, None) => bail!("no access grant: pass --access, --access-file or set UPLINK_ACCESS"),
    };
    Ok(Access::parse(&text)?)
}

pub(crate) fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil-from-days (proleptic Gregorian)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn progress_bar(
    show: bool,
    total: Option<u64>,
) -> (Option<indicatif::ProgressBar>, Option<Progress>) {
    if !show {
        return (None, None);
    }
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::no_length(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    let b = bar.clone();
    (Some(bar), Some(Arc::new(move |n| b.inc(n))))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Access {
        command:
            AccessCommand::Create {
                satellite,
                api_key,
                passphrase,
            },
    } = &cli.command
    {
        let key = bs58::decode(api_key)
            .into_vec()
            .context("API key is not valid base58")?;
        let project = Project::open(Access::derive(
            satellite.clone(),
            key.clone(),
            "",
            b"0000000000000000",
        )?)?;
        let info = project_salt(&project).await?;
        let access = Access::derive(satellite.clone(), key, passphrase, &info)?;
        println!("{}", access.serialize());
        return Ok(());
    }
    if let Command::Model { command } = &cli.command
        && !cli_compute::model_needs_access(command)
    {
        // A local model file needs no network.
        let Command::Model { command } = cli.command else {
            unreachable!("matched above")
        };
        return cli_compute::model(None, command).await;
    }
    let access = load_access(&cli)?;
    let project = Project::open(access)?;
    let result = execute(&project, cli.command).await;
    let closing = std::time::Instant::now();
    project.close().await;
    tracing::debug!(
        close_ms = closing.elapsed().as_millis() as u64,
        "connections closed"
    );
    result
}

async fn project_salt(project: &Project) -> anyhow::Result<Vec<u8>> {
    let access = project.access();
    let identity = loam_common::Identity::generate(0, |_| {});
    let endpoint = loam_common::transport::Endpoint::bind(
        identity,
        "0.0.0.0:0".parse().expect("literal"),
        Default::default(),
    )?;
    let conn = endpoint
        .connect(access.satellite.id, access.satellite.socket_addr()?)
        .await?;
    match rpc::satellite(
        &conn,
        &access.api_key,
        pb::satellite_request::Request::ProjectInfo(pb::ProjectInfoRequest {}),
    )
    .await?
    {
        pb::satellite_response::Response::ProjectInfo(p) => Ok(p.salt.to_vec()),
        _ => bail!("satellite gave an unexpected answer"),
    }
}

async fn execute(project: &Project, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Mb { url } => {
            let u = parse_loam(&url)?;
            project.create_bucket(&u.bucket).await?;
            println!("Bucket {} created", u.bucket);
        }
        Command::Rb { url } => {
            let u = parse_loam(&url)?;
            project.delete_bucket(&u.bucket).await?;
            println!("Bucket {} removed", u.bucket);
        }
        Command::Usage { output } => {
            let u = project.usage().await?;
            if output == Output::Json {
                let buckets: Vec<serde_json::Value> = u
                    .buckets
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "bucket": b.name, "stored_bytes": b.stored_bytes,
                            "objects": b.objects, "segments": b.segments,
                            "egress_bytes": b.egress_bytes, "byte_hours": b.byte_hours,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "project": u.project, "month": u.month,
                        "stored_bytes": u.stored_bytes, "egress_bytes": u.egress_bytes,
                        "storage_limit": u.storage_limit, "egress_limit": u.egress_limit,
                        "buckets": buckets,
                    }))?
                );
            } else {
                let limit = |used: u64, l: u64| {
                    if l == 0 {
                        format!("{} (no limit)", human(used))
                    } else {
                        format!(
                            "{} of {} ({:.1} %)",
                            human(used),
                            human(l),
                            used as f64 * 100.0 / l as f64
                        )
                    }
                };
                println!("project {}, {}", u.project, u.month);
                println!(
                    "  stored:            {}",
                    limit(u.stored_bytes, u.storage_limit)
                );
                println!(
                    "  downloads allowed: {}",
                    limit(u.egress_bytes, u.egress_limit)
                );
                println!(
                    "{:<24} {:>8} {:>9} {:>12} {:>16} {:>14}",
                    "BUCKET", "OBJECTS", "SEGMENTS", "STORED", "EGRESS (settled)", "GB-HOURS"
                );
                for b in &u.buckets {
                    println!(
                        "{:<24} {:>8} {:>9} {:>12} {:>16} {:>14.3}",
                        b.name,
                        b.objects,
                        b.segments,
                        human(b.stored_bytes),
                        human(b.egress_bytes),
                        b.byte_hours as f64 / 1e9
                    );
                }
            }
        }
        Command::Ls {
            url,
            recursive,
            output,
        } => match url {
            None => {
                let buckets = project.list_buckets().await?;
                if output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&buckets)?);
                } else {
                    println!("{:<20} NAME", "CREATED");
                    for b in buckets {
                        println!("{:<20} {}", format_time(b.created_ms), b.name);
                    }
                }
            }
            Some(url) => {
                let u = parse_loam(&url)?;
                let prefix = if u.key.is_empty() || u.key.ends_with('/') {
                    u.key.clone()
                } else {
                    format!("{}/", u.key)
                };
                let items = project.list(&u.bucket, &prefix, recursive).await?;
                print_items(&items, output)?;
            }
        },
        Command::Cp {
            source,
            destination,
            progress,
            no_progress,
        } => {
            let show = !no_progress && (progress || std::io::stderr().is_terminal());
            copy(project, &source, &destination, show).await?;
        }
        Command::Rm { url } => {
            let u = parse_loam(&url)?;
            if u.key.is_empty() {
                bail!("{url:?} names no object");
            }
            project.delete(&u.bucket, &u.key).await?;
            println!("removed {url}");
        }
        Command::Access { command } => match command {
            AccessCommand::Inspect => {
                let a = project.access();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "satellite": a.satellite.to_string(),
                        "api_key": bs58::encode(&a.api_key).into_string(),
                    }))?
                );
            }
            AccessCommand::Create { .. } => unreachable!("handled before opening the project"),
        },
        Command::Dataset { command } => cli_compute::dataset(project, command).await?,
        Command::Train(args) => cli_compute::train(project, args).await?,
        Command::Job { command } => cli_compute::job(project, command).await?,
        Command::Model { command } => cli_compute::model(Some(project), command).await?,
    }
    Ok(())
}

fn print_items(items: &[Item], output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(items)?);
        return Ok(());
    }
    println!("{:<4} {:<20} {:>14} KEY", "KIND", "CREATED", "SIZE");
    for i in items {
        if i.is_prefix {
            println!("{:<4} {:<20} {:>14} {}", "PRE", "", "", i.key);
        } else {
            println!(
                "{:<4} {:<20} {:>14} {}",
                "OBJ",
                format_time(i.created_ms),
                i.size,
                i.key
            );
        }
    }
    Ok(())
}

async fn copy(
    project: &Project,
    source: &str,
    destination: &str,
    show: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let bytes = match (
        source.starts_with("loam://"),
        destination.starts_with("loam://"),
    ) {
        (false, true) => {
            let mut dst = parse_loam(destination)?;
            if dst.key.is_empty() || dst.key.ends_with('/') {
                let name = Path::new(source)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .filter(|_| source != "-")
                    .context("destination needs an object key when copying from stdin")?;
                dst.key.push_str(name);
            }
            let file = if source == "-" {
                None
            } else {
                Some(std::fs::File::open(source).with_context(|| format!("cannot open {source}"))?)
            };
            let meta = file.as_ref().and_then(|f| f.metadata().ok());
            let (bar, progress) = progress_bar(show, meta.as_ref().map(|m| m.len()));
            let item = match file {
                // A regular file is read where each stripe is encoded.
                Some(file) if meta.is_some_and(|m| m.is_file()) => {
                    project
                        .upload_file(&dst.bucket, &dst.key, file, progress)
                        .await?
                }
                Some(file) => {
                    project
                        .upload(&dst.bucket, &dst.key, PageCacheFile(file), progress)
                        .await?
                }
                None => {
                    project
                        .upload(&dst.bucket, &dst.key, tokio::io::stdin(), progress)
                        .await?
                }
            };
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            eprintln!("uploaded loam://{}/{}", dst.bucket, dst.key);
            item.size
        }
        (true, false) => {
            let src = parse_loam(source)?;
            if src.key.is_empty() {
                bail!("{source:?} names no object");
            }
            let item = project.stat(&src.bucket, &src.key).await?;
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "object found"
            );
            let (bar, progress) = progress_bar(show && destination != "-", Some(item.size));
            let n = if destination == "-" {
                let mut out = tokio::io::stdout();
                project
                    .download(&src.bucket, &src.key, &mut out, progress)
                    .await?
            } else {
                let mut path = PathBuf::from(destination);
                if path.is_dir() {
                    let base = src.key.rsplit('/').next().unwrap_or(&src.key);
                    path.push(base);
                }
                let tmp = path.with_extension("loam-partial");
                let file = std::fs::File::create(&tmp)
                    .with_context(|| format!("cannot create {}", tmp.display()))?;
                let result = project
                    .download_to_file(&src.bucket, &src.key, file, progress)
                    .await;
                match result {
                    Ok(n) => {
                        tokio::fs::rename(&tmp, &path)
                            .await
                            .with_context(|| format!("cannot write {}", path.display()))?;
                        n
                    }
                    Err(e) => {
                        let _ = tokio::fs::remove_file(&tmp).await;
                        return Err(e.into());
                    }
                }
            };
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if destination != "-" {
                eprintln!("downloaded {source}");
            }
            n
        }
        (true, true) => bail!(
            "copying between two loam:// URLs is not supported yet; download and upload instead"
        ),
        (false, false) => bail!("one of source and destination must be a loam:// URL"),
    };
    if show {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{bytes} bytes in {secs:.2} s ({:.1} MB/s)",
            bytes as f64 / 1e6 / secs.max(1e-9)
        );
    }
    Ok(())
}

/// A file read directly from the async task. Uploads read megabytes per
/// call, which the page cache serves in a few milliseconds; `tokio::fs`
/// would copy each through a 2 MiB buffer and hop to a blocking thread for
/// every piece of it. (Uploads read on their own task, so a slow disk
/// delays only the next segment, not the transfers in flight.)
struct PageCacheFile(std::fs::File);

impl tokio::io::AsyncRead for PageCacheFile {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::Read;
        // Bounded, so zero-initialising the target never costs more than
        // the read itself.
        let want = buf.remaining().min(8 << 20);
        let n = match self.get_mut().0.read(buf.initialize_unfilled_to(want)) {
            Ok(n) => n,
            Err(e) => return std::task::Poll::Ready(Err(e)),
        };
        buf.advance(n);
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::main]
async fn main() {
    loam_common::telemetry::init_logging_with_default("warn");
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("uplink: {e:#}");
        std::process::exit(1);
    }
}

/// Bytes in SI units: `1.50 GB`.
fn human(n: u64) -> String {
    loam_common::size::format_bytes(n)
}
