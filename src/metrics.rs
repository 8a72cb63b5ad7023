//! What the daemons count and how they are watched: the Prometheus metrics of the relay and
//! the consumer, their readiness, and the small HTTP endpoint serving `/metrics`, `/healthz`
//! and `/readyz`.
//!
//! Every metric name is a constant below, with its meaning; README's metrics table lists the
//! same. Names follow Prometheus conventions (`invalidator_<thing>_<unit>`, counters end in
//! `_total`) and no label has high cardinality (never a key, an event id or an offset).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

// Relay.
/// Records the brokers acknowledged in committed batches.
pub const RELAY_PUBLISHED: &str = "invalidator_relay_published_total";
/// Rows moved to `invalidator.outbox_dead` (they can never be published).
pub const RELAY_DEAD: &str = "invalidator_relay_dead_total";
/// Batches committed (claimed, published, acknowledged, deleted).
pub const RELAY_BATCHES: &str = "invalidator_relay_batches_total";
/// Batches rolled back, by the dependency that failed (`postgres`, `kafka`).
pub const RELAY_BATCH_FAILURES: &str = "invalidator_relay_batch_failures_total";
/// Claim → COMMIT of a non-empty batch.
pub const RELAY_BATCH_DURATION: &str = "invalidator_relay_batch_duration_seconds";
/// The claim statement of every batch (lock and delete up to `--batch-size` rows), empty
/// claims included. Claims take turns, so its sum over a drain is the relay's serial part.
pub const RELAY_CLAIM_DURATION: &str = "invalidator_relay_claim_duration_seconds";
/// Outbox row `created_at` → acknowledged by Kafka and committed.
pub const RELAY_LATENCY: &str = "invalidator_relay_latency_seconds";
/// Rows in `invalidator.outbox`, sampled every [`BACKLOG_SAMPLE`].
pub const OUTBOX_BACKLOG: &str = "invalidator_outbox_backlog_rows";
/// Age of the oldest row in `invalidator.outbox` (0 when empty), sampled with the backlog.
pub const OUTBOX_OLDEST_AGE: &str = "invalidator_outbox_oldest_age_seconds";
/// 1 while PostgreSQL and Kafka answer the relay, 0 while it is retrying.
pub const RELAY_READY: &str = "invalidator_relay_ready";

// Consumer.
/// Records taken from Kafka.
pub const CONSUMER_RECORDS: &str = "invalidator_consumer_records_total";
/// Events applied to Redis (a redelivered event counts again).
pub const CONSUMER_APPLIED: &str = "invalidator_consumer_events_applied_total";
/// Keys deleted or bumped.
pub const CONSUMER_KEYS: &str = "invalidator_consumer_keys_applied_total";
/// Bump keys skipped because the event had been applied before (redeliveries).
pub const CONSUMER_DUPLICATES: &str = "invalidator_consumer_duplicate_keys_total";
/// Records written to the dead-letter topic.
pub const CONSUMER_DEAD_LETTERED: &str = "invalidator_consumer_dead_lettered_total";
/// Batches retried after a Redis failure.
pub const CONSUMER_REDIS_RETRIES: &str = "invalidator_consumer_redis_retries_total";
/// Offsets stored (records done: applied or dead-lettered).
pub const CONSUMER_OFFSETS: &str = "invalidator_consumer_offsets_stored_total";
/// Poll → offsets stored, of one batch.
pub const CONSUMER_BATCH_DURATION: &str = "invalidator_consumer_batch_duration_seconds";
/// Outbox row `created_at` (the database's clock) → applied in Redis (this host's clock).
pub const CONSUMER_LATENCY: &str = "invalidator_consumer_end_to_end_latency_seconds";
/// 1 while Redis answers, 0 while the consumer is degraded.
pub const CONSUMER_READY: &str = "invalidator_consumer_ready";

/// How often the relay samples the outbox backlog: `count(*)` walks the table, so not on
/// every batch.
pub const BACKLOG_SAMPLE: Duration = Duration::from_secs(5);

/// Buckets for durations: 1 ms doubling to ~33 s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The dependency a relay batch failed on (the only label we use).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabel {
    pub dependency: &'static str,
}

/// Something with metrics to register.
pub trait Register {
    /// Registers every metric under its documented name.
    fn register(&self, registry: &mut Registry);
}

/// The relay's metrics.
#[derive(Debug)]
pub struct RelayMetrics {
    pub published: Counter,
    pub dead: Counter,
    pub batches: Counter,
    pub batch_failures: Family<DependencyLabel, Counter>,
    pub batch_duration: Histogram,
    pub claim_duration: Histogram,
    pub latency: Histogram,
    pub backlog: Gauge,
    pub oldest_age: Gauge<f64, AtomicU64>,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        RelayMetrics {
            published: Counter::default(),
            dead: Counter::default(),
            batches: Counter::default(),
            batch_failures: Family::default(),
            batch_duration: duration_histogram(),
            claim_duration: duration_histogram(),
            latency: duration_histogram(),
            backlog: Gauge::default(),
            oldest_age: Gauge::default(),
        }
    }
}

impl RelayMetrics {
    pub fn failed(&self, dependency: &'static str) {
        self.batch_failures
            .get_or_create(&DependencyLabel { dependency })
            .inc();
    }
}

impl Register for RelayMetrics {
    fn register(&self, r: &mut Registry) {
        counter(r, RELAY_PUBLISHED, &self.published);
        counter(r, RELAY_DEAD, &self.dead);
        counter(r, RELAY_BATCHES, &self.batches);
        r.register(
            strip_total(RELAY_BATCH_FAILURES),
            help(RELAY_BATCH_FAILURES),
            self.batch_failures.clone(),
        );
        r.register(
            RELAY_BATCH_DURATION,
            help(RELAY_BATCH_DURATION),
            self.batch_duration.clone(),
        );
        r.register(
            RELAY_CLAIM_DURATION,
            help(RELAY_CLAIM_DURATION),
            self.claim_duration.clone(),
        );
        r.register(RELAY_LATENCY, help(RELAY_LATENCY), self.latency.clone());
        r.register(OUTBOX_BACKLOG, help(OUTBOX_BACKLOG), self.backlog.clone());
        r.register(
            OUTBOX_OLDEST_AGE,
            help(OUTBOX_OLDEST_AGE),
            self.oldest_age.clone(),
        );
    }
}

/// The consumer's metrics.
#[derive(Debug)]
pub struct ConsumerMetrics {
    pub records: Counter,
    pub events_applied: Counter,
    pub keys_applied: Counter,
    pub duplicates: Counter,
    pub dead_lettered: Counter,
    pub redis_retries: Counter,
    pub offsets_stored: Counter,
    pub batch_duration: Histogram,
    pub latency: Histogram,
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        ConsumerMetrics {
            records: Counter::default(),
            events_applied: Counter::default(),
            keys_applied: Counter::default(),
            duplicates: Counter::default(),
            dead_lettered: Counter::default(),
            redis_retries: Counter::default(),
            offsets_stored: Counter::default(),
            batch_duration: duration_histogram(),
            latency: duration_histogram(),
        }
    }
}

impl Register for ConsumerMetrics {
    fn register(&self, r: &mut Registry) {
        counter(r, CONSUMER_RECORDS, &self.records);
        counter(r, CONSUMER_APPLIED, &self.events_applied);
        counter(r, CONSUMER_KEYS, &self.keys_applied);
        counter(r, CONSUMER_DUPLICATES, &self.duplicates);
        counter(r, CONSUMER_DEAD_LETTERED, &self.dead_lettered);
        counter(r, CONSUMER_REDIS_RETRIES, &self.redis_retries);
        counter(r, CONSUMER_OFFSETS, &self.offsets_stored);
        r.register(
            CONSUMER_BATCH_DURATION,
            help(CONSUMER_BATCH_DURATION),
            self.batch_duration.clone(),
        );
        r.register(
            CONSUMER_LATENCY,
            help(CONSUMER_LATENCY),
            self.latency.clone(),
        );
    }
}

/// Seconds from `created_at` to now; negative skew between clocks counts as 0.
pub fn seconds_since(created_at: DateTime<Utc>) -> f64 {
    seconds_between_micros(created_at.timestamp_micros(), Utc::now().timestamp_micros())
}

/// Seconds from `created_at` to `now`, both in microseconds since the Unix epoch (the relay
/// reads the clock once for a whole batch); negative skew counts as 0.
pub fn seconds_between_micros(created_at: i64, now: i64) -> f64 {
    now.saturating_sub(created_at).max(0) as f64 / 1e6
}

/// prometheus-client appends `_total` to counter names itself.
fn strip_total(name: &'static str) -> &'static str {
    name.strip_suffix("_total").unwrap_or(name)
}

fn counter(r: &mut Registry, name: &'static str, c: &Counter) {
    r.register(strip_total(name), help(name), c.clone());
}

/// The HELP text of a metric: the same sentence as its constant's doc comment.
fn help(name: &str) -> &'static str {
    match name {
        RELAY_PUBLISHED => "Records the brokers acknowledged in committed batches.",
        RELAY_DEAD => "Rows moved to invalidator.outbox_dead.",
        RELAY_BATCHES => "Batches committed.",
        RELAY_BATCH_FAILURES => "Batches rolled back, by the dependency that failed.",
        RELAY_BATCH_DURATION => "Claim to COMMIT of a non-empty batch.",
        RELAY_CLAIM_DURATION => "The claim statement of each batch, empty claims included.",
        RELAY_LATENCY => "Outbox row created_at to acknowledged by Kafka and committed.",
        OUTBOX_BACKLOG => "Rows in invalidator.outbox (sampled).",
        OUTBOX_OLDEST_AGE => "Age of the oldest row in invalidator.outbox (sampled).",
        RELAY_READY => "1 while PostgreSQL and Kafka answer the relay.",
        CONSUMER_RECORDS => "Records taken from Kafka.",
        CONSUMER_APPLIED => "Events applied to Redis.",
        CONSUMER_KEYS => "Keys deleted or bumped.",
        CONSUMER_DUPLICATES => "Bump keys skipped as already applied.",
        CONSUMER_DEAD_LETTERED => "Records written to the dead-letter topic.",
        CONSUMER_REDIS_RETRIES => "Batches retried after a Redis failure.",
        CONSUMER_OFFSETS => "Offsets stored (records applied or dead-lettered).",
        CONSUMER_BATCH_DURATION => "Poll to offsets stored, of one batch.",
        CONSUMER_LATENCY => "Outbox row created_at to applied in Redis.",
        CONSUMER_READY => "1 while Redis answers the consumer.",
        _ => "",
    }
}

/// Readiness and metrics of one daemon, shared with whoever watches it (tests, the HTTP
/// endpoint). Cheap to clone.
#[derive(Debug)]
pub struct Health<M> {
    ready: Arc<AtomicBool>,
    pub stats: Arc<M>,
}

impl<M> Clone for Health<M> {
    fn clone(&self) -> Self {
        Health {
            ready: self.ready.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<M: Default> Default for Health<M> {
    fn default() -> Self {
        Health {
            ready: Arc::default(),
            stats: Arc::default(),
        }
    }
}

impl<M: Default> Health<M> {
    /// Not ready until the daemon has reached its dependencies.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<M> Health<M> {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// What the HTTP endpoint serves: a registry and the readiness of each daemon in the process.
#[derive(Default)]
pub struct Endpoint {
    registry: Registry,
    ready: Vec<(&'static str, Arc<AtomicBool>)>,
}

impl Endpoint {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a daemon: its metrics, and its readiness as `/readyz` and as gauge `ready_metric`.
    pub fn add<M: Register>(
        &mut self,
        name: &'static str,
        ready_metric: &'static str,
        h: &Health<M>,
    ) {
        h.stats.register(&mut self.registry);
        let flag = h.ready.clone();
        let gauge: Gauge = Gauge::default();
        self.registry.register(
            ready_metric,
            help(ready_metric),
            ReadyGauge(flag.clone(), gauge),
        );
        self.ready.push((name, flag));
    }

    /// The names of the daemons that are not ready.
    pub fn not_ready(&self) -> Vec<&'static str> {
        self.ready
            .iter()
            .filter(|(_, f)| !f.load(Ordering::Relaxed))
            .map(|(n, _)| *n)
            .collect()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Status and body of a request for `path`.
    fn respond(&self, path: &str) -> (&'static str, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        match path {
            "/healthz" => ("200 OK", TEXT, "ok\n".into()),
            "/readyz" => match self.not_ready() {
                down if down.is_empty() => ("200 OK", TEXT, "ready\n".into()),
                down => (
                    "503 Service Unavailable",
                    TEXT,
                    format!(
                        "degraded: {} (its dependencies do not answer; see the log)\n",
                        down.join(", ")
                    ),
                ),
            },
            "/metrics" => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.render(),
            ),
            _ => (
                "404 Not Found",
                TEXT,
                "not found: try /metrics, /healthz, /readyz\n".into(),
            ),
        }
    }
}

/// A gauge whose value is read from a readiness flag at scrape time.
#[derive(Debug)]
struct ReadyGauge(Arc<AtomicBool>, Gauge);

impl prometheus_client::encoding::EncodeMetric for ReadyGauge {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.1.set(i64::from(self.0.load(Ordering::Relaxed)));
        self.1.encode(encoder)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

/// Binds `addr` and serves the endpoint until `shutdown`. One request per connection.
/// Binding fails at start-up (address in use, not permitted), so a typo is not silent.
pub async fn serve(
    addr: SocketAddr,
    endpoint: Endpoint,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let endpoint = Arc::new(endpoint);
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
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
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let read = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await;
                let n = match read {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                let (status, content_type, body) = endpoint.respond(path);
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// Every documented name is exposed, counters keep their `_total`, and readiness shows.
    fn renders_documented_names() {
        let relay: Health<RelayMetrics> = Health::new();
        let consumer: Health<ConsumerMetrics> = Health::new();
        let mut e = Endpoint::new();
        e.add("relay", RELAY_READY, &relay);
        e.add("consumer", CONSUMER_READY, &consumer);
        relay.stats.published.inc_by(3);
        relay.stats.failed("kafka");
        relay.stats.latency.observe(0.02);
        consumer.stats.latency.observe(0.5);
        consumer.set_ready(true);
        let text = e.render();
        for name in [
            RELAY_PUBLISHED,
            RELAY_DEAD,
            RELAY_BATCHES,
            RELAY_BATCH_FAILURES,
            RELAY_BATCH_DURATION,
            RELAY_LATENCY,
            OUTBOX_BACKLOG,
            OUTBOX_OLDEST_AGE,
            RELAY_READY,
            CONSUMER_RECORDS,
            CONSUMER_APPLIED,
            CONSUMER_KEYS,
            CONSUMER_DUPLICATES,
            CONSUMER_DEAD_LETTERED,
            CONSUMER_REDIS_RETRIES,
            CONSUMER_OFFSETS,
            CONSUMER_BATCH_DURATION,
            CONSUMER_LATENCY,
            CONSUMER_READY,
        ] {
            assert!(
                text.contains(&format!("\n{name}")),
                "{name} missing in:\n{text}"
            );
            assert!(!help(name).is_empty(), "{name} has no help");
        }
        assert!(
            text.contains("invalidator_relay_published_total 3"),
            "{text}"
        );
        assert!(
            text.contains("invalidator_relay_batch_failures_total{dependency=\"kafka\"} 1"),
            "{text}"
        );
        assert!(text.contains("invalidator_relay_ready 0"), "{text}");
        assert!(text.contains("invalidator_consumer_ready 1"), "{text}");
        assert!(!text.contains("_total_total"), "{text}");
        assert_eq!(e.not_ready(), ["relay"]);
        assert_eq!(e.respond("/readyz").0, "503 Service Unavailable");
        relay.set_ready(true);
        assert_eq!(e.respond("/readyz").0, "200 OK");
    }
}
