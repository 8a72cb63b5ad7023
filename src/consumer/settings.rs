//! The consumer's configuration, parsed once from the command line and validated, so a bad
//! combination fails at start-up with a clear message, never inside the loop.

use std::time::Duration;

use crate::cache::{ApplyOptions, RedisSettings};
use crate::cli::ConsumeArgs;
use crate::kafka::{check_options, KafkaSettings, KafkaSetupError, TopicSpec};
use crate::keys::KeyPolicy;

/// Everything `consumer::run` needs.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub kafka: KafkaSettings,
    pub redis: RedisSettings,
    /// The topic consumed.
    pub topic: String,
    /// `<topic>.dlq`.
    pub dlq_topic: String,
    pub group: String,
    /// `Some` with `--create-topics`: create the topic and its DLQ when missing.
    pub create_topics: Option<TopicSpec>,
    pub apply: ApplyOptions,
    pub policy: KeyPolicy,
    /// Retries of an unclassified Redis error before dead-lettering.
    pub max_retries: u32,
    /// First retry delay (doubles up to `retry_max_delay`, with jitter).
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// Most records in one Redis pipeline.
    pub batch_size: usize,
    /// How long a dead-letter record may take to be acknowledged.
    pub delivery_timeout: Duration,
    /// Where to serve `/healthz`, `/readyz`, `/metrics`, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl ConsumerSettings {
    /// Defaults for a topic, a group, Kafka and Redis: what tests and embedders start from.
    pub fn new(kafka: KafkaSettings, redis: RedisSettings, topic: &str, group: &str) -> Self {
        ConsumerSettings {
            kafka,
            redis,
            topic: topic.to_string(),
            dlq_topic: dlq_topic(topic),
            group: group.to_string(),
            create_topics: None,
            apply: ApplyOptions::default(),
            policy: KeyPolicy::default(),
            max_retries: 5,
            retry_min_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(30),
            batch_size: 1000,
            delivery_timeout: Duration::from_secs(30),
            metrics_addr: None,
        }
    }
}

/// The dead-letter topic of a topic (DESIGN §5).
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Why the command line does not make a usable configuration.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("--topic must not be empty")]
    EmptyTopic,
    #[error("--group must not be empty")]
    EmptyGroup,
    #[error("--allow-prefix must not be empty (omit it to allow every key)")]
    EmptyPrefix,
    #[error("--guard-ttl and --dedupe-ttl must be at least 1s")]
    TtlTooShort,
    #[error("--redis-url {0} is not a redis:// or rediss:// URL")]
    BadRedisUrl(crate::redact::Redacted),
}

impl TryFrom<ConsumeArgs> for ConsumerSettings {
    type Error = SettingsError;

    fn try_from(a: ConsumeArgs) -> Result<Self, SettingsError> {
        check_options(&a.kafka_options)?;
        if a.topic.trim().is_empty() {
            return Err(SettingsError::EmptyTopic);
        }
        if a.group.trim().is_empty() {
            return Err(SettingsError::EmptyGroup);
        }
        if a.allow_prefixes.iter().any(|p| p.is_empty()) {
            return Err(SettingsError::EmptyPrefix);
        }
        if a.guard_ttl < Duration::from_secs(1) || a.dedupe_ttl < Duration::from_secs(1) {
            return Err(SettingsError::TtlTooShort);
        }
        if !a
            .redis_url
            .expose()
            .split(',')
            .all(|u| u.trim().starts_with("redis://") || u.trim().starts_with("rediss://"))
        {
            return Err(SettingsError::BadRedisUrl(a.redis_url));
        }
        let kafka = KafkaSettings {
            brokers: a.kafka_brokers,
            options: a.kafka_options,
        };
        let redis = RedisSettings {
            url: a.redis_url,
            cluster: a.redis_cluster,
            response_timeout: a.redis_timeout,
            ..RedisSettings::default()
        };
        let mut s = ConsumerSettings::new(kafka, redis, &a.topic, &a.group);
        s.create_topics = a.create_topics.then_some(TopicSpec {
            partitions: a.partitions,
            replication_factor: -1,
        });
        s.apply = ApplyOptions {
            guard_ttl: a.guard_ttl,
            dedupe_ttl: a.dedupe_ttl,
        };
        s.policy = KeyPolicy {
            allow_prefixes: a.allow_prefixes,
        };
        s.max_retries = a.max_retries;
        s.retry_max_delay = a.retry_max_delay;
        s.retry_min_delay = s.retry_min_delay.min(a.retry_max_delay);
        s.batch_size = usize::try_from(a.batch_size).unwrap_or(1000);
        s.delivery_timeout = a.delivery_timeout;
        s.metrics_addr = a.metrics_addr;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<ConsumerSettings, SettingsError> {
        let mut argv = vec![
            "invalidator",
            "consume",
            "--redis-url",
            "redis://127.0.0.1:6379",
        ];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Consume(a) => ConsumerSettings::try_from(a),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    /// The defaults are DESIGN §6's names: topic, `<topic>.dlq`, group.
    fn defaults_follow_design() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.topic, "cache-invalidations");
        assert_eq!(s.dlq_topic, "cache-invalidations.dlq");
        assert_eq!(s.group, "invalidator");
        assert!(s.policy.allow_prefixes.is_empty());
        assert!(s.create_topics.is_none());
        let s = parse(&[
            "--topic",
            "t",
            "--allow-prefix",
            "a:",
            "--allow-prefix",
            "b:",
        ])
        .unwrap();
        assert_eq!(s.dlq_topic, "t.dlq");
        assert_eq!(s.policy.allow_prefixes, ["a:", "b:"]);
    }

    #[test]
    /// Bad combinations fail at start-up with a message naming the flag.
    fn bad_settings_are_refused() {
        let e = parse(&["-X", "group.id=other"]).unwrap_err().to_string();
        assert!(e.contains("--group"), "{e}");
        let e = parse(&["-X", "enable.auto.offset.store=true"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("enable.auto.offset.store"), "{e}");
        assert!(matches!(
            parse(&["--topic", " "]),
            Err(SettingsError::EmptyTopic)
        ));
        assert!(matches!(
            parse(&["--guard-ttl", "10ms"]),
            Err(SettingsError::TtlTooShort)
        ));
        let mut argv = vec!["invalidator", "consume", "--redis-url", "http://u:pw@h"];
        argv.truncate(4);
        let Command::Consume(a) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        let e = ConsumerSettings::try_from(a).unwrap_err().to_string();
        assert!(e.contains("http://u:***@h") && !e.contains("pw@"), "{e}");
    }
}
