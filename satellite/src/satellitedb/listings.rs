//! Marketplace listings, the index of each object's open listing, and the
//! index of each project's listings.
//!
//! Every change is a transaction on the listing's record and on the open
//! listing index, so one object is listed once and no count is lost, however
//! many processes serve the market. Layout in the backend: `listings` by id
//! (protobuf); in `meta`, `listing-of:` + project id + bucket + 0 + key (the
//! open listing's id) and `project-listing:` + project id + listing id.

use std::ops::ControlFlow;
use std::sync::Arc;

use loam_common::pb;
use prost::Message;

use super::{decode, walk};
use crate::db::{Built, DbError, Kv, Op, Table, Txn, transact};
use crate::metainfo::ProjectId;

fn open_key(project: &[u8], bucket: &str, key: &[u8]) -> Vec<u8> {
    [
        b"listing-of:".as_slice(),
        project,
        bucket.as_bytes(),
        &[0],
        key,
    ]
    .concat()
}

const PROJECT_PREFIX: &[u8] = b"project-listing:";

fn project_key(project: &[u8], id: &[u8]) -> Vec<u8> {
    [PROJECT_PREFIX, project, id].concat()
}

/// Whether a record is on the market (not taken off by its owner).
pub fn is_published(rec: &pb::ListingRecord) -> bool {
    rec.listing
        .as_ref()
        .is_some_and(|l| l.unpublished_unix_ms == 0)
}

fn open_key_of(rec: &pb::ListingRecord) -> Vec<u8> {
    open_key(&rec.project_id, &rec.bucket, &rec.encrypted_key)
}

/// Listings over one of the satellite's databases.
pub struct ListingStore {
    kv: Arc<dyn Kv>,
    /// Whether this process knows the indexes are built.
    indexed: Built,
}

impl ListingStore {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self {
            kv,
            indexed: Built::default(),
        }
    }

    pub fn listing(&self, id: &[u8]) -> Result<Option<pb::ListingRecord>, DbError> {
        self.kv
            .get(Table::Listings, id)?
            .map(|v| decode(&v, "listing"))
            .transpose()
    }

    /// The id of the open listing of `project`'s object at (`bucket`,
    /// `key`).
    pub fn open_listing(
        &self,
        project: &ProjectId,
        bucket: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, DbError> {
        self.index()?;
        self.kv.get(Table::Meta, &open_key(project, bucket, key))
    }

    /// Stores the new listing `id` unless its object has an open listing
    /// already (whose id is then the error's answer).
    pub fn create(
        &self,
        id: &[u8],
        rec: &pb::ListingRecord,
    ) -> Result<Result<(), Vec<u8>>, DbError> {
        self.index()?;
        transact(self.kv.as_ref(), |txn| {
            if let Some(existing) = txn.get(Table::Meta, &open_key_of(rec))? {
                return Ok(Err(existing));
            }
            if txn.get(Table::Listings, id)?.is_some() {
                return Err(DbError::Corrupt("a listing id used twice"));
            }
            txn.put(Table::Listings, id.to_vec(), rec.encode_to_vec());
            if is_published(rec) {
                txn.put(Table::Meta, open_key_of(rec), id.to_vec());
            }
            txn.put(Table::Meta, project_key(&rec.project_id, id), Vec::new());
            Ok(Ok(()))
        })
    }

    /// Changes listing `id` with `change` in one transaction (`None`: no
    /// such listing). A listing taken off the market leaves the open
    /// index. `change` may run several times; it keeps the listing's
    /// object and project.
    pub fn update<T, E: From<DbError>>(
        &self,
        id: &[u8],
        mut change: impl FnMut(&mut pb::ListingRecord) -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        self.index()?;
        transact(self.kv.as_ref(), |txn| self.update_in(txn, id, &mut change))
    }

    fn update_in<T, E: From<DbError>>(
        &self,
        txn: &mut Txn<'_>,
        id: &[u8],
        change: &mut impl FnMut(&mut pb::ListingRecord) -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        let Some(v) = txn.get(Table::Listings, id)? else {
            return Ok(None);
        };
        let mut rec: pb::ListingRecord = decode(&v, "listing")?;
        let (open, project) = (open_key_of(&rec), rec.project_id.clone());
        let out = change(&mut rec)?;
        if open_key_of(&rec) != open || rec.project_id != project {
            return Err(E::from(DbError::Corrupt("a listing's object changed")));
        }
        if !is_published(&rec) && txn.get(Table::Meta, &open)?.as_deref() == Some(id) {
            txn.delete(Table::Meta, open);
        }
        txn.put(Table::Listings, id.to_vec(), rec.encode_to_vec());
        Ok(Some(out))
    }

    /// [`Self::update`] on the open listing of `project`'s object at
    /// (`bucket`, `key`), found in the same transaction (`None`: not
    /// listed).
    pub fn update_open<T, E: From<DbError>>(
        &self,
        project: &ProjectId,
        bucket: &str,
        key: &[u8],
        mut change: impl FnMut(&mut pb::ListingRecord) -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        self.index()?;
        transact(self.kv.as_ref(), |txn| {
            let Some(id) = txn.get(Table::Meta, &open_key(project, bucket, key))? else {
                return Ok(None);
            };
            self.update_in(txn, &id, &mut change)
        })
    }

    /// The listings of `project`, published or not, through its index.
    pub fn owned(&self, project: &ProjectId) -> Result<Vec<pb::ListingRecord>, DbError> {
        self.index()?;
        let prefix = [PROJECT_PREFIX, project.as_slice()].concat();
        let mut ids = Vec::new();
        walk(&*self.kv, Table::Meta, &prefix, b"", |k, _| {
            ids.push(k[prefix.len()..].to_vec());
            Ok::<_, DbError>(ControlFlow::Continue(()))
        })?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.listing(&id)?);
        }
        Ok(out)
    }

    /// Calls `f` with every listing, a page at a time.
    pub fn for_each<E: From<DbError>>(
        &self,
        mut f: impl FnMut(pb::ListingRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        walk(&*self.kv, Table::Listings, b"", b"", |_, v| {
            f(decode(&v, "listing")?)?;
            Ok(ControlFlow::Continue(()))
        })
    }

    /// Builds the indexes of a database from before them, once.
    fn index(&self) -> Result<(), DbError> {
        self.indexed.ensure(|| {
            crate::db::index_once(&*self.kv, "listings-open", Table::Listings, |id, v| {
                let rec: pb::ListingRecord = decode(v, "listing")?;
                Ok(
                    is_published(&rec)
                        .then(|| Op::Put(Table::Meta, open_key_of(&rec), id.to_vec())),
                )
            })?;
            crate::db::index_once(
                &*self.kv,
                "listings-of-project",
                Table::Listings,
                |id, v| {
                    let rec: pb::ListingRecord = decode(v, "listing")?;
                    Ok(Some(Op::Put(
                        Table::Meta,
                        project_key(&rec.project_id, id),
                        Vec::new(),
                    )))
                },
            )
        })
    }
}

/// One suite for listings on every backend; two stores on one database
/// stand for two satellite processes.
#[cfg(test)]
mod tests {
    use super::*;

    fn record(project: ProjectId, key: &[u8], open: bool) -> pb::ListingRecord {
        pb::ListingRecord {
            version: 1,
            listing: Some(pb::Listing {
                unpublished_unix_ms: if open { 0 } else { 1 },
                ..Default::default()
            }),
            project_id: project.to_vec().into(),
            bucket: "b".into(),
            encrypted_key: key.to_vec().into(),
            ..Default::default()
        }
    }

    fn conformance(kv: Arc<dyn Kv>) {
        let (p, q): (ProjectId, ProjectId) = ([1; 16], [2; 16]);
        // A database from before the indexes: one open, one closed.
        kv.put(
            Table::Listings,
            vec![1; 8],
            record(p, b"old", true).encode_to_vec(),
        )
        .expect("put");
        kv.put(
            Table::Listings,
            vec![2; 8],
            record(p, b"gone", false).encode_to_vec(),
        )
        .expect("put");
        let (a, b) = (ListingStore::new(kv.clone()), ListingStore::new(kv.clone()));
        assert_eq!(
            a.open_listing(&p, "b", b"old").expect("read"),
            Some(vec![1; 8])
        );
        assert_eq!(a.open_listing(&p, "b", b"gone").expect("read"), None);
        // One open listing per object.
        assert_eq!(
            b.create(&[3; 8], &record(p, b"old", true)).expect("create"),
            Err(vec![1; 8])
        );
        assert_eq!(
            b.create(&[4; 8], &record(p, b"new", true)).expect("create"),
            Ok(())
        );
        assert_eq!(
            b.create(&[5; 8], &record(q, b"new", true)).expect("create"),
            Ok(())
        );
        let mut owned: Vec<_> = a
            .owned(&p)
            .expect("owned")
            .into_iter()
            .map(|r| r.encrypted_key.to_vec())
            .collect();
        owned.sort();
        assert_eq!(owned, [b"gone".to_vec(), b"new".to_vec(), b"old".to_vec()]);
        assert_eq!(a.owned(&q).expect("owned").len(), 1);

        // Counts from both processes at once all land.
        std::thread::scope(|s| {
            for store in [&a, &b, &a, &b] {
                s.spawn(move || {
                    for _ in 0..25 {
                        store
                            .update(&[4; 8], |r| {
                                let l = r.listing.get_or_insert_with(Default::default);
                                l.jobs += 1;
                                Ok::<_, DbError>(())
                            })
                            .expect("update")
                            .expect("there");
                    }
                });
            }
        });
        assert_eq!(
            a.listing(&[4; 8])
                .expect("read")
                .expect("there")
                .listing
                .expect("l")
                .jobs,
            100
        );
        assert!(
            a.update(&[9; 8], |_| Ok::<_, DbError>(()))
                .expect("update")
                .is_none()
        );
        // Taken off the market: out of the open index, and the object can
        // be listed again.
        b.update_open(&p, "b", b"new", |r| {
            r.listing
                .get_or_insert_with(Default::default)
                .unpublished_unix_ms = 7;
            Ok::<_, DbError>(())
        })
        .expect("unpublish")
        .expect("was open");
        assert_eq!(a.open_listing(&p, "b", b"new").expect("read"), None);
        assert!(
            a.update_open(&p, "b", b"new", |_| Ok::<_, DbError>(()))
                .expect("update")
                .is_none()
        );
        assert_eq!(
            a.create(&[6; 8], &record(p, b"new", true)).expect("create"),
            Ok(())
        );
        // A listing keeps its object.
        let moved = a.update(&[6; 8], |r| {
            r.encrypted_key = b"elsewhere".to_vec().into();
            Ok::<_, DbError>(())
        });
        assert!(matches!(moved, Err(DbError::Corrupt(_))));
        let mut all = 0;
        a.for_each(|_| {
            all += 1;
            Ok::<_, DbError>(())
        })
        .expect("walk");
        assert_eq!(all, 5);
    }

    crate::satellitedb::on_every_backend!(conformance);
}
