//! Why a `dlq` command failed: one enum for `list` and `replay`, so `main` maps both the same way.

use rdkafka::error::KafkaError;

use crate::kafka::KafkaSetupError;

/// Why a `dlq` command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The filters (or other flags) can never select anything, or are malformed.
    #[error("{0}")]
    InvalidArgs(String),
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("creating the Kafka {what} failed")]
    Client {
        what: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("assigning the partitions of {topic} failed")]
    Assign {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("reading {topic} failed")]
    Read {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "reading {topic} stalled: partition {partition} is at offset {position} and did not \
         reach its end offset {end} (as of the start) within {idle_secs}s"
    )]
    Stalled {
        topic: String,
        partition: i32,
        position: i64,
        end: i64,
        idle_secs: u64,
    },
    #[error(
        "re-publishing dead-letter record {record} to topic {target:?} failed; nothing from \
         this record on was committed, so running the same command again retries it"
    )]
    Delivery {
        record: String,
        target: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "committing the progress of replay group {group:?} failed; the records of the last \
         chunk may be replayed again by the next run"
    )]
    Commit {
        group: String,
        #[source]
        source: KafkaError,
    },
    #[error("writing the output failed")]
    Output(#[source] std::io::Error),
}
