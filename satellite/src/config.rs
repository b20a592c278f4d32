//! Satellite configuration: `config.toml` in the satellite's directory,
//! every field documented with its default.

use std::net::SocketAddr;

use loam_common::erasure::RedundancyScheme;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address the QUIC endpoint binds. Default `0.0.0.0:7777`.
    pub listen: SocketAddr,
    /// Address put into access grants; empty means the bound address.
    /// Default empty.
    pub external_address: String,
    /// HTTP address for `/metrics` and `/health`. Default `127.0.0.1:10010`.
    pub http_listen: SocketAddr,
    /// Redundancy of new segments, `k/repair/success/total`.
    /// Default `29/35/80/110` (Storj's production scheme).
    pub redundancy: RedundancyScheme,
    /// Largest segment in bytes. Default 64 MiB.
    pub max_segment_size: u64,
    /// Objects up to this many (encrypted) bytes are stored inline in the
    /// satellite's metadata, with no pieces. Default 4096.
    pub max_inline_size: u64,
    /// Least proof-of-work difficulty (trailing zero bits of the node id)
    /// accepted at check-in: the price of each Sybil identity. Default 24
    /// (about 2^24 key pairs, a few minutes on a laptop; test networks use
    /// less).
    pub min_difficulty: u32,
    /// A node is online if it checked in within this many seconds.
    /// Default 14400 (4 h).
    pub online_window_secs: f64,
    /// At most one piece of a segment per /24 (IPv4) or /64 (IPv6) subnet.
    /// Default true.
    pub distinct_subnets: bool,
    /// Share of each upload's nodes that may be new (not yet vetted by
    /// `[audit] vetting_audits` passed audits). Default 0.05.
    pub new_node_fraction: f64,
    /// Seconds an order limit stays valid. Default 86400.
    pub order_expiration_secs: f64,
    /// Uploads not committed within this many seconds are abandoned: their
    /// metadata is deleted (their pieces become garbage). Default 86400.
    pub pending_expiration_secs: f64,
    /// Storage limit of new projects in bytes; 0 = unlimited. Default 0.
    pub default_storage_limit: u64,
    /// Monthly download (egress) limit of new projects in bytes; 0 =
    /// unlimited. Default 0.
    pub default_egress_limit: u64,
    /// Nodes running an older version (`MAJOR.MINOR.PATCH`) are told at
    /// check-in that they must update; their dashboard warns. Default
    /// empty (no minimum).
    pub minimum_node_version: String,
    /// Sync every metadata write to disk before answering, so that an
    /// acknowledged commit survives power loss, not only a crash of the
    /// process. Default true (test networks turn it off for speed).
    pub sync_writes: bool,
    /// The metadata database: empty for RocksDB in the data directory
    /// (`DIR/db`), or a `postgres://user@host:port/db` address that several
    /// satellite processes share. Default empty.
    pub database: String,
    /// Audits and reputation (`[audit]`): interval, beta-model parameters.
    pub audit: crate::audit::AuditConfig,
    /// Repair (`[repair]`): checker interval, segments per run.
    pub repair: crate::repair::RepairConfig,
    /// Garbage collection (`[gc]`): interval, filter false-positive rate.
    pub gc: crate::gc::GcConfig,
    /// Compute jobs (`[compute]`): verification share, tolerances, limits.
    pub compute: crate::compute::ComputeConfig,
    /// Order settlement (`[orders]`): window length, oldest window accepted.
    pub orders: crate::orders::OrdersConfig,
    /// Usage accounting (`[accounting]`): storage tally interval.
    pub accounting: crate::accounting::AccountingConfig,
    /// Payouts (`[payouts]`): period, rates, token decimals.
    pub payouts: crate::payouts::PayoutConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7777)),
            external_address: String::new(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 10010)),
            redundancy: RedundancyScheme::new(29, 35, 80, 110).expect("valid default scheme"),
            max_segment_size: 64 << 20,
            max_inline_size: 4096,
            min_difficulty: 24,
            online_window_secs: 14400.0,
            distinct_subnets: true,
            new_node_fraction: 0.05,
            order_expiration_secs: 86400.0,
            pending_expiration_secs: 86400.0,
            default_storage_limit: 0,
            default_egress_limit: 0,
            minimum_node_version: String::new(),
            sync_writes: true,
            database: String::new(),
            audit: Default::default(),
            repair: Default::default(),
            gc: Default::default(),
            compute: Default::default(),
            orders: Default::default(),
            accounting: Default::default(),
            payouts: Default::default(),
        }
    }
}

pub use loam_common::config::{ConfigError, DocumentedConfig};

impl DocumentedConfig for Config {
    const HEADER: &'static str = HEADER;
    const DOCS: &'static [(&'static str, &'static str)] = DOCS;
}

const HEADER: &str = "# Loam satellite configuration (docs/operators.md).\n\
# Every key is optional: a missing key takes its default. Any key can be\n\
# overridden by an environment variable LOAM_<KEY> (LOAM_<TABLE>__<KEY> for a\n\
# key of a table, e.g. LOAM_AUDIT__INTERVAL_SECS).\n\n";

/// One line per key of `config.toml`.
pub const DOCS: &[(&str, &str)] = &[
    ("listen", "UDP address the QUIC endpoint binds."),
    (
        "external_address",
        "Address put into access grants; empty means the bound address.",
    ),
    ("http_listen", "HTTP address for `/metrics` and `/health`."),
    (
        "redundancy",
        "Redundancy of new segments, `k/repair/success/total`.",
    ),
    ("max_segment_size", "Largest segment in bytes."),
    (
        "max_inline_size",
        "Objects up to this many (encrypted) bytes are stored inline in the satellite's metadata, with no pieces.",
    ),
    (
        "min_difficulty",
        "Least proof-of-work difficulty (trailing zero bits of the node id) accepted at check-in.",
    ),
    (
        "online_window_secs",
        "A node is online if it checked in within this many seconds.",
    ),
    (
        "distinct_subnets",
        "At most one piece of a segment per /24 (IPv4) or /64 (IPv6) subnet.",
    ),
    (
        "new_node_fraction",
        "Share of each upload's nodes that may be new (not yet vetted by `[audit] vetting_audits` passed audits).",
    ),
    (
        "order_expiration_secs",
        "Seconds an order limit stays valid.",
    ),
    (
        "pending_expiration_secs",
        "Uploads not committed within this many seconds are abandoned: their metadata is deleted (their pieces become garbage).",
    ),
    (
        "default_storage_limit",
        "Storage limit of new projects in bytes; 0 = unlimited.",
    ),
    (
        "default_egress_limit",
        "Monthly download (egress) limit of new projects in bytes; 0 = unlimited.",
    ),
    (
        "minimum_node_version",
        "Nodes running an older version (`MAJOR.MINOR.PATCH`) are told at check-in that they must update; their dashboard warns.",
    ),
    (
        "sync_writes",
        "Sync every metadata write before answering: acknowledged commits survive power loss.",
    ),
    (
        "database",
        "Metadata database: empty for RocksDB in DIR/db, or a postgres://user@host:port/db address several satellite processes share.",
    ),
    (
        "audit",
        "Audits and reputation (`[audit]`): interval, beta-model parameters.",
    ),
    (
        "repair",
        "Repair (`[repair]`): checker interval, segments per run.",
    ),
    (
        "gc",
        "Garbage collection (`[gc]`): interval, filter false-positive rate.",
    ),
    (
        "compute",
        "Compute jobs (`[compute]`): verification share, tolerances, limits.",
    ),
    (
        "orders",
        "Order settlement (`[orders]`): window length, oldest window accepted.",
    ),
    (
        "accounting",
        "Usage accounting (`[accounting]`): storage tally interval.",
    ),
    (
        "payouts",
        "Payouts (`[payouts]`): period, rates, token decimals.",
    ),
    ("audit.interval_secs", "Seconds between audit cycles."),
    ("audit.per_node", "Pieces audited per node per cycle."),
    ("audit.lambda", "Beta-model forgetting factor λ."),
    ("audit.weight", "Weight w of one audit."),
    (
        "audit.initial_alpha",
        "Initial α (a new node's benefit of the doubt).",
    ),
    (
        "audit.dq_threshold",
        "Disqualify at α/(α+β) at or below this.",
    ),
    (
        "audit.vetting_audits",
        "Audits passed before a node is vetted.",
    ),
    (
        "audit.max_reverifies",
        "Times a node that connects but does not answer is asked the same challenge again before the audit counts as failed.",
    ),
    (
        "audit.answer_timeout_secs",
        "Seconds a node has to answer an audit.",
    ),
    (
        "audit.unknown_lambda",
        "Forgetting factor of the unknown-audit score.",
    ),
    (
        "audit.suspend_threshold",
        "Suspend at an unknown-audit score below this.",
    ),
    (
        "audit.suspension_grace_secs",
        "Seconds a node may stay suspended for unknown audits before it is disqualified.",
    ),
    (
        "audit.online_interval_secs",
        "Seconds between online-tracking observations.",
    ),
    (
        "audit.online_lambda",
        "Forgetting factor of the online score, per observation.",
    ),
    (
        "audit.offline_threshold",
        "Suspend at an online score below this.",
    ),
    (
        "audit.online_min_observations",
        "Observations before the online score can suspend.",
    ),
    (
        "audit.offline_review_secs",
        "Seconds a node may stay suspended for being offline before it is disqualified.",
    ),
    (
        "repair.interval_secs",
        "Seconds between checker runs (each followed by repairs).",
    ),
    ("repair.max_per_run", "Most segments repaired per run."),
    (
        "gc.interval_secs",
        "Seconds between garbage-collection cycles.",
    ),
    (
        "gc.false_positive_rate",
        "False-positive rate of the filters (garbage that survives a cycle).",
    ),
    (
        "gc.margin_secs",
        "Pieces created less than this many seconds before a cycle starts are kept whatever the filter says (clock skew between satellite and nodes).",
    ),
    (
        "compute.verify_fraction",
        "Share of tasks re-executed by a second node each round, when the job does not say.",
    ),
    (
        "compute.tolerance",
        "Largest relative weight difference two runs of one task may have and still agree.",
    ),
    (
        "compute.gpu_tolerance",
        "The same for GPU jobs (--device gpu), whose kernels are not bit-reproducible.",
    ),
    (
        "compute.norm_factor",
        "An update whose norm is more than this many times the round's median is rejected.",
    ),
    (
        "compute.candidates",
        "Nodes a task's key is sealed to (the holder and the nodes that may rebuild).",
    ),
    (
        "compute.task_timeout_secs",
        "Seconds one task may run before it is given up.",
    ),
    ("compute.max_rounds", "Most rounds a job may ask for."),
    (
        "compute.listing_candidates",
        "Nodes a listing's row keys are sealed to per task at publish (they must last while the owner is away).",
    ),
    (
        "compute.max_drift_mib",
        "Most MiB of SCAFFOLD control variates a job may keep (one per task, each as large as the model).",
    ),
    (
        "orders.window_secs",
        "Length of a settlement window, in seconds.",
    ),
    (
        "orders.max_age_secs",
        "Windows older than this can no longer be settled.",
    ),
    (
        "orders.max_window_orders",
        "Most orders a node may send for one window (bounds a settlement's memory).",
    ),
    (
        "accounting.tally_interval_secs",
        "Seconds between storage tallies.",
    ),
    (
        "payouts.period_secs",
        "Length of a payout period in seconds; 0 means calendar months (UTC).",
    ),
    (
        "payouts.token_decimals",
        "Decimals of the payout token: amounts are in units of 10^-decimals.",
    ),
    (
        "payouts.storage_per_tb_month",
        "Base units per TB-month stored (720 hours).",
    ),
    (
        "payouts.egress_per_tb",
        "Base units per TB of download egress.",
    ),
    (
        "payouts.repair_audit_per_tb",
        "Base units per TB of repair and audit egress.",
    ),
    (
        "payouts.ingress_per_tb",
        "Base units per TB of ingress (uploads and repair uploads).",
    ),
    ("payouts.per_work_unit", "Base units per compute work unit."),
    (
        "payouts.settle_delay_secs",
        "Seconds after a period's end before its payouts can be computed, so the orders of its last windows have been settled.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_pinned() {
        let text = toml::to_string(&Config::default()).expect("serialize");
        assert_eq!(
            text,
            "listen = \"0.0.0.0:7777\"\nexternal_address = \"\"\nhttp_listen = \"127.0.0.1:10010\"\n\
             redundancy = \"29/35/80/110\"\nmax_segment_size = 67108864\nmax_inline_size = 4096\n\
             min_difficulty = 24\nonline_window_secs = 14400.0\ndistinct_subnets = true\nnew_node_fraction = 0.05\n\
             order_expiration_secs = 86400.0\npending_expiration_secs = 86400.0\n\
             default_storage_limit = 0\ndefault_egress_limit = 0\nminimum_node_version = \"\"\nsync_writes = true\ndatabase = \"\"\n\n\
             [audit]\ninterval_secs = 60.0\nper_node = 1\nlambda = 0.999\nweight = 1.0\n\
             initial_alpha = 1000.0\ndq_threshold = 0.96\nvetting_audits = 100\n\
             max_reverifies = 3\nanswer_timeout_secs = 30.0\nunknown_lambda = 0.95\n\
             suspend_threshold = 0.6\nsuspension_grace_secs = 604800.0\n\
             online_interval_secs = 300.0\nonline_lambda = 0.999\noffline_threshold = 0.6\n\
             online_min_observations = 100\noffline_review_secs = 2592000.0\n\n\
             [repair]\ninterval_secs = 300.0\nmax_per_run = 1000\n\n\
             [gc]\ninterval_secs = 3600.0\nfalse_positive_rate = 0.1\nmargin_secs = 3600.0\n\n\
             [compute]\nverify_fraction = 0.1\ntolerance = 0.00001\ngpu_tolerance = 0.001\nnorm_factor = 10.0\n\
             candidates = 6\ntask_timeout_secs = 600.0\nmax_rounds = 1000\n\
             listing_candidates = 10\nmax_drift_mib = 512\n\n\
             [orders]\nwindow_secs = 3600.0\nmax_age_secs = 172800.0\nmax_window_orders = 2000000\n\n\
             [accounting]\ntally_interval_secs = 3600.0\n\n\
             [payouts]\nperiod_secs = 0.0\ntoken_decimals = 6\nstorage_per_tb_month = 1500000\n\
             egress_per_tb = 20000000\nrepair_audit_per_tb = 10000000\ningress_per_tb = 0\n\
             per_work_unit = 1\nsettle_delay_secs = 86400.0\n"
        );
        assert_eq!(
            toml::from_str::<Config>("").expect("empty"),
            Config::default()
        );
    }

    #[test]
    fn written_config_explains_every_key_and_reads_back() {
        let c = Config {
            min_difficulty: 8,
            ..Default::default()
        };
        let text = c.documented().expect("toml");
        assert!(!text.contains("(undocumented)"), "{text}");
        assert!(
            text.contains("# Default: 24\nmin_difficulty = 8\n"),
            "{text}"
        );
        assert_eq!(toml::from_str::<Config>(&text).expect("parse"), c);
        let env = c
            .with_env([("LOAM_AUDIT__INTERVAL_SECS".to_string(), "5".to_string())])
            .expect("env");
        assert_eq!(env.audit.interval_secs, 5.0);
    }
}
