//! Metrics: Prometheus counters, gauges and histograms, and the HTTP endpoints that serve them
//! (`/metrics`, `/health/live`, `/health/ready`).
//!
//! Everything is recorded per batch or per commit, never per record.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// Errors of the metrics layer.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address cannot be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A metric could not be registered (a bug).
    #[error("metric registration: {0}")]
    Register(#[from] prometheus::Error),
}

/// lakepipe's metrics.
pub struct Metrics {
    registry: Registry,
    /// Messages read, per topic.
    pub consumed: IntCounterVec,
    /// Messages that passed validation, per topic.
    pub valid: IntCounterVec,
    /// Messages written to `dead_letters`, per topic and error kind.
    pub dead_lettered: IntCounterVec,
    /// Keys inserted, per topic.
    pub inserted: IntCounterVec,
    /// Rows updated, per topic.
    pub updated: IntCounterVec,
    /// Rows deleted, per topic.
    pub deleted: IntCounterVec,
    /// Records older than the stored row, per topic.
    pub stale: IntCounterVec,
    /// Offsets deleted from the broker before they were read, committed past with
    /// `on_data_loss = "skip"`, per topic.
    pub skipped_offsets: IntCounterVec,
    /// Seconds from batch close to the last commit.
    pub batch_seconds: HistogramVec,
    /// Seconds per table commit (including recomputes after conflicts).
    pub commit_seconds: HistogramVec,
    /// Records per batch and table.
    pub batch_records: HistogramVec,
    /// Untouched rows copied into rewritten files, per commit.
    pub rows_rewritten: HistogramVec,
    /// Files added per commit.
    pub files_added: HistogramVec,
    /// Files removed per commit.
    pub files_removed: HistogramVec,
    /// Commit attempts beyond the first, per commit.
    pub commit_retries: HistogramVec,
    /// Messages between the committed offset and the high watermark.
    pub consumer_lag: IntGaugeVec,
    /// The offset stored in the lake, per partition.
    pub committed_offset: IntGaugeVec,
    /// Unix time of the last commit, per table.
    pub last_commit: GaugeVec,
    /// Producers: breaker state per broker (0 closed, 1 half-open, 2 open).
    pub broker_breaker: IntGaugeVec,
    /// Producers: batches per broker and outcome (`ok`, `failed`) since start.
    pub broker_batches: IntGaugeVec,
    /// Producers: average batch acknowledgement latency per broker, in seconds.
    pub broker_latency: GaugeVec,
    ready: AtomicBool,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["table"])?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// A fresh registry with every metric.
    pub fn new() -> Result<Arc<Self>, MetricsError> {
        let r = Registry::new();
        let seconds = vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        let counts = vec![0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0];
        let small = vec![0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0];
        let per_topic = ["topic"];
        let lag = IntGaugeVec::new(Opts::new("lakepipe_consumer_lag_messages", "Messages between the lake's committed offset and the high watermark"), &["topic", "partition"])?;
        r.register(Box::new(lag.clone()))?;
        let committed = IntGaugeVec::new(Opts::new("lakepipe_committed_offset", "Next offset stored in the lake"), &["topic", "partition"])?;
        r.register(Box::new(committed.clone()))?;
        let last = GaugeVec::new(Opts::new("lakepipe_last_commit_timestamp_seconds", "Unix time of the last commit"), &["table"])?;
        r.register(Box::new(last.clone()))?;
        let breaker = IntGaugeVec::new(Opts::new("lakepipe_broker_breaker_state", "Circuit breaker per broker: 0 closed, 1 half-open, 2 open"), &["broker"])?;
        r.register(Box::new(breaker.clone()))?;
        let batches = IntGaugeVec::new(Opts::new("lakepipe_broker_batches", "Batches published per broker and outcome since start"), &["broker", "outcome"])?;
        r.register(Box::new(batches.clone()))?;
        let latency = GaugeVec::new(Opts::new("lakepipe_broker_latency_seconds", "Average batch acknowledgement latency per broker"), &["broker"])?;
        r.register(Box::new(latency.clone()))?;
        Ok(Arc::new(Metrics {
            consumed: counter(&r, "lakepipe_records_consumed_total", "Messages read from the source", &per_topic)?,
            valid: counter(&r, "lakepipe_records_valid_total", "Messages that passed validation", &per_topic)?,
            dead_lettered: counter(&r, "lakepipe_records_dead_lettered_total", "Messages written to dead_letters", &["topic", "kind"])?,
            inserted: counter(&r, "lakepipe_rows_inserted_total", "Keys inserted", &per_topic)?,
            updated: counter(&r, "lakepipe_rows_updated_total", "Stored rows replaced by a newer record", &per_topic)?,
            deleted: counter(&r, "lakepipe_rows_deleted_total", "Stored rows deleted", &per_topic)?,
            stale: counter(&r, "lakepipe_records_stale_total", "Records older than the stored row, dropped", &per_topic)?,
            skipped_offsets: counter(&r, "lakepipe_skipped_offsets_total", "Offsets deleted from the broker before they were read, skipped (on_data_loss = skip)", &per_topic)?,
            batch_seconds: histogram(&r, "lakepipe_batch_duration_seconds", "Time to commit a batch (all tables)", seconds.clone())?,
            commit_seconds: histogram(&r, "lakepipe_commit_duration_seconds", "Time to upsert and commit one table", seconds)?,
            batch_records: histogram(&r, "lakepipe_batch_records", "Records per batch and table", counts.clone())?,
            rows_rewritten: histogram(&r, "lakepipe_rows_rewritten", "Untouched rows copied into rewritten files per commit", counts)?,
            files_added: histogram(&r, "lakepipe_files_added", "Files added per commit", small.clone())?,
            files_removed: histogram(&r, "lakepipe_files_removed", "Files removed per commit", small.clone())?,
            commit_retries: histogram(&r, "lakepipe_commit_retries", "Commit attempts beyond the first", small)?,
            consumer_lag: lag,
            committed_offset: committed,
            last_commit: last,
            broker_breaker: breaker,
            broker_batches: batches,
            broker_latency: latency,
            ready: AtomicBool::new(false),
            registry: r,
        }))
    }

    /// Render in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Copy the router's per-broker health into the metrics.
    pub fn record_brokers(&self, brokers: &[crate::publish::router::BrokerHealth]) {
        for b in brokers {
            self.broker_breaker.with_label_values(&[b.name.as_str()]).set(b.breaker_gauge);
            self.broker_batches.with_label_values(&[b.name.as_str(), "ok"]).set(b.batches_ok as i64);
            self.broker_batches.with_label_values(&[b.name.as_str(), "failed"]).set(b.batches_failed as i64);
            self.broker_latency.with_label_values(&[b.name.as_str()]).set(b.avg_latency_ms / 1000.0);
        }
    }

    /// Mark the process ready (partitions assigned, last commit succeeded) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Record one table's upsert.
    pub fn record_upsert(&self, table: &str, records: usize, o: &crate::lake::upsert::UpsertOutcome, seconds: f64) {
        self.inserted.with_label_values(&[table]).inc_by(o.inserted);
        self.updated.with_label_values(&[table]).inc_by(o.updated);
        self.deleted.with_label_values(&[table]).inc_by(o.deleted);
        self.stale.with_label_values(&[table]).inc_by(o.stale);
        self.commit_seconds.with_label_values(&[table]).observe(seconds);
        self.batch_records.with_label_values(&[table]).observe(records as f64);
        self.rows_rewritten.with_label_values(&[table]).observe(o.rows_rewritten as f64);
        self.files_added.with_label_values(&[table]).observe(o.files_added as f64);
        self.files_removed.with_label_values(&[table]).observe(o.files_removed as f64);
        self.commit_retries.with_label_values(&[table]).observe(o.attempts.saturating_sub(1) as f64);
        self.last_commit.with_label_values(&[table]).set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}

async fn ready(State(m): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if m.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The routes for metrics and health, to mount on any server.
pub fn router(m: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .with_state(m)
}

/// Serve metrics and health on `addr` in the background. Returns the bound address.
pub async fn serve(addr: SocketAddr, m: Arc<Metrics>) -> Result<SocketAddr, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| MetricsError::Bind { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(m)).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(%bound, "serving /metrics and /health");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_prometheus_names() {
        let m = Metrics::new().unwrap();
        m.consumed.with_label_values(&["t"]).inc_by(3);
        let o = crate::lake::upsert::UpsertOutcome { inserted: 2, attempts: 2, ..Default::default() };
        m.record_upsert("t", 3, &o, 0.2);
        let text = m.render();
        assert!(text.contains("lakepipe_records_consumed_total{topic=\"t\"} 3"), "{text}");
        assert!(text.contains("lakepipe_rows_inserted_total{topic=\"t\"} 2"));
        assert!(text.contains("lakepipe_commit_retries_sum{table=\"t\"} 1"));
        assert!(text.contains("# TYPE lakepipe_commit_duration_seconds histogram"));
    }

    /// Every metric the Grafana dashboard plots is one lakepipe exports (the breaker state
    /// arrives with the producer router).
    #[test]
    fn dashboard_plots_exported_metrics() {
        let m = Metrics::new().unwrap();
        m.consumed.with_label_values(&["t"]).inc();
        m.valid.with_label_values(&["t"]).inc();
        m.dead_lettered.with_label_values(&["t", "k"]).inc();
        m.record_upsert("t", 1, &crate::lake::upsert::UpsertOutcome::default(), 0.1);
        m.batch_seconds.with_label_values(&["all"]).observe(0.1);
        m.consumer_lag.with_label_values(&["t", "0"]).set(1);
        m.committed_offset.with_label_values(&["t", "0"]).set(1);
        let text = m.render();
        let dashboard = include_str!("../scripts/monitoring/grafana/dashboards/lakepipe.json");
        let re = regex::Regex::new(r"lakepipe_[a-z_]+").unwrap();
        let mut checked = 0;
        for name in re.find_iter(dashboard).map(|m| m.as_str()) {
            let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            if base == "lakepipe_breaker_state" {
                continue;
            }
            assert!(text.contains(&format!("# TYPE {base} ")), "dashboard plots {name}, which is not exported");
            checked += 1;
        }
        assert!(checked >= 10);
    }
}
