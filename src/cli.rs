//! The command line: clap derive definitions. Every flag has an `INVALIDATOR_*` environment
//! twin (connection strings keep their conventional names), and each `///` comment is the
//! operator's `--help` text.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::redact::Redacted;
use crate::telemetry::LogFormat;

/// Transactional-outbox cache invalidation: PostgreSQL outbox → Kafka → Redis.
#[derive(Debug, Parser)]
#[command(name = "invalidator", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr: `text` for people, `json` (one object per line) for collectors.
    #[arg(
        long,
        env = "INVALIDATOR_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at start-up; boxing the larger argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Create or upgrade schema `invalidator` in an existing database (idempotent).
    Migrate(MigrateArgs),
    /// Publish the outbox to Kafka: claim, publish, await acks, delete; until SIGTERM.
    Relay(RelayArgs),
    /// Consume invalidations from Kafka and apply them to Redis, until SIGTERM/SIGINT.
    Consume(ConsumeArgs),
}

/// Where PostgreSQL is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection string (URL or libpq key=value form) of the application's
    /// database. Its password is never printed.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true, value_parser = parse_redacted)]
    pub database_url: Redacted,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Print the SQL of the pending migrations instead of applying them.
    #[arg(long, env = "INVALIDATOR_DRY_RUN")]
    pub dry_run: bool,

    /// How long to wait for the migration lock held by another `migrate` (e.g. `30s`, `2m`).
    #[arg(long, env = "INVALIDATOR_LOCK_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

/// Where Kafka is, and librdkafka options passed through.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap brokers, `host:port[,host:port…]`.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        value_name = "HOST:PORT,…"
    )]
    pub brokers: String,

    /// A librdkafka option, `key=value`, passed through as is (SASL/SSL, tuning); repeatable.
    /// Options a typed flag owns (e.g. group.id, message.timeout.ms) are refused.
    /// Env: comma-separated.
    #[arg(
        short = 'X',
        long = "kafka-option",
        env = "INVALIDATOR_KAFKA_OPTIONS",
        value_delimiter = ',',
        value_name = "KEY=VALUE",
        hide_env_values = true,
        value_parser = crate::kafka::parse_option
    )]
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Topic for rows whose `topic` is NULL. Its dead-letter topic is `<topic>.dlq`.
    #[arg(long, env = "INVALIDATOR_TOPIC", default_value = "cache-invalidations")]
    pub topic: String,

    /// Rows claimed, published and deleted per transaction.
    #[arg(long, env = "INVALIDATOR_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: i64,

    /// Wait between polls that found less than a full batch (a full batch re-polls at once).
    #[arg(long, env = "INVALIDATOR_POLL_INTERVAL", default_value = "10ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// How often a claim scans the outbox from its first row, to pick up rows whose
    /// transactions committed long after rows with higher ids.
    #[arg(long, env = "INVALIDATOR_SWEEP_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// How long a batch waits for the brokers to acknowledge before it rolls back and is
    /// retried (librdkafka message.timeout.ms). The claimed rows stay locked meanwhile.
    #[arg(long, env = "INVALIDATOR_DELIVERY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,

    /// `source` field of published events. Default: the database name.
    #[arg(long, env = "INVALIDATOR_SOURCE")]
    pub source: Option<String>,

    /// Create the topic at start-up if it is missing (otherwise a missing topic is an error).
    #[arg(long, env = "INVALIDATOR_CREATE_TOPICS")]
    pub create_topics: bool,

    /// Partitions of topics created by --create-topics.
    #[arg(long, env = "INVALIDATOR_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,

    /// Replication factor of topics created by --create-topics; -1 = the broker's default.
    #[arg(long, env = "INVALIDATOR_REPLICATION_FACTOR", default_value_t = -1, allow_negative_numbers = true)]
    pub replication_factor: i32,

    /// Do not LISTEN for the opt-in wake-up trigger (polling only).
    #[arg(long, env = "INVALIDATOR_NO_LISTEN")]
    pub no_listen: bool,

    /// Longest wait between retries while PostgreSQL or Kafka is unavailable.
    #[arg(long, env = "INVALIDATOR_MAX_BACKOFF", default_value = "10s", value_parser = parse_duration)]
    pub max_backoff: Duration,

    /// After SIGTERM/SIGINT, how long the batch in flight may take to commit or roll back.
    #[arg(long, env = "INVALIDATOR_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

fn parse_redacted(s: &str) -> Result<Redacted, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(Redacted::new(s))
}

/// Parses `250ms`, `10s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 500ms, 10s, 5m)"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// Durations take the units operators write.
    fn durations_parse() {
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    /// The clap definition is internally consistent (no duplicate flags, valid defaults).
    fn cli_debug_assert() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

/// `invalidator consume`: Kafka → Redis (DESIGN §3).
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Redis URL: `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS. With
    /// `--redis-cluster`, one or more seed nodes separated by commas. Its password is never
    /// printed.
    #[arg(long = "redis-url", env = "REDIS_URL", hide_env_values = true, value_parser = parse_redacted)]
    pub redis_url: Redacted,

    /// Talk to a Redis Cluster (slot routing) instead of a single server.
    #[arg(long, env = "INVALIDATOR_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// How long a pipeline may wait for Redis's replies before it counts as a timeout
    /// (transient: retried).
    #[arg(long, env = "INVALIDATOR_REDIS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// Topic to consume; its dead-letter topic is `<topic>.dlq`.
    #[arg(long, env = "INVALIDATOR_TOPIC", default_value = "cache-invalidations")]
    pub topic: String,

    /// Kafka consumer group. Consumers in one group share the partitions.
    #[arg(long, env = "INVALIDATOR_GROUP", default_value = "invalidator")]
    pub group: String,

    /// librdkafka option `key=value` (repeatable; e.g. `-X security.protocol=SASL_SSL`).
    /// The environment twin takes a comma-separated list.
    #[arg(short = 'X', value_name = "KEY=VALUE", env = "INVALIDATOR_KAFKA_OPTIONS", value_delimiter = ',', value_parser = crate::kafka::parse_option)]
    pub kafka_options: Vec<(String, String)>,

    /// Create the topic and its `.dlq` if missing (otherwise a missing topic stops start-up).
    #[arg(long, env = "INVALIDATOR_CREATE_TOPICS")]
    pub create_topics: bool,

    /// Partitions of topics created by `--create-topics`.
    #[arg(long, env = "INVALIDATOR_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,

    /// How long a key's fill guard lives after its last delete; must exceed the longest time a
    /// reader spends between reading the guard and filling the cache.
    #[arg(long, env = "INVALIDATOR_GUARD_TTL", default_value = "10m", value_parser = parse_duration)]
    pub guard_ttl: Duration,

    /// How long a bump's dedupe marker lives: a redelivery within it is a no-op.
    #[arg(long, env = "INVALIDATOR_DEDUPE_TTL", default_value = "168h", value_parser = parse_duration)]
    pub dedupe_ttl: Duration,

    /// Only keys starting with one of these prefixes are applied (repeatable; default: every
    /// key). Other keys send their event to the dead-letter topic. Env: comma-separated.
    #[arg(
        long = "allow-prefix",
        value_name = "PREFIX",
        env = "INVALIDATOR_ALLOW_PREFIXES",
        value_delimiter = ','
    )]
    pub allow_prefixes: Vec<String>,

    /// Retries of an unclassified Redis error before the event goes to the dead-letter topic.
    /// (Redis unavailable is retried forever; WRONGTYPE/NOPERM are dead-lettered at once.)
    #[arg(long, env = "INVALIDATOR_MAX_RETRIES", default_value_t = 5)]
    pub max_retries: u32,

    /// Longest wait between two retries (exponential backoff with jitter up to this).
    #[arg(long, env = "INVALIDATOR_RETRY_MAX_DELAY", default_value = "30s", value_parser = parse_duration)]
    pub retry_max_delay: Duration,

    /// Most records applied in one Redis pipeline.
    #[arg(long, env = "INVALIDATOR_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch_size: u64,

    /// How long a dead-letter record may take to be acknowledged before the consumer gives up
    /// and exits non-zero (its offset is not stored).
    #[arg(long, env = "INVALIDATOR_DELIVERY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,

    /// Grace period on SIGTERM/SIGINT to finish the batch in flight and commit offsets.
    #[arg(long, env = "INVALIDATOR_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Serve `/healthz`, `/readyz` and `/metrics` on this address (e.g. `0.0.0.0:9464`).
    #[arg(long, env = "INVALIDATOR_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}
