//! Decode and validate: one source message becomes a typed [`Record`] or a [`DecodeError`]
//! that names what is wrong. Nothing here panics on input.
//!
//! The JSON object is parsed once into raw field slices, so numbers keep their exact text:
//! decimals are parsed from that text and never pass through a float.

use std::borrow::Cow;
use std::collections::BTreeMap;

use regex::Regex;
use serde_json::value::RawValue;

use crate::spec::{meta, FieldSpec, FieldType, TopicSpec};

pub mod pool;

/// A validated field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Absent or JSON `null`.
    Null,
    /// Text.
    Str(String),
    /// 64-bit integer.
    Long(i64),
    /// 64-bit float.
    Double(f64),
    /// Decimal, as an unscaled integer at the field's scale.
    Decimal(i128),
    /// UTC timestamp in microseconds since the epoch.
    Ts(i64),
    /// Boolean.
    Bool(bool),
    /// JSON text.
    Json(String),
}

/// A decoded record, ready to be batched.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Values aligned with the spec's fields.
    pub values: Vec<Value>,
    /// Unknown fields, as a JSON object's text.
    pub extra: Option<String>,
    /// A delete (`"_deleted": true` or a tombstone).
    pub deleted: bool,
    /// A tombstone: it deletes whatever is stored, whatever its timestamp.
    pub unconditional: bool,
    /// The record key, encoded by [`encode_key`].
    pub key: String,
    /// The precombine value (microseconds for timestamps).
    pub precombine: i64,
    /// Days since the epoch of the partition-time field (UTC).
    pub date: i32,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

/// Why a message became a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Not valid JSON (or not UTF-8).
    MalformedJson,
    /// Valid JSON, but not an object.
    NotAnObject,
    /// A required field or a key field is absent or null.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A value outside its enumeration.
    InvalidEnum,
    /// A number outside its range, or a decimal that cannot be stored exactly.
    OutOfRange,
    /// A string that does not match its pattern.
    InvalidFormat,
    /// A timestamp that is neither RFC 3339 with an offset nor epoch milliseconds.
    BadTimestamp,
    /// A message larger than the configured limit.
    TooLarge,
    /// A tombstone that cannot be applied (no key, or a composite-key topic).
    BadTombstone,
}

impl ErrorKind {
    /// The stable name stored in `dead_letters.error_kind`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::MalformedJson => "malformed_json",
            ErrorKind::NotAnObject => "not_an_object",
            ErrorKind::MissingField => "missing_field",
            ErrorKind::WrongType => "wrong_type",
            ErrorKind::InvalidEnum => "invalid_enum",
            ErrorKind::OutOfRange => "out_of_range",
            ErrorKind::InvalidFormat => "invalid_format",
            ErrorKind::BadTimestamp => "bad_timestamp",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::BadTombstone => "bad_tombstone",
        }
    }
}

/// A record that failed validation. It becomes a row of `dead_letters`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct DecodeError {
    /// The class of error.
    pub kind: ErrorKind,
    /// A human-readable reason naming the field.
    pub message: String,
}

impl DecodeError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DecodeError { kind, message: message.into() }
    }

    /// Bad records are the user's data, never retryable: they go to `dead_letters`.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Separator between the parts of a composite key.
pub const KEY_SEPARATOR: char = '\u{1f}';

/// Encode one key part the same way for decoded values and stored columns.
pub fn key_part(value: &Value, out: &mut String) {
    use std::fmt::Write;
    match value {
        Value::Str(s) => out.push_str(s),
        Value::Long(v) | Value::Ts(v) => {
            let _ = write!(out, "{v}");
        }
        _ => {}
    }
}

/// Encode a record key from its parts.
pub fn encode_key<'a>(parts: impl IntoIterator<Item = &'a Value>) -> String {
    let mut out = String::new();
    for (i, part) in parts.into_iter().enumerate() {
        if i > 0 {
            out.push(KEY_SEPARATOR);
        }
        key_part(part, &mut out);
    }
    out
}

/// Microseconds in a day.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Days since the epoch of a UTC timestamp in microseconds.
pub fn day_of(micros: i64) -> i32 {
    micros.div_euclid(MICROS_PER_DAY) as i32
}

/// Validates messages of one topic against its spec.
#[derive(Debug, Clone)]
pub struct Decoder {
    spec: TopicSpec,
    patterns: Vec<Option<Regex>>,
    key_idx: Vec<usize>,
    pre_idx: usize,
    time_idx: usize,
    max_message_bytes: usize,
}

/// The fields of a JSON object in document order, keys borrowed from the payload unless they
/// hold escapes: no map and no allocation per field.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// Remove a field (every duplicate), returning its last value.
    fn take(&mut self, name: &str) -> Option<&'a RawValue> {
        let mut found = None;
        while let Some(i) = self.0.iter().rposition(|(k, _)| k == name) {
            let (_, v) = self.0.remove(i);
            found.get_or_insert(v);
        }
        found
    }
}

impl<'de> serde::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(Key(k)) = map.next_key()? {
                    fields.push((k, map.next_value()?));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(Object)
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl<'de> serde::de::Visitor<'de> for Name {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Name)
    }
}

impl Decoder {
    /// A decoder for a checked spec.
    pub fn new(spec: TopicSpec, max_message_bytes: usize) -> Result<Self, crate::spec::SpecError> {
        spec.check()?;
        let patterns = spec
            .fields
            .iter()
            .map(|f| match &f.kind {
                // Checked by `spec.check()`, so compiling again cannot fail; fall back to no
                // pattern rather than panic.
                FieldType::String { pattern: Some(p), .. } => Regex::new(&format!("^(?:{p})$")).ok(),
                _ => None,
            })
            .collect();
        let idx = |n: &str| spec.index_of(n).unwrap_or(0);
        let key_idx = spec.key.iter().map(|k| idx(k)).collect();
        let pre_idx = idx(&spec.precombine);
        let time_idx = idx(&spec.partition_time);
        Ok(Decoder { patterns, key_idx, pre_idx, time_idx, max_message_bytes, spec })
    }

    /// The spec this decoder validates against.
    pub fn spec(&self) -> &TopicSpec {
        &self.spec
    }

    /// Decode one message. `payload == None` is a tombstone.
    pub fn decode(&self, key: Option<&[u8]>, payload: Option<&[u8]>, partition: i32, offset: i64) -> Result<Record, DecodeError> {
        let Some(payload) = payload else {
            return self.tombstone(key, partition, offset);
        };
        if payload.len() > self.max_message_bytes {
            return Err(DecodeError::new(
                ErrorKind::TooLarge,
                format!("message is {} bytes; the limit is {} (max_message_bytes)", payload.len(), self.max_message_bytes),
            ));
        }
        let mut map: Fields<'_> = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                return Err(match serde_json::from_slice::<&RawValue>(payload) {
                    Ok(raw) => DecodeError::new(ErrorKind::NotAnObject, format!("expected a JSON object, got {}", json_kind(raw.get()))),
                    Err(_) => DecodeError::new(ErrorKind::MalformedJson, format!("malformed JSON: {e}")),
                })
            }
        };
        let deleted = match map.take(meta::DELETED) {
            None => false,
            Some(raw) => match raw.get() {
                "true" => true,
                "false" | "null" => false,
                other => {
                    return Err(DecodeError::new(
                        ErrorKind::WrongType,
                        format!("field `{}`: expected a boolean, got {}", meta::DELETED, json_kind(other)),
                    ))
                }
            },
        };
        let mut values = Vec::with_capacity(self.spec.fields.len());
        for (i, field) in self.spec.fields.iter().enumerate() {
            let raw = map.take(field.name.as_str());
            let needed = if deleted {
                self.key_idx.contains(&i) || i == self.pre_idx || i == self.time_idx
            } else {
                field.required
            };
            let value = match raw {
                None => Value::Null,
                Some(r) if r.get() == "null" => Value::Null,
                Some(r) => self.value(i, field, r.get())?,
            };
            if needed && value == Value::Null {
                return Err(DecodeError::new(ErrorKind::MissingField, format!("required field `{}` is missing or null", field.name)));
            }
            values.push(value);
        }
        let extra = if map.0.is_empty() {
            None
        } else {
            // Unknown fields, by name (the last of duplicates wins, as JSON parsers do).
            let mut rest: BTreeMap<&str, &RawValue> = BTreeMap::new();
            for (k, v) in &map.0 {
                rest.insert(k.as_ref(), v);
            }
            let mut out = String::from("{");
            for (i, (k, v)) in rest.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).unwrap_or_else(|_| "\"\"".into()));
                out.push(':');
                out.push_str(v.get());
            }
            out.push('}');
            Some(out)
        };
        if self.key_idx.len() > 1 {
            for &i in &self.key_idx {
                if let Value::Str(s) = &values[i] {
                    if s.contains(KEY_SEPARATOR) {
                        return Err(DecodeError::new(
                            ErrorKind::InvalidFormat,
                            format!("key field `{}` contains the control character U+001F, which composite keys reserve", self.spec.fields[i].name),
                        ));
                    }
                }
            }
        }
        let key = encode_key(self.key_idx.iter().map(|&i| &values[i]));
        let precombine = scalar_i64(&values[self.pre_idx]);
        let date = day_of(scalar_i64(&values[self.time_idx]));
        Ok(Record { values, extra, deleted, unconditional: false, key, precombine, date, partition, offset })
    }

    fn tombstone(&self, key: Option<&[u8]>, partition: i32, offset: i64) -> Result<Record, DecodeError> {
        if self.key_idx.len() != 1 {
            return Err(DecodeError::new(
                ErrorKind::BadTombstone,
                format!("tombstones need a single-field key; topic `{}` is keyed by ({})", self.spec.name, self.spec.key.join(", ")),
            ));
        }
        let Some(key) = key else {
            return Err(DecodeError::new(ErrorKind::BadTombstone, "tombstone (null value) without a message key"));
        };
        let text = std::str::from_utf8(key)
            .map_err(|_| DecodeError::new(ErrorKind::BadTombstone, "tombstone message key is not UTF-8"))?;
        let ki = self.key_idx[0];
        let field = &self.spec.fields[ki];
        let value = match field.kind {
            FieldType::String { .. } => Value::Str(text.to_string()),
            // Parse the key as the JSON token it would be in a record.
            _ => {
                let token = if matches!(field.kind, FieldType::Timestamp) && text.parse::<i64>().is_err() {
                    serde_json::to_string(text).unwrap_or_default()
                } else {
                    text.to_string()
                };
                self.value(ki, field, &token)?
            }
        };
        let mut values = vec![Value::Null; self.spec.fields.len()];
        values[ki] = value;
        let key = encode_key(std::iter::once(&values[ki]));
        Ok(Record { values, extra: None, deleted: true, unconditional: true, key, precombine: i64::MAX, date: 0, partition, offset })
    }

    fn value(&self, i: usize, field: &FieldSpec, raw: &str) -> Result<Value, DecodeError> {
        let wrong = |expected: &str| {
            DecodeError::new(ErrorKind::WrongType, format!("field `{}`: expected {expected}, got {}", field.name, json_kind(raw)))
        };
        match &field.kind {
            FieldType::String { allowed, .. } => {
                let s: String = match plain_string(raw) {
                    Some(inner) => inner.to_string(),
                    None => serde_json::from_str(raw).map_err(|_| wrong("a string"))?,
                };
                if let Some(allowed) = allowed {
                    if !allowed.iter().any(|a| a == &s) {
                        return Err(DecodeError::new(
                            ErrorKind::InvalidEnum,
                            format!("field `{}`: {:?} is not one of {}", field.name, s, allowed.join(", ")),
                        ));
                    }
                }
                if let Some(re) = &self.patterns[i] {
                    if !re.is_match(&s) {
                        let pattern = match &field.kind {
                            FieldType::String { pattern: Some(p), .. } => p.as_str(),
                            _ => "",
                        };
                        return Err(DecodeError::new(
                            ErrorKind::InvalidFormat,
                            format!("field `{}`: {:?} does not match {pattern}", field.name, s),
                        ));
                    }
                }
                Ok(Value::Str(s))
            }
            FieldType::Long { min, max } => {
                let v: i64 = serde_json::from_str(raw).map_err(|_| {
                    if is_json_number(raw) {
                        DecodeError::new(ErrorKind::WrongType, format!("field `{}`: expected an integer, got {raw}", field.name))
                    } else {
                        wrong("an integer")
                    }
                })?;
                check_range(field, v as f64, min.map(|m| m as f64), max.map(|m| m as f64), raw)?;
                Ok(Value::Long(v))
            }
            FieldType::Double { min, max } => {
                if !is_json_number(raw) {
                    return Err(wrong("a number"));
                }
                let v: f64 = serde_json::from_str(raw).map_err(|_| wrong("a number"))?;
                if !v.is_finite() {
                    return Err(DecodeError::new(ErrorKind::OutOfRange, format!("field `{}`: {raw} is not finite", field.name)));
                }
                check_range(field, v, *min, *max, raw)?;
                Ok(Value::Double(v))
            }
            FieldType::Decimal { precision, scale, min } => {
                let text: Cow<'_, str> = if is_json_number(raw) {
                    Cow::Borrowed(raw)
                } else {
                    Cow::Owned(serde_json::from_str::<String>(raw).map_err(|_| wrong("a decimal number"))?)
                };
                let v = parse_decimal(&text, *precision, *scale).map_err(|e| {
                    let kind = if e.contains("digits") { ErrorKind::OutOfRange } else { ErrorKind::WrongType };
                    DecodeError::new(kind, format!("field `{}`: {e}", field.name))
                })?;
                if let Some(min) = min {
                    let m = parse_decimal(min, *precision, *scale).unwrap_or(i128::MIN);
                    if v < m {
                        return Err(DecodeError::new(ErrorKind::OutOfRange, format!("field `{}`: {text} is below the minimum {min}", field.name)));
                    }
                }
                Ok(Value::Decimal(v))
            }
            FieldType::Timestamp => parse_timestamp(raw).map(Value::Ts).map_err(|m| {
                DecodeError::new(ErrorKind::BadTimestamp, format!("field `{}`: {m}", field.name))
            }),
            FieldType::Boolean => match raw {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(wrong("a boolean")),
            },
            FieldType::Json { object_only } => {
                if *object_only && !raw.trim_start().starts_with('{') {
                    return Err(wrong("a JSON object"));
                }
                // Re-serialise to compact, canonical text.
                let v: serde_json::Value = serde_json::from_str(raw).map_err(|_| wrong("JSON"))?;
                Ok(Value::Json(v.to_string()))
            }
        }
    }
}

fn scalar_i64(v: &Value) -> i64 {
    match v {
        Value::Long(x) | Value::Ts(x) => *x,
        _ => 0,
    }
}

fn check_range(field: &FieldSpec, v: f64, min: Option<f64>, max: Option<f64>, raw: &str) -> Result<(), DecodeError> {
    let below = min.is_some_and(|m| v < m);
    let above = max.is_some_and(|m| v > m);
    if below || above {
        let range = format!(
            "{}..={}",
            min.map(|m| m.to_string()).unwrap_or_default(),
            max.map(|m| m.to_string()).unwrap_or_default()
        );
        return Err(DecodeError::new(ErrorKind::OutOfRange, format!("field `{}`: {raw} is outside {range}", field.name)));
    }
    Ok(())
}

/// The text of a JSON string token without escapes: exactly what it decodes to (the token was
/// validated when the object was parsed). `None` for other tokens and for strings with escapes.
fn plain_string(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

fn is_json_number(raw: &str) -> bool {
    raw.starts_with(|c: char| c == '-' || c.is_ascii_digit())
}

/// Name the JSON type of a raw value, for error messages.
fn json_kind(raw: &str) -> &'static str {
    match raw.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't') | Some(b'f') => "a boolean",
        Some(b'n') => "null",
        Some(_) => "a number",
        None => "nothing",
    }
}

/// Parse decimal text (`-12.340`, `1e3`) exactly into an unscaled integer at `scale`.
/// Rejects more fractional digits than the scale, and more than `precision` digits in all.
pub fn parse_decimal(text: &str, precision: u8, scale: i8) -> Result<i128, String> {
    let t = text.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(p) => (&body[..p], body[p + 1..].parse::<i32>().ok().filter(|e| e.unsigned_abs() <= 400).ok_or_else(|| format!("{text:?} is not a decimal number within range"))?),
        None => (body, 0),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("{text:?} is not a decimal number"));
    }
    let mut digits: String = format!("{int_part}{frac_part}");
    if int_part.len() + frac_part.len() > 4096 {
        return Err(format!("{text} has more than {precision} digits"));
    }
    let mut frac_len = frac_part.len() as i32 - exp;
    // Drop trailing zeros of the fraction so 1.50 fits scale 1.
    while frac_len > scale as i32 && digits.ends_with('0') {
        digits.pop();
        frac_len -= 1;
    }
    if frac_len > scale as i32 {
        return Err(format!("{text} has more than {scale} digits after the point and cannot be stored exactly"));
    }
    let pad = (scale as i32 - frac_len) as usize;
    let digits = digits.trim_start_matches('0');
    if digits.len() + pad > precision as usize {
        return Err(format!("{text} has more than {precision} digits"));
    }
    let mut v: i128 = 0;
    for b in digits.bytes().chain(std::iter::repeat_n(b'0', pad)) {
        v = v.checked_mul(10).and_then(|v| v.checked_add((b - b'0') as i128)).ok_or_else(|| format!("{text} has more than {precision} digits"))?;
    }
    Ok(if neg { -v } else { v })
}

/// The UTC timestamps, in microseconds, that Delta, Spark and DuckDB can all represent:
/// 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z.
pub const TIMESTAMP_MICROS_RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800_000_000..=253_402_300_799_999_999;

/// Parse a JSON timestamp token: an RFC 3339 string with an offset, or integer epoch millis.
/// Either way the instant must lie in [`TIMESTAMP_MICROS_RANGE`].
pub fn parse_timestamp(raw: &str) -> Result<i64, String> {
    if raw.starts_with('"') {
        let s: String = serde_json::from_str(raw).map_err(|_| format!("{raw} is not a valid string"))?;
        let dt = chrono::DateTime::parse_from_rfc3339(&s)
            .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp with an offset or Z ({e})"))?;
        // The offset can carry a local time just inside the range out of it in UTC
        // ("9999-12-31T23:00:00-05:00" is in year 10000).
        let micros = dt.timestamp_micros();
        if !TIMESTAMP_MICROS_RANGE.contains(&micros) {
            return Err(format!("{s:?} is outside years 1..9999 in UTC"));
        }
        return Ok(micros);
    }
    if is_json_number(raw) {
        let millis: i64 = raw
            .parse()
            .map_err(|_| format!("{raw} is not an integer of epoch milliseconds"))?;
        if !TIMESTAMP_MICROS_RANGE.contains(&millis.saturating_mul(1000)) {
            return Err(format!("{raw} epoch milliseconds is outside years 1..9999"));
        }
        return Ok(millis * 1000);
    }
    Err(format!("expected an RFC 3339 string or epoch milliseconds, got {}", json_kind(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::builtin_specs;
    use proptest::prelude::*;

    fn decoder(topic: &str) -> Decoder {
        Decoder::new(builtin_specs()[topic].clone(), 1 << 20).unwrap()
    }

    fn kind(topic: &str, payload: &str) -> ErrorKind {
        decoder(topic).decode(None, Some(payload.as_bytes()), 0, 0).unwrap_err().kind
    }

    #[test]
    fn valid_transaction_is_exact() {
        let d = decoder("transactions");
        let r = d
            .decode(None, Some(br#"{"transaction_id":"t1","user_id":"u","amount":1234567890123456.78,"currency":"EUR","status":"completed","timestamp":"2024-01-02T03:04:05.123456+01:00","zz":[1, 2]}"#), 3, 7)
            .unwrap();
        // 18 digits: more than a float holds exactly (decimal(18,2), the built-in amount).
        assert_eq!(r.values[2], Value::Decimal(123456789012345678));
        assert_eq!(r.values[7], Value::Ts(1704161045123456));
        assert_eq!(r.extra.as_deref(), Some(r#"{"zz":[1, 2]}"#));
        assert_eq!(r.key, "t1");
        assert_eq!(r.date, 19724);
        assert_eq!((r.partition, r.offset), (3, 7));
    }

    #[test]
    fn epoch_millis_and_composite_key() {
        let d = decoder("sensor_data");
        let r = d
            .decode(None, Some(br#"{"sensor_id":"s1","sensor_type":"humidity","value":3,"timestamp":1700000000000}"#), 0, 0)
            .unwrap();
        assert_eq!(r.key, format!("s1{KEY_SEPARATOR}1700000000000000"));
        assert_eq!(r.values[2], Value::Double(3.0));
    }

    #[test]
    fn every_error_kind() {
        assert_eq!(kind("user_events", "{not json"), ErrorKind::MalformedJson);
        assert_eq!(kind("user_events", "[1,2]"), ErrorKind::NotAnObject);
        assert_eq!(kind("user_events", r#"{"event_id":"e","user_id":"u","event_type":"click"}"#), ErrorKind::MissingField);
        assert_eq!(kind("user_events", r#"{"event_id":5,"user_id":"u","event_type":"click","timestamp":1}"#), ErrorKind::WrongType);
        assert_eq!(kind("user_events", r#"{"event_id":"e","user_id":"u","event_type":"dance","timestamp":1}"#), ErrorKind::InvalidEnum);
        assert_eq!(kind("user_events", r#"{"event_id":"e","user_id":"u","event_type":"click","timestamp":"yesterday"}"#), ErrorKind::BadTimestamp);
        assert_eq!(kind("user_events", r#"{"event_id":"e","user_id":"u","event_type":"click","timestamp":"2024-01-01T00:00:00"}"#), ErrorKind::BadTimestamp);
        assert_eq!(kind("user_events", r#"{"event_id":"e","user_id":"u","event_type":"click","properties":[1],"timestamp":1}"#), ErrorKind::WrongType);
        assert_eq!(kind("transactions", r#"{"transaction_id":"t","user_id":"u","amount":-1,"currency":"EUR","status":"failed","timestamp":1}"#), ErrorKind::OutOfRange);
        assert_eq!(kind("transactions", r#"{"transaction_id":"t","user_id":"u","amount":1.0000000001,"currency":"EUR","status":"failed","timestamp":1}"#), ErrorKind::OutOfRange);
        assert_eq!(kind("transactions", r#"{"transaction_id":"t","user_id":"u","amount":1,"currency":"eur","status":"failed","timestamp":1}"#), ErrorKind::InvalidFormat);
        assert_eq!(kind("sensor_data", r#"{"sensor_id":"s","sensor_type":"humidity","value":1,"battery_level":101,"timestamp":1}"#), ErrorKind::OutOfRange);
        assert_eq!(kind("user_events", "\u{ff}"), ErrorKind::MalformedJson);
        let small = Decoder::new(builtin_specs()["bulk_upload"].clone(), 10).unwrap();
        assert_eq!(small.decode(None, Some(&[b' '; 11]), 0, 0).unwrap_err().kind, ErrorKind::TooLarge);
        let sensors = decoder("sensor_data");
        assert_eq!(sensors.decode(Some(b"k"), None, 0, 0).unwrap_err().kind, ErrorKind::BadTombstone);
        assert_eq!(decoder("log_events").decode(None, None, 0, 0).unwrap_err().kind, ErrorKind::BadTombstone);
    }

    #[test]
    fn timestamps_outside_years_1_to_9999_in_utc_are_refused() {
        for ok in ["\"9999-12-31T23:59:59.999999Z\"", "\"0001-01-01T00:00:00Z\"", "\"0001-01-01T00:30:00+00:30\"", "253402300799999", "-62135596800000"] {
            assert!(parse_timestamp(ok).is_ok(), "{ok}");
        }
        // In range as local times, out of range once the offset is applied.
        for bad in ["\"9999-12-31T23:00:00-05:00\"", "\"0001-01-01T00:00:00+01:00\"", "253402300800000", "-62135596800001", "9223372036854775807"] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
        let late = r#"{"event_id":"e","user_id":"u","event_type":"click","timestamp":"9999-12-31T23:00:00-05:00"}"#;
        assert_eq!(kind("user_events", late), ErrorKind::BadTimestamp);
    }

    #[test]
    fn deletes_need_only_key_and_time() {
        let d = decoder("transactions");
        let r = d.decode(None, Some(br#"{"transaction_id":"t","timestamp":5,"_deleted":true}"#), 0, 0).unwrap();
        assert!(r.deleted && !r.unconditional);
        let t = d.decode(Some(b"t"), None, 0, 1).unwrap();
        assert!(t.deleted && t.unconditional);
        assert_eq!(t.key, "t");
    }

    #[test]
    fn decimal_parsing() {
        assert_eq!(parse_decimal("1.50", 5, 1), Ok(15));
        assert_eq!(parse_decimal("1e2", 5, 2), Ok(10000));
        assert_eq!(parse_decimal("-0.01", 5, 2), Ok(-1));
        assert!(parse_decimal("123456", 5, 0).is_err());
        assert!(parse_decimal("1.234", 10, 2).is_err());
        assert!(parse_decimal("abc", 10, 2).is_err());
        assert!(parse_decimal(".", 10, 2).is_err());
        assert!(parse_decimal("1e-2147483648", 10, 2).is_err());
        assert!(parse_decimal("1e2147483647", 10, 2).is_err());
        assert!(parse_decimal("1e30", 38, 2).is_ok());
    }

    proptest! {
        /// The fast path for strings without escapes reads exactly what a JSON parser reads.
        #[test]
        fn plain_strings_read_as_json_does(text in any::<String>()) {
            let raw = serde_json::to_string(&text).unwrap();
            let parsed: String = serde_json::from_str(&raw).unwrap();
            match plain_string(&raw) {
                Some(fast) => prop_assert_eq!(fast, parsed.as_str()),
                None => prop_assert!(raw.contains('\\')),
            }
        }
    }

    proptest! {
        #[test]
        fn decimal_round_trips(unscaled in -(10i128.pow(20))..10i128.pow(20), scale in 0i8..9) {
            let s = scale as u32;
            let int = unscaled.abs() / 10i128.pow(s);
            let frac = unscaled.abs() % 10i128.pow(s);
            let sign = if unscaled < 0 { "-" } else { "" };
            let text = if s == 0 { format!("{sign}{int}") } else { format!("{sign}{int}.{frac:0width$}", width = s as usize) };
            prop_assert_eq!(parse_decimal(&text, 38, scale), Ok(unscaled));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let d = decoder("user_events");
            let _ = d.decode(None, Some(&bytes), 0, 0);
        }

        #[test]
        fn valid_user_events_decode(id in "[a-z0-9-]{1,20}", user in "[a-z]{1,8}", ms in 0i64..4_000_000_000_000, extra in proptest::option::of("[a-z]{1,5}")) {
            let mut obj = serde_json::json!({"event_id": id, "user_id": user, "event_type": "login", "timestamp": ms});
            if let Some(e) = &extra { obj["x_".to_string() + e] = serde_json::json!(1); }
            let d = decoder("user_events");
            let r = d.decode(None, Some(obj.to_string().as_bytes()), 0, 0).unwrap();
            prop_assert_eq!(&r.key, &id);
            prop_assert_eq!(r.precombine, ms * 1000);
            prop_assert_eq!(r.date as i64, ms / 86_400_000);
            prop_assert_eq!(r.extra.is_some(), extra.is_some());
        }
    }
}
