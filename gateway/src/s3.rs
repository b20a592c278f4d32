//! The S3 operations, on an uplink [`Project`] per credential.
//!
//! What S3 keeps beside an object's bytes (content type, ETag, the other
//! standard headers) is stored with the owner's metadata under keys that
//! start with `s3:`, which no `x-amz-meta-` header can produce; like all
//! object metadata it is encrypted and the satellite never reads it. The
//! owner's own pairs are the `x-amz-meta-*` headers, and `uplink cp
//! --metadata` pairs show up as such.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use loam_uplink::{Item, LateMetadata, Project, UplinkError, UploadOptions};
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::Keyring;
use crate::listing::{self, Query};
use crate::multipart;

/// Metadata keys the gateway keeps for S3's own headers.
pub(crate) const ETAG: &str = "s3:etag";
const CONTENT_TYPE: &str = "s3:content-type";
const HEADERS: [(&str, &str); 5] = [
    ("s3:cache-control", "cache-control"),
    ("s3:content-disposition", "content-disposition"),
    ("s3:content-encoding", "content-encoding"),
    ("s3:content-language", "content-language"),
    ("s3:expires", "expires"),
];

/// Bytes buffered between a download and the HTTP response.
pub(crate) const DOWNLOAD_PIPE_BYTES: usize = 1 << 20;

/// An S3 endpoint in front of the uplinks of its credentials.
pub struct Gateway {
    keyring: Arc<Keyring>,
    /// One project per access key id, opened on first use (clones share
    /// the connection to the satellite).
    projects: Mutex<HashMap<String, Project>>,
}

impl Gateway {
    pub fn new(keyring: Arc<Keyring>) -> Self {
        Self {
            keyring,
            projects: Mutex::new(HashMap::new()),
        }
    }

    fn project<T>(&self, req: &S3Request<T>) -> S3Result<Project> {
        let Some(creds) = &req.credentials else {
            return Err(s3_error!(
                AccessDenied,
                "anonymous requests are not served; sign with a gateway credential"
            ));
        };
        let id = &creds.access_key;
        let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = projects.get(id) {
            return Ok(p.clone());
        }
        let Some((_, access)) = self.keyring.lookup(id) else {
            return Err(s3_error!(InvalidAccessKeyId));
        };
        let project = Project::open(access).map_err(internal)?;
        projects.insert(id.clone(), project.clone());
        Ok(project)
    }
}

/// The S3 error for an uplink error.
pub(crate) fn s3_err(e: UplinkError) -> S3Error {
    use loam_common::pb::ErrorCode;
    match e {
        UplinkError::BucketNotFound(b) => s3_error!(NoSuchBucket, "bucket {b:?} does not exist"),
        UplinkError::BucketExists(b) => {
            s3_error!(BucketAlreadyOwnedByYou, "bucket {b:?} already exists")
        }
        UplinkError::BucketNotEmpty(b) => s3_error!(BucketNotEmpty, "bucket {b:?} is not empty"),
        UplinkError::ObjectNotFound(k) => s3_error!(NoSuchKey, "no object {k:?}"),
        UplinkError::NotRoot(_) | UplinkError::Scope(_) | UplinkError::WrongPassphrase(_) => {
            s3_error!(AccessDenied, "{e}")
        }
        UplinkError::Range { .. } => s3_error!(InvalidRange, "{e}"),
        UplinkError::UploadNotFound(_) => s3_error!(
            NoSuchUpload,
            "The specified multipart upload does not exist. The upload ID might be invalid, or the multipart upload might have been aborted or completed."
        ),
        UplinkError::InvalidPart(_) => s3_error!(InvalidPart, "{e}"),
        UplinkError::TooFewNodes(_) => s3_error!(ServiceUnavailable, "{e}"),
        UplinkError::Satellite(ref r) => match r.code {
            ErrorCode::PermissionDenied | ErrorCode::Unauthenticated => {
                s3_error!(AccessDenied, "{}", r.message)
            }
            ErrorCode::NotFound => s3_error!(NoSuchKey, "{}", r.message),
            ErrorCode::InvalidArgument => s3_error!(InvalidArgument, "{}", r.message),
            ErrorCode::ResourceExhausted => s3_error!(ServiceUnavailable, "{}", r.message),
            ErrorCode::Unavailable => s3_error!(ServiceUnavailable, "{}", r.message),
            _ => internal(e),
        },
        UplinkError::SatelliteUnreachable { .. } | UplinkError::Call(_) => {
            s3_error!(ServiceUnavailable, "{e}")
        }
        other => internal(other),
    }
}

fn internal(e: impl std::fmt::Display) -> S3Error {
    S3Error::with_message(S3ErrorCode::InternalError, e.to_string())
}

/// S3's answer to a part number an object does not have (416).
fn invalid_part_number(n: i32, parts: usize) -> S3Error {
    let mut e = S3Error::with_message(
        S3ErrorCode::Custom("InvalidPartNumber".into()),
        format!("the object has {parts} part(s); part {n} does not exist"),
    );
    e.set_status_code(axum::http::StatusCode::RANGE_NOT_SATISFIABLE);
    e
}

/// A time in Unix milliseconds (from the satellite) as S3 gives it; one out
/// of the representable years reads as the epoch rather than panicking.
pub(crate) fn timestamp(ms: i64) -> Timestamp {
    let nanos = i128::from(ms) * 1_000_000;
    Timestamp::from(
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
    )
}

/// Seconds since the epoch, as HTTP dates carry.
fn seconds(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

/// The object's ETag: the MD5 the gateway stored; for objects uploaded
/// otherwise (no MD5 known), an opaque tag in the multipart form (`-1`)
/// that clients do not take for a digest.
pub(crate) fn etag_of(item: &Item) -> String {
    match item.metadata.get(ETAG) {
        Some(e) => e.clone(),
        None => {
            let h = blake3::hash(
                format!("{}\0{}\0{}", item.key, item.created_ms, item.size).as_bytes(),
            );
            format!("{}-1", hex::encode(&h.as_bytes()[..16]))
        }
    }
}

fn user_metadata(item: &Item) -> Option<Metadata> {
    let m: Metadata = item
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("s3:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!m.is_empty()).then_some(m)
}

/// Whether a conditional GET or HEAD is answered 412 or 304 (RFC 9110 order,
/// as S3: If-Match, then If-Unmodified-Since, If-None-Match,
/// If-Modified-Since).
pub(crate) fn check_conditions(
    etag: &str,
    modified: &Timestamp,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    };
    let modified = seconds(modified);
    if let Some(c) = if_match {
        if !matches(c) {
            return Err(s3_error!(PreconditionFailed));
        }
    } else if let Some(t) = if_unmodified_since
        && modified > seconds(t)
    {
        return Err(s3_error!(PreconditionFailed));
    }
    if let Some(c) = if_none_match {
        if matches(c) {
            return Err(s3_error!(NotModified));
        }
    } else if let Some(t) = if_modified_since
        && modified <= seconds(t)
    {
        return Err(s3_error!(NotModified));
    }
    Ok(())
}

/// What a GET or HEAD asks of the object before it is read.
struct ReadConditions<'a> {
    if_match: Option<&'a ETagCondition>,
    if_none_match: Option<&'a ETagCondition>,
    if_modified_since: Option<&'a Timestamp>,
    if_unmodified_since: Option<&'a Timestamp>,
    part_number: Option<i32>,
}

/// What a GET or HEAD reads, once its conditions hold.
struct Read {
    etag: String,
    modified: Timestamp,
    /// With a part number: the part's start and length, and how many
    /// parts the object has (one unless uploaded in parts).
    part: Option<((u64, u64), usize)>,
}

/// Checks a GET's or HEAD's conditions and part number against `item`.
fn check_read(item: &Item, c: ReadConditions<'_>) -> S3Result<Read> {
    let etag = etag_of(item);
    let modified = timestamp(item.created_ms);
    check_conditions(
        &etag,
        &modified,
        c.if_match,
        c.if_none_match,
        c.if_modified_since,
        c.if_unmodified_since,
    )?;
    let part = match c.part_number {
        None => None,
        Some(n) => {
            let sizes = match item.parts.is_empty() {
                true => vec![item.size],
                false => item.parts.clone(),
            };
            let range = u32::try_from(n)
                .ok()
                .and_then(|n| crate::multipart::part_range(&sizes, n))
                .ok_or_else(|| invalid_part_number(n, sizes.len()))?;
            Some((range, sizes.len()))
        }
    };
    Ok(Read {
        etag,
        modified,
        part,
    })
}

/// The bucket and key a copy reads.
pub(crate) fn copy_source_of(source: &CopySource) -> S3Result<(String, String)> {
    match source {
        CopySource::Bucket {
            version_id: Some(_),
            ..
        } => Err(s3_error!(NotImplemented, "versioning is not supported")),
        CopySource::Bucket { bucket, key, .. } => Ok((bucket.to_string(), key.to_string())),
        _ => Err(s3_error!(
            NotImplemented,
            "copies from access points are not supported"
        )),
    }
}

/// A copy's failed source condition is always 412.
pub(crate) fn copy_condition(e: S3Error) -> S3Error {
    if *e.code() == S3ErrorCode::NotModified {
        s3_error!(PreconditionFailed)
    } else {
        e
    }
}

/// The MD5 of a body as it streams, checked against the Content-MD5 the
/// client sent and, for a copy, against its source having been read to
/// the end.
pub(crate) struct BodyDigest {
    md5: Arc<Mutex<Md5>>,
    /// Base64, as the header carries it.
    content_md5: Option<String>,
    whole: Option<Arc<AtomicBool>>,
    mismatch: AtomicBool,
}

impl BodyDigest {
    pub(crate) fn new(content_md5: Option<String>, whole: Option<Arc<AtomicBool>>) -> Self {
        Self {
            md5: Arc::new(Mutex::new(Md5::new())),
            content_md5,
            whole,
            mismatch: AtomicBool::new(false),
        }
    }

    /// `body`, digested as it is read.
    pub(crate) fn reader<R>(&self, body: R) -> Md5Reader<R> {
        Md5Reader {
            inner: body,
            md5: self.md5.clone(),
        }
    }

    /// The body's MD5 (hex) once it is read to its end; an error (a digest
    /// that differs from the Content-MD5, a source cut short) refuses the
    /// upload.
    pub(crate) fn finish(&self) -> Result<String, String> {
        if self
            .whole
            .as_ref()
            .is_some_and(|w| !w.load(Ordering::Acquire))
        {
            return Err("the source ended before its last byte".into());
        }
        let digest = self
            .md5
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .finalize();
        if let Some(expected) = &self.content_md5 {
            use base64::Engine;
            if base64::engine::general_purpose::STANDARD.encode(digest) != *expected {
                self.mismatch.store(true, Ordering::Release);
                return Err("Content-MD5 does not match the body".into());
            }
        }
        Ok(hex::encode(digest))
    }

    /// The S3 error for an upload of the body that failed with `e`.
    pub(crate) fn error_of(&self, e: UplinkError) -> S3Error {
        if self.mismatch.load(Ordering::Acquire) {
            s3_error!(
                BadDigest,
                "the Content-MD5 you specified did not match what was received"
            )
        } else {
            s3_err(e)
        }
    }
}

/// A request's body as a reader (empty when it has none).
pub(crate) fn body_reader(
    body: Option<StreamingBlob>,
) -> Box<dyn AsyncRead + Send + Unpin + 'static> {
    match body {
        Some(body) => Box::new(StreamReader::new(body.map_err(std::io::Error::other))),
        None => Box::new(tokio::io::empty()),
    }
}

/// A reader that digests what passes through it.
pub(crate) struct Md5Reader<R> {
    inner: R,
    md5: Arc<Mutex<Md5>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Md5Reader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &r {
            self.md5
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .update(&buf.filled()[before..]);
        }
        r
    }
}

/// Uploads `body` as `bucket/key` with `metadata` and S3's headers kept,
/// its MD5 as ETag; checks `content_md5` (base64, as the header) before
/// the commit, and, when given, that `whole` was set by then (the body's
/// producer read its source to the end). Returns the ETag and the stored
/// object.
async fn put(
    project: &Project,
    bucket: &str,
    key: &str,
    body: impl AsyncRead + Send + Unpin + 'static,
    mut metadata: BTreeMap<String, String>,
    content_md5: Option<String>,
    whole: Option<Arc<AtomicBool>>,
) -> S3Result<(String, Item)> {
    let digest = Arc::new(BodyDigest::new(content_md5, whole));
    let reader = digest.reader(body);
    metadata.retain(|k, _| k != ETAG);
    let late = {
        let digest = digest.clone();
        LateMetadata(Arc::new(move || {
            Ok(BTreeMap::from([(ETAG.to_string(), digest.finish()?)]))
        }))
    };
    let opts = UploadOptions {
        metadata,
        late_metadata: Some(late),
        ..Default::default()
    };
    match project.upload_with(bucket, key, reader, None, &opts).await {
        Ok(item) => Ok((etag_of(&item), item)),
        Err(e) => Err(digest.error_of(e)),
    }
}

/// The metadata an upload keeps from a request's headers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn stored_metadata(
    user: Option<Metadata>,
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    expires: Option<&Timestamp>,
) -> S3Result<BTreeMap<String, String>> {
    let mut m: BTreeMap<String, String> = user.unwrap_or_default().into_iter().collect();
    if let Some(bad) = m.keys().find(|k| k.starts_with("s3:")) {
        return Err(s3_error!(
            InvalidArgument,
            "metadata key {bad:?} is reserved"
        ));
    }
    let expires = expires.map(|t| {
        let mut out = Vec::new();
        let _ = t.format(TimestampFormat::HttpDate, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    for (k, v) in [
        (CONTENT_TYPE, content_type),
        (HEADERS[0].0, cache_control),
        (HEADERS[1].0, content_disposition),
        (HEADERS[2].0, content_encoding),
        (HEADERS[3].0, content_language),
        (HEADERS[4].0, expires),
    ] {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    }
    Ok(m)
}

fn header(item: &Item, key: &str) -> Option<String> {
    item.metadata.get(key).cloned()
}

fn expires_of(item: &Item) -> Option<Timestamp> {
    item.metadata
        .get(HEADERS[4].0)
        .and_then(|v| Timestamp::parse(TimestampFormat::HttpDate, v).ok())
}

/// Percent-encodes what a listing returns when the client asked for
/// `encoding-type=url` (everything but unreserved characters and `/`).
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Lists what `q` asks of `bucket`: the whole-component level under the
/// prefix, non-recursively when the delimiter is `/` (the satellite then
/// collapses deeper keys), cut into a page here.
async fn list_page(
    project: &Project,
    bucket: &str,
    q: &Query<'_>,
) -> S3Result<listing::Page<Item>> {
    let recursive = q.delimiter != Some("/");
    let items = project
        .list(bucket, listing::level_of(q.prefix), recursive)
        .await
        .map_err(s3_err)?;
    Ok(listing::page(items, |i| i.key.as_str(), q))
}

fn max_keys(n: Option<i32>) -> S3Result<usize> {
    match n {
        None => Ok(listing::MAX_KEYS),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must not be negative")),
        Some(n) => Ok(n as usize),
    }
}

fn object_of(item: &Item, encode: bool) -> Object {
    Object {
        key: Some(if encode {
            url_encode(&item.key)
        } else {
            item.key.clone()
        }),
        size: Some(item.size as i64),
        last_modified: Some(timestamp(item.created_ms)),
        e_tag: Some(ETag::Strong(etag_of(item))),
        storage_class: Some(ObjectStorageClass::from_static(
            ObjectStorageClass::STANDARD,
        )),
        ..Default::default()
    }
}

pub(crate) fn encoding_url(e: Option<&EncodingType>) -> bool {
    e.is_some_and(|e| e.as_str() == EncodingType::URL)
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let project = self.project(&req)?;
        let buckets = project.list_buckets().await.map_err(s3_err)?;
        let buckets = buckets
            .into_iter()
            .filter(|b| {
                req.input
                    .prefix
                    .as_deref()
                    .is_none_or(|p| b.name.starts_with(p))
            })
            .map(|b| Bucket {
                name: Some(b.name),
                creation_date: Some(timestamp(b.created_ms)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let project = self.project(&req)?;
        project
            .create_bucket(&req.input.bucket)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let project = self.project(&req)?;
        project.bucket(&req.input.bucket).await.map_err(s3_err)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let project = self.project(&req)?;
        project
            .delete_bucket(&req.input.bucket)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let project = self.project(&req)?;
        project.bucket(&req.input.bucket).await.map_err(s3_err)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let project = self.project(&req)?;
        let i = req.input;
        if i.if_match.is_some() || i.if_none_match.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "conditional writes (If-Match / If-None-Match on PUT) are not supported"
            ));
        }
        let metadata = stored_metadata(
            i.metadata,
            i.content_type,
            i.cache_control,
            i.content_disposition,
            i.content_encoding,
            i.content_language,
            i.expires.as_ref(),
        )?;
        let (etag, item) = put(
            &project,
            &i.bucket,
            &i.key,
            body_reader(i.body),
            metadata,
            i.content_md5,
            None,
        )
        .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            size: Some(item.size as i64),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let project = self.project(&req)?;
        let i = req.input;
        let item = project.stat(&i.bucket, &i.key).await.map_err(s3_err)?;
        let Read {
            etag,
            modified,
            part,
        } = check_read(
            &item,
            ReadConditions {
                if_match: i.if_match.as_ref(),
                if_none_match: i.if_none_match.as_ref(),
                if_modified_since: i.if_modified_since.as_ref(),
                if_unmodified_since: i.if_unmodified_since.as_ref(),
                part_number: i.part_number,
            },
        )?;
        let size = item.size;
        let range = match (&i.range, part) {
            // A part of an object uploaded in parts is read as a range.
            (_, Some(((start, len), n))) if n > 1 || !item.parts.is_empty() => {
                Some(start..start + len)
            }
            (Some(r), _) => Some(r.check(size).map_err(|_| {
                s3_error!(
                    InvalidRange,
                    "the range is not satisfiable for an object of {size} bytes"
                )
            })?),
            (None, _) => None,
        };
        let (start, len) = match &range {
            Some(r) => (r.start, r.end - r.start),
            None => (0, size),
        };
        let (mut writer, reader) = tokio::io::duplex(DOWNLOAD_PIPE_BYTES);
        let (bucket, key) = (i.bucket.clone(), i.key.clone());
        let ranged = range.is_some();
        let download = tokio::spawn(async move {
            let r = if len == 0 {
                Ok(0)
            } else if ranged {
                project
                    .download_range(
                        &bucket,
                        &key,
                        start,
                        Some(start + len - 1),
                        &mut writer,
                        None,
                    )
                    .await
            } else {
                project.download(&bucket, &key, &mut writer, None).await
            };
            if let Err(e) = &r {
                tracing::warn!(bucket, key, error = %e, "download through the gateway failed");
            }
            r
        });
        // The body ends in an error (the connection is cut short) when the
        // download fails midway, so a client never takes a partial body
        // for the object.
        let tail = futures::stream::once(async move {
            match download.await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(Err(std::io::Error::other(e.to_string()))),
                Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
            }
        })
        .filter_map(futures::future::ready);
        let body = ReaderStream::with_capacity(reader, 64 << 10).chain(tail);
        let content_range = range
            .as_ref()
            .map(|r| format!("bytes {}-{}/{size}", r.start, r.end.saturating_sub(1)));
        let output = GetObjectOutput {
            body: Some(StreamingBlob::wrap::<_, std::io::Error>(body)),
            content_length: Some(len as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(modified),
            content_type: header(&item, CONTENT_TYPE),
            cache_control: header(&item, HEADERS[0].0),
            content_disposition: header(&item, HEADERS[1].0),
            content_encoding: header(&item, HEADERS[2].0),
            content_language: header(&item, HEADERS[3].0),
            expires: expires_of(&item),
            metadata: user_metadata(&item),
            parts_count: part.map(|(_, n)| n as i32),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let project = self.project(&req)?;
        let i = req.input;
        let item = project.stat(&i.bucket, &i.key).await.map_err(s3_err)?;
        let Read {
            etag,
            modified,
            part,
        } = check_read(
            &item,
            ReadConditions {
                if_match: i.if_match.as_ref(),
                if_none_match: i.if_none_match.as_ref(),
                if_modified_since: i.if_modified_since.as_ref(),
                if_unmodified_since: i.if_unmodified_since.as_ref(),
                part_number: i.part_number,
            },
        )?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(part.map_or(item.size, |((_, len), _)| len) as i64),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(modified),
            content_type: header(&item, CONTENT_TYPE),
            cache_control: header(&item, HEADERS[0].0),
            content_disposition: header(&item, HEADERS[1].0),
            content_encoding: header(&item, HEADERS[2].0),
            content_language: header(&item, HEADERS[3].0),
            expires: expires_of(&item),
            metadata: user_metadata(&item),
            parts_count: part.map(|(_, n)| n as i32),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let project = self.project(&req)?;
        match project.delete(&req.input.bucket, &req.input.key).await {
            // S3 answers a delete of a missing key as done.
            Ok(()) | Err(UplinkError::ObjectNotFound(_)) => {}
            Err(e) => return Err(s3_err(e)),
        }
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let project = self.project(&req)?;
        let i = req.input;
        project.bucket(&i.bucket).await.map_err(s3_err)?;
        let quiet = i.delete.quiet.unwrap_or(false);
        let results = futures::stream::iter(i.delete.objects)
            .map(|o| {
                let project = &project;
                let bucket = &i.bucket;
                async move {
                    let r = match project.delete(bucket, &o.key).await {
                        Ok(()) | Err(UplinkError::ObjectNotFound(_)) => Ok(()),
                        Err(e) => Err(s3_err(e)),
                    };
                    (o.key, r)
                }
            })
            .buffered(8)
            .collect::<Vec<_>>()
            .await;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (key, r) in results {
            match r {
                Ok(()) if quiet => {}
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(key),
                    ..Default::default()
                }),
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(key),
                    message: e.message().map(str::to_string),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let project = self.project(&req)?;
        let i = req.input;
        let (src_bucket, src_key) = copy_source_of(&i.copy_source)?;
        let (src_bucket, src_key) = (src_bucket.as_str(), src_key.as_str());
        let source = project.stat(src_bucket, src_key).await.map_err(s3_err)?;
        let source_etag = etag_of(&source);
        check_conditions(
            &source_etag,
            &timestamp(source.created_ms),
            i.copy_source_if_match.as_ref(),
            i.copy_source_if_none_match.as_ref(),
            i.copy_source_if_modified_since.as_ref(),
            i.copy_source_if_unmodified_since.as_ref(),
        )
        .map_err(copy_condition)?;
        let replace = i
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let (etag, modified_ms) = if replace {
            // New metadata: the bytes go through the gateway (the
            // satellite-side copy keeps the sealed metadata as it is).
            let metadata = stored_metadata(
                i.metadata,
                i.content_type,
                i.cache_control,
                i.content_disposition,
                i.content_encoding,
                i.content_language,
                i.expires.as_ref(),
            )?;
            let (mut writer, reader) = tokio::io::duplex(DOWNLOAD_PIPE_BYTES);
            let (p, b, k) = (project.clone(), src_bucket.to_string(), src_key.to_string());
            // Set before the pipe closes (the writer is dropped after it),
            // so the upload commits only a source read to its end.
            let whole = Arc::new(AtomicBool::new(false));
            let done = whole.clone();
            let download = tokio::spawn(async move {
                let r = p.download(&b, &k, &mut writer, None).await;
                if r.is_ok() {
                    done.store(true, Ordering::Release);
                }
                r
            });
            let uploaded = put(
                &project,
                &i.bucket,
                &i.key,
                reader,
                metadata,
                None,
                Some(whole),
            )
            .await;
            let downloaded = download.await;
            match (uploaded, downloaded) {
                (Ok((etag, item)), _) => (etag, item.created_ms),
                // The source's failure is why the upload stopped.
                (Err(_), Ok(Err(e))) => return Err(s3_err(e)),
                (Err(e), _) => return Err(e),
            }
        } else {
            if src_bucket == i.bucket && src_key == i.key {
                return Err(s3_error!(
                    InvalidRequest,
                    "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata"
                ));
            }
            project
                .copy_object(src_bucket, src_key, &i.bucket, &i.key)
                .await
                .map_err(s3_err)?;
            let copied = project.stat(&i.bucket, &i.key).await.map_err(s3_err)?;
            (source_etag, copied.created_ms)
        };
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(timestamp(modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let project = self.project(&req)?;
        Ok(S3Response::new(
            multipart::create(project, req.input).await?,
        ))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let project = self.project(&req)?;
        Ok(S3Response::new(
            multipart::upload_part(project, req.input).await?,
        ))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let project = self.project(&req)?;
        Ok(S3Response::new(
            multipart::upload_part_copy(project, req.input).await?,
        ))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let project = self.project(&req)?;
        Ok(S3Response::new(
            multipart::complete(project, req.input).await?,
        ))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let project = self.project(&req)?;
        Ok(S3Response::new(multipart::abort(project, req.input).await?))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let project = self.project(&req)?;
        Ok(S3Response::new(
            multipart::list_parts(project, req.input).await?,
        ))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let project = self.project(&req)?;
        Ok(S3Response::new(
            multipart::list_uploads(project, req.input).await?,
        ))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let project = self.project(&req)?;
        let i = req.input;
        let prefix = i.prefix.clone().unwrap_or_default();
        let q = Query {
            prefix: &prefix,
            delimiter: i.delimiter.as_deref(),
            after: i.marker.as_deref().filter(|m| !m.is_empty()),
            max_keys: max_keys(i.max_keys)?,
        };
        let page = list_page(&project, &i.bucket, &q).await?;
        let encode = encoding_url(i.encoding_type.as_ref());
        let enc = |s: &str| {
            if encode { url_encode(s) } else { s.to_string() }
        };
        // NextMarker is returned only with a delimiter (without one,
        // clients continue after the last key), as S3.
        let next_marker = (page.truncated && q.delimiter.is_some_and(|d| !d.is_empty()))
            .then(|| page.last.as_deref().map(enc))
            .flatten();
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket.clone()),
            prefix: Some(enc(&prefix)),
            marker: i.marker.as_deref().map(enc),
            delimiter: i.delimiter.as_deref().map(enc),
            max_keys: Some(q.max_keys.min(listing::MAX_KEYS) as i32),
            is_truncated: Some(page.truncated),
            next_marker,
            contents: Some(page.objects().map(|o| object_of(o, encode)).collect()),
            common_prefixes: Some(
                page.prefixes()
                    .map(|p| CommonPrefix {
                        prefix: Some(enc(p)),
                    })
                    .collect(),
            ),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let project = self.project(&req)?;
        let i = req.input;
        let prefix = i.prefix.clone().unwrap_or_default();
        let after = match &i.continuation_token {
            Some(t) => Some(listing::after_token(t).ok_or_else(|| {
                s3_error!(InvalidArgument, "the continuation token is not valid")
            })?),
            None => i.start_after.clone().filter(|s| !s.is_empty()),
        };
        let q = Query {
            prefix: &prefix,
            delimiter: i.delimiter.as_deref(),
            after: after.as_deref(),
            max_keys: max_keys(i.max_keys)?,
        };
        let page = list_page(&project, &i.bucket, &q).await?;
        let encode = encoding_url(i.encoding_type.as_ref());
        let enc = |s: &str| {
            if encode { url_encode(s) } else { s.to_string() }
        };
        let next = page
            .truncated
            .then(|| page.last.as_deref().map(listing::token_after))
            .flatten();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket.clone()),
            prefix: Some(enc(&prefix)),
            delimiter: i.delimiter.as_deref().map(enc),
            max_keys: Some(q.max_keys.min(listing::MAX_KEYS) as i32),
            key_count: Some(page.entries.len() as i32),
            continuation_token: i.continuation_token,
            next_continuation_token: next,
            start_after: i.start_after.as_deref().map(enc),
            is_truncated: Some(page.truncated),
            contents: Some(page.objects().map(|o| object_of(o, encode)).collect()),
            common_prefixes: Some(
                page.prefixes()
                    .map(|p| CommonPrefix {
                        prefix: Some(enc(p)),
                    })
                    .collect(),
            ),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_out_of_range_do_not_panic() {
        assert_eq!(seconds(&timestamp(1_500)), 1);
        assert_eq!(seconds(&timestamp(i64::MAX)), 0);
        assert_eq!(seconds(&timestamp(i64::MIN)), 0);
    }
}
