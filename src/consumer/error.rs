//! Why the consumer stops (`ConsumeError`), and why a record goes to the dead-letter topic
//! (`DlqReason`, the `invalidator-dlq-reason` header of DESIGN §5).

use rdkafka::error::KafkaError;

use crate::kafka::KafkaSetupError;

/// Why `consumer::run` returned an error. Each one means "exit non-zero".
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("checking the Kafka topics failed")]
    Topics(#[source] KafkaSetupError),
    #[error("creating the Kafka consumer failed")]
    Consumer(#[source] KafkaError),
    #[error("subscribing to topic {topic:?} failed")]
    Subscribe {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("creating the dead-letter producer failed")]
    Producer(#[source] KafkaError),
    #[error(transparent)]
    Redis(#[from] crate::cache::ConnectError),
    /// The dead-letter topic did not take a record: its offset was not stored, so the record
    /// is delivered again to whichever consumer owns the partition next.
    #[error(
        "writing record {source_ref} to the dead-letter topic {dlq_topic:?} failed; its offset \
         was not stored, it will be delivered again"
    )]
    DlqUnwritable {
        dlq_topic: String,
        source_ref: String,
        #[source]
        source: KafkaError,
    },
    #[error("the Kafka consumer failed")]
    Kafka(#[source] KafkaError),
    #[error("serving metrics on {addr} failed")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl ConsumeError {
    /// Whether restarting later may succeed without an operator (brokers or Redis not up
    /// yet), as opposed to configuration errors.
    pub fn is_transient(&self) -> bool {
        match self {
            ConsumeError::Topics(e) => e.is_transient(),
            ConsumeError::Redis(e) => e.is_transient(),
            ConsumeError::DlqUnwritable { .. } | ConsumeError::Kafka(_) => true,
            _ => false,
        }
    }
}

/// Why a record was dead-lettered: the value of the `invalidator-dlq-reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqReason {
    /// Not an event: not JSON, wrong types, no keys, no value.
    Decode,
    /// An event with a schema version this build does not read.
    UnsupportedVersion,
    /// A key broke the key policy.
    RejectedKey,
    /// Redis refused it for good (WRONGTYPE, NOPERM, CROSSSLOT).
    RedisPermanent,
    /// An unclassified Redis error persisted through `--max-retries` retries.
    RetriesExhausted,
}

impl DlqReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::Decode => "decode",
            DlqReason::UnsupportedVersion => "unsupported-version",
            DlqReason::RejectedKey => "rejected-key",
            DlqReason::RedisPermanent => "redis-permanent",
            DlqReason::RetriesExhausted => "retries-exhausted",
        }
    }

    pub fn parse(s: &str) -> Option<DlqReason> {
        [
            DlqReason::Decode,
            DlqReason::UnsupportedVersion,
            DlqReason::RejectedKey,
            DlqReason::RedisPermanent,
            DlqReason::RetriesExhausted,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for DlqReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
