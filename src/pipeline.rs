//! `invalidator run`: the relay and the consumer in one process, optionally on an embedded
//! in-process Kafka (librdkafka's mock cluster) so that someone with only PostgreSQL and Redis
//! sees the whole pipeline work.
//!
//! With `main`, this is the one place that composes the two daemons; neither knows the other.

use tokio_util::sync::CancellationToken;

use crate::consumer::{self, ConsumeError, ConsumerSettings};
use crate::kafka::{KafkaSettings, TopicSpec};
use crate::relay::{self, RelayError, RelaySettings};

/// Why `run` stopped with an error: the daemon that failed, and why.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("the relay stopped")]
    Relay(#[source] RelayError),
    #[error("the consumer stopped")]
    Consumer(#[source] Box<ConsumeError>),
    #[error("starting the embedded Kafka broker failed")]
    Embedded(#[source] rdkafka::error::KafkaError),
}

/// An in-process Kafka cluster (librdkafka's mock cluster). Not durable: it keeps records in
/// memory, at most 5 MiB per partition, and forgets everything when the process exits.
pub struct Embedded {
    // Field order matters on drop: nothing else refers to the cluster.
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl Embedded {
    /// Starts a one-broker cluster and creates `topics` with `partitions` partitions.
    pub fn start(topics: &[String], spec: TopicSpec) -> Result<Embedded, PipelineError> {
        let cluster = rdkafka::mocking::MockCluster::new(1).map_err(PipelineError::Embedded)?;
        for t in topics {
            cluster
                .create_topic(t, spec.partitions, 1)
                .map_err(PipelineError::Embedded)?;
        }
        Ok(Embedded { cluster })
    }

    /// Settings for clients of this cluster, keeping the caller's `-X` options.
    pub fn kafka_settings(&self, options: &[(String, String)]) -> KafkaSettings {
        KafkaSettings {
            brokers: self.cluster.bootstrap_servers(),
            options: options.to_vec(),
        }
    }
}

/// Runs both daemons until `shutdown`, or until one of them fails; then the other one is
/// stopped too (it drains like on SIGTERM) and the first error is returned.
pub async fn run(
    relay_settings: RelaySettings,
    relay_health: relay::Health,
    consumer_settings: ConsumerSettings,
    consumer_health: consumer::Health,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    // Each daemon gets a child token: a failure of one cancels its sibling, not the caller.
    let both = shutdown.child_token();
    // A daemon that stops, however (a panic too), stops its sibling: the guard cancels
    // `both` when dropped. Cancelling only after `run` returned left the consumer running
    // alone after the relay panicked, the process up and nothing relayed.
    let relay = {
        let both = both.clone();
        async move {
            let _stop_sibling = both.clone().drop_guard();
            relay::run(relay_settings, relay_health, both)
                .await
                .map_err(PipelineError::Relay)
        }
    };
    let consumer = {
        let both = both.clone();
        async move {
            let _stop_sibling = both.clone().drop_guard();
            consumer::run(consumer_settings, consumer_health, both)
                .await
                .map_err(|e| PipelineError::Consumer(Box::new(e)))
        }
    };
    // Separate tasks, so the two daemons use both cores.
    let (r, c) = tokio::join!(tokio::spawn(relay), tokio::spawn(consumer));
    let unwind = |j: Result<Result<(), PipelineError>, tokio::task::JoinError>| match j {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    unwind(r).and(unwind(c))
}
