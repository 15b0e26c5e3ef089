//! Topic specifications: the record key, the precombine field and the field rules of each topic.
//!
//! Specs are configuration, not code. The five built-in topics are defaults
//! ([`builtin_specs`]); a user adds or overrides topics in the `[specs.NAME]` tables of the
//! TOML config (see `lakepipe.example.toml`), optionally starting from a built-in spec with
//! `extends = "transactions"`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The type and rules of one field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FieldType {
    /// UTF-8 text. `allowed` restricts it to an enumeration, `pattern` to a regular expression
    /// (anchored at both ends).
    String {
        /// The only values accepted, if set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allowed: Option<Vec<String>>,
        /// A regular expression the whole value must match, if set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pattern: Option<String>,
    },
    /// A 64-bit signed integer.
    Long {
        /// Smallest accepted value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<i64>,
        /// Largest accepted value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<i64>,
    },
    /// A 64-bit float.
    Double {
        /// Smallest accepted value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        /// Largest accepted value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// An exact decimal, parsed from the JSON number's text (never through a float).
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point. A value with more digits is rejected, not rounded.
        scale: i8,
        /// Smallest accepted value, as decimal text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<String>,
    },
    /// An RFC 3339 string with an offset or `Z`, or an integer of epoch milliseconds; stored as
    /// a UTC timestamp in microseconds.
    Timestamp,
    /// `true` or `false`.
    Boolean,
    /// Any JSON value (or only objects, with `object_only`), stored as JSON text.
    Json {
        /// Reject values that are not JSON objects.
        #[serde(default)]
        object_only: bool,
    },
}

/// One field of a topic. (Unknown keys are rejected by [`FieldType`], which receives every
/// key but `name` and `required`; serde cannot combine `flatten` with `deny_unknown_fields`.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// The JSON field name, which is also the column name.
    pub name: String,
    /// Whether a record without this field (or with `null`) is rejected.
    #[serde(default)]
    pub required: bool,
    /// The field's type and rules.
    #[serde(flatten)]
    pub kind: FieldType,
}

/// The spec of one topic, as written in the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpecConfig {
    /// Start from this built-in spec; the fields below override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// The record key: one field, or several for a composite key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Vec<String>>,
    /// The ordering field: the record with the greater value wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precombine: Option<String>,
    /// The timestamp field whose UTC date gives the `date` partition (default: `timestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_time: Option<String>,
    /// The fields, in column order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldSpec>>,
}

/// A validated topic spec.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    /// The topic name, which is also the table name.
    pub name: String,
    /// Key field names.
    pub key: Vec<String>,
    /// Precombine field name.
    pub precombine: String,
    /// Field whose UTC date is the partition.
    pub partition_time: String,
    /// Fields in column order.
    pub fields: Vec<FieldSpec>,
}

/// A spec that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// `extends` names no built-in spec.
    #[error("topic `{topic}`: `extends = \"{base}\"` names no built-in topic (known: user_events, transactions, sensor_data, log_events, bulk_upload)")]
    UnknownBase {
        /// Topic being defined.
        topic: String,
        /// The unknown base.
        base: String,
    },
    /// A required part is missing or inconsistent.
    #[error("topic `{topic}`: {message}")]
    Invalid {
        /// Topic being defined.
        topic: String,
        /// What is wrong.
        message: String,
    },
}

impl SpecError {
    /// Spec errors are always the user's and never retryable.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Names of the metadata columns that lakepipe adds to every topic table.
pub mod meta {
    /// Unknown fields, as JSON text.
    pub const EXTRA: &str = "_extra";
    /// When lakepipe ingested the record.
    pub const INGESTED_AT: &str = "_ingested_at";
    /// kafka, iggy or file.
    pub const SOURCE: &str = "_source";
    /// Source topic.
    pub const TOPIC: &str = "_topic";
    /// Source partition.
    pub const PARTITION: &str = "_partition";
    /// Source offset.
    pub const OFFSET: &str = "_offset";
    /// UTC date of the partition-time field; the Delta partition column.
    pub const DATE: &str = "date";
    /// Marks a delete record in the JSON input.
    pub const DELETED: &str = "_deleted";
    /// All metadata columns, in order.
    pub const ALL: [&str; 7] = [EXTRA, INGESTED_AT, SOURCE, TOPIC, PARTITION, OFFSET, DATE];
}

fn f(name: &str, required: bool, kind: FieldType) -> FieldSpec {
    FieldSpec { name: name.to_string(), required, kind }
}

fn string() -> FieldType {
    FieldType::String { allowed: None, pattern: None }
}

fn one_of(values: &[&str]) -> FieldType {
    FieldType::String { allowed: Some(values.iter().map(|s| s.to_string()).collect()), pattern: None }
}

/// The five built-in topic specs.
pub fn builtin_specs() -> BTreeMap<String, TopicSpec> {
    let ts = || f("timestamp", true, FieldType::Timestamp);
    let spec = |name: &str, key: &[&str], fields: Vec<FieldSpec>| TopicSpec {
        name: name.to_string(),
        key: key.iter().map(|s| s.to_string()).collect(),
        precombine: "timestamp".to_string(),
        partition_time: "timestamp".to_string(),
        fields,
    };
    let specs = [
        spec(
            "user_events",
            &["event_id"],
            vec![
                f("event_id", true, string()),
                f("user_id", true, string()),
                f(
                    "event_type",
                    true,
                    one_of(&["click", "page_view", "purchase", "signup", "login", "logout", "search", "add_to_cart"]),
                ),
                f("page", false, string()),
                f("session_id", false, string()),
                f("properties", false, FieldType::Json { object_only: true }),
                ts(),
            ],
        ),
        spec(
            "transactions",
            &["transaction_id"],
            vec![
                f("transaction_id", true, string()),
                f("user_id", true, string()),
                f("amount", true, FieldType::Decimal { precision: 18, scale: 2, min: Some("0".into()) }),
                f("currency", true, FieldType::String { allowed: None, pattern: Some("[A-Z]{3}".into()) }),
                f("status", true, one_of(&["pending", "completed", "failed", "refunded"])),
                f("payment_method", false, string()),
                f("merchant", false, string()),
                ts(),
            ],
        ),
        spec(
            "sensor_data",
            &["sensor_id", "timestamp"],
            vec![
                f("sensor_id", true, string()),
                f("sensor_type", true, one_of(&["temperature", "humidity", "pressure", "vibration"])),
                f("value", true, FieldType::Double { min: None, max: None }),
                f("unit", false, string()),
                f("location", false, string()),
                f("battery_level", false, FieldType::Double { min: Some(0.0), max: Some(100.0) }),
                ts(),
            ],
        ),
        spec(
            "log_events",
            &["log_id"],
            vec![
                f("log_id", true, string()),
                f("service", true, string()),
                f("level", true, one_of(&["DEBUG", "INFO", "WARN", "ERROR", "FATAL"])),
                f("message", true, string()),
                f("trace_id", false, string()),
                f("host", false, string()),
                ts(),
            ],
        ),
        spec(
            "bulk_upload",
            &["record_id"],
            vec![
                f("record_id", true, string()),
                f("source", true, string()),
                f("payload", true, FieldType::Json { object_only: false }),
                ts(),
            ],
        ),
    ];
    specs.into_iter().map(|s| (s.name.clone(), s)).collect()
}

impl TopicSpec {
    /// Build a spec from its config, starting from a built-in one when `extends` is given or the
    /// name is a built-in topic.
    pub fn from_config(name: &str, cfg: &TopicSpecConfig) -> Result<Self, SpecError> {
        let builtins = builtin_specs();
        let base = match &cfg.extends {
            Some(b) => Some(builtins.get(b).cloned().ok_or_else(|| SpecError::UnknownBase {
                topic: name.to_string(),
                base: b.clone(),
            })?),
            None => builtins.get(name).cloned(),
        };
        let invalid = |message: String| SpecError::Invalid { topic: name.to_string(), message };
        let fields = match (&cfg.fields, &base) {
            (Some(f), _) => f.clone(),
            (None, Some(b)) => b.fields.clone(),
            (None, None) => return Err(invalid("no `fields` given and no built-in spec to extend".into())),
        };
        let key = cfg.key.clone().or_else(|| base.as_ref().map(|b| b.key.clone()));
        let key = key.ok_or_else(|| invalid("no `key` given".into()))?;
        let precombine = cfg
            .precombine
            .clone()
            .or_else(|| base.as_ref().map(|b| b.precombine.clone()))
            .ok_or_else(|| invalid("no `precombine` given".into()))?;
        let partition_time = cfg
            .partition_time
            .clone()
            .or_else(|| base.as_ref().map(|b| b.partition_time.clone()))
            .unwrap_or_else(|| "timestamp".into());
        let spec = TopicSpec { name: name.to_string(), key, precombine, partition_time, fields };
        spec.check()?;
        Ok(spec)
    }

    /// Check the spec's internal consistency.
    pub fn check(&self) -> Result<(), SpecError> {
        let invalid = |message: String| SpecError::Invalid { topic: self.name.clone(), message };
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
            return Err(invalid("topic names may hold only letters, digits, `_`, `-` and `.`".into()));
        }
        if self.name == "dead_letters" {
            return Err(invalid("`dead_letters` is reserved for the dead-letter table".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for field in &self.fields {
            if !seen.insert(field.name.as_str()) {
                return Err(invalid(format!("field `{}` is listed twice", field.name)));
            }
            if field.name.starts_with('_') || field.name == meta::DATE {
                return Err(invalid(format!("field `{}` clashes with lakepipe's metadata columns", field.name)));
            }
            if let FieldType::String { pattern: Some(p), .. } = &field.kind {
                regex::Regex::new(p).map_err(|e| invalid(format!("field `{}`: bad pattern: {e}", field.name)))?;
            }
            if let FieldType::Decimal { precision, scale, min } = &field.kind {
                if *precision == 0 || *precision > 38 || *scale < 0 || (*scale as u8) > *precision {
                    return Err(invalid(format!("field `{}`: decimal({precision},{scale}) is not valid", field.name)));
                }
                if let Some(m) = min {
                    crate::decode::parse_decimal(m, *precision, *scale)
                        .map_err(|e| invalid(format!("field `{}`: bad min: {e}", field.name)))?;
                }
            }
        }
        if self.key.is_empty() {
            return Err(invalid("the key needs at least one field".into()));
        }
        for k in &self.key {
            let field = self.field(k).ok_or_else(|| invalid(format!("key field `{k}` is not a field")))?;
            if !field.required {
                return Err(invalid(format!("key field `{k}` must be required")));
            }
            if !matches!(field.kind, FieldType::String { .. } | FieldType::Long { .. } | FieldType::Timestamp) {
                return Err(invalid(format!("key field `{k}` must be a string, long or timestamp")));
            }
        }
        let pre = self.field(&self.precombine).ok_or_else(|| invalid(format!("precombine field `{}` is not a field", self.precombine)))?;
        if !pre.required || !matches!(pre.kind, FieldType::Timestamp | FieldType::Long { .. }) {
            return Err(invalid(format!("precombine field `{}` must be a required timestamp or long", self.precombine)));
        }
        let pt = self
            .field(&self.partition_time)
            .ok_or_else(|| invalid(format!("partition_time field `{}` is not a field", self.partition_time)))?;
        if !pt.required || pt.kind != FieldType::Timestamp {
            return Err(invalid(format!("partition_time field `{}` must be a required timestamp", self.partition_time)));
        }
        Ok(())
    }

    /// The field with this name.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Column index of a field.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_consistent() {
        for spec in builtin_specs().values() {
            spec.check().unwrap();
        }
    }

    #[test]
    fn extends_and_overrides() {
        let cfg: TopicSpecConfig = toml::from_str(
            r#"
            extends = "transactions"
            key = ["transaction_id", "user_id"]
            "#,
        )
        .unwrap();
        let spec = TopicSpec::from_config("orders_eu", &cfg).unwrap();
        assert_eq!(spec.key, vec!["transaction_id", "user_id"]);
        assert_eq!(spec.fields.len(), 8);
    }

    #[test]
    fn custom_topic_from_toml() {
        let cfg: TopicSpecConfig = toml::from_str(
            r#"
            key = ["id"]
            precombine = "ts"
            partition_time = "ts"
            [[fields]]
            name = "id"
            required = true
            type = "string"
            [[fields]]
            name = "ts"
            required = true
            type = "timestamp"
            [[fields]]
            name = "n"
            type = "long"
            min = 0
            "#,
        )
        .unwrap();
        let spec = TopicSpec::from_config("custom", &cfg).unwrap();
        assert_eq!(spec.fields[2].kind, FieldType::Long { min: Some(0), max: None });
    }

    #[test]
    fn rejects_bad_specs() {
        let bad = TopicSpecConfig { extends: Some("nope".into()), ..Default::default() };
        assert!(matches!(TopicSpec::from_config("x", &bad), Err(SpecError::UnknownBase { .. })));
        let bad = TopicSpecConfig {
            extends: Some("user_events".into()),
            key: Some(vec!["page".into()]),
            ..Default::default()
        };
        let err = TopicSpec::from_config("x", &bad).unwrap_err().to_string();
        assert!(err.contains("must be required"), "{err}");
        let unknown: Result<TopicSpecConfig, _> = toml::from_str("keys = [\"a\"]");
        assert!(unknown.is_err());
        let typo: Result<FieldSpec, _> = toml::from_str("name = \"n\"\ntype = \"long\"\nmn = 0");
        assert!(typo.is_err(), "unknown field keys are rejected");
    }
}
