//! S3 credentials derived for access grants, and the file that keeps them.
//!
//! `gateway setup --access GRANT` makes an access key id (from the grant,
//! so the same grant always gets the same id) and a random secret, and
//! keeps both with the grant in `credentials.json` (mode 0600: the grant
//! holds encryption keys). A credential can do exactly what its grant
//! allows: the satellite checks the grant's caveats on every request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use loam_common::access::Access;
use serde::{Deserialize, Serialize};

/// The file's name inside the gateway's config directory.
pub const FILE: &str = "credentials.json";

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a credentials file: {source}")]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("access grant for {access_key_id} in {path}: {source}")]
    Grant {
        access_key_id: String,
        path: PathBuf,
        source: loam_common::access::AccessError,
    },
    #[error("the access grant: {0}")]
    BadGrant(#[from] loam_common::access::AccessError),
}

/// One S3 credential and the grant it stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The access grant, serialized.
    pub access: String,
}

/// The gateway's credentials, by access key id.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_id: BTreeMap<String, (Credential, Access)>,
}

impl Credentials {
    /// Reads `DIR/credentials.json`; no file is no credentials.
    pub fn load(dir: &Path) -> Result<Self, CredentialsError> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(CredentialsError::Read { path, source }),
        };
        let list: Vec<Credential> =
            serde_json::from_str(&text).map_err(|source| CredentialsError::Malformed {
                path: path.clone(),
                source,
            })?;
        let mut by_id = BTreeMap::new();
        for c in list {
            let access = Access::parse(&c.access).map_err(|source| CredentialsError::Grant {
                access_key_id: c.access_key_id.clone(),
                path: path.clone(),
                source,
            })?;
            by_id.insert(c.access_key_id.clone(), (c, access));
        }
        Ok(Self { by_id })
    }

    /// Writes `DIR/credentials.json` (readable by its owner only), through a
    /// temporary file so a crash leaves the old one whole.
    pub fn save(&self, dir: &Path) -> Result<(), CredentialsError> {
        let path = dir.join(FILE);
        let write = |source| CredentialsError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(write)?;
        let list: Vec<&Credential> = self.by_id.values().map(|(c, _)| c).collect();
        let text = serde_json::to_string_pretty(&list).expect("credentials serialize");
        let tmp = dir.join(format!("{FILE}.tmp"));
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(write)?;
            f.write_all(text.as_bytes()).map_err(write)?;
            f.sync_all().map_err(write)?;
        }
        std::fs::rename(&tmp, &path).map_err(write)?;
        Ok(())
    }

    /// Adds (or renews the secret of) the credential for `grant`.
    pub fn add(&mut self, grant: &str) -> Result<Credential, CredentialsError> {
        let access = Access::parse(grant)?;
        let serialized = access.serialize();
        let c = Credential {
            access_key_id: access_key_id(&serialized),
            secret_access_key: new_secret(),
            access: serialized,
        };
        self.by_id
            .insert(c.access_key_id.clone(), (c.clone(), access));
        Ok(c)
    }

    pub fn get(&self, access_key_id: &str) -> Option<&(Credential, Access)> {
        self.by_id.get(access_key_id)
    }

    pub fn remove(&mut self, access_key_id: &str) -> bool {
        self.by_id.remove(access_key_id).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Credential> {
        self.by_id.values().map(|(c, _)| c)
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The access key id of a grant: 20 characters like AWS's, from a hash of
/// the grant (which it does not reveal).
pub fn access_key_id(grant: &str) -> String {
    let hash = blake3::derive_key("loam s3 access key id v1", grant.as_bytes());
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut id = String::from("LOAM");
    // 16 base32 characters: 80 bits of the hash.
    let mut bits = 0u32;
    let mut n = 0;
    for b in hash {
        bits = (bits << 8) | u32::from(b);
        n += 8;
        while n >= 5 && id.len() < 20 {
            n -= 5;
            id.push(ALPHABET[((bits >> n) & 31) as usize] as char);
        }
        if id.len() == 20 {
            break;
        }
    }
    id
}

/// A random secret access key: 40 characters, 240 bits.
fn new_secret() -> String {
    let bytes: [u8; 30] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_aws_ids_and_depend_on_the_grant() {
        let a = access_key_id("grant one");
        assert_eq!(a.len(), 20);
        assert!(a.starts_with("LOAM"));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
        assert_eq!(a, access_key_id("grant one"));
        assert_ne!(a, access_key_id("grant two"));
        let s = new_secret();
        assert_eq!(s.len(), 40);
        assert_ne!(s, new_secret());
    }

    #[test]
    fn a_missing_file_is_no_credentials_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().expect("test");
        assert!(Credentials::load(dir.path()).expect("test").is_empty());
        std::fs::write(dir.path().join(FILE), "{not json").expect("test");
        let e = Credentials::load(dir.path()).expect_err("test").to_string();
        assert!(e.contains("credentials.json"), "{e}");
        let mut c = Credentials::default();
        assert!(matches!(
            c.add("not a grant"),
            Err(CredentialsError::BadGrant(_))
        ));
    }
}
