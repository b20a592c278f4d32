//! `uplink dataset publish|unpublish` and `uplink market ls|show`.

use clap::{Args, Subcommand};
use loam_common::pb;
use loam_uplink::Project;
use loam_uplink::market::{ListingOptions, parse_listing_id};

use crate::Output;

/// What every listing says of itself.
#[derive(Args)]
pub(crate) struct ListingFacts {
    /// The listing's title.
    #[arg(long)]
    title: String,
    /// What it is, how it was collected or trained.
    #[arg(long, default_value = "")]
    description: String,
    /// The license its users are bound by.
    #[arg(long, default_value = "")]
    license: String,
    /// A tag to find it by (repeat for several).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Leave the column names out of the listing.
    #[arg(long)]
    hide_columns: bool,
}

impl ListingFacts {
    fn options(self) -> ListingOptions {
        ListingOptions {
            title: self.title,
            description: self.description,
            license: self.license,
            tags: self.tags,
            hide_columns: self.hide_columns,
            ..Default::default()
        }
    }
}

#[derive(Args)]
pub(crate) struct PublishArgs {
    /// The dataset, loam://BUCKET/NAME (opted in to compute).
    url: String,
    #[command(flatten)]
    facts: ListingFacts,
    /// Price per 1 000 sample-epochs, in the ledger's smallest unit (0:
    /// free).
    #[arg(long)]
    price: u64,
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

#[derive(Args)]
pub(crate) struct ModelPublishArgs {
    /// The model, loam://BUCKET/KEY (stored by `uplink train --out`).
    url: String,
    #[command(flatten)]
    facts: ListingFacts,
    /// Price per download, in the ledger's smallest unit (0: free).
    #[arg(long)]
    price: u64,
    /// When the listing stops selling (RFC 3339 or +DURATION).
    #[arg(long, value_name = "TIME", value_parser = crate::parse_expiry)]
    expires: Option<i64>,
    /// Output format: text or json.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Output,
}

pub(crate) async fn publish_model(project: &Project, args: ModelPublishArgs) -> anyhow::Result<()> {
    let u = crate::parse_loam(&args.url)?;
    if u.key.is_empty() {
        anyhow::bail!("{:?} names no model", args.url);
    }
    let opts = ListingOptions {
        price_per_1000: 0,
        terms: pb::ListingTerms {
            expires_unix_ms: args.expires.unwrap_or(0),
            ..Default::default()
        },
        ..args.facts.options()
    };
    let l = project
        .publish_model(&u.bucket, &u.key, &opts, args.price)
        .await?;
    if args.output == Output::Text {
        eprintln!(
            "published loam://{}/{} as market:{} (buyers read a copy in its own folder with a \
             read-only grant the satellite hands them)",
            u.bucket,
            u.key,
            hex::encode(&l.id)
        );
    }
    show(&l, args.output)
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
        "price_per_1000": (l.kind != "model").then_some(l.price_per_1000),
        "price_per_download": (l.kind == "model").then_some(l.price_per_download),
        "model": (!l.model.is_empty()).then_some(&l.model),
        "downloads": (l.kind == "model").then_some(l.downloads),
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
        "tasks": l.tasks,
        "keys_sealed": when(l.keys_sealed_unix_ms),
        "fewest_key_holders_online": l.fewest_key_holders_online,
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
                "kind",
                "price_per_1000",
                "price_per_download",
                "model",
                "downloads",
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
                "tasks",
                "keys_sealed",
                "fewest_key_holders_online",
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
        price_per_1000: args.price,
        terms: pb::ListingTerms {
            allowed_models: args.allow_model,
            max_rounds: args.max_rounds.unwrap_or(0),
            min_records_per_task: args.min_records_per_task.unwrap_or(0),
            require_verification: args.require_verification.unwrap_or(0.0),
            expires_unix_ms: args.expires.unwrap_or(0),
        },
        ..args.facts.options()
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

#[derive(Subcommand)]
pub(crate) enum EarningsCommand {
    /// Check a saved ledger file offline: every signature, link and the
    /// signed head.
    Verify {
        /// A file written by `uplink earnings --save FILE`.
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum PayoutAddressCommand {
    /// Set where this project's data-owner earnings are paid.
    Set {
        /// A wallet address.
        address: String,
    },
    /// Show it.
    Show,
}

pub(crate) async fn reseal(project: &Project, url: &str) -> anyhow::Result<()> {
    let u = crate::parse_loam(url)?;
    let l = project.reseal_listing(&u.bucket, &u.key).await?;
    println!(
        "market:{}: {} tasks' keys sealed again; the fewest nodes online holding one task's key: {}",
        hex::encode(&l.id),
        l.tasks,
        project
            .listing(&l.id)
            .await
            .map_or(0, |l| l.fewest_key_holders_online)
    );
    Ok(())
}

fn usage_json(u: &pb::ListingUsageResponse) -> serde_json::Value {
    let l = u.listing.clone().unwrap_or_default();
    serde_json::json!({
        "id": format!("market:{}", hex::encode(&l.id)),
        "title": l.title,
        "price_per_1000": l.price_per_1000,
        "jobs": u.jobs,
        "sample_epochs": u.sample_epochs,
        "earned": u.earned,
        "downloads": l.downloads,
        "last_used": (l.last_used_unix_ms > 0).then(|| loam_common::time::format_instant(l.last_used_unix_ms)),
        "fewest_key_holders_online": l.fewest_key_holders_online,
    })
}

pub(crate) async fn usage(project: &Project, id: &str, output: Output) -> anyhow::Result<()> {
    let u = project.listing_usage(&parse_listing_id(id)?).await?;
    let v = usage_json(&u);
    match output {
        Output::Json => println!("{v}"),
        Output::Text => {
            for k in [
                "id",
                "title",
                "price_per_1000",
                "jobs",
                "sample_epochs",
                "earned",
                "last_used",
                "fewest_key_holders_online",
            ] {
                let text = match &v[k] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "-".into(),
                    other => other.to_string(),
                };
                println!("{k:<26} {text}");
            }
            if u.listing.is_some_and(|l| l.fewest_key_holders_online == 0) {
                eprintln!(
                    "warning: some task has no key holder online; jobs wait until one returns \
                     or you run `uplink dataset reseal` on the dataset"
                );
            }
        }
    }
    Ok(())
}

pub(crate) async fn earnings(
    project: &Project,
    command: Option<EarningsCommand>,
    save: Option<std::path::PathBuf>,
    output: Output,
) -> anyhow::Result<()> {
    if let Some(EarningsCommand::Verify { file }) = command {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
        let (payee, entries) = verify_ledger_text(&text)?;
        println!(
            "{}: ledger of payee {payee} intact, {entries} entries, every signature and link verified",
            file.display()
        );
        return Ok(());
    }
    let e = project.earnings().await?;
    let payee = loam_common::NodeId::try_from(e.payee_id.as_ref())
        .map_err(|_| anyhow::anyhow!("the satellite sent a malformed payee id"))?;
    let ledger = e.ledger.clone().unwrap_or_default();
    let public = loam_common::PublicKey::try_from(ledger.satellite_public_key.as_ref())
        .map_err(|_| anyhow::anyhow!("the satellite sent a malformed public key"))?;
    if public.node_id() != project.access().satellite.id {
        anyhow::bail!("the ledger is signed by another satellite than the one this access names");
    }
    let file = loam_common::ledger::LedgerFile {
        satellite: public.node_id(),
        public_key: public,
        entries: ledger.entries.clone(),
        head: ledger.head.clone(),
    };
    let entries = file
        .verify(&payee)
        .map_err(|err| anyhow::anyhow!("the satellite's ledger does not verify: {err}"))?;
    if let Some(path) = &save {
        std::fs::write(path, file.to_text())
            .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", path.display()))?;
    }
    let mut paystubs = Vec::new();
    let mut paid = 0u64;
    let mut earned = 0u64;
    for entry in &entries {
        match &entry.body {
            Some(pb::ledger_entry::Body::Paystub(p)) => {
                earned = earned.saturating_add(p.data_amount);
                paystubs.push(serde_json::json!({
                    "period": p.period,
                    "sample_epochs": p.data_sample_epochs,
                    "amount": p.data_amount,
                    "wallet": p.wallet,
                }));
            }
            Some(pb::ledger_entry::Body::Payment(p)) => paid = paid.saturating_add(p.amount),
            None => {}
        }
    }
    let v = serde_json::json!({
        "payee": payee.to_string(),
        "payout_address": e.payout_address,
        "unpaid": e.unpaid,
        "on_paystubs": earned,
        "paid": paid,
        "ledger_entries": entries.len(),
        "ledger_verified": true,
        "paystubs": paystubs,
        "listings": e.listings.iter().map(usage_json).collect::<Vec<_>>(),
    });
    match output {
        Output::Json => println!("{v}"),
        Output::Text => {
            println!(
                "payout address  {}",
                if e.payout_address.is_empty() {
                    "- (set one with `uplink payout-address set ADDRESS`)"
                } else {
                    &e.payout_address
                }
            );
            println!("not yet on a paystub  {}", e.unpaid);
            println!("on paystubs           {earned}");
            println!("paid                  {paid}");
            println!(
                "ledger                {} entries, every signature and link verified",
                entries.len()
            );
            println!(
                "{:<23} {:>6} {:>14} {:>12} TITLE",
                "LISTING", "JOBS", "SAMPLE-EPOCHS", "EARNED"
            );
            for u in &e.listings {
                let l = u.listing.clone().unwrap_or_default();
                println!(
                    "market:{:<16} {:>6} {:>14} {:>12} {}",
                    hex::encode(&l.id),
                    u.jobs,
                    u.sample_epochs,
                    u.earned,
                    l.title
                );
            }
        }
    }
    Ok(())
}

/// Verifies a saved ledger file offline; returns its payee and length.
fn verify_ledger_text(text: &str) -> anyhow::Result<(String, usize)> {
    let file = loam_common::ledger::LedgerFile::parse(text)
        .map_err(|e| anyhow::anyhow!("not a valid ledger file: {e}"))?;
    let payee = match file.entries.first() {
        Some(first) => {
            let e = <pb::LedgerEntry as prost::Message>::decode(first.entry.as_ref())
                .map_err(|_| anyhow::anyhow!("entry 0 is not a ledger entry"))?;
            loam_common::NodeId::try_from(e.node_id.as_ref())
                .map_err(|_| anyhow::anyhow!("entry 0 names no payee"))?
        }
        None => anyhow::bail!("the ledger has no entries yet"),
    };
    let entries = file
        .verify(&payee)
        .map_err(|e| anyhow::anyhow!("the ledger does not verify: {e}"))?;
    Ok((payee.to_string(), entries.len()))
}

pub(crate) async fn payout_address(
    project: &Project,
    command: PayoutAddressCommand,
) -> anyhow::Result<()> {
    match command {
        PayoutAddressCommand::Set { address } => {
            let a = project.set_payout_address(&address).await?;
            println!("earnings of this project are paid to {a}");
        }
        PayoutAddressCommand::Show => {
            let e = project.earnings().await?;
            if e.payout_address.is_empty() {
                println!("no payout address; set one with `uplink payout-address set ADDRESS`");
            } else {
                println!("{}", e.payout_address);
            }
        }
    }
    Ok(())
}

pub(crate) async fn charges(project: &Project, output: Output) -> anyhow::Result<()> {
    let c = project.charges().await?;
    let mut data = 0u64;
    let mut compute = 0u64;
    let mut egress = 0u64;
    for r in &c.charges {
        data = data.saturating_add(r.data.iter().map(|d| d.amount).sum());
        compute = compute.saturating_add(r.compute_amount);
        egress = egress.saturating_add(r.egress_amount);
    }
    if output == Output::Json {
        println!(
            "{}",
            serde_json::json!({
                "total": c.total,
                "data_fees": data,
                "compute": compute,
                "egress": egress,
                "month_total": c.month_total,
                "spend_limit": (c.spend_limit > 0).then_some(c.spend_limit),
                "rounds": c.charges.iter().map(|r| serde_json::json!({
                    "job": hex::encode(&r.job_id),
                    "round": r.round,
                    "time": loam_common::time::format_instant(r.unix_ms),
                    "data_fees": r.data.iter().map(|d| serde_json::json!({
                        "listing": format!("market:{}", hex::encode(&d.listing_id)),
                        "sample_epochs": d.sample_epochs,
                        "amount": d.amount,
                    })).collect::<Vec<_>>(),
                    "work_micro_units": r.work_micro_units,
                    "compute": r.compute_amount,
                    "egress_bytes": r.egress_bytes,
                    "egress": r.egress_amount,
                    "total": r.total,
                })).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    println!("data fees  {data}");
    println!("compute    {compute}");
    println!("egress     {egress}");
    println!("total      {}", c.total);
    println!(
        "this month {}{}",
        c.month_total,
        if c.spend_limit > 0 {
            format!(" of a {} limit", c.spend_limit)
        } else {
            String::new()
        }
    );
    Ok(())
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
