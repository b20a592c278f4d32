"""boto3 against Loam's S3 gateway: every operation the gateway serves,
and S3's error codes. Run by testnet/tests/s3.rs with LOAM_S3_JSON naming
the network's s3.json (and LOAM_S3_READONLY_JSON a read-only credential,
LOAM_S3_PREFIX_JSON one scoped to a prefix of bucket `scoped`)."""

import base64
import hashlib
import json
import os

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError


def client_from(path, secret=None, key_id=None, signature=None):
    """A client for the credential in the s3.json at `path` (its secret or
    id replaced when given)."""
    with open(path) as f:
        s3 = json.load(f)
    return boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        aws_access_key_id=key_id or s3["access_key_id"],
        aws_secret_access_key=secret or s3["secret_access_key"],
        region_name=s3["region"],
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            signature_version=signature,
        ),
    )


@pytest.fixture(scope="module")
def s3():
    return client_from(os.environ["LOAM_S3_JSON"])


@pytest.fixture(scope="module")
def bucket(s3):
    s3.create_bucket(Bucket="boto")
    return "boto"


def code(e):
    return e.value.response["Error"]["Code"]


def status(e):
    return e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_buckets(s3, bucket):
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert bucket in names
    s3.head_bucket(Bucket=bucket)
    s3.create_bucket(Bucket="short-lived")
    s3.delete_bucket(Bucket="short-lived")
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket="short-lived")
    assert status(e) == 404
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=bucket)
    assert code(e) == "BucketAlreadyOwnedByYou"
    s3.put_object(Bucket=bucket, Key="keeps-it", Body=b"x")
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=bucket)
    assert code(e) == "BucketNotEmpty"
    s3.delete_object(Bucket=bucket, Key="keeps-it")


def test_missing_bucket_and_key(s3, bucket):
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="no-such-bucket", Key="k")
    assert code(e) == "NoSuchBucket"
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket="no-such-bucket")
    assert code(e) == "NoSuchBucket"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="no/such/key")
    assert code(e) == "NoSuchKey"
    assert status(e) == 404
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="no/such/key")
    assert status(e) == 404


def test_put_get_head_keep_bytes_etag_and_metadata(s3, bucket):
    body = os.urandom(3 * 1024 * 1024 + 17)
    put = s3.put_object(
        Bucket=bucket,
        Key="data/blob.bin",
        Body=body,
        ContentType="application/x-test",
        Metadata={"owner": "ada", "purpose": "tests"},
        CacheControl="max-age=60",
        ContentDisposition='attachment; filename="blob.bin"',
    )
    md5 = hashlib.md5(body).hexdigest()
    assert put["ETag"] == f'"{md5}"'
    got = s3.get_object(Bucket=bucket, Key="data/blob.bin")
    assert got["Body"].read() == body
    assert got["ETag"] == f'"{md5}"'
    assert got["ContentType"] == "application/x-test"
    assert got["Metadata"] == {"owner": "ada", "purpose": "tests"}
    assert got["CacheControl"] == "max-age=60"
    assert got["ContentLength"] == len(body)
    head = s3.head_object(Bucket=bucket, Key="data/blob.bin")
    assert head["ContentLength"] == len(body)
    assert head["ETag"] == f'"{md5}"'
    assert head["ContentDisposition"] == 'attachment; filename="blob.bin"'
    # Empty objects too.
    s3.put_object(Bucket=bucket, Key="data/empty", Body=b"")
    assert s3.get_object(Bucket=bucket, Key="data/empty")["Body"].read() == b""


def test_content_md5_is_checked_before_anything_is_replaced(s3, bucket):
    s3.put_object(Bucket=bucket, Key="md5/k", Body=b"original")
    wrong = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="md5/k", Body=b"replacement", ContentMD5=wrong)
    assert code(e) == "BadDigest"
    assert s3.get_object(Bucket=bucket, Key="md5/k")["Body"].read() == b"original"
    right = base64.b64encode(hashlib.md5(b"replacement").digest()).decode()
    s3.put_object(Bucket=bucket, Key="md5/k", Body=b"replacement", ContentMD5=right)
    assert s3.get_object(Bucket=bucket, Key="md5/k")["Body"].read() == b"replacement"


def test_ranges_and_part_numbers(s3, bucket):
    body = bytes(range(256)) * 4096  # 1 MiB
    s3.put_object(Bucket=bucket, Key="range/obj", Body=body)
    for header, want in [
        ("bytes=0-9", body[0:10]),
        ("bytes=1000-1999", body[1000:2000]),
        ("bytes=-5", body[-5:]),
        ("bytes=1048000-", body[1048000:]),
        ("bytes=1048570-9999999", body[1048570:]),
    ]:
        got = s3.get_object(Bucket=bucket, Key="range/obj", Range=header)
        assert got["Body"].read() == want, header
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"].endswith(f"/{len(body)}")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="range/obj", Range="bytes=2000000-")
    assert code(e) == "InvalidRange"
    assert status(e) == 416
    whole = s3.get_object(Bucket=bucket, Key="range/obj", PartNumber=1)
    assert whole["Body"].read() == body
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="range/obj", PartNumber=2)
    assert status(e) == 416


def test_conditional_reads(s3, bucket):
    put = s3.put_object(Bucket=bucket, Key="cond/k", Body=b"conditional")
    etag = put["ETag"]
    assert s3.get_object(Bucket=bucket, Key="cond/k", IfMatch=etag)["Body"].read() == b"conditional"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="cond/k", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert status(e) == 412
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="cond/k", IfNoneMatch=etag)
    assert status(e) == 304
    head = s3.head_object(Bucket=bucket, Key="cond/k")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="cond/k", IfModifiedSince=head["LastModified"])
    assert status(e) == 304
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="cond/k", IfMatch='"ffffffffffffffffffffffffffffffff"')
    assert status(e) == 412


def test_delete_and_delete_objects(s3, bucket):
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"del/{i}", Body=b"d")
    s3.delete_object(Bucket=bucket, Key="del/0")
    # Deleting what is not there is not an error in S3.
    s3.delete_object(Bucket=bucket, Key="del/0")
    out = s3.delete_objects(
        Bucket=bucket,
        Delete={"Objects": [{"Key": f"del/{i}"} for i in range(1, 4)] + [{"Key": "del/never"}]},
    )
    assert sorted(d["Key"] for d in out["Deleted"]) == ["del/1", "del/2", "del/3", "del/never"]
    assert "Errors" not in out
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "del/4"}], "Quiet": True})
    assert not quiet.get("Deleted")
    assert s3.list_objects_v2(Bucket=bucket, Prefix="del/")["KeyCount"] == 0


def test_copy_keeps_or_replaces_metadata(s3, bucket):
    s3.put_object(Bucket=bucket, Key="copy/src", Body=b"copy me", ContentType="text/plain", Metadata={"a": "1"})
    src_etag = s3.head_object(Bucket=bucket, Key="copy/src")["ETag"]
    out = s3.copy_object(Bucket=bucket, Key="copy/dst", CopySource={"Bucket": bucket, "Key": "copy/src"})
    assert out["CopyObjectResult"]["ETag"] == src_etag
    got = s3.get_object(Bucket=bucket, Key="copy/dst")
    assert got["Body"].read() == b"copy me"
    assert got["ContentType"] == "text/plain"
    assert got["Metadata"] == {"a": "1"}
    s3.copy_object(
        Bucket=bucket,
        Key="copy/src",
        CopySource={"Bucket": bucket, "Key": "copy/src"},
        MetadataDirective="REPLACE",
        ContentType="text/markdown",
        Metadata={"b": "2"},
    )
    got = s3.get_object(Bucket=bucket, Key="copy/src")
    assert got["Body"].read() == b"copy me"
    assert got["ContentType"] == "text/markdown"
    assert got["Metadata"] == {"b": "2"}
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="copy/src", CopySource={"Bucket": bucket, "Key": "copy/src"})
    assert code(e) == "InvalidRequest"
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="copy/x", CopySource={"Bucket": bucket, "Key": "copy/missing"})
    assert code(e) == "NoSuchKey"


def test_listing_v2_and_v1(s3, bucket):
    keys = ["tree/a.txt", "tree/b/1", "tree/b/2", "tree/c/d/e", "tree/c-d", "tree/z"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    out = s3.list_objects_v2(Bucket=bucket, Prefix="tree/")
    assert [o["Key"] for o in out["Contents"]] == sorted(keys)
    assert out["KeyCount"] == len(keys)
    out = s3.list_objects_v2(Bucket=bucket, Prefix="tree/", Delimiter="/")
    assert [o["Key"] for o in out["Contents"]] == ["tree/a.txt", "tree/c-d", "tree/z"]
    assert [p["Prefix"] for p in out["CommonPrefixes"]] == ["tree/b/", "tree/c/"]
    out = s3.list_objects_v2(Bucket=bucket, Prefix="tree/c", Delimiter="-")
    assert [p["Prefix"] for p in out["CommonPrefixes"]] == ["tree/c-"]
    assert [o["Key"] for o in out["Contents"]] == ["tree/c/d/e"]
    # Pages of two, through continuation tokens.
    seen, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=bucket, Prefix="tree/", MaxKeys=2, **kw)
        assert page["KeyCount"] <= 2
        seen += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == sorted(keys)
    out = s3.list_objects_v2(Bucket=bucket, Prefix="tree/", StartAfter="tree/c-d")
    assert [o["Key"] for o in out["Contents"]] == ["tree/c/d/e", "tree/z"]
    # V1 with a delimiter gives NextMarker.
    page = s3.list_objects(Bucket=bucket, Prefix="tree/", Delimiter="/", MaxKeys=2)
    assert page["IsTruncated"]
    assert [o["Key"] for o in page["Contents"]] == ["tree/a.txt"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["tree/b/"]
    nxt = s3.list_objects(Bucket=bucket, Prefix="tree/", Delimiter="/", Marker=page["NextMarker"])
    assert [o["Key"] for o in nxt["Contents"]] == ["tree/c-d", "tree/z"]
    assert [p["Prefix"] for p in nxt["CommonPrefixes"]] == ["tree/c/"]
    # The paginator (as the AWS CLI uses it, with url encoding).
    odd = ["odd/a b", "odd/ü+%", "odd/q?x=1&y"]
    for k in odd:
        s3.put_object(Bucket=bucket, Key=k, Body=b"o")
    got = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="odd/", PaginationConfig={"PageSize": 1}):
        got += [o["Key"] for o in page.get("Contents", [])]
    assert got == sorted(odd, key=lambda k: k.encode())
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket=bucket, ContinuationToken="bogus")
    assert code(e) == "InvalidArgument"


def http(method, url, body=None):
    """One request with no headers but Host (a presigned URL's signature
    covers the rest), as curl or a browser would send it."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    conn.putrequest(method, u.path + "?" + u.query, skip_accept_encoding=True)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    if body is not None:
        conn.send(body)
    r = conn.getresponse()
    return r.status, r.read()


@pytest.mark.parametrize("signature", ["s3v4", "s3"])
def test_presigned_get_and_put(bucket, signature):
    signer = client_from(os.environ["LOAM_S3_JSON"], signature=signature)
    key = f"pre/{signature}"
    url = signer.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    assert http("PUT", url, b"presigned body")[0] == 200
    url = signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    assert http("GET", url) == (200, b"presigned body")
    # A URL for another key, or with its signature changed, is refused.
    assert http("GET", url.replace(f"/{key}?", "/pre/other?"))[0] == 403
    name = "X-Amz-Signature=" if signature == "s3v4" else "Signature="
    i = url.index(name) + len(name)
    flipped = "1" if url[i] == "0" else "0"
    assert http("GET", url[:i] + flipped + url[i + 1 :])[0] == 403


def test_unsupported_features_say_not_implemented(s3, bucket):
    with pytest.raises(ClientError) as e:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert code(e) == "NotImplemented"
    with pytest.raises(ClientError) as e:
        s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})
    assert code(e) == "NotImplemented"


def test_wrong_secret_is_refused(bucket):
    bad = client_from(os.environ["LOAM_S3_JSON"], secret="x" * 40)
    with pytest.raises(ClientError) as e:
        bad.list_buckets()
    assert code(e) == "SignatureDoesNotMatch"
    unknown = client_from(os.environ["LOAM_S3_JSON"], key_id="LOAMUNKNOWNUNKNOWN00")
    with pytest.raises(ClientError) as e:
        unknown.list_buckets()
    assert code(e) == "InvalidAccessKeyId"


def test_a_read_only_credential_cannot_write_or_delete(s3, bucket):
    s3.put_object(Bucket=bucket, Key="ro/k", Body=b"read me")
    ro = client_from(os.environ["LOAM_S3_READONLY_JSON"])
    assert ro.get_object(Bucket=bucket, Key="ro/k")["Body"].read() == b"read me"
    with pytest.raises(ClientError) as e:
        ro.put_object(Bucket=bucket, Key="ro/new", Body=b"no")
    assert code(e) == "AccessDenied"
    with pytest.raises(ClientError) as e:
        ro.delete_object(Bucket=bucket, Key="ro/k")
    assert code(e) == "AccessDenied"
    assert s3.get_object(Bucket=bucket, Key="ro/k")["Body"].read() == b"read me"


def test_a_prefix_credential_cannot_list_or_read_outside_its_prefix(s3):
    s3.create_bucket(Bucket="scoped")
    s3.put_object(Bucket="scoped", Key="mine/a", Body=b"a")
    s3.put_object(Bucket="scoped", Key="theirs/b", Body=b"b")
    scoped = client_from(os.environ["LOAM_S3_PREFIX_JSON"])
    out = scoped.list_objects_v2(Bucket="scoped", Prefix="mine/")
    assert [o["Key"] for o in out["Contents"]] == ["mine/a"]
    with pytest.raises(ClientError) as e:
        scoped.list_objects_v2(Bucket="scoped", Prefix="theirs/")
    assert code(e) == "AccessDenied"
    with pytest.raises(ClientError) as e:
        scoped.get_object(Bucket="scoped", Key="theirs/b")
    assert code(e) == "AccessDenied"
    scoped.put_object(Bucket="scoped", Key="mine/new", Body=b"n")
    with pytest.raises(ClientError) as e:
        scoped.put_object(Bucket="scoped", Key="theirs/new", Body=b"n")
    assert code(e) == "AccessDenied"
