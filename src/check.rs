//! `invalidator check relay|consume|run`: validates a role's configuration and reaches every
//! service that role needs, the way the daemon would at start-up, then prints one line per
//! check: `ok`, `warn` (works, but look at it) or `FAIL` with what to do. Nothing is written
//! anywhere: topics are not created, Redis gets only PING and SCRIPT LOAD.

use std::fmt::Display;

use crate::cache::Cache;
use crate::cli::{ConsumeArgs, RelayArgs, RunArgs};
use crate::consumer::ConsumerSettings;
use crate::db;
use crate::kafka::{KafkaSettings, KafkaSetupError};
use crate::outbox;
use crate::redact::Redacted;
use crate::relay::RelaySettings;

/// One line of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// Collects and prints the verdicts.
#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, v: Verdict, what: &str, detail: impl Display) {
        let tag = match v {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        println!("{tag}  {what}: {detail}");
    }

    fn done(self) -> bool {
        if self.failed {
            println!("check failed: fix the FAIL lines above, then run the check again");
        } else {
            println!("check passed");
        }
        !self.failed
    }
}

/// Checks what `invalidator relay` needs. True when everything passed.
pub async fn relay(args: RelayArgs) -> bool {
    let mut r = Report::default();
    if let Some(s) = relay_config(&mut r, args, false) {
        postgres(&mut r, &s.database_url).await;
        topics(
            &mut r,
            &s.kafka,
            std::slice::from_ref(&s.topic),
            s.create_topics.is_some(),
        )
        .await;
    }
    r.done()
}

/// Checks what `invalidator consume` needs. True when everything passed.
pub async fn consume(args: ConsumeArgs) -> bool {
    let mut r = Report::default();
    if let Some(s) = consumer_config(&mut r, args, false) {
        consumer_topics(&mut r, &s).await;
        redis(&mut r, &s).await;
    }
    r.done()
}

/// Checks what `invalidator run` needs. True when everything passed.
pub async fn run(args: RunArgs) -> bool {
    let mut r = Report::default();
    let embedded = args
        .kafka
        .brokers
        .as_deref()
        .is_none_or(|b| b.trim().is_empty());
    let relay_s = relay_config(&mut r, args.relay_args(), embedded);
    let consumer_s = consumer_config(&mut r, args.consume_args(), embedded);
    if let Some(s) = &relay_s {
        if args.migrate {
            match db::connect(&s.database_url).await {
                Ok(_) => r.line(
                    Verdict::Ok,
                    "postgres",
                    format!(
                        "reachable at {}; --migrate will apply the migrations",
                        s.database_url
                    ),
                ),
                Err(e) => r.line(Verdict::Fail, "postgres", db::chain(&e)),
            }
        } else {
            postgres(&mut r, &s.database_url).await;
        }
    }
    if embedded {
        r.line(
            Verdict::Warn,
            "kafka",
            "no KAFKA_BROKERS: `run` will start an embedded, in-memory broker that is NOT \
             durable (fine for trying it out; set KAFKA_BROKERS for anything else)",
        );
    } else if let Some(s) = &consumer_s {
        consumer_topics(&mut r, s).await;
    }
    if let Some(s) = &consumer_s {
        redis(&mut r, s).await;
    }
    r.done()
}

/// Brokers for validation when `run` will provide its own.
fn placeholder_kafka(options: &[(String, String)]) -> KafkaSettings {
    KafkaSettings {
        brokers: "embedded".into(),
        options: options.to_vec(),
    }
}

fn relay_config(r: &mut Report, args: RelayArgs, embedded: bool) -> Option<RelaySettings> {
    let kafka = kafka_settings(&args.kafka, embedded);
    config(r, "relay configuration", kafka, |k| {
        RelaySettings::build(args, k)
    })
}

fn consumer_config(r: &mut Report, args: ConsumeArgs, embedded: bool) -> Option<ConsumerSettings> {
    let kafka = kafka_settings(&args.kafka, embedded);
    config(r, "consumer configuration", kafka, |k| {
        ConsumerSettings::build(args, k)
    })
}

/// The brokers a role will use: its own, or a placeholder when `run` embeds one.
fn kafka_settings(
    args: &crate::cli::KafkaArgs,
    embedded: bool,
) -> Result<KafkaSettings, KafkaSetupError> {
    if embedded {
        Ok(placeholder_kafka(&args.options))
    } else {
        KafkaSettings::from_args(args)
    }
}

/// Validates a role's settings as its daemon would, and reports the verdict.
fn config<S, E: std::error::Error + 'static>(
    r: &mut Report,
    what: &str,
    kafka: Result<KafkaSettings, KafkaSetupError>,
    build: impl FnOnce(KafkaSettings) -> Result<S, E>,
) -> Option<S> {
    let result = match kafka {
        Ok(k) => build(k).map_err(|e| db::chain(&e)),
        Err(e) => Err(db::chain(&e)),
    };
    match result {
        Ok(s) => {
            r.line(Verdict::Ok, what, "valid");
            Some(s)
        }
        Err(e) => {
            r.line(Verdict::Fail, what, e);
            None
        }
    }
}

/// PostgreSQL reachable, schema migrated, and the relay's privileges on it.
async fn postgres(r: &mut Report, url: &Redacted) {
    let client = match db::connect(url).await {
        Ok(c) => c,
        Err(e) => return r.line(Verdict::Fail, "postgres", db::chain(&e)),
    };
    if let Err(e) = outbox::check_schema(&client).await {
        return r.line(Verdict::Fail, "postgres schema", db::chain(&e));
    }
    r.line(
        Verdict::Ok,
        "postgres",
        format!("connected to {url}; schema `invalidator` is migrated"),
    );
    let privileges = client
        .query_one(
            "SELECT current_user::text,
                    has_table_privilege('invalidator.outbox', 'SELECT, DELETE'),
                    has_table_privilege('invalidator.outbox_dead', 'INSERT')",
            &[],
        )
        .await;
    match privileges {
        Ok(row) => {
            let (user, outbox, dead): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
            if outbox && dead {
                r.line(
                    Verdict::Ok,
                    "postgres privileges",
                    format!("role {user:?} may claim the outbox and write outbox_dead"),
                );
            } else {
                r.line(
                    Verdict::Fail,
                    "postgres privileges",
                    format!(
                        "role {user:?} lacks SELECT/DELETE on invalidator.outbox or INSERT on \
                         invalidator.outbox_dead: GRANT invalidator_relay TO {user} (see \
                         migrations/optional/roles.sql)"
                    ),
                );
            }
        }
        Err(e) => r.line(Verdict::Fail, "postgres privileges", db::chain(&e)),
    }
}

/// The consumer's topic and its dead-letter topic.
async fn consumer_topics(r: &mut Report, s: &ConsumerSettings) {
    let both = [s.topic.clone(), s.dlq_topic.clone()];
    topics(r, &s.kafka, &both, s.create_topics.is_some()).await;
}

/// The brokers answer and the topics exist (or will be created).
async fn topics(r: &mut Report, kafka: &KafkaSettings, topics: &[String], create: bool) {
    match kafka.missing_topics(topics).await {
        Ok(missing) if missing.is_empty() => r.line(
            Verdict::Ok,
            "kafka",
            format!(
                "brokers {} answer; topics {} exist",
                kafka.brokers,
                topics.join(", ")
            ),
        ),
        Ok(missing) if create => r.line(
            Verdict::Warn,
            "kafka",
            format!(
                "brokers {} answer; {} missing, --create-topics will create them",
                kafka.brokers,
                missing.join(", ")
            ),
        ),
        Ok(missing) => {
            for topic in missing {
                let e = KafkaSetupError::TopicMissing {
                    topic,
                    brokers: kafka.brokers.clone(),
                };
                r.line(Verdict::Fail, "kafka", e);
            }
        }
        Err(e) => r.line(Verdict::Fail, "kafka", db::chain(&e)),
    }
}

/// Redis answers and accepts the scripts (SCRIPT LOAD needs the scripting ACL category).
async fn redis(r: &mut Report, s: &ConsumerSettings) {
    match Cache::connect(&s.redis, s.apply).await {
        Ok(mut cache) => match cache.ping().await {
            Ok(()) => r.line(
                Verdict::Ok,
                "redis",
                format!("{} answers and accepted the scripts", s.redis.url),
            ),
            Err(e) => r.line(Verdict::Fail, "redis", e),
        },
        Err(e) => r.line(
            Verdict::Fail,
            "redis",
            format!(
                "{} (check REDIS_URL, that the server runs, and that the user may run \
                 SCRIPT/EVALSHA, UNLINK, INCR, SET, PEXPIRE)",
                db::chain(&e)
            ),
        ),
    }
}
