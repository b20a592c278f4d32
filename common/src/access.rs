//! Access grants: everything an uplink needs to use a project, in one
//! string — the satellite's address and id, an API key, and the root
//! encryption key derived from the passphrase. The passphrase itself is
//! never stored; the satellite never sees the root key.

use prost::Message;

use crate::encryption::{self, CryptoError, Key};
use crate::identity::{NodeId, NodeUrl};
use crate::pb;

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
}

#[derive(Clone, Debug)]
pub struct Access {
    pub satellite: NodeUrl,
    pub api_key: Vec<u8>,
    pub root_key: Key,
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
            root_key: encryption::root_key(passphrase, salt)?,
        })
    }

    pub fn serialize(&self) -> String {
        let grant = pb::AccessGrant {
            version: 1,
            satellite_address: self.satellite.address.clone(),
            satellite_id: self.satellite.id.as_bytes().to_vec().into(),
            api_key: self.api_key.clone().into(),
            root_key: self.root_key.as_bytes().to_vec().into(),
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
        if grant.version != 1 {
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
            root_key: Key::try_from(grant.root_key.as_ref())
                .map_err(|_| AccessError::Field("root key"))?,
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
        assert_eq!(b.root_key, a.root_key);
        assert!(matches!(Access::parse("hello"), Err(AccessError::Prefix)));
        assert!(matches!(
            Access::parse("loam1!!!"),
            Err(AccessError::Encoding)
        ));
    }
}
