//! `uplink dataset publish|unpublish` and `uplink market ls|show`.

use clap::{Args, Subcommand};
use loam_common::pb;
use loam_uplink::Project;
use loam_uplink::market::{ListingOptions, parse_listing_id};

use crate::Output;

#[derive(Args)]
pub(crate) struct PublishArgs {
    /// The dataset, loam://BUCKET/NAME (opted in to compute).
    url: String,
    /// The listing's title.
    #[arg(long)]
    title: String,
    /// What the data is, how it was collected.
    #[arg(long, default_value = "")]
    description: String,
    /// The license jobs and models are bound by.
    #[arg(long, default_value = "")]
    license: String,
    /// A tag to find it by (repeat for several).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Price per 1 000 sample-epochs, in the ledger's smallest unit (0:
    /// free).
    #[arg(long)]
    price: u64,
    /// Leave the column names out of the listing.
    #[arg(long)]
    hide_columns: bool,
    /// Models jobs may train (comma-separated; default: any).
    #[arg(long, value_delimiter = ',')]
    allow_model: Vec<String>,
    /// Most federated rounds a job may run.
    #[arg(long)]
    max_rounds: Option<u32>,
    /// Fewest records one training task may hold.
    #[arg(long)]
    min_records_per_task: Option<u64>,
    /// Smallest share of tasks a job must have re-executed (0 to 1).
    #[arg(long)]
    require_verification: Option<f64>,
    /// When the listing stops taking new jobs (RFC 3339 or +DURATION).
    #[arg(long, value_name = "TIME", value_parser = crate::parse_expiry)]
    expires: Option<i64>,
    /// Output format: text or json.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Output,
}

#[derive(Subcommand)]
pub(crate) enum MarketCommand {
    /// Datasets offered for training, oldest first.
    Ls {
        /// Only listings with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only listings whose title, description, tags or owner hold
        /// every word.
        #[arg(long)]
        search: Option<String>,
        /// Unpublished and expired listings too.
        #[arg(long)]
        all: bool,
        /// Output format: text (a table) or json (one object per line).
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// One listing in full.
    Show {
        /// The listing, market:ID or ID.
        id: String,
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// A listing as JSON (the wire type is protobuf).
pub(crate) fn listing_json(l: &pb::Listing) -> serde_json::Value {
    let t = l.terms.clone().unwrap_or_default();
    let when = |ms: i64| (ms > 0).then(|| loam_common::time::format_instant(ms));
    serde_json::json!({
        "id": format!("market:{}", hex::encode(&l.id)),
        "kind": l.kind,
        "owner": l.owner,
        "title": l.title,
        "description": l.description,
        "license": l.license,
        "tags": l.tags,
        "price_per_1000": l.price_per_1000,
        "records": l.records,
        "features": l.features,
        "label": l.label,
        "classes": l.classes,
        "columns": l.columns,
        "terms": {
            "allowed_models": t.allowed_models,
            "max_rounds": (t.max_rounds > 0).then_some(t.max_rounds),
            "min_records_per_task": (t.min_records_per_task > 0).then_some(t.min_records_per_task),
            "require_verification": t.require_verification,
            "expires": when(t.expires_unix_ms),
        },
        "created": when(l.created_unix_ms),
        "unpublished": when(l.unpublished_unix_ms),
        "jobs": l.jobs,
        "last_used": when(l.last_used_unix_ms),
    })
}

fn show(l: &pb::Listing, output: Output) -> anyhow::Result<()> {
    let v = listing_json(l);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Text => {
            // The order people read a listing in.
            for k in [
                "id",
                "title",
                "owner",
                "description",
                "license",
                "tags",
                "price_per_1000",
                "records",
                "features",
                "label",
                "classes",
                "columns",
                "terms",
                "created",
                "unpublished",
                "jobs",
                "last_used",
            ] {
                let text = match &v[k] {
                    serde_json::Value::String(s) if s.is_empty() => "-".into(),
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "-".into(),
                    serde_json::Value::Array(a) if a.is_empty() => "-".into(),
                    serde_json::Value::Array(a) => a
                        .iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                };
                println!("{k:<16} {text}");
            }
        }
    }
    Ok(())
}

pub(crate) async fn publish(project: &Project, args: PublishArgs) -> anyhow::Result<()> {
    let u = crate::parse_loam(&args.url)?;
    if u.key.is_empty() {
        anyhow::bail!("{:?} names no dataset", args.url);
    }
    let opts = ListingOptions {
        title: args.title,
        description: args.description,
        license: args.license,
        tags: args.tags,
        price_per_1000: args.price,
        hide_columns: args.hide_columns,
        terms: pb::ListingTerms {
            allowed_models: args.allow_model,
            max_rounds: args.max_rounds.unwrap_or(0),
            min_records_per_task: args.min_records_per_task.unwrap_or(0),
            require_verification: args.require_verification.unwrap_or(0.0),
            expires_unix_ms: args.expires.unwrap_or(0),
        },
    };
    let l = project.publish_dataset(&u.bucket, &u.key, &opts).await?;
    if args.output == Output::Text {
        eprintln!(
            "published loam://{}/{} as market:{}",
            u.bucket,
            u.key,
            hex::encode(&l.id)
        );
    }
    show(&l, args.output)
}

pub(crate) async fn unpublish(project: &Project, id: &str) -> anyhow::Result<()> {
    let l = project.unpublish(&parse_listing_id(id)?).await?;
    println!(
        "market:{} unpublished: it takes no new jobs (running ones finish)",
        hex::encode(&l.id)
    );
    Ok(())
}

pub(crate) async fn market(project: &Project, command: MarketCommand) -> anyhow::Result<()> {
    match command {
        MarketCommand::Ls {
            tag,
            search,
            all,
            output,
        } => {
            let listings = project
                .listings(
                    tag.as_deref().unwrap_or(""),
                    search.as_deref().unwrap_or(""),
                    all,
                )
                .await?;
            if output == Output::Json {
                for l in &listings {
                    loam_common::cli::print_json_line(&listing_json(l))?;
                }
                return Ok(());
            }
            println!(
                "{:<23} {:>9} {:>8} {:<16} {:<30} TAGS",
                "ID", "RECORDS", "PRICE", "OWNER", "TITLE"
            );
            for l in &listings {
                println!(
                    "market:{:<16} {:>9} {:>8} {:<16} {:<30} {}",
                    hex::encode(&l.id),
                    l.records,
                    l.price_per_1000,
                    l.owner,
                    l.title,
                    l.tags.join(",")
                );
            }
        }
        MarketCommand::Show { id, output } => {
            show(&project.listing(&parse_listing_id(&id)?).await?, output)?;
        }
    }
    Ok(())
}
