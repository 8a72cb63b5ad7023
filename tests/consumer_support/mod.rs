//! Helpers for the consumer tests: Kafka topics of the test's own, producing events, reading
//! the DLQ and committed offsets, starting the consumer in-process, and private
//! `redis-server` processes for outage and cluster tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use invalidator::cache::RedisSettings;
use invalidator::consumer::{ConsumeError, ConsumerSettings, Health};
use invalidator::kafka::{KafkaSettings, TopicSpec};
use invalidator::redact::Redacted;
use invalidator::wire::{Event, Op};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Kafka settings for tests: tansu holds every fetch for `fetch.wait.max.ms`, so keep it short.
pub fn kafka(brokers: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: brokers.to_string(),
        options: vec![
            ("fetch.wait.max.ms".into(), "5".into()),
            ("auto.commit.interval.ms".into(), "200".into()),
        ],
    }
}

/// Creates `topic` and `topic.dlq` with `partitions` partitions.
pub async fn create_topics(brokers: &str, topic: &str, partitions: i32) {
    kafka(brokers)
        .ensure_topics(
            &[topic.to_string(), format!("{topic}.dlq")],
            Some(TopicSpec {
                partitions,
                replication_factor: 1,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("creating topics {topic}: {e}"));
}

/// Consumer settings with fast retries, for a topic and group of the test's own.
pub fn settings(brokers: &str, redis: &str, topic: &str, group: &str) -> ConsumerSettings {
    let mut s = ConsumerSettings::new(
        kafka(brokers),
        RedisSettings {
            url: Redacted::new(redis),
            response_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            ..RedisSettings::default()
        },
        topic,
        group,
    );
    s.retry_min_delay = Duration::from_millis(20);
    s.retry_max_delay = Duration::from_millis(300);
    s.max_retries = 2;
    s.delivery_timeout = Duration::from_secs(10);
    s
}

/// A running in-process consumer.
pub struct Running {
    pub health: Health,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), ConsumeError>>,
}

impl Running {
    /// Cancels and waits for the consumer to return.
    pub async fn stop(self) -> Result<(), ConsumeError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the consumer stops within 60s")
            .expect("the consumer task does not panic")
    }
}

pub fn start(settings: ConsumerSettings) -> Running {
    // RUST_LOG=invalidator=debug shows the consumer's log in a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(invalidator::consumer::run(
        settings,
        health.clone(),
        shutdown.clone(),
    ));
    Running {
        health,
        shutdown,
        handle,
    }
}

pub fn event(op: Op, keys: &[&str]) -> Event {
    Event {
        v: 1,
        event_id: Uuid::new_v4(),
        op,
        keys: keys.iter().map(|k| k.to_string()).collect(),
        created_at: Utc::now(),
        source: Some("test".into()),
    }
}

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "10485760")
        .set("linger.ms", "0")
        .create()
        .expect("creating a test producer")
}

/// Produces one record and waits for its acknowledgement; returns (partition, offset).
pub async fn produce(
    p: &FutureProducer,
    topic: &str,
    key: &str,
    value: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> (i32, i64) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key).headers(h);
    if let Some(v) = value {
        record = record.payload(v);
    }
    p.send(record, Duration::from_secs(30))
        .await
        .map(|d| (d.partition, d.offset))
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"))
}

pub async fn produce_event(p: &FutureProducer, topic: &str, e: &Event) -> (i32, i64) {
    let id = e.event_id.to_string();
    produce(
        p,
        topic,
        &e.keys[0],
        Some(&e.encode()),
        &[
            ("content-type", "application/json"),
            ("invalidator-event-id", &id),
        ],
    )
    .await
}

/// Runs blocking librdkafka calls off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Sum of the high watermarks of a topic's partitions (records ever written).
pub async fn record_count(brokers: &str, topic: &str) -> i64 {
    crate::common::kafka::record_count(brokers, topic).await
}

/// Every record of a topic, read from the beginning of each partition (no group).
pub async fn read_all(brokers: &str, topic: &str) -> Vec<OwnedMessage> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "unused")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "5")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        let mut want = 0;
        for (partition, high) in crate::common::kafka::high_watermarks(&c, &topic) {
            want += high;
            tpl.add_partition_offset(&topic, partition, Offset::Beginning)
                .expect("tpl");
        }
        c.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while (out.len() as i64) < want && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                out.push(m.detach());
            }
        }
        drop(tpl);
        out.sort_by_key(|m| (m.partition(), m.offset()));
        out
    })
    .await
}

/// The group's committed offsets on `topic`, by partition (absent: nothing committed).
pub async fn committed(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> HashMap<i32, i64> {
    let (brokers, group, topic) = (brokers.to_string(), group.to_string(), topic.to_string());
    blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        let mut out = HashMap::new();
        for e in got.elements() {
            if let Offset::Offset(o) = e.offset() {
                out.insert(e.partition(), o);
            }
        }
        drop(got);
        out
    })
    .await
}

/// The value of a header of a record.
pub fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

pub async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    crate::common::redis_conn(url).await
}

/// A free TCP port on loopback (bound, then released).
/// Every test that includes this module includes `common` too.
pub use crate::common::free_port;

/// A free port whose cluster bus port (+10000) is free too.
pub fn free_cluster_port() -> u16 {
    // Both ports below the ephemeral range, as `free_port` explains.
    let below = crate::common::ephemeral_start().saturating_sub(10000);
    loop {
        let port = crate::common::free_port_below(below);
        if std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// A `redis-server` child process of the test's own, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    pub dir: std::path::PathBuf,
}

impl RedisServer {
    pub fn start(extra: &[&str]) -> RedisServer {
        Self::start_on(free_port(), extra)
    }

    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("inv-redis-{port}-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut s = RedisServer {
            port,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ok = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "ping"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
