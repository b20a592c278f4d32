//! Storage node configuration: `config.toml` in the node's directory, every
//! field documented with its default, overridable by command-line flags.

use std::net::SocketAddr;
use std::path::Path;

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
            checkin_interval_secs: 300.0,
            trash_grace_secs: 604_800.0,
            wallet: String::new(),
            settle_interval_secs: 300.0,
            compute: Default::default(),
        }
    }
}

pub use loam_common::config::ConfigError;

impl Config {
    pub const FILE: &'static str = "config.toml";

    /// Loads `DIR/config.toml`, or the defaults when there is none.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        loam_common::config::load_toml(dir, Self::FILE)
    }

    pub fn save(&self, dir: &Path) -> Result<(), ConfigError> {
        loam_common::config::save_toml(
            self,
            dir,
            Self::FILE,
            "# Loam storage node configuration. Every key is optional; docs/operators.md\n# lists the defaults.\n",
        )
    }
}

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
             http_listen = \"127.0.0.1:14002\"\ncheckin_interval_secs = 300.0\n\
             trash_grace_secs = 604800.0\nwallet = \"\"\nsettle_interval_secs = 300.0\n\n\
             [compute]\nenabled = true\nmax_tasks = 1\ncores = 0\ngpus = 0\n\
             backend = \"cpu\"\ncache_mib = 512\n"
        );
        assert_eq!(
            toml::from_str::<Config>("").expect("empty"),
            Config::default()
        );
    }
}
