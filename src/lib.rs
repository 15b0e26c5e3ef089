//! # lakepipe
//!
//! Kafka → Delta Lake ingest with Hudi-style upserts and exactly-once commits, in one process.
//!
//! The modules follow the data as it flows:
//!
//! ```text
//!  publish ──► broker ──► source ──► decode ──► enrich ──► batch ──► lake ──► query
//!  (router      (Kafka,    (Kafka      (JSON →    (_source,  (latest   (key index,   (DataFusion
//!   over         Iggy)      consumer,   typed      _topic,    per key   copy-on-write  or DuckDB
//!   breakers;               lake        Record,    _offset,   by pre-   rewrite of     SQL over
//!   files,                  offsets)    or dead    date)      combine;  touched files; every
//!   HTTP)                               letter)               Arrow)    data + offsets table)
//!                                                                       in one commit)
//! ```
//!
//! * [`publish`]: the producers' write path: generated records, file loads and HTTP ingest go
//!   through a router over Kafka and Iggy brokers, each behind a circuit breaker.
//! * [`source`]: a consumer-group member that starts every partition at the offset stored in
//!   the lake's Delta `txn` actions, never at Kafka's committed offset.
//! * [`decode`]: validates each message against its topic's [`spec`]; a failure becomes a
//!   dead letter with a reason, never a crash.
//! * [`enrich`] and [`batch`]: provenance columns and the `date` partition; one winner per key.
//! * [`lake`]: upserts into the topic's table and appends to `dead_letters`, each commit
//!   carrying the source offsets it covers, fenced against other writers.
//! * [`ingest`]: the micro-batch loop that ties them together.
//! * [`query`]: SQL over the lake on DataFusion or embedded DuckDB, with `as_of`, `history`,
//!   `changes` and `freshness()`.
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
pub mod publish;
pub mod query;
pub mod server;
pub mod source;
pub mod spec;

/// mimalloc's `purge_delay` option (its index in `mi_option_e`, the same in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Make mimalloc (the binaries' allocator) return freed memory to the OS at once rather than
/// after 10 ms. Rewriting files in an upsert frees and reallocates hundreds of MB within
/// milliseconds; with the default delay the peak RSS of the update-mix benchmark was 1118 MB,
/// with no delay 750 MB, for about 10% more time. Has no effect under another allocator, nor
/// when `MIMALLOC_PURGE_DELAY` is set (mimalloc's own setting wins).
pub fn return_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; mimalloc allows it at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}
