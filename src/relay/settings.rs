//! The relay's validated settings, built once from the command line.

use std::time::Duration;

use crate::cli::RelayArgs;
use crate::kafka::{self, KafkaSettings, TopicSpec};
use crate::redact::Redacted;

/// Test hooks that make the process die at a chosen point, to prove what survives a crash.
/// Set through the environment only (`INVALIDATOR_FAILPOINT`), never a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// Abort after every delivery was acknowledged and before COMMIT.
    RelayBeforeCommit,
}

#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub database_url: Redacted,
    pub kafka: KafkaSettings,
    /// Topic for rows whose `topic` is NULL.
    pub topic: String,
    pub batch_size: i64,
    /// Wait between empty polls.
    pub poll_interval: Duration,
    /// How often a claim scans the outbox from the start (see `Cursor`).
    pub sweep_interval: Duration,
    /// librdkafka's message.timeout.ms: how long a batch waits for a broker before it rolls back.
    pub delivery_timeout: Duration,
    /// `source` field of published events; None = the database name.
    pub source: Option<String>,
    /// Create missing topics at start-up.
    pub create_topics: Option<TopicSpec>,
    /// LISTEN for the opt-in trigger's notifications.
    pub listen: bool,
    /// Cap of the retry backoff.
    pub max_backoff: Duration,
    /// Batches in flight while there is a backlog (`--in-flight`).
    pub in_flight: usize,
    pub failpoint: Option<Failpoint>,
}

/// A bad combination of flags, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("--topic {0:?} is not a valid Kafka topic name (1-249 of [a-zA-Z0-9._-])")]
    Topic(String),
    #[error("--delivery-timeout must be at least 1s, got {0:?}")]
    DeliveryTimeout(Duration),
    #[error("INVALIDATOR_FAILPOINT={0:?} is unknown (known: relay-before-commit)")]
    Failpoint(String),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaSetupError),
}

/// Kafka's own rule for topic names.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl TryFrom<RelayArgs> for RelaySettings {
    type Error = SettingsError;

    fn try_from(a: RelayArgs) -> Result<Self, Self::Error> {
        let kafka = KafkaSettings::from_args(&a.kafka)?;
        RelaySettings::build(a, kafka)
    }
}

impl RelaySettings {
    /// Validates everything but the brokers, which `run` may provide itself (embedded).
    pub fn build(a: RelayArgs, kafka: KafkaSettings) -> Result<Self, SettingsError> {
        if !valid_topic(&a.topic.topic) {
            return Err(SettingsError::Topic(a.topic.topic));
        }
        if a.daemon.delivery_timeout < Duration::from_secs(1) {
            return Err(SettingsError::DeliveryTimeout(a.daemon.delivery_timeout));
        }
        kafka::check_options(&kafka.options)?;
        let failpoint = match std::env::var("INVALIDATOR_FAILPOINT").ok().as_deref() {
            None | Some("") => None,
            Some("relay-before-commit") => Some(Failpoint::RelayBeforeCommit),
            Some(other) => return Err(SettingsError::Failpoint(other.to_string())),
        };
        Ok(RelaySettings {
            database_url: a.database.database_url,
            kafka,
            topic: a.topic.topic,
            batch_size: i64::from(a.daemon.batch_size),
            poll_interval: a.relay.poll_interval.max(Duration::from_millis(1)),
            sweep_interval: a.relay.sweep_interval,
            delivery_timeout: a.daemon.delivery_timeout,
            source: a.relay.source,
            create_topics: a.create.create_topics.then_some(TopicSpec {
                partitions: a.create.partitions,
                replication_factor: a.create.replication_factor,
            }),
            listen: !a.relay.no_listen,
            max_backoff: a.relay.max_backoff,
            in_flight: a.relay.in_flight as usize,
            failpoint,
        })
    }
}
