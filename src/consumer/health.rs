//! Readiness and counters of a running consumer, shared with whoever watches it (tests, the
//! `/readyz` endpoint), and a minimal HTTP endpoint serving `/healthz`, `/readyz`, `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Counters since start. Prometheus names are in [`Stats::render`].
#[derive(Debug, Default)]
pub struct Stats {
    /// Records taken from Kafka.
    pub records: AtomicU64,
    /// Events applied to Redis (a redelivered event counts again).
    pub events_applied: AtomicU64,
    /// Keys deleted or bumped.
    pub keys_applied: AtomicU64,
    /// Bump keys skipped because the event had been applied before (redeliveries).
    pub duplicates: AtomicU64,
    /// Records written to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Batches retried after a Redis failure.
    pub redis_retries: AtomicU64,
    /// Offsets stored (records done: applied or dead-lettered).
    pub offsets_stored: AtomicU64,
}

/// Shared view of a running consumer. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// False while Redis is failing transiently (DESIGN §3: readiness reports degraded).
    ready: Arc<AtomicBool>,
    pub stats: Arc<Stats>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Prometheus text exposition of the counters.
    pub fn render(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        for (name, help, v) in [
            (
                "invalidator_consumer_records_total",
                "Records taken from Kafka.",
                &s.records,
            ),
            (
                "invalidator_consumer_events_applied_total",
                "Events applied to Redis.",
                &s.events_applied,
            ),
            (
                "invalidator_consumer_keys_applied_total",
                "Keys deleted or bumped.",
                &s.keys_applied,
            ),
            (
                "invalidator_consumer_duplicate_keys_total",
                "Bump keys skipped as already applied.",
                &s.duplicates,
            ),
            (
                "invalidator_consumer_dead_lettered_total",
                "Records written to the dead-letter topic.",
                &s.dead_lettered,
            ),
            (
                "invalidator_consumer_redis_retries_total",
                "Batches retried after a Redis failure.",
                &s.redis_retries,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP invalidator_consumer_ready Whether Redis answers (1) or the consumer is degraded (0).\n\
             # TYPE invalidator_consumer_ready gauge\ninvalidator_consumer_ready {}\n",
            u8::from(self.is_ready())
        ));
        out
    }
}

/// Binds `addr` and serves the endpoints until `shutdown`. One request per connection.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let (mut sock, _) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "metrics accept failed");
                        continue;
                    }
                },
            };
            let health = health.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/healthz" => ("200 OK", "ok\n".to_string()),
                    "/readyz" if health.is_ready() => ("200 OK", "ready\n".to_string()),
                    "/readyz" => (
                        "503 Service Unavailable",
                        "degraded: redis unavailable\n".to_string(),
                    ),
                    "/metrics" => ("200 OK", health.render()),
                    _ => ("404 Not Found", "not found\n".to_string()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
            });
        }
    }))
}
