//! High watermarks for `freshness()`, shared by every query of a process: looked up at most
//! once per [`MAX_AGE`] however many queries ask (the web UI polls every 2 s, from each open
//! page), one lookup at a time, and a broker that did not answer is not asked again until
//! [`MAX_AGE`] has passed, so queued queries do not each wait out its timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{high_watermarks, TopicPartition};
use crate::source::SourceError;

/// How old a looked-up watermark may be when it is served again: the web UI's polling period,
/// so that every open page shares one lookup (each takes about 1.2 s against tansu).
pub const MAX_AGE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Cache {
    /// When the last lookup ended, and the partitions it asked for.
    at: Option<Instant>,
    asked: BTreeSet<TopicPartition>,
    values: HashMap<TopicPartition, i64>,
    /// Why the last lookup failed, if it did.
    failed: Option<String>,
}

/// The watermark lookups of one broker.
pub struct Watermarks {
    brokers: String,
    extra: BTreeMap<String, String>,
    cache: tokio::sync::Mutex<Cache>,
}

impl std::fmt::Debug for Watermarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watermarks")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl Watermarks {
    /// Lookups against `brokers` with the `[kafka]` properties `extra`.
    pub fn new(brokers: &str, extra: &BTreeMap<String, String>) -> Self {
        Watermarks {
            brokers: brokers.to_string(),
            extra: extra.clone(),
            cache: Default::default(),
        }
    }

    /// The high watermark of each of `wanted` that the broker reported, at most [`MAX_AGE`] old.
    pub async fn get(
        &self,
        wanted: &[TopicPartition],
        timeout: Duration,
    ) -> Result<HashMap<TopicPartition, i64>, SourceError> {
        self.get_with(wanted, MAX_AGE, |tps| async move {
            high_watermarks(&self.brokers, &self.extra, &tps, timeout).await
        })
        .await
    }

    async fn get_with<F, Fut>(
        &self,
        wanted: &[TopicPartition],
        max_age: Duration,
        lookup: F,
    ) -> Result<HashMap<TopicPartition, i64>, SourceError>
    where
        F: FnOnce(Vec<TopicPartition>) -> Fut,
        Fut: Future<Output = Result<HashMap<TopicPartition, i64>, SourceError>>,
    {
        // One lookup at a time: the queries that waited read its result.
        let mut cache = self.cache.lock().await;
        let fresh = cache.at.is_some_and(|t| t.elapsed() < max_age)
            && wanted.iter().all(|tp| cache.asked.contains(tp));
        if !fresh {
            // With the partitions asked for last time too, so that queries asking for
            // different ones share one lookup instead of taking turns.
            let recent = cache.at.is_some_and(|t| t.elapsed() < 10 * max_age);
            let mut ask: BTreeSet<TopicPartition> = if recent {
                std::mem::take(&mut cache.asked)
            } else {
                BTreeSet::new()
            };
            ask.extend(wanted.iter().cloned());
            let result = lookup(ask.iter().cloned().collect()).await;
            cache.at = Some(Instant::now());
            cache.asked = ask;
            match result {
                Ok(values) => (cache.values, cache.failed) = (values, None),
                Err(SourceError::Unreachable { reason, .. }) => {
                    (cache.values, cache.failed) = (HashMap::new(), Some(reason))
                }
                Err(e) => (cache.values, cache.failed) = (HashMap::new(), Some(e.to_string())),
            }
        }
        if let Some(reason) = &cache.failed {
            return Err(SourceError::Unreachable {
                brokers: self.brokers.clone(),
                reason: reason.clone(),
            });
        }
        Ok(wanted
            .iter()
            .filter_map(|tp| cache.values.get(tp).map(|v| (tp.clone(), *v)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Queries within the age share one lookup, even when they ask at once; a partition not
    /// asked before, or an older value, makes a new one; a failure is served as a failure
    /// until it is as old.
    #[tokio::test(start_paused = true)]
    async fn one_lookup_serves_every_query_within_the_age() {
        let marks = Arc::new(Watermarks::new("b:9092", &BTreeMap::new()));
        let lookups = Arc::new(AtomicUsize::new(0));
        let ask = |tps: Vec<TopicPartition>, fail: bool| {
            let (marks, lookups) = (marks.clone(), lookups.clone());
            async move {
                marks
                    .get_with(&tps, MAX_AGE, |tps| {
                        lookups.fetch_add(1, Ordering::SeqCst);
                        let out: HashMap<TopicPartition, i64> = tps
                            .iter()
                            .map(|tp| (tp.clone(), 10 + tp.1 as i64))
                            .collect();
                        async move {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            if fail {
                                Err(SourceError::Unreachable {
                                    brokers: "b:9092".into(),
                                    reason: "no answer".into(),
                                })
                            } else {
                                Ok(out)
                            }
                        }
                    })
                    .await
            }
        };
        let t0 = vec![("t".to_string(), 0)];
        let together: Vec<_> = (0..8)
            .map(|_| tokio::spawn(ask(t0.clone(), false)))
            .collect();
        for q in together {
            assert_eq!(q.await.unwrap().unwrap()[&("t".to_string(), 0)], 10);
        }
        assert_eq!(
            lookups.load(Ordering::SeqCst),
            1,
            "eight queries at once, one lookup"
        );
        ask(t0.clone(), false).await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        let both = vec![("t".to_string(), 0), ("t".to_string(), 1)];
        assert_eq!(ask(both.clone(), false).await.unwrap().len(), 2);
        assert_eq!(
            lookups.load(Ordering::SeqCst),
            2,
            "a partition not asked before"
        );
        tokio::time::sleep(MAX_AGE).await;
        assert!(ask(both.clone(), true).await.is_err());
        assert!(
            ask(both.clone(), false).await.is_err(),
            "the failure stands until it is as old"
        );
        assert_eq!(lookups.load(Ordering::SeqCst), 3);
        tokio::time::sleep(MAX_AGE).await;
        assert!(ask(both, false).await.is_ok());
        assert_eq!(lookups.load(Ordering::SeqCst), 4);
    }
}
