//! Helpers shared by the daemons' configuration and run files: TOML config
//! files with documented defaults, and JSON files written atomically.

use std::path::{Path, PathBuf};

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

/// Loads `dir/file`, or the defaults when there is none.
pub fn load_toml<T: serde::de::DeserializeOwned + Default>(
    dir: &Path,
    file: &str,
) -> Result<T, ConfigError> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(ConfigError::Read { path, source }),
    }
}

/// Writes `value` to `dir/file` as TOML under a comment header.
pub fn save_toml<T: serde::Serialize>(
    value: &T,
    dir: &Path,
    file: &str,
    header: &str,
) -> Result<(), ConfigError> {
    let path = dir.join(file);
    let body = toml::to_string_pretty(value).map_err(|e| ConfigError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&path, format!("{header}{body}"))
        .map_err(|source| ConfigError::Write { path, source })
}

/// Writes `value` as JSON to `path` through a temporary file and a rename,
/// so a reader never sees half a file.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(value)?)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}
