//! Integration tests against a real Kafka-protocol broker (tansu) and real LocalStack S3, both
//! started by `scripts/test.sh` on 127.0.0.1. Every test uses its own topic, group and table.

mod api;
mod brokers;
mod failures;
mod first_day;
mod faults;
mod harness;
mod hostile;
mod iggy;
mod iggy_faults;
mod kill;
mod once;
mod operate;
mod publish;
mod reliability;
mod security;
mod sql_golden;
mod ui;
mod upsert;
