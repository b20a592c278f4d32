//! Caveated API keys: a MAC chain in the manner of macaroons.
//!
//! A key is a public `head`, a list of caveats and a `tail`. The satellite
//! keeps a random secret per key (never the key itself) and computes
//!
//! ```text
//! tail_0     = MAC(secret, head)
//! tail_{i+1} = MAC(tail_i, caveat_i)
//! ```
//!
//! Whoever holds a key can narrow it offline ([`CaveatedKey::restrict`]:
//! append a caveat and step the chain), but nobody can widen it: removing,
//! editing or reordering a caveat needs an earlier tail, which the MAC does
//! not reveal. The satellite verifies the whole chain ([`CaveatedKey::verify`])
//! and then applies every caveat ([`CaveatedKey::check`]).
//!
//! Revocation is by tail: every intermediate tail of a key names the key
//! narrowed up to that caveat, so revoking a key's tail also revokes every
//! key narrowed from it, and a verification costs one set lookup per
//! caveat whatever the number of revoked keys.
//!
//! The MAC is BLAKE3 in keyed mode under a domain-separated key.

use prost::Message;

use crate::pb;

/// Bytes of a head, a secret and a tail.
pub const KEY_BYTES: usize = 32;
/// Most caveats a key may carry.
pub const MAX_CAVEATS: usize = 64;
/// Largest encoded caveat.
pub const MAX_CAVEAT_BYTES: usize = 16 * 1024;

/// Why a key was refused. The variants that concern the key itself
/// (malformed, forged, revoked) say nothing about which part was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("the API key is malformed")]
    Malformed,
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key was revoked")]
    Revoked,
    #[error("this grant is not valid before {0}")]
    NotYetValid(String),
    #[error("this grant expired at {0}")]
    Expired(String),
    #[error("this grant {0}")]
    Denied(&'static str),
    #[error("this grant only allows {0}")]
    OutsidePaths(String),
    #[error("this grant only allows training, not {0}")]
    ComputeOnly(&'static str),
}

/// What a request does, for [`CaveatedKey::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Download an object or fetch its pieces.
    Read,
    /// Upload, move or copy into the path, create a bucket.
    Write,
    /// List objects or buckets.
    List,
    /// Delete objects or buckets.
    Delete,
    /// Submit or follow a training job on a dataset.
    Compute,
    /// Read an object's record (size, encrypted metadata), not its data.
    Stat,
    /// Look a bucket up: allowed wherever any path of the key lies in it.
    Bucket,
    /// Project-wide figures (usage of every bucket).
    Usage,
    /// Manage the project's API keys: only keys that restrict no operation
    /// and no path (time bounds and nonces aside).
    Admin,
    /// The project's name and salt: any key within its time bounds.
    Info,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "reads",
            Op::Write => "writes",
            Op::List => "listings",
            Op::Delete => "deletes",
            Op::Compute => "training",
            Op::Stat => "reading object details",
            Op::Bucket => "bucket lookups",
            Op::Usage => "project usage",
            Op::Admin => "managing API keys",
            Op::Info => "project information",
        }
    }
}

/// One request as a caveat sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub op: Op,
    /// The bucket (None: the request names none, as a bucket listing).
    pub bucket: Option<&'a str>,
    /// The encrypted object key or listing prefix (empty: the whole
    /// bucket).
    pub encrypted_key: &'a [u8],
    pub now_ms: i64,
}

/// A key's id as people see it: the first 8 bytes of its head, in hex.
pub fn key_id(head: &[u8]) -> String {
    hex::encode(&head[..head.len().min(8)])
}

/// The head prefix a key id (or a prefix of one, at least 8 digits) names.
pub fn parse_key_id(id: &str) -> Result<Vec<u8>, KeyIdError> {
    let id = id.trim();
    if id.len() < 8 || !id.len().is_multiple_of(2) {
        return Err(KeyIdError(id.to_string()));
    }
    hex::decode(id).map_err(|_| KeyIdError(id.to_string()))
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a key id (an even number of hex digits, at least 8, from `api-key list`)")]
pub struct KeyIdError(String);

fn mac(key: &[u8; KEY_BYTES], message: &[u8]) -> [u8; KEY_BYTES] {
    // A fixed context keeps these MACs apart from any other use of the key.
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"loam api key chain v1\0");
    h.update(message);
    *h.finalize().as_bytes()
}

/// A caveated API key.
#[derive(Debug, Clone)]
pub struct CaveatedKey {
    head: [u8; KEY_BYTES],
    caveats: Vec<Vec<u8>>,
    /// The caveats decoded once, when the key was read or narrowed.
    decoded: Vec<pb::Caveat>,
    tail: [u8; KEY_BYTES],
}

/// Keys are equal when their bytes are (the decoded caveats follow them).
impl PartialEq for CaveatedKey {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head && self.caveats == other.caveats && self.tail == other.tail
    }
}

impl Eq for CaveatedKey {}

impl CaveatedKey {
    /// A new key with no caveats, and the secret the satellite keeps for it
    /// (under the head).
    pub fn generate() -> (Self, [u8; KEY_BYTES]) {
        let head: [u8; KEY_BYTES] = rand::random();
        let secret: [u8; KEY_BYTES] = rand::random();
        let key = Self {
            head,
            caveats: Vec::new(),
            decoded: Vec::new(),
            tail: mac(&secret, &head),
        };
        (key, secret)
    }

    /// The tail of the unnarrowed key with `head`: revoking it revokes the
    /// whole key and everything narrowed from it.
    pub fn root_tail(secret: &[u8; KEY_BYTES], head: &[u8; KEY_BYTES]) -> [u8; KEY_BYTES] {
        mac(secret, head)
    }

    /// The public part the satellite finds the secret by.
    pub fn head(&self) -> &[u8; KEY_BYTES] {
        &self.head
    }

    /// The tail: what a revocation names.
    pub fn tail(&self) -> &[u8; KEY_BYTES] {
        &self.tail
    }

    /// The caveats, decoded, in order.
    pub fn caveats(&self) -> &[pb::Caveat] {
        &self.decoded
    }

    /// This key narrowed by `caveat`: needs no secret and no network.
    pub fn restrict(&self, caveat: &pb::Caveat) -> Result<Self, KeyError> {
        if self.caveats.len() >= MAX_CAVEATS {
            return Err(KeyError::Malformed);
        }
        let bytes = caveat.encode_to_vec();
        if bytes.len() > MAX_CAVEAT_BYTES {
            return Err(KeyError::Malformed);
        }
        let tail = mac(&self.tail, &bytes);
        let mut caveats = self.caveats.clone();
        caveats.push(bytes);
        let mut decoded = self.decoded.clone();
        decoded.push(caveat.clone());
        Ok(Self {
            head: self.head,
            caveats,
            decoded,
            tail,
        })
    }

    /// Checks the chain against `secret` and that no tail along it is
    /// revoked (`revoked` answers for one tail). Every step is computed
    /// whatever fails, and the final comparison is constant-time.
    pub fn verify(
        &self,
        secret: &[u8; KEY_BYTES],
        revoked: impl Fn(&[u8; KEY_BYTES]) -> bool,
    ) -> Result<(), KeyError> {
        let mut tail = mac(secret, &self.head);
        let mut was_revoked = revoked(&tail);
        for caveat in &self.caveats {
            tail = mac(&tail, caveat);
            was_revoked |= revoked(&tail);
        }
        if blake3::Hash::from(tail) != blake3::Hash::from(self.tail) {
            return Err(KeyError::Invalid);
        }
        if was_revoked {
            return Err(KeyError::Revoked);
        }
        Ok(())
    }

    /// Whether every caveat allows `req` (call after [`Self::verify`]).
    pub fn check(&self, req: &Request<'_>) -> Result<(), KeyError> {
        for c in &self.decoded {
            check_caveat(c, req)?;
        }
        Ok(())
    }

    /// The key as bytes (protobuf).
    pub fn to_bytes(&self) -> Vec<u8> {
        pb::CaveatedKey {
            head: self.head.to_vec().into(),
            caveats: self.caveats.iter().map(|c| c.clone().into()).collect(),
            tail: self.tail.to_vec().into(),
        }
        .encode_to_vec()
    }

    /// A key from [`Self::to_bytes`]; sizes are checked, not the chain.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let k = pb::CaveatedKey::decode(bytes).map_err(|_| KeyError::Malformed)?;
        let fixed = |b: &[u8]| <[u8; KEY_BYTES]>::try_from(b).map_err(|_| KeyError::Malformed);
        if k.caveats.len() > MAX_CAVEATS || k.caveats.iter().any(|c| c.len() > MAX_CAVEAT_BYTES) {
            return Err(KeyError::Malformed);
        }
        let decoded = k
            .caveats
            .iter()
            .map(|c| pb::Caveat::decode(c.as_ref()).map_err(|_| KeyError::Malformed))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            head: fixed(&k.head)?,
            caveats: k.caveats.iter().map(|c| c.to_vec()).collect(),
            decoded,
            tail: fixed(&k.tail)?,
        })
    }
}

fn check_caveat(c: &pb::Caveat, req: &Request<'_>) -> Result<(), KeyError> {
    if c.not_before_ms != 0 && req.now_ms < c.not_before_ms {
        return Err(KeyError::NotYetValid(crate::time::format_instant(
            c.not_before_ms,
        )));
    }
    if c.not_after_ms != 0 && req.now_ms > c.not_after_ms {
        return Err(KeyError::Expired(crate::time::format_instant(
            c.not_after_ms,
        )));
    }
    if c.compute_only && matches!(req.op, Op::Read | Op::Write | Op::Delete | Op::Usage) {
        return Err(KeyError::ComputeOnly(req.op.name()));
    }
    let denied = match req.op {
        Op::Read => c.disallow_reads,
        // A compute-only key may see a dataset's record (never its data).
        Op::Stat => c.disallow_reads && !c.compute_only,
        Op::Write => c.disallow_writes,
        Op::List | Op::Usage => c.disallow_lists,
        Op::Delete => c.disallow_deletes,
        // Training reads nothing out; it needs the data to be readable
        // by the nodes, which a read-only or compute-only key allows.
        Op::Compute | Op::Bucket | Op::Info => false,
        Op::Admin => {
            c.disallow_reads
                || c.disallow_writes
                || c.disallow_lists
                || c.disallow_deletes
                || c.compute_only
                || !c.allowed_paths.is_empty()
        }
    };
    if denied {
        let read_only = c.disallow_writes && c.disallow_deletes && !c.disallow_reads;
        let write_only = c.disallow_reads && c.disallow_lists && !c.disallow_writes;
        return Err(KeyError::Denied(match req.op {
            Op::Write | Op::Delete if read_only => "is read-only",
            Op::Read | Op::Stat | Op::List if write_only => "is write-only",
            Op::Read | Op::Stat => "does not allow reads",
            Op::Write => "does not allow writes",
            Op::List => "does not allow listings",
            Op::Delete => "does not allow deletes",
            Op::Usage => "does not allow reading project usage",
            Op::Admin => "cannot manage API keys (only a key that restricts nothing can)",
            Op::Compute | Op::Bucket | Op::Info => "does not allow this",
        }));
    }
    if c.allowed_paths.is_empty() || req.op == Op::Info {
        return Ok(());
    }
    if req.op == Op::Usage {
        return Err(KeyError::OutsidePaths(describe_paths(&c.allowed_paths)));
    }
    if within_paths(&c.allowed_paths, req.op, req.bucket, req.encrypted_key) {
        Ok(())
    } else {
        Err(KeyError::OutsidePaths(describe_paths(&c.allowed_paths)))
    }
}

/// Whether a request at (`bucket`, `key`) falls under one of `paths`.
fn within_paths(paths: &[pb::AllowedPath], op: Op, bucket: Option<&str>, key: &[u8]) -> bool {
    paths.iter().any(|p| match bucket {
        Some(b) if b == p.bucket => {
            op == Op::Bucket
                || key.starts_with(&p.encrypted_prefix)
                // A listing of a parent of the allowed prefix shows the way
                // down to it (the satellite filters the rest); whole
                // components only.
                || (op == Op::List
                    && (key.is_empty() || key.ends_with(b"/"))
                    && p.encrypted_prefix.starts_with(key))
        }
        Some(_) => false,
        // Listing buckets passes; the satellite shows only allowed ones.
        None => op == Op::List,
    })
}

fn describe_paths(paths: &[pb::AllowedPath]) -> String {
    let mut out: Vec<String> = paths
        .iter()
        .map(|p| {
            if p.encrypted_prefix.is_empty() {
                format!("loam://{}/", p.bucket)
            } else {
                format!("one prefix of loam://{}/", p.bucket)
            }
        })
        .collect();
    out.dedup();
    out.join(", ")
}

impl CaveatedKey {
    /// Whether a listing may show an entry at `encrypted_key` in `bucket`
    /// (`is_prefix`: a collapsed prefix, shown when it leads to an allowed
    /// path).
    pub fn shows(&self, bucket: &str, encrypted_key: &[u8], is_prefix: bool) -> bool {
        self.decoded.iter().all(|c| {
            c.allowed_paths.is_empty()
                || c.allowed_paths.iter().any(|p| {
                    p.bucket == bucket
                        && (encrypted_key.starts_with(&p.encrypted_prefix)
                            || (is_prefix && p.encrypted_prefix.starts_with(encrypted_key)))
                })
        })
    }

    /// Whether a bucket listing shows `bucket`.
    pub fn shows_bucket(&self, bucket: &str) -> bool {
        self.decoded.iter().all(|c| {
            c.allowed_paths.is_empty() || c.allowed_paths.iter().any(|p| p.bucket == bucket)
        })
    }

    /// Whether some caveat makes this key compute-only.
    pub fn is_compute_only(&self) -> bool {
        self.decoded.iter().any(|c| c.compute_only)
    }

    /// Whether `other` is this key or was narrowed from it: same head, and
    /// this key's caveats are the first of `other`'s. (Both chains still
    /// need [`Self::verify`].)
    pub fn is_ancestor_of(&self, other: &CaveatedKey) -> bool {
        self.head == other.head
            && self.caveats.len() <= other.caveats.len()
            && self.caveats.iter().zip(&other.caveats).all(|(a, b)| a == b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(op: Op, bucket: &str, key: &[u8]) -> Request<'static> {
        Request {
            op,
            bucket: Some(Box::leak(bucket.to_string().into_boxed_str())),
            encrypted_key: Box::leak(key.to_vec().into_boxed_slice()),
            now_ms: 1_000_000,
        }
    }

    fn never(_: &[u8; KEY_BYTES]) -> bool {
        false
    }

    #[test]
    fn a_narrowed_key_verifies_and_cannot_be_widened() {
        let (root, secret) = CaveatedKey::generate();
        root.verify(&secret, never).expect("root");
        let read_only = root
            .restrict(&pb::Caveat {
                disallow_writes: true,
                disallow_deletes: true,
                ..Default::default()
            })
            .expect("restrict");
        let team = read_only
            .restrict(&pb::Caveat {
                allowed_paths: vec![pb::AllowedPath {
                    bucket: "b".into(),
                    encrypted_prefix: b"team/".to_vec().into(),
                }],
                ..Default::default()
            })
            .expect("restrict");
        let back = CaveatedKey::from_bytes(&team.to_bytes()).expect("decode");
        assert_eq!(back, team);
        back.verify(&secret, never).expect("narrowed key verifies");

        // Removing, editing, reordering or truncating a caveat, or taking
        // one from another key: invalid.
        let mut removed = team.clone();
        removed.caveats.remove(0);
        let mut edited = team.clone();
        edited.caveats[0] = pb::Caveat {
            disallow_writes: false,
            ..Default::default()
        }
        .encode_to_vec();
        let mut reordered = team.clone();
        reordered.caveats.swap(0, 1);
        let mut truncated = team.clone();
        truncated.caveats.pop();
        let (other, _) = CaveatedKey::generate();
        let other = other
            .restrict(&pb::Caveat {
                nonce: b"x".to_vec().into(),
                ..Default::default()
            })
            .expect("restrict");
        let mut borrowed = root.clone();
        borrowed.caveats = other.caveats.clone();
        borrowed.tail = other.tail;
        for (what, k) in [
            ("removed", removed),
            ("edited", edited),
            ("reordered", reordered),
            ("truncated", truncated),
            ("borrowed", borrowed),
        ] {
            assert_eq!(k.verify(&secret, never), Err(KeyError::Invalid), "{what}");
        }
        assert_eq!(
            root.verify(&[0; KEY_BYTES], never),
            Err(KeyError::Invalid),
            "another secret"
        );
        assert_eq!(
            CaveatedKey::from_bytes(b"\x0a\x03abc"),
            Err(KeyError::Malformed)
        );
    }

    #[test]
    fn every_caveat_is_applied() {
        let (root, _) = CaveatedKey::generate();
        let key = |c: pb::Caveat| root.restrict(&c).expect("restrict");
        let all = [Op::Read, Op::Write, Op::List, Op::Delete, Op::Compute];
        let cases: Vec<(pb::Caveat, Vec<Op>)> = vec![
            (
                pb::Caveat {
                    disallow_reads: true,
                    ..Default::default()
                },
                vec![Op::Write, Op::List, Op::Delete, Op::Compute],
            ),
            (
                pb::Caveat {
                    disallow_writes: true,
                    ..Default::default()
                },
                vec![Op::Read, Op::List, Op::Delete, Op::Compute],
            ),
            (
                pb::Caveat {
                    disallow_lists: true,
                    ..Default::default()
                },
                vec![Op::Read, Op::Write, Op::Delete, Op::Compute],
            ),
            (
                pb::Caveat {
                    disallow_deletes: true,
                    ..Default::default()
                },
                vec![Op::Read, Op::Write, Op::List, Op::Compute],
            ),
            (
                pb::Caveat {
                    compute_only: true,
                    ..Default::default()
                },
                vec![Op::List, Op::Compute],
            ),
        ];
        for (caveat, allowed) in cases {
            let k = key(caveat.clone());
            for op in all {
                let r = k.check(&req(op, "b", b"x"));
                assert_eq!(r.is_ok(), allowed.contains(&op), "{caveat:?} {op:?}: {r:?}");
            }
        }
        // Time bounds.
        let timed = key(pb::Caveat {
            not_before_ms: 500_000,
            not_after_ms: 2_000_000,
            ..Default::default()
        });
        let at = |now_ms| Request {
            now_ms,
            ..req(Op::Read, "b", b"x")
        };
        assert!(timed.check(&at(1_000_000)).is_ok());
        assert!(matches!(timed.check(&at(1)), Err(KeyError::NotYetValid(_))));
        let e = timed.check(&at(3_000_000)).expect_err("expired");
        assert_eq!(e.to_string(), "this grant expired at 1970-01-01T00:33:20Z");
        // Paths: inside, outside, another bucket, the way down a listing.
        let team = key(pb::Caveat {
            allowed_paths: vec![pb::AllowedPath {
                bucket: "b".into(),
                encrypted_prefix: b"team/".to_vec().into(),
            }],
            ..Default::default()
        });
        assert!(team.check(&req(Op::Read, "b", b"team/a")).is_ok());
        assert!(team.check(&req(Op::List, "b", b"")).is_ok());
        let e = team
            .check(&req(Op::Read, "b", b"other/a"))
            .expect_err("outside");
        assert!(e.to_string().starts_with("this grant only allows"), "{e}");
        assert!(team.check(&req(Op::Read, "c", b"team/a")).is_err());
        assert!(team.check(&req(Op::Write, "b", b"")).is_err());
        assert!(team.check(&req(Op::Bucket, "b", b"")).is_ok());
        assert!(team.check(&req(Op::Bucket, "c", b"")).is_err());
        assert!(team.check(&req(Op::Usage, "b", b"")).is_err());
        assert!(team.check(&req(Op::Admin, "b", b"")).is_err());
        // A listing shows the way down and what lies under the prefix.
        assert!(team.shows("b", b"team/", true));
        assert!(team.shows("b", b"team/a", false));
        assert!(!team.shows("b", b"other/", true));
        assert!(!team.shows("b", b"te", false));
        assert!(team.shows_bucket("b") && !team.shows_bucket("c"));
        // Compute-only keys see a dataset's record, never its data.
        let compute = key(pb::Caveat {
            compute_only: true,
            disallow_reads: true,
            ..Default::default()
        });
        assert!(compute.check(&req(Op::Stat, "b", b"x")).is_ok());
        assert!(compute.is_compute_only());
        // Only an unrestricted key manages keys.
        assert!(root.check(&req(Op::Admin, "b", b"")).is_ok());
        assert!(timed.check(&at(1_000_000)).is_ok());
    }

    #[test]
    fn revoking_a_key_revokes_what_was_narrowed_from_it_and_nothing_else() {
        let (root, secret) = CaveatedKey::generate();
        let shared = root
            .restrict(&pb::Caveat {
                nonce: b"shared".to_vec().into(),
                ..Default::default()
            })
            .expect("restrict");
        let child = shared
            .restrict(&pb::Caveat {
                disallow_deletes: true,
                ..Default::default()
            })
            .expect("restrict");
        let sibling = root
            .restrict(&pb::Caveat {
                nonce: b"sibling".to_vec().into(),
                ..Default::default()
            })
            .expect("restrict");
        let revoked = std::collections::HashSet::from([*shared.tail()]);
        let is_revoked = |t: &[u8; KEY_BYTES]| revoked.contains(t);
        assert_eq!(shared.verify(&secret, is_revoked), Err(KeyError::Revoked));
        assert_eq!(child.verify(&secret, is_revoked), Err(KeyError::Revoked));
        assert!(root.verify(&secret, is_revoked).is_ok());
        assert!(sibling.verify(&secret, is_revoked).is_ok());
    }
}
