//! Storage node configuration: `config.toml` in the node's directory, every
//! field documented with its default, overridable by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Config {
    pub const FILE: &'static str = "config.toml";

    /// Loads `DIR/config.toml`, or the defaults when there is none.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join(Self::FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), ConfigError> {
        let path = dir.join(Self::FILE);
        let text = format!(
            "# Loam storage node configuration. Every key is optional; the\n\
             # comments in docs/operators.md list the defaults.\n{}",
            toml::to_string_pretty(self).expect("config serializes")
        );
        std::fs::write(&path, text).map_err(|source| ConfigError::Write { path, source })
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
             http_listen = \"127.0.0.1:14002\"\ncheckin_interval_secs = 300.0\n"
        );
        assert_eq!(
            toml::from_str::<Config>("").expect("empty"),
            Config::default()
        );
    }
}
