//! The server's limits: the `Host` a request may name, and how many queries run at once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{error, ServerConfig};

/// How long a query waits for a turn before it gets a 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);

/// The seconds a 503 asks the client to wait before it retries.
const RETRY_AFTER_SECONDS: u64 = 2;

/// The name in a `Host` header: lowercase, without its port, an IPv6 address without brackets.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
        _ => host,
    }
}

/// Whether a request naming `host` may reach the API: an IP address, `localhost`, or a name
/// in `allowed` (`"*"`: any). A page served from another site can reach this server only
/// through a DNS name of its own that it points here (DNS rebinding), and the browser then
/// sends that name; it cannot be served from an address it does not own, so an IP address is
/// safe whatever the server listens on.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host);
    name == "localhost"
        || name.parse::<std::net::IpAddr>().is_ok()
        || allowed.iter().any(|a| a == "*" || host_name(a) == name)
}

/// [`host_allowed`], first of all the checks: 421 for another name. A request without a
/// `Host` (HTTP/1.0) passes; browsers always send one.
pub async fn check_host(
    State(cfg): State<Arc<ServerConfig>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(host) = req.headers().get(header::HOST) {
        let host = host.to_str().unwrap_or("(not text)");
        if !host_allowed(host, &cfg.allowed_hosts) {
            let message = format!(
                "this server does not answer to the host name `{}`: add it to allowed_hosts (LAKEPIPE_ALLOWED_HOSTS) if clients reach the server by it",
                host_name(host)
            );
            return error(StatusCode::MISDIRECTED_REQUEST, message);
        }
    }
    next.run(req).await
}

/// The queries that may run at once: one permit each.
#[derive(Debug, Clone)]
pub struct QueryGate {
    permits: Arc<Semaphore>,
    size: usize,
}

impl QueryGate {
    /// A gate for `size` queries at once (0: the number of cores).
    pub fn new(size: usize) -> Self {
        let size = if size == 0 { cores() } else { size };
        QueryGate {
            permits: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// How many queries run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A turn, waiting up to [`QUEUE_WAIT`]; else the 503 to send, with `Retry-After`.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Response> {
        match tokio::time::timeout(QUEUE_WAIT, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                let message = format!(
                    "the server is running its limit of {} queries at once (max_concurrent_queries) and none finished within {:?}; retry after {RETRY_AFTER_SECONDS} s",
                    self.size, QUEUE_WAIT
                );
                let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, message);
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
                Err(resp)
            }
        }
    }
}

/// The runtime that queries run on, apart from the one that serves HTTP: an operator that
/// computes for seconds without yielding holds one of its workers, never the workers that
/// answer health probes, time queries out and refuse the ones beyond the limit.
pub fn query_runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    static FALLBACK: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    let built = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores())
            .thread_name("lakepipe-query")
            .thread_stack_size(crate::query::STACK_SIZE)
            .enable_all()
            .build()
            .map_err(|e| tracing::error!(error = %e, "cannot start the query runtime; queries share the server's"))
            .ok()
    });
    match built {
        Some(rt) => rt.handle(),
        None => FALLBACK.get_or_init(tokio::runtime::Handle::current),
    }
}

/// Aborts a task when dropped: a query whose client is gone, or that ran out of time.
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IP addresses and `localhost` on any port, and the names allowed; no other name, however
    /// it resembles them.
    #[test]
    fn hosts() {
        let none: &[String] = &[];
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "[fe80::1]",
            "LOCALHOST:1",
        ] {
            assert!(host_allowed(ok, none), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "lake.internal",
            "",
        ] {
            assert!(!host_allowed(bad, none), "{bad}");
        }
        let allowed = vec!["Lake.Internal".to_string()];
        assert!(host_allowed("lake.internal:8080", &allowed));
        assert!(!host_allowed("other.internal", &allowed));
        assert!(host_allowed("anything.example", &["*".to_string()]));
    }

    /// Beyond its size, a query waits for a turn and gets one when a query ends; with none
    /// ending, a 503 with `Retry-After` after the wait.
    #[tokio::test(start_paused = true)]
    async fn a_full_gate_answers_503_after_the_wait() {
        let gate = QueryGate::new(2);
        let a = gate.enter().await.unwrap();
        let _b = gate.enter().await.unwrap();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter().await.ok() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(a);
        let _c = waiting
            .await
            .unwrap()
            .expect("a query that ended gives its turn to a waiting one");
        let started = tokio::time::Instant::now();
        let refused = gate.enter().await.unwrap_err();
        assert_eq!(started.elapsed(), QUEUE_WAIT);
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "2");
    }
}
