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
    with pytest.raises(ClientError) as e:
        ro.create_multipart_upload(Bucket=bucket, Key="ro/parts")
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


MiB = 1024 * 1024


def md5_etag(data):
    return '"%s"' % hashlib.md5(data).hexdigest()


def multipart_etag(parts):
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return '"%s-%d"' % (hashlib.md5(digests).hexdigest(), len(parts))


def test_multipart_upload_list_and_complete(s3, bucket):
    key = "mp/object"
    up = s3.create_multipart_upload(
        Bucket=bucket, Key=key, ContentType="application/x-parts", Metadata={"owner": "mp"}
    )
    uid = up["UploadId"]
    # Parts span several segments (the network's are 2 MiB) and end
    # mid-segment; they go up out of order.
    data = {
        1: bytes([1]) * (5 * MiB) + os.urandom(1000),
        2: os.urandom(6 * MiB + 17),
        3: b"tail" * 1000,
    }
    etags = {}
    for n in [3, 1, 2]:
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n, Body=data[n])
        assert r["ETag"] == md5_etag(data[n])
        etags[n] = r["ETag"]
    # Part 2 again, shorter (fewer segments): the new one replaces it.
    data[2] = b"\x07" * (5 * MiB + 1)
    etags[2] = s3.upload_part(
        Bucket=bucket, Key=key, UploadId=uid, PartNumber=2, Body=data[2]
    )["ETag"]
    assert etags[2] == md5_etag(data[2])
    # A part that will be left out.
    s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=4, Body=b"left out")

    listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=uid)
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed["Parts"]] == [
        (1, len(data[1]), etags[1]),
        (2, len(data[2]), etags[2]),
        (3, len(data[3]), etags[3]),
        (4, 8, md5_etag(b"left out")),
    ]
    page = s3.list_parts(Bucket=bucket, Key=key, UploadId=uid, MaxParts=2)
    assert [p["PartNumber"] for p in page["Parts"]] == [1, 2]
    assert page["IsTruncated"] and page["NextPartNumberMarker"] == 2
    rest = s3.list_parts(Bucket=bucket, Key=key, UploadId=uid, PartNumberMarker=2)
    assert [p["PartNumber"] for p in rest["Parts"]] == [3, 4]
    assert not rest["IsTruncated"]
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix="mp/")
    assert [(u["Key"], u["UploadId"]) for u in uploads["Uploads"]] == [(key, uid)]
    # A plain PUT in flight is not a multipart upload; another key's are
    # not listed under this prefix.
    assert not s3.list_multipart_uploads(Bucket=bucket, Prefix="other/").get("Uploads")

    def complete(parts):
        return s3.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]},
        )

    with pytest.raises(ClientError) as e:
        complete([(1, etags[1]), (2, etags[1]), (3, etags[3])])
    assert code(e) == "InvalidPart"
    with pytest.raises(ClientError) as e:
        complete([(1, etags[1]), (5, etags[3])])
    assert code(e) == "InvalidPart"
    with pytest.raises(ClientError) as e:
        complete([(2, etags[2]), (1, etags[1])])
    assert code(e) == "InvalidPartOrder"
    with pytest.raises(ClientError) as e:
        complete([(1, etags[1]), (3, etags[3]), (4, md5_etag(b"left out"))])
    assert code(e) == "EntityTooSmall"

    done = complete([(n, etags[n]) for n in (1, 2, 3)])
    parts = [data[1], data[2], data[3]]
    whole = b"".join(parts)
    assert done["ETag"] == multipart_etag(parts)

    got = s3.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == whole
    assert got["ETag"] == multipart_etag(parts)
    assert got["ContentType"] == "application/x-parts"
    assert got["Metadata"] == {"owner": "mp"}
    # Ranges across segment and part boundaries.
    p1 = len(data[1])
    for a, b in [(0, 9), (2 * MiB - 3, 2 * MiB + 2), (p1 - 10, p1 + 10), (p1 - 1, len(whole) - 1), (len(whole) - 5, len(whole) - 1)]:
        r = s3.get_object(Bucket=bucket, Key=key, Range="bytes=%d-%d" % (a, b))
        assert r["Body"].read() == whole[a : b + 1], (a, b)
    # Parts by number.
    for n in (1, 2, 3):
        r = s3.get_object(Bucket=bucket, Key=key, PartNumber=n)
        assert r["Body"].read() == parts[n - 1]
        assert r["PartsCount"] == 3
    assert s3.head_object(Bucket=bucket, Key=key, PartNumber=2)["ContentLength"] == len(data[2])
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key=key, PartNumber=4)
    assert status(e) == 416
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="mp/object")["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"]) for o in listed] == [(key, len(whole), multipart_etag(parts))]

    # The upload is over.
    assert not s3.list_multipart_uploads(Bucket=bucket, Prefix="mp/").get("Uploads")
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=5, Body=b"late")
    assert code(e) == "NoSuchUpload"


def test_upload_part_copy_abort_and_empty_parts(s3, bucket):
    src = bytes(range(256)) * (24 * 1024)  # 6 MiB
    s3.put_object(Bucket=bucket, Key="mp/src", Body=src)
    key = "mp/copied"
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    whole = s3.upload_part_copy(
        Bucket=bucket, Key=key, UploadId=uid, PartNumber=1, CopySource={"Bucket": bucket, "Key": "mp/src"}
    )
    assert whole["CopyPartResult"]["ETag"] == md5_etag(src)
    ranged = s3.upload_part_copy(
        Bucket=bucket,
        Key=key,
        UploadId=uid,
        PartNumber=2,
        CopySource={"Bucket": bucket, "Key": "mp/src"},
        CopySourceRange="bytes=100-1099",
    )
    assert ranged["CopyPartResult"]["ETag"] == md5_etag(src[100:1100])
    with pytest.raises(ClientError) as e:
        s3.upload_part_copy(
            Bucket=bucket,
            Key=key,
            UploadId=uid,
            PartNumber=3,
            CopySource={"Bucket": bucket, "Key": "mp/src"},
            CopySourceRange="bytes=0-%d" % len(src),
        )
    assert code(e) == "InvalidRange"
    with pytest.raises(ClientError) as e:
        s3.upload_part_copy(
            Bucket=bucket, Key=key, UploadId=uid, PartNumber=3, CopySource={"Bucket": bucket, "Key": "mp/missing"}
        )
    assert code(e) == "NoSuchKey"
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=uid,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": whole["CopyPartResult"]["ETag"]},
                {"PartNumber": 2, "ETag": ranged["CopyPartResult"]["ETag"]},
            ]
        },
    )
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == src + src[100:1100]

    # A part whose body does not match its Content-MD5 is refused.
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp/aborted")["UploadId"]
    with pytest.raises(ClientError) as e:
        s3.upload_part(
            Bucket=bucket,
            Key="mp/aborted",
            UploadId=uid,
            PartNumber=1,
            Body=b"body",
            ContentMD5=base64.b64encode(hashlib.md5(b"other").digest()).decode(),
        )
    assert code(e) == "BadDigest"
    assert not s3.list_parts(Bucket=bucket, Key="mp/aborted", UploadId=uid).get("Parts")
    s3.upload_part(Bucket=bucket, Key="mp/aborted", UploadId=uid, PartNumber=1, Body=b"body")
    # An upload id answers only for its own key.
    for call in (
        lambda: s3.list_parts(Bucket=bucket, Key="mp/other", UploadId=uid),
        lambda: s3.abort_multipart_upload(Bucket=bucket, Key="mp/other", UploadId=uid),
        lambda: s3.list_parts(Bucket=bucket, Key="mp/aborted", UploadId="00" * 16),
        lambda: s3.list_parts(Bucket=bucket, Key="mp/aborted", UploadId="not hex"),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert code(e) == "NoSuchUpload"
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket=bucket, Key="mp/aborted", UploadId=uid, PartNumber=10001, Body=b"x")
    assert code(e) == "InvalidArgument"
    s3.abort_multipart_upload(Bucket=bucket, Key="mp/aborted", UploadId=uid)
    for call in (
        lambda: s3.list_parts(Bucket=bucket, Key="mp/aborted", UploadId=uid),
        lambda: s3.upload_part(Bucket=bucket, Key="mp/aborted", UploadId=uid, PartNumber=2, Body=b"x"),
        lambda: s3.complete_multipart_upload(
            Bucket=bucket,
            Key="mp/aborted",
            UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": md5_etag(b"body")}]},
        ),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert code(e) == "NoSuchUpload"
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="mp/aborted")
    assert status(e) == 404

    # An object of one empty part.
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp/empty")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="mp/empty", UploadId=uid, PartNumber=1, Body=b"")["ETag"]
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="mp/empty",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    got = s3.get_object(Bucket=bucket, Key="mp/empty")
    assert got["Body"].read() == b""
    assert got["ETag"] == multipart_etag([b""])


def test_multipart_uploads_are_listed_with_markers_and_delimiters(s3, bucket):
    ids = {}
    for key in ["ul/a", "ul/b", "ul/b", "ul/dir/c", "ul/dir/d"]:
        ids.setdefault(key, []).append(s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])
    everything = s3.list_multipart_uploads(Bucket=bucket, Prefix="ul/")["Uploads"]
    assert [u["Key"] for u in everything] == ["ul/a", "ul/b", "ul/b", "ul/dir/c", "ul/dir/d"]
    assert [u["UploadId"] for u in everything if u["Key"] == "ul/b"] == ids["ul/b"]
    top = s3.list_multipart_uploads(Bucket=bucket, Prefix="ul/", Delimiter="/")
    assert [u["Key"] for u in top["Uploads"]] == ["ul/a", "ul/b", "ul/b"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["ul/dir/"]
    first = s3.list_multipart_uploads(Bucket=bucket, Prefix="ul/", MaxUploads=2)
    assert [u["Key"] for u in first["Uploads"]] == ["ul/a", "ul/b"]
    assert first["IsTruncated"]
    after = s3.list_multipart_uploads(
        Bucket=bucket,
        Prefix="ul/",
        KeyMarker=first["NextKeyMarker"],
        UploadIdMarker=first["NextUploadIdMarker"],
    )
    assert [(u["Key"], u["UploadId"]) for u in after["Uploads"]] == [
        ("ul/b", ids["ul/b"][1]),
        ("ul/dir/c", ids["ul/dir/c"][0]),
        ("ul/dir/d", ids["ul/dir/d"][0]),
    ]
    past_b = s3.list_multipart_uploads(Bucket=bucket, Prefix="ul/", KeyMarker="ul/b")
    assert [u["Key"] for u in past_b["Uploads"]] == ["ul/dir/c", "ul/dir/d"]
    for key, uploads in ids.items():
        for uid in uploads:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=uid)
    assert not s3.list_multipart_uploads(Bucket=bucket, Prefix="ul/").get("Uploads")
