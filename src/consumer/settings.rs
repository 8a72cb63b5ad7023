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
        let kafka = KafkaSettings::from_args(&a.kafka)?;
        ConsumerSettings::build(a, kafka)
    }
}

impl ConsumerSettings {
    /// Validates everything but the brokers, which `run` may provide itself (embedded).
    pub fn build(a: ConsumeArgs, kafka: KafkaSettings) -> Result<Self, SettingsError> {
        check_options(&kafka.options)?;
        let (c, r) = (&a.consumer, &a.redis);
        if a.topic.topic.trim().is_empty() {
            return Err(SettingsError::EmptyTopic);
        }
        if a.group.group.trim().is_empty() {
            return Err(SettingsError::EmptyGroup);
        }
        if c.allow_prefixes.iter().any(|p| p.is_empty()) {
            return Err(SettingsError::EmptyPrefix);
        }
        if c.guard_ttl < Duration::from_secs(1) || c.dedupe_ttl < Duration::from_secs(1) {
            return Err(SettingsError::TtlTooShort);
        }
        if !r
            .redis_url
            .expose()
            .split(',')
            .all(|u| u.trim().starts_with("redis://") || u.trim().starts_with("rediss://"))
        {
            return Err(SettingsError::BadRedisUrl(r.redis_url.clone()));
        }
        let redis = RedisSettings {
            url: r.redis_url.clone(),
            cluster: r.redis_cluster,
            response_timeout: r.redis_timeout,
            ..RedisSettings::default()
        };
        let mut s = ConsumerSettings::new(kafka, redis, &a.topic.topic, &a.group.group);
        s.create_topics = a.create.create_topics.then_some(TopicSpec {
            partitions: a.create.partitions,
            replication_factor: a.create.replication_factor,
        });
        s.apply = ApplyOptions {
            guard_ttl: c.guard_ttl,
            dedupe_ttl: c.dedupe_ttl,
        };
        s.policy = KeyPolicy {
            allow_prefixes: c.allow_prefixes.clone(),
        };
        s.max_retries = c.max_retries;
        s.retry_max_delay = c.retry_max_delay;
        s.retry_min_delay = s.retry_min_delay.min(c.retry_max_delay);
        s.batch_size = a.daemon.batch_size as usize;
        s.delivery_timeout = a.daemon.delivery_timeout;
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
            "--kafka-brokers",
            "127.0.0.1:9092",
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
        let argv = vec![
            "invalidator",
            "consume",
            "--kafka-brokers",
            "b:9092",
            "--redis-url",
            "http://u:pw@h",
        ];
        let Command::Consume(a) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        let e = ConsumerSettings::try_from(a).unwrap_err().to_string();
        assert!(e.contains("http://u:***@h") && !e.contains("pw@"), "{e}");
    }
}
