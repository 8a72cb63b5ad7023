//! Reading the dead-letter topic as a snapshot: from given start offsets up to the end
//! offsets as they were when the command started, by assigning partitions (no group join,
//! no rebalance). Records written after the start are left for the next run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::kafka::{KafkaSettings, PartitionOffsets};

use super::error::DlqError;

/// How long the reader may see nothing while a partition has not reached its end offset.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One partition's range to read: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

impl Range {
    /// From `from` (clamped into what is retained) to the partition's end at start-up.
    pub fn new(p: &PartitionOffsets, from: Option<i64>) -> Range {
        let start = from.unwrap_or(p.low).max(p.low).min(p.high);
        Range {
            partition: p.partition,
            start,
            end: p.high,
        }
    }

    pub fn len(&self) -> u64 {
        (self.end - self.start).max(0) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The librdkafka options both commands need: no auto-commit, no offset store, and a short
/// `fetch.wait.max.ms` (the end is known, so waiting for more data only slows the last
/// fetch; tansu holds every fetch for the full wait). `-X` may override the latter.
pub fn consumer_config(kafka: &KafkaSettings, group: Option<&str>) -> ClientConfig {
    let mut config = kafka.client_config(&[("fetch.wait.max.ms", "10")]);
    // A group id is needed to commit (replay), never to join: partitions are assigned.
    // `list` gets one too because librdkafka's consumer requires it; it never commits.
    config.set("group.id", group.unwrap_or("invalidator.dlq-list"));
    config.set("enable.auto.commit", "false");
    config.set("enable.auto.offset.store", "false");
    config.set("allow.auto.create.topics", "false");
    config
}

/// A snapshot reader over the ranges of one topic.
pub struct SnapshotReader {
    consumer: Arc<StreamConsumer>,
    topic: String,
    /// Partitions not finished yet: partition → (next offset to read, end).
    pending: BTreeMap<i32, (i64, i64)>,
}

impl SnapshotReader {
    /// Assigns the non-empty ranges at their start offsets.
    pub fn open(config: &ClientConfig, topic: &str, ranges: &[Range]) -> Result<Self, DlqError> {
        let consumer: StreamConsumer = config.create().map_err(|source| DlqError::Client {
            what: "consumer",
            source,
        })?;
        let consumer = Arc::new(consumer);
        let pending: BTreeMap<i32, (i64, i64)> = ranges
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| (r.partition, (r.start, r.end)))
            .collect();
        if !pending.is_empty() {
            // Declared after the consumer and dropped at the end of this block, before the
            // consumer can be (librdkafka hangs when a consumer goes before its lists).
            let mut tpl = TopicPartitionList::new();
            for (p, (start, _)) in &pending {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*start))
                    .map_err(|source| DlqError::Assign {
                        topic: topic.to_string(),
                        source,
                    })?;
            }
            consumer.assign(&tpl).map_err(|source| DlqError::Assign {
                topic: topic.to_string(),
                source,
            })?;
        }
        Ok(SnapshotReader {
            consumer,
            topic: topic.to_string(),
            pending,
        })
    }

    /// The next record of the snapshot, or `None` once every partition reached its end.
    pub async fn next(&mut self) -> Result<Option<OwnedMessage>, DlqError> {
        let idle_since = Instant::now();
        loop {
            if self.pending.is_empty() {
                return Ok(None);
            }
            let got = tokio::time::timeout(Duration::from_millis(500), self.consumer.recv()).await;
            match got {
                Ok(Ok(m)) => {
                    let p = m.partition();
                    let Some((next, end)) = self.pending.get_mut(&p) else {
                        continue; // past this partition's end: not part of the snapshot
                    };
                    if m.offset() < *next {
                        continue; // a re-fetch after an internal retry
                    }
                    if m.offset() >= *end {
                        self.pending.remove(&p);
                        continue;
                    }
                    *next = m.offset() + 1;
                    if *next >= *end {
                        self.pending.remove(&p);
                    }
                    return Ok(Some(m.detach()));
                }
                Ok(Err(source)) => {
                    return Err(DlqError::Read {
                        topic: self.topic.clone(),
                        source,
                    })
                }
                Err(_) => {
                    // Nothing came: a partition whose last offsets are not records (e.g.
                    // transaction markers) is finished when the position reached its end.
                    self.drop_finished_by_position();
                    if !self.pending.is_empty() && idle_since.elapsed() > STALL_TIMEOUT {
                        let (partition, (position, end)) = self
                            .pending
                            .iter()
                            .next()
                            .map(|(p, r)| (*p, *r))
                            .expect("pending is not empty");
                        return Err(DlqError::Stalled {
                            topic: self.topic.clone(),
                            partition,
                            position,
                            end,
                            idle_secs: STALL_TIMEOUT.as_secs(),
                        });
                    }
                }
            }
        }
    }

    fn drop_finished_by_position(&mut self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for e in positions.elements() {
            if let (Offset::Offset(o), Some((_, end))) =
                (e.offset(), self.pending.get(&e.partition()))
            {
                if o >= *end {
                    self.pending.remove(&e.partition());
                }
            }
        }
    }

    /// Commits `offsets` (partition → next offset to read) for the consumer's group and
    /// waits for the broker's answer.
    pub async fn commit(&self, group: &str, offsets: &BTreeMap<i32, i64>) -> Result<(), DlqError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        let offsets = offsets.clone();
        let result = tokio::task::spawn_blocking(move || {
            // Declared after the consumer clone, so dropped before it.
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &offsets {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(*o))?;
            }
            consumer.commit(&tpl, CommitMode::Sync)
        })
        .await
        .expect("the commit task does not panic");
        result.map_err(|source| DlqError::Commit {
            group: group.to_string(),
            source,
        })
    }
}
