//! Kafka client set-up shared by the relay, the consumer and the DLQ tools: the base
//! librdkafka configuration, `-X key=value` pass-through, and topic checks at start-up.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// librdkafka options that typed flags own; `-X` may not set them.
const OWNED_BY_FLAGS: &[(&str, &str)] = &[
    ("bootstrap.servers", "--kafka-brokers / KAFKA_BROKERS"),
    ("metadata.broker.list", "--kafka-brokers / KAFKA_BROKERS"),
    ("group.id", "--group"),
    (
        "enable.auto.offset.store",
        "(always false: offsets are stored only after Redis applied)",
    ),
    ("enable.idempotence", "(always true for the relay)"),
    (
        "transactional.id",
        "(the relay does not use Kafka transactions)",
    ),
    ("message.timeout.ms", "--delivery-timeout"),
    ("delivery.timeout.ms", "--delivery-timeout"),
];

/// Where Kafka is and how to talk to it.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// `-X key=value` options, validated by [`parse_option`] and [`check_options`].
    pub options: Vec<(String, String)>,
}

/// Why a Kafka option or topic is not usable.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("-X {0:?} is not of the form key=value")]
    BadOption(String),
    #[error("-X {key} is set by {owner}; remove the -X option")]
    OptionOwnedByFlag { key: String, owner: &'static str },
    #[error(
        "topic {topic:?} does not exist on the brokers at {brokers}: create it (or start with \
         --create-topics), topics are never assumed to auto-create"
    )]
    TopicMissing { topic: String, brokers: String },
    /// A missing topic met by a command that only reads (`status`, `dlq`): it creates none.
    #[error(
        "topic {topic:?} does not exist on the brokers at {brokers}: check --topic and the \
         brokers (this command only reads; the relay or consumer with --create-topics, or \
         your own tooling, creates topics)"
    )]
    TopicAbsent { topic: String, brokers: String },
    #[error("cannot read topic metadata from the brokers at {brokers}: are they reachable?")]
    Metadata {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("creating topic {topic:?} failed: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("creating a Kafka client failed")]
    Client(#[source] KafkaError),
    #[error(
        "no Kafka brokers given: set --kafka-brokers or KAFKA_BROKERS (host:port,…); only \
         `invalidator run` works without them, on an embedded broker"
    )]
    NoBrokers,
}

impl KafkaSetupError {
    /// Whether a retry may succeed (brokers not up yet), as opposed to a configuration error.
    pub fn is_transient(&self) -> bool {
        matches!(self, KafkaSetupError::Metadata { .. })
    }
}

/// Parses one `-X key=value`.
pub fn parse_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(KafkaSetupError::BadOption(s.to_string()).to_string()),
    }
}

/// Refuses `-X` options that collide with a typed flag.
pub fn check_options(options: &[(String, String)]) -> Result<(), KafkaSetupError> {
    for (k, _) in options {
        if let Some((_, owner)) = OWNED_BY_FLAGS.iter().find(|(key, _)| key == k) {
            return Err(KafkaSetupError::OptionOwnedByFlag {
                key: k.clone(),
                owner,
            });
        }
    }
    Ok(())
}

impl KafkaSettings {
    /// Settings from the command line: brokers required, `-X` checked.
    pub fn from_args(args: &crate::cli::KafkaArgs) -> Result<KafkaSettings, KafkaSetupError> {
        let brokers = args
            .brokers
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .ok_or(KafkaSetupError::NoBrokers)?;
        check_options(&args.options)?;
        Ok(KafkaSettings {
            brokers: brokers.to_string(),
            options: args.options.clone(),
        })
    }

    /// The base configuration: brokers, then the `-X` options (which win over our defaults,
    /// but were checked not to collide with typed flags).
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("client.id", "invalidator");
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in &self.options {
            config.set(k, v);
        }
        config
    }

    /// Checks that every topic exists; with `create`, creates the missing ones first.
    pub async fn ensure_topics(
        &self,
        topics: &[String],
        create: Option<TopicSpec>,
    ) -> Result<(), KafkaSetupError> {
        let missing = self.missing_topics(topics).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let Some(spec) = create else {
            return Err(KafkaSetupError::TopicMissing {
                topic: missing[0].clone(),
                brokers: self.brokers.clone(),
            });
        };
        let admin: AdminClient<DefaultClientContext> = self
            .client_config(&[])
            .create()
            .map_err(KafkaSetupError::Client)?;
        let new: Vec<NewTopic> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor),
                )
            })
            .collect();
        let results = admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .map_err(|e| KafkaSetupError::CreateTopic {
                topic: missing.join(","),
                reason: e.to_string(),
            })?;
        for r in results {
            match r {
                Ok(topic) => tracing::info!(topic, partitions = spec.partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaSetupError::CreateTopic {
                        topic,
                        reason: code.to_string(),
                    })
                }
            }
        }
        // Metadata propagates asynchronously; wait until every topic is visible.
        for _ in 0..100 {
            if self.missing_topics(topics).await?.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(KafkaSetupError::TopicMissing {
            topic: missing[0].clone(),
            brokers: self.brokers.clone(),
        })
    }

    /// The topics of `topics` that the cluster does not have.
    pub async fn missing_topics(&self, topics: &[String]) -> Result<Vec<String>, KafkaSetupError> {
        let config = self.client_config(&[("allow.auto.create.topics", "false")]);
        let brokers = self.brokers.clone();
        let topics = topics.to_vec();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create().map_err(KafkaSetupError::Client)?;
            let mut missing = Vec::new();
            // One topic per request: a cluster-wide metadata request grows with every topic
            // the cluster has (and is slow on some brokers).
            for topic in topics {
                let metadata = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(10))
                    .map_err(|source| KafkaSetupError::Metadata {
                        brokers: brokers.clone(),
                        source,
                    })?;
                let present = metadata.topics().iter().any(|t| {
                    t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                });
                if !present {
                    missing.push(topic);
                }
            }
            Ok(missing)
        })
        .await
        .expect("the metadata task does not panic")
    }
}

/// Offsets of one partition: what it holds, and where a group stands in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// The oldest offset still retained.
    pub low: i64,
    /// The next offset to be written (the end).
    pub high: i64,
    /// The group's committed offset (the next record it will read), if it has one.
    pub committed: Option<i64>,
}

impl PartitionOffsets {
    /// Records the group has not finished: from its committed offset (or the oldest
    /// retained record, if it never committed) to the end.
    pub fn lag(&self) -> i64 {
        let from = self.committed.unwrap_or(self.low).max(self.low);
        (self.high - from).max(0)
    }

    /// Records retained.
    pub fn depth(&self) -> i64 {
        (self.high - self.low).max(0)
    }
}

impl KafkaSettings {
    /// Every partition of `topic` with its watermarks and, with `group`, that group's committed
    /// offset. Reads only: it joins no group and commits nothing.
    pub async fn topic_offsets(
        &self,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Vec<PartitionOffsets>, KafkaSetupError> {
        let mut config = self.client_config(&[("allow.auto.create.topics", "false")]);
        if let Some(g) = group {
            config.set("group.id", g);
        }
        let brokers = self.brokers.clone();
        let topic = topic.to_string();
        let has_group = group.is_some();
        tokio::task::spawn_blocking(move || {
            let metadata_err = |source| KafkaSetupError::Metadata {
                brokers: brokers.clone(),
                source,
            };
            let consumer: BaseConsumer = config.create().map_err(KafkaSetupError::Client)?;
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map_err(metadata_err)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(KafkaSetupError::TopicAbsent {
                    topic,
                    brokers: brokers.clone(),
                });
            }
            let mut committed = std::collections::HashMap::new();
            if has_group {
                // Declared after `consumer`, so dropped before it (librdkafka hangs otherwise).
                let mut tpl = TopicPartitionList::new();
                for p in &partitions {
                    tpl.add_partition(&topic, *p);
                }
                let got = consumer
                    .committed_offsets(tpl, Duration::from_secs(10))
                    .map_err(metadata_err)?;
                for e in got.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        committed.insert(e.partition(), o);
                    }
                }
            }
            let mut out = Vec::with_capacity(partitions.len());
            for p in partitions {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .map_err(metadata_err)?;
                out.push(PartitionOffsets {
                    partition: p,
                    low,
                    high,
                    committed: committed.get(&p).copied(),
                });
            }
            out.sort_by_key(|o| o.partition);
            Ok(out)
        })
        .await
        .expect("the offsets task does not panic")
    }
}

/// How to create topics with `--create-topics`.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec {
    pub partitions: i32,
    /// -1 lets the broker choose its default replication factor.
    pub replication_factor: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// -X must be key=value, and may not set what a typed flag owns.
    fn options_are_checked() {
        assert_eq!(
            parse_option("security.protocol=SASL_SSL"),
            Ok(("security.protocol".into(), "SASL_SSL".into()))
        );
        assert_eq!(
            parse_option("sasl.password=a=b"),
            Ok(("sasl.password".into(), "a=b".into()))
        );
        assert!(parse_option("novalue").is_err());
        assert!(parse_option("=x").is_err());
        let err = check_options(&[("group.id".into(), "x".into())]).unwrap_err();
        assert!(
            err.to_string().contains("-X group.id is set by --group"),
            "{err}"
        );
        assert!(check_options(&[("linger.ms".into(), "1".into())]).is_ok());
    }
}
