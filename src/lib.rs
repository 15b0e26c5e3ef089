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
//! * [`source`]: what the ingest loop reads, behind the [`source::Source`] trait: a Kafka
//!   consumer-group member or an Iggy reader, each starting every partition at the offset
//!   stored in the lake's Delta `txn` actions, never at the broker's committed offset. Its
//!   [`source::inspect`] reads what a broker holds (topics, groups, a topic's newest messages)
//!   outside every group, for the web UI's brokers page.
//! * [`decode`]: validates each message against its topic's [`spec`]; a failure becomes a
//!   dead letter with a reason, never a crash.
//! * [`enrich`] and [`batch`]: provenance columns and the `date` partition; one winner per key.
//! * [`lake`]: upserts into the topic's table and appends to `dead_letters`, each commit
//!   carrying the source offsets it covers, fenced against other writers; the ingest loop
//!   sees it through the [`lake::tables::Tables`] trait.
//! * [`ingest`]: the micro-batch loop that ties them together.
//! * [`query`]: SQL over the lake on DataFusion or embedded DuckDB (which streams the lake's
//!   tables through a table function of its own, `query::duck::scan`), with `as_of`, `history`,
//!   `changes` and `freshness()`; DataFusion's joins get yield points ([`query::yielding`]) so
//!   that a timed-out query stops.
//! * [`server`]: the read-only HTTP API (what a query may run: [`query::allow`]), the brokers
//!   page's API ([`server::brokers`]) and its limits (host names,
//!   queries at once, memory, result size: [`server::limits`]); [`metrics`]: Prometheus
//!   metrics and health.
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

/// Hash maps for lookups made once per message, key or stored row: foldhash (hashbrown's
/// default), not SipHash; their keys (topics, record keys, file paths) gain nothing from
/// SipHash's resistance to chosen collisions.
pub(crate) use deltalake::datafusion::common::{HashMap as FastMap, HashSet as FastSet};

/// mimalloc's `purge_delay` option (its index in `mi_option_e`, the same in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's `allow_thp` option (its index in v3's `mi_option_e`; v3 is the crate's default).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Tune mimalloc (the binaries' allocator) for `ingest`: freed memory goes back to the OS after
/// 300 ms (not 10 ms, nor at once), and no transparent huge pages are requested. An upsert frees
/// and reallocates hundreds of MB within milliseconds; each huge page that comes back must be
/// zeroed whole (2 MB), and that page clearing was a third of the update mix's CPU time. On the
/// update-mix benchmark, against purging at once with huge pages: 4.9 s instead of 5.7 s and a
/// peak RSS of 690 MB instead of 840 MB (mimalloc's defaults: 1118 MB). A delay of 300 ms
/// rather than 100 ms cut the system time of an append by about a quarter and of the update mix
/// by about a fifth, for a peak RSS of 780 to 900 MB instead of about 740 MB (1 s: up to 975 MB).
/// Has no effect under another allocator; `MIMALLOC_PURGE_DELAY` and `MIMALLOC_ALLOW_THP`, when
/// set, win.
pub fn tune_allocator_for_ingest() {
    for (var, option, value) in [("MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY, 300), ("MIMALLOC_ALLOW_THP", MI_OPTION_ALLOW_THP, 0)] {
        if std::env::var_os(var).is_none() {
            // SAFETY: sets a process-wide allocator option; mimalloc allows it at any time.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
    // mimalloc applies `allow_thp = 0` with this call only when it reads the option at start
    // (from the environment); memory it reserved by then keeps huge pages without it.
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: a process attribute; no memory is touched.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}
