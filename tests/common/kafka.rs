//! Kafka helpers for tests: create a topic of the test's own, read back what was published.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use invalidator::kafka::{KafkaSettings, TopicSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};

/// The broker the suite runs against (tansu on loopback by default).
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The fast (memory-engine) broker, for volume tests that never resume a consumer group.
pub fn fast_brokers() -> String {
    std::env::var("KAFKA_FAST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9093".into())
}

pub fn settings(brokers: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: brokers.to_string(),
        options: vec![],
    }
}

/// Creates `topic` (and waits until it is visible).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    settings(brokers)
        .ensure_topics(
            &[topic.to_string()],
            Some(TopicSpec {
                partitions,
                replication_factor: 1,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));
}

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

/// Each partition of `topic` with its high watermark (blocking).
pub fn high_watermarks(c: &BaseConsumer, topic: &str) -> Vec<(i32, i64)> {
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| {
            let (_, high) = c
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            (p.id(), high)
        })
        .collect()
}

/// Sum of the high watermarks of a topic's partitions: the records ever written to it.
pub async fn record_count(brokers: &str, topic: &str) -> i64 {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("consumer");
        high_watermarks(&c, &topic)
            .iter()
            .map(|(_, high)| high)
            .sum()
    })
    .await
    .expect("blocking task")
}

/// Reads `topic` from the beginning with a fresh group until `want` records arrived, and
/// then on to every record the topic holds by then (so a duplicate, which at-least-once
/// allows, cannot push a record the test looks for past the end), or until `timeout`
/// passed; returns what it read.
pub async fn read(brokers: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Record> {
    let mut records = read_until(brokers, topic, want, timeout).await;
    let held = usize::try_from(record_count(brokers, topic).await).unwrap_or(0);
    if held > records.len() {
        // A fresh group reads the same records again from the beginning: simpler than
        // resuming, and these topics are small.
        records = read_until(brokers, topic, held, timeout).await;
    }
    records
}

async fn read_until(brokers: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Record> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", super::unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // tansu holds a fetch for the whole fetch.wait.max.ms even when data is there.
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("creating a test consumer");
    consumer.subscribe(&[topic]).expect("subscribing");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left.min(Duration::from_millis(500)), consumer.recv()).await {
            Ok(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(hs) = m.headers() {
                    for h in hs.iter() {
                        headers.insert(
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                    partition: m.partition(),
                    offset: m.offset(),
                });
            }
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => {}
        }
    }
    out
}
