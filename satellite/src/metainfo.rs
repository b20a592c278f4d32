//! Metainfo: projects, API keys, buckets, objects and segments, and the
//! order limits handed out for their pieces.
//!
//! The satellite stores only what the uplink gives it: encrypted object
//! keys, encrypted metadata, wrapped segment keys, and which node holds
//! which piece. Upload is begin-object → (begin-segment → commit-segment)*
//! → commit-object; an object becomes visible only at commit.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use loam_common::erasure::RedundancyScheme;
use loam_common::orders::{OrderLimit, PieceAction, PieceHash, PieceId, SerialNumber, now_ms};
use loam_common::{Identity, KeyPair, NodeId, pb};
use prost::Message;

use crate::db::{DbError, Kv};
use crate::overlay::{Overlay, OverlayError};
use crate::satellitedb::Stored;
use crate::satellitedb::metabase::{
    Batch, Metabase, ObjectLocation, ObjectScope, Receipt, SegmentPosition,
};
use crate::satellitedb::projects::ProjectStore;

/// A project's id.
pub type ProjectId = [u8; 16];

/// Most pending uploads one `list_pending` answer holds.
pub const MAX_PENDING_LISTED: usize = 10_000;

/// Longest encrypted object key the satellite stores. Keys are sealed per
/// path component, so this allows plaintext keys of well over 16 KiB.
pub const MAX_ENCRYPTED_KEY_LEN: usize = 64 << 10;

/// Largest encrypted object metadata the satellite stores.
pub const MAX_ENCRYPTED_METADATA_LEN: usize = 64 << 10;

/// Largest sealed part record a multipart segment carries.
pub const MAX_PART_INFO_LEN: usize = 1 << 10;

/// Most segments one `list_upload_segments` answer holds.
pub const MAX_UPLOAD_SEGMENTS_LISTED: usize = 1000;

/// Bytes of items one listing page carries at most (encoded). Together
/// with the key and metadata limits this keeps every listing reply well
/// under the wire's message cap, whatever the keys look like.
pub const LIST_PAGE_BYTES: usize = 512 << 10;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetainfoError {
    #[error("unknown API key")]
    UnknownApiKey,
    #[error("{0}")]
    Key(loam_common::macaroon::KeyError),
    #[error("only the key a grant was narrowed from (or the project's owner) can revoke it")]
    NotParentKey,
    #[error("no such API key in this project")]
    KeyNotFound,
    #[error("bucket {0:?} not found")]
    BucketNotFound(String),
    #[error("bucket {0:?} already exists")]
    BucketExists(String),
    #[error("bucket {0:?} is not empty")]
    BucketNotEmpty(String),
    #[error("invalid bucket name {name:?}: {why}")]
    BadBucketName { name: String, why: &'static str },
    #[error("project {0:?} not found")]
    ProjectNotFound(String),
    #[error(
        "project storage limit reached: {used} of {limit} bytes stored; delete objects or ask \
         the satellite operator to raise the limit"
    )]
    StorageLimit { used: u64, limit: u64 },
    #[error(
        "project download (egress) limit for {month} reached: {used} of {limit} bytes; it \
         resets next month, or ask the satellite operator to raise it"
    )]
    EgressLimit {
        used: u64,
        limit: u64,
        month: String,
    },
    #[error("object not found")]
    ObjectNotFound,
    #[error("upload not found or already committed")]
    UploadNotFound,
    #[error("segment {0} was not begun or was already committed")]
    SegmentNotBegun(u32),
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    #[error("segment commit has {got} valid pieces, needs {need}")]
    TooFewPieces { got: usize, need: usize },
    #[error("piece {num} from node {node} is invalid: {why}")]
    BadPiece {
        num: u32,
        node: String,
        why: &'static str,
    },
    #[error(
        "the encrypted object key is {len} bytes, over the satellite's {max}-byte limit; use a \
         shorter key"
    )]
    KeyTooLong { len: usize, max: usize },
    #[error("inline data of {size} bytes exceeds the {max}-byte limit")]
    InlineTooLarge { size: usize, max: usize },
    #[error("the object is not a dataset; upload it with `uplink dataset put`")]
    NotADataset,
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl MetainfoError {
    pub fn code(&self) -> pb::ErrorCode {
        use pb::ErrorCode as C;
        match self {
            Self::UnknownApiKey => C::Unauthenticated,
            Self::Key(
                loam_common::macaroon::KeyError::Malformed
                | loam_common::macaroon::KeyError::Invalid
                | loam_common::macaroon::KeyError::Revoked,
            ) => C::Unauthenticated,
            Self::Key(_) | Self::NotParentKey => C::PermissionDenied,
            Self::KeyNotFound => C::NotFound,
            Self::BucketNotFound(_)
            | Self::ObjectNotFound
            | Self::UploadNotFound
            | Self::SegmentNotBegun(_) => C::NotFound,
            Self::BucketExists(_) => C::AlreadyExists,
            Self::BucketNotEmpty(_) | Self::NotADataset => C::FailedPrecondition,
            Self::ProjectNotFound(_) => C::NotFound,
            Self::StorageLimit { .. } | Self::EgressLimit { .. } => C::ResourceExhausted,
            Self::BadBucketName { .. }
            | Self::Invalid(_)
            | Self::TooFewPieces { .. }
            | Self::BadPiece { .. }
            | Self::InlineTooLarge { .. }
            | Self::KeyTooLong { .. } => C::InvalidArgument,
            Self::Overlay(OverlayError::TooFewNodes { .. }) => C::Unavailable,
            Self::Overlay(_) => C::InvalidArgument,
            Self::Db(DbError::Conflict) => C::Unavailable,
            Self::Db(_) => C::Internal,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MetainfoConfig {
    pub redundancy: RedundancyScheme,
    pub max_segment_size: u64,
    pub max_inline_size: u64,
    pub order_expiration: Duration,
    pub pending_expiration: Duration,
    pub orders: crate::orders::OrdersConfig,
    /// Limits of new projects; 0 = unlimited.
    pub default_storage_limit: u64,
    pub default_egress_limit: u64,
}

/// How stale a project's stored-bytes figure may get on a database several
/// satellite processes share (each sees only its own commits between
/// scans): storage limits may be overrun by what the other processes
/// commit in this time.
pub const SHARED_USAGE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Metainfo {
    kv: Arc<dyn Kv>,
    /// Buckets, objects, uploads, segments.
    metabase: Metabase,
    overlay: Arc<Overlay>,
    identity: Identity,
    config: MetainfoConfig,
    /// Settlement, and the billing metadata sealed into order limits.
    orders: Arc<crate::orders::Orders>,
    /// Live stored bytes per project (filled by a scan on first use, then
    /// kept up to date by commits and deletes), for storage limits, with
    /// when it was scanned: on a database other processes write too, a
    /// figure older than [`SHARED_USAGE_TTL`] is scanned again.
    live_storage: std::sync::Mutex<std::collections::HashMap<ProjectId, (u64, std::time::Instant)>>,
    /// Projects, their names and egress.
    projects: ProjectStore,
    /// API keys: secrets, verification, revocations.
    keys: crate::apikeys::ApiKeys,
    /// Marketplace listings.
    market: crate::market::Market,
}

pub use loam_common::time::{month_of, month_range};

/// Runs `f` again while it fails because another writer changed what it
/// read ([`DbError::Conflict`]), pausing a random, growing while between
/// tries; `f` reads afresh each time.
fn retry_conflicts<T>(mut f: impl FnMut() -> Result<T, MetainfoError>) -> Result<T, MetainfoError> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(MetainfoError::Db(DbError::Conflict))
                if attempt + 1 < crate::db::TRANSACT_ATTEMPTS =>
            {
                attempt += 1;
                crate::db::back_off(attempt);
            }
            other => return other,
        }
    }
}

/// What [`Metainfo::relocate`] does with the source object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Relocation {
    /// The source goes.
    Move,
    /// The source stays; both share the stream.
    Copy,
}

/// An encrypted object key a client may store: not empty, at most
/// [`MAX_ENCRYPTED_KEY_LEN`] bytes.
fn check_object_key(key: &[u8]) -> Result<(), MetainfoError> {
    if key.is_empty() {
        return Err(MetainfoError::Invalid("empty object key"));
    }
    if key.len() > MAX_ENCRYPTED_KEY_LEN {
        return Err(MetainfoError::KeyTooLong {
            len: key.len(),
            max: MAX_ENCRYPTED_KEY_LEN,
        });
    }
    Ok(())
}

/// Bytes an object occupies for storage limits and billing: what the
/// satellite verified at commit, or the uplink's plain size for records
/// from before that was kept.
pub fn stored_size(rec: &pb::ObjectRecord) -> u64 {
    if rec.stored_size > 0 || rec.version >= 2 {
        rec.stored_size
    } else {
        rec.plain_size.max(0) as u64
    }
}

/// Bytes of a committed segment's data: its piece size, which the nodes
/// signed for, times k (the pieces any decoder needs; the redundancy is the
/// network's cost, not the customer's).
fn segment_bytes(meta: &pb::SegmentMeta, k: usize) -> Result<u64, MetainfoError> {
    u64::try_from(meta.piece_size)
        .ok()
        .and_then(|p| p.checked_mul(k as u64))
        .ok_or(MetainfoError::Invalid("segment size out of range"))
}

/// The redundancy an upload was begun with.
fn pending_scheme(pending: &pb::PendingObject) -> Result<RedundancyScheme, DbError> {
    pending
        .redundancy
        .as_ref()
        .and_then(|r| RedundancyScheme::try_from(r).ok())
        .ok_or(DbError::Corrupt("pending redundancy"))
}

/// S3-style bucket names: 3-63 of `a-z 0-9 . -`, starting and ending alphanumeric.
pub fn validate_bucket_name(name: &str) -> Result<(), MetainfoError> {
    let bad = |why| {
        Err(MetainfoError::BadBucketName {
            name: name.to_string(),
            why,
        })
    };
    if name.len() < 2 || name.len() > 63 {
        return bad("must be 2 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return bad("only lowercase letters, digits, '-' and '.' are allowed");
    }
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !ends_ok(name.bytes().next()) || !ends_ok(name.bytes().last()) {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

impl Metainfo {
    pub fn new(
        kv: Arc<dyn Kv>,
        overlay: Arc<Overlay>,
        identity: Identity,
        config: MetainfoConfig,
    ) -> Self {
        Self {
            orders: Arc::new(crate::orders::Orders::new(
                kv.clone(),
                &identity,
                config.orders.clone(),
            )),
            keys: crate::apikeys::ApiKeys::new(kv.clone()),
            market: crate::market::Market::new(kv.clone()),
            metabase: Metabase::new(kv.clone()),
            projects: ProjectStore::new(kv.clone()),
            kv,
            overlay,
            identity,
            config,
            live_storage: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Buckets, objects, uploads and segments as stored.
    pub fn metabase(&self) -> &Metabase {
        &self.metabase
    }

    pub fn orders(&self) -> &Arc<crate::orders::Orders> {
        &self.orders
    }

    // ------------------------------------------------------ usage, limits

    pub fn project_record(&self, project: &ProjectId) -> Result<pb::ProjectRecord, MetainfoError> {
        Ok(self
            .projects
            .project(project)?
            .ok_or(DbError::Corrupt("project of an API key"))?)
    }

    /// Bytes the project stores (the plain size of its objects).
    pub fn stored_bytes(&self, project: &ProjectId) -> Result<u64, MetainfoError> {
        if let Some((v, at)) = self.live_storage.lock().expect("usage lock").get(project)
            && (!self.kv.shared() || at.elapsed() < SHARED_USAGE_TTL)
        {
            return Ok(*v);
        }
        let mut total = 0u64;
        self.metabase
            .for_each_object(ObjectScope::Project(project), |_, rec| {
                total = total.saturating_add(stored_size(&rec));
                Ok::<_, DbError>(ControlFlow::Continue(()))
            })?;
        self.live_storage
            .lock()
            .expect("usage lock")
            .insert(*project, (total, std::time::Instant::now()));
        Ok(total)
    }

    fn adjust_stored(&self, project: &ProjectId, add: u64, remove: u64) {
        if let Some(v) = self
            .live_storage
            .lock()
            .expect("usage lock")
            .get_mut(project)
        {
            v.0 = v.0.saturating_add(add).saturating_sub(remove);
        }
    }

    /// Refuses new data beyond the project's storage limit.
    fn check_storage(&self, project: &ProjectId, adding: u64) -> Result<(), MetainfoError> {
        let limit = self.project_record(project)?.storage_limit;
        if limit == 0 {
            return Ok(());
        }
        let used = self.stored_bytes(project)?;
        if used.saturating_add(adding) > limit {
            return Err(MetainfoError::StorageLimit { used, limit });
        }
        Ok(())
    }

    /// Counts `bytes` of download against this month's egress limit, or
    /// refuses them.
    fn charge_egress(&self, project: &ProjectId, bytes: u64) -> Result<(), MetainfoError> {
        let limit = self.project_record(project)?.egress_limit;
        let month = month_of(now_ms());
        // One transaction: downloads through several satellite processes
        // add up, none is lost to a concurrent write.
        self.projects.update_egress(project, &month, |used| {
            let total = used.saturating_add(bytes);
            if limit > 0 && total > limit {
                return Err(MetainfoError::EgressLimit {
                    used,
                    limit,
                    month: month.clone(),
                });
            }
            Ok(total)
        })?;
        Ok(())
    }

    /// Download bytes allowed to the project in `month` (`YYYY-MM`).
    pub fn egress_used(&self, project: &ProjectId, month: &str) -> Result<u64, MetainfoError> {
        Ok(self.projects.egress(project, month)?)
    }

    /// Sets a project's limits (None: unchanged; 0: unlimited); returns
    /// them as they now stand.
    pub fn set_project_limits(
        &self,
        name: &str,
        req: &pb::SetProjectLimitsRequest,
    ) -> Result<pb::SetProjectLimitsResponse, MetainfoError> {
        let (id, _) = self
            .find_project(name)?
            .ok_or_else(|| MetainfoError::ProjectNotFound(name.to_string()))?;
        let rec = self
            .projects
            .update(&id, |mut rec| {
                if let Some(s) = req.storage_limit {
                    rec.storage_limit = s;
                }
                if let Some(e) = req.egress_limit {
                    rec.egress_limit = e;
                }
                if let Some(m) = req.spend_limit {
                    rec.spend_limit = m;
                }
                Ok::<_, DbError>(rec)
            })?
            .ok_or_else(|| MetainfoError::ProjectNotFound(name.to_string()))?;
        Ok(pb::SetProjectLimitsResponse {
            storage_limit: rec.storage_limit,
            egress_limit: rec.egress_limit,
            spend_limit: rec.spend_limit,
        })
    }

    /// Sets where a project's data-owner earnings are paid.
    pub fn set_payout_address(
        &self,
        project: &ProjectId,
        address: &str,
    ) -> Result<String, MetainfoError> {
        let address = address.trim();
        if address.is_empty()
            || address.len() > 200
            || address.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(MetainfoError::Invalid(
                "a payout address is 1 to 200 characters without spaces",
            ));
        }
        let rec = self
            .projects
            .update(project, |mut rec| {
                rec.payout_address = address.to_string();
                Ok::<_, DbError>(rec)
            })?
            .ok_or(DbError::Corrupt("project of an API key"))?;
        Ok(rec.payout_address)
    }

    /// What a project stores and downloads, per bucket, this month.
    pub fn project_usage(
        &self,
        project: &ProjectId,
    ) -> Result<pb::ProjectUsageResponse, MetainfoError> {
        let rec = self.project_record(project)?;
        let now = now_ms();
        let month = month_of(now);
        let (from, to) = month_range(&month).unwrap_or((0, i64::MAX));
        let mut buckets: std::collections::BTreeMap<String, pb::BucketUsage> = self
            .list_buckets(project)?
            .into_iter()
            .map(|b| {
                (
                    b.name.clone(),
                    pb::BucketUsage {
                        name: b.name,
                        ..Default::default()
                    },
                )
            })
            .collect();
        self.metabase
            .for_each_object(ObjectScope::Project(project), |at, rec| {
                let b = buckets
                    .entry(at.bucket.clone())
                    .or_insert_with(|| pb::BucketUsage {
                        name: at.bucket,
                        ..Default::default()
                    });
                b.stored_bytes = b.stored_bytes.saturating_add(stored_size(&rec));
                b.objects += 1;
                b.segments += u64::from(rec.segment_count);
                Ok::<_, DbError>(ControlFlow::Continue(()))
            })?;
        for (name, bw) in self.orders.bucket_bandwidth(project, from, to)? {
            if let Some(b) = buckets.get_mut(&name) {
                b.egress_bytes += bw.get;
            }
        }
        for (name, byte_ms) in self.orders.accounting().bucket_byte_ms(project, from, to)? {
            if let Some(b) = buckets.get_mut(&name) {
                b.byte_hours = b
                    .byte_hours
                    .saturating_add(u64::try_from(byte_ms / 3_600_000).unwrap_or(u64::MAX));
            }
        }
        let stored = buckets.values().map(|b| b.stored_bytes).sum();
        Ok(pb::ProjectUsageResponse {
            project: rec.name,
            buckets: buckets.into_values().collect(),
            stored_bytes: stored,
            egress_bytes: self.egress_used(project, &month)?,
            storage_limit: rec.storage_limit,
            egress_limit: rec.egress_limit,
            month,
        })
    }

    // ------------------------------------------------------------ projects

    /// Creates an API key for the project called `name` (creating the
    /// project if needed). Returns (key, project id, salt).
    pub fn create_api_key(
        &self,
        name: &str,
    ) -> Result<(Vec<u8>, ProjectId, Vec<u8>), MetainfoError> {
        self.create_named_api_key(name, "")
    }

    /// As [`Self::create_api_key`], with a name for the key.
    pub fn create_named_api_key(
        &self,
        project_name: &str,
        key_name: &str,
    ) -> Result<(Vec<u8>, ProjectId, Vec<u8>), MetainfoError> {
        let (project, salt) = loop {
            if let Some(p) = self.find_project(project_name)? {
                break p;
            }
            let id: ProjectId = rand::random();
            let salt: [u8; 16] = rand::random();
            let rec = pb::ProjectRecord {
                version: 1,
                name: project_name.to_string(),
                salt: salt.to_vec().into(),
                created_unix_ms: now_ms(),
                storage_limit: self.config.default_storage_limit,
                egress_limit: self.config.default_egress_limit,
                ..Default::default()
            };
            // Created once, however many processes are asked at once: one
            // that lost the race finds the winner's project.
            if self.projects.create(&id, &rec)? {
                break (id, salt.to_vec());
            }
        };
        let key = self.keys.create(&project, key_name)?;
        Ok((key.to_bytes(), project, salt))
    }

    /// A new key for an existing project.
    pub fn create_project_key(
        &self,
        project: &ProjectId,
        key_name: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), MetainfoError> {
        let rec = self.project_record(project)?;
        let key = self.keys.create(project, key_name)?;
        Ok((key.to_bytes(), rec.salt.to_vec()))
    }

    /// The project called `name`: (id, salt), from the name index.
    pub fn find_project(&self, name: &str) -> Result<Option<(ProjectId, Vec<u8>)>, MetainfoError> {
        Ok(self
            .projects
            .find(name)?
            .map(|(id, rec)| (id, rec.salt.to_vec())))
    }

    /// Verifies an API key: its project and the caveats to apply.
    pub fn authenticate(
        &self,
        api_key: &[u8],
    ) -> Result<crate::apikeys::Authorized, MetainfoError> {
        self.keys.authenticate(api_key)
    }

    /// The API keys: creation, listing, revocation.
    pub fn api_keys(&self) -> &crate::apikeys::ApiKeys {
        &self.keys
    }

    /// The marketplace's listings.
    pub fn market(&self) -> &crate::market::Market {
        &self.market
    }

    pub fn project_info(
        &self,
        project: &ProjectId,
    ) -> Result<pb::ProjectInfoResponse, MetainfoError> {
        let rec = self
            .projects
            .project(project)?
            .ok_or(MetainfoError::UnknownApiKey)?;
        Ok(pb::ProjectInfoResponse {
            project_id: project.to_vec().into(),
            salt: rec.salt,
            name: rec.name,
        })
    }

    // ------------------------------------------------------------- buckets

    pub fn create_bucket(
        &self,
        project: &ProjectId,
        req: &pb::CreateBucketRequest,
    ) -> Result<pb::CreateBucketResponse, MetainfoError> {
        validate_bucket_name(&req.name)?;
        let created = now_ms();
        let rec = pb::BucketRecord {
            version: 1,
            created_unix_ms: created,
            key_check: req.key_check.clone(),
            deleting: false,
        };
        // Created once, however many processes are asked at once.
        if !self.metabase.create_bucket(project, &req.name, &rec)? {
            return Err(MetainfoError::BucketExists(req.name.clone()));
        }
        Ok(pb::CreateBucketResponse {
            created_unix_ms: created,
        })
    }

    /// A bucket's record, also while it is being deleted.
    fn bucket_record(
        &self,
        project: &ProjectId,
        name: &str,
    ) -> Result<Stored<pb::BucketRecord>, MetainfoError> {
        self.metabase
            .bucket(project, name)?
            .ok_or_else(|| MetainfoError::BucketNotFound(name.to_string()))
    }

    /// A bucket objects may go into, for the write that puts them there to
    /// expect (a bucket deleted or being deleted meanwhile makes that write
    /// fail rather than leave objects in no bucket).
    fn open_bucket(
        &self,
        project: &ProjectId,
        name: &str,
    ) -> Result<Stored<pb::BucketRecord>, MetainfoError> {
        let rec = self.bucket_record(project, name)?;
        if rec.deleting {
            return Err(MetainfoError::BucketNotFound(name.to_string()));
        }
        Ok(rec)
    }

    pub fn get_bucket(
        &self,
        project: &ProjectId,
        name: &str,
    ) -> Result<pb::BucketInfo, MetainfoError> {
        let rec = self.open_bucket(project, name)?.into_inner();
        Ok(pb::BucketInfo {
            name: name.to_string(),
            created_unix_ms: rec.created_unix_ms,
            key_check: rec.key_check,
        })
    }

    /// Deletes an empty bucket (objects past their expiry count as gone:
    /// they go with it). The bucket is marked first, so that no upload
    /// commits and no object moves into it while its objects are checked
    /// (in this process or another); the mark is taken off again when
    /// objects are left, and a deletion cut short (a process killed) is
    /// finished by asking again.
    pub fn delete_bucket(&self, project: &ProjectId, name: &str) -> Result<(), MetainfoError> {
        let read = self.bucket_record(project, name)?;
        let marked = if read.deleting {
            read
        } else {
            self.metabase
                .mark_bucket_deleting(project, name, &read, true)?
        };
        let deleted = retry_conflicts(|| self.delete_marked_bucket(project, name, &marked));
        if matches!(deleted, Err(MetainfoError::BucketNotEmpty(_))) {
            self.metabase
                .mark_bucket_deleting(project, name, &marked, false)?;
        }
        deleted
    }

    fn delete_marked_bucket(
        &self,
        project: &ProjectId,
        name: &str,
        marked: &Stored<pb::BucketRecord>,
    ) -> Result<(), MetainfoError> {
        let now = now_ms();
        let mut batch = Batch::new();
        let mut expired = Vec::new();
        let mut left = false;
        self.metabase
            .for_each_object(ObjectScope::Bucket(project, name), |at, rec| {
                if !expired_at(&rec, now) {
                    left = true;
                    return Ok::<_, DbError>(ControlFlow::Break(()));
                }
                batch.expect_object(&at, Some(&rec));
                batch.delete_object(&at);
                expired.push(rec.into_inner());
                Ok(ControlFlow::Continue(()))
            })?;
        if left {
            return Err(MetainfoError::BucketNotEmpty(name.to_string()));
        }
        let refs: Vec<(&pb::ObjectRecord, i64)> = expired.iter().map(|r| (r, -1)).collect();
        self.metabase.change_stream_refs(&refs, &mut batch)?;
        batch.expect_bucket(project, name, Some(marked));
        batch.delete_bucket(project, name);
        self.metabase.write(batch)?;
        let freed = expired
            .iter()
            .map(stored_size)
            .fold(0u64, u64::saturating_add);
        self.adjust_stored(project, 0, freed);
        Ok(())
    }

    pub fn list_buckets(&self, project: &ProjectId) -> Result<Vec<pb::BucketInfo>, MetainfoError> {
        let mut out = Vec::new();
        self.metabase.for_each_bucket(project, |name, rec| {
            if !rec.deleting {
                out.push(pb::BucketInfo {
                    name,
                    created_unix_ms: rec.created_unix_ms,
                    key_check: rec.key_check,
                });
            }
            Ok::<_, DbError>(())
        })?;
        Ok(out)
    }

    // -------------------------------------------------------------- upload

    pub fn begin_object(
        &self,
        project: &ProjectId,
        req: &pb::BeginObjectRequest,
    ) -> Result<pb::BeginObjectResponse, MetainfoError> {
        self.get_bucket(project, &req.bucket)?;
        check_object_key(&req.encrypted_key)?;
        if req.encrypted_metadata.len() > MAX_ENCRYPTED_METADATA_LEN {
            return Err(MetainfoError::Invalid("object metadata too large"));
        }
        if !req.multipart && !req.encrypted_metadata.is_empty() {
            return Err(MetainfoError::Invalid(
                "metadata is given when a multipart upload begins, or at the commit",
            ));
        }
        let stream_id: [u8; 16] = rand::random();
        let pending = pb::PendingObject {
            version: 1,
            project_id: project.to_vec().into(),
            bucket: req.bucket.clone(),
            encrypted_key: req.encrypted_key.clone(),
            created_unix_ms: now_ms(),
            redundancy: Some(self.config.redundancy.into()),
            multipart: req.multipart,
            encrypted_metadata: req.encrypted_metadata.clone(),
        };
        let mut batch = Batch::new();
        batch.put_pending(&stream_id, &pending);
        self.metabase.write(batch)?;
        Ok(pb::BeginObjectResponse {
            stream_id: stream_id.to_vec().into(),
            redundancy: Some(self.config.redundancy.into()),
            max_segment_size: self.config.max_segment_size as i64,
            max_inline_size: self.config.max_inline_size as i64,
        })
    }

    /// Where a pending upload goes: (bucket, encrypted key); for one
    /// committed within the pending-upload expiry, where it went (a commit
    /// asked again is checked against the same caveats).
    pub fn pending_path(
        &self,
        project: &ProjectId,
        stream_id: &[u8],
    ) -> Result<(String, Vec<u8>), MetainfoError> {
        match self.pending(project, stream_id) {
            Ok(p) => {
                let p = p.into_inner();
                Ok((p.bucket, p.encrypted_key.to_vec()))
            }
            Err(MetainfoError::UploadNotFound) => match self.commit_receipt(project, stream_id)? {
                Some(r) => Ok((r.bucket, r.encrypted_key)),
                None => Err(MetainfoError::UploadNotFound),
            },
            Err(e) => Err(e),
        }
    }

    /// One of the project's uploads in progress.
    fn pending(
        &self,
        project: &ProjectId,
        stream_id: &[u8],
    ) -> Result<Stored<pb::PendingObject>, MetainfoError> {
        match self.metabase.pending(stream_id)? {
            Some(p) if p.project_id.as_ref() == project => Ok(p),
            _ => Err(MetainfoError::UploadNotFound),
        }
    }

    /// A signed order limit (for the repairer and the auditor).
    pub fn order_limit(
        &self,
        node: NodeId,
        piece_id: PieceId,
        action: PieceAction,
        max: u64,
        piece_key: &KeyPair,
    ) -> pb::SignedOrderLimit {
        self.limit(node, piece_id, action, max, piece_key, Vec::new())
    }

    fn limit(
        &self,
        node: NodeId,
        piece_id: PieceId,
        action: PieceAction,
        max: u64,
        piece_key: &KeyPair,
        metadata: Vec<u8>,
    ) -> pb::SignedOrderLimit {
        let now = now_ms();
        let limit = OrderLimit {
            serial: SerialNumber::random(),
            satellite_id: self.identity.id(),
            node_id: node,
            piece_id,
            action,
            limit: max,
            piece_public_key: piece_key.public(),
            created_ms: now,
            expires_ms: now + self.config.order_expiration.as_millis() as i64,
            piece_expires_ms: 0,
            metadata,
        };
        metrics::counter!("loam_satellite_order_limits_issued_total", "action" => action.as_str())
            .increment(1);
        limit.sign(&self.identity)
    }

    pub fn begin_segment(
        &self,
        project: &ProjectId,
        req: &pb::BeginSegmentRequest,
    ) -> Result<pb::BeginSegmentResponse, MetainfoError> {
        let pending = self.pending(project, &req.stream_id)?;
        let scheme = pending_scheme(&pending)?;
        let max_piece = loam_common::encryption::encrypted_len(
            (self.config.max_segment_size as usize).div_ceil(scheme.k()),
        ) as i64;
        if req.piece_size <= 0 || req.piece_size > max_piece {
            return Err(MetainfoError::Invalid("piece size out of range"));
        }
        let piece_size = req.piece_size as u64;
        let project_id = ProjectId::try_from(pending.project_id.as_ref())
            .map_err(|_| DbError::Corrupt("pending object"))?;
        // A segment stores about k pieces' worth of data.
        self.check_storage(&project_id, piece_size * scheme.k() as u64)?;
        let billing = self.orders.seal_billing(&project_id, &pending.bucket);
        let nodes = self
            .overlay
            .select(scheme.success(), scheme.total(), piece_size, now_ms())?;
        let root = PieceId::random();
        let piece_key = KeyPair::generate();
        let mut limits = Vec::with_capacity(nodes.len());
        let mut record = pb::PendingSegment {
            version: 1,
            root_piece_id: root.as_bytes().to_vec().into(),
            piece_size: req.piece_size,
            ..Default::default()
        };
        for (num, node) in nodes.iter().enumerate() {
            let num = num as u32;
            let piece_id = PieceId::derive(&root, &node.id, num);
            limits.push(pb::AddressedOrderLimit {
                limit: Some(self.limit(
                    node.id,
                    piece_id,
                    PieceAction::Put,
                    piece_size,
                    &piece_key,
                    billing.clone(),
                )),
                address: node.address.clone(),
                node_id: node.id.as_bytes().to_vec().into(),
                piece_num: num,
                piece_hash: Default::default(),
            });
            record.node_ids.push(node.id.as_bytes().to_vec().into());
            record.piece_nums.push(num);
        }
        let mut batch = Batch::new();
        batch.put_pending_segment(&SegmentPosition::new(&req.stream_id, req.index), &record);
        self.metabase.write(batch)?;
        Ok(pb::BeginSegmentResponse {
            limits,
            piece_private_key: piece_key.seed().to_vec().into(),
            root_piece_id: root.as_bytes().to_vec().into(),
        })
    }

    pub fn commit_segment(
        &self,
        project: &ProjectId,
        req: &pb::CommitSegmentRequest,
    ) -> Result<(), MetainfoError> {
        let pending = self.pending(project, &req.stream_id)?;
        let scheme = pending_scheme(&pending)?;
        let at = SegmentPosition::new(&req.stream_id, req.index);
        let begun = self
            .metabase
            .pending_segment(&at)?
            .ok_or(MetainfoError::SegmentNotBegun(req.index))?;
        let root = PieceId::try_from(begun.root_piece_id.as_ref())
            .map_err(|_| DbError::Corrupt("pending segment"))?;
        let meta = req
            .meta
            .clone()
            .ok_or(MetainfoError::Invalid("missing segment metadata"))?;
        if meta.piece_size != begun.piece_size {
            return Err(MetainfoError::Invalid(
                "piece size differs from the one begun",
            ));
        }
        // The plaintext must fit in the k data pieces the nodes stored.
        let capacity = loam_common::encryption::plain_len(meta.piece_size.max(0) as usize)
            .and_then(|row| row.checked_mul(scheme.k()))
            .unwrap_or(0);
        if meta.plain_size < 0 || meta.plain_size as u64 > capacity as u64 {
            return Err(MetainfoError::Invalid(
                "segment plain size does not fit its pieces",
            ));
        }
        if !meta.row_sizes.is_empty() {
            let row_cap =
                loam_common::encryption::plain_len(meta.piece_size as usize).unwrap_or(0) as i64;
            if meta.row_sizes.len() != scheme.k()
                || meta.row_sizes.iter().any(|&r| !(0..=row_cap).contains(&r))
                || meta.row_sizes.iter().sum::<i64>() != meta.plain_size
            {
                return Err(MetainfoError::Invalid("row sizes do not fit the segment"));
            }
            // A record is at least one byte: no row holds more records
            // than bytes.
            if meta.row_records.len() != meta.row_sizes.len()
                || meta
                    .row_records
                    .iter()
                    .zip(&meta.row_sizes)
                    .any(|(&n, &size)| n > size as u64)
            {
                return Err(MetainfoError::Invalid(
                    "row record counts do not fit the segment",
                ));
            }
        } else if !meta.row_records.is_empty() {
            return Err(MetainfoError::Invalid("record counts without dataset rows"));
        }
        if !meta.encrypted_part_info.is_empty() {
            if !pending.multipart {
                return Err(MetainfoError::Invalid(
                    "part records belong to multipart uploads",
                ));
            }
            if meta.encrypted_part_info.len() > MAX_PART_INFO_LEN {
                return Err(MetainfoError::Invalid("part record too large"));
            }
        }
        let mut pieces = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for p in &req.pieces {
            let node = NodeId::try_from(p.node_id.as_ref())
                .map_err(|_| MetainfoError::Invalid("node id"))?;
            let bad = |why| MetainfoError::BadPiece {
                num: p.piece_num,
                node: node.short(),
                why,
            };
            let issued = begun
                .piece_nums
                .iter()
                .position(|n| *n == p.piece_num)
                .and_then(|i| begun.node_ids.get(i))
                .is_some_and(|id| id.as_ref() == node.as_bytes());
            if !issued {
                return Err(bad("no order limit was issued for it"));
            }
            if !seen.insert(p.piece_num) {
                return Err(bad("committed twice"));
            }
            let key = self
                .overlay
                .get(&node)
                .ok_or_else(|| bad("unknown node"))?
                .public_key;
            let signed = p.hash.as_ref().ok_or_else(|| bad("missing piece hash"))?;
            let hash = PieceHash::verify(signed, &key)
                .map_err(|_| bad("node signature does not verify"))?;
            if hash.piece_id != PieceId::derive(&root, &node, p.piece_num) {
                return Err(bad("wrong piece id"));
            }
            if hash.size != begun.piece_size as u64 {
                return Err(bad("wrong size"));
            }
            pieces.push(pb::StoredPieceRef {
                piece_num: p.piece_num,
                node_id: node.as_bytes().to_vec().into(),
                hash: hash.hash.to_vec().into(),
            });
        }
        if pieces.len() < scheme.success() {
            return Err(MetainfoError::TooFewPieces {
                got: pieces.len(),
                need: scheme.success(),
            });
        }
        pieces.sort_by_key(|p| p.piece_num);
        let record = pb::SegmentRecord {
            version: 1,
            meta: Some(meta),
            root_piece_id: begun.root_piece_id,
            pieces,
            redundancy: Some(scheme.into()),
            created_unix_ms: now_ms(),
        };
        let mut batch = Batch::new();
        batch.delete_pending_segment(&at);
        batch.put_segment(&at, &record);
        self.metabase.write(batch)?;
        metrics::counter!("loam_satellite_segments_committed_total").increment(1);
        Ok(())
    }

    pub fn commit_object(
        &self,
        project: &ProjectId,
        req: &pb::CommitObjectRequest,
    ) -> Result<pb::CommitObjectResponse, MetainfoError> {
        let pending = match self.pending(project, &req.stream_id) {
            Ok(found) => found,
            // Asked again after the answer was lost (the process that
            // committed it died first): the same answer.
            Err(MetainfoError::UploadNotFound) => {
                return match self.commit_receipt(project, &req.stream_id)? {
                    Some(r) => Ok(pb::CommitObjectResponse {
                        created_unix_ms: r.created_unix_ms,
                    }),
                    None => Err(MetainfoError::UploadNotFound),
                };
            }
            Err(e) => return Err(e),
        };
        if req.inline_data.len() as u64 > self.config.max_inline_size + 64 {
            return Err(MetainfoError::InlineTooLarge {
                size: req.inline_data.len(),
                max: self.config.max_inline_size as usize,
            });
        }
        if req.encrypted_metadata.len() > MAX_ENCRYPTED_METADATA_LEN {
            return Err(MetainfoError::Invalid("object metadata too large"));
        }
        if !req.inline_data.is_empty() && req.segment_count != 0 {
            return Err(MetainfoError::Invalid("inline object with segments"));
        }
        if req.expires_unix_ms != 0 && req.expires_unix_ms <= now_ms() {
            return Err(MetainfoError::Invalid("the expiry time has passed already"));
        }
        if !req.inline_data.is_empty() {
            self.check_storage(project, req.inline_data.len() as u64)?;
        }
        // The object's size must be what its parts hold, and what it is
        // billed for is what the satellite verified them to occupy.
        let positions = self.commit_positions(&pending, req)?;
        let (mut plain, mut stored) = (0u64, req.inline_data.len() as u64);
        let mut segments = Vec::new();
        for &i in &positions {
            let seg = self
                .metabase
                .segment(&SegmentPosition::new(&req.stream_id, i))?
                .ok_or(MetainfoError::SegmentNotBegun(i))?;
            if pending.multipart {
                segments.push(seg.clone());
            }
            let seg = seg.into_inner();
            let meta = seg.meta.unwrap_or_default();
            let k = seg
                .redundancy
                .as_ref()
                .and_then(|r| RedundancyScheme::try_from(r).ok())
                .ok_or(DbError::Corrupt("segment redundancy"))?
                .k();
            stored = stored
                .checked_add(segment_bytes(&meta, k)?)
                .ok_or(MetainfoError::Invalid("object size out of range"))?;
            plain = plain.saturating_add(meta.plain_size.max(0) as u64);
        }
        let size_ok = match req.segment_count {
            0 => (0..=req.inline_data.len() as i64).contains(&req.plain_size),
            _ => req.plain_size >= 0 && req.plain_size as u64 == plain,
        };
        if !size_ok {
            return Err(MetainfoError::Invalid(
                "object size differs from what its segments or inline data hold",
            ));
        }
        let created = now_ms();
        let record = pb::ObjectRecord {
            version: 2,
            stored_size: stored,
            stream_id: req.stream_id.clone(),
            created_unix_ms: created,
            plain_size: req.plain_size,
            segment_count: req.segment_count,
            encrypted_metadata: req.encrypted_metadata.clone(),
            inline_data: req.inline_data.clone(),
            redundancy: pending.redundancy,
            dataset: req.dataset && req.segment_count > 0,
            compute_enabled: req.dataset && req.compute_enabled && req.segment_count > 0,
            segment_keys: Vec::new(),
            expires_unix_ms: req.expires_unix_ms,
        };
        let at = ObjectLocation::new(project, &pending.bucket, &pending.encrypted_key);
        let receipt = Receipt {
            project: *project,
            created_unix_ms: created,
            bucket: pending.bucket.clone(),
            encrypted_key: pending.encrypted_key.to_vec(),
        };
        // The first try writes over the upload as read above; a retry
        // reads it again.
        let mut read = Some(pending.clone());
        let mut attempt = 0;
        let replaced = retry_conflicts(|| {
            let mut batch = Batch::new();
            // Into a bucket that is still there (not deleted or being
            // deleted since the upload began).
            let bucket = self.open_bucket(project, &pending.bucket)?;
            batch.expect_bucket(project, &pending.bucket, Some(&bucket));
            // Committed once, however many processes are asked at once:
            // a commit that lost the race finds the receipt on its retry.
            let still = match read.take() {
                Some(p) => p,
                None => match self.metabase.pending(&req.stream_id)? {
                    Some(p) => p,
                    None => return Ok(None),
                },
            };
            batch.expect_pending(&req.stream_id, &still);
            batch.delete_pending(project, &req.stream_id);
            batch.put_object(&at, &record);
            batch.put_receipt(&req.stream_id, &receipt);
            // An object written over replaces the old one and its segments.
            let old = self.metabase.object(&at)?;
            batch.expect_object(&at, old.as_ref());
            let mut replaced = 0;
            if let Some(old) = &old {
                replaced = stored_size(old);
                self.metabase.change_stream_refs(&[(old, -1)], &mut batch)?;
            }
            if pending.multipart {
                if attempt > 0 {
                    segments = self.reread_segments(&req.stream_id, &positions)?;
                }
                self.renumber_parts(&req.stream_id, &positions, &segments, &mut batch)?;
            }
            attempt += 1;
            self.metabase.write(batch)?;
            Ok(Some(replaced))
        })?;
        let Some(replaced) = replaced else {
            return match self.commit_receipt(project, &req.stream_id)? {
                Some(r) => Ok(pb::CommitObjectResponse {
                    created_unix_ms: r.created_unix_ms,
                }),
                None => Err(MetainfoError::UploadNotFound),
            };
        };
        self.adjust_stored(project, stored, replaced);
        metrics::counter!("loam_satellite_objects_committed_total").increment(1);
        Ok(pb::CommitObjectResponse {
            created_unix_ms: created,
        })
    }

    /// The positions of the segments a commit makes the object of, in
    /// order: 0..n, or for a multipart upload the ones the commit names.
    fn commit_positions(
        &self,
        pending: &pb::PendingObject,
        req: &pb::CommitObjectRequest,
    ) -> Result<Vec<u32>, MetainfoError> {
        if !pending.multipart {
            if !req.segment_positions.is_empty() {
                return Err(MetainfoError::Invalid(
                    "segment positions are for multipart uploads",
                ));
            }
            return Ok((0..req.segment_count).collect());
        }
        if req.segment_positions.len() != req.segment_count as usize {
            return Err(MetainfoError::Invalid(
                "a multipart commit names each of its segments' positions",
            ));
        }
        if req.segment_positions.windows(2).any(|w| w[0] >= w[1]) {
            return Err(MetainfoError::Invalid(
                "segment positions must be in increasing order",
            ));
        }
        Ok(req.segment_positions.clone())
    }

    fn reread_segments(
        &self,
        stream: &[u8],
        positions: &[u32],
    ) -> Result<Vec<Stored<pb::SegmentRecord>>, MetainfoError> {
        positions
            .iter()
            .map(|&i| {
                self.metabase
                    .segment(&SegmentPosition::new(stream, i))?
                    .ok_or(MetainfoError::SegmentNotBegun(i))
            })
            .collect()
    }

    /// Adds to `batch` what a multipart commit does to the upload's
    /// segments: `segments` (read at `positions`) move to 0..n without
    /// their part records, and every other segment the upload began or
    /// committed goes (parts left out, parts uploaded again).
    fn renumber_parts(
        &self,
        stream: &[u8],
        positions: &[u32],
        segments: &[Stored<pb::SegmentRecord>],
        batch: &mut Batch,
    ) -> Result<(), MetainfoError> {
        let n = positions.len() as u32;
        let mut from = 0u32;
        loop {
            let page = self.metabase.stream_segments(stream, from, 1000)?;
            let Some(&(last, _)) = page.last() else {
                break;
            };
            for (at, _) in &page {
                if *at >= n {
                    batch.delete_segment(&SegmentPosition::new(stream, *at));
                }
            }
            match last.checked_add(1) {
                Some(next) if page.len() == 1000 => from = next,
                _ => break,
            }
        }
        for at in self.metabase.pending_segment_positions(stream)? {
            batch.delete_pending_segment(&SegmentPosition::new(stream, at));
        }
        for (i, (&at, seg)) in positions.iter().zip(segments).enumerate() {
            batch.expect_segment(&SegmentPosition::new(stream, at), seg);
            let mut rec = seg.clone().into_inner();
            if let Some(meta) = &mut rec.meta {
                meta.encrypted_part_info = Default::default();
            }
            batch.put_segment(&SegmentPosition::new(stream, i as u32), &rec);
        }
        Ok(())
    }

    /// The committed segments of one of the project's uploads in progress
    /// (a page from `req.cursor` on), with what the upload began with.
    pub fn list_upload_segments(
        &self,
        project: &ProjectId,
        req: &pb::ListUploadSegmentsRequest,
    ) -> Result<pb::ListUploadSegmentsResponse, MetainfoError> {
        let p = self.pending(project, &req.stream_id)?.into_inner();
        if p.bucket != req.bucket {
            return Err(MetainfoError::UploadNotFound);
        }
        let limit = (req.limit as usize).clamp(1, MAX_UPLOAD_SEGMENTS_LISTED);
        let mut page = self
            .metabase
            .stream_segments(&req.stream_id, req.cursor, limit + 1)?;
        let more = page.len() > limit;
        page.truncate(limit);
        let items = page
            .into_iter()
            .map(|(position, seg)| {
                let seg = seg.into_inner();
                let meta = seg.meta.unwrap_or_default();
                pb::UploadSegment {
                    position,
                    plain_size: meta.plain_size,
                    encrypted_part_info: meta.encrypted_part_info,
                    created_unix_ms: seg.created_unix_ms,
                }
            })
            .collect();
        Ok(pb::ListUploadSegmentsResponse {
            items,
            more,
            encrypted_key: p.encrypted_key,
            encrypted_metadata: p.encrypted_metadata,
            multipart: p.multipart,
            created_unix_ms: p.created_unix_ms,
            redundancy: p.redundancy,
            max_segment_size: self.config.max_segment_size as i64,
        })
    }

    /// The project's uploads in `bucket` under an encrypted key prefix
    /// that were begun and not committed, oldest first (at most
    /// [`MAX_PENDING_LISTED`]).
    pub fn list_pending(
        &self,
        project: &ProjectId,
        req: &pb::ListPendingRequest,
    ) -> Result<pb::ListPendingResponse, MetainfoError> {
        self.get_bucket(project, &req.bucket)?;
        let mut items = Vec::new();
        for stream_id in self.metabase.project_uploads(project)? {
            let Some(p) = self.metabase.pending(&stream_id)? else {
                continue;
            };
            let p = p.into_inner();
            if p.project_id.as_ref() != project
                || p.bucket != req.bucket
                || !p.encrypted_key.starts_with(&req.prefix)
            {
                continue;
            }
            items.push(pb::PendingInfo {
                multipart: p.multipart,
                encrypted_key: p.encrypted_key,
                segments: self.metabase.segment_count(&stream_id)?,
                stream_id: stream_id.into(),
                created_unix_ms: p.created_unix_ms,
            });
        }
        items.sort_by_key(|i| i.created_unix_ms);
        let truncated = items.len() > MAX_PENDING_LISTED;
        items.truncate(MAX_PENDING_LISTED);
        Ok(pb::ListPendingResponse { items, truncated })
    }

    /// Abandons one of the project's pending uploads in `bucket`.
    pub fn abort_object(
        &self,
        project: &ProjectId,
        req: &pb::AbortObjectRequest,
    ) -> Result<(), MetainfoError> {
        let p = self.pending(project, &req.stream_id)?;
        if p.bucket != req.bucket {
            return Err(MetainfoError::UploadNotFound);
        }
        let mut batch = Batch::new();
        self.metabase
            .delete_upload(project, &req.stream_id, &mut batch)?;
        self.metabase.write(batch)?;
        metrics::counter!("loam_satellite_uploads_aborted_total").increment(1);
        Ok(())
    }

    /// The receipt of `project`'s commit of the upload `stream_id`, if it
    /// committed it within the pending-upload expiry.
    fn commit_receipt(
        &self,
        project: &ProjectId,
        stream_id: &[u8],
    ) -> Result<Option<Receipt>, MetainfoError> {
        Ok(self
            .metabase
            .receipt(stream_id)?
            .filter(|r| &r.project == project))
    }

    /// Deletes uploads begun before `now - pending_expiration` and never
    /// committed, with every segment they committed, and the receipts of
    /// uploads committed before then. Returns how many uploads.
    pub fn delete_abandoned_uploads(&self, now_ms: i64) -> Result<usize, MetainfoError> {
        let cutoff = now_ms - self.config.pending_expiration.as_millis() as i64;
        self.metabase.delete_receipts_until(cutoff)?;
        // Expired uploads are found a page at a time, and deleted after the
        // walk (deleting while walking would shift the pages).
        let mut expired = Vec::new();
        self.metabase.for_each_pending(|stream_id, pending| {
            if pending.created_unix_ms <= cutoff {
                expired.push((pending.project_id.to_vec(), stream_id));
            }
            Ok::<_, DbError>(())
        })?;
        let mut removed = 0;
        for (project, stream_id) in expired {
            let mut batch = Batch::new();
            self.metabase
                .delete_upload(&project, &stream_id, &mut batch)?;
            self.metabase.write(batch)?;
            removed += 1;
        }
        if removed > 0 {
            metrics::counter!("loam_satellite_abandoned_uploads_deleted_total")
                .increment(removed as u64);
        }
        Ok(removed)
    }

    /// Deletes every object whose expiry time has passed at `now_ms`
    /// (their segments go with the last object using them, and the
    /// garbage collector then frees the pieces). Returns how many.
    pub fn delete_expired_objects(&self, now_ms: i64) -> Result<usize, MetainfoError> {
        let mut removed = 0;
        self.metabase.for_each_object(ObjectScope::All, |at, rec| {
            if !expired_at(&rec, now_ms) {
                return Ok(ControlFlow::Continue(()));
            }
            // Only if still the same record (not replaced meanwhile).
            let mut batch = Batch::new();
            batch.expect_object(&at, Some(&rec));
            batch.delete_object(&at);
            self.metabase
                .change_stream_refs(&[(&rec, -1)], &mut batch)?;
            match self.metabase.write(batch) {
                Ok(()) => {
                    self.adjust_stored(&at.project, 0, stored_size(&rec));
                    removed += 1;
                }
                // Replaced or deleted meanwhile: the next pass sees it.
                Err(DbError::Conflict) => {}
                Err(e) => return Err(e),
            }
            Ok(ControlFlow::Continue(()))
        })?;
        if removed > 0 {
            metrics::counter!("loam_satellite_objects_expired_total").increment(removed as u64);
        }
        Ok(removed)
    }

    // ------------------------------------------------------------ download

    /// A live object (not past its expiry) of a bucket that is there.
    fn object(
        &self,
        project: &ProjectId,
        bucket: &str,
        encrypted_key: &[u8],
    ) -> Result<(ObjectLocation, Stored<pb::ObjectRecord>), MetainfoError> {
        self.get_bucket(project, bucket)?;
        let at = ObjectLocation::new(project, bucket, encrypted_key);
        let rec = self
            .metabase
            .object(&at)?
            .ok_or(MetainfoError::ObjectNotFound)?;
        if expired_at(&rec, now_ms()) {
            return Err(MetainfoError::ObjectNotFound);
        }
        Ok((at, rec))
    }

    pub fn get_object(
        &self,
        project: &ProjectId,
        req: &pb::ObjectRequest,
    ) -> Result<pb::ObjectInfo, MetainfoError> {
        let (_, rec) = self.object(project, &req.bucket, &req.encrypted_key)?;
        Ok(object_info(req.encrypted_key.to_vec(), rec.into_inner()))
    }

    /// First half of a move: the wrapped content key of each segment.
    pub fn begin_move_object(
        &self,
        project: &ProjectId,
        req: &pb::ObjectRequest,
    ) -> Result<pb::BeginMoveObjectResponse, MetainfoError> {
        let (_, obj) = self.object(project, &req.bucket, &req.encrypted_key)?;
        let obj = obj.into_inner();
        if obj.dataset {
            return Err(MetainfoError::Invalid(
                "datasets cannot be moved; upload the dataset again under the new name",
            ));
        }
        let segment_keys = (0..obj.segment_count)
            .map(|i| {
                let seg = self.segment(&obj, i)?;
                Ok(seg.meta.unwrap_or_default().encrypted_key)
            })
            .collect::<Result<_, MetainfoError>>()?;
        Ok(pb::BeginMoveObjectResponse {
            stream_id: obj.stream_id,
            segment_keys,
        })
    }

    /// Second half of a move: the object (same stream, same pieces) under
    /// its new key, with its keys rewrapped, in one write. An object at the
    /// new key is replaced.
    pub fn finish_move_object(
        &self,
        project: &ProjectId,
        req: &pb::FinishMoveObjectRequest,
    ) -> Result<(), MetainfoError> {
        retry_conflicts(|| self.relocate(project, req, Relocation::Move))?;
        metrics::counter!("loam_satellite_objects_moved_total").increment(1);
        Ok(())
    }

    /// Second half of a server-side copy: a new object at the new key that
    /// shares the source's segments (no piece data is read or written),
    /// under its own rewrapped keys. The copy is billed like an upload of
    /// the same size; the pieces stay until the last object using them is
    /// gone.
    pub fn finish_copy_object(
        &self,
        project: &ProjectId,
        req: &pb::FinishMoveObjectRequest,
    ) -> Result<(), MetainfoError> {
        retry_conflicts(|| self.relocate(project, req, Relocation::Copy))?;
        metrics::counter!("loam_satellite_objects_copied_total").increment(1);
        Ok(())
    }

    fn relocate(
        &self,
        project: &ProjectId,
        req: &pb::FinishMoveObjectRequest,
        how: Relocation,
    ) -> Result<(), MetainfoError> {
        let (source, source_rec) = self.object(project, &req.bucket, &req.encrypted_key)?;
        let mut obj = (*source_rec).clone();
        if obj.stream_id != req.stream_id {
            return Err(MetainfoError::Invalid(
                "the object was replaced meanwhile; try again",
            ));
        }
        if obj.dataset {
            return Err(MetainfoError::Invalid(
                "datasets cannot be moved or copied; upload the dataset again under the new name",
            ));
        }
        let target_bucket = self.open_bucket(project, &req.new_bucket)?;
        check_object_key(&req.new_encrypted_key)?;
        if req.new_encrypted_metadata.len() > MAX_ENCRYPTED_METADATA_LEN {
            return Err(MetainfoError::Invalid("encrypted metadata too large"));
        }
        // What was verified stays verified: the inline bytes keep their
        // size, each segment keeps its pieces.
        if req.new_inline_data.len() != obj.inline_data.len() {
            return Err(MetainfoError::Invalid(
                "resealed inline data must keep its size",
            ));
        }
        if req.new_segment_keys.len() != obj.segment_count as usize
            || req.new_segment_keys.iter().any(|k| k.len() > 256)
        {
            return Err(MetainfoError::Invalid(
                "a move or copy needs one rewrapped key per segment",
            ));
        }
        let target = ObjectLocation::new(project, &req.new_bucket, &req.new_encrypted_key);
        if target == source {
            return Err(MetainfoError::Invalid(
                "source and destination are the same",
            ));
        }
        let size = stored_size(&obj);
        let mut batch = Batch::new();
        batch.expect_object(&source, Some(&source_rec));
        batch.expect_bucket(project, &req.new_bucket, Some(&target_bucket));
        match how {
            Relocation::Move => {
                batch.delete_object(&source);
                if obj.segment_keys.is_empty() {
                    // The stream's own keys live in its segment records.
                    for (i, wrapped) in req.new_segment_keys.iter().enumerate() {
                        let at = SegmentPosition::new(&obj.stream_id, i as u32);
                        let seg = self
                            .metabase
                            .segment(&at)?
                            .ok_or(DbError::Corrupt("missing segment"))?;
                        let mut new = (*seg).clone();
                        new.meta.get_or_insert_with(Default::default).encrypted_key =
                            wrapped.clone();
                        batch.expect_segment(&at, &seg);
                        batch.put_segment(&at, &new);
                    }
                } else {
                    obj.segment_keys = req.new_segment_keys.clone();
                }
            }
            Relocation::Copy => {
                self.check_storage(project, size)?;
                obj.segment_keys = req.new_segment_keys.clone();
                obj.created_unix_ms = now_ms();
                obj.compute_enabled = false;
            }
        }
        let mut refs = Vec::new();
        if how == Relocation::Copy {
            refs.push((&obj, 1));
        }
        let mut replaced = 0;
        let old = self.metabase.object(&target)?;
        batch.expect_object(&target, old.as_ref());
        if let Some(old) = &old {
            replaced = stored_size(old);
            refs.push((old, -1));
        }
        self.metabase.change_stream_refs(&refs, &mut batch)?;
        obj.encrypted_metadata = req.new_encrypted_metadata.clone();
        obj.inline_data = req.new_inline_data.clone();
        batch.put_object(&target, &obj);
        self.metabase.write(batch)?;
        let added = if how == Relocation::Copy { size } else { 0 };
        self.adjust_stored(project, added, replaced);
        Ok(())
    }

    pub fn download_segment(
        &self,
        project: &ProjectId,
        req: &pb::DownloadSegmentRequest,
    ) -> Result<pb::DownloadSegmentResponse, MetainfoError> {
        let (_, obj) = self.object(project, &req.bucket, &req.encrypted_key)?;
        let seg = self.segment(&obj, req.index)?;
        let k = seg
            .redundancy
            .as_ref()
            .and_then(|r| RedundancyScheme::try_from(r).ok())
            .map_or(1, |r| r.k());
        let bytes = segment_bytes(&seg.meta.clone().unwrap_or_default(), k)?;
        self.charge_egress(project, bytes)?;
        let billing = self.orders.seal_billing(project, &req.bucket);
        Ok(self.segment_limits_billed(&seg, PieceAction::Get, None, billing))
    }

    /// One committed segment of `obj`.
    pub fn segment(
        &self,
        obj: &pb::ObjectRecord,
        index: u32,
    ) -> Result<pb::SegmentRecord, MetainfoError> {
        if index >= obj.segment_count {
            return Err(MetainfoError::Invalid("segment index beyond the object"));
        }
        let mut seg = self
            .metabase
            .segment(&SegmentPosition::new(&obj.stream_id, index))?
            .ok_or(DbError::Corrupt("missing segment"))?
            .into_inner();
        // A copy reads the shared segment under its own wrapped key.
        if let Some(key) = obj.segment_keys.get(index as usize) {
            seg.meta.get_or_insert_with(Default::default).encrypted_key = key.clone();
        }
        Ok(seg)
    }

    /// Order limits for `action` on every piece of `seg` held by an online
    /// node other than `except`, under one fresh piece key.
    pub fn segment_limits(
        &self,
        seg: &pb::SegmentRecord,
        action: PieceAction,
        except: Option<NodeId>,
    ) -> pb::DownloadSegmentResponse {
        self.segment_limits_billed(seg, action, except, Vec::new())
    }

    /// [`Metainfo::segment_limits`] with billing metadata in every limit.
    fn segment_limits_billed(
        &self,
        seg: &pb::SegmentRecord,
        action: PieceAction,
        except: Option<NodeId>,
        billing: Vec<u8>,
    ) -> pb::DownloadSegmentResponse {
        let meta = seg.meta.clone().unwrap_or_default();
        let piece_key = KeyPair::generate();
        let now = now_ms();
        let mut limits = Vec::new();
        if let Ok(root) = PieceId::try_from(seg.root_piece_id.as_ref()) {
            for p in &seg.pieces {
                let Ok(node_id) = NodeId::try_from(p.node_id.as_ref()) else {
                    continue;
                };
                if Some(node_id) == except {
                    continue;
                }
                let Some(node) = self.overlay.get(&node_id) else {
                    continue;
                };
                if !self.overlay.is_online(&node, now) {
                    continue;
                }
                let piece_id = PieceId::derive(&root, &node_id, p.piece_num);
                limits.push(pb::AddressedOrderLimit {
                    limit: Some(self.limit(
                        node_id,
                        piece_id,
                        action,
                        meta.piece_size.max(0) as u64,
                        &piece_key,
                        billing.clone(),
                    )),
                    address: node.address.clone(),
                    node_id: p.node_id.clone(),
                    piece_num: p.piece_num,
                    piece_hash: p.hash.clone(),
                });
            }
        }
        pb::DownloadSegmentResponse {
            meta: Some(meta),
            limits,
            piece_private_key: piece_key.seed().to_vec().into(),
            redundancy: seg.redundancy,
        }
    }

    /// Calls `f` with every committed segment and its position, a page at
    /// a time: the one segment loop the chores (checker, audit sampling,
    /// tally) and `satellite status` walk, in memory bounded whatever the
    /// number of segments.
    pub fn for_each_segment(
        &self,
        mut f: impl FnMut(SegmentPosition, Stored<pb::SegmentRecord>),
    ) -> Result<(), MetainfoError> {
        self.metabase.for_each_segment(|at, seg| {
            f(at, seg);
            Ok::<_, DbError>(())
        })?;
        Ok(())
    }

    /// Every committed segment with its position (tests; chores use
    /// [`Self::for_each_segment`]).
    pub fn segments(&self) -> Result<Vec<(SegmentPosition, pb::SegmentRecord)>, MetainfoError> {
        let mut out = Vec::new();
        self.for_each_segment(|at, seg| out.push((at, seg.into_inner())))?;
        Ok(out)
    }

    /// Calls `f` with every (node, piece) the metadata places, pending
    /// segments first, then committed ones (see `gc` for why that order),
    /// a page at a time.
    pub fn for_each_placement(
        &self,
        mut f: impl FnMut(NodeId, PieceId),
    ) -> Result<(), MetainfoError> {
        self.metabase.for_each_pending_segment(|p| {
            if let Ok(root) = PieceId::try_from(p.root_piece_id.as_ref()) {
                for (node, num) in p.node_ids.iter().zip(&p.piece_nums) {
                    if let Ok(node) = NodeId::try_from(node.as_ref()) {
                        f(node, PieceId::derive(&root, &node, *num));
                    }
                }
            }
            Ok::<_, DbError>(())
        })?;
        self.for_each_segment(|_, seg| {
            let Ok(root) = PieceId::try_from(seg.root_piece_id.as_ref()) else {
                return;
            };
            for p in &seg.pieces {
                if let Ok(node) = NodeId::try_from(p.node_id.as_ref()) {
                    f(node, PieceId::derive(&root, &node, p.piece_num));
                }
            }
        })
    }

    /// Every (node, piece) the metadata places (tests; chores use
    /// [`Self::for_each_placement`]).
    pub fn piece_placements(&self) -> Result<Vec<(NodeId, PieceId)>, MetainfoError> {
        let mut out = Vec::new();
        self.for_each_placement(|node, piece| out.push((node, piece)))?;
        Ok(out)
    }

    /// Pieces held per node.
    pub fn pieces_per_node(&self) -> Result<std::collections::HashMap<NodeId, u64>, MetainfoError> {
        let mut out: std::collections::HashMap<NodeId, u64> = Default::default();
        self.for_each_placement(|node, _| *out.entry(node).or_insert(0) += 1)?;
        Ok(out)
    }

    /// An object's record, for the compute scheduler.
    pub fn object_record(
        &self,
        project: &ProjectId,
        bucket: &str,
        encrypted_key: &[u8],
    ) -> Result<pb::ObjectRecord, MetainfoError> {
        Ok(self.object(project, bucket, encrypted_key)?.1.into_inner())
    }

    /// Opts a dataset in to compute jobs, or out.
    pub fn set_compute(
        &self,
        project: &ProjectId,
        req: &pb::SetComputeRequest,
    ) -> Result<(), MetainfoError> {
        retry_conflicts(|| {
            let (at, read) = self.object(project, &req.bucket, &req.encrypted_key)?;
            if !read.dataset {
                return Err(MetainfoError::NotADataset);
            }
            let mut obj = (*read).clone();
            obj.compute_enabled = req.enabled;
            // Only over the record read: not over an object that replaced
            // it meanwhile.
            let mut batch = Batch::new();
            batch.expect_object(&at, Some(&read));
            batch.put_object(&at, &obj);
            Ok(self.metabase.write(batch)?)
        })
    }

    pub fn delete_object(
        &self,
        project: &ProjectId,
        req: &pb::ObjectRequest,
    ) -> Result<(), MetainfoError> {
        let size = retry_conflicts(|| {
            let (at, obj) = self.object(project, &req.bucket, &req.encrypted_key)?;
            let mut batch = Batch::new();
            batch.expect_object(&at, Some(&obj));
            batch.delete_object(&at);
            self.metabase
                .change_stream_refs(&[(&obj, -1)], &mut batch)?;
            self.metabase.write(batch)?;
            Ok(stored_size(&obj))
        })?;
        self.adjust_stored(project, 0, size);
        metrics::counter!("loam_satellite_objects_deleted_total").increment(1);
        Ok(())
    }

    /// Lists objects under an encrypted prefix. Non-recursive listings
    /// collapse everything below the next `/` into one prefix entry. A page
    /// ends at `limit` items or [`LIST_PAGE_BYTES`] of encoded items,
    /// whichever comes first, and carries no inline data (a listing needs
    /// none, and 1 000 inline objects would not fit in one reply).
    pub fn list_objects(
        &self,
        project: &ProjectId,
        req: &pb::ListObjectsRequest,
    ) -> Result<pb::ListObjectsResponse, MetainfoError> {
        self.list_visible_objects(project, req, &|_, _| true)
    }

    /// As [`Self::list_objects`], showing only the entries `shows` allows
    /// (encrypted key, whether it is a collapsed prefix): hidden entries
    /// take no room in the page.
    pub fn list_visible_objects(
        &self,
        project: &ProjectId,
        req: &pb::ListObjectsRequest,
        shows: &dyn Fn(&[u8], bool) -> bool,
    ) -> Result<pb::ListObjectsResponse, MetainfoError> {
        self.get_bucket(project, &req.bucket)?;
        let limit = match req.limit {
            0 => 1000,
            n => n.min(10_000) as usize,
        };
        // Keys from here on are relative to the bucket.
        let mut start = req.cursor.to_vec();
        if req.cursor.ends_with(b"/") {
            // after everything under a collapsed prefix
            if let Some(last) = start.last_mut() {
                *last = b'/' + 1;
            }
        } else if !req.cursor.is_empty() {
            start.push(0); // strictly after the cursor
        }
        if start.as_slice() < req.prefix.as_ref() {
            start = req.prefix.to_vec();
        }
        let mut page = ListPage::new(limit);
        'outer: loop {
            let batch =
                self.metabase
                    .objects_page(project, &req.bucket, &req.prefix, &start, limit + 1)?;
            let exhausted = batch.len() <= limit;
            for (k, rec) in batch {
                let rel = &k[req.prefix.len()..];
                if !req.recursive
                    && let Some(pos) = rel.iter().position(|b| *b == b'/')
                {
                    let mut name = req.prefix.to_vec();
                    name.extend_from_slice(&rel[..=pos]);
                    let item = pb::ObjectInfo {
                        encrypted_key: name.clone().into(),
                        is_prefix: true,
                        ..Default::default()
                    };
                    if shows(&name, true) && !page.push(item) {
                        break 'outer;
                    }
                    // Skip everything under this prefix: '/' + 1 = '0'.
                    start = name;
                    if let Some(last) = start.last_mut() {
                        *last = b'/' + 1;
                    }
                    continue 'outer;
                }
                start = k.clone();
                start.push(0);
                if expired_at(&rec, now_ms()) || !shows(&k, false) {
                    continue;
                }
                let mut item = object_info(k, rec.into_inner());
                item.inline_data = Default::default();
                if !page.push(item) {
                    break 'outer;
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(page.into_response())
    }
}

/// One page of a listing, bounded by count and by encoded bytes.
struct ListPage {
    items: Vec<pb::ObjectInfo>,
    bytes: usize,
    limit: usize,
    more: bool,
}

impl ListPage {
    fn new(limit: usize) -> Self {
        Self {
            items: Vec::new(),
            bytes: 0,
            limit,
            more: false,
        }
    }

    /// Adds `item` if the page has room; otherwise marks the page as
    /// having more after it and returns false. The first item always fits
    /// (keys and metadata are bounded far below the wire cap).
    fn push(&mut self, item: pb::ObjectInfo) -> bool {
        let len = item.encoded_len();
        // tag + length prefix of a repeated message field
        let len = len + 1 + prost::encoding::encoded_len_varint(len as u64);
        if self.items.len() >= self.limit
            || (!self.items.is_empty() && self.bytes + len > LIST_PAGE_BYTES)
        {
            self.more = true;
            return false;
        }
        self.bytes += len;
        self.items.push(item);
        true
    }

    fn into_response(self) -> pb::ListObjectsResponse {
        pb::ListObjectsResponse {
            items: self.items,
            more: self.more,
        }
    }
}

/// Whether `rec` has expired at `now_ms`.
fn expired_at(rec: &pb::ObjectRecord, now_ms: i64) -> bool {
    rec.expires_unix_ms != 0 && rec.expires_unix_ms <= now_ms
}

fn object_info(encrypted_key: Vec<u8>, rec: pb::ObjectRecord) -> pb::ObjectInfo {
    pb::ObjectInfo {
        expires_unix_ms: rec.expires_unix_ms,
        encrypted_key: encrypted_key.into(),
        created_unix_ms: rec.created_unix_ms,
        plain_size: rec.plain_size,
        segment_count: rec.segment_count,
        encrypted_metadata: rec.encrypted_metadata,
        inline_data: rec.inline_data,
        redundancy: rec.redundancy,
        is_prefix: false,
        dataset: rec.dataset,
        compute_enabled: rec.compute_enabled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Table;

    fn metainfo() -> Metainfo {
        metainfo_on(Arc::new(crate::db::MemKv::default()))
    }

    /// A Metainfo on `kv` (several on one database: several processes).
    fn metainfo_on(kv: Arc<dyn Kv>) -> Metainfo {
        let overlay = Arc::new(
            Overlay::open(
                kv.clone(),
                crate::overlay::OverlayConfig {
                    online_window: Duration::from_secs(60),
                    distinct_subnets: false,
                    min_difficulty: 0,
                    new_node_fraction: 0.05,
                },
            )
            .expect("overlay"),
        );
        Metainfo::new(
            kv,
            overlay,
            Identity::generate(0, |_| {}),
            MetainfoConfig {
                redundancy: "2/3/4/5".parse().expect("scheme"),
                max_segment_size: 1 << 20,
                max_inline_size: 4096,
                order_expiration: Duration::from_secs(60),
                pending_expiration: Duration::from_secs(3600),
                orders: Default::default(),
                default_storage_limit: 0,
                default_egress_limit: 0,
            },
        )
    }

    #[test]
    fn a_project_asked_for_by_many_processes_at_once_is_created_once() {
        let kv: Arc<dyn Kv> = Arc::new(crate::db::MemKv::shared());
        let processes: Vec<Metainfo> = (0..4).map(|_| metainfo_on(kv.clone())).collect();
        let ids: Vec<ProjectId> = std::thread::scope(|s| {
            let asks: Vec<_> = processes
                .iter()
                .map(|m| s.spawn(move || m.create_api_key("team").expect("key").1))
                .collect();
            asks.into_iter().map(|a| a.join().expect("ask")).collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        let projects = kv.scan(Table::Projects, b"", b"", 10).expect("scan");
        assert_eq!(projects.len(), 1, "no orphan project behind a lost race");
        // Limits and the payout address set at once in two processes both
        // stay.
        std::thread::scope(|s| {
            s.spawn(|| {
                for n in 1..=20u64 {
                    let req = pb::SetProjectLimitsRequest {
                        storage_limit: Some(n),
                        ..Default::default()
                    };
                    processes[0]
                        .set_project_limits("team", &req)
                        .expect("limits");
                }
            });
            s.spawn(|| {
                for n in 0..20 {
                    processes[1]
                        .set_payout_address(&ids[0], &format!("wallet-{n}"))
                        .expect("address");
                }
            });
        });
        let rec = processes[2].project_record(&ids[0]).expect("record");
        assert_eq!(rec.storage_limit, 20);
        assert_eq!(rec.payout_address, "wallet-19");
    }

    #[test]
    fn projects_are_found_by_name_through_an_index_built_once_for_old_databases() {
        let m = metainfo();
        let (_, a, _) = m.create_api_key("alpha").expect("alpha");
        let (_, again, _) = m.create_api_key("alpha").expect("alpha again");
        assert_eq!(a, again, "one project per name");
        let (_, b, _) = m.create_api_key("beta").expect("beta");
        assert_eq!(m.find_project("beta").expect("find").map(|p| p.0), Some(b));
        assert_eq!(m.find_project("gamma").expect("find"), None);
        let limits = pb::SetProjectLimitsRequest {
            storage_limit: Some(7),
            ..Default::default()
        };
        assert_eq!(
            m.set_project_limits("alpha", &limits)
                .expect("limits")
                .storage_limit,
            7
        );
        assert_eq!(m.project_record(&a).expect("record").storage_limit, 7);
        assert!(matches!(
            m.set_project_limits("gamma", &limits),
            Err(MetainfoError::ProjectNotFound(_))
        ));

        // A database from before the index: 2 500 projects (three pages)
        // without their names, no marker. The first lookup indexes them all.
        let old = metainfo();
        let mut ids = Vec::new();
        for i in 0..2500 {
            let id: ProjectId = rand::random();
            let rec = pb::ProjectRecord {
                version: 1,
                name: format!("p{i}"),
                ..Default::default()
            };
            old.kv
                .put(Table::Projects, id.to_vec(), rec.encode_to_vec())
                .expect("put");
            ids.push(id);
        }
        assert_eq!(
            old.find_project("p1999").expect("find").map(|p| p.0),
            Some(ids[1999])
        );
        assert_eq!(
            old.kv
                .scan(Table::ProjectNames, b"", b"", usize::MAX)
                .expect("scan")
                .len(),
            2500
        );
        assert!(
            old.kv
                .get(Table::Meta, b"index:project-names")
                .expect("get")
                .is_some()
        );
    }

    #[test]
    fn abandoned_uploads_are_deleted_after_expiry() {
        let m = metainfo();
        let project = project_with_bucket(&m, "bkt");
        let begun = begin(&m, &project, "bkt", b"k").expect("begin");
        let now = now_ms();
        let listed = |m: &Metainfo| {
            m.list_pending(
                &project,
                &pb::ListPendingRequest {
                    bucket: "bkt".into(),
                    ..Default::default()
                },
            )
            .expect("list")
            .items
            .len()
        };
        assert_eq!(listed(&m), 1);
        assert_eq!(m.delete_abandoned_uploads(now).expect("sweep"), 0);
        assert_eq!(
            m.delete_abandoned_uploads(now + 3_600_001).expect("sweep"),
            1
        );
        // Gone from the project's index too.
        assert_eq!(listed(&m), 0);
        assert!(
            m.kv.scan(Table::ProjectPending, b"", b"", 10)
                .expect("scan")
                .is_empty()
        );
        let commit = m.commit_object(
            &project,
            &pb::CommitObjectRequest {
                stream_id: begun.stream_id,
                ..Default::default()
            },
        );
        assert!(matches!(commit, Err(MetainfoError::UploadNotFound)));
    }

    #[test]
    fn nothing_lands_in_a_bucket_deleted_or_being_deleted_after_the_upload_began() {
        let m = metainfo();
        let project = project_with_bucket(&m, "bkt");
        let start = |key: &[u8]| begin(&m, &project, "bkt", key).expect("begin");
        let commit = |stream_id: bytes::Bytes| {
            m.commit_object(
                &project,
                &pb::CommitObjectRequest {
                    stream_id,
                    inline_data: b"data".to_vec().into(),
                    plain_size: 4,
                    ..Default::default()
                },
            )
        };
        // An upload begun, the (empty) bucket deleted, then the commit.
        let begun = start(b"late");
        m.delete_bucket(&project, "bkt").expect("delete");
        assert!(matches!(
            commit(begun.stream_id),
            Err(MetainfoError::BucketNotFound(_))
        ));
        assert!(
            m.kv.scan(Table::Objects, &project, b"", 10)
                .expect("scan")
                .is_empty()
        );
        assert!(m.list_buckets(&project).expect("list").is_empty());

        // A deletion that finds objects leaves the bucket as it was.
        let create = |name: &str| {
            m.create_bucket(
                &project,
                &pb::CreateBucketRequest {
                    name: name.into(),
                    key_check: Default::default(),
                },
            )
        };
        create("bkt").expect("create again");
        assert!(matches!(create("bkt"), Err(MetainfoError::BucketExists(_))));
        put_inline(&m, &project, "bkt", b"kept".to_vec(), b"data");
        let pending = start(b"pending");
        assert!(matches!(
            m.delete_bucket(&project, "bkt"),
            Err(MetainfoError::BucketNotEmpty(_))
        ));
        commit(pending.stream_id).expect("commit after a refused deletion");
        assert_eq!(m.list_buckets(&project).expect("list").len(), 1);

        // A deletion cut short after marking the bucket: it is gone for
        // uploads and listings, and asking again finishes it.
        m.delete_object(
            &project,
            &pb::ObjectRequest {
                bucket: "bkt".into(),
                encrypted_key: b"kept".to_vec().into(),
            },
        )
        .expect("delete");
        m.delete_object(
            &project,
            &pb::ObjectRequest {
                bucket: "bkt".into(),
                encrypted_key: b"pending".to_vec().into(),
            },
        )
        .expect("delete");
        let rec = m.bucket_record(&project, "bkt").expect("bucket");
        let mut batch = Batch::new();
        batch.put_bucket(
            &project,
            "bkt",
            &pb::BucketRecord {
                deleting: true,
                ..rec.into_inner()
            },
        );
        m.metabase.write(batch).expect("mark");
        let begun = begin(&m, &project, "bkt", b"x");
        assert!(matches!(begun, Err(MetainfoError::BucketNotFound(_))));
        assert!(m.list_buckets(&project).expect("list").is_empty());
        m.delete_bucket(&project, "bkt")
            .expect("finish the deletion");
        assert!(m.metabase.bucket(&project, "bkt").expect("get").is_none());
    }

    #[test]
    fn a_commit_asked_again_gets_the_same_answer_until_the_receipt_expires() {
        let m = metainfo();
        let project = project_with_bucket(&m, "bkt");
        let begun = begin(&m, &project, "bkt", b"k").expect("begin");
        let req = pb::CommitObjectRequest {
            stream_id: begun.stream_id,
            inline_data: b"data".to_vec().into(),
            plain_size: 4,
            ..Default::default()
        };
        let first = m.commit_object(&project, &req).expect("commit");
        // The answer was lost and the uplink asks again (another process).
        let again = m.commit_object(&project, &req).expect("asked again");
        assert_eq!(again.created_unix_ms, first.created_unix_ms);
        // The request's caveats are checked against where it went.
        assert_eq!(
            m.pending_path(&project, &req.stream_id).expect("path"),
            ("bkt".to_string(), b"k".to_vec())
        );
        // Stored once: one object, counted once.
        assert_eq!(list_all(&m, &project, "bkt"), vec![b"k".to_vec()]);
        assert_eq!(m.stored_bytes(&project).expect("stored"), 4);
        // Another project cannot use the receipt.
        let other: ProjectId = [9; 16];
        assert!(matches!(
            m.commit_object(&other, &req),
            Err(MetainfoError::UploadNotFound)
        ));
        // Receipts go with the pending-upload expiry; the object stays.
        let now = now_ms();
        m.delete_abandoned_uploads(now).expect("sweep");
        assert!(m.commit_object(&project, &req).is_ok());
        m.delete_abandoned_uploads(now + 3_600_001).expect("sweep");
        assert!(matches!(
            m.commit_object(&project, &req),
            Err(MetainfoError::UploadNotFound)
        ));
        assert!(m.metabase.receipt(&req.stream_id).expect("read").is_none());
        assert_eq!(list_all(&m, &project, "bkt"), vec![b"k".to_vec()]);
    }

    /// Begins an upload of `key` into `bucket`.
    fn begin(
        m: &Metainfo,
        project: &ProjectId,
        bucket: &str,
        key: &[u8],
    ) -> Result<pb::BeginObjectResponse, MetainfoError> {
        m.begin_object(
            project,
            &pb::BeginObjectRequest {
                bucket: bucket.into(),
                encrypted_key: key.to_vec().into(),
                ..Default::default()
            },
        )
    }

    /// A project "p" with a bucket called `bucket`.
    fn project_with_bucket(m: &Metainfo, bucket: &str) -> ProjectId {
        let (key, _, _) = m.create_api_key("p").expect("key");
        let project = m.authenticate(&key).expect("auth").project;
        m.create_bucket(
            &project,
            &pb::CreateBucketRequest {
                name: bucket.into(),
                key_check: Default::default(),
            },
        )
        .expect("bucket");
        project
    }

    /// Commits an inline object of `data` under `key` in `bucket`.
    fn put_inline(m: &Metainfo, project: &ProjectId, bucket: &str, key: Vec<u8>, data: &[u8]) {
        let begun = m
            .begin_object(
                project,
                &pb::BeginObjectRequest {
                    bucket: bucket.into(),
                    encrypted_key: key.into(),
                    ..Default::default()
                },
            )
            .expect("begin");
        m.commit_object(
            project,
            &pb::CommitObjectRequest {
                stream_id: begun.stream_id,
                inline_data: data.to_vec().into(),
                plain_size: data.len() as i64 / 2,
                ..Default::default()
            },
        )
        .expect("commit");
    }

    /// Lists a whole bucket page by page, checking that every reply fits
    /// the wire's message cap.
    fn list_all(m: &Metainfo, project: &ProjectId, bucket: &str) -> Vec<Vec<u8>> {
        let mut cursor = bytes::Bytes::new();
        let mut out = Vec::new();
        loop {
            let page = m
                .list_objects(
                    project,
                    &pb::ListObjectsRequest {
                        bucket: bucket.into(),
                        cursor: cursor.clone(),
                        recursive: true,
                        limit: 1000,
                        ..Default::default()
                    },
                )
                .expect("list");
            let len = pb::SatelliteResponse {
                response: Some(pb::satellite_response::Response::ListObjects(page.clone())),
            }
            .encoded_len();
            assert!(
                len < loam_common::wire::MAX_MESSAGE_LEN,
                "a listing reply of {len} bytes exceeds the cap"
            );
            assert!(page.items.iter().all(|i| i.inline_data.is_empty()));
            out.extend(page.items.iter().map(|i| i.encrypted_key.to_vec()));
            match (page.more, page.items.last()) {
                (true, Some(last)) => cursor = last.encrypted_key.clone(),
                _ => return out,
            }
        }
    }

    #[test]
    fn listings_page_by_bytes_and_carry_no_inline_data() {
        let m = metainfo();
        let (key, _, _) = m.create_api_key("p").expect("key");
        let project = m.authenticate(&key).expect("auth").project;
        for b in ["small", "long"] {
            m.create_bucket(
                &project,
                &pb::CreateBucketRequest {
                    name: b.into(),
                    key_check: Default::default(),
                },
            )
            .expect("bucket");
        }
        // 5 000 inline objects of 4 KB: 1 000 of them were 4 MB of reply.
        let data = vec![7u8; 4096];
        for i in 0..5000 {
            put_inline(
                &m,
                &project,
                "small",
                format!("k{i:05}").into_bytes(),
                &data,
            );
        }
        let listed = list_all(&m, &project, "small");
        assert_eq!(listed.len(), 5000);
        assert!(listed.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        // 500 objects whose encrypted keys are 14 KB each.
        for i in 0..500 {
            let mut key = format!("{i:03}").into_bytes();
            key.resize(14 << 10, b'x');
            put_inline(&m, &project, "long", key, b"tiny");
        }
        assert_eq!(list_all(&m, &project, "long").len(), 500);
    }

    #[test]
    fn a_move_keeps_what_was_verified_and_refuses_stale_or_altered_requests() {
        let m = metainfo();
        let project = project_with_bucket(&m, "bkt");
        put_inline(&m, &project, "bkt", b"a".to_vec(), &[1; 64]);
        put_inline(&m, &project, "bkt", b"b".to_vec(), &[2; 32]);
        let stored = m.stored_bytes(&project).expect("stored");
        let get = |key: &[u8]| {
            m.get_object(
                &project,
                &pb::ObjectRequest {
                    bucket: "bkt".into(),
                    encrypted_key: key.to_vec().into(),
                },
            )
        };
        let begun = m
            .begin_move_object(
                &project,
                &pb::ObjectRequest {
                    bucket: "bkt".into(),
                    encrypted_key: b"a".to_vec().into(),
                },
            )
            .expect("begin");
        assert!(begun.segment_keys.is_empty(), "an inline object");
        let good = pb::FinishMoveObjectRequest {
            bucket: "bkt".into(),
            encrypted_key: b"a".to_vec().into(),
            stream_id: begun.stream_id.clone(),
            new_bucket: "bkt".into(),
            new_encrypted_key: b"b".to_vec().into(),
            new_encrypted_metadata: b"meta".to_vec().into(),
            new_inline_data: vec![9; 64].into(),
            new_segment_keys: Vec::new(),
        };
        // A client may not change what the satellite verified, nor move an
        // object that was replaced since it looked.
        for bad in [
            pb::FinishMoveObjectRequest {
                new_inline_data: vec![9; 8].into(),
                ..good.clone()
            },
            pb::FinishMoveObjectRequest {
                new_segment_keys: vec![vec![1; 40].into()],
                ..good.clone()
            },
            pb::FinishMoveObjectRequest {
                stream_id: vec![0; 16].into(),
                ..good.clone()
            },
            pb::FinishMoveObjectRequest {
                new_encrypted_key: b"a".to_vec().into(),
                ..good.clone()
            },
            pb::FinishMoveObjectRequest {
                new_bucket: "nope".into(),
                ..good.clone()
            },
        ] {
            assert!(m.finish_move_object(&project, &bad).is_err());
            assert!(get(b"a").is_ok(), "a refused move changes nothing");
        }
        // The move replaces "b": one object is left, stored bytes drop by
        // the replaced object's only.
        m.finish_move_object(&project, &good).expect("move");
        assert!(matches!(get(b"a"), Err(MetainfoError::ObjectNotFound)));
        let moved = get(b"b").expect("moved");
        assert_eq!(moved.inline_data.as_ref(), &[9; 64]);
        assert_eq!(moved.encrypted_metadata.as_ref(), b"meta");
        assert_eq!(m.stored_bytes(&project).expect("stored"), stored - 32);
        // The old request cannot be replayed.
        assert!(m.finish_move_object(&project, &good).is_err());
    }

    #[test]
    fn overlong_keys_and_metadata_are_refused() {
        let m = metainfo();
        let project = project_with_bucket(&m, "bkt");
        let long = m.begin_object(
            &project,
            &pb::BeginObjectRequest {
                bucket: "bkt".into(),
                encrypted_key: vec![b'a'; MAX_ENCRYPTED_KEY_LEN + 1].into(),
                ..Default::default()
            },
        );
        assert!(matches!(long, Err(MetainfoError::KeyTooLong { .. })));
        let begun = begin(&m, &project, "bkt", b"k").expect("begin");
        let commit = m.commit_object(
            &project,
            &pb::CommitObjectRequest {
                stream_id: begun.stream_id,
                encrypted_metadata: vec![0; MAX_ENCRYPTED_METADATA_LEN + 1].into(),
                inline_data: vec![1; 64].into(),
                ..Default::default()
            },
        );
        assert!(matches!(commit, Err(MetainfoError::Invalid(_))));
    }

    /// Nodes checked in to `m`'s overlay, each with its key.
    fn fake_nodes(m: &Metainfo, n: usize) -> Vec<KeyPair> {
        (0..n)
            .map(|i| {
                let key = KeyPair::generate();
                m.overlay
                    .check_in(
                        key.public().node_id(),
                        &pb::CheckInRequest {
                            address: format!("127.0.0.1:{}", 1000 + i),
                            free_disk: 1 << 40,
                            public_key: key.public().as_bytes().to_vec().into(),
                            ..Default::default()
                        },
                        now_ms(),
                    )
                    .expect("check in");
                key
            })
            .collect()
    }

    /// Begins and commits segment `index` with pieces of `piece_size`
    /// signed by `nodes`, claiming `plain_size` bytes of plaintext.
    fn commit_segment(
        m: &Metainfo,
        project: &ProjectId,
        nodes: &[KeyPair],
        stream_id: &bytes::Bytes,
        index: u32,
        piece_size: i64,
        plain_size: i64,
    ) -> Result<(), MetainfoError> {
        commit_part_segment(
            m,
            project,
            nodes,
            stream_id,
            index,
            piece_size,
            plain_size,
            &[],
        )
    }

    /// [`commit_segment`] carrying a (sealed, here opaque) part record.
    #[allow(clippy::too_many_arguments)]
    fn commit_part_segment(
        m: &Metainfo,
        project: &ProjectId,
        nodes: &[KeyPair],
        stream_id: &bytes::Bytes,
        index: u32,
        piece_size: i64,
        plain_size: i64,
        part_info: &[u8],
    ) -> Result<(), MetainfoError> {
        let begun = m.begin_segment(
            project,
            &pb::BeginSegmentRequest {
                stream_id: stream_id.clone(),
                index,
                piece_size,
            },
        )?;
        let root = PieceId::try_from(begun.root_piece_id.as_ref()).expect("root");
        let pieces = begun
            .limits
            .iter()
            .map(|l| {
                let id = NodeId::try_from(l.node_id.as_ref()).expect("node id");
                let key = nodes
                    .iter()
                    .find(|k| k.public().node_id() == id)
                    .expect("one of ours");
                pb::PieceResult {
                    piece_num: l.piece_num,
                    node_id: l.node_id.clone(),
                    hash: Some(
                        PieceHash {
                            piece_id: PieceId::derive(&root, &id, l.piece_num),
                            hash: [1; 32],
                            size: piece_size as u64,
                            timestamp_ms: now_ms(),
                        }
                        .sign(key),
                    ),
                }
            })
            .collect();
        m.commit_segment(
            project,
            &pb::CommitSegmentRequest {
                stream_id: stream_id.clone(),
                index,
                pieces,
                meta: Some(pb::SegmentMeta {
                    plain_size,
                    piece_size,
                    encrypted_part_info: part_info.to_vec().into(),
                    ..Default::default()
                }),
                root_piece_id: begun.root_piece_id,
            },
        )
    }

    #[test]
    fn a_multipart_commit_keeps_the_named_segments_in_order_and_drops_the_rest() {
        let m = metainfo();
        let nodes = fake_nodes(&m, 5);
        let project = project_with_bucket(&m, "bkt");
        let multipart = |key: &[u8]| {
            m.begin_object(
                &project,
                &pb::BeginObjectRequest {
                    bucket: "bkt".into(),
                    encrypted_key: key.to_vec().into(),
                    multipart: true,
                    encrypted_metadata: vec![5; 40].into(),
                },
            )
            .expect("begin")
            .stream_id
        };
        let stream = multipart(b"mp");
        let at = |part: u32, i: u32| part << 16 | i;
        let piece = 100_000i64;
        // Parts uploaded out of order, one begun and never committed.
        commit_part_segment(&m, &project, &nodes, &stream, at(2, 0), piece, 20, b"two")
            .expect("part 2");
        commit_part_segment(&m, &project, &nodes, &stream, at(1, 0), piece, 10, b"one")
            .expect("part 1");
        commit_part_segment(&m, &project, &nodes, &stream, at(3, 0), piece, 30, b"three")
            .expect("part 3");
        m.begin_segment(
            &project,
            &pb::BeginSegmentRequest {
                stream_id: stream.clone(),
                index: at(4, 0),
                piece_size: piece,
            },
        )
        .expect("begin part 4");
        let before = m.piece_placements().expect("placements").len();

        // The upload lists its segments in position order, with what it
        // began with; a page at a time.
        let list = |cursor, limit| {
            m.list_upload_segments(
                &project,
                &pb::ListUploadSegmentsRequest {
                    bucket: "bkt".into(),
                    stream_id: stream.clone(),
                    cursor,
                    limit,
                },
            )
        };
        let all = list(0, 10).expect("list");
        let positions: Vec<u32> = all.items.iter().map(|s| s.position).collect();
        assert_eq!(positions, vec![at(1, 0), at(2, 0), at(3, 0)]);
        assert_eq!(all.items[0].encrypted_part_info.as_ref(), b"one");
        assert_eq!(all.encrypted_metadata.as_ref(), &[5; 40][..]);
        assert!(all.multipart && !all.more);
        let page = list(at(1, 1), 1).expect("page");
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].position, at(2, 0));
        assert!(page.more);
        // Only in its own bucket.
        let elsewhere = m.list_upload_segments(
            &project,
            &pb::ListUploadSegmentsRequest {
                bucket: "other".into(),
                stream_id: stream.clone(),
                ..Default::default()
            },
        );
        assert!(matches!(elsewhere, Err(MetainfoError::UploadNotFound)));

        let commit = |positions: Vec<u32>, count: u32, size: i64| {
            m.commit_object(
                &project,
                &pb::CommitObjectRequest {
                    stream_id: stream.clone(),
                    plain_size: size,
                    segment_count: count,
                    segment_positions: positions,
                    ..Default::default()
                },
            )
        };
        // Refused: out of order, repeated, a count that differs, none
        // named, one never committed, a size the segments do not hold.
        for (positions, count, size) in [
            (vec![at(2, 0), at(1, 0)], 2, 30),
            (vec![at(1, 0), at(1, 0)], 2, 20),
            (vec![at(1, 0), at(2, 0)], 3, 30),
            (vec![], 2, 30),
            (vec![at(1, 0), at(5, 0)], 2, 30),
            (vec![at(1, 0), at(2, 0)], 2, 31),
        ] {
            assert!(
                commit(positions.clone(), count, size).is_err(),
                "{positions:?} {count} {size}"
            );
        }
        commit(vec![at(1, 0), at(2, 0)], 2, 30).expect("commit");

        // The object's segments are 0 and 1, in the order named, without
        // their part records; part 3 and the begun part 4 are gone.
        let segs = m
            .metabase
            .stream_segments(&stream, 0, 10)
            .expect("segments");
        let got: Vec<(u32, i64, bool)> = segs
            .into_iter()
            .map(|(i, s)| {
                let meta = s.into_inner().meta.unwrap_or_default();
                (i, meta.plain_size, meta.encrypted_part_info.is_empty())
            })
            .collect();
        assert_eq!(got, vec![(0, 10, true), (1, 20, true)]);
        assert!(
            m.metabase
                .pending_segment_positions(&stream)
                .expect("pending")
                .is_empty()
        );
        let per_segment = before / 4;
        assert_eq!(
            m.piece_placements().expect("placements").len(),
            before - 2 * per_segment
        );
        let info = m
            .get_object(
                &project,
                &pb::ObjectRequest {
                    bucket: "bkt".into(),
                    encrypted_key: b"mp".to_vec().into(),
                },
            )
            .expect("object");
        assert_eq!((info.plain_size, info.segment_count), (30, 2));
    }

    #[test]
    fn part_records_and_positions_belong_to_multipart_uploads() {
        let m = metainfo();
        let nodes = fake_nodes(&m, 5);
        let project = project_with_bucket(&m, "bkt");
        let plain = begin(&m, &project, "bkt", b"plain")
            .expect("begin")
            .stream_id;
        let piece = 100_000i64;
        // A part record on an ordinary upload, or one too large.
        let e = commit_part_segment(&m, &project, &nodes, &plain, 0, piece, 10, b"rec");
        assert!(matches!(e, Err(MetainfoError::Invalid(_))), "{e:?}");
        commit_segment(&m, &project, &nodes, &plain, 0, piece, 10).expect("segment");
        // Positions on an ordinary upload.
        let e = m.commit_object(
            &project,
            &pb::CommitObjectRequest {
                stream_id: plain.clone(),
                plain_size: 10,
                segment_count: 1,
                segment_positions: vec![0],
                ..Default::default()
            },
        );
        assert!(matches!(e, Err(MetainfoError::Invalid(_))), "{e:?}");
        // Metadata at the beginning of an ordinary upload.
        let e = m.begin_object(
            &project,
            &pb::BeginObjectRequest {
                bucket: "bkt".into(),
                encrypted_key: b"x".to_vec().into(),
                encrypted_metadata: vec![1; 8].into(),
                ..Default::default()
            },
        );
        assert!(matches!(e, Err(MetainfoError::Invalid(_))), "{e:?}");
        let mp = m
            .begin_object(
                &project,
                &pb::BeginObjectRequest {
                    bucket: "bkt".into(),
                    encrypted_key: b"mp".to_vec().into(),
                    multipart: true,
                    ..Default::default()
                },
            )
            .expect("begin")
            .stream_id;
        let e = commit_part_segment(
            &m,
            &project,
            &nodes,
            &mp,
            1 << 16,
            piece,
            10,
            &[0; MAX_PART_INFO_LEN + 1],
        );
        assert!(matches!(e, Err(MetainfoError::Invalid(_))), "{e:?}");
    }

    /// Sets an object's expiry time to `at`, as if it had been uploaded so;
    /// returns the time it had.
    fn expire_at(m: &Metainfo, project: &ProjectId, bucket: &str, key: &[u8], at: i64) -> i64 {
        let at_key = ObjectLocation::new(project, bucket, key);
        let mut rec = m
            .metabase
            .object(&at_key)
            .expect("get")
            .expect("object")
            .into_inner();
        let had = rec.expires_unix_ms;
        rec.expires_unix_ms = at;
        let mut batch = Batch::new();
        batch.put_object(&at_key, &rec);
        m.metabase.write(batch).expect("put");
        had
    }

    /// Makes an object's expiry time already past (a commit refuses one).
    fn expire_now(m: &Metainfo, project: &ProjectId, bucket: &str, key: &[u8]) -> i64 {
        expire_at(m, project, bucket, key, now_ms() - 1)
    }

    #[test]
    fn expired_objects_are_hidden_then_deleted() {
        let m = metainfo();
        let project = project_with_bucket(&m, "bkt");
        put_inline(&m, &project, "bkt", b"keep".to_vec(), &[1; 32]);
        let stream = begin(&m, &project, "bkt", b"gone")
            .expect("begin")
            .stream_id;
        let expires = now_ms() + 60_000;
        m.commit_object(
            &project,
            &pb::CommitObjectRequest {
                stream_id: stream,
                plain_size: 16,
                inline_data: vec![2; 48].into(),
                expires_unix_ms: expires,
                ..Default::default()
            },
        )
        .expect("commit");
        assert_eq!(list_all(&m, &project, "bkt").len(), 2);
        let stored = m.stored_bytes(&project).expect("stored");
        // Nothing has expired yet; a minute later one object has.
        assert_eq!(m.delete_expired_objects(now_ms()).expect("sweep"), 0);
        // Past its time, before any sweep, an object is neither listed nor
        // readable.
        let later = expire_now(&m, &project, "bkt", b"gone");
        assert_eq!(list_all(&m, &project, "bkt"), [b"keep".to_vec()]);
        let get = m.get_object(
            &project,
            &pb::ObjectRequest {
                bucket: "bkt".into(),
                encrypted_key: b"gone".to_vec().into(),
            },
        );
        assert!(matches!(get, Err(MetainfoError::ObjectNotFound)), "{get:?}");
        expire_at(&m, &project, "bkt", b"gone", later);
        assert_eq!(m.delete_expired_objects(expires + 1).expect("sweep"), 1);
        assert_eq!(list_all(&m, &project, "bkt"), [b"keep".to_vec()]);
        assert_eq!(m.stored_bytes(&project).expect("stored"), stored - 48);
        assert_eq!(m.delete_expired_objects(expires + 1).expect("sweep"), 0);
    }

    #[test]
    fn a_bucket_holding_only_expired_objects_can_be_removed() {
        let m = metainfo();
        let project = project_with_bucket(&m, "bkt");
        let stream = begin(&m, &project, "bkt", b"soon")
            .expect("begin")
            .stream_id;
        m.commit_object(
            &project,
            &pb::CommitObjectRequest {
                stream_id: stream,
                plain_size: 16,
                inline_data: vec![2; 48].into(),
                expires_unix_ms: now_ms() + 60_000,
                ..Default::default()
            },
        )
        .expect("commit");
        assert!(matches!(
            m.delete_bucket(&project, "bkt"),
            Err(MetainfoError::BucketNotEmpty(_))
        ));
        expire_now(&m, &project, "bkt", b"soon");
        m.delete_bucket(&project, "bkt")
            .expect("only expired objects left");
        assert_eq!(m.stored_bytes(&project).expect("stored"), 0);
        assert!(
            m.kv.scan(Table::Objects, b"", b"", 10)
                .expect("scan")
                .is_empty()
        );
    }

    #[test]
    fn copies_share_segments_until_the_last_object_using_them_is_gone() {
        let m = metainfo();
        let nodes = fake_nodes(&m, 5);
        let project = project_with_bucket(&m, "bkt");
        let stream = begin(&m, &project, "bkt", b"orig")
            .expect("begin")
            .stream_id;
        let piece = 100_000i64;
        commit_segment(&m, &project, &nodes, &stream, 0, piece, 10).expect("segment");
        m.commit_object(
            &project,
            &pb::CommitObjectRequest {
                stream_id: stream.clone(),
                plain_size: 10,
                segment_count: 1,
                ..Default::default()
            },
        )
        .expect("commit");
        let one = m.stored_bytes(&project).expect("stored");
        let placements = m.piece_placements().expect("placements").len();
        let req = |key: &[u8]| pb::ObjectRequest {
            bucket: "bkt".into(),
            encrypted_key: key.to_vec().into(),
        };
        let copy = |from: &[u8], to: &[u8], wrapped: u8| {
            let begun = m.begin_move_object(&project, &req(from)).expect("begin");
            m.finish_copy_object(
                &project,
                &pb::FinishMoveObjectRequest {
                    bucket: "bkt".into(),
                    encrypted_key: from.to_vec().into(),
                    stream_id: begun.stream_id,
                    new_bucket: "bkt".into(),
                    new_encrypted_key: to.to_vec().into(),
                    new_segment_keys: vec![vec![wrapped; 40].into()],
                    ..Default::default()
                },
            )
        };
        copy(b"orig", b"c1", 1).expect("copy");
        copy(b"c1", b"c2", 2).expect("copy of a copy");
        // Each copy is billed, the pieces are not duplicated, and each
        // object reads under its own wrapped key.
        assert_eq!(m.stored_bytes(&project).expect("stored"), 3 * one);
        assert_eq!(m.piece_placements().expect("placements").len(), placements);
        let key_of = |k: &[u8]| {
            let (_, obj) = m.object(&project, "bkt", k).expect("object");
            m.segment(&obj, 0)
                .expect("segment")
                .meta
                .expect("meta")
                .encrypted_key
        };
        assert_eq!(key_of(b"c2").as_ref(), &[2; 40]);
        // Copying over a copy of the same stream changes no count.
        copy(b"orig", b"c2", 3).expect("copy over");
        assert_eq!(key_of(b"c2").as_ref(), &[3; 40]);
        // Deleting the original and one copy leaves the other readable.
        m.delete_object(&project, &req(b"orig")).expect("delete");
        m.delete_object(&project, &req(b"c1")).expect("delete");
        assert_eq!(key_of(b"c2").as_ref(), &[3; 40]);
        assert_eq!(m.piece_placements().expect("placements").len(), placements);
        // A move of a copy keeps sharing; the last delete frees the pieces.
        let begun = m.begin_move_object(&project, &req(b"c2")).expect("begin");
        m.finish_move_object(
            &project,
            &pb::FinishMoveObjectRequest {
                bucket: "bkt".into(),
                encrypted_key: b"c2".to_vec().into(),
                stream_id: begun.stream_id,
                new_bucket: "bkt".into(),
                new_encrypted_key: b"last".to_vec().into(),
                new_segment_keys: vec![vec![4; 40].into()],
                ..Default::default()
            },
        )
        .expect("move");
        assert_eq!(key_of(b"last").as_ref(), &[4; 40]);
        m.delete_object(&project, &req(b"last")).expect("delete");
        assert_eq!(m.piece_placements().expect("placements").len(), 0);
        assert_eq!(m.stored_bytes(&project).expect("stored"), 0);
        assert!(
            m.kv.scan(Table::StreamRefs, b"", b"", usize::MAX)
                .expect("scan")
                .is_empty()
        );
    }

    #[test]
    fn sizes_that_bill_and_limit_are_the_ones_the_satellite_verified() {
        let m = metainfo();
        let nodes = fake_nodes(&m, 5);
        let project = project_with_bucket(&m, "bkt");
        let start = |k: &[u8]| begin(&m, &project, "bkt", k).expect("begin").stream_id;
        let piece = 100_000i64;
        let row = loam_common::encryption::plain_len(piece as usize).expect("row") as i64;

        // A segment cannot claim more plaintext than its pieces hold.
        let stream = start(b"big");
        let e = commit_segment(&m, &project, &nodes, &stream, 0, piece, 2 * row + 1);
        assert!(matches!(e, Err(MetainfoError::Invalid(_))), "{e:?}");

        // An object cannot claim to be smaller than its segments: plain
        // size 0 meant free, unlimited storage.
        commit_segment(&m, &project, &nodes, &stream, 0, piece, 2 * row).expect("segment");
        let e = m.commit_object(
            &project,
            &pb::CommitObjectRequest {
                stream_id: stream.clone(),
                plain_size: 0,
                segment_count: 1,
                ..Default::default()
            },
        );
        assert!(matches!(e, Err(MetainfoError::Invalid(_))), "{e:?}");
        // Nor inline data smaller than it claims.
        let inline = start(b"inline");
        let e = m.commit_object(
            &project,
            &pb::CommitObjectRequest {
                stream_id: inline,
                plain_size: 1000,
                inline_data: vec![0; 100].into(),
                ..Default::default()
            },
        );
        assert!(matches!(e, Err(MetainfoError::Invalid(_))), "{e:?}");

        // Honest: billed for the piece size the nodes signed, times k.
        m.commit_object(
            &project,
            &pb::CommitObjectRequest {
                stream_id: stream,
                plain_size: 2 * row,
                segment_count: 1,
                ..Default::default()
            },
        )
        .expect("commit");
        let (_, rec) = m.object(&project, "bkt", b"big").expect("object");
        assert_eq!(rec.stored_size, 2 * piece as u64);
        assert_eq!(m.stored_bytes(&project).expect("stored"), 2 * piece as u64);
        let usage = m.project_usage(&project).expect("usage");
        assert_eq!(usage.stored_bytes, 2 * piece as u64);

        // The storage limit counts those bytes: a second segment of the
        // same size no longer fits a limit of three pieces' worth.
        m.set_project_limits(
            "p",
            &pb::SetProjectLimitsRequest {
                storage_limit: Some(3 * piece as u64),
                ..Default::default()
            },
        )
        .expect("limits");
        let next = start(b"next");
        let e = commit_segment(&m, &project, &nodes, &next, 0, piece, 1);
        assert!(
            matches!(e, Err(MetainfoError::StorageLimit { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        assert!(validate_bucket_name("photos-2024").is_ok());
        assert!(validate_bucket_name("a").is_err());
        assert!(validate_bucket_name("ab").is_ok());
        assert!(validate_bucket_name("Photos").is_err());
        assert!(validate_bucket_name("-photos").is_err());
        assert!(validate_bucket_name("pho_tos").is_err());
    }
}
