//! S3 multipart uploads on the uplink's uploads in parts
//! ([`loam_uplink::multipart`]).
//!
//! Nothing about an upload lives in the gateway: its metadata is sealed in
//! the satellite's pending record when it begins, each part's MD5 with the
//! part's last segment, so any gateway holding the credential can take
//! the next part, list the parts, complete or abort.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use loam_uplink::Project;
use loam_uplink::multipart::{MAX_PART_NUMBER, Part as StoredPart};
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{S3Result, s3_error};
use tokio::io::AsyncRead;

use crate::s3::{
    BodyDigest, DOWNLOAD_PIPE_BYTES, ETAG, body_reader, check_conditions, copy_source_of, etag_of,
    s3_err, stored_metadata, timestamp,
};

/// Smallest part S3 takes, but for the last.
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// Most parts or uploads one listing gives.
const MAX_LISTED: usize = 1000;

fn part_number(n: i32) -> S3Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"
            )
        })
}

/// Streams `body` into part `number`, its MD5 the part's ETag; a
/// `content_md5` (base64) that differs refuses the part, and so does a
/// `whole` flag not set by the end of the body (a copy's source failed).
#[allow(clippy::too_many_arguments)]
async fn put_part(
    project: &Project,
    bucket: &str,
    key: &str,
    upload_id: &str,
    number: u32,
    body: impl AsyncRead + Send + Unpin + 'static,
    content_md5: Option<String>,
    whole: Option<Arc<AtomicBool>>,
) -> S3Result<StoredPart> {
    let digest = Arc::new(BodyDigest::new(content_md5, whole));
    let reader = digest.reader(body);
    let finish = {
        let digest = digest.clone();
        move || digest.finish()
    };
    project
        .upload_part(bucket, key, upload_id, number, reader, finish, None)
        .await
        .map_err(|e| digest.error_of(e))
}

pub async fn create(
    project: Project,
    i: CreateMultipartUploadInput,
) -> S3Result<CreateMultipartUploadOutput> {
    let metadata = stored_metadata(
        i.metadata,
        i.content_type,
        i.cache_control,
        i.content_disposition,
        i.content_encoding,
        i.content_language,
        i.expires.as_ref(),
    )?;
    let upload_id = project
        .begin_multipart(&i.bucket, &i.key, &metadata)
        .await
        .map_err(s3_err)?;
    Ok(CreateMultipartUploadOutput {
        bucket: Some(i.bucket),
        key: Some(i.key),
        upload_id: Some(upload_id),
        ..Default::default()
    })
}

pub async fn upload_part(project: Project, i: UploadPartInput) -> S3Result<UploadPartOutput> {
    let number = part_number(i.part_number)?;
    let part = put_part(
        &project,
        &i.bucket,
        &i.key,
        &i.upload_id,
        number,
        body_reader(i.body),
        i.content_md5,
        None,
    )
    .await?;
    Ok(UploadPartOutput {
        e_tag: Some(ETag::Strong(part.digest)),
        ..Default::default()
    })
}

/// `bytes=first-last` of a copy source of `size` bytes, as a start and a
/// length.
fn copy_range(range: &str, size: u64) -> S3Result<(u64, u64)> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy"
        )
    };
    let (first, last) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let first: u64 = first.trim().parse().map_err(|_| bad())?;
    let last: u64 = last.trim().parse().map_err(|_| bad())?;
    if first > last {
        return Err(bad());
    }
    if last >= size {
        return Err(s3_error!(
            InvalidRange,
            "the range {first}-{last} is not within the source's {size} bytes"
        ));
    }
    Ok((first, last - first + 1))
}

pub async fn upload_part_copy(
    project: Project,
    i: UploadPartCopyInput,
) -> S3Result<UploadPartCopyOutput> {
    let number = part_number(i.part_number)?;
    let (src_bucket, src_key) = copy_source_of(&i.copy_source)?;
    let source = project.stat(&src_bucket, &src_key).await.map_err(s3_err)?;
    check_conditions(
        &etag_of(&source),
        &timestamp(source.created_ms),
        i.copy_source_if_match.as_ref(),
        i.copy_source_if_none_match.as_ref(),
        i.copy_source_if_modified_since.as_ref(),
        i.copy_source_if_unmodified_since.as_ref(),
    )
    .map_err(crate::s3::copy_condition)?;
    let (start, len) = match &i.copy_source_range {
        Some(r) => copy_range(r, source.size)?,
        None => (0, source.size),
    };
    // The source streams through a pipe into the part; the part is stored
    // only if the source was read to its end.
    let (mut writer, reader) = tokio::io::duplex(DOWNLOAD_PIPE_BYTES);
    let whole = Arc::new(AtomicBool::new(false));
    let done = whole.clone();
    let p = project.clone();
    let download = tokio::spawn(async move {
        let r = if len == 0 {
            Ok(0)
        } else {
            p.download_range(
                &src_bucket,
                &src_key,
                start,
                Some(start + len - 1),
                &mut writer,
                None,
            )
            .await
        };
        if r.is_ok() {
            done.store(true, Ordering::Release);
        }
        r
    });
    let uploaded = put_part(
        &project,
        &i.bucket,
        &i.key,
        &i.upload_id,
        number,
        reader,
        None,
        Some(whole),
    )
    .await;
    let part = match (uploaded, download.await) {
        (Ok(part), _) => part,
        (Err(_), Ok(Err(e))) => return Err(s3_err(e)),
        (Err(e), _) => return Err(e),
    };
    Ok(UploadPartCopyOutput {
        copy_part_result: Some(CopyPartResult {
            e_tag: Some(ETag::Strong(part.digest)),
            last_modified: Some(timestamp(part.modified_ms)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The ETag S3 gives an object made of parts: the MD5 of the parts' MD5s,
/// and how many there were.
fn multipart_etag<'a>(digests: impl ExactSizeIterator<Item = &'a str>) -> S3Result<String> {
    let n = digests.len();
    let mut md5 = Md5::new();
    for d in digests {
        let raw = hex::decode(d).map_err(|_| {
            s3_error!(
                InternalError,
                "a part's stored digest is not an MD5; upload the part again"
            )
        })?;
        md5.update(raw);
    }
    Ok(format!("{}-{n}", hex::encode(md5.finalize())))
}

pub async fn complete(
    project: Project,
    i: CompleteMultipartUploadInput,
) -> S3Result<CompleteMultipartUploadOutput> {
    if i.if_match.is_some() || i.if_none_match.is_some() {
        return Err(s3_error!(
            NotImplemented,
            "conditional writes (If-Match / If-None-Match) are not supported"
        ));
    }
    let asked = i
        .multipart_upload
        .and_then(|m| m.parts)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            s3_error!(
                MalformedXML,
                "The XML you provided was not well-formed or did not validate against our published schema"
            )
        })?;
    let upload = project
        .list_parts(&i.bucket, &i.key, &i.upload_id)
        .await
        .map_err(s3_err)?;
    let mut chosen: Vec<&StoredPart> = Vec::with_capacity(asked.len());
    for (at, p) in asked.iter().enumerate() {
        let n = p
            .part_number
            .ok_or_else(|| s3_error!(InvalidPart, "a part has no part number"))?;
        let n = part_number(n)?;
        if chosen.last().is_some_and(|last| last.number >= n) {
            return Err(s3_error!(
                InvalidPartOrder,
                "The list of parts was not in ascending order. Parts must be ordered by part number."
            ));
        }
        let stored = upload.parts.iter().find(|s| s.number == n);
        let matches = |s: &&StoredPart| {
            p.e_tag
                .as_ref()
                .is_none_or(|e| e.value().trim_matches('"') == s.digest)
        };
        let Some(stored) = stored.filter(matches) else {
            return Err(s3_error!(
                InvalidPart,
                "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag."
            ));
        };
        if at + 1 < asked.len() && stored.size < MIN_PART_SIZE {
            return Err(s3_error!(
                EntityTooSmall,
                "Your proposed upload is smaller than the minimum allowed size: part {n} has {} bytes, every part but the last must have at least {MIN_PART_SIZE}",
                stored.size
            ));
        }
        chosen.push(stored);
    }
    let etag = multipart_etag(chosen.iter().map(|p| p.digest.as_str()))?;
    let numbers: Vec<u32> = chosen.iter().map(|p| p.number).collect();
    let extra = BTreeMap::from([(ETAG.to_string(), etag.clone())]);
    project
        .complete_multipart(&i.bucket, &i.key, &i.upload_id, &numbers, extra)
        .await
        .map_err(s3_err)?;
    Ok(CompleteMultipartUploadOutput {
        bucket: Some(i.bucket.clone()),
        key: Some(i.key.clone()),
        e_tag: Some(ETag::Strong(etag)),
        location: Some(format!("/{}/{}", i.bucket, i.key)),
        ..Default::default()
    })
}

pub async fn abort(
    project: Project,
    i: AbortMultipartUploadInput,
) -> S3Result<AbortMultipartUploadOutput> {
    project
        .abort_multipart(&i.bucket, &i.key, &i.upload_id)
        .await
        .map_err(s3_err)?;
    Ok(AbortMultipartUploadOutput::default())
}

pub async fn list_parts(project: Project, i: ListPartsInput) -> S3Result<ListPartsOutput> {
    let max = match i.max_parts {
        None => MAX_LISTED,
        Some(n) if n < 0 => {
            return Err(s3_error!(InvalidArgument, "max-parts must not be negative"));
        }
        Some(n) => (n as usize).min(MAX_LISTED),
    };
    let marker = i.part_number_marker.unwrap_or(0).max(0) as u32;
    let upload = project
        .list_parts(&i.bucket, &i.key, &i.upload_id)
        .await
        .map_err(s3_err)?;
    let after: Vec<&StoredPart> = upload.parts.iter().filter(|p| p.number > marker).collect();
    let truncated = after.len() > max;
    let page = &after[..after.len().min(max)];
    let parts = page
        .iter()
        .map(|p| Part {
            part_number: Some(p.number as i32),
            size: Some(p.size as i64),
            e_tag: Some(ETag::Strong(p.digest.clone())),
            last_modified: Some(timestamp(p.modified_ms)),
            ..Default::default()
        })
        .collect();
    Ok(ListPartsOutput {
        bucket: Some(i.bucket),
        key: Some(i.key),
        upload_id: Some(i.upload_id),
        max_parts: Some(max as i32),
        part_number_marker: i.part_number_marker,
        next_part_number_marker: page.last().map(|p| p.number as i32),
        is_truncated: Some(truncated),
        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
        parts: Some(parts),
        ..Default::default()
    })
}

pub async fn list_uploads(
    project: Project,
    i: ListMultipartUploadsInput,
) -> S3Result<ListMultipartUploadsOutput> {
    let max = match i.max_uploads {
        None => MAX_LISTED,
        Some(n) if n < 0 => {
            return Err(s3_error!(
                InvalidArgument,
                "max-uploads must not be negative"
            ));
        }
        Some(n) => (n as usize).min(MAX_LISTED),
    };
    let prefix = i.prefix.as_deref().unwrap_or("");
    let pending = project
        .list_pending(&i.bucket, crate::listing::level_of(prefix))
        .await
        .map_err(s3_err)?;
    let mut uploads: Vec<_> = pending
        .into_iter()
        .filter(|u| u.multipart && u.key.starts_with(prefix))
        .collect();
    uploads.sort_by(|a, b| {
        (a.key.as_bytes(), a.created_ms, &a.upload_id).cmp(&(
            b.key.as_bytes(),
            b.created_ms,
            &b.upload_id,
        ))
    });
    // Past the markers: keys after key-marker, or with an upload id
    // marker, that key's uploads after the one named.
    if let Some(key_marker) = i.key_marker.as_deref().filter(|k| !k.is_empty()) {
        let id_marker = i.upload_id_marker.as_deref().filter(|m| !m.is_empty());
        let skip = match id_marker {
            Some(id) => uploads
                .iter()
                .position(|u| u.key == key_marker && u.upload_id == id)
                .map(|at| at + 1)
                .unwrap_or_else(|| {
                    uploads.partition_point(|u| u.key.as_bytes() <= key_marker.as_bytes())
                }),
            None => uploads.partition_point(|u| u.key.as_bytes() <= key_marker.as_bytes()),
        };
        uploads.drain(..skip);
    }
    let delimiter = i.delimiter.as_deref().filter(|d| !d.is_empty());
    let encode = crate::s3::encoding_url(i.encoding_type.as_ref());
    let text = |s: &str| {
        if encode {
            crate::s3::url_encode(s)
        } else {
            s.to_string()
        }
    };
    let mut listed = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut truncated = false;
    let mut last: Option<(String, String)> = None;
    for u in &uploads {
        let common = delimiter.and_then(|d| {
            u.key[prefix.len()..]
                .find(d)
                .map(|at| u.key[..prefix.len() + at + d.len()].to_string())
        });
        if let Some(c) = &common
            && prefixes.last() == Some(c)
        {
            continue;
        }
        if listed.len() + prefixes.len() >= max {
            truncated = true;
            break;
        }
        match common {
            Some(c) => {
                last = Some((c.clone(), String::new()));
                prefixes.push(c);
            }
            None => {
                last = Some((u.key.clone(), u.upload_id.clone()));
                listed.push(MultipartUpload {
                    key: Some(text(&u.key)),
                    upload_id: Some(u.upload_id.clone()),
                    initiated: Some(timestamp(u.created_ms)),
                    storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                    ..Default::default()
                });
            }
        }
    }
    let (next_key, next_id) = match (truncated, last) {
        (true, Some((k, id))) => (Some(text(&k)), Some(id)),
        _ => (None, None),
    };
    Ok(ListMultipartUploadsOutput {
        bucket: Some(i.bucket),
        prefix: i.prefix,
        delimiter: i.delimiter,
        key_marker: i.key_marker,
        upload_id_marker: i.upload_id_marker,
        max_uploads: Some(max as i32),
        is_truncated: Some(truncated),
        next_key_marker: next_key,
        next_upload_id_marker: next_id,
        encoding_type: i.encoding_type,
        common_prefixes: (!prefixes.is_empty()).then(|| {
            prefixes
                .into_iter()
                .map(|p| CommonPrefix {
                    prefix: Some(text(&p)),
                })
                .collect()
        }),
        uploads: Some(listed),
        ..Default::default()
    })
}

/// The bytes of part `n` (1-based, in the object's order) of an object
/// made of parts of `sizes`: its start and length.
pub fn part_range(sizes: &[u64], n: u32) -> Option<(u64, u64)> {
    let at = (n as usize).checked_sub(1)?;
    let len = *sizes.get(at)?;
    Some((sizes[..at].iter().sum(), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_multipart_etag_is_the_md5_of_the_part_md5s() {
        // Two parts "a" and "b": MD5(MD5("a") ‖ MD5("b")), "-2".
        let a = hex::encode(Md5::digest(b"a"));
        let b = hex::encode(Md5::digest(b"b"));
        let mut both = Md5::digest(b"a").to_vec();
        both.extend(Md5::digest(b"b"));
        let want = format!("{}-2", hex::encode(Md5::digest(&both)));
        assert_eq!(
            multipart_etag([a.as_str(), b.as_str()].into_iter()).expect("etag"),
            want
        );
        assert!(multipart_etag(["not hex"].into_iter()).is_err());
    }

    #[test]
    fn copy_ranges_are_parsed_as_s3_gives_them() {
        assert_eq!(copy_range("bytes=0-9", 10).expect("range"), (0, 10));
        assert_eq!(copy_range("bytes=5-5", 10).expect("range"), (5, 1));
        assert!(copy_range("bytes=5-10", 10).is_err());
        assert!(copy_range("bytes=6-5", 10).is_err());
        assert!(copy_range("bytes=-5", 10).is_err());
        assert!(copy_range("0-5", 10).is_err());
    }

    #[test]
    fn parts_are_found_by_their_place() {
        let sizes = [5, 5, 2];
        assert_eq!(part_range(&sizes, 1), Some((0, 5)));
        assert_eq!(part_range(&sizes, 3), Some((10, 2)));
        assert_eq!(part_range(&sizes, 0), None);
        assert_eq!(part_range(&sizes, 4), None);
    }
}
