//! Server: the read-only HTTP API of `lakepipe serve`.
//!
//! * `POST /query` `{sql, engine, format: json|csv|arrow}` runs one read-only statement.
//! * `GET /tables` lists the tables with schema, row count, size and latest version.
//! * `GET /tables/{t}/history` returns the commits.
//! * `GET /` is the web UI ([`ui`]).
//! * `POST /topics/{topic}/records` takes a JSON array, NDJSON or CSV (`text/csv`), validates every record against
//!   the topic's spec first (any invalid record: 400 listing each one, nothing published), and
//!   answers 200 only after a broker acknowledged every record (through the router).
//! * `GET /api/brokers` and `GET /api/brokers/{broker}/topics/{topic}/messages`: the brokers
//!   page's topics, groups with their lag, and a topic's newest messages ([`brokers`]).
//! * `GET /health` and `GET /health/{broker}`: breaker states, latency and errors per broker.
//! * `/metrics`, `/health/live` and `/health/ready`.
//!
//! Only a single `SELECT`/`WITH` query runs, and it reads only the lake's tables and the table
//! functions an analyst needs: each engine decides with its own parser and plan
//! ([`crate::query::allow`]), and DuckDB also runs with external access off and its
//! configuration locked. Anything else is a 400 saying "not allowed". Results stop at the row
//! limit (the engine is told, so it does not compute more). When `LAKEPIPE_API_TOKEN` is set, every API request needs
//! `Authorization: Bearer <token>`, checked in one layer before a handler reads the body;
//! `/metrics` and `/health` stay open for scrapers and probes. A query's own mistakes are 4xx,
//! the lake's and the engine's failures 5xx.
//!
//! Limits ([`limits`], [`result`]): the API and the page answer only to `localhost`, IP
//! addresses and the `allowed_hosts` (421 otherwise, against DNS rebinding); at most
//! `max_concurrent_queries` queries run at once (a query beyond them waits 2 s for a turn, then
//! gets a 503 with `Retry-After`); each has a memory budget (`query_memory`) on either engine;
//! a result's body stops at `max_result_rows` rows and `max_result_bytes` bytes.

pub mod brokers;
pub mod limits;
pub mod result;
pub mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::lake::Lake;
use crate::query::functions::BrokerInfo;
use crate::query::{format, Engine, Format, Request};

/// Server settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// The lake.
    pub lake: Lake,
    /// The broker, for `freshness()`.
    pub broker: Option<BrokerInfo>,
    /// Required bearer token, if any (never logged).
    pub token: Option<String>,
    /// Longest a query may run.
    pub query_timeout: Duration,
    /// Most rows a result may return; longer results are cut and marked.
    pub max_rows: usize,
    /// Most bytes of a result's body; longer results are cut at a row and marked.
    pub max_bytes: usize,
    /// Each query's memory budget in bytes.
    pub query_memory: usize,
    /// The queries that may run at once.
    pub queries: limits::QueryGate,
    /// Host names a request may carry besides `localhost` and IP addresses (`*`: any).
    pub allowed_hosts: Vec<String>,
    /// HTTP ingest: the router and the topics' specs (`None`: ingest disabled).
    pub ingest: Option<Arc<IngestApi>>,
    /// The brokers page's brokers (`None`: the page shows none).
    pub inspect: Option<Arc<brokers::Inspect>>,
}

/// What HTTP ingest publishes with.
pub struct IngestApi {
    /// The producers' router.
    pub router: crate::publish::router::Router<crate::publish::Client>,
    /// The router's settings (to create topics).
    pub options: crate::publish::RouterOptions,
    /// Topic specs by name.
    pub specs: std::collections::BTreeMap<String, crate::spec::TopicSpec>,
    /// Larger records are invalid.
    pub max_message_bytes: usize,
    /// Partitions for topics created on first use.
    pub partitions: i32,
    /// Topics already created.
    pub created: tokio::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The built-in shape of each topic, for generated records.
    pub shapes: std::collections::BTreeMap<String, String>,
}

/// Create `topic` on the brokers once per server run.
async fn ensure_created(api: &IngestApi, topic: &str) -> Result<(), crate::publish::PublishError> {
    let mut created = api.created.lock().await;
    if !created.contains(topic) {
        crate::publish::ensure_topics(&api.options, &[topic.to_string()], api.partitions, Duration::from_secs(10)).await?;
        created.insert(topic.to_string());
    }
    Ok(())
}

/// A request to `POST /query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One SQL statement.
    pub sql: String,
    /// `datafusion` (default) or `duckdb`.
    #[serde(default)]
    pub engine: Option<String>,
    /// `json` (default), `csv` or `arrow` (Arrow IPC stream).
    #[serde(default)]
    pub format: Option<String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn authorized(cfg: &ServerConfig, headers: &HeaderMap) -> bool {
    let Some(token) = &cfg.token else { return true };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
}

/// Writes (ingest, generate) only from a non-browser client or a page of this server: a
/// request whose `Origin` is another site is refused, so a web page the operator visits cannot
/// publish through a token-less server.
fn writes_allowed(headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return Ok(()) };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
    if !host.is_empty() && origin_host == host {
        Ok(())
    } else {
        Err(format!("writes from another origin ({origin}) are refused"))
    }
}

/// The token, checked before a handler reads the request's body: one place for every API route.
async fn require_token(State(cfg): State<Arc<ServerConfig>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !authorized(&cfg, req.headers()) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is required (Authorization: Bearer …)");
    }
    next.run(req).await
}

/// [`writes_allowed`], before a handler reads the request's body.
async fn same_origin_writes(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Err(reason) = writes_allowed(req.headers()) {
        return error(StatusCode::FORBIDDEN, reason);
    }
    next.run(req).await
}

/// The status of a failed query: the client's mistakes are 4xx, the lake's and the engine's
/// failures 5xx (503 when retrying may succeed).
fn query_status(e: &crate::query::QueryError) -> StatusCode {
    use crate::query::QueryError;
    match e {
        e if e.is_user_error() => StatusCode::BAD_REQUEST,
        QueryError::Lake(l) if l.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The largest body `POST /query` reads.
const QUERY_BODY_LIMIT: usize = 2 << 20;

async fn query(State(cfg): State<Arc<ServerConfig>>, body: Result<Json<QueryRequest>, axum::extract::rejection::JsonRejection>) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than the limit of {} MiB for a query", QUERY_BODY_LIMIT >> 20))
        }
        Err(e) if e.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE => return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.body_text()),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad request body: {e}")),
    };
    let engine: Engine = match req.engine.as_deref().unwrap_or("datafusion").parse() {
        Ok(e) => e,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let format = match result::BodyFormat::parse(req.format.as_deref()) {
        Ok(f) => f,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    // A turn first: even checking a statement takes memory in proportion to its size.
    let turn = match cfg.queries.enter().await {
        Ok(permit) => permit,
        Err(busy) => return busy,
    };
    // DuckDB's threads: a fair share of the cores among the queries that may run at once.
    let threads = (limits::cores() / cfg.queries.size()).max(1);
    // On a task of the query runtime, which keeps the turn until the work really ends: the
    // timeout answers the client even when an operator computes for long without yielding,
    // and the task is cancelled at its next yield. The task times itself out too, and is
    // aborted when this handler is dropped (the client hung up), so no query outlives the
    // limit holding a turn.
    let (lake, broker, sql) = (cfg.lake.clone(), cfg.broker.clone(), req.sql);
    let (max_rows, memory, limit, max_bytes) = (cfg.max_rows, cfg.query_memory, cfg.query_timeout, cfg.max_bytes);
    let run = limits::query_runtime().spawn(async move {
        let _turn = turn;
        let request = Request {
            sql: &sql,
            engine,
            broker: broker.as_ref(),
            limit: Some(max_rows + 1),
            read_only: true,
            sandboxed: true,
            memory: Some(memory),
            threads: Some(threads),
            // A body of `max_bytes` takes at most a few times as many bytes of Arrow rows (CSV
            // of small numbers is the densest); the encoder cuts exactly.
            max_bytes: Some(max_bytes.saturating_mul(4)),
        };
        tokio::time::timeout(limit, crate::query::execute_bounded(&lake, &request)).await
    });
    let _abort = limits::AbortOnDrop(run.abort_handle());
    let too_long = || error(StatusCode::BAD_REQUEST, format!("the query ran longer than the limit of {:?}", cfg.query_timeout));
    let answer = match tokio::time::timeout(cfg.query_timeout, run).await {
        Err(_) | Ok(Ok(Err(_))) => return too_long(),
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("the query's task failed: {e}")),
        Ok(Ok(Ok(Err(e)))) => return error(query_status(&e), e.to_string()),
        Ok(Ok(Ok(Ok(answer)))) => answer,
    };
    let crate::query::Answer { schema, batches, cut } = answer;
    // The engine stopped at max_rows + 1, so "more" is known without computing everything.
    let (max_rows, max_bytes) = (cfg.max_rows, cfg.max_bytes);
    let body = match tokio::task::spawn_blocking(move || result::encode(&schema, &batches, format, max_rows, max_bytes)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, format.content_type())], body.bytes).into_response();
    // Collecting stopped short: more rows may follow those the body holds.
    let truncated = body.truncated.or_else(|| cut.then(|| format!("first {} rows (max_result_bytes: {} bytes)", body.rows, cfg.max_bytes)));
    if let Some(v) = truncated.and_then(|t| t.parse().ok()) {
        resp.headers_mut().insert("x-lakepipe-truncated", v);
    }
    resp
}

async fn tables(State(cfg): State<Arc<ServerConfig>>) -> Response {
    let names = match crate::query::list_tables(&cfg.lake).await {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    let mut out = Vec::new();
    for name in names {
        let Ok(Some(t)) = cfg.lake.open(&name).await else { continue };
        let Ok(snapshot) = t.snapshot() else { continue };
        let schema: Vec<serde_json::Value> = snapshot
            .schema()
            .fields()
            .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()}))
            .collect();
        let (mut rows, mut size, mut files) = (0u64, 0u64, 0u64);
        for f in snapshot.log_data().iter() {
            rows += f.num_records().unwrap_or(0) as u64;
            size += f.size().max(0) as u64;
            files += 1;
        }
        out.push(serde_json::json!({
            "name": name, "version": t.version(), "rows": rows, "size_bytes": size, "files": files,
            "partition_columns": snapshot.metadata().partition_columns(), "schema": schema,
        }));
    }
    Json(out).into_response()
}

async fn history(State(cfg): State<Arc<ServerConfig>>, UrlPath(table): UrlPath<String>) -> Response {
    match cfg.lake.open(&table).await {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no table `{table}`")),
        Err(e @ crate::lake::LakeError::BadTableName(_)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
    let batch = match crate::query::functions::history(&cfg.lake, &table).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    match format(&batch.schema(), &[batch], Format::Json) {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn ingest(State(cfg): State<Arc<ServerConfig>>, headers: HeaderMap, UrlPath(topic): UrlPath<String>, body: axum::body::Bytes) -> Response {
    use crate::publish::load::{parse_text, FileFormat};
    let Some(api) = &cfg.ingest else {
        return error(StatusCode::NOT_FOUND, "HTTP ingest is not enabled on this server");
    };
    let Some(spec) = api.specs.get(&topic) else {
        let known: Vec<&str> = api.specs.keys().map(String::as_str).collect();
        return error(StatusCode::NOT_FOUND, format!("unknown topic `{topic}` (known: {})", known.join(", ")));
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    let csv = content_type.starts_with("text/csv");
    if !csv && !content_type.starts_with("application/json") && !content_type.starts_with("application/x-ndjson") {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json (an array or one object per line), application/x-ndjson or text/csv");
    }
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error(StatusCode::BAD_REQUEST, "the body is not UTF-8 text");
    };
    let decoder = match crate::decode::Decoder::new(spec.clone(), api.max_message_bytes) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let format = if csv {
        FileFormat::Csv
    } else if text.trim_start().starts_with('[') {
        FileFormat::Json
    } else {
        FileFormat::Ndjson
    };
    let spec_owned = spec.clone();
    let parsed = match tokio::task::spawn_blocking(move || parse_text(&text, format, &spec_owned, &decoder, "body")).await {
        Ok(p) => p,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if !parsed.rejected.is_empty() {
        let errors: Vec<serde_json::Value> = parsed.rejected.iter().map(|r| serde_json::json!({"index": r.index, "line": r.line, "error": r.error})).collect();
        let total = parsed.messages.len() + parsed.rejected.len();
        let body = serde_json::json!({
            "error": format!("{} of {total} records are invalid; nothing was published", parsed.rejected.len()),
            "errors": errors,
        });
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    if parsed.messages.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no records in the body (send a JSON array or one JSON object per line)");
    }
    // Refused here, not in the producer, where it would count against every broker's breaker.
    let limit = crate::publish::max_record_bytes(&api.options.kafka);
    let too_large = crate::publish::oversized(&parsed.messages, limit);
    if !too_large.is_empty() {
        let errors: Vec<serde_json::Value> = too_large
            .iter()
            .map(|(index, bytes)| serde_json::json!({"index": index, "error": format!("the record is {bytes} bytes with its key; the producer takes at most {limit} (message.max.bytes)")}))
            .collect();
        let body = serde_json::json!({
            "error": format!("{} of {} records are too large to publish; nothing was published", too_large.len(), parsed.messages.len()),
            "errors": errors,
        });
        return (StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response();
    }
    if let Err(e) = ensure_created(api, &topic).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    let progress = crate::progress::Progress::none();
    match crate::publish::publish_all(&api.router, &topic, &parsed.messages, 1000, None, &progress).await {
        Ok(s) => Json(serde_json::json!({"published": s.published, "per_broker": s.per_broker, "failovers": s.failovers})).into_response(),
        Err((s, e)) => {
            let body = serde_json::json!({
                "error": e.to_string(),
                "published": s.published,
                "note": "the first `published` records were acknowledged; send the rest again (duplicates are harmless: the lake upserts by key)",
            });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn all_brokers(State(cfg): State<Arc<ServerConfig>>) -> Response {
    broker_health(&cfg, None)
}

async fn one_broker(State(cfg): State<Arc<ServerConfig>>, UrlPath(name): UrlPath<String>) -> Response {
    broker_health(&cfg, Some(name))
}

fn broker_health(cfg: &ServerConfig, broker: Option<String>) -> Response {
    let Some(api) = &cfg.ingest else {
        return Json(serde_json::json!({"status": "ok", "brokers": []})).into_response();
    };
    let all = api.router.health();
    match broker {
        None => {
            let usable = all.iter().any(|b| b.breaker != "open");
            let status = if usable { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (status, Json(serde_json::json!({"status": if usable { "ok" } else { "unavailable" }, "brokers": all}))).into_response()
        }
        Some(name) => match all.into_iter().find(|b| b.name == name) {
            Some(b) => Json(b).into_response(),
            None => error(StatusCode::NOT_FOUND, format!("no broker `{name}`")),
        },
    }
}

/// Copy breaker states into the metrics every second.
pub fn spawn_broker_metrics(cfg: &ServerConfig, metrics: Arc<crate::metrics::Metrics>) {
    let Some(api) = cfg.ingest.clone() else { return };
    tokio::spawn(async move {
        loop {
            metrics.record_brokers(&api.router.health());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// The API routes, with metrics and health.
pub fn router(cfg: ServerConfig, metrics: Arc<crate::metrics::Metrics>) -> Router {
    spawn_broker_metrics(&cfg, metrics.clone());
    let state = Arc::new(cfg);
    let same_origin = || axum::middleware::from_fn(same_origin_writes);
    // Checked in the layers, before any handler reads a body.
    let guarded = Router::new()
        .route("/query", post(query).layer(axum::extract::DefaultBodyLimit::max(QUERY_BODY_LIMIT)))
        .route("/tables", get(tables))
        .route("/tables/{table}/history", get(history))
        .route("/topics/{topic}/records", post(ingest).layer(axum::extract::DefaultBodyLimit::max(256 << 20)).layer(same_origin()))
        .route("/topics/{topic}/generate", post(ui::generate).layer(same_origin()))
        .route("/api/topics", get(ui::topics))
        .route("/api/examples", get(ui::examples))
        .route("/api/brokers", get(brokers::brokers))
        .route("/api/brokers/{broker}/topics/{topic}/messages", get(brokers::messages))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    let page = Router::new().route("/", get(ui::index)).route("/ui/app.js", get(ui::script)).route("/ui/style.css", get(ui::style));
    // The API and the page answer only to known host names; health and metrics to any, for
    // probes and scrapers that name the machine.
    let named = guarded.merge(page).route_layer(axum::middleware::from_fn_with_state(state.clone(), limits::check_host));
    let open = Router::new().route("/health", get(all_brokers)).route("/health/{broker}", get(one_broker));
    named.merge(open).with_state(state).merge(crate::metrics::router(metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's mistakes are 4xx; the lake's and the engine's failures are 5xx.
    #[test]
    fn failures_that_are_not_the_clients_are_5xx() {
        use crate::lake::LakeError;
        use crate::query::QueryError;
        let unreachable = LakeError::Unreachable { uri: "s3://b".into(), reason: "timed out".into() };
        let no_table = LakeError::NoTable { table: "t".into(), lake: "file:///l".into(), known: String::new() };
        for (e, want) in [
            (QueryError::Sql("syntax".into()), 400),
            (QueryError::Lake(no_table), 400),
            (QueryError::Lake(unreachable), 503),
            (QueryError::Engine("panicked".into()), 500),
            (QueryError::Format("arrow".into()), 500),
        ] {
            assert_eq!(query_status(&e).as_u16(), want, "{e}");
        }
    }
}
