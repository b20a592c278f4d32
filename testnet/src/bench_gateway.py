"""The boto3 client of `testnet bench-gateway`: one upload_file or
download_file with boto3's managed transfer at its defaults (8 MiB parts,
10 threads), timed around the call alone. Prints the seconds it took.

Arguments: S3_JSON up|down BUCKET KEY FILE
"""

import json
import sys
import time

import boto3
from botocore.config import Config

s3_json, op, bucket, key, path = sys.argv[1:6]
with open(s3_json) as f:
    s3 = json.load(f)
client = boto3.client(
    "s3",
    endpoint_url=s3["endpoint"],
    aws_access_key_id=s3["access_key_id"],
    aws_secret_access_key=s3["secret_access_key"],
    region_name=s3["region"],
    config=Config(s3={"addressing_style": "path"}),
)
started = time.perf_counter()
if op == "up":
    client.upload_file(path, bucket, key)
elif op == "down":
    client.download_file(bucket, key, path)
else:
    sys.exit(f"unknown operation {op!r}: up or down")
print(time.perf_counter() - started)
