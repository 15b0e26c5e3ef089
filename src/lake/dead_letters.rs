//! The `dead_letters` table: every record that failed validation, with the reason.
//!
//! It commits separately from the data tables and keeps its own `txn` offsets, so a record is
//! dead-lettered exactly once even when a crash falls between the two commits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BinaryBuilder, Date32Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use deltalake::kernel::Action;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;

use super::commit::{commit_advancing, fence, stored_offset, txn_actions, OffsetKey, OffsetRange};
use super::upsert::MAX_COMMIT_ATTEMPTS;
use super::{Lake, LakeError};
use crate::batch::timestamp_type;
use crate::decode::{day_of, DecodeError};
use crate::spec::meta;

/// The table name.
pub const TABLE: &str = "dead_letters";

/// One bad record.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Message key bytes.
    pub key: Option<Vec<u8>>,
    /// Raw payload bytes (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Message timestamp from the broker, in milliseconds.
    pub message_timestamp_ms: Option<i64>,
    /// Why it failed.
    pub error: DecodeError,
}

/// The schema of `dead_letters`.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(meta::TOPIC, DataType::Utf8, true),
        Field::new(meta::PARTITION, DataType::Int32, true),
        Field::new(meta::OFFSET, DataType::Int64, true),
        Field::new("key", DataType::Utf8, true),
        Field::new("payload", DataType::Binary, true),
        Field::new("payload_text", DataType::Utf8, true),
        Field::new("error_kind", DataType::Utf8, true),
        Field::new("error_message", DataType::Utf8, true),
        Field::new("message_timestamp", timestamp_type(), true),
        Field::new(meta::SOURCE, DataType::Utf8, true),
        Field::new(meta::INGESTED_AT, timestamp_type(), true),
        Field::new(meta::DATE, DataType::Date32, true),
    ]))
}

fn to_batch(letters: &[DeadLetter], source: &str, now_micros: i64) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = letters.len();
    let mut topic = StringBuilder::new();
    let mut partition = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut key = StringBuilder::new();
    let mut payload = BinaryBuilder::new();
    let mut text = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut message = StringBuilder::new();
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n);
    let mut src = StringBuilder::new();
    let mut ingested = TimestampMicrosecondBuilder::with_capacity(n);
    let mut date = Date32Builder::with_capacity(n);
    for d in letters {
        topic.append_value(&d.topic);
        partition.append_value(d.partition);
        offset.append_value(d.offset);
        key.append_option(d.key.as_deref().map(String::from_utf8_lossy));
        payload.append_option(d.payload.as_deref());
        text.append_option(d.payload.as_deref().map(String::from_utf8_lossy));
        kind.append_value(d.error.kind.as_str());
        message.append_value(&d.error.message);
        ts.append_option(d.message_timestamp_ms.map(|m| m.saturating_mul(1000)));
        src.append_value(source);
        ingested.append_value(now_micros);
        date.append_value(day_of(now_micros));
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(topic.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(key.finish()),
        Arc::new(payload.finish()),
        Arc::new(text.finish()),
        Arc::new(kind.finish()),
        Arc::new(message.finish()),
        Arc::new(ts.finish().with_timezone("UTC")),
        Arc::new(src.finish()),
        Arc::new(ingested.finish().with_timezone("UTC")),
        Arc::new(date.finish()),
    ];
    RecordBatch::try_new(schema(), cols)
}

/// The dead-letter table, opened for appends.
pub struct DeadLetterTable {
    table: DeltaTable,
}

impl DeadLetterTable {
    /// Open (or create) `<lake>/dead_letters`.
    pub async fn open(lake: &Lake) -> Result<Self, LakeError> {
        let table = lake.open_or_create(TABLE, &schema(), &[meta::DATE]).await?;
        Ok(DeadLetterTable { table })
    }

    /// The next offset stored for a partition.
    pub async fn stored_offset(&mut self, key: &OffsetKey) -> Result<Option<i64>, LakeError> {
        self.table.update_state().await.map_err(|e| LakeError::delta(TABLE, e))?;
        stored_offset(&self.table, TABLE, key).await
    }

    /// Append `letters` and move `ranges` to their end offsets in one commit.
    pub async fn append(&mut self, letters: &[DeadLetter], ranges: &[OffsetRange], source: &str) -> Result<Option<u64>, LakeError> {
        if ranges.is_empty() {
            return Ok(None);
        }
        let now = chrono::Utc::now().timestamp_micros();
        let batch = to_batch(letters, source, now).map_err(|e| LakeError::data(TABLE, e))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.table.update_state().await.map_err(|e| LakeError::delta(TABLE, e))?;
            fence(&self.table, TABLE, ranges).await?;
            let mut writer = RecordBatchWriter::for_table(&self.table).map_err(|e| LakeError::delta(TABLE, e))?;
            if batch.num_rows() > 0 {
                writer.write(batch.clone()).await.map_err(|e| LakeError::delta(TABLE, e))?;
            }
            let adds = writer.flush().await.map_err(|e| LakeError::delta(TABLE, e))?;
            let mut actions: Vec<Action> = adds.iter().cloned().map(Action::Add).collect();
            actions.extend(txn_actions(ranges));
            let op = DeltaOperation::Write { mode: SaveMode::Append, partition_by: Some(vec![meta::DATE.into()]), predicate: None };
            let metadata = HashMap::from([("lakepipe".to_string(), serde_json::json!({"dead_letters": letters.len()}))]);
            match commit_advancing(&mut self.table, TABLE, actions, op, metadata).await {
                Ok(v) => return Ok(Some(v)),
                // Files are never deleted after a failed commit (see `upsert`): leave them to vacuum.
                Err(e) => {
                    match e {
                        LakeError::Conflict { .. } if attempt < MAX_COMMIT_ATTEMPTS => {
                            tokio::time::sleep(Duration::from_millis(20 * attempt as u64 + rand::random::<u64>() % 100)).await;
                        }
                        e => return Err(e),
                    }
                }
            }
        }
    }
}
