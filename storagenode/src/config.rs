//! Storage node configuration: `config.toml` in the node's directory, every
//! field documented with its default, overridable by command-line flags.

use std::net::SocketAddr;

use loam_common::NodeUrl;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address the QUIC endpoint binds. Default `0.0.0.0:28967`.
    pub listen: SocketAddr,
    /// Address announced to satellites; empty means the bound address.
    /// Default empty.
    pub external_address: String,
    /// Satellites this node trusts and checks in with, as `ID@HOST:PORT`.
    /// Default none.
    pub satellites: Vec<NodeUrl>,
    /// Bytes of disk this node offers. Default 1 TB.
    pub allocated_bytes: u64,
    /// fsync each piece before acknowledging it, so an acknowledged piece
    /// survives power loss, not only a process crash. Default true.
    pub sync_writes: bool,
    /// HTTP address for `/metrics` and `/health`. Default `127.0.0.1:14002`.
    pub http_listen: SocketAddr,
    /// Host names the dashboard answers to besides IP addresses and
    /// `localhost` (a reverse proxy, a DNS name of your own). Requests for
    /// any other name are refused, against DNS rebinding. Default none.
    pub dashboard_hosts: Vec<String>,
    /// Seconds between check-ins with each satellite. Default 300.
    pub checkin_interval_secs: f64,
    /// Pieces garbage-collected by a satellite stay in the trash this many
    /// seconds before they are deleted. Default 604800 (7 days).
    pub trash_grace_secs: f64,
    /// Where payouts go: an Ethereum-style address, `0x` and 40 hex
    /// digits, checked against its EIP-55 checksum. Default empty (no
    /// payouts until one is set).
    pub wallet: String,
    /// Seconds between order settlement rounds. Default 300.
    pub settle_interval_secs: f64,
    /// The operator's contact address, for the records of whoever runs
    /// this node. Default empty.
    pub email: String,
    /// Training tasks (`[compute]`): opt-in, capacity, backend.
    pub compute: crate::compute::ComputeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 28967)),
            external_address: String::new(),
            satellites: Vec::new(),
            allocated_bytes: 1_000_000_000_000,
            sync_writes: true,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 14002)),
            dashboard_hosts: Vec::new(),
            checkin_interval_secs: 300.0,
            trash_grace_secs: 604_800.0,
            wallet: String::new(),
            settle_interval_secs: 300.0,
            email: String::new(),
            compute: Default::default(),
        }
    }
}

pub use loam_common::config::{ConfigError, DocumentedConfig};

impl DocumentedConfig for Config {
    const HEADER: &'static str = HEADER;
    const DOCS: &'static [(&'static str, &'static str)] = DOCS;
}

const HEADER: &str = "# Loam storage node configuration (docs/operators.md).\n\
# Every key is optional: a missing key takes its default. Any key can be\n\
# overridden by an environment variable LOAM_<KEY> (LOAM_COMPUTE__<KEY> for\n\
# the [compute] table) or by the flag of the same name on `storagenode run`.\n\n";

/// One line (or a few) per key of `config.toml`.
pub const DOCS: &[(&str, &str)] = &[
    (
        "listen",
        "UDP address the QUIC endpoint binds (pieces, audits, training tasks).",
    ),
    (
        "external_address",
        "HOST:PORT satellites and uplinks use to reach this node; empty means the bound address.",
    ),
    (
        "satellites",
        "Satellites this node trusts and checks in with, as \"ID@HOST:PORT\".",
    ),
    (
        "allocated_bytes",
        "Bytes of disk offered to the network (must fit on the disk).",
    ),
    (
        "sync_writes",
        "fsync each piece before acknowledging it, so it survives power loss, not only a crash.",
    ),
    (
        "http_listen",
        "HTTP address of the dashboard (/), its JSON API (/api/sno), /health and /metrics.",
    ),
    (
        "dashboard_hosts",
        "Host names the dashboard answers to besides IP addresses and localhost (e.g. behind a proxy).",
    ),
    (
        "checkin_interval_secs",
        "Seconds between check-ins with each satellite.",
    ),
    (
        "trash_grace_secs",
        "Seconds garbage-collected pieces stay in the trash before they are deleted.",
    ),
    (
        "wallet",
        "Payout address: 0x and 40 hex digits, EIP-55 checksummed. Empty: no payouts.",
    ),
    (
        "settle_interval_secs",
        "Seconds between order settlement rounds (how bandwidth gets paid).",
    ),
    (
        "email",
        "The operator's contact address, for your own records.",
    ),
    (
        "compute",
        "Training tasks: whether this node offers its CPU or GPU, and how much.",
    ),
    (
        "compute.enabled",
        "Offer this node's CPU (or GPU) for training tasks.",
    ),
    ("compute.max_tasks", "Training tasks run at once."),
    (
        "compute.cores",
        "CPU cores announced to satellites; 0 means every core.",
    ),
    (
        "compute.gpus",
        "GPUs announced besides the adapter offered (only when one is offered).",
    ),
    (
        "compute.memory_mib",
        "Memory announced for training, in MiB; 0 means all physical memory.",
    ),
    (
        "compute.backend",
        "\"gpu\" offers the GPU a wgpu build finds to GPU jobs (setup sets it for a hardware one); \"cpu\" offers none.",
    ),
    (
        "compute.cache_mib",
        "Memory for parsed training records kept between rounds, in MiB.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_pinned() {
        // A change here changes every operator's defaults: make it deliberate.
        let text = toml::to_string(&Config::default()).expect("serialize");
        assert_eq!(
            text,
            "listen = \"0.0.0.0:28967\"\nexternal_address = \"\"\nsatellites = []\n\
             allocated_bytes = 1000000000000\nsync_writes = true\n\
             http_listen = \"127.0.0.1:14002\"\ndashboard_hosts = []\ncheckin_interval_secs = 300.0\n\
             trash_grace_secs = 604800.0\nwallet = \"\"\nsettle_interval_secs = 300.0\nemail = \"\"\n\n\
             [compute]\nenabled = true\nmax_tasks = 1\ncores = 0\ngpus = 0\nmemory_mib = 0\n\
             backend = \"cpu\"\ncache_mib = 512\n"
        );
        assert_eq!(
            toml::from_str::<Config>("").expect("empty"),
            Config::default()
        );
    }

    #[test]
    fn written_config_explains_every_key_and_reads_back() {
        let mut c = Config {
            wallet: "0x52908400098527886E0F7030069857D2E4169EE7".into(),
            ..Default::default()
        };
        c.compute.cores = 3;
        let text = c.documented().expect("toml");
        assert!(!text.contains("(undocumented)"), "{text}");
        assert!(text.contains("# Default: 1000000000000\nallocated_bytes = 1000000000000\n"));
        assert_eq!(toml::from_str::<Config>(&text).expect("parse"), c);
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = Config::default()
            .with_env([
                ("LOAM_ALLOCATED_BYTES".to_string(), "5000".to_string()),
                ("LOAM_COMPUTE__ENABLED".to_string(), "false".to_string()),
                ("LOAM_DIR".to_string(), "/ignored".to_string()),
            ])
            .expect("env");
        assert_eq!(c.allocated_bytes, 5000);
        assert!(!c.compute.enabled);
    }
}
