//! Ed25519 identities and node ids.
//!
//! A [`NodeId`] is the BLAKE3 hash of a peer's Ed25519 public key. Creating
//! an identity costs proof of work: the id must end in at least `difficulty`
//! zero bits, which a satellite enforces at check-in (Sybil cost).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use rand::rngs::OsRng;

/// Length of a node id in bytes.
pub const NODE_ID_LEN: usize = 32;

/// The name of a peer: BLAKE3 of its Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; NODE_ID_LEN]);

impl NodeId {
    pub fn from_public_key(key: &PublicKey) -> Self {
        Self(*blake3::hash(key.as_bytes()).as_bytes())
    }

    pub const fn from_bytes(bytes: [u8; NODE_ID_LEN]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; NODE_ID_LEN] {
        &self.0
    }

    /// Number of trailing zero bits: the proof-of-work difficulty this id meets.
    pub fn difficulty(&self) -> u32 {
        let mut bits = 0;
        for byte in self.0.iter().rev() {
            if *byte == 0 {
                bits += 8;
            } else {
                bits += byte.trailing_zeros();
                break;
            }
        }
        bits
    }

    /// First characters of the base58 form, for logs.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(&self.0).into_string())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("node id is not valid base58")]
    Base58,
    #[error("node id must be {NODE_ID_LEN} bytes, got {0}")]
    Length(usize),
    #[error("public key is not a valid Ed25519 key")]
    PublicKey,
    #[error("signature is malformed")]
    SignatureFormat,
    #[error("signature does not verify")]
    BadSignature,
}

impl FromStr for NodeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = bs58::decode(s).into_vec().map_err(|_| IdError::Base58)?;
        Self::try_from(bytes.as_slice())
    }
}

impl TryFrom<&[u8]> for NodeId {
    type Error = IdError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        let arr: [u8; NODE_ID_LEN] = bytes.try_into().map_err(|_| IdError::Length(bytes.len()))?;
        Ok(Self(arr))
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ed25519 public key, used when doing crypto (a [`NodeId`] names a node).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The X25519 form of this key (the same point on the Montgomery
    /// curve), for sealing data to the key's owner.
    pub fn to_x25519(&self) -> [u8; 32] {
        self.0.to_montgomery().to_bytes()
    }

    pub fn node_id(&self) -> NodeId {
        NodeId::from_public_key(self)
    }

    /// Verifies an Ed25519 signature over `msg` in `domain`.
    pub fn verify(&self, domain: Domain, msg: &[u8], signature: &[u8]) -> Result<(), IdError> {
        let sig = ed25519_dalek::Signature::from_slice(signature)
            .map_err(|_| IdError::SignatureFormat)?;
        self.0
            .verify(&domain.message(msg), &sig)
            .map_err(|_| IdError::BadSignature)
    }
}

/// What a signature is for. Every signed message type has its own domain,
/// prefixed to the bytes before signing, so a signature over one kind of
/// message (say a ledger entry, signed by the satellite's key) can never be
/// passed off as another (an order limit, signed by the same key), however
/// the bytes happen to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Domain {
    OrderLimit,
    Order,
    PieceHash,
    LedgerEntry,
    LedgerHead,
    /// Free-form messages in tests and benchmarks.
    Test,
}

impl Domain {
    fn tag(self) -> &'static [u8] {
        match self {
            Domain::OrderLimit => b"loam/v1/order-limit\0",
            Domain::Order => b"loam/v1/order\0",
            Domain::PieceHash => b"loam/v1/piece-hash\0",
            Domain::LedgerEntry => b"loam/v1/ledger-entry\0",
            Domain::LedgerHead => b"loam/v1/ledger-head\0",
            Domain::Test => b"loam/v1/test\0",
        }
    }

    /// The bytes actually signed for `msg` in this domain.
    pub fn message(self, msg: &[u8]) -> Vec<u8> {
        let tag = self.tag();
        let mut out = Vec::with_capacity(tag.len() + msg.len());
        out.extend_from_slice(tag);
        out.extend_from_slice(msg);
        out
    }
}

/// Verifies many signatures at once (Ed25519 batch verification, about
/// twice as fast as one by one). `false` if any is bad or malformed; verify
/// one by one to find which.
pub fn verify_batch(items: &[(Domain, &[u8], &[u8], &PublicKey)]) -> bool {
    if items.is_empty() {
        return true;
    }
    let mut messages = Vec::with_capacity(items.len());
    let mut signatures = Vec::with_capacity(items.len());
    let mut keys = Vec::with_capacity(items.len());
    for (domain, msg, sig, key) in items {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        messages.push(domain.message(msg));
        signatures.push(sig);
        keys.push(key.0);
    }
    let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
}

impl TryFrom<&[u8]> for PublicKey {
    type Error = IdError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| IdError::PublicKey)?;
        VerifyingKey::from_bytes(&arr)
            .map(Self)
            .map_err(|_| IdError::PublicKey)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(&self.as_bytes()[..8]))
    }
}

/// A signing key pair: a peer's identity, or a per-segment piece key.
#[derive(Clone)]
pub struct KeyPair(SigningKey);

impl KeyPair {
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut OsRng))
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The X25519 secret matching [`PublicKey::to_x25519`].
    pub fn x25519_secret(&self) -> [u8; 32] {
        self.0.to_scalar_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `msg` in `domain`.
    pub fn sign(&self, domain: Domain, msg: &[u8]) -> Vec<u8> {
        self.0.sign(&domain.message(msg)).to_bytes().to_vec()
    }

    /// PKCS#8 v2 DER of the private key, for the TLS certificate.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        self.0
            .to_pkcs8_der()
            .expect("an in-memory Ed25519 key always encodes")
            .as_bytes()
            .to_vec()
    }
}

impl TryFrom<&[u8]> for KeyPair {
    type Error = IdError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        let seed: [u8; 32] = bytes.try_into().map_err(|_| IdError::Length(bytes.len()))?;
        Ok(Self::from_seed(seed))
    }
}

/// A peer's long-lived identity: its key pair and the id derived from it.
#[derive(Clone)]
pub struct Identity {
    key: KeyPair,
    id: NodeId,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityFileError {
    #[error("cannot read identity file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write identity file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("identity file {path} is malformed (expected 64 hex characters)")]
    Malformed { path: String },
}

impl Identity {
    pub fn from_key(key: KeyPair) -> Self {
        let id = key.public().node_id();
        Self { key, id }
    }

    /// Generates key pairs until one's id meets `difficulty`, on every
    /// core; calls `progress` with the number of attempts so far about ten
    /// times a second while it searches.
    pub fn generate(difficulty: u32, mut progress: impl FnMut(u64)) -> Self {
        // Small difficulties (tests, test networks) are found at once.
        if difficulty <= 12 {
            loop {
                let candidate = Self::from_key(KeyPair::generate());
                if candidate.id.difficulty() >= difficulty {
                    return candidate;
                }
            }
        }
        use std::sync::atomic::{AtomicU64, Ordering};
        let attempts = AtomicU64::new(0);
        let found = std::sync::Mutex::new(None::<Self>);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    loop {
                        for _ in 0..256 {
                            let candidate = Self::from_key(KeyPair::generate());
                            if candidate.id.difficulty() >= difficulty {
                                let mut f = found.lock().expect("identity search lock");
                                f.get_or_insert(candidate);
                                return;
                            }
                        }
                        attempts.fetch_add(256, Ordering::Relaxed);
                        if found.lock().expect("identity search lock").is_some() {
                            return;
                        }
                    }
                });
            }
            loop {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if found.lock().expect("identity search lock").is_some() {
                    break;
                }
                progress(attempts.load(Ordering::Relaxed));
            }
        });
        found
            .into_inner()
            .expect("identity search lock")
            .expect("a thread found one before the search ended")
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    pub fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// Signs `msg` in `domain`.
    pub fn sign(&self, domain: Domain, msg: &[u8]) -> Vec<u8> {
        self.key.sign(domain, msg)
    }

    /// Loads an identity saved by [`Identity::save`].
    pub fn load(path: &Path) -> Result<Self, IdentityFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentityFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let malformed = || IdentityFileError::Malformed {
            path: path.display().to_string(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| malformed())?;
        let key = KeyPair::try_from(bytes.as_slice()).map_err(|_| malformed())?;
        Ok(Self::from_key(key))
    }

    /// Writes the private key (hex) readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), IdentityFileError> {
        let write_err = |source| IdentityFileError::Write {
            path: path.display().to_string(),
            source,
        };
        crate::config::write_private(path, hex::encode(self.key.seed()).as_bytes())
            .map_err(write_err)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.id.short())
    }
}

/// A peer's address pinned to its id: `ID@host:port`, or
/// `ID@host:port,host:port,...` for a peer served by several processes
/// that share its identity (a satellite on a shared database): clients try
/// them all and keep the first that answers.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeUrl {
    pub id: NodeId,
    pub address: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeUrlError {
    #[error("expected ID@HOST:PORT, got {0:?}")]
    Format(String),
    #[error("bad node id in {url:?}: {source}")]
    Id { url: String, source: IdError },
}

impl NodeUrl {
    /// Each `host:port` the peer is served at, in the order given.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.address
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
    }

    /// Resolves the first address (host names included).
    pub fn socket_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        let first = self.addresses().next().unwrap_or_default();
        resolve(first)
    }

    /// Resolves every address; those that resolve to nothing are left
    /// out, and it fails only when none resolves.
    pub fn socket_addrs(&self) -> std::io::Result<Vec<std::net::SocketAddr>> {
        let mut out = Vec::new();
        let mut last = None;
        for a in self.addresses() {
            match resolve(a) {
                Ok(addr) => out.push(addr),
                Err(e) => last = Some(e),
            }
        }
        if out.is_empty() {
            return Err(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address")
            }));
        }
        Ok(out)
    }
}

fn resolve(address: &str) -> std::io::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    address.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{address:?} resolves to nothing"),
        )
    })
}

impl fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.address)
    }
}

impl FromStr for NodeUrl {
    type Err = NodeUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, address) = s
            .split_once('@')
            .ok_or_else(|| NodeUrlError::Format(s.to_string()))?;
        let bad = |a: &str| {
            a.trim()
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        };
        if address.split(',').any(bad) {
            return Err(NodeUrlError::Format(s.to_string()));
        }
        let id = id.parse().map_err(|source| NodeUrlError::Id {
            url: s.to_string(),
            source,
        })?;
        Ok(Self {
            id,
            address: address.to_string(),
        })
    }
}

impl serde::Serialize for NodeUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for NodeUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_may_list_several_addresses() {
        let id = Identity::generate(0, |_| {}).id();
        let url: NodeUrl = format!("{id}@127.0.0.1:7000, 127.0.0.1:7001")
            .parse()
            .expect("two addresses");
        assert_eq!(
            url.addresses().collect::<Vec<_>>(),
            ["127.0.0.1:7000", "127.0.0.1:7001"]
        );
        assert_eq!(url.socket_addrs().expect("resolve").len(), 2);
        assert_eq!(url.socket_addr().expect("first").port(), 7000);
        assert_eq!(url.to_string().parse::<NodeUrl>().expect("round trip"), url);
        for bad in ["127.0.0.1:7000,", "127.0.0.1:7000,nohost", ",127.0.0.1:1"] {
            assert!(format!("{id}@{bad}").parse::<NodeUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn difficulty_counts_trailing_zero_bits() {
        let mut bytes = [0xffu8; 32];
        bytes[31] = 0b1000_0000;
        assert_eq!(NodeId::from_bytes(bytes).difficulty(), 7);
        bytes[31] = 0;
        bytes[30] = 0b10;
        assert_eq!(NodeId::from_bytes(bytes).difficulty(), 9);
    }

    #[test]
    fn generated_identity_meets_difficulty() {
        let id = Identity::generate(6, |_| {});
        assert!(id.id().difficulty() >= 6);
        assert_eq!(id.id(), NodeId::from_public_key(&id.public()));
    }

    #[test]
    fn node_id_round_trips_through_base58() {
        let id = Identity::generate(0, |_| {}).id();
        let parsed: NodeId = id.to_string().parse().expect("valid");
        assert_eq!(id, parsed);
        assert!("not-base58!".parse::<NodeId>().is_err());
    }

    #[test]
    fn identity_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("loam-id-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("identity.key");
        let id = Identity::generate(0, |_| {});
        id.save(&path).expect("save");
        assert_eq!(Identity::load(&path).expect("load").id(), id.id());
        std::fs::write(&path, "zz").expect("write");
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityFileError::Malformed { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn signatures_verify_only_with_the_right_key() {
        let a = KeyPair::generate();
        let b = KeyPair::generate();
        let sig = a.sign(Domain::Test, b"hello");
        assert!(a.public().verify(Domain::Test, b"hello", &sig).is_ok());
        assert!(b.public().verify(Domain::Test, b"hello", &sig).is_err());
        assert!(a.public().verify(Domain::Test, b"hellO", &sig).is_err());
        assert!(
            a.public()
                .verify(Domain::Test, b"hello", &sig[..10])
                .is_err()
        );
        // A signature in one domain is worthless in every other.
        for other in [
            Domain::OrderLimit,
            Domain::Order,
            Domain::PieceHash,
            Domain::LedgerEntry,
            Domain::LedgerHead,
        ] {
            assert!(a.public().verify(other, b"hello", &sig).is_err());
        }
        let limit = a.sign(Domain::OrderLimit, b"bytes");
        assert!(
            a.public()
                .verify(Domain::LedgerEntry, b"bytes", &limit)
                .is_err()
        );
        assert!(verify_batch(&[(
            Domain::OrderLimit,
            b"bytes",
            &limit,
            &a.public()
        )]));
        assert!(!verify_batch(&[(
            Domain::LedgerEntry,
            b"bytes",
            &limit,
            &a.public()
        )]));
    }
}
