//! The data marketplace's listings: datasets their owners offer for
//! training, as public facts only (title, terms, price, the record count the
//! satellite counted itself, column and class names unless hidden) — never
//! a record, a key or an encrypted name.

use std::sync::Arc;

use loam_common::orders::now_ms;
use loam_common::pb;

use crate::db::{DbError, Kv};
use crate::metainfo::{Metainfo, MetainfoError, ProjectId};
use crate::satellitedb::listings::ListingStore;

/// Longest title, license and tag; most tags, columns and classes.
const MAX_TITLE: usize = 200;
const MAX_DESCRIPTION: usize = 4_000;
const MAX_TAG: usize = 40;
const MAX_TAGS: usize = 16;
const MAX_NAMES: usize = 10_000;
const MAX_NAME: usize = 200;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MarketError {
    #[error("no listing market:{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the object is not a dataset; upload it with `uplink dataset put`")]
    NotADataset,
    #[error(
        "the dataset counts no records (uploaded before records were counted); upload it again \
         with `uplink dataset put`"
    )]
    Uncounted,
    #[error("this dataset is already published as market:{0}; unpublish it first")]
    AlreadyPublished(String),
    #[error("only the listing's owner may change it")]
    NotOwner,
    #[error("{0}")]
    Closed(String),
    #[error(transparent)]
    Metainfo(#[from] MetainfoError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl MarketError {
    pub fn code(&self) -> pb::ErrorCode {
        use pb::ErrorCode as C;
        match self {
            Self::NotFound(_) => C::NotFound,
            Self::Invalid(_) => C::InvalidArgument,
            Self::NotADataset | Self::Uncounted => C::FailedPrecondition,
            Self::AlreadyPublished(_) => C::AlreadyExists,
            Self::NotOwner => C::PermissionDenied,
            Self::Closed(_) => C::FailedPrecondition,
            Self::Metainfo(e) => e.code(),
            Self::Db(_) => C::Internal,
        }
    }
}

/// A listing id as people see it.
pub fn listing_id(id: &[u8]) -> String {
    hex::encode(id)
}

fn invalid(why: impl Into<String>) -> MarketError {
    MarketError::Invalid(why.into())
}

/// Checks the owner's facts and terms of a listing.
fn validate(l: &pb::Listing) -> Result<(), MarketError> {
    let title = l.title.trim();
    if title.is_empty() || title.chars().count() > MAX_TITLE {
        return Err(invalid(format!(
            "a listing needs a title of 1 to {MAX_TITLE} characters"
        )));
    }
    if l.description.chars().count() > MAX_DESCRIPTION || l.license.chars().count() > MAX_TITLE {
        return Err(invalid(format!(
            "the description is limited to {MAX_DESCRIPTION} characters, the license to {MAX_TITLE}"
        )));
    }
    if l.tags.len() > MAX_TAGS
        || l.tags
            .iter()
            .any(|t| t.trim().is_empty() || t.chars().count() > MAX_TAG)
    {
        return Err(invalid(format!(
            "at most {MAX_TAGS} tags of 1 to {MAX_TAG} characters"
        )));
    }
    if l.columns.len() > MAX_NAMES
        || l.classes.len() > MAX_NAMES
        || l.columns
            .iter()
            .chain(&l.classes)
            .chain(std::iter::once(&l.label))
            .any(|c| c.chars().count() > MAX_NAME)
    {
        return Err(invalid("too many or too long column or class names"));
    }
    let features = l.features as usize;
    if features == 0
        || l.feature_mean.len() != features
        || l.feature_std.len() != features
        || l.feature_mean.iter().any(|m| !m.is_finite())
        || l.feature_std.iter().any(|s| !s.is_finite() || *s <= 0.0)
        || l.columns_digest.len() != 32
        || l.classes.is_empty()
    {
        return Err(invalid(
            "a listing carries its features' means and standard deviations, the digest of its \
             columns and its classes",
        ));
    }
    let terms = l.terms.clone().unwrap_or_default();
    for m in &terms.allowed_models {
        m.parse::<loam_common::compute::Architecture>()
            .map_err(|e| invalid(format!("--allow-model {m}: {e}")))?;
    }
    if !(0.0..=1.0).contains(&terms.require_verification) {
        return Err(invalid("--require-verification is a share between 0 and 1"));
    }
    if terms.expires_unix_ms != 0 && terms.expires_unix_ms <= now_ms() {
        return Err(invalid("the listing's --expires is already past"));
    }
    Ok(())
}

fn words_match(l: &pb::Listing, search: &str) -> bool {
    let text = format!(
        "{} {} {} {}",
        l.title,
        l.description,
        l.tags.join(" "),
        l.owner
    )
    .to_lowercase();
    search
        .split_whitespace()
        .all(|w| text.contains(&w.to_lowercase()))
}

/// Whether a listing takes new jobs at `now`.
pub fn is_open(l: &pb::Listing, now: i64) -> bool {
    l.unpublished_unix_ms == 0
        && l.terms
            .as_ref()
            .is_none_or(|t| t.expires_unix_ms == 0 || t.expires_unix_ms > now)
}

/// Refuses a listing that is not a model open for sale at `now`.
pub fn for_sale(l: &pb::Listing, now: i64) -> Result<(), MarketError> {
    if l.kind != "model" {
        return Err(invalid(format!(
            "market:{} is a dataset listing: train on it with `uplink train`",
            listing_id(&l.id)
        )));
    }
    if !is_open(l, now) {
        return Err(MarketError::Closed(format!(
            "market:{} is unpublished or expired: it sells no more downloads",
            listing_id(&l.id)
        )));
    }
    Ok(())
}

/// Every change to a listing is a transaction on its record (and on the
/// index of open listings), so several satellite processes can serve the
/// market at once: one object is listed once, no count is lost.
pub struct Market {
    store: ListingStore,
}

impl Market {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self {
            store: ListingStore::new(kv),
        }
    }

    /// The listings as stored (for operators' tools and tests).
    pub fn listings(&self) -> &ListingStore {
        &self.store
    }

    /// A listing's record (the dataset behind it).
    pub fn record(&self, id: &[u8]) -> Result<pb::ListingRecord, MarketError> {
        self.store
            .listing(id)?
            .ok_or_else(|| MarketError::NotFound(listing_id(id)))
    }

    /// Lists `rec` (a new listing `id`) unless its object is listed
    /// already.
    fn list_new(&self, id: &[u8], rec: &pb::ListingRecord) -> Result<(), MarketError> {
        self.store
            .create(id, rec)?
            .map_err(|existing| MarketError::AlreadyPublished(listing_id(&existing)))
    }

    /// Changes listing `id` with `f` in one transaction; returns what `f`
    /// returns.
    fn change<T>(
        &self,
        id: &[u8],
        f: impl FnMut(&mut pb::ListingRecord) -> Result<T, MarketError>,
    ) -> Result<T, MarketError> {
        self.store
            .update(id, f)?
            .ok_or_else(|| MarketError::NotFound(listing_id(id)))
    }

    /// Publishes the dataset at (`req.bucket`, `req.encrypted_key`) of
    /// `project`: the owner's facts, checked, and the record count the
    /// satellite counts from the committed data rows.
    pub fn publish(
        &self,
        metainfo: &Metainfo,
        project: &ProjectId,
        req: &pb::PublishListingRequest,
    ) -> Result<pb::Listing, MarketError> {
        let given = req.listing.clone().unwrap_or_default();
        validate(&given)?;
        let obj = metainfo.object_record(project, &req.bucket, &req.encrypted_key)?;
        if !obj.dataset {
            return Err(MarketError::NotADataset);
        }
        let rows = crate::compute::data_rows(metainfo, &obj).map_err(|_| MarketError::Uncounted)?;
        let records = rows
            .iter()
            .try_fold(0u64, |acc, r| acc.checked_add(r.1))
            .ok_or(DbError::Overflow("a dataset's record count"))?;
        if records == 0 {
            return Err(MarketError::Uncounted);
        }
        crate::compute::check_task_keys(&rows, &req.tasks)
            .map_err(|e| invalid(format!("the listing's sealed keys: {e}")))?;
        if req.key_tag.len() != 16 {
            return Err(invalid("the listing's keys carry no 16-byte tag"));
        }
        let mut terms = given.terms.clone().unwrap_or_default();
        terms.allowed_models = terms
            .allowed_models
            .iter()
            .filter_map(|m| m.parse::<loam_common::compute::Architecture>().ok())
            .map(|a| a.to_string())
            .collect();
        let id: [u8; 8] = rand::random();
        let listing = pb::Listing {
            id: id.to_vec().into(),
            kind: "dataset".into(),
            owner: metainfo.project_info(project)?.name,
            title: given.title.trim().to_string(),
            tags: given.tags.iter().map(|t| t.trim().to_lowercase()).collect(),
            records,
            created_unix_ms: now_ms(),
            unpublished_unix_ms: 0,
            jobs: 0,
            last_used_unix_ms: 0,
            tasks: rows.len() as u32,
            keys_sealed_unix_ms: now_ms(),
            terms: Some(terms),
            ..given
        };
        let rec = pb::ListingRecord {
            version: 1,
            listing: Some(listing.clone()),
            project_id: project.to_vec().into(),
            bucket: req.bucket.clone(),
            encrypted_key: req.encrypted_key.clone(),
            tasks: req.tasks.clone(),
            row_records: rows.iter().map(|r| r.1).collect(),
            key_tag: req.key_tag.clone(),
            ..Default::default()
        };
        self.list_new(&id, &rec)?;
        metrics::counter!("loam_satellite_listings_published_total").increment(1);
        Ok(listing)
    }

    /// Publishes the model object at (`req.bucket`, `req.encrypted_key`):
    /// its public facts, and the read-only grant each buyer receives (the
    /// satellite can read the model with it too: a model listing is public
    /// to the satellite and to every buyer).
    pub fn publish_model(
        &self,
        metainfo: &Metainfo,
        project: &ProjectId,
        req: &pb::PublishListingRequest,
    ) -> Result<pb::Listing, MarketError> {
        const MAX_GRANT: usize = 16_384;
        let given = req.listing.clone().unwrap_or_default();
        validate(&given)?;
        if req.model_grant.is_empty()
            || req.model_grant.len() > MAX_GRANT
            || req.model_key.is_empty()
            || req.model_key.len() > 1024
        {
            return Err(invalid(
                "a model listing carries its buyers' grant and the model's path",
            ));
        }
        given
            .model
            .parse::<loam_common::compute::Architecture>()
            .map_err(|e| invalid(format!("the model: {e}")))?;
        metainfo.object_record(project, &req.bucket, &req.encrypted_key)?;
        let id: [u8; 8] = rand::random();
        let now = now_ms();
        let listing = pb::Listing {
            id: id.to_vec().into(),
            kind: "model".into(),
            owner: metainfo.project_info(project)?.name,
            title: given.title.trim().to_string(),
            tags: given.tags.iter().map(|t| t.trim().to_lowercase()).collect(),
            created_unix_ms: now,
            unpublished_unix_ms: 0,
            jobs: 0,
            downloads: 0,
            last_used_unix_ms: 0,
            tasks: 0,
            keys_sealed_unix_ms: 0,
            price_per_1000: 0,
            ..given
        };
        let rec = pb::ListingRecord {
            version: 1,
            listing: Some(listing.clone()),
            project_id: project.to_vec().into(),
            bucket: req.bucket.clone(),
            encrypted_key: req.encrypted_key.clone(),
            model_grant: req.model_grant.clone(),
            model_key: req.model_key.clone(),
            ..Default::default()
        };
        self.list_new(&id, &rec)?;
        metrics::counter!("loam_satellite_listings_published_total").increment(1);
        Ok(listing)
    }

    /// A model listing open for sale, counted as downloaded once more.
    pub fn sell_model(&self, id: &[u8], now: i64) -> Result<pb::ListingRecord, MarketError> {
        self.change(id, |rec| {
            let listing = rec.listing.get_or_insert_with(Default::default);
            for_sale(listing, now)?;
            listing.downloads = listing.downloads.saturating_add(1);
            listing.last_used_unix_ms = now;
            Ok(rec.clone())
        })
    }

    /// Takes a listing off the market: no new jobs (running ones finish).
    pub fn unpublish(&self, project: &ProjectId, id: &[u8]) -> Result<pb::Listing, MarketError> {
        // Off the market, the listing leaves the open index in the same
        // transaction.
        self.change(id, |rec| {
            if rec.project_id.as_ref() != project {
                return Err(MarketError::NotOwner);
            }
            let listing = rec.listing.get_or_insert_with(Default::default);
            if listing.unpublished_unix_ms == 0 {
                listing.unpublished_unix_ms = now_ms();
            }
            Ok(listing.clone())
        })
    }

    /// Replaces a listing's sealed keys with ones the owner sealed again
    /// (to the nodes a fresh plan names).
    pub fn reseal(
        &self,
        metainfo: &Metainfo,
        project: &ProjectId,
        req: &pb::ResealListingRequest,
    ) -> Result<pb::Listing, MarketError> {
        let not_published =
            || invalid("the dataset is not published; run `uplink dataset publish`");
        if self
            .store
            .open_listing(project, &req.bucket, &req.encrypted_key)?
            .is_none()
        {
            return Err(not_published());
        }
        let obj = metainfo.object_record(project, &req.bucket, &req.encrypted_key)?;
        let rows = crate::compute::data_rows(metainfo, &obj).map_err(|_| MarketError::Uncounted)?;
        crate::compute::check_task_keys(&rows, &req.tasks)
            .map_err(|e| invalid(format!("the listing's sealed keys: {e}")))?;
        if req.key_tag.len() != 16 {
            return Err(invalid("the listing's keys carry no 16-byte tag"));
        }
        self.store
            .update_open(project, &req.bucket, &req.encrypted_key, |rec| {
                rec.tasks = req.tasks.clone();
                rec.key_tag = req.key_tag.clone();
                rec.row_records = rows.iter().map(|r| r.1).collect();
                let listing = rec.listing.get_or_insert_with(Default::default);
                listing.keys_sealed_unix_ms = now_ms();
                listing.tasks = rows.len() as u32;
                Ok::<_, MarketError>(listing.clone())
            })?
            .ok_or_else(not_published)
    }

    /// Counts a job submitted on a listing.
    pub fn record_job(&self, id: &[u8], now: i64) -> Result<(), MarketError> {
        self.change(id, |rec| {
            let listing = rec.listing.get_or_insert_with(Default::default);
            listing.jobs = listing.jobs.saturating_add(1);
            listing.last_used_unix_ms = now;
            Ok(())
        })
    }

    /// Listings of `project`, published or not.
    pub fn owned(&self, project: &ProjectId) -> Result<Vec<pb::ListingRecord>, MarketError> {
        Ok(self.store.owned(project)?)
    }

    /// One listing, published or not.
    pub fn get(&self, id: &[u8]) -> Result<pb::Listing, MarketError> {
        Ok(self.record(id)?.listing.unwrap_or_default())
    }

    /// Open listings (all with `req.all`) matching the tag and words,
    /// oldest first.
    pub fn list(&self, req: &pb::ListListingsRequest) -> Result<Vec<pb::Listing>, MarketError> {
        let now = now_ms();
        let tag = req.tag.trim().to_lowercase();
        let mut out: Vec<pb::Listing> = Vec::new();
        self.store.for_each(|r| {
            out.extend(
                r.listing
                    .filter(|l| req.all || is_open(l, now))
                    .filter(|l| tag.is_empty() || l.tags.contains(&tag))
                    .filter(|l| words_match(l, &req.search)),
            );
            Ok::<_, MarketError>(())
        })?;
        out.sort_by_key(|l| l.created_unix_ms);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::db::Table;

    fn listing(
        id: u8,
        kind: &str,
        project: ProjectId,
        key: &[u8],
        open: bool,
    ) -> pb::ListingRecord {
        pb::ListingRecord {
            version: 1,
            listing: Some(pb::Listing {
                id: vec![id; 8].into(),
                kind: kind.into(),
                unpublished_unix_ms: if open { 0 } else { 1 },
                ..Default::default()
            }),
            project_id: project.to_vec().into(),
            bucket: "b".into(),
            encrypted_key: key.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn counts_from_many_processes_are_not_lost() {
        let kv: Arc<dyn Kv> = Arc::new(crate::db::MemKv::default());
        let rec = listing(1, "model", [3; 16], b"m", true);
        kv.put(Table::Listings, vec![1; 8], rec.encode_to_vec())
            .expect("put");
        // Four "processes", each its own Market on the one database.
        std::thread::scope(|s| {
            for _ in 0..4 {
                let market = Market::new(kv.clone());
                s.spawn(move || {
                    for i in 0..50 {
                        market.record_job(&[1; 8], i).expect("job");
                        market.sell_model(&[1; 8], i).expect("sale");
                    }
                });
            }
        });
        let got = Market::new(kv).get(&[1; 8]).expect("listing");
        assert_eq!((got.jobs, got.downloads), (200, 200));
    }

    #[test]
    fn open_listings_of_an_old_database_are_found_through_an_index_built_once() {
        let kv: Arc<dyn Kv> = Arc::new(crate::db::MemKv::default());
        let project = [4; 16];
        // Stored before the index: one open listing, one unpublished.
        for rec in [
            listing(1, "dataset", project, b"open", true),
            listing(2, "dataset", project, b"closed", false),
        ] {
            let id = rec.listing.as_ref().expect("listing").id.to_vec();
            kv.put(Table::Listings, id, rec.encode_to_vec())
                .expect("put");
        }
        let market = Market::new(kv.clone());
        let open_of = |key: &[u8]| market.store.open_listing(&project, "b", key).expect("read");
        assert_eq!(open_of(b"open"), Some(vec![1; 8]));
        assert_eq!(open_of(b"closed"), None);
        // Only the owner unpublishes; then the object is free to list again.
        assert!(matches!(
            market.unpublish(&[9; 16], &[1; 8]),
            Err(MarketError::NotOwner)
        ));
        market.unpublish(&project, &[1; 8]).expect("unpublish");
        assert_eq!(open_of(b"open"), None);
        let again = listing(3, "dataset", project, b"open", true);
        market.list_new(&[3; 8], &again).expect("list again");
        assert_eq!(open_of(b"open"), Some(vec![3; 8]));
        assert!(matches!(
            market.list_new(&[4; 8], &again),
            Err(MarketError::AlreadyPublished(_))
        ));
        assert_eq!(market.owned(&project).expect("owned").len(), 3);
    }
}
