//! The node's copy of its payout ledgers: one file per satellite under
//! `DIR/payouts/`, extended from the satellite and checked offline.
//!
//! New entries are only ever appended: the node asks for the entries after
//! the ones it holds and keeps the result only if the whole chain, old
//! entries included, still verifies — a satellite cannot rewrite a
//! statement the node already has.

use std::path::{Path, PathBuf};

use anyhow::Context;
use loam_common::ledger::{LedgerError, LedgerFile};
use loam_common::transport::Endpoint;
use loam_common::{NodeId, NodeUrl, PublicKey, pb};

pub fn ledger_path(dir: &Path, satellite: &NodeId) -> PathBuf {
    dir.join("payouts").join(format!("{satellite}.ledger"))
}

/// Reads a ledger file (None if there is none yet).
pub fn read(dir: &Path, satellite: &NodeId) -> anyhow::Result<Option<LedgerFile>> {
    let path = ledger_path(dir, satellite);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            LedgerFile::parse(&text).with_context(|| format!("{}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Fetches new entries from `sat` and appends them to the local copy.
/// Returns the updated, verified ledger.
pub async fn fetch(
    dir: &Path,
    endpoint: &Endpoint,
    node: &NodeId,
    sat: &NodeUrl,
) -> anyhow::Result<LedgerFile> {
    let local = read(dir, &sat.id)?;
    let since = local.as_ref().map_or(0, |l| l.entries.len() as u64);
    let conn = endpoint.connect_url(sat).await?;
    let resp = loam_common::rpc::satellite(
        &conn,
        &[],
        pb::satellite_request::Request::Ledger(pb::LedgerRequest { since }),
    )
    .await?;
    let pb::satellite_response::Response::Ledger(resp) = resp else {
        anyhow::bail!("satellite {} gave an unexpected answer", sat.id.short());
    };
    let key = PublicKey::try_from(resp.satellite_public_key.as_ref())
        .context("satellite sent a malformed public key")?;
    anyhow::ensure!(
        key.node_id() == sat.id,
        "satellite {} signs its ledger with a key that is not its identity",
        sat.id.short()
    );
    let mut file = local.unwrap_or_else(|| LedgerFile::new(key));
    file.entries.extend(resp.entries);
    file.head = resp.head;
    file.verify(node).map_err(|e| {
        anyhow::anyhow!(
            "the satellite's ledger does not extend the copy this node holds ({e}); \
             the local file was left as it was"
        )
    })?;
    let path = ledger_path(dir, &sat.id);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    loam_common::config::write_atomic(&path, file.to_text().as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

/// Verifies every ledger file offline.
pub fn verify_all(
    dir: &Path,
    node: &NodeId,
    satellites: &[NodeUrl],
) -> Vec<(NodeId, Result<Vec<pb::LedgerEntry>, String>)> {
    satellites
        .iter()
        .map(|sat| {
            let result = match read(dir, &sat.id) {
                Ok(Some(file)) => file.verify(node).map_err(|e: LedgerError| e.to_string()),
                Ok(None) => Err("no ledger fetched yet (run `storagenode payouts`)".into()),
                Err(e) => Err(format!("{e:#}")),
            };
            (sat.id, result)
        })
        .collect()
}

/// Formats base units as a decimal amount of the token.
pub fn amount(base_units: u64, decimals: u32) -> String {
    let scale = 10u64.pow(decimals.min(18));
    if decimals == 0 {
        return base_units.to_string();
    }
    format!(
        "{}.{:0width$}",
        base_units / scale,
        base_units % scale,
        width = decimals as usize
    )
}

/// One paystub of the history, with what was sent for its period (amounts
/// in base units of the payout token).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryRow {
    pub period: String,
    pub storage_byte_hours: u64,
    pub egress_bytes: u64,
    pub gross: u64,
    pub held: u64,
    pub paid: u64,
    pub sent: u64,
    pub wallet: String,
    pub disqualified: bool,
    pub exited: bool,
    pub held_returned: u64,
}

/// The history: one row per paystub, with what was sent for it.
pub fn history(entries: &[pb::LedgerEntry]) -> Vec<HistoryRow> {
    entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(pb::ledger_entry::Body::Paystub(p)) => Some(p),
            _ => None,
        })
        .map(|p| HistoryRow {
            period: p.period.clone(),
            storage_byte_hours: p.storage_byte_hours,
            egress_bytes: p.egress_bytes,
            gross: p.gross,
            held: p.held,
            paid: p.paid,
            sent: entries
                .iter()
                .filter_map(|e| match &e.body {
                    Some(pb::ledger_entry::Body::Payment(x)) if x.period == p.period => {
                        Some(x.amount)
                    }
                    _ => None,
                })
                .fold(0u64, u64::saturating_add),
            wallet: p.wallet.clone(),
            disqualified: p.disqualified,
            exited: p.exited,
            held_returned: p.held_returned,
        })
        .collect()
}

/// The history table: one line per paystub, with what was paid for it.
pub fn history_table(entries: &[pb::LedgerEntry]) -> String {
    let mut out = format!(
        "{:<22} {:>14} {:>14} {:>12} {:>12} {:>12} {:>12}  {}\n",
        "PERIOD", "STORED (GB-h)", "EGRESS (GB)", "GROSS", "HELD", "PAID", "SENT", "ADDRESS"
    );
    for p in history(entries) {
        let note = if p.disqualified {
            " (disqualified: held amount forfeited)"
        } else if p.exited {
            " (graceful exit: held amount returned)"
        } else if p.held_returned > 0 {
            " (held amount partly returned)"
        } else {
            ""
        };
        out.push_str(&format!(
            "{:<22} {:>14.3} {:>14.3} {:>12} {:>12} {:>12} {:>12}  {}{}\n",
            p.period,
            p.storage_byte_hours as f64 / 1e9,
            p.egress_bytes as f64 / 1e9,
            amount(p.gross, 6),
            amount(p.held, 6),
            amount(p.paid, 6),
            amount(p.sent, 6),
            if p.wallet.is_empty() {
                "(none set)"
            } else {
                &p.wallet
            },
            note
        ));
    }
    out
}
