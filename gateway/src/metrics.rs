//! What the gateway exports at `/metrics` (on `gateway run
//! --metrics-address`): requests by S3 operation and status, their
//! latency, bytes moved, requests in flight. Listed in `docs/metrics.md`.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Describes every metric once, so `/metrics` lists them before they move.
pub fn describe() {
    loam_common::telemetry::prometheus();
    describe_counter!(
        "loam_gateway_requests_total",
        "S3 requests answered, by operation and HTTP status"
    );
    describe_histogram!(
        "loam_gateway_request_duration_seconds",
        "Time from a request's arrival to its response's headers, by operation"
    );
    describe_counter!(
        "loam_gateway_received_bytes_total",
        "Request body bytes of requests answered with success"
    );
    describe_counter!(
        "loam_gateway_sent_bytes_total",
        "Response body bytes announced by successful responses"
    );
    describe_gauge!("loam_gateway_requests_in_flight", "Requests being handled");
}

/// The S3 operation a path-style request asks for, from its method, path
/// and query (what the gateway routes on), for metric labels.
pub fn operation(method: &Method, path: &str, query: &str, headers: &HeaderMap) -> &'static str {
    let has = |name: &str| {
        query
            .split('&')
            .any(|kv| kv.split('=').next() == Some(name))
    };
    let path = path.trim_start_matches('/');
    let (bucket, key) = match path.split_once('/') {
        Some((b, k)) => (b, k),
        None => (path, ""),
    };
    let copy = headers.contains_key("x-amz-copy-source");
    match (method.as_str(), bucket.is_empty(), key.is_empty()) {
        ("GET", true, _) => "ListBuckets",
        ("GET", false, true) if has("uploads") => "ListMultipartUploads",
        ("GET", false, true) if has("location") => "GetBucketLocation",
        ("GET", false, true) if has("list-type") => "ListObjectsV2",
        ("GET", false, true) => "ListObjects",
        ("HEAD", false, true) => "HeadBucket",
        ("PUT", false, true) => "CreateBucket",
        ("DELETE", false, true) => "DeleteBucket",
        ("POST", false, true) if has("delete") => "DeleteObjects",
        ("GET", false, false) if has("uploadId") => "ListParts",
        ("GET", false, false) => "GetObject",
        ("HEAD", false, false) => "HeadObject",
        ("PUT", false, false) if has("uploadId") && copy => "UploadPartCopy",
        ("PUT", false, false) if has("uploadId") => "UploadPart",
        ("PUT", false, false) if copy => "CopyObject",
        ("PUT", false, false) => "PutObject",
        ("POST", false, false) if has("uploads") => "CreateMultipartUpload",
        ("POST", false, false) if has("uploadId") => "CompleteMultipartUpload",
        ("DELETE", false, false) if has("uploadId") => "AbortMultipartUpload",
        ("DELETE", false, false) => "DeleteObject",
        _ => "Other",
    }
}

/// A body length a message declares: the decoded length of a chunked
/// (streaming-signed) upload, else `Content-Length`.
fn declared_length(headers: &HeaderMap) -> u64 {
    ["x-amz-decoded-content-length", "content-length"]
        .iter()
        .find_map(|h| headers.get(*h)?.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

/// One request in `loam_gateway_requests_in_flight`, until dropped.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter() -> Self {
        let gauge = gauge!("loam_gateway_requests_in_flight");
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Middleware: counts and times every request.
pub async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let op = operation(
        request.method(),
        request.uri().path(),
        request.uri().query().unwrap_or(""),
        request.headers(),
    );
    let received = declared_length(request.headers());
    let response = {
        // Dropped with the request too (a client that hangs up).
        let _in_flight = InFlight::enter();
        next.run(request).await
    };
    let status = response.status();
    histogram!("loam_gateway_request_duration_seconds", "operation" => op)
        .record(started.elapsed().as_secs_f64());
    counter!(
        "loam_gateway_requests_total",
        "operation" => op,
        "status" => status.as_u16().to_string()
    )
    .increment(1);
    if status.is_success() {
        counter!("loam_gateway_received_bytes_total").increment(received);
        counter!("loam_gateway_sent_bytes_total").increment(declared_length(response.headers()));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: &str, target: &str, copy: bool) -> &'static str {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers = HeaderMap::new();
        if copy {
            headers.insert("x-amz-copy-source", "/b/src".parse().expect("header"));
        }
        operation(&method.parse().expect("method"), path, query, &headers)
    }

    #[test]
    fn requests_are_named_by_their_s3_operation() {
        let cases = [
            ("GET", "/", false, "ListBuckets"),
            ("PUT", "/b", false, "CreateBucket"),
            ("HEAD", "/b/", false, "HeadBucket"),
            ("DELETE", "/b", false, "DeleteBucket"),
            ("GET", "/b?list-type=2&prefix=a", false, "ListObjectsV2"),
            ("GET", "/b?prefix=a", false, "ListObjects"),
            ("GET", "/b?uploads", false, "ListMultipartUploads"),
            ("GET", "/b?location", false, "GetBucketLocation"),
            ("POST", "/b?delete", false, "DeleteObjects"),
            ("GET", "/b/k/x", false, "GetObject"),
            ("GET", "/b/k?uploadId=u", false, "ListParts"),
            ("HEAD", "/b/k", false, "HeadObject"),
            ("PUT", "/b/k", false, "PutObject"),
            ("PUT", "/b/k", true, "CopyObject"),
            ("PUT", "/b/k?partNumber=1&uploadId=u", false, "UploadPart"),
            (
                "PUT",
                "/b/k?partNumber=1&uploadId=u",
                true,
                "UploadPartCopy",
            ),
            ("POST", "/b/k?uploads", false, "CreateMultipartUpload"),
            ("POST", "/b/k?uploadId=u", false, "CompleteMultipartUpload"),
            ("DELETE", "/b/k?uploadId=u", false, "AbortMultipartUpload"),
            ("DELETE", "/b/k", false, "DeleteObject"),
            ("PATCH", "/b/k", false, "Other"),
            // A query value that only looks like a sub-resource.
            ("GET", "/b?prefix=uploads", false, "ListObjects"),
        ];
        for (method, target, copy, want) in cases {
            assert_eq!(op(method, target, copy), want, "{method} {target}");
        }
    }

    #[test]
    fn declared_lengths_prefer_the_decoded_one() {
        let mut h = HeaderMap::new();
        assert_eq!(declared_length(&h), 0);
        h.insert("content-length", "100".parse().expect("header"));
        assert_eq!(declared_length(&h), 100);
        h.insert(
            "x-amz-decoded-content-length",
            "64".parse().expect("header"),
        );
        assert_eq!(declared_length(&h), 64);
        h.insert(
            "x-amz-decoded-content-length",
            "junk".parse().expect("header"),
        );
        assert_eq!(declared_length(&h), 100);
    }
}
