//! `uplink`: the Loam command-line client, in the style of Storj's uplink.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};
use loam_common::access::Access;
pub(crate) use loam_common::cli::Output;
use loam_common::{pb, rpc};
use loam_uplink::{Item, Progress, Project};

mod cli_access;
mod cli_compute;
mod cli_market;
mod recursive;

use cli_access::AccessCommand;

#[derive(Parser)]
#[command(
    name = "uplink",
    version,
    about = "Loam client: store and retrieve encrypted objects",
    after_help = "Exit codes: 0 success, 1 other error, 2 bad command line, 3 not found, \
                  4 refused (passphrase, API key, limit), 5 network (satellite or nodes \
                  unreachable)."
)]
struct Cli {
    /// Access grant (from `uplink access create`, `uplink share` or the
    /// satellite's operator), or the name of a saved one (`uplink access
    /// import`). Default: the saved grant chosen with `uplink access use`.
    #[arg(
        long,
        global = true,
        env = "UPLINK_ACCESS",
        hide_env_values = true,
        help_heading = loam_common::cli::GLOBAL
    )]
    access: Option<String>,
    /// File holding the access grant.
    #[arg(long, global = true, help_heading = loam_common::cli::GLOBAL)]
    access_file: Option<PathBuf>,
    /// Directory of the uplink's config (saved grants); default
    /// ~/.config/loam/uplink.
    #[arg(
        long,
        global = true,
        env = "UPLINK_CONFIG_DIR",
        help_heading = loam_common::cli::GLOBAL
    )]
    config_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a bucket: uplink mb loam://BUCKET
    Mb {
        /// The new bucket, as loam://BUCKET (3-63 lower-case letters,
        /// digits, '-' and '.').
        url: String,
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Remove a bucket: uplink rb loam://BUCKET (it must be empty unless
    /// --force)
    Rb {
        /// The bucket, as loam://BUCKET.
        url: String,
        /// Remove every object in the bucket first.
        #[arg(long)]
        force: bool,
        /// Objects removed at once with --force.
        #[arg(long, default_value_t = 8, value_name = "N")]
        parallelism: usize,
    },
    /// List buckets, or objects under loam://BUCKET[/PREFIX/], sorted by
    /// key; times are UTC
    Ls {
        /// loam://BUCKET, loam://BUCKET/PREFIX/ or loam://BUCKET/KEY (none:
        /// list the buckets).
        url: Option<String>,
        /// List every object under the prefix, not one level of it.
        #[arg(short, long)]
        recursive: bool,
        /// List uploads begun and not committed (interrupted or under way)
        /// instead of objects.
        #[arg(long)]
        pending: bool,
        /// Output format: text (a table), or json (one object per line).
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Storage and download usage of the project, per bucket, this month,
    /// with the project's limits
    Usage {
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Copy a file to or from the network ('-' is stdin/stdout), or with
    /// -r a directory tree
    Cp {
        /// A local path, '-' for standard input, or loam://BUCKET/KEY.
        source: String,
        /// A local path, '-' for standard output, or loam://BUCKET/KEY (a
        /// key ending in '/' takes the source's file name).
        destination: String,
        /// Copy a directory tree: every file under a local directory to
        /// the loam:// prefix, or every object under a loam:// prefix into
        /// a local directory.
        #[arg(short, long)]
        recursive: bool,
        /// Objects copied at once with -r.
        #[arg(long, default_value_t = 4, value_name = "N")]
        parallelism: usize,
        /// With -r: print what would be copied, copy nothing.
        #[arg(long, requires = "recursive")]
        dry_run: bool,
        /// Show a progress bar even when stderr is not a terminal.
        #[arg(long)]
        progress: bool,
        /// Never show a progress bar.
        #[arg(long, conflicts_with = "progress")]
        no_progress: bool,
        /// Download only bytes START-END (inclusive, from 0), or START- to
        /// the end: --range 0-1023.
        #[arg(long, value_name = "START-END", value_parser = parse_range)]
        range: Option<(u64, Option<u64>)>,
        /// Upload with the owner's key-value pairs, a JSON object of
        /// strings: --metadata '{"camera":"x100"}' (encrypted; read them
        /// with `uplink meta get`).
        #[arg(long, value_name = "JSON", value_parser = parse_metadata)]
        metadata: Option<std::collections::BTreeMap<String, String>>,
        /// Upload an object the satellite deletes at TIME: RFC 3339
        /// (2027-01-31T00:00:00Z) or from now (+90m, +24h, +7d).
        #[arg(long, value_name = "TIME", value_parser = parse_expiry)]
        expires: Option<i64>,
    },
    /// The owner's metadata of an object (set with cp --metadata)
    Meta {
        #[command(subcommand)]
        command: MetaCommand,
    },
    /// Move (rename) an object on the satellite, without moving its data:
    /// uplink mv loam://BUCKET/KEY loam://BUCKET2/KEY2, or with -r every
    /// object under a prefix
    Mv {
        /// The object, or with -r the prefix, as loam://BUCKET/KEY.
        source: String,
        /// Where it goes, as loam://BUCKET/KEY (a key ending in '/' keeps
        /// the source's last path component; with -r, the new prefix). An
        /// object there is replaced.
        destination: String,
        /// Move every object under the source prefix.
        #[arg(short, long)]
        recursive: bool,
        /// Objects moved at once with -r.
        #[arg(long, default_value_t = 8, value_name = "N")]
        parallelism: usize,
        /// With -r: print what would be moved, move nothing.
        #[arg(long, requires = "recursive")]
        dry_run: bool,
    },
    /// Remove an object: uplink rm loam://BUCKET/KEY, or with -r every
    /// object under a prefix
    Rm {
        /// The object, or with -r the prefix, as loam://BUCKET/KEY.
        url: String,
        /// Remove every object under the prefix.
        #[arg(short, long)]
        recursive: bool,
        /// Objects removed at once with -r.
        #[arg(long, default_value_t = 8, value_name = "N")]
        parallelism: usize,
        /// With -r: print what would be removed, remove nothing.
        #[arg(long, requires = "recursive")]
        dry_run: bool,
        /// Abandon the key's uploads begun and not committed (with -r,
        /// every one under the prefix) instead of removing objects.
        #[arg(long)]
        pending: bool,
    },
    /// Create, inspect, narrow, save and revoke access grants.
    Access {
        #[command(subcommand)]
        command: AccessCommand,
    },
    /// Share a prefix: print (or export) a grant narrowed to it, and what
    /// it allows: uplink share loam://BUCKET/PREFIX/ --readonly
    Share(cli_access::RestrictArgs),
    /// Datasets others offer for training: uplink market ls, market show ID
    Market {
        #[command(subcommand)]
        command: cli_market::MarketCommand,
    },
    /// What this project earned as a data owner, with its verified
    /// payout ledger: uplink earnings [-o json] [--save FILE]
    Earnings {
        #[command(subcommand)]
        command: Option<cli_market::EarningsCommand>,
        /// Save the signed ledger to FILE (check it later with `uplink
        /// earnings verify FILE`).
        #[arg(long)]
        save: Option<std::path::PathBuf>,
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Where this project's data-owner earnings are paid.
    PayoutAddress {
        #[command(subcommand)]
        command: cli_market::PayoutAddressCommand,
    },
    /// What this project was charged for its jobs: data fees, compute,
    /// egress.
    Charges {
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Create, list and revoke the project's API keys.
    ApiKey {
        #[command(subcommand)]
        command: cli_access::ApiKeyCommand,
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
    /// Print a shell completion script: uplink completion bash >
    /// /etc/bash_completion.d/uplink (or zsh, fish, elvish, powershell)
    Completion {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum MetaCommand {
    /// Print an object's metadata as JSON, or one value with KEY
    Get {
        /// The object, as loam://BUCKET/KEY.
        url: String,
        /// Print only this entry's value.
        key: Option<String>,
    },
}

/// `--range START-END` (inclusive) or `START-`.
fn parse_range(s: &str) -> Result<(u64, Option<u64>), String> {
    let s = s.strip_prefix("bytes=").unwrap_or(s);
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not START-END (e.g. 0-1023) or START-"))?;
    let start = a
        .parse::<u64>()
        .map_err(|_| format!("{a:?} is not a byte offset"))?;
    let end = match b {
        "" => None,
        b => Some(
            b.parse::<u64>()
                .map_err(|_| format!("{b:?} is not a byte offset"))?,
        ),
    };
    if end.is_some_and(|e| e < start) {
        return Err(format!("the range {s} ends before it starts"));
    }
    Ok((start, end))
}

/// `--metadata`: a JSON object whose values are strings.
fn parse_metadata(s: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    serde_json::from_str(s).map_err(|e| {
        format!("metadata must be a JSON object of strings, like '{{\"k\":\"v\"}}': {e}")
    })
}

/// `--expires`: RFC 3339, or `+DURATION` from now; Unix milliseconds.
pub(crate) fn parse_expiry(s: &str) -> Result<i64, String> {
    let at = if let Some(d) = s.strip_prefix('+') {
        let d = humantime::parse_duration(d)
            .map_err(|e| format!("{d:?} is not a duration (90m, 24h, 7d): {e}"))?;
        std::time::SystemTime::now() + d
    } else {
        humantime::parse_rfc3339_weak(s).map_err(|e| {
            format!("{s:?} is not a time: give RFC 3339 (2027-01-31T00:00:00Z) or +24h ({e})")
        })?
    };
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{s} is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| format!("{s} is too far away"))
}

/// A parsed `loam://bucket/key` URL.
#[derive(Debug)]
pub(crate) struct LoamUrl {
    pub(crate) bucket: String,
    pub(crate) key: String,
}

pub(crate) fn parse_loam(url: &str) -> anyhow::Result<LoamUrl> {
    let Some(rest) = url.strip_prefix("loam://") else {
        let looks_like_bucket =
            !url.is_empty() && !url.contains("://") && !url.starts_with(['/', '.', '-']);
        if looks_like_bucket {
            bail!("{url:?} is not a loam:// URL; did you mean loam://{url}?");
        }
        bail!("{url:?} is not a loam:// URL (loam://BUCKET/KEY)");
    };
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("{url:?} names no bucket");
    }
    Ok(LoamUrl {
        bucket: bucket.to_string(),
        key: key.to_string(),
    })
}

impl LoamUrl {
    /// The URL as it is safe to print.
    pub(crate) fn display(&self) -> String {
        format!("loam://{}/{}", self.bucket, escape_key(&self.key))
    }
}

/// The source and destination objects of a one-object `mv` or remote
/// `cp`: a destination key ending in '/' (or none) takes the source's last
/// path component.
fn object_pair(source: &str, destination: &str, verb: &str) -> anyhow::Result<(LoamUrl, LoamUrl)> {
    let src = parse_loam(source)?;
    let mut dst = parse_loam(destination)?;
    if src.key.is_empty() || src.key.ends_with('/') {
        bail!("{source:?} names no object ({verb} without -r takes one object)");
    }
    if dst.key.is_empty() || dst.key.ends_with('/') {
        dst.key
            .push_str(src.key.rsplit('/').next().unwrap_or(&src.key));
    }
    Ok((src, dst))
}

/// A URL that names a bucket only (`loam://bucket` or `loam://bucket/`).
fn parse_bucket_url(url: &str) -> anyhow::Result<LoamUrl> {
    let u = parse_loam(url)?;
    if !u.key.is_empty() {
        bail!(
            "{url:?} names an object key ({:?}) in bucket {:?}; bucket commands take \
             loam://{}",
            u.key,
            u.bucket,
            u.bucket
        );
    }
    Ok(u)
}

/// Where a download of object `key` to `destination` goes: into the
/// directory under the key's last component, or the path itself. Keys
/// whose last component is no usable file name (`.`, `..`, empty) are
/// refused rather than written beside the directory.
pub(crate) fn download_path(destination: &Path, key: &str) -> anyhow::Result<PathBuf> {
    if !destination.is_dir() {
        return Ok(destination.to_path_buf());
    }
    let base = key.rsplit('/').next().unwrap_or(key);
    if matches!(base, "" | "." | "..") || base.contains('\0') {
        bail!(
            "object key {} has no usable file name; give the file to write as the destination \
             (e.g. {}/NAME)",
            escape_key(key),
            destination.display()
        );
    }
    Ok(destination.join(base))
}

/// The temporary file a download is written to before it is renamed into
/// place: beside the target, with a suffix added (not the extension
/// replaced, so `a.txt` and `a.csv` never share one).
pub(crate) fn partial_path(target: &Path) -> anyhow::Result<PathBuf> {
    let name = target
        .file_name()
        .with_context(|| format!("{} names no file", target.display()))?;
    let mut partial = name.to_os_string();
    partial.push(".loam-partial");
    Ok(target.with_file_name(partial))
}

/// An object key as it is safe to print on a terminal: control characters
/// and bidirectional overrides (which could make a key look like another)
/// are written as `\u{XXXX}`.
pub(crate) fn escape_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        let bidi = matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

fn load_access(cli: &Cli) -> anyhow::Result<Access> {
    let dir = cli_access::config_dir(cli.config_dir.as_deref());
    match (&cli.access, &cli.access_file) {
        (Some(a), _) => cli_access::resolve_grant(a, &dir?),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read access file {}", path.display()))?;
            Ok(Access::parse(&text)?)
        }
        (None, None) => match dir
            .ok()
            .map(|d| cli_access::current_grant(&d))
            .transpose()?
        {
            Some(Some(a)) => Ok(a),
            _ => bail!(
                "no access grant: pass --access GRANT|NAME or --access-file, set UPLINK_ACCESS, \
                 or save one with `uplink access import NAME GRANT`"
            ),
        },
    }
}

/// An instant as RFC 3339 in UTC: `2026-12-03T05:14:17Z`.
pub(crate) fn format_time(ms: i64) -> String {
    loam_common::time::format_instant(ms)
}

fn progress_bar(
    show: bool,
    total: Option<u64>,
) -> (Option<indicatif::ProgressBar>, Option<Progress>) {
    if !show {
        return (None, None);
    }
    // Sizes and rates in SI units (kB, MB: powers of 1000) everywhere. A
    // stream of unknown size gets a spinner with the bytes so far, not a
    // bar whose total grows with it.
    let bar = match total {
        Some(t) => {
            let bar = indicatif::ProgressBar::new(t);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40.cyan/blue} {decimal_bytes}/{decimal_total_bytes} \
                     {decimal_bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            bar
        }
        None => {
            let bar = indicatif::ProgressBar::no_length();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {decimal_bytes} {decimal_bytes_per_sec} {elapsed}",
                )
                .expect("valid template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        }
    };
    let b = bar.clone();
    (Some(bar), Some(Arc::new(move |n| b.inc(n))))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completion { shell } = &cli.command {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "uplink",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
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
        let passphrase = match passphrase {
            Some(p) => p.clone(),
            None => ask_passphrase()?,
        };
        let info = project_salt(&project).await?;
        let access = Access::derive(satellite.clone(), key, &passphrase, &info)?;
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
    if let Command::Access { command } = &cli.command {
        let dir = cli_access::config_dir(cli.config_dir.as_deref())?;
        if cli_access::offline(command, &dir, || load_access(&cli))? {
            return Ok(());
        }
        match command {
            AccessCommand::Inspect {
                grant: Some(g),
                output,
            } => {
                let access = cli_access::resolve_grant(g, &dir)?;
                let project = Project::open(access.clone())?;
                let r = cli_access::inspect(&access, Some(&project), *output).await;
                project.close().await;
                return r;
            }
            AccessCommand::Revoke { grant } => {
                let child = cli_access::resolve_grant(grant, &dir)?;
                let project = Project::open(load_access(&cli)?)?;
                let r = project.revoke(&child).await;
                project.close().await;
                r?;
                println!("revoked: that grant and every grant narrowed from it stop working now");
                return Ok(());
            }
            _ => {}
        }
    }
    if let Command::Share(args) = &cli.command {
        return cli_access::share(&load_access(&cli)?, args);
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

/// Asks for a new passphrase on the terminal, twice, without echo.
fn ask_passphrase() -> anyhow::Result<String> {
    let no_terminal = |e: std::io::Error| {
        anyhow::anyhow!(
            "no passphrase given and no terminal to ask on ({e}); pass --passphrase or set \
             UPLINK_PASSPHRASE"
        )
    };
    let first = rpassword::prompt_password("Encryption passphrase: ").map_err(no_terminal)?;
    if first.is_empty() {
        bail!("the passphrase is empty; choose one (it encrypts everything stored with the grant)");
    }
    let again = rpassword::prompt_password("Again, to confirm: ").map_err(no_terminal)?;
    if first != again {
        bail!("the two passphrases differ; nothing was created");
    }
    Ok(first)
}

async fn project_salt(project: &Project) -> anyhow::Result<Vec<u8>> {
    let access = project.access();
    let identity = loam_common::Identity::generate(0, |_| {});
    let endpoint = loam_common::transport::Endpoint::bind(
        identity,
        "0.0.0.0:0".parse().expect("literal"),
        Default::default(),
    )?;
    let conn = endpoint.connect_url(&access.satellite).await?;
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
        Command::Mb { url, output } => {
            let u = parse_bucket_url(&url)?;
            let bucket = project.create_bucket(&u.bucket).await?;
            match output {
                Output::Json => loam_common::cli::print_json_line(&bucket)?,
                Output::Text => println!("Bucket {} created", u.bucket),
            }
        }
        Command::Rb {
            url,
            force,
            parallelism,
        } => {
            let u = parse_bucket_url(&url)?;
            if force {
                let batch = recursive::Batch {
                    parallelism,
                    dry_run: false,
                    show: false,
                };
                recursive::remove_all(project, &u.bucket, "", &batch).await?;
            }
            match project.delete_bucket(&u.bucket).await {
                Err(loam_uplink::UplinkError::BucketNotEmpty(b)) => bail!(
                    "bucket {b:?} is not empty; remove its objects (rm -r loam://{b}/) or use rb --force"
                ),
                other => other?,
            }
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
            url: Some(url),
            pending: true,
            output,
            ..
        } => {
            let u = parse_loam(&url)?;
            let uploads: Vec<_> = project
                .list_pending(&u.bucket, parent_prefix(&u.key))
                .await?
                .into_iter()
                .filter(|p| p.key.starts_with(&u.key))
                .collect();
            if output == Output::Json {
                for p in &uploads {
                    loam_common::cli::print_json_line(p)?;
                }
            } else {
                println!(
                    "{:<20} {:<32} {:>8} KEY",
                    "STARTED (UTC)", "UPLOAD ID", "SEGMENTS"
                );
                for p in &uploads {
                    println!(
                        "{:<20} {:<32} {:>8} {}",
                        format_time(p.created_ms),
                        p.upload_id,
                        p.segments,
                        escape_key(&p.key)
                    );
                }
            }
        }
        Command::Ls { pending: true, .. } => {
            bail!("ls --pending needs a bucket: uplink ls --pending loam://BUCKET[/PREFIX]")
        }
        Command::Ls {
            url,
            recursive,
            output,
            ..
        } => match url {
            None => {
                let buckets = project.list_buckets().await?;
                if output == Output::Json {
                    for b in &buckets {
                        loam_common::cli::print_json_line(b)?;
                    }
                } else {
                    println!("{:<20} NAME", "CREATED (UTC)");
                    for b in buckets {
                        println!("{:<20} {}", format_time(b.created_ms), b.name);
                    }
                }
            }
            Some(url) => {
                let u = parse_loam(&url)?;
                let prefix = recursive::prefix_of(&u.key);
                let mut items = project.list(&u.bucket, &prefix, recursive).await?;
                // `ls loam://b/key` of an object shows the object (and
                // whatever lies under `key/`).
                if !u.key.is_empty() && !u.key.ends_with('/') {
                    match project.stat(&u.bucket, &u.key).await {
                        Ok(item) => items.push(item),
                        Err(loam_uplink::UplinkError::ObjectNotFound(_)) if !items.is_empty() => {}
                        Err(loam_uplink::UplinkError::ObjectNotFound(_)) => {
                            return Err(NothingAt { url, prefix }.into());
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                // The satellite lists in the order of encrypted keys.
                items.sort_by(|a, b| a.key.cmp(&b.key));
                print_items(&items, output)?;
            }
        },
        Command::Cp {
            source,
            destination,
            recursive,
            parallelism,
            dry_run,
            progress,
            no_progress,
            range,
            metadata,
            expires,
        } => {
            let show = !no_progress && (progress || std::io::stderr().is_terminal());
            let upload = loam_uplink::UploadOptions {
                metadata: metadata.unwrap_or_default(),
                expires_ms: expires,
                ..Default::default()
            };
            let download = source.starts_with("loam://") && !destination.starts_with("loam://");
            if range.is_some() && !download {
                bail!("--range applies to downloads (loam:// to a file or '-')");
            }
            if recursive && (range.is_some() || !upload.metadata.is_empty() || expires.is_some()) {
                bail!("--range, --metadata and --expires apply to one object, not cp -r");
            }
            if let Some((start, end)) = range {
                download_range(project, &source, &destination, start, end).await?;
            } else if recursive {
                let batch = recursive::Batch {
                    parallelism,
                    dry_run,
                    show,
                };
                recursive::copy(project, &source, &destination, &batch).await?;
            } else {
                if !source.starts_with("loam://") && Path::new(&source).is_dir() {
                    bail!("{source} is a directory; copy a tree with cp -r");
                }
                copy(project, &source, &destination, show, &upload).await?;
            }
        }
        Command::Meta {
            command: MetaCommand::Get { url, key },
        } => {
            let u = parse_loam(&url)?;
            if u.key.is_empty() {
                bail!("{url:?} names no object");
            }
            let meta = project.metadata(&u.bucket, &u.key).await?;
            match key {
                Some(k) => match meta.get(&k) {
                    Some(v) => println!("{v}"),
                    None => {
                        return Err(NothingAt {
                            url: format!("{url} metadata"),
                            prefix: k,
                        }
                        .into());
                    }
                },
                None => println!("{}", serde_json::to_string_pretty(&meta)?),
            }
        }
        Command::Mv {
            source,
            destination,
            recursive,
            parallelism,
            dry_run,
        } => {
            if recursive {
                let batch = recursive::Batch {
                    parallelism,
                    dry_run,
                    show: false,
                };
                let how = recursive::Relocate::Move;
                let (n, _) =
                    recursive::relocate_all(project, &source, &destination, &batch, how).await?;
                if !dry_run {
                    eprintln!("moved {n} objects");
                }
            } else {
                let (src, dst) = object_pair(&source, &destination, "mv")?;
                project
                    .move_object(&src.bucket, &src.key, &dst.bucket, &dst.key)
                    .await?;
                println!("moved {} to {}", src.display(), dst.display());
            }
        }
        Command::Rm {
            url,
            recursive,
            parallelism,
            dry_run,
            pending,
        } => {
            let u = parse_loam(&url)?;
            if pending {
                let prefix = recursive::prefix_of(&u.key);
                let uploads: Vec<_> = project
                    .list_pending(&u.bucket, parent_prefix(&u.key))
                    .await?
                    .into_iter()
                    .filter(|p| p.key == u.key || (recursive && p.key.starts_with(&prefix)))
                    .collect();
                if uploads.is_empty() {
                    return Err(NothingPending { url }.into());
                }
                for p in &uploads {
                    if dry_run {
                        println!(
                            "would abandon upload {} of {}",
                            p.upload_id,
                            escape_key(&p.key)
                        );
                        continue;
                    }
                    project.abort(&u.bucket, &p.upload_id).await?;
                    println!("abandoned upload {} of {}", p.upload_id, escape_key(&p.key));
                }
            } else if recursive {
                let batch = recursive::Batch {
                    parallelism,
                    dry_run,
                    show: false,
                };
                let prefix = recursive::prefix_of(&u.key);
                let n = recursive::remove_all(project, &u.bucket, &prefix, &batch).await?;
                if !dry_run {
                    eprintln!("removed {n} objects");
                }
            } else {
                if u.key.is_empty() {
                    bail!("{url:?} names no object; remove a bucket with rb, a prefix with rm -r");
                }
                project.delete(&u.bucket, &u.key).await?;
                println!("removed {}", escape_key(&url));
            }
        }
        Command::Access { command } => match command {
            AccessCommand::Inspect { output, .. } => {
                cli_access::inspect(project.access(), Some(project), output).await?;
            }
            _ => unreachable!("handled before opening the project"),
        },
        Command::ApiKey { command } => cli_access::api_key(project, command).await?,
        Command::Market { command } => cli_market::market(project, command).await?,
        Command::Earnings {
            command,
            save,
            output,
        } => cli_market::earnings(project, command, save, output).await?,
        Command::PayoutAddress { command } => cli_market::payout_address(project, command).await?,
        Command::Charges { output } => cli_market::charges(project, output).await?,
        Command::Share(_) => unreachable!("handled before opening the project"),
        Command::Dataset { command } => cli_compute::dataset(project, command).await?,
        Command::Train(args) => cli_compute::train(project, args).await?,
        Command::Job { command } => cli_compute::job(project, command).await?,
        Command::Model { command } => cli_compute::model(Some(project), command).await?,
        Command::Completion { .. } => unreachable!("handled before opening the project"),
    }
    Ok(())
}

fn print_items(items: &[Item], output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        for i in items {
            loam_common::cli::print_json_line(i)?;
        }
        return Ok(());
    }
    println!("{:<4} {:<20} {:>10} KEY", "KIND", "CREATED (UTC)", "SIZE");
    for i in items {
        if i.is_prefix {
            println!("{:<4} {:<20} {:>10} {}", "PRE", "", "", escape_key(&i.key));
        } else {
            println!(
                "{:<4} {:<20} {:>10} {}",
                "OBJ",
                format_time(i.created_ms),
                human(i.size),
                escape_key(&i.key)
            );
        }
    }
    Ok(())
}

/// `cp --range`: bytes `start..=end` (or to the end) of an object to a
/// file or stdout.
async fn download_range(
    project: &Project,
    source: &str,
    destination: &str,
    start: u64,
    end: Option<u64>,
) -> anyhow::Result<()> {
    let src = parse_loam(source)?;
    if src.key.is_empty() {
        bail!("{source:?} names no object");
    }
    if destination == "-" {
        let mut out = tokio::io::stdout();
        project
            .download_range(&src.bucket, &src.key, start, end, &mut out, None)
            .await?;
        return Ok(());
    }
    let path = download_path(Path::new(destination), &src.key)?;
    let tmp = partial_path(&path)?;
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = project
        .download_range(&src.bucket, &src.key, start, end, &mut file, None)
        .await;
    drop(file);
    match result {
        Ok(n) => {
            tokio::fs::rename(&tmp, &path)
                .await
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("downloaded {n} bytes of {}", src.display());
            Ok(())
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e.into())
        }
    }
}

async fn copy(
    project: &Project,
    source: &str,
    destination: &str,
    show: bool,
    upload: &loam_uplink::UploadOptions,
) -> anyhow::Result<()> {
    if source.starts_with("loam://") && (!upload.metadata.is_empty() || upload.expires_ms.is_some())
    {
        bail!(
            "--metadata and --expires apply to uploads from a file or '-'; a download or \
             copy keeps the source's"
        );
    }
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
                        .upload_file_with(&dst.bucket, &dst.key, file, progress, upload)
                        .await?
                }
                Some(file) => {
                    let file = PageCacheFile(file);
                    project
                        .upload_with(&dst.bucket, &dst.key, file, progress, upload)
                        .await?
                }
                None => {
                    let stdin = tokio::io::stdin();
                    project
                        .upload_with(&dst.bucket, &dst.key, stdin, progress, upload)
                        .await?
                }
            };
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            eprintln!("uploaded loam://{}/{}", dst.bucket, escape_key(&dst.key));
            item.size
        }
        (true, false) => {
            let src = parse_loam(source)?;
            if src.key.is_empty() {
                bail!("{source:?} names no object");
            }
            // The size first only for a progress bar; otherwise the
            // download's own lookup says whether the object is there.
            let bar_size = if show && destination != "-" {
                let item = project.stat(&src.bucket, &src.key).await?;
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "object found"
                );
                Some(item.size)
            } else {
                None
            };
            let (bar, progress) = progress_bar(bar_size.is_some(), bar_size);
            let n = if destination == "-" {
                let mut out = tokio::io::stdout();
                project
                    .download(&src.bucket, &src.key, &mut out, progress)
                    .await?
            } else {
                let path = download_path(Path::new(destination), &src.key)?;
                let tmp = partial_path(&path)?;
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
                eprintln!("downloaded {}", escape_key(source));
            }
            n
        }
        (true, true) => {
            // Server-side: the satellite copies the metadata, the pieces
            // are shared; nothing is downloaded.
            let (src, dst) = object_pair(source, destination, "cp")?;
            project
                .copy_object(&src.bucket, &src.key, &dst.bucket, &dst.key)
                .await?;
            eprintln!("copied {} to {}", src.display(), dst.display());
            project.stat(&dst.bucket, &dst.key).await?.size
        }
        (false, false) => bail!("one of source and destination must be a loam:// URL"),
    };
    if show {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{} in {secs:.2} s ({}/s)",
            human(bytes),
            human((bytes as f64 / secs.max(1e-9)) as u64)
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

/// Exit codes, documented in `docs/cli.md` and `uplink --help`.
pub(crate) mod exit {
    /// Anything else.
    pub const OTHER: i32 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = 2;
    /// No such bucket or object, or nothing at a URL.
    pub const NOT_FOUND: i32 = 3;
    /// Refused: wrong passphrase, unknown or restricted API key, a limit.
    pub const PERMISSION: i32 = 4;
    /// The satellite or too many storage nodes could not be reached.
    pub const NETWORK: i32 = 5;
}

/// The exit code for an error: the first [`loam_uplink::UplinkError`] in
/// its chain decides.
fn exit_code(e: &anyhow::Error) -> i32 {
    use loam_common::pb::ErrorCode as C;
    use loam_uplink::UplinkError as U;
    for cause in e.chain() {
        if let Some(u) = cause.downcast_ref::<U>() {
            return match u {
                U::BucketNotFound(_) | U::ObjectNotFound(_) => exit::NOT_FOUND,
                U::WrongPassphrase(_) | U::Scope(_) | U::NotRoot(_) => exit::PERMISSION,
                U::Satellite(r) => match r.code {
                    C::NotFound => exit::NOT_FOUND,
                    C::Unauthenticated | C::PermissionDenied | C::ResourceExhausted => {
                        exit::PERMISSION
                    }
                    C::Unavailable => exit::NETWORK,
                    _ => exit::OTHER,
                },
                U::SatelliteUnreachable { .. }
                | U::Call(_)
                | U::TooFewNodes(_)
                | U::UploadFailed { .. }
                | U::DownloadFailed { .. } => exit::NETWORK,
                _ => exit::OTHER,
            };
        }
        if cause.downcast_ref::<NothingAt>().is_some()
            || cause.downcast_ref::<NothingPending>().is_some()
        {
            return exit::NOT_FOUND;
        }
    }
    exit::OTHER
}

/// The key's directory part: everything up to and including its last '/'.
fn parent_prefix(key: &str) -> &str {
    key.rfind('/').map_or("", |i| &key[..=i])
}

/// `rm --pending` of a URL with no pending upload.
#[derive(Debug, thiserror::Error)]
#[error("no pending upload at {url}")]
pub(crate) struct NothingPending {
    url: String,
}

/// `ls` of a URL where there is neither an object nor objects below.
#[derive(Debug, thiserror::Error)]
#[error("nothing at {url}: no such object and no objects under {prefix}")]
pub(crate) struct NothingAt {
    url: String,
    prefix: String,
}

/// mimalloc, with ordinary pages for sparse reservations (see
/// `loam_common::alloc`).
#[global_allocator]
static ALLOCATOR: loam_common::alloc::Allocator = loam_common::alloc::Allocator;

#[tokio::main]
async fn main() {
    loam_common::telemetry::init_logging_with_default("warn");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed.
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    if let Err(e) = run(cli).await {
        eprintln!("uplink: {e:#}");
        std::process::exit(exit_code(&e));
    }
}

/// Bytes in SI units: `1.50 GB`.
pub(crate) fn human(n: u64) -> String {
    loam_common::size::format_bytes(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_stay_inside_the_target_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert_eq!(
            download_path(d, "a/b/c.txt").expect("path"),
            d.join("c.txt")
        );
        for key in [".", "a/..", "a/", "..", "x\0y"] {
            let e = download_path(d, key).expect_err(key).to_string();
            assert!(e.contains("no usable file name"), "{e}");
        }
        // A file destination is used as it is.
        let file = d.join("out.bin");
        assert_eq!(download_path(&file, ".").expect("path"), file);
        // The partial file sits beside the target, suffix added.
        assert_eq!(
            partial_path(&d.join("a.txt")).expect("partial"),
            d.join("a.txt.loam-partial")
        );
    }

    #[test]
    fn keys_are_printed_without_control_or_bidi_characters() {
        assert_eq!(escape_key("photos/cat.jpg"), "photos/cat.jpg");
        assert_eq!(escape_key("a\nb"), "a\\u{000a}b");
        assert_eq!(escape_key("\u{1b}[31mred"), "\\u{001b}[31mred");
        assert_eq!(
            escape_key("invoice\u{202e}fdp.exe"),
            "invoice\\u{202e}fdp.exe"
        );
        assert_eq!(escape_key("日本/ß"), "日本/ß");
    }

    #[test]
    fn a_bad_command_line_exits_with_the_usage_code() {
        let e = Cli::try_parse_from(["uplink", "no-such-verb"])
            .err()
            .expect("refused");
        assert_eq!(e.exit_code(), exit::USAGE);
    }

    #[test]
    fn a_bare_name_gets_a_loam_url_suggestion() {
        let e = parse_loam("photos").expect_err("bare").to_string();
        assert!(e.contains("did you mean loam://photos?"), "{e}");
        let e = parse_loam("s3://b/k")
            .expect_err("other scheme")
            .to_string();
        assert!(
            !e.contains("did you mean") && e.contains("loam://BUCKET/KEY"),
            "{e}"
        );
    }

    #[test]
    fn bucket_commands_refuse_object_keys() {
        assert_eq!(parse_bucket_url("loam://ab").expect("ok").bucket, "ab");
        assert_eq!(parse_bucket_url("loam://ab/").expect("ok").bucket, "ab");
        let e = parse_bucket_url("loam://ab/c")
            .expect_err("key")
            .to_string();
        assert!(e.contains("object key") && e.contains("loam://ab"), "{e}");
    }
}

#[cfg(test)]
mod help_tests {
    use super::*;

    /// Every argument of every command, described in `--help`.
    #[test]
    fn every_argument_is_described() {
        let missing = loam_common::cli::undescribed_args(&Cli::command());
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    #[test]
    fn global_options_are_grouped_and_completion_is_generated() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Global options:"), "{help}");
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "uplink",
            &mut script,
        );
        let script = String::from_utf8(script).expect("UTF-8");
        assert!(script.contains("complete -F _uplink"), "{script}");
    }
}
