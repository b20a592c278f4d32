//! API keys: caveated keys (see [`loam_common::macaroon`]) verified on every
//! request, their secrets, and revocations.
//!
//! The satellite keeps, per key, a random secret under the key's public
//! head ([`Table::KeySecrets`]) — never the key. A request's key is
//! verified by recomputing its MAC chain from the secret (constant-time
//! comparison at the end), every tail along the chain is looked up in
//! [`Table::Revocations`], and then every caveat is applied to what the
//! request does.
//!
//! A process remembers what it looked up ([`Remembered`]): secrets are
//! written once and never change, and a revoked tail stays revoked, so both
//! are kept; that a tail is *not* revoked is trusted for
//! [`REVOCATION_TTL`] when other processes share the database (a
//! revocation made by another process takes effect here within that
//! time), and until this process revokes it otherwise. A busy uplink's
//! requests then cost no database reads for its key.
//!
//! Keys from before caveats (32 random bytes, stored as their BLAKE3 hash
//! in [`Table::ApiKeys`]) keep working with every right; they cannot be
//! narrowed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loam_common::macaroon::{CaveatedKey, KEY_BYTES, KeyError, Op, Request};
use loam_common::orders::now_ms;
use loam_common::pb;

use crate::db::{DbError, Kv};
use crate::metainfo::{MetainfoError, ProjectId};
use crate::satellitedb::keys::{KeyStore, ProjectKey};

/// Length of a key from before caveats.
const LEGACY_KEY_BYTES: usize = 32;

/// The verified key of a request: its project, and its caveats to apply.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub project: ProjectId,
    /// `None`: a key from before caveats (unrestricted).
    pub key: Option<CaveatedKey>,
}

impl Authorized {
    /// Whether the key allows `op` at (`bucket`, `encrypted_key`).
    pub fn check(
        &self,
        op: Op,
        bucket: Option<&str>,
        encrypted_key: &[u8],
    ) -> Result<(), MetainfoError> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        key.check(&Request {
            op,
            bucket,
            encrypted_key,
            now_ms: now_ms(),
        })
        .map_err(MetainfoError::Key)
    }

    /// Whether a listing may show an entry (see [`CaveatedKey::shows`]).
    pub fn shows(&self, bucket: &str, encrypted_key: &[u8], is_prefix: bool) -> bool {
        self.key
            .as_ref()
            .is_none_or(|k| k.shows(bucket, encrypted_key, is_prefix))
    }

    /// Whether a bucket listing may show `bucket`.
    pub fn shows_bucket(&self, bucket: &str) -> bool {
        self.key.as_ref().is_none_or(|k| k.shows_bucket(bucket))
    }

    /// Whether the key may only train.
    pub fn compute_only(&self) -> bool {
        self.key.as_ref().is_some_and(|k| k.is_compute_only())
    }
}

/// How long a process trusts that a tail is not revoked when other
/// processes share the database.
pub const REVOCATION_TTL: Duration = Duration::from_secs(5);

/// Entries a process remembers of keys and of revocations, each; past it
/// it starts over.
const REMEMBERED: usize = 100_000;

/// What this process looked up of keys and revocations.
#[derive(Default)]
struct Remembered {
    /// Key head to its secret and project.
    secrets: HashMap<[u8; KEY_BYTES], ([u8; KEY_BYTES], ProjectId)>,
    /// Tail to `None` when revoked, or when it was found not revoked.
    tails: HashMap<[u8; KEY_BYTES], Option<Instant>>,
}

pub struct ApiKeys {
    store: KeyStore,
    remembered: Mutex<Remembered>,
    /// [`REVOCATION_TTL`], or none when only this process writes.
    revocation_ttl: Option<Duration>,
}

impl ApiKeys {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self {
            revocation_ttl: kv.shared().then_some(REVOCATION_TTL),
            store: KeyStore::new(kv),
            remembered: Default::default(),
        }
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Remembered> {
        // The map holds no invariant a panicking holder could break.
        self.remembered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `tail` is revoked: remembered, or read and remembered.
    fn is_revoked(&self, tail: &[u8; KEY_BYTES]) -> Result<bool, MetainfoError> {
        match self.remembered().tails.get(tail) {
            Some(None) => return Ok(true),
            Some(Some(at)) if self.revocation_ttl.is_none_or(|ttl| at.elapsed() < ttl) => {
                return Ok(false);
            }
            _ => {}
        }
        let revoked = self.store.is_revoked(tail)?;
        let mut r = self.remembered();
        if r.tails.len() >= REMEMBERED {
            r.tails.clear();
        }
        r.tails.insert(*tail, (!revoked).then(Instant::now));
        Ok(revoked)
    }

    /// The secret and project of the key with `head`, if there is one.
    fn secret_of(
        &self,
        head: &[u8; KEY_BYTES],
    ) -> Result<Option<([u8; KEY_BYTES], ProjectId)>, MetainfoError> {
        if let Some(found) = self.remembered().secrets.get(head) {
            return Ok(Some(*found));
        }
        let Some(rec) = self.record(head)? else {
            return Ok(None);
        };
        let found = Self::secret(&rec)?;
        let mut r = self.remembered();
        if r.secrets.len() >= REMEMBERED {
            r.secrets.clear();
        }
        r.secrets.insert(*head, found);
        Ok(Some(found))
    }

    /// How many tails are revoked.
    pub fn revoked_count(&self) -> Result<usize, MetainfoError> {
        Ok(self.store.revoked_count()?)
    }

    /// A new key without caveats for `project`, named `name`.
    pub fn create(&self, project: &ProjectId, name: &str) -> Result<CaveatedKey, MetainfoError> {
        let (key, secret) = CaveatedKey::generate();
        let rec = pb::ApiKeyRecord {
            version: 1,
            project_id: project.to_vec().into(),
            secret: secret.to_vec().into(),
            name: name.to_string(),
            created_unix_ms: now_ms(),
        };
        self.store.create(key.head(), &rec)?;
        Ok(key)
    }

    fn record(&self, head: &[u8]) -> Result<Option<pb::ApiKeyRecord>, MetainfoError> {
        Ok(self.store.key(head)?)
    }

    fn secret(rec: &pb::ApiKeyRecord) -> Result<([u8; KEY_BYTES], ProjectId), MetainfoError> {
        let secret = <[u8; KEY_BYTES]>::try_from(rec.secret.as_ref())
            .map_err(|_| DbError::Corrupt("api key"))?;
        let project = ProjectId::try_from(rec.project_id.as_ref())
            .map_err(|_| DbError::Corrupt("api key"))?;
        Ok((secret, project))
    }

    /// Verifies `api_key` (its whole chain, and that nothing along it is
    /// revoked); the caveats are applied by [`Authorized::check`].
    pub fn authenticate(&self, api_key: &[u8]) -> Result<Authorized, MetainfoError> {
        if api_key.len() == LEGACY_KEY_BYTES {
            let project = self
                .store
                .legacy_project(blake3::hash(api_key).as_bytes())?
                .ok_or(MetainfoError::UnknownApiKey)?;
            return Ok(Authorized { project, key: None });
        }
        let key = CaveatedKey::from_bytes(api_key).map_err(MetainfoError::Key)?;
        let (secret, project) = self
            .secret_of(key.head())?
            .ok_or(MetainfoError::Key(KeyError::Invalid))?;
        // A tail that cannot be looked up counts as revoked, and the
        // lookup's error is what the request gets.
        let failed = std::cell::Cell::new(None);
        let verified = key.verify(&secret, |t| {
            self.is_revoked(t).unwrap_or_else(|e| {
                failed.set(Some(e));
                true
            })
        });
        if let Some(e) = failed.into_inner() {
            return Err(e);
        }
        verified.map_err(MetainfoError::Key)?;
        Ok(Authorized {
            project,
            key: Some(key),
        })
    }

    /// The keys of `project`, oldest first.
    pub fn list(&self, project: &ProjectId) -> Result<Vec<pb::ApiKeyInfo>, MetainfoError> {
        let mut out = Vec::new();
        for entry in self.store.project_keys(project)? {
            let head = match entry {
                ProjectKey::Caveated(head) => head,
                ProjectKey::Legacy(_) => {
                    out.push(pb::ApiKeyInfo {
                        name: "key from before caveats (cannot be narrowed)".into(),
                        ..Default::default()
                    });
                    continue;
                }
            };
            let Some(rec) = self.record(&head)? else {
                continue;
            };
            let (secret, owner) = Self::secret(&rec)?;
            if &owner != project {
                return Err(DbError::Corrupt("project key index").into());
            }
            let tail = CaveatedKey::root_tail(&secret, &head);
            let revoked_unix_ms = self
                .store
                .revocation(&tail)?
                .map_or(0, |r| r.revoked_unix_ms.max(1));
            out.push(pb::ApiKeyInfo {
                head: head.to_vec().into(),
                name: rec.name,
                created_unix_ms: rec.created_unix_ms,
                revoked_unix_ms,
            });
        }
        out.sort_by_key(|k| k.created_unix_ms);
        Ok(out)
    }

    fn revoke_tail(&self, project: &ProjectId, tail: [u8; KEY_BYTES]) -> Result<(), MetainfoError> {
        let rec = pb::RevocationRecord {
            project_id: project.to_vec().into(),
            revoked_unix_ms: now_ms(),
        };
        self.store.revoke(&tail, &rec)?;
        self.remembered().tails.insert(tail, None);
        metrics::counter!("loam_satellite_api_keys_revoked_total").increment(1);
        Ok(())
    }

    /// Revokes `target` and every key narrowed from it, on behalf of
    /// `caller`, which must be `target` or one it was narrowed from.
    pub fn revoke(&self, caller: &Authorized, target: &[u8]) -> Result<(), MetainfoError> {
        let target_key = CaveatedKey::from_bytes(target).map_err(MetainfoError::Key)?;
        let target_auth = match self.authenticate(target) {
            Ok(a) => a,
            // Revoking twice is not an error.
            Err(MetainfoError::Key(KeyError::Revoked)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let is_parent = caller
            .key
            .as_ref()
            .is_some_and(|c| c.is_ancestor_of(&target_key));
        if target_auth.project != caller.project || !is_parent {
            return Err(MetainfoError::NotParentKey);
        }
        self.revoke_tail(&caller.project, *target_key.tail())
    }

    /// Revokes the whole key whose head starts with `head` (a unique
    /// prefix of at least 4 bytes) in `project`.
    pub fn revoke_head(&self, project: &ProjectId, head: &[u8]) -> Result<(), MetainfoError> {
        if head.len() < 4 {
            return Err(MetainfoError::Invalid("a key id is at least 8 hex digits"));
        }
        let mut found = Vec::new();
        // Only the keys whose head starts so: a handful at most.
        for (h, rec) in self.store.keys_with_head_prefix(head, usize::MAX)? {
            let (secret, owner) = Self::secret(&rec)?;
            if &owner == project {
                found.push((h, secret));
            }
        }
        match found.as_slice() {
            [(h, secret)] => self.revoke_tail(project, CaveatedKey::root_tail(secret, h)),
            [] => Err(MetainfoError::KeyNotFound),
            _ => Err(MetainfoError::Invalid(
                "the key id matches several keys; give more digits",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::db::Table;

    #[test]
    fn a_project_lists_its_own_keys_through_the_index_also_in_an_old_database() {
        let kv: Arc<dyn Kv> = Arc::new(crate::db::MemKv::default());
        let (a, b): (ProjectId, ProjectId) = ([1; 16], [2; 16]);
        // Keys stored before the index: a caveated one and one from before
        // caveats, for project a.
        let secret = [7u8; KEY_BYTES];
        let rec = pb::ApiKeyRecord {
            version: 1,
            project_id: a.to_vec().into(),
            secret: secret.to_vec().into(),
            name: "old".into(),
            created_unix_ms: 1,
        };
        kv.put(Table::KeySecrets, vec![9; KEY_BYTES], rec.encode_to_vec())
            .expect("put");
        kv.put(Table::ApiKeys, vec![3; 32], a.to_vec())
            .expect("put");
        let keys = ApiKeys::new(kv.clone());
        keys.create(&a, "new").expect("create");
        keys.create(&b, "other").expect("create");
        let names = |p: &ProjectId| -> Vec<String> {
            let mut n: Vec<String> = keys
                .list(p)
                .expect("list")
                .into_iter()
                .map(|k| k.name)
                .collect();
            n.sort();
            n
        };
        assert_eq!(
            names(&a),
            ["key from before caveats (cannot be narrowed)", "new", "old"]
        );
        assert_eq!(names(&b), ["other"]);
        assert_eq!(names(&[3; 16]), Vec::<String>::new());
    }

    #[test]
    fn a_revocation_in_one_process_is_heard_by_another_that_remembered_the_key() {
        let kv: Arc<dyn Kv> = Arc::new(crate::db::MemKv::shared());
        let (a, mut b) = (ApiKeys::new(kv.clone()), ApiKeys::new(kv.clone()));
        assert_eq!(b.revocation_ttl, Some(REVOCATION_TTL));
        let project: ProjectId = [5; 16];
        let root = a.create(&project, "root").expect("create");
        let child = root
            .restrict(&pb::Caveat {
                disallow_deletes: true,
                ..Default::default()
            })
            .expect("restrict");
        // Both processes verify the keys and remember what they read.
        for keys in [&a, &b] {
            for k in [&root, &child] {
                assert_eq!(
                    keys.authenticate(&k.to_bytes()).expect("valid").project,
                    project
                );
            }
        }
        // Within its time, b still trusts what it read...
        let by_root = a.authenticate(&root.to_bytes()).expect("root");
        a.revoke(&by_root, &child.to_bytes()).expect("revoke");
        assert!(matches!(
            a.authenticate(&child.to_bytes()),
            Err(MetainfoError::Key(KeyError::Revoked))
        ));
        assert!(b.authenticate(&child.to_bytes()).is_ok());
        // ...and once it has passed, b reads the revocation.
        b.revocation_ttl = Some(Duration::ZERO);
        assert!(matches!(
            b.authenticate(&child.to_bytes()),
            Err(MetainfoError::Key(KeyError::Revoked))
        ));
        assert!(b.authenticate(&root.to_bytes()).is_ok());
        assert_eq!(b.revoked_count().expect("count"), 1);
        // A key never seen is refused, and not remembered as anything.
        let (stranger, _) = CaveatedKey::generate();
        assert!(b.authenticate(&stranger.to_bytes()).is_err());
        assert!(!b.remembered().secrets.contains_key(stranger.head()));
        // On a database only this process writes, nothing expires.
        let alone = ApiKeys::new(Arc::new(crate::db::MemKv::default()));
        assert_eq!(alone.revocation_ttl, None);
    }
}
