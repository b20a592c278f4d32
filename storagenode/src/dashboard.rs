//! The operator's dashboard: a JSON API (`/api/sno`, documented in
//! `docs/api.md`) and a page rendered from the same snapshot on the server
//! (`/`), refreshing itself, with every term explained.
//!
//! Every figure comes from the node's own records: used space and trash
//! from the database counters, bandwidth from the bytes it counted per
//! satellite, action and day, scores from what each satellite said at the
//! last check-in, payout history from the verified local ledgers.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use loam_common::orders::{PieceAction, now_ms};
use loam_common::size::format_bytes;
use loam_common::{NodeId, pb, time};
use serde::Serialize;

use crate::contact::{Contact, SatelliteStanding};
use crate::piecestore::Piecestore;

/// Share of the allocation free under which the disk counts as nearly full.
const NEARLY_FULL: f64 = 0.05;
/// How close to the disqualification threshold the audit score may come
/// before the dashboard warns.
const DQ_MARGIN: f64 = 0.02;

pub struct Dashboard {
    contact: Arc<Contact>,
    piecestore: Arc<Piecestore>,
    dir: PathBuf,
    node_id: NodeId,
    wallet: String,
    address: String,
    started_ms: i64,
}

/// Everything the dashboard shows, as `/api/sno` returns it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub node_id: String,
    pub version: String,
    pub address: String,
    pub wallet: String,
    pub started_unix_ms: i64,
    pub uptime_secs: i64,
    pub now_unix_ms: i64,
    pub disk: Disk,
    pub bandwidth: Bandwidth,
    pub satellites: Vec<Satellite>,
    pub earnings: Earnings,
    pub compute: Compute,
    pub notifications: Vec<Notification>,
    /// The node at a glance: online and reachable per its satellites.
    pub headline: Headline,
    /// The satellite the bandwidth and charts are for (`?satellite=ID`;
    /// None: all of them).
    pub selected_satellite: Option<String>,
    /// Each day of this month so far (UTC), oldest first.
    pub daily: Vec<DayUsage>,
}

/// Whether the node is doing its job, in one line.
#[derive(Debug, Clone, Serialize)]
pub struct Headline {
    /// Checked in recently with at least one satellite, and none has it
    /// offline.
    pub online: bool,
    /// Every satellite that checked the node could dial it back (None: no
    /// satellite has checked yet).
    pub reachable: Option<bool>,
    pub text: String,
}

/// One day's traffic (for the selected satellite) and disk use.
#[derive(Debug, Clone, Serialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD`.
    pub date: String,
    pub ingress_bytes: u64,
    pub egress_bytes: u64,
    /// Repair traffic both ways.
    pub repair_bytes: u64,
    pub audit_bytes: u64,
    /// Most space used that day, as noted by the node (None: not running
    /// that day).
    pub disk_used_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub allocated_bytes: u64,
    pub used_bytes: u64,
    pub trash_bytes: u64,
    /// Allocation left: allocated − used − trash.
    pub free_bytes: u64,
    pub pieces: u64,
    /// Free space of the file system holding the pieces (None if unknown).
    pub filesystem_free_bytes: Option<u64>,
}

/// Bytes moved this calendar month (UTC), all satellites together.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bandwidth {
    pub month: String,
    /// Downloads served to uplinks (GET).
    pub egress_bytes: u64,
    /// Uploads received (PUT).
    pub ingress_bytes: u64,
    /// Pieces sent to repair (GET_REPAIR).
    pub repair_egress_bytes: u64,
    /// Repaired pieces received (PUT_REPAIR).
    pub repair_ingress_bytes: u64,
    /// Audit answers (GET_AUDIT).
    pub audit_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Satellite {
    pub id: String,
    pub url: String,
    /// `good`, `not checked in`, `offline`, `suspended`, `disqualified`.
    pub status: String,
    pub last_check_in_unix_ms: Option<i64>,
    pub audit_score: Option<f64>,
    pub audit_threshold: Option<f64>,
    pub suspension_score: Option<f64>,
    pub suspension_threshold: Option<f64>,
    pub online_score: Option<f64>,
    pub online_threshold: Option<f64>,
    pub vetted: bool,
    pub audits: u64,
    pub audits_failed: u64,
    pub suspended_unix_ms: Option<i64>,
    pub offline_suspended_unix_ms: Option<i64>,
    pub disqualified_unix_ms: Option<i64>,
    /// Whether the satellite could dial this node back over QUIC at its
    /// advertised address at the last check-in (None: not checked in).
    pub quic_reachable: Option<bool>,
    /// The source address the satellite saw the last check-in come from.
    pub observed_address: Option<String>,
    pub bandwidth: Bandwidth,
}

#[derive(Debug, Clone, Serialize)]
pub struct Earnings {
    pub month: String,
    /// Decimals of the payout token (base units per token = 10^decimals).
    pub decimals: u32,
    /// Estimate for this month so far, before any held-back share, in base
    /// units: egress, repair and audit traffic at each satellite's rates,
    /// plus storage assuming today's used space was held all month so far.
    pub estimate_base_units: u64,
    pub estimate: String,
    pub storage_base_units: u64,
    pub egress_base_units: u64,
    pub repair_audit_base_units: u64,
    /// Paystubs from the verified local ledgers, newest first.
    pub payouts: Vec<PayoutLine>,
    /// Why the history could not be read, if it could not.
    pub ledger_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PayoutLine {
    pub satellite: String,
    pub period: String,
    pub storage_byte_hours: u64,
    pub egress_bytes: u64,
    pub gross: String,
    pub held: String,
    pub paid: String,
    /// Sent by a recorded payment run.
    pub sent: String,
    pub wallet: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Compute {
    pub enabled: bool,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub gpus: u32,
    pub max_tasks: u32,
    pub tasks_ok: u64,
    pub tasks_failed: u64,
    pub work_units: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Notification {
    /// `critical`, `warning` or `info`.
    pub level: &'static str,
    pub title: String,
    /// What happened and what to do, in plain words.
    pub message: String,
}

impl Dashboard {
    pub fn new(
        contact: Arc<Contact>,
        piecestore: Arc<Piecestore>,
        dir: PathBuf,
        wallet: String,
        address: String,
    ) -> Self {
        Self {
            node_id: piecestore.identity().id(),
            contact,
            piecestore,
            dir,
            wallet,
            address,
            started_ms: now_ms(),
        }
    }

    /// `/` (the page) and `/api/sno` (its figures).
    pub fn router(self: Arc<Self>) -> Router {
        let api = self.clone();
        Router::new()
            .route(
                "/api/sno",
                get(move |uri: axum::http::Uri| {
                    let d = api.clone();
                    async move { d.respond(&uri, |s| json_response(&s)).await }
                }),
            )
            .route(
                "/",
                get(move |uri: axum::http::Uri| {
                    let d = self.clone();
                    async move { d.respond(&uri, |s| html_response(render(&s))).await }
                }),
            )
    }

    async fn respond(
        self: Arc<Self>,
        uri: &axum::http::Uri,
        f: impl FnOnce(Snapshot) -> Response,
    ) -> Response {
        let selected = uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("satellite="))
                .filter(|v| {
                    !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric())
                })
                .map(str::to_string)
        });
        match tokio::task::spawn_blocking(move || self.snapshot_for(now_ms(), selected.as_deref()))
            .await
        {
            Ok(s) => f(s),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }

    /// The dashboard's figures at `now`. Reads the database and the ledger
    /// files: call it off the async threads.
    pub fn snapshot(&self, now: i64) -> Snapshot {
        self.snapshot_for(now, None)
    }

    /// [`Dashboard::snapshot`] with bandwidth and charts for one satellite
    /// (by id or a prefix of it; unknown ids select all).
    pub fn snapshot_for(&self, now: i64, satellite: Option<&str>) -> Snapshot {
        let usage = self.piecestore.db().usage();
        let today = now.div_euclid(86_400_000);
        if let Err(e) = self.piecestore.db().note_disk_day(today, usage.used_bytes) {
            tracing::warn!(error = %e, "noting the day's disk use failed");
        }
        let allocated = self.piecestore.allocated_bytes();
        let disk = Disk {
            allocated_bytes: allocated,
            used_bytes: usage.used_bytes,
            trash_bytes: usage.trash_bytes,
            free_bytes: self.piecestore.free_bytes(),
            pieces: usage.pieces,
            filesystem_free_bytes: crate::preflight::free_space(&self.dir).ok(),
        };
        let month = time::month_of(now);
        let (month_start, _) = time::month_range(&month).unwrap_or((now, now));
        let (from_day, to_day) = (
            month_start.div_euclid(86_400_000),
            now.div_euclid(86_400_000) + 1,
        );
        let standings = self.contact.standings();
        let mut total = Bandwidth {
            month: month.clone(),
            ..Default::default()
        };
        let mut satellites = Vec::new();
        let selected = satellite.and_then(|want| {
            self.contact
                .satellites()
                .iter()
                .find(|s| s.id.to_string().starts_with(want))
                .map(|s| s.id)
        });
        let mut selected_total = Bandwidth {
            month: month.clone(),
            ..Default::default()
        };
        let (mut egress_units, mut repair_units, mut storage_units) = (0u64, 0u64, 0u64);
        let mut decimals = 6;
        let held_hours = (now - month_start.max(self.started_ms.min(now))).max(0) as f64 / 3.6e6;
        for (i, sat) in self.contact.satellites().iter().enumerate() {
            let bw = self.bandwidth(&sat.id, &month, from_day, to_day);
            total.add(&bw);
            if selected.is_none_or(|id| id == sat.id) {
                selected_total.add(&bw);
            }
            let standing = standings.get(&sat.id);
            if let Some(rates) = standing.and_then(|s| s.rates.as_ref()) {
                decimals = rates.token_decimals;
                egress_units += per_tb(bw.egress_bytes, rates.egress_per_tb);
                repair_units += per_tb(
                    bw.repair_egress_bytes + bw.audit_bytes,
                    rates.repair_audit_per_tb,
                );
                // The node keeps one used-space counter; storage is counted
                // once, at the first satellite's rate.
                if i == 0 {
                    let tb_months = usage.used_bytes as f64 / 1e12 * held_hours / 720.0;
                    storage_units = (tb_months * rates.storage_per_tb_month as f64) as u64;
                }
            }
            satellites.push(satellite_view(
                sat,
                standing,
                self.contact.stale_after_ms(),
                now,
                bw,
            ));
        }
        let estimate = egress_units + repair_units + storage_units;
        let daily = self.daily(from_day, to_day, selected.as_ref());
        let (payouts, ledger_error) = self.payout_history();
        let caps = self.contact.capabilities();
        let stats = self.piecestore.db().compute_stats().unwrap_or_default();
        let mut snapshot = Snapshot {
            node_id: self.node_id.to_string(),
            version: loam_common::VERSION.to_string(),
            address: self.address.clone(),
            wallet: self.wallet.clone(),
            started_unix_ms: self.started_ms,
            uptime_secs: (now - self.started_ms).max(0) / 1000,
            now_unix_ms: now,
            disk,
            bandwidth: if selected.is_some() {
                selected_total
            } else {
                total
            },
            satellites,
            earnings: Earnings {
                month,
                decimals,
                estimate_base_units: estimate,
                estimate: crate::payouts::amount(estimate, decimals),
                storage_base_units: storage_units,
                egress_base_units: egress_units,
                repair_audit_base_units: repair_units,
                payouts,
                ledger_error,
            },
            compute: Compute {
                enabled: caps.compute_enabled,
                cpu_cores: caps.cpu_cores,
                memory_bytes: caps.memory_bytes,
                gpus: caps.gpus,
                max_tasks: caps.max_tasks,
                tasks_ok: stats.tasks_ok,
                tasks_failed: stats.tasks_failed,
                work_units: stats.work_units,
            },
            notifications: Vec::new(),
            headline: Headline {
                online: false,
                reachable: None,
                text: String::new(),
            },
            selected_satellite: selected.map(|id| id.to_string()),
            daily,
        };
        snapshot.notifications = notifications(&snapshot, &standings);
        snapshot.headline = headline(&snapshot.satellites);
        snapshot
    }

    /// Each day of `[from_day, to_day)`: traffic with `satellite` (all
    /// when None) and the disk use noted.
    fn daily(&self, from_day: i64, to_day: i64, satellite: Option<&NodeId>) -> Vec<DayUsage> {
        let db = self.piecestore.db();
        let sats: Vec<NodeId> = self
            .contact
            .satellites()
            .iter()
            .map(|s| s.id)
            .filter(|id| satellite.is_none_or(|want| want == id))
            .collect();
        let disk = db.disk_days(from_day, to_day).unwrap_or_default();
        (from_day..to_day)
            .enumerate()
            .map(|(i, day)| {
                let get = |action| {
                    sats.iter()
                        .map(|s| db.bandwidth(s, action, day, day + 1).unwrap_or(0))
                        .fold(0u64, u64::saturating_add)
                };
                let (y, m, d) = time::civil_from_days(day);
                DayUsage {
                    date: format!("{y:04}-{m:02}-{d:02}"),
                    ingress_bytes: get(PieceAction::Put),
                    egress_bytes: get(PieceAction::Get),
                    repair_bytes: get(PieceAction::GetRepair)
                        .saturating_add(get(PieceAction::PutRepair)),
                    audit_bytes: get(PieceAction::GetAudit),
                    disk_used_bytes: disk.get(i).copied().flatten(),
                }
            })
            .collect()
    }

    fn bandwidth(&self, sat: &NodeId, month: &str, from_day: i64, to_day: i64) -> Bandwidth {
        let db = self.piecestore.db();
        let get = |action| db.bandwidth(sat, action, from_day, to_day).unwrap_or(0);
        let mut bw = Bandwidth {
            month: month.to_string(),
            egress_bytes: get(PieceAction::Get),
            ingress_bytes: get(PieceAction::Put),
            repair_egress_bytes: get(PieceAction::GetRepair),
            repair_ingress_bytes: get(PieceAction::PutRepair),
            audit_bytes: get(PieceAction::GetAudit),
            total_bytes: 0,
        };
        bw.total_bytes = bw.egress_bytes
            + bw.ingress_bytes
            + bw.repair_egress_bytes
            + bw.repair_ingress_bytes
            + bw.audit_bytes;
        bw
    }

    fn payout_history(&self) -> (Vec<PayoutLine>, Option<String>) {
        let mut lines = Vec::new();
        let mut errors = Vec::new();
        for sat in self.contact.satellites() {
            let entries = match crate::payouts::read(&self.dir, &sat.id) {
                Ok(None) => continue,
                Ok(Some(file)) => match file.verify(&self.node_id) {
                    Ok(entries) => entries,
                    Err(e) => {
                        errors.push(format!("satellite {}: {e}", sat.id.short()));
                        continue;
                    }
                },
                Err(e) => {
                    errors.push(format!("satellite {}: {e:#}", sat.id.short()));
                    continue;
                }
            };
            let mut sent: HashMap<String, u64> = HashMap::new();
            for e in &entries {
                if let Some(pb::ledger_entry::Body::Payment(p)) = &e.body {
                    *sent.entry(p.period.clone()).or_default() += p.amount;
                }
            }
            for e in &entries {
                let Some(pb::ledger_entry::Body::Paystub(p)) = &e.body else {
                    continue;
                };
                lines.push(PayoutLine {
                    satellite: sat.id.to_string(),
                    period: p.period.clone(),
                    storage_byte_hours: p.storage_byte_hours,
                    egress_bytes: p.egress_bytes,
                    gross: crate::payouts::amount(p.gross, 6),
                    held: crate::payouts::amount(p.held, 6),
                    paid: crate::payouts::amount(p.paid, 6),
                    sent: crate::payouts::amount(sent.get(&p.period).copied().unwrap_or(0), 6),
                    wallet: p.wallet.clone(),
                });
            }
        }
        lines.reverse();
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        (lines, error)
    }
}

impl Bandwidth {
    fn add(&mut self, o: &Bandwidth) {
        self.egress_bytes += o.egress_bytes;
        self.ingress_bytes += o.ingress_bytes;
        self.repair_egress_bytes += o.repair_egress_bytes;
        self.repair_ingress_bytes += o.repair_ingress_bytes;
        self.audit_bytes += o.audit_bytes;
        self.total_bytes += o.total_bytes;
    }
}

/// `bytes` at `rate` base units per TB, rounded down.
fn per_tb(bytes: u64, rate: u64) -> u64 {
    (u128::from(bytes) * u128::from(rate) / 1_000_000_000_000) as u64
}

fn satellite_view(
    sat: &loam_common::NodeUrl,
    standing: Option<&SatelliteStanding>,
    stale_after_ms: i64,
    now: i64,
    bandwidth: Bandwidth,
) -> Satellite {
    let st = standing.and_then(|s| s.standing.as_ref());
    let when = |ms: i64| (ms > 0).then_some(ms);
    let status = match (standing, st) {
        (None, _) => "not checked in",
        (Some(_), Some(st)) if st.disqualified_unix_ms > 0 => "disqualified",
        (Some(_), Some(st)) if st.suspended_unix_ms > 0 || st.offline_suspended_unix_ms > 0 => {
            "suspended"
        }
        (Some(s), _) if now - s.last_check_in_ms > stale_after_ms => "offline",
        _ => "good",
    };
    Satellite {
        id: sat.id.to_string(),
        url: sat.to_string(),
        status: status.to_string(),
        last_check_in_unix_ms: standing.map(|s| s.last_check_in_ms),
        audit_score: st.map(|s| s.audit_score),
        audit_threshold: st.map(|s| s.dq_threshold),
        suspension_score: st.map(|s| s.unknown_score),
        suspension_threshold: st.map(|s| s.suspend_threshold),
        online_score: st.map(|s| s.online_score),
        online_threshold: st.map(|s| s.offline_threshold),
        vetted: st.is_some_and(|s| s.vetted),
        audits: st.map_or(0, |s| s.audits),
        audits_failed: st.map_or(0, |s| s.audits_failed),
        suspended_unix_ms: st.and_then(|s| when(s.suspended_unix_ms)),
        offline_suspended_unix_ms: st.and_then(|s| when(s.offline_suspended_unix_ms)),
        disqualified_unix_ms: st.and_then(|s| when(s.disqualified_unix_ms)),
        quic_reachable: standing.map(|s| s.reachable),
        observed_address: standing
            .map(|s| s.observed_address.clone())
            .filter(|a| !a.is_empty()),
        bandwidth,
    }
}

/// `MAJOR.MINOR.PATCH` as numbers, for comparisons (None if malformed).
fn version_tuple(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.trim().split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

fn older(v: &str, than: &str) -> bool {
    matches!((version_tuple(v), version_tuple(than)), (Some(a), Some(b)) if a < b)
}

/// What the operator should know now, most urgent first.
fn notifications(
    s: &Snapshot,
    standings: &HashMap<NodeId, SatelliteStanding>,
) -> Vec<Notification> {
    let mut out = Vec::new();
    let mut push = |level, title: String, message: String| {
        out.push(Notification {
            level,
            title,
            message,
        })
    };
    for sat in &s.satellites {
        let name = sat.id.get(..8).unwrap_or(&sat.id);
        match sat.status.as_str() {
            "disqualified" => push(
                "critical",
                format!("Disqualified by satellite {name}"),
                format!(
                    "The audit score fell to {:.3}, at or below the threshold {:.2}: the node lost or \
                     corrupted data it was paid to keep. This satellite sends no more data or \
                     payouts and the held-back amount is forfeited. It cannot be undone; a node \
                     with a new identity and a healthy disk has to start again.",
                    sat.audit_score.unwrap_or(0.0),
                    sat.audit_threshold.unwrap_or(0.0)
                ),
            ),
            "suspended" if sat.suspended_unix_ms.is_some() => push(
                "critical",
                format!("Suspended by satellite {name} for audit errors"),
                format!(
                    "The node answered audits with errors instead of data (suspension score {:.3}, \
                     threshold {:.2}). It gets no new data until the score recovers, and is \
                     disqualified if it does not recover within the grace period. Check the node's \
                     log for I/O errors and that the storage directory is mounted and readable.",
                    sat.suspension_score.unwrap_or(0.0),
                    sat.suspension_threshold.unwrap_or(0.0)
                ),
            ),
            "suspended" => push(
                "critical",
                format!("Suspended by satellite {name} for downtime"),
                format!(
                    "The node was offline too often (online score {:.3}, threshold {:.2}). It gets \
                     no new data until it stays online long enough for the score to recover. Keep \
                     it running and reachable at its address.",
                    sat.online_score.unwrap_or(0.0),
                    sat.online_threshold.unwrap_or(0.0)
                ),
            ),
            "offline" => push(
                "warning",
                format!("Cannot reach satellite {name}"),
                format!(
                    "The last successful check-in was {} s ago. The satellite may count the node as \
                     offline. Check the network, the firewall and the satellite address {}.",
                    (s.now_unix_ms - sat.last_check_in_unix_ms.unwrap_or(0)) / 1000,
                    sat.url
                ),
            ),
            "not checked in" => push(
                "warning",
                format!("Not checked in with satellite {name} yet"),
                "The node has not reached this satellite since it started. If this lasts more \
                 than a few minutes, check the satellite address in config.toml and the network."
                    .to_string(),
            ),
            _ => {}
        }
        if sat.quic_reachable == Some(false) {
            push(
                "critical",
                format!("Satellite {name} cannot reach this node"),
                format!(
                    "The satellite could not open a QUIC connection back to the address this node \
                     advertises (its check-in came from {}). It sends no new data until it can: \
                     forward the UDP port to this machine or set external_address in config.toml.",
                    sat.observed_address
                        .as_deref()
                        .unwrap_or("an unknown address")
                ),
            );
        }
        if sat.status != "disqualified"
            && let (Some(score), Some(threshold)) = (sat.audit_score, sat.audit_threshold)
            && score < threshold + DQ_MARGIN
        {
            push(
                "critical",
                format!("Disqualification risk on satellite {name}"),
                format!(
                    "The audit score is {score:.3}; at {threshold:.2} the node is disqualified for \
                     good. Every further failed audit brings it closer. Make sure no piece files \
                     were deleted or altered and the disk has no errors."
                ),
            );
        } else if sat.audits_failed > 0 && sat.status != "disqualified" {
            push(
                "warning",
                format!("{} failed audit(s) on satellite {name}", sat.audits_failed),
                format!(
                    "The satellite asked for a piece this node should hold and got a wrong or no \
                     answer. The audit score is {:.3} (disqualification at {:.2}). One failure is \
                     survivable; more mean data is being lost: check the disk.",
                    sat.audit_score.unwrap_or(1.0),
                    sat.audit_threshold.unwrap_or(0.0)
                ),
            );
        }
    }
    let d = &s.disk;
    if d.allocated_bytes > 0 && (d.free_bytes as f64) < d.allocated_bytes as f64 * NEARLY_FULL {
        push(
            "warning",
            "Allocated space nearly full".to_string(),
            format!(
                "{} of the {} allocated are free. The node is offered no new uploads once it is \
                 full. Raise allocated_bytes in config.toml if the disk has room.",
                format_bytes(d.free_bytes),
                format_bytes(d.allocated_bytes)
            ),
        );
    }
    let allocation_left = d
        .allocated_bytes
        .saturating_sub(d.used_bytes)
        .saturating_sub(d.trash_bytes);
    if let Some(fs_free) = d.filesystem_free_bytes
        && fs_free < allocation_left
    {
        push(
            "warning",
            "Disk has less room than the allocation promises".to_string(),
            format!(
                "The file system has {} free, less than the {} still allocated to the network. \
                 Uploads will fail once the disk is full: free space on the disk or lower \
                 allocated_bytes in config.toml.",
                format_bytes(fs_free),
                format_bytes(allocation_left)
            ),
        );
    }
    for (id, st) in standings {
        let name = id.short();
        if !st.minimum_version.is_empty() && older(&s.version, &st.minimum_version) {
            push(
                "critical",
                "Node software out of date".to_string(),
                format!(
                    "Satellite {name} requires version {} or newer; this node runs {}. Update the \
                     storagenode binary and restart it.",
                    st.minimum_version, s.version
                ),
            );
        } else if !st.suggested_version.is_empty() && older(&s.version, &st.suggested_version) {
            push(
                "info",
                "A newer node version is available".to_string(),
                format!(
                    "Satellite {name} runs version {}; this node runs {}. Update when convenient.",
                    st.suggested_version, s.version
                ),
            );
        }
    }
    if s.wallet.is_empty() {
        push(
            "warning",
            "No payout address".to_string(),
            "Set `wallet` in config.toml to an Ethereum-style address (0x…, EIP-55 \
             checksummed) and restart; until then earnings cannot be paid out."
                .to_string(),
        );
    }
    if let Some(e) = &s.earnings.ledger_error {
        push(
            "warning",
            "Payout ledger does not verify".to_string(),
            format!("{e}. Run `storagenode payouts verify` for details."),
        );
    }
    out.sort_by_key(|n| match n.level {
        "critical" => 0,
        "warning" => 1,
        _ => 2,
    });
    out
}

/// Online: some satellite has the node checked in and none has it
/// offline. Reachable: every satellite that dialled back got through.
fn headline(sats: &[Satellite]) -> Headline {
    let checked: Vec<&Satellite> = sats
        .iter()
        .filter(|s| s.last_check_in_unix_ms.is_some())
        .collect();
    let online = !checked.is_empty() && sats.iter().all(|s| s.status != "offline");
    let dialled: Vec<bool> = sats.iter().filter_map(|s| s.quic_reachable).collect();
    let reachable = (!dialled.is_empty()).then(|| dialled.iter().all(|r| *r));
    let text = match (online, reachable) {
        (true, Some(true)) => format!(
            "Online and reachable: {} of {} satellites in contact",
            checked.len(),
            sats.len()
        ),
        (true, Some(false)) => {
            "Online, but not reachable: a satellite could not dial this node back; check the \
             port forwarding and the advertised address"
                .to_string()
        }
        (true, None) => "Online; reachability not checked yet".to_string(),
        (false, _) if checked.is_empty() => "Not yet in contact with any satellite".to_string(),
        (false, _) => "Offline: a satellite has not heard from this node recently".to_string(),
    };
    Headline {
        online,
        reachable,
        text,
    }
}

/// An amount in base units as money: `$1.234567` with the token's
/// decimals, the same way everywhere on the page.
fn money(base_units: u64, decimals: u32) -> String {
    format!("${}", escape(&crate::payouts::amount(base_units, decimals)))
}

/// A bar chart of `values` (one per day) as inline SVG: no script, no
/// external file. Each bar has a title with its day and value.
fn bar_chart(
    id: &str,
    title: &str,
    days: &[DayUsage],
    values: &[Option<u64>],
    color: &str,
) -> String {
    const W: f64 = 640.0;
    const H: f64 = 120.0;
    let max = values.iter().flatten().copied().max().unwrap_or(0).max(1);
    let n = days.len().max(1) as f64;
    let slot = W / n;
    let mut svg = format!(
        "<figure id=\"{id}\"><figcaption>{title} (peak {peak})</figcaption>\
         <svg viewBox=\"0 0 {W} {h2}\" width=\"100%\" role=\"img\" aria-label=\"{title}\">\
         <line x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\" stroke=\"#999\"/>",
        title = escape(title),
        peak = format_bytes(max),
        h2 = H + 16.0,
    );
    for (i, (day, v)) in days.iter().zip(values).enumerate() {
        let x = i as f64 * slot;
        if let Some(v) = v {
            let h = (*v as f64 / max as f64 * (H - 4.0)).max(if *v > 0 { 1.0 } else { 0.0 });
            let _ = write!(
                svg,
                "<rect class=\"day\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" \
                 fill=\"{color}\"><title>{date}: {value}</title></rect>",
                y = H - h,
                w = (slot * 0.8).max(1.0),
                date = escape(&day.date),
                value = format_bytes(*v),
            );
        }
        // The first day, every 5th and the last are labelled.
        if i == 0 || i + 1 == days.len() || (i + 1) % 5 == 0 {
            let _ = write!(
                svg,
                "<text x=\"{x:.1}\" y=\"{ty}\" font-size=\"10\" fill=\"#555\">{d}</text>",
                ty = H + 12.0,
                d = escape(day.date.get(8..).unwrap_or(&day.date)),
            );
        }
    }
    svg.push_str("</svg></figure>");
    svg
}

fn json_response(s: &Snapshot) -> Response {
    match serde_json::to_string_pretty(s) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn html_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// The terms the page uses, explained once; each term on the page carries
/// its explanation as a tooltip too.
pub const GLOSSARY: &[(&str, &str)] = &[
    (
        "Allocated",
        "Disk space you offered to the network in config.toml (allocated_bytes).",
    ),
    (
        "Used",
        "Bytes of pieces this node stores, from its database.",
    ),
    (
        "Trash",
        "Pieces a satellite no longer needs (garbage collection). They stay for a grace period in case of a mistake, then are deleted; they count against the allocation until then.",
    ),
    (
        "Free",
        "Allocation left for new pieces: allocated − used − trash.",
    ),
    (
        "Piece",
        "One erasure-coded, encrypted fragment of a segment of someone's file. The node cannot read it.",
    ),
    (
        "Egress",
        "Bytes sent to customers downloading data (GET). Paid.",
    ),
    (
        "Ingress",
        "Bytes received from customers uploading data (PUT). Free.",
    ),
    (
        "Repair egress",
        "Bytes sent to a satellite's repairer rebuilding lost pieces elsewhere (GET_REPAIR). Paid at the repair rate.",
    ),
    (
        "Repair ingress",
        "Rebuilt pieces received from a repairer (PUT_REPAIR). Free.",
    ),
    (
        "Audit",
        "A satellite's check that the node still holds a piece: it asks for a random part of it with a proof. Audit traffic is paid at the repair rate.",
    ),
    (
        "Audit score",
        "How reliably the node passed audits (1 is perfect). At or below the threshold the node is disqualified for good.",
    ),
    (
        "Suspension score",
        "How often audits got an answer that was neither data nor a clear failure (errors, time-outs). Below the threshold the node is suspended: no new data until it recovers.",
    ),
    (
        "Online score",
        "Share of recent time the satellite could reach the node. Below the threshold the node is suspended for downtime.",
    ),
    (
        "Vetted",
        "A new node gets a small share of uploads until it passed enough audits; then it is vetted and gets its full share.",
    ),
    (
        "QUIC reachable",
        "Whether the satellite could connect back to this node at its advertised address at the last check-in. A node it cannot reach gets no new data.",
    ),
    (
        "Suspended",
        "The satellite sends no new data or tasks, but the node keeps what it has and is still audited. It lifts when the score recovers.",
    ),
    (
        "Disqualified",
        "Permanent: the satellite sends nothing more, its pieces count as lost and the held-back amount is forfeited.",
    ),
    (
        "Held back",
        "Part of a new node's earnings kept as insurance: 75 % in months 1-3, 50 % in 4-6, 25 % in 7-9, none after. Half is returned in month 15, all of it on a graceful exit.",
    ),
    (
        "Estimate",
        "What this month has earned so far at the satellites' rates, before the held-back share: traffic counted by the node plus storage at today's used space.",
    ),
    (
        "Paystub",
        "A satellite's signed statement of what the node earned in a period, in the node's hash-chained ledger.",
    ),
    (
        "Work unit",
        "About a billion multiply-adds of training: 3 × model parameters × samples / 10⁹. Paid per unit, so slow hardware earns the same per unit of work.",
    ),
];

fn tip(term: &str) -> String {
    let text = GLOSSARY
        .iter()
        .find(|(t, _)| *t == term)
        .map_or("", |(_, d)| *d);
    format!("<abbr title=\"{}\">{}</abbr>", escape(text), escape(term))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A figure: shown human-readable, its exact value and its JSON path in
/// data attributes (the browser test compares them with `/api/sno`).
fn bytes_field(path: &str, v: u64) -> String {
    format!(
        "<span class=\"fig\" data-field=\"{path}\" data-value=\"{v}\">{}</span>",
        format_bytes(v)
    )
}

fn num_field(path: &str, v: impl std::fmt::Display, shown: String) -> String {
    format!("<span class=\"fig\" data-field=\"{path}\" data-value=\"{v}\">{shown}</span>")
}

fn score_field(path: &str, v: Option<f64>) -> String {
    match v {
        Some(v) => num_field(path, v, format!("{:.2} %", v * 100.0)),
        None => "<span class=\"muted\">–</span>".to_string(),
    }
}

fn ago(now: i64, ms: Option<i64>) -> String {
    match ms {
        None => "never".to_string(),
        Some(ms) => {
            let s = (now - ms).max(0) / 1000;
            match s {
                0..60 => format!("{s} s ago"),
                60..3600 => format!("{} min ago", s / 60),
                _ => format!("{} h ago", s / 3600),
            }
        }
    }
}

/// The page, rendered from one snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"30\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Loam node {short}</title><style>{STYLE}</style></head><body>\
         <header><h1>Loam storage node</h1><p class=\"muted\">node <code>{id}</code> · \
         version {version} · up {up} · refreshes every 30 s · figures as JSON at \
         <a href=\"/api/sno\">/api/sno</a></p></header>",
        short = escape(s.node_id.get(..8).unwrap_or(&s.node_id)),
        id = escape(&s.node_id),
        version = escape(&s.version),
        up = uptime(s.uptime_secs),
    );
    let hl = &s.headline;
    let _ = write!(
        h,
        "<p id=\"headline\" class=\"headline {cls}\"><strong>{text}</strong></p>",
        cls = match (hl.online, hl.reachable) {
            (true, Some(true)) => "good",
            (true, _) => "warn",
            (false, _) => "bad",
        },
        text = escape(&hl.text),
    );
    // The satellite selector: bandwidth and charts for one, or all.
    h.push_str("<nav id=\"satellite-selector\">Satellite: ");
    let all_cls = if s.selected_satellite.is_none() {
        " class=\"selected\""
    } else {
        ""
    };
    let _ = write!(h, "<a href=\"/\"{all_cls}>all</a>");
    for sat in &s.satellites {
        let cls = if s.selected_satellite.as_deref() == Some(sat.id.as_str()) {
            " class=\"selected\""
        } else {
            ""
        };
        let _ = write!(
            h,
            " · <a href=\"/?satellite={id}\"{cls} title=\"{url}\">{short}</a>",
            id = escape(&sat.id),
            url = escape(&sat.url),
            short = escape(sat.id.get(..12).unwrap_or(&sat.id)),
        );
    }
    h.push_str("</nav>");
    h.push_str("<section id=\"notifications\"><h2>Notifications</h2>");
    if s.notifications.is_empty() {
        h.push_str("<p class=\"ok\">All good: nothing needs your attention.</p>");
    }
    for n in &s.notifications {
        let _ = write!(
            h,
            "<div class=\"note {level}\"><strong>{title}</strong><p>{msg}</p></div>",
            level = n.level,
            title = escape(&n.title),
            msg = escape(&n.message)
        );
    }
    h.push_str("</section>");

    let d = &s.disk;
    let pct = |v: u64| {
        if d.allocated_bytes == 0 {
            0.0
        } else {
            (v as f64 / d.allocated_bytes as f64 * 100.0).min(100.0)
        }
    };
    let _ = write!(
        h,
        "<section id=\"disk\"><h2>Disk</h2>\
         <div class=\"bar\"><span class=\"used\" style=\"width:{u:.2}%\"></span>\
         <span class=\"trash\" style=\"width:{t:.2}%\"></span></div>\
         <table><tr><th>{}</th><td>{}</td></tr><tr><th>{}</th><td>{}</td></tr>\
         <tr><th>{}</th><td>{}</td></tr><tr><th>{}</th><td>{}</td></tr>\
         <tr><th>{}s stored</th><td>{}</td></tr>",
        tip("Allocated"),
        bytes_field("disk.allocated_bytes", d.allocated_bytes),
        tip("Used"),
        bytes_field("disk.used_bytes", d.used_bytes),
        tip("Trash"),
        bytes_field("disk.trash_bytes", d.trash_bytes),
        tip("Free"),
        bytes_field("disk.free_bytes", d.free_bytes),
        tip("Piece"),
        num_field("disk.pieces", d.pieces, d.pieces.to_string()),
        u = pct(d.used_bytes),
        t = pct(d.trash_bytes),
    );
    if let Some(f) = d.filesystem_free_bytes {
        let _ = write!(
            h,
            "<tr><th>Free on the disk itself</th><td>{}</td></tr>",
            bytes_field("disk.filesystem_free_bytes", f)
        );
    }
    h.push_str("</table></section>");

    let b = &s.bandwidth;
    let _ = write!(
        h,
        "<section id=\"bandwidth\"><h2>Bandwidth this month ({month}{whose})</h2><table>\
         <tr><th>{}</th><td>{}</td></tr><tr><th>{}</th><td>{}</td></tr>\
         <tr><th>{}</th><td>{}</td></tr><tr><th>{}</th><td>{}</td></tr>\
         <tr><th>{} traffic</th><td>{}</td></tr><tr><th>Total</th><td>{}</td></tr></table></section>",
        tip("Egress"),
        bytes_field("bandwidth.egress_bytes", b.egress_bytes),
        tip("Ingress"),
        bytes_field("bandwidth.ingress_bytes", b.ingress_bytes),
        tip("Repair egress"),
        bytes_field("bandwidth.repair_egress_bytes", b.repair_egress_bytes),
        tip("Repair ingress"),
        bytes_field("bandwidth.repair_ingress_bytes", b.repair_ingress_bytes),
        tip("Audit"),
        bytes_field("bandwidth.audit_bytes", b.audit_bytes),
        bytes_field("bandwidth.total_bytes", b.total_bytes),
        month = escape(&b.month),
        whose = s
            .selected_satellite
            .as_ref()
            .map_or(String::new(), |id| format!(
                ", satellite {}",
                escape(id.get(..12).unwrap_or(id))
            )),
    );
    let traffic: Vec<Option<u64>> = s
        .daily
        .iter()
        .map(|d| {
            Some(
                d.ingress_bytes
                    .saturating_add(d.egress_bytes)
                    .saturating_add(d.repair_bytes)
                    .saturating_add(d.audit_bytes),
            )
        })
        .collect();
    let disk: Vec<Option<u64>> = s.daily.iter().map(|d| d.disk_used_bytes).collect();
    let whose = match &s.selected_satellite {
        Some(id) => format!("satellite {}", id.get(..12).unwrap_or(id)),
        None => "all satellites".to_string(),
    };
    let _ = write!(
        h,
        "<section id=\"daily\"><h2>This month, day by day (UTC)</h2>{}{}</section>",
        bar_chart(
            "bandwidth-chart",
            &format!("Bandwidth per day, {whose}"),
            &s.daily,
            &traffic,
            "#2f6f9f"
        ),
        bar_chart(
            "disk-chart",
            "Disk used per day",
            &s.daily,
            &disk,
            "#3c8d3c"
        ),
    );

    let _ = write!(
        h,
        "<section id=\"satellites\"><h2>Satellites</h2><table class=\"wide\"><tr><th>Satellite</th>\
         <th>Status</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>Audits (failed)</th>\
         <th>{}</th><th>Last check-in</th></tr>",
        tip("Audit score"),
        tip("Suspension score"),
        tip("Online score"),
        tip("Vetted"),
        tip("QUIC reachable"),
    );
    for (i, sat) in s.satellites.iter().enumerate() {
        let threshold = |v: Option<f64>| {
            v.map_or(String::new(), |t| {
                format!(
                    "<br><small class=\"muted\">limit {:.0} %</small>",
                    t * 100.0
                )
            })
        };
        let _ = write!(
            h,
            "<tr><td><code title=\"{url}\">{short}</code></td><td class=\"st-{cls}\">{status}</td>\
             <td>{a}{at}</td><td>{su}{st}</td><td>{o}{ot}</td><td>{vetted}</td>\
             <td>{audits} ({failed})</td><td>{reach}</td><td>{last}</td></tr>",
            url = escape(&sat.url),
            short = escape(sat.id.get(..12).unwrap_or(&sat.id)),
            cls = sat.status.replace(' ', "-"),
            status = escape(&sat.status),
            a = score_field(&format!("satellites.{i}.audit_score"), sat.audit_score),
            at = threshold(sat.audit_threshold),
            su = score_field(
                &format!("satellites.{i}.suspension_score"),
                sat.suspension_score
            ),
            st = threshold(sat.suspension_threshold),
            o = score_field(&format!("satellites.{i}.online_score"), sat.online_score),
            ot = threshold(sat.online_threshold),
            vetted = if sat.vetted { "yes" } else { "not yet" },
            reach = match sat.quic_reachable {
                Some(true) => "yes",
                Some(false) => "<strong>no</strong>",
                None => "-",
            },
            audits = num_field(
                &format!("satellites.{i}.audits"),
                sat.audits,
                sat.audits.to_string()
            ),
            failed = num_field(
                &format!("satellites.{i}.audits_failed"),
                sat.audits_failed,
                sat.audits_failed.to_string()
            ),
            last = ago(s.now_unix_ms, sat.last_check_in_unix_ms),
        );
    }
    h.push_str("</table></section>");

    let e = &s.earnings;
    let _ = write!(
        h,
        "<section id=\"earnings\"><h2>Earnings</h2><p>{} for {}: <strong>{}</strong> \
         <span class=\"muted\">(storage {}, egress {}, repair and audit {}; before the {} share)</span></p>",
        tip("Estimate"),
        escape(&e.month),
        num_field(
            "earnings.estimate_base_units",
            e.estimate_base_units,
            money(e.estimate_base_units, e.decimals)
        ),
        money(e.storage_base_units, e.decimals),
        money(e.egress_base_units, e.decimals),
        money(e.repair_audit_base_units, e.decimals),
        tip("Held back"),
    );
    if e.payouts.is_empty() {
        h.push_str(
            "<p class=\"muted\">No paystubs yet: satellites pay per period once it has ended.</p>",
        );
    } else {
        let _ = write!(
            h,
            "<table class=\"wide\"><tr><th>Period</th><th>Satellite</th><th>Stored (GB-h)</th>\
             <th>Egress</th><th>Gross</th><th>{}</th><th>Paid</th><th>Sent</th><th>Address</th></tr>",
            tip("Held back")
        );
        for p in &e.payouts {
            let _ = write!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td>{:.3}</td><td>{}</td><td>${}</td>\
                 <td>${}</td><td>${}</td><td>${}</td><td><code>{}</code></td></tr>",
                escape(&p.period),
                escape(p.satellite.get(..8).unwrap_or(&p.satellite)),
                p.storage_byte_hours as f64 / 1e9,
                format_bytes(p.egress_bytes),
                escape(&p.gross),
                escape(&p.held),
                escape(&p.paid),
                escape(&p.sent),
                escape(if p.wallet.is_empty() {
                    "(none)"
                } else {
                    &p.wallet
                }),
            );
        }
        h.push_str("</table>");
    }
    let _ = write!(
        h,
        "<p class=\"muted\">Payout address: <code>{}</code></p></section>",
        escape(if s.wallet.is_empty() {
            "none set"
        } else {
            &s.wallet
        })
    );

    let c = &s.compute;
    let _ = write!(
        h,
        "<section id=\"compute\"><h2>Compute</h2><table>\
         <tr><th>Offered</th><td>{}</td></tr><tr><th>Tasks run</th><td>{}</td></tr>\
         <tr><th>Tasks failed</th><td>{}</td></tr><tr><th>{}s</th><td>{}</td></tr></table></section>",
        if c.enabled {
            format!(
                "{} cores, {} memory, {} GPU(s), up to {} task(s) at once",
                c.cpu_cores,
                format_bytes(c.memory_bytes),
                c.gpus,
                c.max_tasks
            )
        } else {
            "no (compute is off in config.toml)".to_string()
        },
        num_field("compute.tasks_ok", c.tasks_ok, c.tasks_ok.to_string()),
        num_field(
            "compute.tasks_failed",
            c.tasks_failed,
            c.tasks_failed.to_string()
        ),
        tip("Work unit"),
        num_field(
            "compute.work_units",
            c.work_units,
            format!("{:.4}", c.work_units)
        ),
    );

    h.push_str("<section id=\"glossary\"><h2>Glossary</h2><dl>");
    for (term, text) in GLOSSARY {
        let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", escape(term), escape(text));
    }
    h.push_str("</dl></section></body></html>");
    h
}

fn uptime(secs: i64) -> String {
    match secs {
        0..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;\
padding:0 1em;color:#222}h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}\
table{border-collapse:collapse}th,td{text-align:left;padding:.25em .8em .25em 0;vertical-align:top}\
table.wide{width:100%}.muted{color:#777}.ok{color:#176317}abbr{text-decoration:underline dotted;\
cursor:help}.note{border-left:4px solid #999;padding:.3em .8em;margin:.5em 0;background:#f7f7f7}\
.note p{margin:.3em 0}.note.critical{border-color:#c0392b;background:#fdecea}\
.note.warning{border-color:#e67e22;background:#fff4e5}.note.info{border-color:#2980b9}\
.bar{height:14px;background:#e8f0e8;border:1px solid #ccc;display:flex;margin:.5em 0}\
.bar .used{background:#3c8d3c}.bar .trash{background:#c9a227}.st-good{color:#176317}\
.st-suspended,.st-disqualified,.st-offline{color:#c0392b;font-weight:bold}dt{font-weight:bold}\
dd{margin:0 0 .6em 1.2em}.headline{font-size:1.2em;padding:.4em .8em;border-radius:4px}\
.headline.good{background:#e6f4e6;color:#176317}.headline.warn{background:#fff4e5;color:#8a4b00}\
.headline.bad{background:#fdecea;color:#c0392b}nav a.selected{font-weight:bold}\
figure{margin:.5em 0 1em}figcaption{color:#555}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(older("0.9.0", "0.10.0"));
        assert!(!older("0.10.0", "0.10.0"));
        assert!(!older("garbage", "0.1.0"));
    }

    #[test]
    fn per_tb_rounds_down_exactly() {
        assert_eq!(per_tb(500_000_000_000, 20_000_000), 10_000_000);
        assert_eq!(per_tb(1, 20_000_000), 0);
    }

    fn satellite(status: &str, audit: f64, failed: u64) -> Satellite {
        Satellite {
            id: "3s854jBUvjzJ".into(),
            url: "3s854jBUvjzJ@127.0.0.1:7777".into(),
            status: status.into(),
            last_check_in_unix_ms: Some(0),
            audit_score: Some(audit),
            audit_threshold: Some(0.96),
            suspension_score: Some(0.5),
            suspension_threshold: Some(0.6),
            online_score: Some(1.0),
            online_threshold: Some(0.6),
            vetted: true,
            audits: 100,
            audits_failed: failed,
            suspended_unix_ms: (status == "suspended").then_some(1),
            offline_suspended_unix_ms: None,
            disqualified_unix_ms: (status == "disqualified").then_some(1),
            quic_reachable: Some(true),
            observed_address: Some("127.0.0.1:40000".into()),
            bandwidth: Bandwidth::default(),
        }
    }

    fn titles(
        s: &Snapshot,
        standings: &HashMap<NodeId, SatelliteStanding>,
    ) -> Vec<(String, &'static str)> {
        notifications(s, standings)
            .into_iter()
            .map(|n| (n.title, n.level))
            .collect()
    }

    #[test]
    fn notifications_explain_what_needs_attention() {
        let mut s = empty_snapshot();
        s.wallet = "0x52908400098527886E0F7030069857D2E4169EE7".into();
        s.disk.filesystem_free_bytes = None;
        assert!(titles(&s, &HashMap::new()).is_empty(), "a healthy node");

        s.satellites = vec![satellite("good", 0.99, 2)];
        let t = titles(&s, &HashMap::new());
        assert_eq!(
            t,
            vec![(
                "2 failed audit(s) on satellite 3s854jBU".to_string(),
                "warning"
            )]
        );

        s.satellites = vec![satellite("suspended", 0.97, 3)];
        let t = titles(&s, &HashMap::new());
        assert_eq!(
            t[0],
            (
                "Suspended by satellite 3s854jBU for audit errors".to_string(),
                "critical"
            )
        );
        assert!(
            t.iter()
                .any(|(t, _)| t.starts_with("Disqualification risk")),
            "{t:?}"
        );

        s.satellites = vec![satellite("disqualified", 0.9, 40)];
        let t = titles(&s, &HashMap::new());
        assert_eq!(
            t,
            vec![("Disqualified by satellite 3s854jBU".to_string(), "critical")]
        );

        s.satellites.clear();
        s.disk.free_bytes = 10;
        s.wallet.clear();
        let mut standings = HashMap::new();
        standings.insert(
            loam_common::Identity::generate(0, |_| {}).id(),
            SatelliteStanding {
                minimum_version: "99.0.0".into(),
                ..Default::default()
            },
        );
        let t: Vec<String> = titles(&s, &standings).into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            t,
            vec![
                "Node software out of date",
                "Allocated space nearly full",
                "No payout address"
            ]
        );
    }

    fn empty_snapshot() -> Snapshot {
        Snapshot {
            node_id: "node".into(),
            version: "0.1.0".into(),
            address: String::new(),
            wallet: String::new(),
            started_unix_ms: 0,
            uptime_secs: 0,
            now_unix_ms: 0,
            disk: Disk {
                allocated_bytes: 1000,
                used_bytes: 0,
                trash_bytes: 0,
                free_bytes: 1000,
                pieces: 0,
                filesystem_free_bytes: Some(1_000_000),
            },
            bandwidth: Bandwidth::default(),
            satellites: Vec::new(),
            earnings: Earnings {
                month: "2026-12".into(),
                decimals: 6,
                estimate_base_units: 0,
                estimate: "0.000000".into(),
                storage_base_units: 0,
                egress_base_units: 0,
                repair_audit_base_units: 0,
                payouts: Vec::new(),
                ledger_error: None,
            },
            compute: Compute {
                enabled: false,
                cpu_cores: 0,
                memory_bytes: 0,
                gpus: 0,
                max_tasks: 0,
                tasks_ok: 0,
                tasks_failed: 0,
                work_units: 0.0,
            },
            notifications: Vec::new(),
            headline: Headline {
                online: false,
                reachable: None,
                text: String::new(),
            },
            selected_satellite: None,
            daily: Vec::new(),
        }
    }

    #[test]
    fn page_escapes_and_explains_every_term() {
        let mut snapshot = empty_snapshot();
        snapshot.node_id = "<script>".into();
        snapshot.wallet = "\"quoted\"".into();
        snapshot.disk.used_bytes = 990;
        let page = render(&snapshot);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("data-field=\"disk.used_bytes\" data-value=\"990\""));
        for (term, _) in GLOSSARY {
            assert!(
                page.contains(&format!("<dt>{}</dt>", escape(term))),
                "{term}"
            );
        }
    }

    #[test]
    fn the_headline_says_online_and_reachable_in_one_line() {
        let mut good = satellite("good", 1.0, 0);
        good.quic_reachable = Some(true);
        let h = headline(std::slice::from_ref(&good));
        assert!(h.online && h.reachable == Some(true), "{h:?}");
        assert!(h.text.starts_with("Online and reachable"), "{}", h.text);
        let mut unreachable = good.clone();
        unreachable.quic_reachable = Some(false);
        let h = headline(&[good.clone(), unreachable]);
        assert_eq!(h.reachable, Some(false));
        assert!(h.text.contains("port forwarding"), "{}", h.text);
        let offline = satellite("offline", 1.0, 0);
        assert!(!headline(&[good, offline]).online);
        let mut never = satellite("not checked in", 1.0, 0);
        never.last_check_in_unix_ms = None;
        assert!(headline(&[never]).text.contains("Not yet in contact"));
    }

    #[test]
    fn charts_are_drawn_on_the_page_and_money_reads_alike() {
        let mut s = empty_snapshot();
        s.daily = (1..=3)
            .map(|d| DayUsage {
                date: format!("2026-12-{d:02}"),
                ingress_bytes: d * 1_000_000,
                egress_bytes: 0,
                repair_bytes: 0,
                audit_bytes: 0,
                disk_used_bytes: (d != 2).then_some(d * 5_000_000),
            })
            .collect();
        s.earnings.storage_base_units = 1_500_000;
        let page = render(&s);
        for id in [
            "headline",
            "satellite-selector",
            "bandwidth-chart",
            "disk-chart",
        ] {
            assert!(page.contains(&format!("id=\"{id}\"")), "{id}");
        }
        // Three traffic bars, the tallest the third; a day without a
        // disk figure draws no disk bar.
        let chart = |id: &str| {
            let at = page.find(&format!("id=\"{id}\"")).expect("chart");
            let end = page[at..].find("</figure>").expect("end") + at;
            page[at..end].to_string()
        };
        assert_eq!(chart("bandwidth-chart").matches("<rect").count(), 3);
        assert!(chart("bandwidth-chart").contains("2026-12-03: 3.00 MB"));
        assert_eq!(chart("disk-chart").matches("<rect").count(), 2);
        assert!(!page.contains("<script"), "no script");
        assert!(
            page.contains("(storage $1.5"),
            "money with its sign: {page}"
        );
    }
}
