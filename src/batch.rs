//! Batch: how the records of one micro-batch resolve against the stored rows, and their
//! conversion to an Arrow `RecordBatch`.
//!
//! The records of a key are applied in stream order, starting from the stored row
//! ([`resolve`]): a record replaces the current version when its precombine value is not older
//! (so the greatest value wins and, on a tie, the later record); a delete that wins removes the
//! key, after which any record inserts it again; a tombstone removes the key whatever its
//! timestamp. Because this is a left fold over the stream, the result does not depend on where
//! batch boundaries fall: a crash that changes them changes nothing in the table.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::decode::{Record, Value};
pub use crate::enrich::Provenance;
use crate::spec::{meta, FieldType, TopicSpec};
use crate::FastMap;

/// The records of a batch grouped by key (indices in stream order), keys in order of first
/// appearance.
pub fn group_by_key(records: &[Record]) -> Vec<Vec<usize>> {
    let mut slots: FastMap<&str, usize> = FastMap::with_capacity(records.len());
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (idx, r) in records.iter().enumerate() {
        match slots.get(r.key.as_str()) {
            Some(&g) => groups[g].push(idx),
            None => {
                slots.insert(r.key.as_str(), groups.len());
                groups.push(vec![idx]);
            }
        }
    }
    groups
}

/// What a key's records do to its stored row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The stored row (or its absence) stays.
    Unchanged,
    /// The stored row is deleted.
    Delete,
    /// The record at this index becomes the row.
    Upsert(usize),
}

/// Apply a key's records (`group`, in stream order) to its stored row, whose precombine value
/// is `stored` (`None`: no row). Returns the resolution and how many records lost to the
/// stored row (stale).
pub fn resolve(records: &[Record], group: &[usize], stored: Option<i64>) -> (Resolution, u64) {
    #[derive(Clone, Copy)]
    enum Cur {
        Absent,
        Stored(i64),
        Batch(usize),
    }
    let mut cur = match stored {
        Some(ts) => Cur::Stored(ts),
        None => Cur::Absent,
    };
    let mut stale = 0;
    for &idx in group {
        let r = &records[idx];
        if r.unconditional {
            cur = Cur::Absent;
            continue;
        }
        let newer = match cur {
            Cur::Absent => true,
            Cur::Stored(ts) => {
                let newer = r.precombine >= ts;
                stale += u64::from(!newer);
                newer
            }
            Cur::Batch(j) => r.precombine >= records[j].precombine,
        };
        if newer {
            cur = if r.deleted { Cur::Absent } else { Cur::Batch(idx) };
        }
    }
    let resolution = match (stored, cur) {
        (_, Cur::Batch(i)) => Resolution::Upsert(i),
        (Some(_), Cur::Absent) => Resolution::Delete,
        _ => Resolution::Unchanged,
    };
    (resolution, stale)
}

/// Arrow type of a field.
pub fn arrow_type(kind: &FieldType) -> DataType {
    match kind {
        FieldType::String { .. } | FieldType::Json { .. } => DataType::Utf8,
        FieldType::Long { .. } => DataType::Int64,
        FieldType::Double { .. } => DataType::Float64,
        FieldType::Decimal { precision, scale, .. } => DataType::Decimal128(*precision, *scale),
        FieldType::Timestamp => timestamp_type(),
        FieldType::Boolean => DataType::Boolean,
    }
}

/// UTC microsecond timestamps, Delta's `timestamp`.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The table schema of a topic: its fields, then lakepipe's metadata columns. Key fields are
/// not null (a record without its key is a dead letter), so readers' schemas say so.
pub fn arrow_schema(spec: &TopicSpec) -> SchemaRef {
    let mut fields: Vec<Field> =
        spec.fields.iter().map(|f| Field::new(&f.name, arrow_type(&f.kind), !spec.key.contains(&f.name))).collect();
    fields.push(Field::new(meta::EXTRA, DataType::Utf8, true));
    fields.push(Field::new(meta::INGESTED_AT, timestamp_type(), true));
    fields.push(Field::new(meta::SOURCE, DataType::Utf8, true));
    fields.push(Field::new(meta::TOPIC, DataType::Utf8, true));
    fields.push(Field::new(meta::PARTITION, DataType::Int32, true));
    fields.push(Field::new(meta::OFFSET, DataType::Int64, true));
    fields.push(Field::new(meta::DATE, DataType::Date32, true));
    Arc::new(Schema::new(fields))
}

/// Build the rows of `records` (deletes must already be filtered out) as a batch of `schema`.
pub fn to_record_batch<'r>(
    spec: &TopicSpec,
    schema: &SchemaRef,
    records: impl Iterator<Item = &'r Record> + Clone,
    prov: &Provenance<'_>,
) -> Result<RecordBatch, ArrowError> {
    let n = records.clone().count();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, field) in spec.fields.iter().enumerate() {
        let vals = records.clone().map(|r| &r.values[i]);
        let array: ArrayRef = match &field.kind {
            FieldType::String { .. } | FieldType::Json { .. } => {
                let mut b = StringBuilder::with_capacity(n, n * 16);
                for v in vals {
                    match v {
                        Value::Str(s) | Value::Json(s) => b.append_value(s),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            FieldType::Long { .. } => {
                let mut b = Int64Builder::with_capacity(n);
                vals.for_each(|v| b.append_option(if let Value::Long(x) = v { Some(*x) } else { None }));
                Arc::new(b.finish())
            }
            FieldType::Double { .. } => {
                let mut b = Float64Builder::with_capacity(n);
                vals.for_each(|v| b.append_option(if let Value::Double(x) = v { Some(*x) } else { None }));
                Arc::new(b.finish())
            }
            FieldType::Decimal { precision, scale, .. } => {
                let mut b = Decimal128Builder::with_capacity(n);
                vals.for_each(|v| b.append_option(if let Value::Decimal(x) = v { Some(*x) } else { None }));
                Arc::new(b.finish().with_precision_and_scale(*precision, *scale)?)
            }
            FieldType::Timestamp => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(n);
                vals.for_each(|v| b.append_option(if let Value::Ts(x) = v { Some(*x) } else { None }));
                Arc::new(b.finish().with_timezone("UTC"))
            }
            FieldType::Boolean => {
                let mut b = BooleanBuilder::with_capacity(n);
                vals.for_each(|v| b.append_option(if let Value::Bool(x) = v { Some(*x) } else { None }));
                Arc::new(b.finish())
            }
        };
        columns.push(array);
    }
    let mut extra = StringBuilder::with_capacity(n, 0);
    let mut ingested = TimestampMicrosecondBuilder::with_capacity(n);
    let mut source = StringBuilder::with_capacity(n, n * prov.source.len());
    let mut topic = StringBuilder::with_capacity(n, n * prov.topic.len());
    let mut partition = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut date = Date32Builder::with_capacity(n);
    for r in records {
        extra.append_option(r.extra.as_deref());
        ingested.append_value(prov.ingested_at);
        source.append_value(prov.source);
        topic.append_value(prov.topic);
        partition.append_value(r.partition);
        offset.append_value(r.offset);
        date.append_value(r.date);
    }
    columns.push(Arc::new(extra.finish()));
    columns.push(Arc::new(ingested.finish().with_timezone("UTC")));
    columns.push(Arc::new(source.finish()));
    columns.push(Arc::new(topic.finish()));
    columns.push(Arc::new(partition.finish()));
    columns.push(Arc::new(offset.finish()));
    columns.push(Arc::new(date.finish()));
    RecordBatch::try_new(schema.clone(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(key: &str, pre: i64, deleted: bool, tomb: bool) -> Record {
        Record {
            values: vec![],
            extra: None,
            deleted: deleted || tomb,
            unconditional: tomb,
            key: key.to_string(),
            precombine: if tomb { i64::MAX } else { pre },
            date: 0,
            partition: 0,
            offset: 0,
        }
    }

    /// The stored row (precombine value, and which record wrote it) after a resolution.
    fn after(records: &[Record], stored: Option<(i64, Option<usize>)>, r: Resolution) -> Option<(i64, Option<usize>)> {
        match r {
            Resolution::Unchanged => stored,
            Resolution::Delete => None,
            Resolution::Upsert(i) => Some((records[i].precombine, Some(i))),
        }
    }

    #[test]
    fn later_wins_ties_and_late_records_lose() {
        let rs = vec![rec("a", 5, false, false), rec("a", 5, false, false), rec("a", 3, false, false), rec("b", 1, true, false)];
        let groups = group_by_key(&rs);
        assert_eq!(groups, vec![vec![0, 1, 2], vec![3]]);
        assert_eq!(resolve(&rs, &groups[0], None), (Resolution::Upsert(1), 0));
        assert_eq!(resolve(&rs, &groups[0], Some(4)), (Resolution::Upsert(1), 0), "3 lost to a batch record, not to the stored row");
        assert_eq!(resolve(&rs, &groups[0], Some(9)), (Resolution::Unchanged, 3));
        assert_eq!(resolve(&rs, &groups[1], Some(1)), (Resolution::Delete, 0));
        assert_eq!(resolve(&rs, &groups[1], Some(2)), (Resolution::Unchanged, 1));
        assert_eq!(resolve(&rs, &groups[1], None), (Resolution::Unchanged, 0));
    }

    #[test]
    fn deletes_and_tombstones() {
        // A delete that wins removes the key; an older record after it inserts it again.
        let rs = vec![rec("a", 10, true, false), rec("a", 5, false, false)];
        assert_eq!(resolve(&rs, &[0, 1], Some(3)).0, Resolution::Upsert(1));
        // A tombstone deletes a newer stored row.
        let rs = vec![rec("a", 0, false, true)];
        assert_eq!(resolve(&rs, &[0], Some(99)).0, Resolution::Delete);
        let rs = vec![rec("a", 9, false, false), rec("a", 0, false, true), rec("a", 1, false, false)];
        assert_eq!(resolve(&rs, &[0, 1, 2], Some(50)).0, Resolution::Upsert(2));
    }

    #[test]
    fn builds_batch_with_metadata() {
        let spec = crate::spec::builtin_specs()["log_events"].clone();
        let d = crate::decode::Decoder::new(spec.clone(), 1 << 20).unwrap();
        let r = d
            .decode(None, Some(br#"{"log_id":"l","service":"api","level":"INFO","message":"m","timestamp":86400000}"#), 2, 9)
            .unwrap();
        let schema = arrow_schema(&spec);
        let prov = Provenance { source: "kafka", topic: "log_events", ingested_at: 1 };
        let b = to_record_batch(&spec, &schema, [r].iter(), &prov).unwrap();
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.num_columns(), spec.fields.len() + meta::ALL.len());
        let date = b.column_by_name("date").unwrap().as_any().downcast_ref::<arrow::array::Date32Array>().unwrap();
        assert_eq!(date.value(0), 1);
    }

    proptest! {
        /// Without deletes, the winner is the max by (precombine, position), as in Hudi.
        #[test]
        fn winner_is_latest_by_precombine(items in proptest::collection::vec(0i64..4, 1..30), stored in proptest::option::of(0i64..4)) {
            let rs: Vec<Record> = items.iter().map(|p| rec("k", *p, false, false)).collect();
            let all: Vec<usize> = (0..rs.len()).collect();
            let (res, _) = resolve(&rs, &all, stored);
            let best = (0..rs.len()).max_by_key(|&i| (rs[i].precombine, i)).unwrap();
            match stored {
                Some(s) if s > rs[best].precombine => prop_assert_eq!(res, Resolution::Unchanged),
                _ => prop_assert_eq!(res, Resolution::Upsert(best)),
            }
        }

        /// Where a batch boundary falls changes nothing: resolving a sequence at once equals
        /// resolving a prefix, storing the result, then resolving the rest.
        #[test]
        fn batch_boundaries_do_not_matter(
            items in proptest::collection::vec((0i64..5, 0u8..8), 1..30),
            stored in proptest::option::of(0i64..5),
            cut in 0usize..30,
        ) {
            let rs: Vec<Record> = items.iter().map(|(p, op)| rec("k", *p, *op == 0, *op == 1)).collect();
            let cut = cut.min(rs.len());
            let all: Vec<usize> = (0..rs.len()).collect();
            let stored = stored.map(|ts| (ts, None));
            let ts = |s: Option<(i64, Option<usize>)>| s.map(|(t, _)| t);
            let whole = after(&rs, stored, resolve(&rs, &all, ts(stored)).0);
            let mid = after(&rs, stored, resolve(&rs, &all[..cut], ts(stored)).0);
            let split = after(&rs, mid, resolve(&rs, &all[cut..], ts(mid)).0);
            prop_assert_eq!(whole, split);
        }
    }
}
