#!/bin/sh
# Runs inside the LocalStack container (docker-compose) once S3 is ready.
awslocal s3 mb s3://data-pipeline-bucket || true
