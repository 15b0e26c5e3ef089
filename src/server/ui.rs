//! The web UI of `lakepipe serve`: one page (HTML, CSS and JS embedded in the binary, no CDN)
//! over the same HTTP API, plus the few read endpoints it needs: topic specs for the entry form,
//! the analyst queries of `sql/`, and a "generate N records" action.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{error, ServerConfig};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// The analyst queries of `sql/`, one click away in the console.
const EXAMPLES: [(&str, &str); 6] = [
    ("daily_active_users", include_str!("../../sql/daily_active_users.sql")),
    ("revenue_per_day", include_str!("../../sql/revenue_per_day.sql")),
    ("sensor_out_of_range", include_str!("../../sql/sensor_out_of_range.sql")),
    ("error_rate_per_service_hour", include_str!("../../sql/error_rate_per_service_hour.sql")),
    ("record_changes", include_str!("../../sql/record_changes.sql")),
    ("dead_letters_by_kind", include_str!("../../sql/dead_letters_by_kind.sql")),
];

/// `GET /`.
pub async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX).into_response()
}

/// `GET /ui/app.js`.
pub async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], SCRIPT).into_response()
}

/// `GET /ui/style.css`.
pub async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], STYLE).into_response()
}

/// `GET /api/examples`: `[{name, sql}]`.
pub async fn examples() -> Response {
    let list: Vec<serde_json::Value> = EXAMPLES.iter().map(|(name, sql)| serde_json::json!({"name": name, "sql": sql.trim()})).collect();
    Json(list).into_response()
}

/// `GET /api/topics`: every topic's spec (fields, types, enum choices, required marks) and
/// whether HTTP ingest is enabled.
pub async fn topics(State(cfg): State<Arc<ServerConfig>>) -> Response {
    let specs = match &cfg.ingest {
        Some(api) => api.specs.clone(),
        None => crate::spec::builtin_specs(),
    };
    let list: Vec<serde_json::Value> = specs
        .values()
        .map(|s| {
            serde_json::json!({
                "name": s.name, "key": s.key, "precombine": s.precombine, "partition_time": s.partition_time,
                "fields": serde_json::to_value(&s.fields).unwrap_or_default(),
            })
        })
        .collect();
    Json(serde_json::json!({"ingest": cfg.ingest.is_some(), "topics": list})).into_response()
}

/// Query of `POST /topics/{topic}/generate`.
#[derive(Debug, Deserialize)]
pub struct GenerateQuery {
    /// Records to generate (at most 100,000).
    pub count: Option<usize>,
}

/// `POST /topics/{topic}/generate?count=N`: realistic records of the topic's shape, published
/// through the router.
pub async fn generate(State(cfg): State<Arc<ServerConfig>>, headers: HeaderMap, UrlPath(topic): UrlPath<String>, Query(q): Query<GenerateQuery>) -> Response {
    // A custom header forces a CORS preflight, so other sites cannot trigger this.
    if headers.get("x-lakepipe-action").is_none() {
        return error(StatusCode::BAD_REQUEST, "send the header X-Lakepipe-Action: generate");
    }
    let Some(api) = &cfg.ingest else {
        return error(StatusCode::NOT_FOUND, "HTTP ingest is not enabled on this server (start it with --brokers or --primary)");
    };
    let Some(shape) = api.shapes.get(&topic) else {
        return error(StatusCode::NOT_FOUND, format!("unknown topic `{topic}`, or one whose shape the generator does not know"));
    };
    let count = q.count.unwrap_or(100);
    if count == 0 || count > 100_000 {
        return error(StatusCode::BAD_REQUEST, "count must be between 1 and 100000");
    }
    let opts = crate::generate::GenerateOptions { shape: shape.clone(), count, seed: rand::random(), invalid_ratio: 0.0, ..Default::default() };
    let messages = match crate::generate::generate(&opts, chrono::Utc::now().timestamp_millis()) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = super::ensure_created(api, &topic).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    let progress = crate::progress::Progress::none();
    match crate::publish::publish_all(&api.router, &topic, &messages, 1000, None, &progress).await {
        Ok(s) => Json(serde_json::json!({"published": s.published, "per_broker": s.per_broker})).into_response(),
        Err((s, e)) => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"error": e.to_string(), "published": s.published}))).into_response(),
    }
}
