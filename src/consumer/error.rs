//! Why the consumer stops (`ConsumeError`). Why a record goes to the dead-letter topic is
//! [`DlqReason`], which lives in `wire` because the DLQ tools read it too.

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

pub use crate::wire::DlqReason;
