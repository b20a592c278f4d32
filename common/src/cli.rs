//! Command-line conventions shared by the four binaries (`uplink`,
//! `satellite`, `storagenode`, `testnet`), so that they read alike:
//! `-o text|json` for anything that prints data, `--log-format` for the
//! daemons, the same help headings and exit codes.

/// How a command prints its data: `text` for people (tables, SI units,
/// times in UTC marked `Z`), `json` for programs (one document, or one
/// object per line for listings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// The format of log lines on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per event (timestamp, level, target, fields).
    Json,
}

/// The heading under which every binary lists its global options.
pub const GLOBAL: &str = "Global options";

/// Logging options of the daemons.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log line format on stderr: text, or json (one object per line, for
    /// log collectors). RUST_LOG sets the level (default info).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "LOAM_LOG_FORMAT",
        help_heading = GLOBAL
    )]
    pub log_format: LogFormat,
}

/// Prints `value` as one line of JSON (for listings: one object per line).
pub fn print_json_line<T: serde::Serialize>(value: &T) -> Result<(), serde_json::Error> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Prints a project's API keys (`satellite api-key list`, `uplink
/// api-key list`): a table, or one JSON object per line.
pub fn print_api_keys(
    keys: &[crate::pb::ApiKeyInfo],
    output: Output,
) -> Result<(), serde_json::Error> {
    let id = |k: &crate::pb::ApiKeyInfo| {
        if k.head.is_empty() {
            "(legacy)".to_string()
        } else {
            crate::macaroon::key_id(&k.head)
        }
    };
    let when = |ms: i64| (ms > 0).then(|| crate::time::format_instant(ms));
    if output == Output::Json {
        for k in keys {
            print_json_line(&serde_json::json!({
                "id": id(k),
                "name": k.name,
                "created": when(k.created_unix_ms),
                "revoked": when(k.revoked_unix_ms),
            }))?;
        }
        return Ok(());
    }
    println!(
        "{:<16}  {:<20}  {:<20}  NAME",
        "ID", "CREATED (UTC)", "REVOKED (UTC)"
    );
    for k in keys {
        println!(
            "{:<16}  {:<20}  {:<20}  {}",
            id(k),
            when(k.created_unix_ms).unwrap_or_default(),
            when(k.revoked_unix_ms).unwrap_or_else(|| "-".into()),
            k.name
        );
    }
    Ok(())
}

/// `command`'s arguments (in every subcommand) that `--help` would show
/// without a description, as `subcommand path: argument id`.
pub fn undescribed_args(command: &clap::Command) -> Vec<String> {
    fn walk(c: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in c.get_arguments() {
            let id = a.get_id().as_str();
            if a.is_hide_set() || matches!(id, "help" | "version") {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                out.push(format!("{path}: {id}"));
            }
        }
        for sub in c.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    let mut c = command.clone();
    c.build();
    walk(&c, c.get_name(), &mut out);
    out
}

/// The words of a systemd unit's `ExecStart=` line, checked to start the
/// binary `name` (for the tests of the units shipped in `deploy/`).
pub fn unit_exec_start<'a>(unit: &'a str, name: &str) -> Result<Vec<&'a str>, String> {
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .ok_or("the unit has no ExecStart")?;
    let words: Vec<&str> = exec.split_whitespace().collect();
    match words.first() {
        Some(bin) if bin.rsplit('/').next() == Some(name) => Ok(words),
        _ => Err(format!("ExecStart runs {exec:?}, not {name}")),
    }
}
