//! Realistic demo data for the built-in topics: skewed keys, event times spread across days,
//! and a configurable share of updates, late versions, deletes and invalid records.
//! Messages are keyed by record key, so one key always lands on one partition.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Built-in topic name (its shape is used).
    pub shape: String,
    /// Number of messages.
    pub count: usize,
    /// Share of messages that update an earlier key with a newer timestamp.
    pub update_ratio: f64,
    /// Share that re-send an earlier key with an older timestamp (must lose).
    pub late_ratio: f64,
    /// Share that delete an earlier key.
    pub delete_ratio: f64,
    /// Share that are invalid (each kind of bad record in turn).
    pub invalid_ratio: f64,
    /// Event times spread over this many days, ending now.
    pub days: u32,
    /// Random seed, for repeatable data.
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            shape: "transactions".into(),
            count: 1000,
            update_ratio: 0.2,
            late_ratio: 0.05,
            delete_ratio: 0.02,
            invalid_ratio: 0.02,
            days: 3,
            seed: 42,
        }
    }
}

/// A generated message: key bytes and payload bytes.
pub type Message = (Option<Vec<u8>>, Option<Vec<u8>>);

struct Known {
    key: String,
    ts_ms: i64,
    body: Json,
}

/// Generate messages in memory, in order.
pub fn generate(opts: &GenerateOptions, now_ms: i64) -> Result<Vec<Message>, String> {
    if !crate::spec::builtin_specs().contains_key(&opts.shape) {
        return Err(format!(
            "no generator for `{}`: give --shape, one of user_events, transactions, sensor_data, log_events, bulk_upload (a topic whose spec extends one takes its shape)",
            opts.shape
        ));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let span_ms = opts.days.max(1) as i64 * 86_400_000;
    let mut known: Vec<Known> = Vec::new();
    let mut out = Vec::with_capacity(opts.count);
    let mut invalid_turn = 0usize;
    let by_time = keyed_by_time(&opts.shape);
    for i in 0..opts.count {
        let roll: f64 = rng.gen();
        let pick = |rng: &mut StdRng, known: &Vec<Known>| -> Option<usize> {
            if known.is_empty() {
                return None;
            }
            // Skew: most changes go to recent keys.
            let n = known.len();
            let back = ((rng.gen::<f64>().powi(3)) * n as f64) as usize;
            Some(n - 1 - back.min(n - 1))
        };
        let mut t = opts.invalid_ratio;
        if roll < t {
            out.push(invalid(&opts.shape, invalid_turn, i, now_ms));
            invalid_turn += 1;
            continue;
        }
        t += opts.delete_ratio;
        if roll < t {
            if let Some(k) = pick(&mut rng, &known) {
                let entry = known.swap_remove(k);
                let ts = if by_time { entry.ts_ms } else { entry.ts_ms + rng.gen_range(1..60_000) };
                let mut body = key_fields(&opts.shape, &entry.body);
                body["timestamp"] = json!(ts);
                body["_deleted"] = json!(true);
                out.push((Some(entry.key.into_bytes()), Some(body.to_string().into_bytes())));
                continue;
            }
        }
        t += opts.update_ratio;
        if roll < t {
            if let Some(k) = pick(&mut rng, &known) {
                let ts = if by_time { known[k].ts_ms } else { known[k].ts_ms + rng.gen_range(1..3_600_000) };
                let body = mutate(&opts.shape, &known[k].body, ts, &mut rng);
                known[k].ts_ms = ts;
                known[k].body = body.clone();
                out.push((Some(known[k].key.clone().into_bytes()), Some(body.to_string().into_bytes())));
                continue;
            }
        }
        t += opts.late_ratio;
        if roll < t && !by_time {
            if let Some(k) = pick(&mut rng, &known) {
                let ts = known[k].ts_ms - rng.gen_range(1..3_600_000);
                let body = mutate(&opts.shape, &known[k].body, ts, &mut rng);
                out.push((Some(known[k].key.clone().into_bytes()), Some(body.to_string().into_bytes())));
                continue;
            }
        }
        let ts = now_ms - rng.gen_range(0..span_ms);
        let (key, body) = fresh(&opts.shape, i, ts, &mut rng);
        out.push((Some(key.clone().into_bytes()), Some(body.to_string().into_bytes())));
        known.push(Known { key, ts_ms: ts, body });
    }
    Ok(out)
}

/// Whether the event time is part of the key (an update must then keep it).
fn keyed_by_time(shape: &str) -> bool {
    crate::spec::builtin_specs()[shape].key.iter().any(|k| k == "timestamp")
}

fn key_fields(shape: &str, body: &Json) -> Json {
    let spec = &crate::spec::builtin_specs()[shape];
    let mut out = json!({});
    for k in &spec.key {
        out[k] = body[k].clone();
    }
    out
}

fn fresh(shape: &str, i: usize, ts: i64, rng: &mut StdRng) -> (String, Json) {
    let users = 200;
    let user = format!("user_{:04}", (rng.gen::<f64>().powi(2) * users as f64) as u32);
    match shape {
        "user_events" => {
            let id = format!("evt_{i:08}_{:04x}", rng.gen::<u16>());
            let types = ["click", "page_view", "purchase", "signup", "login", "logout", "search", "add_to_cart"];
            let pages = ["/", "/home", "/products", "/cart", "/checkout", "/search", "/account"];
            let body = json!({
                "event_id": id, "user_id": user, "event_type": types.choose(rng).copied().unwrap_or("click"),
                "page": pages.choose(rng).copied().unwrap_or("/"), "session_id": format!("sess_{:06}", rng.gen_range(0..5000)),
                "properties": {"browser": one(rng, &["chrome", "firefox", "safari"]), "duration_ms": rng.gen_range(10..20_000)},
                "timestamp": ts,
            });
            (id, body)
        }
        "transactions" => {
            let id = format!("txn_{i:08}_{:04x}", rng.gen::<u16>());
            let cents: u64 = (rng.gen::<f64>().powi(3) * 500_000.0) as u64 + 50;
            let body = json!({
                "transaction_id": id, "user_id": user,
                "amount": serde_json::Number::from_f64(cents as f64 / 100.0).map(Json::Number).unwrap_or(json!(1)),
                "currency": one(rng, &["USD", "EUR", "GBP", "JPY"]),
                "status": one(rng, &["pending", "completed", "completed", "completed", "failed", "refunded"]),
                "payment_method": one(rng, &["card", "paypal", "bank_transfer", "wallet"]),
                "merchant": format!("merchant_{:03}", rng.gen_range(0..120)),
                "timestamp": chrono::DateTime::from_timestamp_millis(ts).map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            });
            (id, body)
        }
        "sensor_data" => {
            let sensor = format!("sensor_{:03}", rng.gen_range(0..100));
            let (kind, unit, base, spread) = [("temperature", "C", 21.0, 0.25), ("humidity", "%", 45.0, 0.3), ("pressure", "hPa", 1013.0, 0.015), ("vibration", "mm/s", 2.0, 0.5)]
                .choose(rng)
                .copied()
                .unwrap_or(("temperature", "C", 21.0, 0.25));
            // Mostly near the type's normal level; 3% are spikes far outside it.
            let value = base * (1.0 + rng.gen_range(-spread..spread)) * if rng.gen_bool(0.03) { 6.0 } else { 1.0 };
            let body = json!({
                "sensor_id": sensor, "sensor_type": kind, "value": (value * 100.0f64).round() / 100.0, "unit": unit,
                "location": format!("building_{}/floor_{}", rng.gen_range(1..4), rng.gen_range(1..6)),
                "battery_level": rng.gen_range(5.0..100.0f64).round(), "timestamp": ts,
            });
            (format!("{sensor}{}{}", crate::decode::KEY_SEPARATOR, ts * 1000), body)
        }
        "log_events" => {
            let id = format!("log_{i:08}_{:04x}", rng.gen::<u16>());
            let levels = ["DEBUG", "INFO", "INFO", "INFO", "WARN", "ERROR", "FATAL"];
            let body = json!({
                "log_id": id, "service": one(rng, &["api", "auth", "payments", "search", "frontend"]),
                "level": levels.choose(rng).copied().unwrap_or("INFO"), "message": format!("request {} handled in {} ms", rng.gen::<u32>(), rng.gen_range(1..900)),
                "trace_id": format!("{:016x}", rng.gen::<u64>()), "host": format!("host-{:02}", rng.gen_range(0..12)), "timestamp": ts,
            });
            (id, body)
        }
        _ => {
            let id = format!("rec_{i:08}_{:04x}", rng.gen::<u16>());
            let body = json!({
                "record_id": id, "source": one(rng, &["crm_export", "erp_sync", "partner_feed"]),
                "payload": {"name": format!("item {i}"), "qty": rng.gen_range(1..50), "tags": ["a", "b"]}, "timestamp": ts,
            });
            (id, body)
        }
    }
}

/// One of `options`, uniformly.
fn one(rng: &mut StdRng, options: &[&'static str]) -> &'static str {
    options.choose(rng).copied().unwrap_or_default()
}

fn mutate(shape: &str, body: &Json, ts: i64, rng: &mut StdRng) -> Json {
    let mut b = body.clone();
    b["timestamp"] = json!(ts);
    match shape {
        "transactions" => b["status"] = json!(one(rng, &["completed", "failed", "refunded"])),
        "user_events" => b["page"] = json!(format!("/p/{}", rng.gen_range(0..100))),
        "sensor_data" => {
            let v = b["value"].as_f64().unwrap_or(0.0) * rng.gen_range(0.95..1.05);
            b["value"] = json!((v * 100.0).round() / 100.0);
        }
        "log_events" => b["message"] = json!("updated message"),
        _ => b["payload"] = json!({"revised": true}),
    }
    b
}

fn invalid(shape: &str, turn: usize, i: usize, now_ms: i64) -> Message {
    let key = Some(format!("bad_{i}").into_bytes());
    let payload = match turn % 5 {
        0 => "{\"truncated\": ".to_string(),
        1 => json!({"timestamp": now_ms}).to_string(),
        2 => {
            let spec = &crate::spec::builtin_specs()[shape];
            let mut b = json!({"timestamp": now_ms});
            for f in &spec.fields {
                if f.name != "timestamp" {
                    b[&f.name] = json!(12345);
                }
            }
            b.to_string()
        }
        3 => match shape {
            "transactions" => json!({"transaction_id": format!("bad_{i}"), "user_id": "u", "amount": -5, "currency": "USD", "status": "completed", "timestamp": now_ms}).to_string(),
            "user_events" => json!({"event_id": format!("bad_{i}"), "user_id": "u", "event_type": "teleport", "timestamp": now_ms}).to_string(),
            "sensor_data" => json!({"sensor_id": "s", "sensor_type": "smell", "value": 1, "timestamp": now_ms}).to_string(),
            "log_events" => json!({"log_id": format!("bad_{i}"), "service": "api", "level": "LOUD", "message": "m", "timestamp": now_ms}).to_string(),
            _ => json!({"record_id": format!("bad_{i}"), "source": "s", "payload": null, "timestamp": now_ms}).to_string(),
        },
        _ => {
            let spec = &crate::spec::builtin_specs()[shape];
            let mut b = json!({});
            for f in &spec.fields {
                b[&f.name] = json!("x");
            }
            b["timestamp"] = json!("last tuesday");
            b.to_string()
        }
    };
    (key, Some(payload.into_bytes()))
}

/// Produce generated messages, at most `rate` per second when given.
pub async fn produce(
    producer: &crate::source::kafka::KafkaProducer,
    topic: &str,
    messages: Vec<Message>,
    rate: Option<f64>,
) -> Result<usize, crate::source::SourceError> {
    match rate {
        None => producer.send_all(topic, messages).await,
        Some(r) => {
            let chunk = ((r / 10.0).ceil() as usize).max(1);
            let mut sent = 0;
            let mut it = messages.into_iter().peekable();
            while it.peek().is_some() {
                let started = tokio::time::Instant::now();
                let part: Vec<Message> = it.by_ref().take(chunk).collect();
                sent += producer.send_all(topic, part).await?;
                let budget = Duration::from_secs_f64(chunk as f64 / r);
                tokio::time::sleep_until(started + budget).await;
            }
            Ok(sent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;

    #[test]
    fn generated_data_has_the_requested_mix() {
        for shape in ["user_events", "transactions", "sensor_data", "log_events", "bulk_upload"] {
            let opts = GenerateOptions { shape: shape.into(), count: 2000, invalid_ratio: 0.05, ..Default::default() };
            let msgs = generate(&opts, 1_700_000_000_000).unwrap();
            assert_eq!(msgs.len(), 2000);
            let d = Decoder::new(crate::spec::builtin_specs()[shape].clone(), 1 << 20).unwrap();
            let mut bad = 0;
            let mut deletes = 0;
            for (k, p) in &msgs {
                match d.decode(k.as_deref(), p.as_deref(), 0, 0) {
                    Err(_) => bad += 1,
                    Ok(r) => {
                        deletes += r.deleted as usize;
                        assert_eq!(Some(r.key.as_bytes()), k.as_deref(), "messages are keyed by record key");
                    }
                }
            }
            assert!((60..=140).contains(&bad), "{shape}: {bad} invalid");
            assert!(deletes > 5, "{shape}: {deletes} deletes");
        }
        assert!(generate(&GenerateOptions { shape: "nope".into(), ..Default::default() }, 0).is_err());
    }
}
