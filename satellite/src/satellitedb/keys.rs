//! API keys: caveated keys' secrets by head, keys from before caveats by
//! hash, a project's keys, and revoked tails.
//!
//! The satellite never stores a key itself, only what verifies it: a
//! caveated key's head and root secret; for a key from before caveats, its
//! BLAKE3 hash. Layout in the backend: `api_key_secrets` by head
//! (protobuf), `api_keys` by hash (the project id), `project_keys` by
//! project id, kind (1: caveated, by head; 0: from before caveats, by
//! hash), `api_key_revocations` by tail (protobuf).

use std::ops::ControlFlow;
use std::sync::Arc;

use loam_common::pb;
use prost::Message;

use super::{decode, walk};
use crate::db::{Built, DbError, Kv, Op, Table};
use crate::metainfo::ProjectId;

/// The bytes of a key's head, root secret or tail.
pub const KEY_BYTES: usize = 32;

/// One of a project's keys, as its index lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectKey {
    /// A caveated key, by head.
    Caveated([u8; KEY_BYTES]),
    /// A key from before caveats, by hash.
    Legacy([u8; KEY_BYTES]),
}

fn project_key_entry(project: &[u8], key: &ProjectKey) -> Vec<u8> {
    match key {
        ProjectKey::Caveated(head) => [project, &[1], head].concat(),
        ProjectKey::Legacy(hash) => [project, &[0], hash].concat(),
    }
}

/// API keys over one of the satellite's databases.
pub struct KeyStore {
    kv: Arc<dyn Kv>,
    /// Whether this process knows the project-to-keys index is built.
    indexed: Built,
}

impl KeyStore {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self {
            kv,
            indexed: Built::default(),
        }
    }

    /// Whether other processes write this database too.
    pub fn shared(&self) -> bool {
        self.kv.shared()
    }

    /// Stores a new caveated key's record under its head, listed among its
    /// project's keys; refuses a head already used.
    pub fn create(&self, head: &[u8; KEY_BYTES], rec: &pb::ApiKeyRecord) -> Result<(), DbError> {
        self.kv.write(vec![
            Op::Expect(Table::KeySecrets, head.to_vec(), None),
            Op::Put(Table::KeySecrets, head.to_vec(), rec.encode_to_vec()),
            Op::Put(
                Table::ProjectKeys,
                project_key_entry(&rec.project_id, &ProjectKey::Caveated(*head)),
                Vec::new(),
            ),
        ])
    }

    /// The record of the caveated key with `head`.
    pub fn key(&self, head: &[u8]) -> Result<Option<pb::ApiKeyRecord>, DbError> {
        self.kv
            .get(Table::KeySecrets, head)?
            .map(|v| decode(&v, "api key"))
            .transpose()
    }

    /// The caveated keys whose heads start with `prefix` (at most `limit`).
    pub fn keys_with_head_prefix(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<([u8; KEY_BYTES], pb::ApiKeyRecord)>, DbError> {
        self.kv
            .scan(Table::KeySecrets, prefix, b"", limit)?
            .into_iter()
            .map(|(h, v)| {
                let head = <[u8; KEY_BYTES]>::try_from(h.as_slice())
                    .map_err(|_| DbError::Corrupt("api key"))?;
                Ok((head, decode(&v, "api key")?))
            })
            .collect()
    }

    /// The project of the key from before caveats with this hash.
    pub fn legacy_project(&self, hash: &[u8; KEY_BYTES]) -> Result<Option<ProjectId>, DbError> {
        self.kv
            .get(Table::ApiKeys, hash)?
            .map(|v| ProjectId::try_from(v.as_slice()).map_err(|_| DbError::Corrupt("api key")))
            .transpose()
    }

    /// The keys of `project`, in index order.
    pub fn project_keys(&self, project: &ProjectId) -> Result<Vec<ProjectKey>, DbError> {
        self.index()?;
        let mut out = Vec::new();
        walk(&*self.kv, Table::ProjectKeys, project, b"", |k, _| {
            let entry = &k[project.len()..];
            let key = entry
                .split_first()
                .and_then(|(kind, id)| Some((*kind, <[u8; KEY_BYTES]>::try_from(id).ok()?)));
            match key {
                Some((1, head)) => out.push(ProjectKey::Caveated(head)),
                Some((0, hash)) => out.push(ProjectKey::Legacy(hash)),
                _ => return Err(DbError::Corrupt("project key index")),
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    /// When `tail` was revoked, if it was.
    pub fn revocation(&self, tail: &[u8]) -> Result<Option<pb::RevocationRecord>, DbError> {
        self.kv
            .get(Table::Revocations, tail)?
            .map(|v| decode(&v, "revocation"))
            .transpose()
    }

    /// Whether `tail` is revoked (without decoding the record).
    pub fn is_revoked(&self, tail: &[u8]) -> Result<bool, DbError> {
        Ok(self.kv.get(Table::Revocations, tail)?.is_some())
    }

    pub fn revoke(
        &self,
        tail: &[u8; KEY_BYTES],
        rec: &pb::RevocationRecord,
    ) -> Result<(), DbError> {
        self.kv
            .put(Table::Revocations, tail.to_vec(), rec.encode_to_vec())
    }

    /// How many tails are revoked, counted a page at a time.
    pub fn revoked_count(&self) -> Result<usize, DbError> {
        let mut n = 0;
        walk(&*self.kv, Table::Revocations, b"", b"", |_, _| {
            n += 1;
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })?;
        Ok(n)
    }

    /// Builds the project-to-keys index of a database from before it,
    /// once.
    fn index(&self) -> Result<(), DbError> {
        self.indexed.ensure(|| {
            crate::db::index_once(&*self.kv, "project-keys", Table::KeySecrets, |head, v| {
                let rec: pb::ApiKeyRecord = decode(v, "api key")?;
                let head =
                    <[u8; KEY_BYTES]>::try_from(head).map_err(|_| DbError::Corrupt("api key"))?;
                Ok(Some(Op::Put(
                    Table::ProjectKeys,
                    project_key_entry(&rec.project_id, &ProjectKey::Caveated(head)),
                    Vec::new(),
                )))
            })?;
            crate::db::index_once(
                &*self.kv,
                "project-legacy-keys",
                Table::ApiKeys,
                |hash, project| {
                    let hash = <[u8; KEY_BYTES]>::try_from(hash)
                        .map_err(|_| DbError::Corrupt("api key"))?;
                    Ok(Some(Op::Put(
                        Table::ProjectKeys,
                        project_key_entry(project, &ProjectKey::Legacy(hash)),
                        Vec::new(),
                    )))
                },
            )
        })
    }
}

/// One suite for API keys on every backend.
#[cfg(test)]
mod tests {
    use super::*;

    fn record(project: &ProjectId, name: &str) -> pb::ApiKeyRecord {
        pb::ApiKeyRecord {
            version: 1,
            project_id: project.to_vec().into(),
            secret: vec![5; KEY_BYTES].into(),
            name: name.into(),
            created_unix_ms: 1,
        }
    }

    fn conformance(kv: Arc<dyn Kv>) {
        // A database from before the index: a caveated key and a key from
        // before caveats written without index entries.
        let p: ProjectId = [1; 16];
        kv.put(
            Table::KeySecrets,
            vec![0xaa; KEY_BYTES],
            record(&p, "old").encode_to_vec(),
        )
        .expect("put");
        kv.put(Table::ApiKeys, vec![0xbb; KEY_BYTES], p.to_vec())
            .expect("put");
        let store = KeyStore::new(kv);
        store
            .create(&[0x10; KEY_BYTES], &record(&p, "new"))
            .expect("create");
        assert!(
            matches!(
                store.create(&[0x10; KEY_BYTES], &record(&[2; 16], "thief")),
                Err(DbError::Conflict)
            ),
            "a head is used once"
        );
        store
            .create(&[0x11; KEY_BYTES], &record(&[2; 16], "other project"))
            .expect("create");
        assert_eq!(
            store.project_keys(&p).expect("keys"),
            [
                ProjectKey::Legacy([0xbb; KEY_BYTES]),
                ProjectKey::Caveated([0x10; KEY_BYTES]),
                ProjectKey::Caveated([0xaa; KEY_BYTES]),
            ]
        );
        assert_eq!(
            store
                .key(&[0x10; KEY_BYTES])
                .expect("read")
                .expect("there")
                .name,
            "new"
        );
        assert_eq!(
            store.legacy_project(&[0xbb; KEY_BYTES]).expect("read"),
            Some(p)
        );
        assert_eq!(
            store
                .keys_with_head_prefix(&[0x10, 0x10], 10)
                .expect("scan")
                .len(),
            1
        );
        assert_eq!(
            store.keys_with_head_prefix(&[0x1], 10).expect("scan").len(),
            0
        );

        assert!(!store.is_revoked(&[7; KEY_BYTES]).expect("read"));
        let rec = pb::RevocationRecord {
            project_id: p.to_vec().into(),
            revoked_unix_ms: 42,
        };
        store.revoke(&[7; KEY_BYTES], &rec).expect("revoke");
        assert!(store.is_revoked(&[7; KEY_BYTES]).expect("read"));
        assert_eq!(store.revocation(&[7; KEY_BYTES]).expect("read"), Some(rec));
        assert_eq!(store.revoked_count().expect("count"), 1);
    }

    crate::satellitedb::on_every_backend!(conformance);
}
