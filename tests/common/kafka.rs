//! Kafka helpers for tests: create a topic of the test's own, read back what was published.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use invalidator::kafka::{KafkaSettings, TopicSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
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

/// Reads `topic` from the beginning with a fresh group until `want` records arrived or
/// `timeout` passed, and returns what it read.
pub async fn read(brokers: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Record> {
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
