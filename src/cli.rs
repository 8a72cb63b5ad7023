//! The command line: clap derive definitions. Every flag has an `INVALIDATOR_*` environment
//! twin (connection strings keep their conventional names), and each `///` comment is the
//! operator's `--help` text.
//!
//! Flags come in groups that several subcommands flatten, so a flag means the same thing
//! wherever it appears (`--topic`, `--group`, `-X`, …) and `run` is exactly `relay` plus
//! `consume`.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::redact::Redacted;
use crate::telemetry::LogFormat;
use crate::wire::DlqReason;

/// Transactional-outbox cache invalidation: PostgreSQL outbox → Kafka → Redis.
#[derive(Debug, Parser)]
#[command(name = "invalidator", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr: `text` for people, `json` (one object per line) for collectors.
    /// The level comes from RUST_LOG (default `info`).
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
    /// Relay and consumer in one process. Without KAFKA_BROKERS it starts an embedded,
    /// in-memory (NOT durable) broker, so the whole pipeline runs with only PostgreSQL and Redis.
    Run(RunArgs),
    /// Inspect and replay the dead-letter topic `<topic>.dlq`.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Outbox backlog, oldest pending row, outbox_dead, consumer lag and DLQ depth; with
    /// --max-* thresholds, a check that exits 2 when one is exceeded.
    Status(StatusArgs),
    /// Validate a role's configuration and reach every service it needs: exit 0, or 1 with
    /// what failed and what to do. Takes the same flags and environment as the role.
    #[command(subcommand)]
    Check(CheckCommand),
}

/// `invalidator dlq …`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead-letter records: a table, or one JSON object per line with --json.
    List(DlqListArgs),
    /// Re-publish dead-letter records to their source topic; resumable, never deletes.
    Replay(DlqReplayArgs),
}

/// `invalidator check …`
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)]
pub enum CheckCommand {
    /// Check what `invalidator relay` needs: PostgreSQL, the schema, Kafka and the topic.
    Relay(RelayArgs),
    /// Check what `invalidator consume` needs: Kafka, the topic and its DLQ, Redis.
    Consume(ConsumeArgs),
    /// Check what `invalidator run` needs: all of the above.
    Run(RunArgs),
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
    /// Kafka bootstrap brokers, `host:port[,host:port…]`. Required, except by `run`, which
    /// starts an embedded, non-durable broker without it.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        value_name = "HOST:PORT,…"
    )]
    pub brokers: Option<String>,

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

/// The invalidation topic.
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// Invalidation topic (the relay's default for rows without one). Its dead-letter topic
    /// is `<topic>.dlq`.
    #[arg(long, env = "INVALIDATOR_TOPIC", default_value = "cache-invalidations")]
    pub topic: String,
}

/// The consumer group.
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Kafka consumer group of the consumers. Consumers in one group share the partitions.
    #[arg(long, env = "INVALIDATOR_GROUP", default_value = "invalidator")]
    pub group: String,
}

/// Creating missing topics at start-up.
#[derive(Debug, Clone, Args)]
pub struct CreateTopicsArgs {
    /// Create the topic (and, for consumers, its `.dlq`) at start-up if missing; otherwise a
    /// missing topic is a start-up error (topics are never assumed to auto-create).
    #[arg(long, env = "INVALIDATOR_CREATE_TOPICS")]
    pub create_topics: bool,

    /// Partitions of topics created by --create-topics.
    #[arg(long, env = "INVALIDATOR_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,

    /// Replication factor of topics created by --create-topics; -1 = the broker's default.
    #[arg(long, env = "INVALIDATOR_REPLICATION_FACTOR", default_value_t = -1, allow_negative_numbers = true)]
    pub replication_factor: i32,
}

/// Settings every daemon has.
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// Most rows per relay transaction, and most records per consumer Redis pipeline.
    #[arg(long, env = "INVALIDATOR_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// How long a produced record may wait for the brokers' acknowledgement (librdkafka
    /// message.timeout.ms): the relay then rolls its batch back and retries; the consumer,
    /// for a dead-letter record, stops with its offset unstored.
    #[arg(long, env = "INVALIDATOR_DELIVERY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,

    /// After SIGTERM/SIGINT, how long the batch in flight may take to commit or roll back.
    #[arg(long, env = "INVALIDATOR_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Serve `/metrics` (Prometheus text), `/healthz` and `/readyz` on this address,
    /// e.g. `0.0.0.0:9464`. Off by default.
    #[arg(long, env = "INVALIDATOR_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
}

/// The relay's own tuning.
#[derive(Debug, Clone, Args)]
pub struct RelayTuning {
    /// Wait between polls that found less than a full batch (a full batch re-polls at once).
    #[arg(long, env = "INVALIDATOR_POLL_INTERVAL", default_value = "10ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// How often a claim scans the outbox from its first row, to pick up rows whose
    /// transactions committed long after rows with higher ids.
    #[arg(long, env = "INVALIDATOR_SWEEP_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// `source` field of published events. Default: the database name.
    #[arg(long, env = "INVALIDATOR_SOURCE")]
    pub source: Option<String>,

    /// Do not LISTEN for the opt-in wake-up trigger (polling only).
    #[arg(long, env = "INVALIDATOR_NO_LISTEN")]
    pub no_listen: bool,

    /// Longest wait between retries while PostgreSQL or Kafka is unavailable.
    #[arg(long, env = "INVALIDATOR_MAX_BACKOFF", default_value = "10s", value_parser = parse_duration)]
    pub max_backoff: Duration,

    /// Batches one relay keeps in flight (each its own transaction and connection). Claims
    /// take turns and overlap the other batches' broker round trips.
    #[arg(long, env = "INVALIDATOR_IN_FLIGHT", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub in_flight: u32,
}

/// Where Redis is.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
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
}

/// The consumer's own tuning.
#[derive(Debug, Clone, Args)]
pub struct ConsumerTuning {
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

    /// Longest wait between two Redis retries (exponential backoff with jitter up to this).
    #[arg(long, env = "INVALIDATOR_RETRY_MAX_DELAY", default_value = "30s", value_parser = parse_duration)]
    pub retry_max_delay: Duration,
}

/// `invalidator relay`: outbox → Kafka (DESIGN §2).
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
    #[command(flatten)]
    pub create: CreateTopicsArgs,
    #[command(flatten)]
    pub relay: RelayTuning,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// `invalidator consume`: Kafka → Redis (DESIGN §3).
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
    #[command(flatten)]
    pub group: GroupArgs,
    #[command(flatten)]
    pub create: CreateTopicsArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub consumer: ConsumerTuning,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// `invalidator run`: relay + consumer in one process.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Apply the migrations (like `invalidator migrate`) before starting.
    #[arg(long, env = "INVALIDATOR_MIGRATE")]
    pub migrate: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
    #[command(flatten)]
    pub group: GroupArgs,
    #[command(flatten)]
    pub create: CreateTopicsArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub relay: RelayTuning,
    #[command(flatten)]
    pub consumer: ConsumerTuning,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

impl RunArgs {
    /// The relay's half of `run`.
    pub fn relay_args(&self) -> RelayArgs {
        RelayArgs {
            database: self.database.clone(),
            kafka: self.kafka.clone(),
            topic: self.topic.clone(),
            create: self.create.clone(),
            relay: self.relay.clone(),
            daemon: self.daemon.clone(),
        }
    }

    /// The consumer's half of `run`.
    pub fn consume_args(&self) -> ConsumeArgs {
        ConsumeArgs {
            kafka: self.kafka.clone(),
            topic: self.topic.clone(),
            group: self.group.clone(),
            create: self.create.clone(),
            redis: self.redis.clone(),
            consumer: self.consumer.clone(),
            daemon: self.daemon.clone(),
        }
    }
}

/// Which dead-letter records a `dlq` command works on. Filters combine with AND; a filter
/// given several times (e.g. two --reason) matches any of its values.
#[derive(Debug, Clone, Default, Args)]
pub struct DlqFilterArgs {
    /// Only records dead-lettered for this reason (repeatable): decode, unsupported-version,
    /// rejected-key, redis-permanent, retries-exhausted.
    #[arg(long, env = "INVALIDATOR_DLQ_REASON", value_delimiter = ',', value_parser = parse_reason)]
    pub reason: Vec<DlqReason>,

    /// Only records that failed at or after this time: RFC 3339 (`2026-11-23T06:00:00Z`) or
    /// a duration ago (`90m`, `2h`). A duration ago is resolved when the command starts, so
    /// a replay given one remembers its progress under a new group on every run: use an
    /// RFC 3339 time for a replay you may have to resume.
    #[arg(long, env = "INVALIDATOR_DLQ_SINCE", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,

    /// Only records that failed before this time: RFC 3339 or a duration ago (see --since).
    #[arg(long, env = "INVALIDATOR_DLQ_UNTIL", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,

    /// Only the record(s) of this event id.
    #[arg(long, env = "INVALIDATOR_DLQ_EVENT_ID")]
    pub event_id: Option<Uuid>,

    /// Only records that came from this partition of the source topic.
    #[arg(long, env = "INVALIDATOR_DLQ_PARTITION")]
    pub partition: Option<i32>,

    /// Only records whose source offset is at least this. Meant for use with --partition;
    /// without it, the range applies to the offsets of every source partition.
    #[arg(long, env = "INVALIDATOR_DLQ_FROM_OFFSET")]
    pub from_offset: Option<i64>,

    /// Only records whose source offset is at most this (inclusive; see --from-offset).
    #[arg(long, env = "INVALIDATOR_DLQ_TO_OFFSET")]
    pub to_offset: Option<i64>,

    /// Stop after this many matching records. A replay run again with the same filters
    /// continues after them (the limit is per run, not part of the replay's group name).
    #[arg(long, env = "INVALIDATOR_DLQ_LIMIT")]
    pub limit: Option<u64>,
}

/// `invalidator dlq list`
#[derive(Debug, Clone, Args)]
pub struct DlqListArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
    #[command(flatten)]
    pub filter: DlqFilterArgs,

    /// One JSON object per line instead of a table.
    #[arg(long, env = "INVALIDATOR_JSON")]
    pub json: bool,
}

/// `invalidator dlq replay`
#[derive(Debug, Clone, Args)]
pub struct DlqReplayArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
    #[command(flatten)]
    pub group: GroupArgs,
    #[command(flatten)]
    pub filter: DlqFilterArgs,

    /// Print what would be replayed (like `dlq list`), publish and remember nothing.
    #[arg(long, env = "INVALIDATOR_DRY_RUN")]
    pub dry_run: bool,

    /// With --dry-run: one JSON object per line instead of a table.
    #[arg(long, env = "INVALIDATOR_JSON")]
    pub json: bool,

    /// Forget this replay's progress and start again from the oldest dead-letter record.
    #[arg(long, env = "INVALIDATOR_REPLAY_RESTART")]
    pub restart: bool,

    /// At most this many records per second (spare a cache that just came back). Default: as
    /// fast as the brokers acknowledge.
    #[arg(long, env = "INVALIDATOR_REPLAY_RATE", value_name = "PER_SECOND", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// How long a re-published record may wait for the brokers' acknowledgement before the
    /// replay stops (its progress is not advanced past it).
    #[arg(long, env = "INVALIDATOR_DELIVERY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,
}

/// `invalidator status`
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// PostgreSQL connection string; without it the outbox part is left out.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true, value_parser = parse_redacted)]
    pub database_url: Option<Redacted>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
    #[command(flatten)]
    pub group: GroupArgs,

    /// One JSON object instead of a table.
    #[arg(long, env = "INVALIDATOR_JSON")]
    pub json: bool,

    /// Exit 2 if the consumer group's total lag exceeds this many records.
    #[arg(long, env = "INVALIDATOR_MAX_LAG")]
    pub max_lag: Option<i64>,

    /// Exit 2 if the oldest pending outbox row is older than this (e.g. `30s`).
    #[arg(long, env = "INVALIDATOR_MAX_AGE", value_parser = parse_duration)]
    pub max_age: Option<Duration>,

    /// Exit 2 if the dead-letter topic holds more than this many records.
    #[arg(long, env = "INVALIDATOR_MAX_DLQ")]
    pub max_dlq: Option<i64>,

    /// Exit 2 if `invalidator.outbox_dead` holds more than this many rows.
    #[arg(long, env = "INVALIDATOR_MAX_DEAD")]
    pub max_dead: Option<i64>,
}

fn parse_redacted(s: &str) -> Result<Redacted, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(Redacted::new(s))
}

fn parse_reason(s: &str) -> Result<DlqReason, String> {
    DlqReason::parse(s.trim()).ok_or_else(|| {
        format!(
            "unknown reason {s:?} (one of: {})",
            DlqReason::ALL.map(DlqReason::as_str).join(", ")
        )
    })
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive number of records per second"
        )),
    }
}

/// An RFC 3339 time, or a duration meaning "that long ago".
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = parse_duration(s).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-11-23T06:00:00Z) nor a duration ago (90m)")
    })?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| format!("{s:?} is too long ago"))?;
    Ok(Utc::now() - ago)
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
        "d" => value * 86400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m, h or d)"
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
    use clap::CommandFactory;

    #[test]
    /// Durations take the units operators write.
    fn durations_parse() {
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    /// Times are RFC 3339 or "a duration ago".
    fn times_parse() {
        let t = parse_time("2026-11-23T06:00:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-23T06:00:00+00:00");
        let ago = parse_time("2h").unwrap();
        let expected = Utc::now() - chrono::Duration::hours(2);
        assert!((ago - expected).num_seconds().abs() < 5, "{ago}");
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    /// The clap definition is internally consistent (no duplicate flags, valid defaults).
    fn cli_debug_assert() {
        Cli::command().debug_assert();
    }

    #[test]
    /// `run` takes every flag `relay` and `consume` take, with the same env twins.
    fn run_is_relay_plus_consume() {
        let cmd = Cli::command();
        let flags = |name: &str| -> Vec<(String, Option<String>)> {
            cmd.find_subcommand(name)
                .expect("subcommand exists")
                .get_arguments()
                .filter_map(|a| {
                    a.get_long().map(|l| {
                        (
                            l.to_string(),
                            a.get_env().map(|e| e.to_string_lossy().into_owned()),
                        )
                    })
                })
                .collect()
        };
        let run = flags("run");
        for f in flags("relay").into_iter().chain(flags("consume")) {
            assert!(run.contains(&f), "run lacks {f:?}");
        }
    }
}
