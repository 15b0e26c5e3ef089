"""Create the dev bucket in LocalStack (host mode). Idempotent."""
import os
import sys

import boto3

bucket = sys.argv[1] if len(sys.argv) > 1 else "data-pipeline-bucket"
s3 = boto3.client(
    "s3",
    endpoint_url=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
    aws_access_key_id="test",
    aws_secret_access_key="test",
    region_name="us-east-1",
)
existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
if bucket not in existing:
    s3.create_bucket(Bucket=bucket)
