//! Enrich: the provenance every row carries (`_source`, `_topic`, `_ingested_at`, with
//! `_partition` and `_offset` from the record) and its `date` partition, which the decoder
//! derives from the partition-time field.

/// Provenance shared by every record of one batch of one topic.
#[derive(Debug, Clone)]
pub struct Provenance<'a> {
    /// The source's name: `kafka` or `iggy` unless the ingest names it (`source_name`, as when
    /// a failover lake is fed by two clusters), or `file`.
    pub source: &'a str,
    /// Source topic.
    pub topic: &'a str,
    /// Ingest time, microseconds since the epoch.
    pub ingested_at: i64,
}

impl<'a> Provenance<'a> {
    /// Provenance stamped now.
    pub fn now(source: &'a str, topic: &'a str) -> Self {
        Provenance { source, topic, ingested_at: chrono::Utc::now().timestamp_micros() }
    }
}
