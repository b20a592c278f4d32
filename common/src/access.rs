//! Access grants: everything an uplink needs to use a project, in one
//! string — the satellite's address and id, an API key, and the encryption
//! keys: the root key derived from the passphrase, or (in a grant narrowed
//! with `uplink share`) only the keys of some prefixes. The passphrase
//! itself is never stored; the satellite never sees any of the keys.

use prost::Message;

use crate::encryption::{self, CryptoError};
use crate::identity::{NodeId, NodeUrl};
use crate::pb;
use crate::scope::KeyScope;

const PREFIX: &str = "loam1";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error("not a Loam access grant (expected a string starting with {PREFIX})")]
    Prefix,
    #[error("access grant is corrupt (not valid base58 or protobuf)")]
    Encoding,
    #[error("access grant version {0} is not supported by this uplink")]
    Version(u32),
    #[error("access grant field {0} is invalid")]
    Field(&'static str),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Key(#[from] crate::macaroon::KeyError),
    #[error(transparent)]
    Scope(#[from] crate::scope::ScopeError),
    #[error(
        "this grant's API key is from before caveats and cannot be narrowed; ask the satellite's \
         operator for a new one (satellite api-key create)"
    )]
    NotNarrowable,
    #[error("{0}")]
    Restriction(&'static str),
}

/// What a narrowed grant may still do (everything not named stays as the
/// parent grant allows it).
#[derive(Debug, Clone, Default)]
pub struct Restriction {
    /// (bucket, prefix of whole components); empty: every path the parent
    /// allows. The encryption keys are narrowed to these too.
    pub paths: Vec<(String, String)>,
    pub disallow_reads: bool,
    pub disallow_writes: bool,
    pub disallow_lists: bool,
    pub disallow_deletes: bool,
    pub compute_only: bool,
    /// Unix milliseconds; 0: no bound.
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

#[derive(Clone, Debug)]
pub struct Access {
    pub satellite: NodeUrl,
    pub api_key: Vec<u8>,
    pub keys: KeyScope,
}

impl Access {
    /// Derives the root key from `passphrase` with the project's salt.
    pub fn derive(
        satellite: NodeUrl,
        api_key: Vec<u8>,
        passphrase: &str,
        salt: &[u8],
    ) -> Result<Self, AccessError> {
        Ok(Self {
            satellite,
            api_key,
            keys: KeyScope::Root(encryption::root_key(passphrase, salt)?),
        })
    }

    /// This grant narrowed by `r`: a caveat (with a fresh nonce, so that
    /// two equal shares can be revoked apart) on the API key, and only the
    /// encryption keys of `r.paths`. Needs no network.
    pub fn restrict(&self, r: &Restriction) -> Result<Access, AccessError> {
        if r.not_before_ms != 0 && r.not_after_ms != 0 && r.not_after_ms <= r.not_before_ms {
            return Err(AccessError::Restriction(
                "--not-after must be later than --not-before",
            ));
        }
        if self.api_key.len() == 32 {
            return Err(AccessError::NotNarrowable);
        }
        let key = crate::macaroon::CaveatedKey::from_bytes(&self.api_key)?;
        let mut allowed_paths = Vec::with_capacity(r.paths.len());
        for (bucket, prefix) in &r.paths {
            allowed_paths.push(pb::AllowedPath {
                bucket: bucket.clone(),
                encrypted_prefix: self.keys.encrypt_prefix(bucket, prefix)?.into(),
            });
        }
        let nonce: [u8; 8] = rand::random();
        let caveat = pb::Caveat {
            disallow_reads: r.disallow_reads,
            disallow_writes: r.disallow_writes,
            disallow_lists: r.disallow_lists,
            disallow_deletes: r.disallow_deletes,
            allowed_paths,
            not_before_ms: r.not_before_ms,
            not_after_ms: r.not_after_ms,
            compute_only: r.compute_only,
            nonce: nonce.to_vec().into(),
        };
        let keys = if r.paths.is_empty() {
            self.keys.clone()
        } else {
            self.keys.restrict(&r.paths)?
        };
        Ok(Access {
            satellite: self.satellite.clone(),
            api_key: key.restrict(&caveat)?.to_bytes(),
            keys,
        })
    }

    /// The API key's caveats (none for a key from before caveats).
    pub fn caveats(&self) -> Result<Vec<pb::Caveat>, AccessError> {
        if self.api_key.len() == 32 {
            return Ok(Vec::new());
        }
        Ok(crate::macaroon::CaveatedKey::from_bytes(&self.api_key)?
            .caveats()
            .to_vec())
    }

    /// What one caveat allows, in plain words.
    pub fn describe_caveat(&self, c: &pb::Caveat) -> Vec<String> {
        let mut out = Vec::new();
        let no: Vec<&str> = [
            (c.disallow_reads, "reads"),
            (c.disallow_writes, "writes"),
            (c.disallow_lists, "lists"),
            (c.disallow_deletes, "deletes"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, w)| *w)
        .collect();
        match (
            c.disallow_reads,
            c.disallow_writes,
            c.disallow_lists,
            c.disallow_deletes,
        ) {
            (false, true, false, true) => out.push("read-only (no writes, no deletes)".into()),
            (true, false, true, true) => out.push("write-only (no reads, lists or deletes)".into()),
            _ if !no.is_empty() => out.push(format!("no {}", no.join(", no "))),
            _ => {}
        }
        if c.compute_only {
            out.push("training only: may submit jobs on datasets, never download data".into());
        }
        if !c.allowed_paths.is_empty() {
            let paths: Vec<String> = c
                .allowed_paths
                .iter()
                .map(|p| {
                    let plain = if p.encrypted_prefix.is_empty() {
                        Some(String::new())
                    } else {
                        self.keys.decrypt_path(&p.bucket, &p.encrypted_prefix).ok()
                    };
                    match plain {
                        Some(prefix) => format!("loam://{}/{prefix}", p.bucket),
                        None => {
                            format!("a prefix of loam://{}/ this grant cannot decrypt", p.bucket)
                        }
                    }
                })
                .collect();
            out.push(format!("only under {}", paths.join(", ")));
        }
        if c.not_before_ms != 0 {
            out.push(format!(
                "not before {}",
                crate::time::format_instant(c.not_before_ms)
            ));
        }
        if c.not_after_ms != 0 {
            out.push(format!(
                "not after {}",
                crate::time::format_instant(c.not_after_ms)
            ));
        }
        if out.is_empty() {
            out.push("no restriction (a nonce only)".into());
        }
        out
    }

    pub fn serialize(&self) -> String {
        let (root_key, path_keys) = self.keys.to_pb();
        let grant = pb::AccessGrant {
            // Grants with the root key stay readable by older uplinks.
            version: if path_keys.is_empty() { 1 } else { 2 },
            satellite_address: self.satellite.address.clone(),
            satellite_id: self.satellite.id.as_bytes().to_vec().into(),
            api_key: self.api_key.clone().into(),
            root_key: root_key.into(),
            path_keys,
        };
        format!(
            "{PREFIX}{}",
            bs58::encode(grant.encode_to_vec()).into_string()
        )
    }

    pub fn parse(text: &str) -> Result<Self, AccessError> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(AccessError::Prefix)?;
        let bytes = bs58::decode(body)
            .into_vec()
            .map_err(|_| AccessError::Encoding)?;
        let grant = pb::AccessGrant::decode(bytes.as_slice()).map_err(|_| AccessError::Encoding)?;
        if grant.version != 1 && grant.version != 2 {
            return Err(AccessError::Version(grant.version));
        }
        let id = NodeId::try_from(grant.satellite_id.as_ref())
            .map_err(|_| AccessError::Field("satellite id"))?;
        if grant.satellite_address.is_empty() {
            return Err(AccessError::Field("satellite address"));
        }
        if grant.api_key.is_empty() {
            return Err(AccessError::Field("api key"));
        }
        Ok(Self {
            satellite: NodeUrl {
                id,
                address: grant.satellite_address,
            },
            api_key: grant.api_key.to_vec(),
            keys: KeyScope::from_pb(&grant.root_key, &grant.path_keys)
                .ok_or(AccessError::Field("encryption keys"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_round_trips_and_rejects_garbage() {
        let sat = NodeUrl {
            id: crate::Identity::generate(0, |_| {}).id(),
            address: "127.0.0.1:7777".into(),
        };
        let a = Access::derive(sat, vec![1, 2, 3], "pass", b"saltsaltsalt").expect("derive");
        let s = a.serialize();
        let b = Access::parse(&s).expect("parse");
        assert_eq!(b.satellite, a.satellite);
        assert_eq!(b.api_key, a.api_key);
        assert_eq!(b.keys, a.keys);
        let narrowed = Access {
            keys: a
                .keys
                .restrict(&[("b".into(), "team/".into())])
                .expect("restrict"),
            ..a.clone()
        };
        let c = Access::parse(&narrowed.serialize()).expect("parse");
        assert_eq!(c.keys, narrowed.keys);
        assert!(matches!(Access::parse("hello"), Err(AccessError::Prefix)));
        assert!(matches!(
            Access::parse("loam1!!!"),
            Err(AccessError::Encoding)
        ));
    }
}
