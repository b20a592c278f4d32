//! Projects: their records, the index by name, and monthly egress.
//!
//! A project is created once per name however many processes are asked at
//! once ([`ProjectStore::create`] expects the name free); its record and
//! its egress counters change in transactions, so concurrent changes from
//! several processes all land. Layout in the backend: `projects` by id
//! (protobuf), `project_names` by name (the id), `project_egress` by id and
//! `YYYY-MM` (big-endian bytes).

use std::sync::Arc;

use loam_common::pb;
use prost::Message;

use super::decode;
use crate::db::{Built, DbError, Kv, Op, Table, transact};
use crate::metainfo::ProjectId;

/// Projects over one of the satellite's databases.
pub struct ProjectStore {
    kv: Arc<dyn Kv>,
    /// Whether this process knows the name index is built.
    names_indexed: Built,
}

fn egress_key(id: &ProjectId, month: &str) -> Vec<u8> {
    [id.as_slice(), month.as_bytes()].concat()
}

fn decode_bytes(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes)
}

impl ProjectStore {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self {
            kv,
            names_indexed: Built::default(),
        }
    }

    pub fn project(&self, id: &ProjectId) -> Result<Option<pb::ProjectRecord>, DbError> {
        self.kv
            .get(Table::Projects, id)?
            .map(|v| decode(&v, "project"))
            .transpose()
    }

    /// The project called `name`, through the name index.
    pub fn find(&self, name: &str) -> Result<Option<(ProjectId, pb::ProjectRecord)>, DbError> {
        self.index_names()?;
        let Some(id) = self.kv.get(Table::ProjectNames, name.as_bytes())? else {
            return Ok(None);
        };
        let id: ProjectId = id
            .as_slice()
            .try_into()
            .map_err(|_| DbError::Corrupt("project name index"))?;
        match self.project(&id)? {
            Some(rec) if rec.name == name => Ok(Some((id, rec))),
            _ => Err(DbError::Corrupt("project name index")),
        }
    }

    /// Stores a new project `id` unless its name is taken (in this process
    /// or any other): returns whether it did.
    pub fn create(&self, id: &ProjectId, rec: &pb::ProjectRecord) -> Result<bool, DbError> {
        self.index_names()?;
        let name = rec.name.as_bytes().to_vec();
        let created = self.kv.write(vec![
            Op::Expect(Table::ProjectNames, name.clone(), None),
            Op::Expect(Table::Projects, id.to_vec(), None),
            Op::Put(Table::Projects, id.to_vec(), rec.encode_to_vec()),
            Op::Put(Table::ProjectNames, name, id.to_vec()),
        ]);
        match created {
            Ok(()) => Ok(true),
            Err(DbError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Changes project `id`'s record in one transaction (`None`: no such
    /// project). `change` may run several times; it must keep the name.
    pub fn update<E: From<DbError>>(
        &self,
        id: &ProjectId,
        mut change: impl FnMut(pb::ProjectRecord) -> Result<pb::ProjectRecord, E>,
    ) -> Result<Option<pb::ProjectRecord>, E> {
        transact(self.kv.as_ref(), |txn| {
            let Some(v) = txn.get(Table::Projects, id)? else {
                return Ok(None);
            };
            let old: pb::ProjectRecord = decode(&v, "project")?;
            let name = old.name.clone();
            let new = change(old)?;
            if new.name != name {
                return Err(E::from(DbError::Corrupt("a project's name changed")));
            }
            txn.put(Table::Projects, id.to_vec(), new.encode_to_vec());
            Ok(Some(new))
        })
    }

    /// Download bytes counted against project `id` in `month`.
    pub fn egress(&self, id: &ProjectId, month: &str) -> Result<u64, DbError> {
        Ok(decode_bytes(
            self.kv.get(Table::ProjectEgress, &egress_key(id, month))?,
        ))
    }

    /// Changes the month's egress count in one transaction: `change` gets
    /// the bytes counted so far and returns the new count (or refuses).
    pub fn update_egress<E: From<DbError>>(
        &self,
        id: &ProjectId,
        month: &str,
        mut change: impl FnMut(u64) -> Result<u64, E>,
    ) -> Result<u64, E> {
        let key = egress_key(id, month);
        transact(self.kv.as_ref(), |txn| {
            let used = decode_bytes(txn.get(Table::ProjectEgress, &key)?);
            let total = change(used)?;
            txn.put(
                Table::ProjectEgress,
                key.clone(),
                total.to_be_bytes().to_vec(),
            );
            Ok(total)
        })
    }

    /// Builds the name index of a database from before it, once.
    fn index_names(&self) -> Result<(), DbError> {
        self.names_indexed.ensure(|| {
            crate::db::index_once(&*self.kv, "project-names", Table::Projects, |k, v| {
                let rec: pb::ProjectRecord = decode(v, "project")?;
                Ok(Some(Op::Put(
                    Table::ProjectNames,
                    rec.name.into_bytes(),
                    k.to_vec(),
                )))
            })
        })
    }
}

/// One suite for projects on every backend; two stores on one database
/// stand for two satellite processes.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::satellitedb::backends;

    fn record(name: &str) -> pb::ProjectRecord {
        pb::ProjectRecord {
            version: 1,
            name: name.into(),
            ..Default::default()
        }
    }

    fn conformance(a: &ProjectStore, b: &ProjectStore) {
        assert!(a.find("alpha").expect("find").is_none());
        assert!(a.create(&[1; 16], &record("alpha")).expect("create"));
        // The name is taken, in the other process too; nothing of the
        // second project is stored.
        assert!(!b.create(&[2; 16], &record("alpha")).expect("taken"));
        assert!(b.project(&[2; 16]).expect("read").is_none());
        let (id, rec) = b.find("alpha").expect("find").expect("there");
        assert_eq!((id, rec.name.as_str()), ([1; 16], "alpha"));
        // An id is used once.
        assert!(!a.create(&[1; 16], &record("beta")).expect("id taken"));
        assert!(a.find("beta").expect("find").is_none());

        // Changes from both processes at once all land.
        std::thread::scope(|s| {
            for (store, field) in [(a, 0), (b, 1)] {
                s.spawn(move || {
                    for _ in 0..30 {
                        store
                            .update(&[1; 16], |mut r| {
                                if field == 0 {
                                    r.storage_limit += 1;
                                } else {
                                    r.egress_limit += 1;
                                }
                                Ok::<_, DbError>(r)
                            })
                            .expect("update");
                        store
                            .update_egress(&[1; 16], "2026-12", |used| Ok::<_, DbError>(used + 2))
                            .expect("egress");
                    }
                });
            }
        });
        let rec = a.project(&[1; 16]).expect("read").expect("there");
        assert_eq!((rec.storage_limit, rec.egress_limit), (30, 30));
        assert_eq!(b.egress(&[1; 16], "2026-12").expect("egress"), 120);
        assert_eq!(b.egress(&[1; 16], "2026-11").expect("egress"), 0);
        // A refused change stores nothing; an unknown project is none.
        let refused = a.update_egress(&[1; 16], "2026-12", |_| Err(DbError::Overflow("egress")));
        assert!(refused.is_err());
        assert_eq!(a.egress(&[1; 16], "2026-12").expect("egress"), 120);
        assert!(
            a.update(&[3; 16], Ok::<_, DbError>)
                .expect("unknown")
                .is_none()
        );
        let renamed = a.update(&[1; 16], |mut r| {
            r.name = "gamma".into();
            Ok::<_, DbError>(r)
        });
        assert!(renamed.is_err(), "the name index would go stale");
    }

    /// A database from before the name index finds its projects once the
    /// index is built.
    fn old_database(kv: Arc<dyn Kv>) {
        kv.put(Table::Projects, vec![7; 16], record("old").encode_to_vec())
            .expect("put");
        let store = ProjectStore::new(kv);
        assert_eq!(store.find("old").expect("find").expect("found").0, [7; 16]);
    }

    fn run(connect: &dyn Fn() -> Arc<dyn Kv>, old: Arc<dyn Kv>) {
        conformance(&ProjectStore::new(connect()), &ProjectStore::new(connect()));
        old_database(old);
    }

    #[test]
    fn memory_backend() {
        let kv = backends::memory();
        run(&|| kv.clone(), backends::memory());
    }

    #[test]
    fn rocksdb_backend() {
        backends::rocksdb(|kv| backends::rocksdb(|old| run(&|| kv.clone(), old)));
    }

    #[test]
    fn postgres_backend() {
        backends::postgres(|connect| backends::postgres(|old| run(connect, old())));
    }
}
