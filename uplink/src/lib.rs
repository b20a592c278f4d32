//! The Loam uplink: the client library behind the `uplink` CLI. It
//! encrypts, erasure-codes and uploads objects; downloads and decodes them;
//! manages buckets; and never lets the satellite or the nodes see plaintext
//! or keys.
//!
//! Read first: [`Project`] (every operation, opened from an
//! [`loam_common::access::Access`]), then [`segment`] (the pure
//! plaintext ↔ pieces transformation) and [`piece`] (the piece transfer
//! protocol with one node).
//!
//! An upload: take up to one segment of plaintext → `BeginSegment` at the
//! satellite (order limits on distinct nodes) → `segment::StripeEncoder`
//! (encrypt rows, compute parity, a stripe at a time, paced by
//! [`feed::Pacer`]) feeding `piece::upload` to every node in parallel
//! (the spares beyond `success` start only when an upload fails or lags,
//! see [`UplinkConfig::race_spares`]), cancelling the long tail once `success`
//! pieces are stored →
//! `CommitSegment` → … → `CommitObject`. A download reverses it from the
//! first `k` pieces to arrive, hedging against slow or dead nodes.

pub mod dataset;
mod direct;
pub mod images;
pub mod market;
pub mod multipart;
mod rowstream;
pub mod tabular;
mod transfer;
pub use loam_piece_transfer::{FetchError, feed, fetch, fetch_pieces, piece, segment};

use std::net::SocketAddr;
use std::time::Duration;

use loam_common::access::Access;
use loam_common::encryption::{self, Key};
use loam_common::rpc::{self, CallError, RemoteError};
use loam_common::transport::{Endpoint, TransportConfig, TransportError};
use loam_common::{Identity, pb};
use pb::satellite_request::Request as Req;
use pb::satellite_response::Response as Resp;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

pub use transfer::Progress;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UplinkError {
    #[error("bucket {0:?} not found")]
    BucketNotFound(String),
    #[error("bucket {0:?} already exists")]
    BucketExists(String),
    #[error("bucket {0:?} is not empty")]
    BucketNotEmpty(String),
    #[error("object {0:?} not found")]
    ObjectNotFound(String),
    #[error(
        "wrong encryption passphrase for bucket {0:?} (its key check does not match this access)"
    )]
    WrongPassphrase(String),
    #[error("too few storage nodes online: {0}")]
    TooFewNodes(String),
    #[error(
        "upload failed: only {stored} of the {needed} pieces needed were stored (last error: {last_error})"
    )]
    UploadFailed {
        stored: usize,
        needed: usize,
        last_error: String,
    },
    #[error(
        "download failed: only {got} of the {needed} pieces needed could be fetched (last error: {last_error})"
    )]
    DownloadFailed {
        got: usize,
        needed: usize,
        last_error: String,
    },
    #[error("upload refused before its commit: {0}")]
    Refused(String),
    #[error("object data is corrupt or was encrypted with another key: {0}")]
    Corrupt(String),
    #[error("satellite at {address} is unreachable: {source}")]
    SatelliteUnreachable {
        address: String,
        source: TransportError,
    },
    #[error("satellite refused: {0}")]
    Satellite(RemoteError),
    #[error("talking to the satellite: {0}")]
    Call(CallError),
    #[error("satellite gave an unexpected answer")]
    Unexpected,
    #[error("bad dataset: {0}")]
    Dataset(String),
    #[error("{0}")]
    Job(String),
    #[error(transparent)]
    Scope(#[from] loam_common::scope::ScopeError),
    #[error("creating buckets needs the project's root grant; this grant holds keys for {0} only")]
    NotRoot(String),
    #[error("no multipart upload {0:?} of this key is in progress")]
    UploadNotFound(String),
    #[error("invalid part: {0}")]
    InvalidPart(String),
    #[error("range {start}-{end} is not within the object's {size} bytes")]
    Range { start: u64, end: u64, size: u64 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<FetchError> for UplinkError {
    fn from(e: FetchError) -> Self {
        UplinkError::DownloadFailed {
            got: e.got,
            needed: e.needed,
            last_error: e.last_error,
        }
    }
}

/// Tunables of the uplink.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// Segments encoded and uploaded at once. Default 2 (each holds
    /// `total/k` times its size in pieces).
    pub upload_concurrency: usize,
    /// Segments fetched at once on downloads. Default 2 (3 was faster in
    /// memory but slower through `uplink cp` to a file: more buffers to
    /// fault in; 4 was no faster streaming into a file). Streaming into a
    /// file, the segments start staggered: the next starts once the one
    /// started last has received `1/download_concurrency` of its bytes, so
    /// they end one after another and one is always in full flow while
    /// another starts.
    pub download_concurrency: usize,
    /// Downloads into a file bypass the page cache (`O_DIRECT`) where the
    /// file system allows. Default false: the page cache, as for any
    /// program that writes files. Direct writes help where the kernel's
    /// fresh memory is slow and the disk is fast; elsewhere they hold a
    /// download to the disk's speed (see `docs/performance.md`).
    pub direct_writes: bool,
    /// Timeout for connecting to one node. Default 5 s.
    pub dial_timeout: Duration,
    /// How the `total - success` spare pieces of a segment are sent. Every
    /// piece's node is dialed at once, and whatever is unfinished once
    /// `success` pieces are stored is cancelled (the long tail) either way.
    /// `false` (default): the spares start when a piece upload fails;
    /// when, as a piece is stored, another upload has sent less than half
    /// its piece; or when the other pieces are not all stored half the
    /// first piece's time after it. When every node keeps up,
    /// `success` pieces' worth of bytes leave the client instead of `total`
    /// (on the 10-node testnet, 4/6/8/10, uploads need ~20 % less CPU in
    /// all), and the spares, encoded but never sent, are not hashed
    /// either. `true`: the spares race the others from the first byte,
    /// as in Storj's uplink; more bytes, and the least latency when a node
    /// is slow.
    pub race_spares: bool,
    /// A piece download that made no progress for this long gets a hedge
    /// (another piece is started). Default 750 ms.
    pub hedge_after: Duration,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            upload_concurrency: 2,
            download_concurrency: 2,
            direct_writes: false,
            dial_timeout: Duration::from_secs(5),
            race_spares: false,
            hedge_after: Duration::from_millis(750),
        }
    }
}

/// A bucket as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    pub name: String,
    pub created_ms: i64,
}

/// An object or a collapsed prefix, as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub key: String,
    pub is_prefix: bool,
    pub size: u64,
    pub created_ms: i64,
    pub segments: u32,
    /// When the satellite deletes the object (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    /// The owner's key-value pairs (`cp --metadata`), decrypted.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Objects uploaded in parts: each part's size, in order (empty
    /// otherwise, and in listings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<u64>,
}

/// An upload begun and not committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingUpload {
    pub key: String,
    /// The upload's stream id (hex), which `abort` takes.
    pub upload_id: String,
    pub created_ms: i64,
    /// Segments committed so far.
    pub segments: u32,
    /// Begun with [`Project::begin_multipart`].
    #[serde(default)]
    pub multipart: bool,
}

/// How an object is uploaded, beyond its bytes.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// The owner's own key-value pairs, encrypted with the object's
    /// metadata (the satellite never reads them).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Pairs known only once every byte is read (a digest of the content),
    /// asked for after the last byte and before the commit; they join
    /// `metadata`, replacing equal keys. An error refuses the upload
    /// ([`UplinkError::Refused`]): nothing is committed.
    pub late_metadata: Option<LateMetadata>,
    /// When the satellite deletes the object, in Unix milliseconds.
    pub expires_ms: Option<i64>,
}

/// Metadata computed when an upload's stream has ended (see
/// [`UploadOptions::late_metadata`]).
#[derive(Clone)]
pub struct LateMetadata(
    #[allow(clippy::type_complexity)]
    pub  std::sync::Arc<
        dyn Fn() -> Result<std::collections::BTreeMap<String, String>, String> + Send + Sync,
    >,
);

impl std::fmt::Debug for LateMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LateMetadata(..)")
    }
}

/// Encrypted with the object key and stored at the satellite.
#[derive(Serialize, Deserialize)]
pub(crate) struct ObjectMeta {
    pub(crate) size: u64,
    /// Plaintext bytes of every segment but the last (absent for objects
    /// uploaded before it was kept, and for datasets, whose segments
    /// vary): lets a ranged download fetch only the segments it needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) segment_size: Option<u64>,
    /// Objects uploaded in parts: how their segments lie (see
    /// [`multipart::PartRun`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) parts: Option<Vec<multipart::PartRun>>,
    /// The owner's key-value pairs (`cp --metadata`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub(crate) custom: std::collections::BTreeMap<String, String>,
    /// Set for datasets: the schema and per-segment record layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dataset: Option<dataset::DatasetMeta>,
}

/// One project on one satellite, opened with an access grant. Clones share
/// connections.
#[derive(Clone)]
pub struct Project {
    access: Access,
    endpoint: Endpoint,
    satellite: std::sync::Arc<Mutex<Option<quinn::Connection>>>,
    config: UplinkConfig,
}

impl Project {
    pub fn open(access: Access) -> Result<Self, UplinkError> {
        Self::open_with(access, UplinkConfig::default())
    }

    pub fn open_with(access: Access, config: UplinkConfig) -> Result<Self, UplinkError> {
        let identity = Identity::generate(0, |_| {});
        let local: SocketAddr = "0.0.0.0:0".parse().expect("literal");
        // Frequent keep-alives and a short idle timeout: a satellite
        // process that died (kill -9, a lost machine) is noticed in seconds
        // and the next call goes to another of its addresses, instead of
        // waiting out the 30-second default. A client has few connections,
        // so the pings cost nothing that matters.
        let transport = TransportConfig {
            keep_alive_interval: Duration::from_secs(2),
            max_idle_timeout: Duration::from_secs(8),
            ..TransportConfig::default()
        };
        let endpoint = Endpoint::bind(identity, local, transport).map_err(|source| {
            UplinkError::SatelliteUnreachable {
                address: "local socket".into(),
                source,
            }
        })?;
        Ok(Self {
            access,
            endpoint,
            satellite: std::sync::Arc::new(Mutex::new(None)),
            config,
        })
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    async fn satellite(&self) -> Result<quinn::Connection, UplinkError> {
        let mut guard = self.satellite.lock().await;
        if let Some(c) = guard.as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let url = &self.access.satellite;
        let unreachable = |source| UplinkError::SatelliteUnreachable {
            address: url.address.clone(),
            source,
        };
        let conn = tokio::time::timeout(self.config.dial_timeout, self.endpoint.connect_url(url))
            .await
            .map_err(|_| {
                unreachable(TransportError::Tls(format!(
                    "no answer within {:?}",
                    self.config.dial_timeout
                )))
            })?
            .map_err(unreachable)?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn call(&self, req: Req) -> Result<Resp, UplinkError> {
        let mut retried = false;
        loop {
            let conn = self.satellite().await?;
            match rpc::satellite(&conn, &self.access.api_key, req.clone()).await {
                Ok(r) => return Ok(r),
                Err(CallError::Remote(e)) => return Err(UplinkError::Satellite(e)),
                Err(e) => {
                    *self.satellite.lock().await = None;
                    // The connection died (a satellite process stopped or
                    // restarted): one more try on a fresh connection, to
                    // whichever of its addresses answers. A request the
                    // dead process did apply and the retry repeats fails
                    // or finds it done; none is applied twice silently.
                    if retried || !e.connection_lost() {
                        return Err(UplinkError::Call(e));
                    }
                    retried = true;
                    tracing::debug!(error = %e, "satellite connection lost; retrying once");
                }
            }
        }
    }

    /// What the project stores and downloads, per bucket, this month,
    /// with its limits.
    pub async fn usage(&self) -> Result<pb::ProjectUsageResponse, UplinkError> {
        match self
            .call(Req::ProjectUsage(pb::ProjectUsageRequest {}))
            .await?
        {
            Resp::ProjectUsage(u) => Ok(u),
            _ => Err(UplinkError::Call(CallError::UnexpectedResponse)),
        }
    }

    // ------------------------------------------------------------ API keys

    /// The project's id, name and salt.
    pub async fn project_info(&self) -> Result<pb::ProjectInfoResponse, UplinkError> {
        match self
            .call(Req::ProjectInfo(pb::ProjectInfoRequest {}))
            .await?
        {
            Resp::ProjectInfo(p) => Ok(p),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// Revokes `grant` and every grant narrowed from it. This project's
    /// grant must be the one `grant` was narrowed from (or `grant` itself).
    pub async fn revoke(&self, grant: &Access) -> Result<(), UplinkError> {
        let req = pb::RevokeApiKeyRequest {
            key: grant.api_key.clone().into(),
            ..Default::default()
        };
        match self.call(Req::RevokeApiKey(req)).await? {
            Resp::RevokeApiKey(_) => Ok(()),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// A new API key for this project (this grant must restrict nothing),
    /// as a grant with this grant's encryption keys.
    pub async fn create_api_key(&self, name: &str) -> Result<Access, UplinkError> {
        let req = pb::CreateApiKeyRequest {
            name: name.to_string(),
            ..Default::default()
        };
        match self.call(Req::CreateApiKey(req)).await? {
            Resp::CreateApiKey(r) => Ok(Access {
                api_key: r.api_key.to_vec(),
                ..self.access.clone()
            }),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// This project's API keys.
    pub async fn api_keys(&self) -> Result<Vec<pb::ApiKeyInfo>, UplinkError> {
        match self
            .call(Req::ListApiKeys(pb::ListApiKeysRequest::default()))
            .await?
        {
            Resp::ListApiKeys(r) => Ok(r.keys),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// Revokes the whole API key whose id starts with `head`.
    pub async fn revoke_api_key(&self, head: &[u8]) -> Result<(), UplinkError> {
        let req = pb::RevokeApiKeyRequest {
            head: head.to_vec().into(),
            ..Default::default()
        };
        match self.call(Req::RevokeApiKey(req)).await? {
            Resp::RevokeApiKey(_) => Ok(()),
            _ => Err(UplinkError::Unexpected),
        }
    }

    // ------------------------------------------------------------ buckets

    pub async fn create_bucket(&self, name: &str) -> Result<Bucket, UplinkError> {
        let Some(root) = self.access.keys.root() else {
            let held = self.access.keys.prefixes().unwrap_or_default().join(", ");
            return Err(UplinkError::NotRoot(held));
        };
        let req = Req::CreateBucket(pb::CreateBucketRequest {
            name: name.to_string(),
            key_check: encryption::bucket_key_check(root, name).into(),
        });
        match self.call(req).await {
            Ok(Resp::CreateBucket(r)) => Ok(Bucket {
                name: name.to_string(),
                created_ms: r.created_unix_ms,
            }),
            Ok(_) => Err(UplinkError::Unexpected),
            Err(UplinkError::Satellite(e)) if e.code == pb::ErrorCode::AlreadyExists => {
                Err(UplinkError::BucketExists(name.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Fetches a bucket and checks that this access's passphrase is the one
    /// it was created with.
    pub async fn bucket(&self, name: &str) -> Result<Bucket, UplinkError> {
        match self
            .call(Req::GetBucket(pb::GetBucketRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(Resp::GetBucket(b)) => {
                // A grant narrowed to prefixes has no root key to check
                // with; its prefix keys were derived from a checked one.
                if let Some(root) = self.access.keys.root()
                    && !b.key_check.is_empty()
                    && !encryption::verify_bucket_key_check(root, name, &b.key_check)
                {
                    return Err(UplinkError::WrongPassphrase(name.to_string()));
                }
                Ok(Bucket {
                    name: b.name,
                    created_ms: b.created_unix_ms,
                })
            }
            Ok(_) => Err(UplinkError::Unexpected),
            Err(e) => Err(not_found_as(e, || {
                UplinkError::BucketNotFound(name.to_string())
            })),
        }
    }

    pub async fn delete_bucket(&self, name: &str) -> Result<(), UplinkError> {
        match self
            .call(Req::DeleteBucket(pb::DeleteBucketRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(UplinkError::Satellite(e)) if e.code == pb::ErrorCode::FailedPrecondition => {
                Err(UplinkError::BucketNotEmpty(name.to_string()))
            }
            Err(e) => Err(not_found_as(e, || {
                UplinkError::BucketNotFound(name.to_string())
            })),
        }
    }

    pub async fn list_buckets(&self) -> Result<Vec<Bucket>, UplinkError> {
        match self
            .call(Req::ListBuckets(pb::ListBucketsRequest {}))
            .await?
        {
            Resp::ListBuckets(r) => Ok(r
                .buckets
                .into_iter()
                .map(|b| Bucket {
                    name: b.name,
                    created_ms: b.created_unix_ms,
                })
                .collect()),
            _ => Err(UplinkError::Unexpected),
        }
    }

    // ------------------------------------------------------------ objects

    /// The key a new object at `bucket/key` is sealed under.
    pub(crate) fn object_key(&self, bucket: &str, key: &str) -> Result<Key, UplinkError> {
        Ok(self.access.keys.object_key(bucket, key)?)
    }

    /// The key an existing object is sealed under, found by opening its
    /// metadata: the path-derived key, or for objects stored before path
    /// keys the root-derived one (which only the root grant holds).
    pub(crate) fn read_key(
        &self,
        bucket: &str,
        key: &str,
        encrypted_metadata: &[u8],
    ) -> Result<Key, UplinkError> {
        Ok(self.open_metadata(bucket, key, encrypted_metadata)?.0)
    }

    /// As [`Self::read_key`], with the metadata it opened (`None` when no
    /// key held opens it; the key is then the path-derived one).
    fn open_metadata(
        &self,
        bucket: &str,
        key: &str,
        encrypted_metadata: &[u8],
    ) -> Result<(Key, Option<Vec<u8>>), UplinkError> {
        let current = self.object_key(bucket, key)?;
        if let Ok(plain) = encryption::open(&current, encrypted_metadata) {
            return Ok((current, Some(plain)));
        }
        if let Some(legacy) = self.access.keys.legacy_object_key(bucket, key)
            && let Ok(plain) = encryption::open(&legacy, encrypted_metadata)
        {
            return Ok((legacy, Some(plain)));
        }
        Ok((current, None))
    }

    pub(crate) fn encrypt_path(&self, bucket: &str, key: &str) -> Result<Vec<u8>, UplinkError> {
        Ok(self.access.keys.encrypt_path(bucket, key)?)
    }

    /// Lists objects under `prefix` (whole path components). Without
    /// `recursive`, deeper keys are collapsed into prefix entries.
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        recursive: bool,
    ) -> Result<Vec<Item>, UplinkError> {
        self.bucket(bucket).await?;
        let keys = &self.access.keys;
        let enc_prefix = keys.encrypt_prefix(bucket, prefix)?;
        let mut cursor = bytes::Bytes::new();
        let mut out = Vec::new();
        loop {
            let resp = match self
                .call(Req::ListObjects(pb::ListObjectsRequest {
                    bucket: bucket.to_string(),
                    prefix: enc_prefix.clone().into(),
                    cursor: cursor.clone(),
                    recursive,
                    limit: 1000,
                }))
                .await?
            {
                Resp::ListObjects(r) => r,
                _ => return Err(UplinkError::Unexpected),
            };
            for item in &resp.items {
                let key = keys
                    .decrypt_path(bucket, &item.encrypted_key)
                    .map_err(|_| UplinkError::WrongPassphrase(bucket.to_string()))?;
                let meta = if item.is_prefix {
                    None
                } else {
                    self.open_metadata(bucket, &key, &item.encrypted_metadata)
                        .ok()
                        .and_then(|(_, plain)| plain)
                        .and_then(|m| serde_json::from_slice::<ObjectMeta>(&m).ok())
                };
                let (size, metadata) = match meta {
                    Some(m) => (m.size, m.custom),
                    None if item.is_prefix => (0, Default::default()),
                    None => (item.plain_size as u64, Default::default()),
                };
                out.push(Item {
                    key,
                    is_prefix: item.is_prefix,
                    size,
                    created_ms: item.created_unix_ms,
                    segments: item.segment_count,
                    expires_ms: (item.expires_unix_ms > 0).then_some(item.expires_unix_ms),
                    metadata,
                    parts: Vec::new(),
                });
            }
            match (resp.more, resp.items.last()) {
                (true, Some(last)) => cursor = last.encrypted_key.clone(),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Uploads under `prefix` in `bucket` begun and not committed, oldest
    /// first.
    pub async fn list_pending(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<PendingUpload>, UplinkError> {
        self.bucket(bucket).await?;
        let keys = &self.access.keys;
        let req = pb::ListPendingRequest {
            bucket: bucket.to_string(),
            prefix: keys.encrypt_prefix(bucket, prefix)?.into(),
        };
        let resp = match self.call(Req::ListPending(req)).await? {
            Resp::ListPending(r) => r,
            _ => return Err(UplinkError::Unexpected),
        };
        resp.items
            .into_iter()
            .map(|p| {
                let key = keys
                    .decrypt_path(bucket, &p.encrypted_key)
                    .map_err(|_| UplinkError::WrongPassphrase(bucket.to_string()))?;
                Ok(PendingUpload {
                    key,
                    upload_id: hex::encode(&p.stream_id),
                    created_ms: p.created_unix_ms,
                    segments: p.segments,
                    multipart: p.multipart,
                })
            })
            .collect()
    }

    /// Abandons a pending upload (see [`Project::list_pending`]): the
    /// satellite forgets it and the pieces it stored become garbage.
    pub async fn abort(&self, bucket: &str, upload_id: &str) -> Result<(), UplinkError> {
        let stream_id = hex::decode(upload_id)
            .map_err(|_| UplinkError::Job(format!("{upload_id:?} is not an upload id")))?;
        let req = pb::AbortObjectRequest {
            bucket: bucket.to_string(),
            stream_id: stream_id.into(),
        };
        match self.call(Req::AbortObject(req)).await? {
            Resp::AbortObject(_) => Ok(()),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// Size and creation time of one object.
    /// Size, creation time and the owner's key-value pairs of one object.
    pub async fn stat(&self, bucket: &str, key: &str) -> Result<Item, UplinkError> {
        let info = self.object_info(bucket, key).await?;
        let meta = self.decrypt_meta(bucket, key, &info)?;
        Ok(Item {
            key: key.to_string(),
            is_prefix: false,
            size: meta.size,
            created_ms: info.created_unix_ms,
            segments: info.segment_count,
            expires_ms: (info.expires_unix_ms > 0).then_some(info.expires_unix_ms),
            parts: meta
                .parts
                .as_deref()
                .map(multipart::part_sizes)
                .unwrap_or_default(),
            metadata: meta.custom,
        })
    }

    /// The owner's key-value pairs stored with an object (`cp
    /// --metadata`), decrypted.
    pub async fn metadata(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, UplinkError> {
        let info = self.object_info(bucket, key).await?;
        Ok(self.decrypt_meta(bucket, key, &info)?.custom)
    }

    async fn object_info(&self, bucket: &str, key: &str) -> Result<pb::ObjectInfo, UplinkError> {
        let enc = self.encrypt_path(bucket, key)?;
        // Both questions at once, one round trip; the bucket's answer (it
        // exists, the passphrase fits) comes first, as if asked first.
        let (checked, found) = tokio::join!(
            self.bucket(bucket),
            self.call(Req::GetObject(pb::ObjectRequest {
                bucket: bucket.to_string(),
                encrypted_key: enc.into(),
            }))
        );
        checked?;
        match found {
            Ok(Resp::GetObject(o)) => Ok(o),
            Ok(_) => Err(UplinkError::Unexpected),
            Err(e) => Err(not_found_as(e, || {
                UplinkError::ObjectNotFound(key.to_string())
            })),
        }
    }

    fn decrypt_meta(
        &self,
        bucket: &str,
        key: &str,
        info: &pb::ObjectInfo,
    ) -> Result<ObjectMeta, UplinkError> {
        let plain = self
            .open_metadata(bucket, key, &info.encrypted_metadata)?
            .1
            .ok_or_else(|| UplinkError::Corrupt("object metadata does not decrypt".into()))?;
        serde_json::from_slice(&plain)
            .map_err(|_| UplinkError::Corrupt("object metadata is malformed".into()))
    }

    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), UplinkError> {
        self.bucket(bucket).await?;
        let enc = self.encrypt_path(bucket, key)?;
        match self
            .call(Req::DeleteObject(pb::ObjectRequest {
                bucket: bucket.to_string(),
                encrypted_key: enc.into(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(not_found_as(e, || {
                UplinkError::ObjectNotFound(key.to_string())
            })),
        }
    }

    /// Moves `bucket/key` to `new_bucket/new_key` on the satellite: no
    /// piece data moves. The segments' content keys are rewrapped and the
    /// metadata and inline data resealed under the new path's key (which
    /// the satellite never sees); an object at the new key is replaced.
    pub async fn move_object(
        &self,
        bucket: &str,
        key: &str,
        new_bucket: &str,
        new_key: &str,
    ) -> Result<(), UplinkError> {
        self.relocate(bucket, key, new_bucket, new_key, false).await
    }

    /// Copies an object on the satellite (server-side): the copy shares the
    /// original's pieces, no piece data moves, and each object can be
    /// deleted without the other losing anything. Keys are rewrapped as in
    /// [`Project::move_object`]; an object at the new key is replaced.
    pub async fn copy_object(
        &self,
        bucket: &str,
        key: &str,
        new_bucket: &str,
        new_key: &str,
    ) -> Result<(), UplinkError> {
        self.relocate(bucket, key, new_bucket, new_key, true).await
    }

    async fn relocate(
        &self,
        bucket: &str,
        key: &str,
        new_bucket: &str,
        new_key: &str,
        copy: bool,
    ) -> Result<(), UplinkError> {
        let info = self.object_info(bucket, key).await?;
        self.bucket(new_bucket).await?;
        let begin = match self
            .call(Req::BeginMoveObject(pb::ObjectRequest {
                bucket: bucket.to_string(),
                encrypted_key: info.encrypted_key.clone(),
            }))
            .await?
        {
            Resp::BeginMoveObject(b) => b,
            _ => return Err(UplinkError::Unexpected),
        };
        let (old, new) = (
            self.read_key(bucket, key, &info.encrypted_metadata)?,
            self.object_key(new_bucket, new_key)?,
        );
        let reseal = |sealed: &[u8], what: &str| -> Result<bytes::Bytes, UplinkError> {
            if sealed.is_empty() {
                return Ok(bytes::Bytes::new());
            }
            let plain = encryption::open(&old, sealed)
                .map_err(|_| UplinkError::Corrupt(format!("{what} does not decrypt")))?;
            Ok(encryption::seal(&new, &plain).into())
        };
        let new_segment_keys = begin
            .segment_keys
            .iter()
            .map(|k| reseal(k, "a segment key"))
            .collect::<Result<Vec<_>, _>>()?;
        let req = pb::FinishMoveObjectRequest {
            bucket: bucket.to_string(),
            encrypted_key: info.encrypted_key.clone(),
            stream_id: begin.stream_id,
            new_bucket: new_bucket.to_string(),
            new_encrypted_key: self.encrypt_path(new_bucket, new_key)?.into(),
            new_encrypted_metadata: reseal(&info.encrypted_metadata, "the metadata")?,
            new_inline_data: reseal(&info.inline_data, "the inline data")?,
            new_segment_keys,
        };
        let call = if copy {
            Req::FinishCopyObject(req)
        } else {
            Req::FinishMoveObject(req)
        };
        match self.call(call).await? {
            Resp::FinishMoveObject(_) | Resp::FinishCopyObject(_) => Ok(()),
            _ => Err(UplinkError::Unexpected),
        }
    }

    /// Closes connections.
    pub async fn close(&self) {
        // The satellite's connection is the caller's, not the pool's.
        let satellite = self.satellite.lock().await.take();
        self.endpoint
            .close_and_flush(satellite, Duration::from_millis(100))
            .await;
    }
}

/// Turns a satellite NOT_FOUND into the caller's specific error.
pub(crate) fn not_found_as(e: UplinkError, f: impl FnOnce() -> UplinkError) -> UplinkError {
    match e {
        UplinkError::Satellite(r) if r.code == pb::ErrorCode::NotFound => f(),
        UplinkError::Satellite(r) if r.code == pb::ErrorCode::Unavailable => {
            UplinkError::TooFewNodes(r.message)
        }
        other => other,
    }
}
