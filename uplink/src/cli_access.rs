//! `uplink share`, `uplink access …` and `uplink api-key …`: narrowing,
//! sharing, naming and revoking access grants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use loam_common::access::{Access, Restriction};
use loam_uplink::Project;

use crate::Output;

/// What a narrowed grant may do: `uplink share` and `uplink access
/// restrict`.
#[derive(Args, Debug, Clone)]
pub(crate) struct RestrictArgs {
    /// Only these prefixes, as loam://BUCKET/PREFIX/ (a prefix not ending
    /// in '/' is taken as one); none: every path the grant allows. The new
    /// grant carries only these prefixes' encryption keys.
    pub(crate) urls: Vec<String>,
    /// Read and list only: no writes, no deletes.
    #[arg(long, conflicts_with = "writeonly")]
    pub(crate) readonly: bool,
    /// Write only: no reads, no listings, no deletes.
    #[arg(long)]
    pub(crate) writeonly: bool,
    /// No downloads.
    #[arg(long)]
    pub(crate) disallow_reads: bool,
    /// No uploads, moves or copies into the paths.
    #[arg(long)]
    pub(crate) disallow_writes: bool,
    /// No listings.
    #[arg(long)]
    pub(crate) disallow_lists: bool,
    /// No deletes.
    #[arg(long)]
    pub(crate) disallow_deletes: bool,
    /// Training only: may submit jobs on the datasets under the paths,
    /// never download or change them.
    #[arg(long)]
    pub(crate) compute_only: bool,
    /// Not valid before TIME (RFC 3339, or +DURATION from now).
    #[arg(long, value_name = "TIME", value_parser = crate::parse_expiry)]
    pub(crate) not_before: Option<i64>,
    /// Not valid after TIME (RFC 3339, or +DURATION from now).
    #[arg(long, value_name = "TIME", value_parser = crate::parse_expiry)]
    pub(crate) not_after: Option<i64>,
    /// Write the new grant to FILE (private: mode 0600) instead of printing
    /// it.
    #[arg(long, value_name = "FILE")]
    pub(crate) export_to: Option<PathBuf>,
    /// Output format: text or json.
    #[arg(short, long, value_enum, default_value = "text")]
    pub(crate) output: Output,
}

impl RestrictArgs {
    fn restriction(&self) -> anyhow::Result<Restriction> {
        let mut paths = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            let u = crate::parse_loam(url)?;
            if u.bucket.is_empty() {
                bail!("{url:?} names no bucket; share loam://BUCKET/ or loam://BUCKET/PREFIX/");
            }
            paths.push((u.bucket, u.key));
        }
        Ok(Restriction {
            paths,
            disallow_reads: self.disallow_reads || self.writeonly,
            disallow_writes: self.disallow_writes || self.readonly,
            disallow_lists: self.disallow_lists || self.writeonly,
            disallow_deletes: self.disallow_deletes || self.readonly || self.writeonly,
            compute_only: self.compute_only,
            not_before_ms: self.not_before.unwrap_or(0),
            not_after_ms: self.not_after.unwrap_or(0),
        })
    }
}

#[derive(Subcommand)]
pub(crate) enum AccessCommand {
    /// Derive an access grant from an API key and a passphrase.
    Create {
        /// Satellite as ID@HOST:PORT.
        #[arg(long)]
        satellite: loam_common::NodeUrl,
        /// The project's API key (base58), from the satellite's operator.
        #[arg(long)]
        api_key: String,
        /// Encryption passphrase. Asked for on the terminal (hidden, twice)
        /// when not given; keep it: without it nothing stored with the
        /// grant can be read.
        #[arg(long, env = "UPLINK_PASSPHRASE", hide_env_values = true)]
        passphrase: Option<String>,
    },
    /// Show a grant: satellite, project, encryption keys and every caveat
    /// in plain words (the current grant when none is given).
    Inspect {
        /// A grant, a file holding one, or a saved grant's name.
        grant: Option<String>,
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Narrow the current grant (offline) and print or export the result.
    Restrict(RestrictArgs),
    /// Revoke GRANT and every grant narrowed from it, within seconds. The
    /// current grant must be the one GRANT was narrowed from.
    Revoke {
        /// A grant, a file holding one, or a saved grant's name.
        grant: String,
    },
    /// Save a grant under NAME in the config file.
    Import {
        /// Name to save it under.
        name: String,
        /// The grant, or a file holding it.
        grant: String,
        /// Replace a saved grant of that name.
        #[arg(long)]
        force: bool,
    },
    /// Make the saved grant NAME the default.
    Use {
        /// A saved grant's name.
        name: String,
    },
    /// List the saved grants.
    List {
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Forget a saved grant.
    Remove {
        /// A saved grant's name.
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum ApiKeyCommand {
    /// Create another API key for the project and print a grant with it
    /// (and the current grant's encryption keys).
    Create {
        /// A name for the key, shown by `api-key list`.
        #[arg(long, default_value = "")]
        name: String,
        /// Write the new grant to FILE (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        export_to: Option<PathBuf>,
    },
    /// List the project's API keys.
    List {
        /// Output format: text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Revoke an API key (and every grant made from it).
    Revoke {
        /// The key's id from `api-key list` (a unique prefix will do).
        id: String,
    },
}

// ---------------------------------------------------------------- config

/// Saved grants: `access.toml` in the uplink's config directory.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct GrantStore {
    /// The grant used when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) current: Option<String>,
    #[serde(default)]
    pub(crate) grants: BTreeMap<String, String>,
}

/// The uplink's config directory: `--config-dir`, `UPLINK_CONFIG_DIR`, or
/// the user's (`~/.config/loam/uplink` on Linux).
pub(crate) fn config_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d.to_path_buf());
    }
    dirs::config_dir()
        .map(|d| d.join("loam").join("uplink"))
        .context("no config directory (set HOME, or pass --config-dir)")
}

impl GrantStore {
    fn path(dir: &Path) -> PathBuf {
        dir.join("access.toml")
    }

    pub(crate) fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{} is not a valid grant store", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = Self::path(dir);
        loam_common::config::write_private(&path, toml::to_string(self)?.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// A grant given on the command line: the grant itself, a file holding
/// one, or a saved grant's name.
pub(crate) fn resolve_grant(given: &str, dir: &Path) -> anyhow::Result<Access> {
    let given = given.trim();
    if given.starts_with("loam1") {
        return Ok(Access::parse(given)?);
    }
    let store = GrantStore::load(dir)?;
    if let Some(g) = store.grants.get(given) {
        return Access::parse(g).with_context(|| format!("saved grant {given:?}"));
    }
    let path = Path::new(given);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(Access::parse(&text)?);
    }
    bail!(
        "{given:?} is neither an access grant, a file, nor a saved grant (saved: {})",
        names(&store)
    )
}

fn names(store: &GrantStore) -> String {
    if store.grants.is_empty() {
        "none; see `uplink access import`".into()
    } else {
        store.grants.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The current saved grant, if one is set.
pub(crate) fn current_grant(dir: &Path) -> anyhow::Result<Option<Access>> {
    let store = GrantStore::load(dir)?;
    let Some(name) = &store.current else {
        return Ok(None);
    };
    let g = store
        .grants
        .get(name)
        .with_context(|| format!("the current grant {name:?} is not saved any more"))?;
    Ok(Some(Access::parse(g)?))
}

// ---------------------------------------------------------------- commands

/// Commands that need no satellite.
pub(crate) fn offline(
    command: &AccessCommand,
    dir: &Path,
    current: impl FnOnce() -> anyhow::Result<Access>,
) -> anyhow::Result<bool> {
    match command {
        AccessCommand::Restrict(args) => {
            let narrowed = current()?.restrict(&args.restriction()?)?;
            emit_grant(&narrowed, args.export_to.as_deref(), args.output)?;
        }
        AccessCommand::Import { name, grant, force } => {
            let access = resolve_grant(grant, dir)?;
            let mut store = GrantStore::load(dir)?;
            if store.grants.contains_key(name) && !force {
                bail!("a grant named {name:?} is already saved; pass --force to replace it");
            }
            store.grants.insert(name.clone(), access.serialize());
            if store.current.is_none() {
                store.current = Some(name.clone());
            }
            store.save(dir)?;
            println!(
                "saved grant {name:?} in {}",
                GrantStore::path(dir).display()
            );
        }
        AccessCommand::Use { name } => {
            let mut store = GrantStore::load(dir)?;
            if !store.grants.contains_key(name) {
                bail!("no saved grant named {name:?} (saved: {})", names(&store));
            }
            store.current = Some(name.clone());
            store.save(dir)?;
            println!("using grant {name:?}");
        }
        AccessCommand::List { output } => {
            let store = GrantStore::load(dir)?;
            for (name, grant) in &store.grants {
                let current = store.current.as_deref() == Some(name.as_str());
                let satellite = Access::parse(grant)
                    .map(|a| a.satellite.to_string())
                    .unwrap_or_else(|e| format!("(unreadable: {e})"));
                match output {
                    Output::Json => loam_common::cli::print_json_line(&serde_json::json!({
                        "name": name,
                        "current": current,
                        "satellite": satellite,
                    }))?,
                    Output::Text => {
                        println!("{} {name:<20} {satellite}", if current { "*" } else { " " })
                    }
                }
            }
        }
        AccessCommand::Remove { name } => {
            let mut store = GrantStore::load(dir)?;
            if store.grants.remove(name).is_none() {
                bail!("no saved grant named {name:?} (saved: {})", names(&store));
            }
            if store.current.as_deref() == Some(name.as_str()) {
                store.current = None;
            }
            store.save(dir)?;
            println!("removed grant {name:?}");
        }
        AccessCommand::Create { .. }
        | AccessCommand::Inspect { .. }
        | AccessCommand::Revoke { .. } => return Ok(false),
    }
    Ok(true)
}

/// `uplink share`: narrow the current grant and say what the new one
/// allows.
pub(crate) fn share(access: &Access, args: &RestrictArgs) -> anyhow::Result<()> {
    let narrowed = access.restrict(&args.restriction()?)?;
    if args.output == Output::Text {
        for line in summary(&narrowed)? {
            eprintln!("{line}");
        }
    }
    emit_grant(&narrowed, args.export_to.as_deref(), args.output)
}

fn emit_grant(access: &Access, export_to: Option<&Path>, output: Output) -> anyhow::Result<()> {
    let grant = access.serialize();
    if let Some(path) = export_to {
        loam_common::config::write_private(path, format!("{grant}\n").as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    match (output, export_to) {
        (Output::Json, _) => loam_common::cli::print_json_line(&serde_json::json!({
            "grant": grant,
            "exported_to": export_to.map(|p| p.display().to_string()),
            "allows": summary(access)?,
        }))?,
        (Output::Text, Some(path)) => println!("grant exported to {}", path.display()),
        (Output::Text, None) => println!("{grant}"),
    }
    Ok(())
}

/// What a grant allows, one line per fact.
fn summary(access: &Access) -> anyhow::Result<Vec<String>> {
    let mut out = vec![format!("satellite   {}", access.satellite)];
    out.push(format!(
        "keys        {}",
        match access.keys.prefixes() {
            None => "root key: every bucket and path".to_string(),
            Some(p) => format!("only {}", p.join(", ")),
        }
    ));
    let caveats = access.caveats()?;
    if caveats.is_empty() {
        out.push("allows     everything in the project".into());
    }
    for (i, c) in caveats.iter().enumerate() {
        out.push(format!(
            "caveat {:<4} {}",
            i + 1,
            access.describe_caveat(c).join("; ")
        ));
    }
    Ok(out)
}

/// `uplink access inspect`.
pub(crate) async fn inspect(
    access: &Access,
    project: Option<&Project>,
    output: Output,
) -> anyhow::Result<()> {
    // The project's name needs the satellite; the rest is in the grant.
    let project_info = match project {
        Some(p) => p.project_info().await.ok(),
        None => None,
    };
    let caveats = access.caveats()?;
    let key_id = loam_common::macaroon::CaveatedKey::from_bytes(&access.api_key)
        .ok()
        .map(|k| loam_common::macaroon::key_id(k.head()));
    match output {
        Output::Json => {
            let caveats: Vec<serde_json::Value> = caveats
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "disallow_reads": c.disallow_reads,
                        "disallow_writes": c.disallow_writes,
                        "disallow_lists": c.disallow_lists,
                        "disallow_deletes": c.disallow_deletes,
                        "compute_only": c.compute_only,
                        "allowed_paths": c.allowed_paths.iter().map(|p| serde_json::json!({
                            "bucket": p.bucket,
                            "prefix": access.keys.decrypt_path(&p.bucket, &p.encrypted_prefix).ok(),
                        })).collect::<Vec<_>>(),
                        "not_before": (c.not_before_ms != 0)
                            .then(|| loam_common::time::format_instant(c.not_before_ms)),
                        "not_after": (c.not_after_ms != 0)
                            .then(|| loam_common::time::format_instant(c.not_after_ms)),
                        "words": access.describe_caveat(c),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "satellite": access.satellite.to_string(),
                    "project": project_info.as_ref().map(|p| p.name.clone()),
                    "project_id": project_info.as_ref().map(|p| hex::encode(&p.project_id)),
                    "api_key_id": key_id,
                    "api_key": bs58::encode(&access.api_key).into_string(),
                    "encryption": match access.keys.prefixes() {
                        None => serde_json::json!("root"),
                        Some(p) => serde_json::json!(p),
                    },
                    "caveats": caveats,
                }))?
            );
        }
        Output::Text => {
            if let Some(p) = &project_info {
                println!("project     {} ({})", p.name, hex::encode(&p.project_id));
            }
            println!(
                "api key     {}",
                key_id.unwrap_or_else(|| "from before caveats (cannot be narrowed)".into())
            );
            for line in summary(access)? {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// `uplink api-key …`.
pub(crate) async fn api_key(project: &Project, command: ApiKeyCommand) -> anyhow::Result<()> {
    match command {
        ApiKeyCommand::Create { name, export_to } => {
            let access = project.create_api_key(&name).await?;
            emit_grant(&access, export_to.as_deref(), Output::Text)?;
        }
        ApiKeyCommand::List { output } => {
            loam_common::cli::print_api_keys(&project.api_keys().await?, output)?;
        }
        ApiKeyCommand::Revoke { id } => {
            let head = loam_common::macaroon::parse_key_id(&id)?;
            project.revoke_api_key(&head).await?;
            println!("revoked API key {id} and every grant made from it");
        }
    }
    Ok(())
}
