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
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
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

/// A daemon's configuration file: TOML in its data directory, written with
/// every key explained next to its default, read back with missing keys
/// defaulted, and overridable by `LOAM_` environment variables.
pub trait DocumentedConfig: serde::Serialize + serde::de::DeserializeOwned + Default {
    /// The file's name inside the data directory.
    const FILE: &'static str = "config.toml";
    /// Comment lines at the top of the file.
    const HEADER: &'static str;
    /// One text per dotted key (`audit.interval_secs`), for the comments.
    const DOCS: &'static [(&'static str, &'static str)];

    /// Loads `DIR/FILE`, or the defaults when there is none.
    fn load(dir: &Path) -> Result<Self, ConfigError> {
        load_toml(dir, Self::FILE)
    }

    /// Writes `DIR/FILE` as [`DocumentedConfig::documented`] gives it.
    fn save(&self, dir: &Path) -> Result<(), ConfigError> {
        let path = dir.join(Self::FILE);
        let text = self.documented().map_err(|e| ConfigError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&path, text).map_err(|source| ConfigError::Write { path, source })
    }

    /// The file's text: see [`documented_toml`].
    fn documented(&self) -> Result<String, toml::ser::Error> {
        documented_toml(self, &Self::default(), Self::HEADER, Self::DOCS)
    }

    /// This configuration with `LOAM_*` variables applied (see
    /// [`apply_env`]). A `LOAM_*` variable that names no key and is none
    /// of [`COMMAND_LINE_VARS`] is most likely misspelled: it is reported
    /// in a warning, with the closest name when one is close.
    fn with_env(
        &self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (config, unknown) = apply_env_reporting(self, "LOAM_", vars)?;
        for var in unknown
            .iter()
            .filter(|v| !COMMAND_LINE_VARS.contains(&v.as_str()))
        {
            match closest_var(self, "LOAM_", var) {
                Some(near) => tracing::warn!(
                    "environment variable {var} names no setting and is ignored; did you mean \
                     {near}?"
                ),
                None => tracing::warn!(
                    "environment variable {var} names no setting and is ignored (settings: \
                     the keys of {} upper-cased, LOAM_TABLE__KEY for tables)",
                    Self::FILE
                ),
            }
        }
        Ok(config)
    }
}

/// `LOAM_*` variables read by the command lines rather than the
/// configuration files.
pub const COMMAND_LINE_VARS: &[&str] = &[
    "LOAM_DIR",
    "LOAM_SATELLITE",
    "LOAM_WALLET",
    "LOAM_PASSPHRASE",
    "LOAM_LOG_FORMAT",
    "LOAM_TEST_IN_NAMESPACE",
];

/// Every variable name a configuration accepts: `PREFIX` + dotted key
/// upper-cased with `__` between a table and its key.
pub fn env_var_names<T: serde::Serialize>(value: &T, prefix: &str) -> Vec<String> {
    fn walk(t: &toml::Table, path: &str, out: &mut Vec<String>) {
        for (k, v) in t {
            let name = format!("{path}{}", k.to_ascii_uppercase());
            match v {
                toml::Value::Table(sub) => walk(sub, &format!("{name}__"), out),
                _ => out.push(name),
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(t) = to_table(value) {
        walk(&t, prefix, &mut out);
    }
    out.extend(COMMAND_LINE_VARS.iter().map(|v| v.to_string()));
    out
}

/// The accepted name nearest to `var`, if it is a plausible misspelling.
fn closest_var<T: serde::Serialize>(value: &T, prefix: &str, var: &str) -> Option<String> {
    env_var_names(value, prefix)
        .into_iter()
        .map(|n| (strsim::damerau_levenshtein(&n, var), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 6))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// `value` as TOML with every key preceded by its documentation and its
/// default (`docs` maps dotted keys, `compute.cores`, to one-line texts);
/// tables come after the top-level keys, as TOML requires.
pub fn documented_toml<T: serde::Serialize>(
    value: &T,
    defaults: &T,
    header: &str,
    docs: &[(&str, &str)],
) -> Result<String, toml::ser::Error> {
    let table = to_table(value)?;
    let defaults = to_table(defaults)?;
    let mut out = header.to_string();
    write_documented(&mut out, "", &table, &defaults, docs);
    Ok(out)
}

fn to_table<T: serde::Serialize>(value: &T) -> Result<toml::Table, toml::ser::Error> {
    use serde::ser::Error as _;
    match toml::Value::try_from(value)? {
        toml::Value::Table(t) => Ok(t),
        _ => Err(toml::ser::Error::custom("a configuration must be a table")),
    }
}

fn write_documented(
    out: &mut String,
    prefix: &str,
    table: &toml::Table,
    defaults: &toml::Table,
    docs: &[(&str, &str)],
) {
    let empty = toml::Table::new();
    for (key, value) in table.iter().filter(|(_, v)| !v.is_table()) {
        let path = format!("{prefix}{key}");
        let doc = docs
            .iter()
            .find(|(k, _)| *k == path)
            .map_or("(undocumented)", |(_, d)| *d);
        for line in doc.lines() {
            out.push_str(&format!("# {line}\n"));
        }
        if let Some(d) = defaults.get(key) {
            out.push_str(&format!("# Default: {d}\n"));
        }
        out.push_str(&format!("{key} = {value}\n\n"));
    }
    for (key, value) in table.iter() {
        let toml::Value::Table(sub) = value else {
            continue;
        };
        let path = format!("{prefix}{key}");
        if let Some((_, doc)) = docs.iter().find(|(k, _)| *k == path) {
            for line in doc.lines() {
                out.push_str(&format!("# {line}\n"));
            }
        }
        out.push_str(&format!("[{path}]\n"));
        let sub_defaults = match defaults.get(key) {
            Some(toml::Value::Table(t)) => t,
            _ => &empty,
        };
        write_documented(out, &format!("{path}."), sub, sub_defaults, docs);
    }
}

/// Applies `PREFIX<KEY>` environment variables to a configuration: the
/// key upper-cased (`LOAM_ALLOCATED_BYTES` sets `allocated_bytes`), `__`
/// between a table and its key (`LOAM_COMPUTE__MAX_TASKS`). Values are
/// TOML (`true`, `12`, `"x"`) or a bare string; lists take commas.
/// Variables naming no key are ignored (they may be for the command line).
pub fn apply_env<T: serde::Serialize + serde::de::DeserializeOwned>(
    value: &T,
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    apply_env_reporting(value, prefix, vars).map(|(v, _)| v)
}

/// [`apply_env`], also returning the `PREFIX*` variables that named no key
/// (sorted).
pub fn apply_env_reporting<T: serde::Serialize + serde::de::DeserializeOwned>(
    value: &T,
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(T, Vec<String>), ConfigError> {
    let env_err = |var: &str, message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    let mut table = to_table(value).map_err(|e| env_err(prefix, e.to_string()))?;
    let mut applied = Vec::new();
    let mut unknown = Vec::new();
    for (var, raw) in vars {
        let Some(name) = var.strip_prefix(prefix) else {
            continue;
        };
        let path: Vec<String> = name
            .to_ascii_lowercase()
            .split("__")
            .map(str::to_string)
            .collect();
        let Some((last, parents)) = path.split_last() else {
            unknown.push(var);
            continue;
        };
        let Some(t) = table_at(&mut table, parents) else {
            unknown.push(var);
            continue;
        };
        let Some(current) = t.get(last).filter(|v| !v.is_table()).cloned() else {
            unknown.push(var);
            continue;
        };
        let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut v| v.remove("v"));
        let new = match (parsed, &current) {
            (Some(v), _) => v,
            (None, toml::Value::Array(_)) => toml::Value::Array(
                raw.split(',')
                    .map(|s| toml::Value::String(s.trim().to_string()))
                    .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
                    .collect(),
            ),
            (None, _) => toml::Value::String(raw.clone()),
        };
        t.insert(last.clone(), new);
        applied.push(var);
    }
    unknown.sort();
    let value = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            env_err(
                &applied.join(", "),
                format!("not a valid value: {}", e.message()),
            )
        })?;
    Ok((value, unknown))
}

fn table_at<'a>(t: &'a mut toml::Table, path: &[String]) -> Option<&'a mut toml::Table> {
    match path.split_first() {
        None => Some(t),
        Some((p, rest)) => match t.get_mut(p) {
            Some(toml::Value::Table(sub)) => table_at(sub, rest),
            _ => None,
        },
    }
}

/// Writes `value` as JSON to `path` through a temporary file and a rename,
/// so a reader never sees half a file.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(value)?)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file(path, bytes, 0o644)
}

/// Writes a secret (a private key, an access grant) to `path`: the file is
/// created readable by its owner only from the first byte (no window
/// between create and chmod), fsynced, renamed into place, and the rename
/// made durable by syncing the directory.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file(path, bytes, 0o600)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    // Each writer gets its own temporary name, created afresh (never a
    // leftover with looser permissions): two processes writing the same
    // file (a node's chore and its operator's CLI) must not remove or
    // rename each other's half-written copy. The last rename wins whole.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (tmp, mut file) = loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.{n}.tmp", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        match options.open(&tmp) {
            Ok(file) => break (std::path::PathBuf::from(tmp), file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, path)
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(&parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn private_files_are_owner_only_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("secret");
        // A stale temporary file with loose permissions under the name the
        // next write would pick is not reused.
        std::fs::create_dir_all(dir.path().join("sub")).expect("dir");
        for n in 0..64 {
            let tmp = dir
                .path()
                .join("sub")
                .join(format!("secret.{}.{n}.tmp", std::process::id()));
            std::fs::write(&tmp, "old").expect("stale");
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        }
        write_private(&path, b"key").expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert_eq!(std::fs::read(&path).expect("read"), b"key");
    }

    /// Two writers of one file (a node's chore and the operator's CLI) never
    /// fail each other, and the file is always one writer's whole content.
    #[test]
    fn concurrent_writers_of_one_file_all_succeed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(path, &[t; 4096]).expect("no writer fails another");
                    }
                });
            }
        });
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|b| *b == bytes[0]), "torn file");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("ledger")],
            "temporaries left"
        );
    }

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Inner {
        cores: u32,
    }

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Conf {
        name: String,
        size: u64,
        list: Vec<String>,
        inner: Inner,
    }

    #[test]
    fn documented_toml_round_trips_with_every_key_explained() {
        let c = Conf {
            name: "x".into(),
            size: 5,
            list: vec!["a".into()],
            inner: Inner { cores: 2 },
        };
        let docs = [
            ("name", "The name."),
            ("size", "Bytes."),
            ("list", "Things."),
            ("inner", "The inner table."),
            ("inner.cores", "Cores."),
        ];
        let text = documented_toml(&c, &Conf::default(), "# head\n", &docs).expect("toml");
        assert!(text.starts_with("# head\n# The name.\n# Default: \"\"\nname = \"x\"\n"));
        assert!(text.contains("[inner]\n# Cores.\n# Default: 0\ncores = 2\n"));
        assert!(!text.contains("undocumented"));
        assert_eq!(toml::from_str::<Conf>(&text).expect("parse"), c);
    }

    #[test]
    fn environment_overrides_keys_and_rejects_bad_values() {
        let vars = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let c = apply_env(
            &Conf::default(),
            "LOAM_",
            vars(&[
                ("LOAM_NAME", "node one"),
                ("LOAM_SIZE", "42"),
                ("LOAM_LIST", "a, b"),
                ("LOAM_INNER__CORES", "3"),
                ("LOAM_DIR", "/ignored"),
                ("OTHER", "x"),
            ]),
        )
        .expect("applied");
        assert_eq!(
            c,
            Conf {
                name: "node one".into(),
                size: 42,
                list: vec!["a".into(), "b".into()],
                inner: Inner { cores: 3 },
            }
        );
        let err = apply_env(&Conf::default(), "LOAM_", vars(&[("LOAM_SIZE", "lots")]))
            .expect_err("not a number");
        assert!(err.to_string().contains("LOAM_SIZE"), "{err}");
    }

    #[test]
    fn misspelled_variables_are_reported_with_the_nearest_name() {
        let vars = [
            ("LOAM_SIZ".to_string(), "1".to_string()),
            ("LOAM_INNER__CORSE".to_string(), "2".to_string()),
            ("LOAM_INNER".to_string(), "3".to_string()),
            ("LOAM_SIZE".to_string(), "4".to_string()),
        ];
        let (c, unknown) = apply_env_reporting(&Conf::default(), "LOAM_", vars).expect("applied");
        assert_eq!(c.size, 4);
        assert_eq!(unknown, ["LOAM_INNER", "LOAM_INNER__CORSE", "LOAM_SIZ"]);
        let c = Conf::default();
        assert_eq!(
            closest_var(&c, "LOAM_", "LOAM_SIZ").as_deref(),
            Some("LOAM_SIZE")
        );
        assert_eq!(
            closest_var(&c, "LOAM_", "LOAM_INNER__CORSE").as_deref(),
            Some("LOAM_INNER__CORES")
        );
        assert_eq!(closest_var(&c, "LOAM_", "LOAM_SOMETHING_ELSE"), None);
    }
}
