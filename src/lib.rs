//! # lakepipe
//!
//! Kafka → Delta Lake ingest with Hudi-style upserts and exactly-once commits, in one process.
//!
//! The modules follow the data as it flows:
//!
//! ```text
//!  source ──► decode ──► enrich ──► batch ──────────► lake ──────────────► query
//!  (Kafka     (JSON →    (_source,  (precombine:     (global key index,   (DataFusion
//!   consumer,  typed      _topic,    latest per key;  copy-on-write        SQL over every
//!   lake       Record,    _offset,   Arrow            rewrite of only      table)
//!   offsets)   or dead    date)      RecordBatch)     touched files;
//!              letter)                                data + offsets in
//!                                                     one Delta commit)
//! ```
//!
//! * [`source`]: a consumer-group member that starts every partition at the offset stored in
//!   the lake's Delta `txn` actions, never at Kafka's committed offset.
//! * [`decode`]: validates each message against its topic's [`spec`]; a failure becomes a
//!   dead letter with a reason, never a crash.
//! * [`enrich`] and [`batch`]: provenance columns and the `date` partition; one winner per key.
//! * [`lake`]: upserts into the topic's table and appends to `dead_letters`, each commit
//!   carrying the source offsets it covers, fenced against other writers.
//! * [`ingest`]: the micro-batch loop that ties them together.
//! * [`query`]: SQL over the lake, with `as_of`, `history`, `changes` and `freshness()`.
//! * [`server`]: the read-only HTTP API; [`metrics`]: Prometheus metrics and health.
//! * [`audit`], [`maintain`]: proving exactly-once, compaction and vacuum.
//!
//! The exactly-once protocol is written up in `docs/DESIGN.md`.

#![warn(missing_docs)]

pub mod batch;
pub mod config;
pub mod decode;
pub mod demo;
pub mod enrich;
pub mod audit;
pub mod generate;
pub mod ingest;
pub mod lake;
pub mod maintain;
pub mod metrics;
pub mod progress;
pub mod query;
pub mod server;
pub mod source;
pub mod spec;
