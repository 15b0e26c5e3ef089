//! Batch: the precombine of one micro-batch, and its conversion to an Arrow `RecordBatch`.
//!
//! [`precombine`] keeps one winner per key: the greater precombine value wins, and on a tie the
//! record later in the stream wins. A tombstone wins over everything before it and makes its key
//! *unconditional*: what follows it in the batch replaces the stored row whatever the stored
//! row's precombine value, because the tombstone already deleted that row.

use std::collections::HashMap;
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

/// The winner for one key in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Winner {
    /// Index of the winning record in the batch.
    pub idx: usize,
    /// Apply whatever the stored row's precombine value (a tombstone came first).
    pub unconditional: bool,
}

/// Keep the latest record per key, in stream order of first appearance.
pub fn precombine(records: &[Record]) -> Vec<Winner> {
    let mut slots: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    let mut winners: Vec<Winner> = Vec::with_capacity(records.len());
    for (idx, r) in records.iter().enumerate() {
        match slots.get(r.key.as_str()) {
            None => {
                slots.insert(r.key.as_str(), winners.len());
                winners.push(Winner { idx, unconditional: r.unconditional });
            }
            Some(&slot) => {
                let cur = winners[slot];
                let cur_rec = &records[cur.idx];
                let replace = r.unconditional || cur_rec.unconditional || r.precombine >= cur_rec.precombine;
                if replace {
                    winners[slot] = Winner { idx, unconditional: cur.unconditional || r.unconditional };
                }
            }
        }
    }
    winners
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

/// The table schema of a topic: its fields, then lakepipe's metadata columns.
pub fn arrow_schema(spec: &TopicSpec) -> SchemaRef {
    let mut fields: Vec<Field> = spec.fields.iter().map(|f| Field::new(&f.name, arrow_type(&f.kind), true)).collect();
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

    #[test]
    fn later_wins_ties_and_late_records_lose() {
        let rs = vec![rec("a", 5, false, false), rec("a", 5, false, false), rec("a", 3, false, false), rec("b", 1, true, false)];
        let w = precombine(&rs);
        assert_eq!(w, vec![Winner { idx: 1, unconditional: false }, Winner { idx: 3, unconditional: false }]);
    }

    #[test]
    fn tombstone_then_insert() {
        let rs = vec![rec("a", 9, false, false), rec("a", 0, false, true), rec("a", 1, false, false), rec("a", 0, false, false)];
        let w = precombine(&rs);
        assert_eq!(w, vec![Winner { idx: 2, unconditional: true }]);
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
        /// Against a model without tombstones: the winner per key is the max by (precombine, position).
        #[test]
        fn precombine_matches_model(items in proptest::collection::vec((0u8..5, 0i64..4, any::<bool>()), 0..60)) {
            let rs: Vec<Record> = items.iter().map(|(k, p, d)| rec(&k.to_string(), *p, *d, false)).collect();
            let got = precombine(&rs);
            let mut model: HashMap<String, (i64, usize)> = HashMap::new();
            for (i, r) in rs.iter().enumerate() {
                let e = model.entry(r.key.clone()).or_insert((r.precombine, i));
                if (r.precombine, i) >= *e { *e = (r.precombine, i); }
            }
            prop_assert_eq!(got.len(), model.len());
            for w in &got {
                prop_assert_eq!(model[&rs[w.idx].key].1, w.idx);
                prop_assert!(!w.unconditional);
            }
            let mut firsts: Vec<usize> = got.iter().map(|w| rs.iter().position(|r| r.key == rs[w.idx].key).unwrap()).collect();
            let sorted = { let mut s = firsts.clone(); s.sort(); s };
            prop_assert_eq!(std::mem::take(&mut firsts), sorted);
        }

        /// With tombstones: the winner is the last tombstone's successor chain, per a sequential model.
        #[test]
        fn precombine_matches_sequential_model(items in proptest::collection::vec((0u8..3, 0i64..4, 0u8..6), 0..60)) {
            let rs: Vec<Record> = items.iter().map(|(k, p, t)| rec(&k.to_string(), *p, false, *t == 0)).collect();
            // Model: apply each record in order to a per-key state of (winner, unconditional).
            let mut model: HashMap<String, (usize, bool)> = HashMap::new();
            for (i, r) in rs.iter().enumerate() {
                match model.get(&r.key).copied() {
                    None => { model.insert(r.key.clone(), (i, r.unconditional)); }
                    Some((w, u)) => {
                        if r.unconditional { model.insert(r.key.clone(), (i, true)); }
                        else if rs[w].unconditional || r.precombine >= rs[w].precombine { model.insert(r.key.clone(), (i, u)); }
                    }
                }
            }
            let got = precombine(&rs);
            prop_assert_eq!(got.len(), model.len());
            for w in got {
                prop_assert_eq!(model[&rs[w.idx].key], (w.idx, w.unconditional));
            }
        }
    }
}
