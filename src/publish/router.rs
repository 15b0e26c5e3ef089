//! The router: every producer (generator, file loads, HTTP ingest) publishes through it, over
//! N brokers with a circuit breaker each and a strategy that picks the order to try them in.
//!
//! A batch is acknowledged when one broker acknowledged every record of it. A batch that timed
//! out on one broker and went to the next may also land on the first (its producer keeps
//! retrying): such duplicates are harmless, because the lake upserts by key and precombine.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::breaker::{Breaker, BreakerConfig};
use super::{Message, PublishError};

/// How long a batch may take when there is no other broker to fail over to.
pub const SINGLE_BROKER_TIMEOUT: Duration = Duration::from_secs(60);

/// How the router picks brokers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the first broker.
    PrimaryOnly,
    /// Only the second broker.
    FallbackOnly,
    /// The first healthy broker in order: the primary while its breaker is closed, else the next.
    #[default]
    Health,
    /// Rotate over the brokers, skipping open breakers.
    RoundRobin,
}

/// Something that can durably publish a batch: a Kafka cluster or an Iggy server.
pub trait Sink: Send + Sync {
    /// Publish `batch` to `topic`; resolve only when every record is acknowledged.
    fn send<'a>(&'a self, topic: &'a str, batch: &'a [Message]) -> impl Future<Output = Result<(), String>> + Send + 'a;
}

/// One broker behind the router.
pub struct Member<S> {
    /// Its role name (`primary`, `fallback`, or `broker2`…).
    pub name: String,
    /// Where it is (credentials removed).
    pub address: String,
    /// The client.
    pub sink: S,
    breaker: Mutex<Breaker>,
    stats: Mutex<Stats>,
}

/// A call under way to one member: its breaker ticket, given back uncounted when the call is
/// dropped (a client that hung up) before its result is recorded, so a half-open breaker
/// does not run out of probes.
struct Attempt<'a> {
    breaker: &'a Mutex<Breaker>,
    ticket: Option<super::breaker::Ticket>,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let (Some(ticket), Ok(mut b)) = (self.ticket.take(), self.breaker.lock()) {
            b.abandon(Instant::now(), ticket);
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Stats {
    ok: u64,
    errors: u64,
    records: u64,
    last_error: Option<String>,
    last_latency: Option<Duration>,
    /// Exponential moving average of batch latency, in seconds.
    avg_latency: f64,
}

/// A broker's health, for `/health` and the metrics.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerHealth {
    /// Role name.
    pub name: String,
    /// Address without credentials.
    pub address: String,
    /// `closed`, `half_open` or `open`.
    pub breaker: &'static str,
    /// 0 closed, 1 half-open, 2 open.
    pub breaker_gauge: i64,
    /// Times the breaker opened.
    pub times_opened: u64,
    /// Batches acknowledged.
    pub batches_ok: u64,
    /// Batches that failed or timed out.
    pub batches_failed: u64,
    /// Records acknowledged.
    pub records_ok: u64,
    /// Latency of the last acknowledged batch, in milliseconds.
    pub last_latency_ms: Option<f64>,
    /// Average batch latency, in milliseconds.
    pub avg_latency_ms: f64,
    /// The last error.
    pub last_error: Option<String>,
}

/// Where a batch went.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The broker that acknowledged it.
    pub broker: String,
    /// Brokers tried before it (failed or timed out).
    pub failed_over_from: Vec<String>,
}

/// The router over its members.
pub struct Router<S> {
    members: Vec<Member<S>>,
    strategy: Strategy,
    attempt_timeout: Duration,
    next: AtomicUsize,
}

impl<S: Sink> Router<S> {
    /// A router over `(name, address, sink)` members, in priority order.
    pub fn new(members: Vec<(String, String, S)>, strategy: Strategy, breaker: BreakerConfig, attempt_timeout: Duration) -> Result<Self, PublishError> {
        if members.is_empty() {
            return Err(PublishError::Config("no broker to publish to".into()));
        }
        if strategy == Strategy::FallbackOnly && members.len() < 2 {
            return Err(PublishError::Config("--strategy fallback_only needs a --fallback broker".into()));
        }
        let members = members
            .into_iter()
            .map(|(name, address, sink)| Member { name, address, sink, breaker: Mutex::new(Breaker::new(breaker)), stats: Mutex::new(Stats::default()) })
            .collect();
        Ok(Router { members, strategy, attempt_timeout, next: AtomicUsize::new(0) })
    }

    /// The members, in priority order.
    pub fn members(&self) -> &[Member<S>] {
        &self.members
    }

    /// Whether a batch can only ever go to one broker (one member, or a `*_only` strategy).
    pub fn single_broker(&self) -> bool {
        self.members.len() == 1 || matches!(self.strategy, Strategy::PrimaryOnly | Strategy::FallbackOnly)
    }

    /// How long one broker may take for a batch: `attempt_timeout` when another broker could
    /// take the batch instead; with a single broker there is nowhere to fail over to, so the
    /// router waits as long as the producer itself does.
    fn attempt_limit(&self) -> Duration {
        if self.single_broker() {
            self.attempt_timeout.max(SINGLE_BROKER_TIMEOUT)
        } else {
            self.attempt_timeout
        }
    }

    /// The order to try members in for the next batch.
    fn order(&self) -> Vec<usize> {
        let n = self.members.len();
        match self.strategy {
            Strategy::PrimaryOnly => vec![0],
            Strategy::FallbackOnly => vec![1],
            Strategy::Health => (0..n).collect(),
            Strategy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
                (0..n).map(|i| (start + i) % n).collect()
            }
        }
    }

    fn would_allow(&self, i: usize) -> bool {
        self.members[i].breaker.lock().map(|b| b.would_allow(Instant::now())).unwrap_or(true)
    }

    /// Leave for a call to member `i`, given back (uncounted) if the call is dropped before
    /// its result is recorded.
    fn allow(&self, i: usize) -> Option<Attempt<'_>> {
        let ticket = self.members[i].breaker.lock().ok()?.allow(Instant::now())?;
        Some(Attempt { breaker: &self.members[i].breaker, ticket: Some(ticket) })
    }

    fn record(&self, i: usize, mut attempt: Attempt<'_>, outcome: Result<Duration, String>, records: usize) {
        let now = Instant::now();
        let m = &self.members[i];
        if let (Ok(mut b), Some(ticket)) = (m.breaker.lock(), attempt.ticket.take()) {
            match &outcome {
                Ok(_) => b.on_success(now, ticket),
                Err(_) => b.on_failure(now, ticket),
            }
        }
        if let Ok(mut s) = m.stats.lock() {
            match outcome {
                Ok(latency) => {
                    s.ok += 1;
                    s.records += records as u64;
                    s.last_latency = Some(latency);
                    s.avg_latency = if s.ok == 1 { latency.as_secs_f64() } else { 0.8 * s.avg_latency + 0.2 * latency.as_secs_f64() };
                }
                Err(e) => {
                    s.errors += 1;
                    s.last_error = Some(e);
                }
            }
        }
    }

    /// Publish one batch; returns which broker acknowledged it. When every allowed broker fails,
    /// the error lists each one's reason and nothing is acknowledged.
    pub async fn publish(&self, topic: &str, batch: &[Message]) -> Result<Delivery, PublishError> {
        let mut failed = Vec::new();
        let mut reasons = Vec::new();
        let order = self.order();
        for (n, &i) in order.iter().enumerate() {
            let name = &self.members[i].name;
            // A ticket is taken only for the broker about to be tried.
            let Some(attempt) = self.allow(i) else {
                reasons.push(format!("{name}: circuit open"));
                continue;
            };
            let started = Instant::now();
            // The last broker left has nothing to fail over to: it gets as long as it needs.
            let last = !order[n + 1..].iter().any(|&j| self.would_allow(j));
            let limit = if last { self.attempt_timeout.max(SINGLE_BROKER_TIMEOUT) } else { self.attempt_limit() };
            let outcome = match tokio::time::timeout(limit, self.members[i].sink.send(topic, batch)).await {
                Ok(Ok(())) => Ok(started.elapsed()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("no acknowledgement within {limit:?}")),
            };
            let ok = outcome.is_ok();
            if let Err(e) = &outcome {
                reasons.push(format!("{name}: {e}"));
            }
            self.record(i, attempt, outcome, batch.len());
            if ok {
                return Ok(Delivery { broker: name.clone(), failed_over_from: failed });
            }
            failed.push(name.clone());
        }
        Err(PublishError::AllBrokersFailed(reasons.join("; ")))
    }

    /// Every member's health.
    pub fn health(&self) -> Vec<BrokerHealth> {
        let now = Instant::now();
        self.members
            .iter()
            .map(|m| {
                let (state, opened) = m.breaker.lock().map(|b| (b.state(now), b.times_opened())).unwrap_or((super::breaker::State::Closed { failures: 0 }, 0));
                let s = m.stats.lock().map(|s| s.clone()).unwrap_or_default();
                BrokerHealth {
                    name: m.name.clone(),
                    address: m.address.clone(),
                    breaker: state.name(),
                    breaker_gauge: state.gauge(),
                    times_opened: opened,
                    batches_ok: s.ok,
                    batches_failed: s.errors,
                    records_ok: s.records,
                    last_latency_ms: s.last_latency.map(|d| d.as_secs_f64() * 1000.0),
                    avg_latency_ms: s.avg_latency * 1000.0,
                    last_error: s.last_error,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;

    /// A broker double for the routing logic (the real brokers are tested in tests/it).
    #[derive(Clone, Default)]
    struct Fake {
        down: Arc<AtomicBool>,
        slow: Arc<AtomicBool>,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for Fake {
        async fn send<'a>(&'a self, _topic: &'a str, batch: &'a [Message]) -> Result<(), String> {
            if self.slow.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            if self.down.load(Ordering::SeqCst) {
                return Err("connection refused".into());
            }
            let mut got = self.got.lock().unwrap();
            got.extend(batch.iter().map(|(k, _)| String::from_utf8_lossy(k.as_deref().unwrap_or_default()).to_string()));
            Ok(())
        }
    }

    fn router(strategy: Strategy) -> (Router<Fake>, Fake, Fake) {
        let (a, b) = (Fake::default(), Fake::default());
        let r = Router::new(
            vec![("primary".into(), "a".into(), a.clone()), ("fallback".into(), "b".into(), b.clone())],
            strategy,
            BreakerConfig { failure_threshold: 2, open_for: Duration::from_secs(60), success_threshold: 1 },
            Duration::from_millis(200),
        )
        .unwrap();
        (r, a, b)
    }

    fn batch(k: &str) -> Vec<Message> {
        vec![(Some(k.as_bytes().to_vec()), Some(b"{}".to_vec()))]
    }

    #[tokio::test]
    async fn health_fails_over_and_skips_an_open_breaker() {
        let (r, a, b) = router(Strategy::Health);
        assert_eq!(r.publish("t", &batch("1")).await.unwrap().broker, "primary");
        a.down.store(true, Ordering::SeqCst);
        let d = r.publish("t", &batch("2")).await.unwrap();
        assert_eq!((d.broker.as_str(), d.failed_over_from.clone()), ("fallback", vec!["primary".to_string()]));
        r.publish("t", &batch("3")).await.unwrap();
        assert_eq!(r.health()[0].breaker, "open", "two failures open it");
        a.down.store(false, Ordering::SeqCst);
        let d = r.publish("t", &batch("4")).await.unwrap();
        assert!(d.failed_over_from.is_empty(), "an open breaker is skipped, not tried");
        assert_eq!(*a.got.lock().unwrap(), vec!["1"]);
        assert_eq!(*b.got.lock().unwrap(), vec!["2", "3", "4"]);
    }

    #[tokio::test]
    async fn a_hanging_broker_fails_over_within_the_attempt_timeout() {
        let (r, a, _b) = router(Strategy::Health);
        a.slow.store(true, Ordering::SeqCst);
        let started = Instant::now();
        assert_eq!(r.publish("t", &batch("1")).await.unwrap().broker, "fallback");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn strategies_pick_their_brokers() {
        let (r, a, b) = router(Strategy::RoundRobin);
        for k in ["1", "2", "3", "4"] {
            r.publish("t", &batch(k)).await.unwrap();
        }
        assert_eq!(a.got.lock().unwrap().len(), 2);
        assert_eq!(b.got.lock().unwrap().len(), 2);

        let (r, a, _) = router(Strategy::FallbackOnly);
        assert_eq!(r.publish("t", &batch("1")).await.unwrap().broker, "fallback");
        assert!(a.got.lock().unwrap().is_empty());

        let (r, a, b) = router(Strategy::PrimaryOnly);
        a.down.store(true, Ordering::SeqCst);
        let err = r.publish("t", &batch("1")).await.unwrap_err().to_string();
        assert!(err.contains("primary: connection refused"), "{err}");
        assert!(b.got.lock().unwrap().is_empty(), "primary_only never falls back");
    }
}
