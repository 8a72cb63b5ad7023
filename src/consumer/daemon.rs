//! The consumer loop (DESIGN §3): poll a batch, decode and check it, apply it to Redis in one
//! pipeline, dead-letter what can never apply, and only then store the batch's offsets.
//!
//! An offset is stored only for a record that Redis applied or the DLQ acknowledged, and only
//! up to the first record of its partition that is not done, so a crash anywhere re-delivers
//! and nothing is skipped. librdkafka commits stored offsets every `auto.commit.interval.ms`,
//! on partition revoke (the context below) and on shutdown.

use std::collections::{HashMap, HashSet};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::OwnedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, FailureClass, Invalidation};
use crate::db::chain;
use crate::metrics;
use crate::wire::{self, DecodeError, Event};

use super::dlq::{self, DeadLetter, DlqProducer};
use super::error::{ConsumeError, DlqReason};
use super::settings::ConsumerSettings;
use super::Health;

/// librdkafka's local prefetch queue, KiB (its default is 65536).
const QUEUED_KBYTES: &str = "1024";
/// Most bytes one fetch response may carry (librdkafka's default is 50 MiB). Kafka returns a
/// larger first record anyway (KIP-74); tansu does not, and a record above this would stall
/// its partition, so this is 4 MiB: a 2 MB poison record reaches the DLQ
/// (`tests/consumer.rs::poison_records_are_dead_lettered`). 1 MiB saved 10 MB of RSS.
const FETCH_MAX_BYTES: &str = "4194304";
/// How long librdkafka postpones a partition's next fetch once the queue is over its
/// threshold (its default is 1000 ms, `fetch.queue.backoff.ms`, librdkafka ≥ 2.4).
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// The prefetch settings above, as the daemon sets them (`-X` overrides them); the benchmark's
/// bare consumer uses the same.
pub const FETCH_SETTINGS: [(&str, &str); 3] = [
    ("queued.max.messages.kbytes", QUEUED_KBYTES),
    ("fetch.max.bytes", FETCH_MAX_BYTES),
    ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
];

/// How often an idle consumer PINGs Redis to keep its readiness current.
const IDLE_PING: std::time::Duration = std::time::Duration::from_secs(2);

/// Commits stored offsets before a partition is taken away, so its next owner starts after
/// the last record this consumer finished.
struct CommitOnRevoke;

impl ClientContext for CommitOnRevoke {}

impl ConsumerContext for CommitOnRevoke {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(
                partitions = tpl.count(),
                "partitions revoked, committing offsets"
            );
            commit(consumer, "revoke");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "committing offsets failed; will retry"),
        }
    }
}

/// Commits the stored offsets synchronously; "nothing to commit" is not an error.
fn commit<C: ConsumerContext>(consumer: &impl Consumer<C>, when: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::debug!(when, "offsets committed"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, when, "committing offsets failed"),
    }
}

/// What one polled record is, on its way through a batch.
enum State {
    /// A valid event still to apply.
    Apply(Event),
    /// Must go to the dead-letter topic.
    Dead(DeadLetter),
    /// Applied or dead-lettered: its offset may be stored.
    Done,
}

/// Runs the consumer until `shutdown` is cancelled (returns `Ok` after committing) or a
/// fatal error (the DLQ could not be written, setup failed).
pub async fn run(
    settings: ConsumerSettings,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), ConsumeError> {
    let topics = [settings.topic.clone(), settings.dlq_topic.clone()];
    settings
        .kafka
        .ensure_topics(&topics, settings.create_topics)
        .await
        .map_err(ConsumeError::Topics)?;

    let Some(mut cache) = connect_redis(&settings, &health, &shutdown).await? else {
        return Ok(());
    };
    health.set_ready(true);

    let dlq = DlqProducer::new(
        &settings.kafka,
        &settings.dlq_topic,
        settings.delivery_timeout,
    )
    .map_err(ConsumeError::Producer)?;

    let defaults: Vec<(&str, &str)> = [
        ("auto.offset.reset", "earliest"),
        ("enable.auto.commit", "true"),
        ("enable.partition.eof", "false"),
    ]
    .into_iter()
    // librdkafka prefetches up to 64 MiB with 50 MiB fetches by default: 82 MB RSS draining
    // a backlog. With a small queue, its default fetch.queue.backoff.ms (1 s) left the queue
    // empty after every batch: with a 4 MiB queue the consumer waited 60% of a drain for
    // records, at 46k keys/s and 38-63 MB. A 10 ms backoff keeps it fed: 1 MiB queue, 4 MiB
    // fetches, 108k keys/s at 34 MB (BENCHMARKS.md, run 4). A full queue (Redis down) then
    // re-checks 100 times a second instead of once: 1.2% of a core, measured.
    .chain(FETCH_SETTINGS)
    .collect();
    let consumer: StreamConsumer<CommitOnRevoke> = settings
        .kafka
        .client_config(&defaults)
        .set("group.id", &settings.group)
        .set("enable.auto.offset.store", "false")
        .create_with_context(CommitOnRevoke)
        .map_err(ConsumeError::Consumer)?;
    consumer
        .subscribe(&[settings.topic.as_str()])
        .map_err(|source| ConsumeError::Subscribe {
            topic: settings.topic.clone(),
            source,
        })?;

    tracing::info!(
        topic = %settings.topic,
        group = %settings.group,
        redis = %settings.redis.url,
        "consumer started"
    );
    let result = consume(&settings, &consumer, &mut cache, &dlq, &health, &shutdown).await;
    // Whatever happened, commit what is stored: those records are done.
    commit(&consumer, "shutdown");
    if result.is_ok() {
        tracing::info!("consumer stopped, offsets committed");
    }
    result
}

/// Connects to Redis, waiting out a Redis that is not up yet. `None` if shut down meanwhile.
async fn connect_redis(
    settings: &ConsumerSettings,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<Option<Cache>, ConsumeError> {
    let mut backoff = backoff(settings);
    loop {
        match Cache::connect(&settings.redis, settings.apply).await {
            Ok(c) => return Ok(Some(c)),
            Err(e) if e.is_transient() => {
                health.set_ready(false);
                let delay = backoff.next().unwrap_or(settings.retry_max_delay);
                tracing::warn!(error = %chain(&e), ?delay, "redis unavailable at start-up, retrying");
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Exponential backoff with jitter, capped, never giving up (DESIGN §2/§3).
fn backoff(settings: &ConsumerSettings) -> impl Iterator<Item = std::time::Duration> {
    ExponentialBuilder::default()
        .with_min_delay(settings.retry_min_delay)
        .with_max_delay(settings.retry_max_delay)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The poll → apply → store loop.
async fn consume(
    settings: &ConsumerSettings,
    consumer: &StreamConsumer<CommitOnRevoke>,
    cache: &mut Cache,
    dlq: &DlqProducer,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let mut stream = consumer.stream();
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            m = stream.next() => m,
            // Idle: check Redis, so readiness reflects an outage before the next record.
            _ = tokio::time::sleep(IDLE_PING) => {
                let ok = cache.ping().await;
                match (&ok, health.is_ready()) {
                    (Err(f), true) => tracing::warn!(error = %f, "redis unavailable (idle check)"),
                    (Ok(()), false) => tracing::info!("redis is back (idle check)"),
                    _ => {}
                }
                health.set_ready(ok.is_ok());
                continue;
            }
        };
        // Only when the trace is on: no clock read otherwise.
        let received = tracing::enabled!(target: TRACE_TARGET, tracing::Level::TRACE)
            .then(std::time::Instant::now);
        let first = match first {
            Some(Ok(m)) => m.detach(),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kafka consumer error");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
            None => return Ok(()),
        };
        let mut batch = vec![first];
        // Take what librdkafka already fetched, without waiting for more.
        while batch.len() < settings.batch_size {
            match stream.next().now_or_never() {
                Some(Some(Ok(m))) => batch.push(m.detach()),
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
                _ => break,
            }
        }
        let started = std::time::Instant::now();
        health.stats.records.inc_by(batch.len() as u64);
        let (done, fatal) = process_batch(settings, &batch, cache, dlq, health, shutdown).await;
        if let Some(received) = received {
            trace_batch(&batch, received, std::time::Instant::now());
        }
        store_offsets(consumer, &batch, &done, health);
        health
            .stats
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        if let Some(e) = fatal {
            tracing::error!(error = %chain(&e), "stopping: a record could not be dead-lettered");
            return Err(e);
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// Decodes and checks one record: an event to apply, or why it is dead.
fn examine(settings: &ConsumerSettings, m: &OwnedMessage) -> State {
    let dead = |reason, error: String| {
        State::Dead(DeadLetter {
            reason,
            error,
            attempts: 0,
        })
    };
    let Some(value) = m.payload() else {
        return dead(DlqReason::Decode, "the record has no value".into());
    };
    match wire::decode(value) {
        Ok(event) => match settings.policy.check(&event.keys) {
            Ok(()) => State::Apply(event),
            Err(e) => dead(DlqReason::RejectedKey, e.to_string()),
        },
        Err(e @ DecodeError::Invalid(_)) => dead(DlqReason::Decode, e.to_string()),
        Err(e @ DecodeError::UnsupportedVersion(_)) => {
            dead(DlqReason::UnsupportedVersion, e.to_string())
        }
    }
}

/// Applies a batch until every record is done, dead, or shutdown interrupts a Redis outage;
/// then dead-letters. Returns which records are done, and a fatal error if the DLQ failed.
async fn process_batch(
    settings: &ConsumerSettings,
    batch: &[OwnedMessage],
    cache: &mut Cache,
    dlq: &DlqProducer,
    health: &Health,
    shutdown: &CancellationToken,
) -> (Vec<bool>, Option<ConsumeError>) {
    let stats = &health.stats;
    let mut states: Vec<State> = batch.iter().map(|m| examine(settings, m)).collect();
    let mut attempts = vec![0u32; batch.len()];
    let mut delays = backoff(settings);
    loop {
        let pending: Vec<usize> = (0..states.len())
            .filter(|i| matches!(states[*i], State::Apply(_)))
            .collect();
        if pending.is_empty() {
            break;
        }
        let invalidations: Vec<Invalidation<'_>> = pending
            .iter()
            .map(|i| match &states[*i] {
                State::Apply(e) => Invalidation {
                    op: e.op,
                    event_id: e.event_id,
                    keys: &e.keys,
                },
                _ => unreachable!("pending holds only State::Apply"),
            })
            .collect();
        let outcomes = cache.apply(&invalidations).await;
        drop(invalidations);
        let mut transient = None;
        let mut unknown = None;
        for (i, outcome) in pending.iter().copied().zip(outcomes) {
            match outcome {
                Ok(applied) => {
                    stats.events_applied.inc();
                    stats.keys_applied.inc_by(applied.keys as u64);
                    stats.duplicates.inc_by(applied.duplicates as u64);
                    if let State::Apply(e) = &states[i] {
                        stats.latency.observe(metrics::seconds_since(e.created_at));
                        trace_applied(&batch[i], e);
                    }
                    states[i] = State::Done;
                }
                Err(f) => match f.class {
                    FailureClass::Transient => transient = Some(f),
                    FailureClass::Permanent => {
                        attempts[i] += 1;
                        states[i] = State::Dead(DeadLetter {
                            reason: DlqReason::RedisPermanent,
                            error: f.message,
                            attempts: attempts[i],
                        });
                    }
                    FailureClass::Unknown => {
                        attempts[i] += 1;
                        if attempts[i] > settings.max_retries {
                            states[i] = State::Dead(DeadLetter {
                                reason: DlqReason::RetriesExhausted,
                                error: f.message,
                                attempts: attempts[i],
                            });
                        } else {
                            unknown = Some(f);
                        }
                    }
                },
            }
        }
        let was_ready = health.is_ready();
        health.set_ready(transient.is_none());
        if let Some(f) = &transient {
            if was_ready {
                tracing::warn!(error = %f, "redis unavailable, retrying until it is back");
            }
        } else if !was_ready {
            tracing::info!("redis is back, applying");
        }
        if transient.is_none() && unknown.is_none() {
            continue; // only dead or done left, or nothing: the next round exits
        }
        if let (None, Some(f)) = (&transient, &unknown) {
            tracing::warn!(error = %f, "redis error, retrying the events it hit");
        }
        stats.redis_retries.inc();
        let delay = delays.next().unwrap_or(settings.retry_max_delay);
        tokio::select! {
            biased;
            // Roll back: the records not done keep their offsets unstored.
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }

    // Dead-letter, all records at once; each counts as done only once acknowledged.
    let sends = states.iter().enumerate().filter_map(|(i, s)| match s {
        State::Dead(d) => Some(async move { (i, dlq.send(&batch[i], d).await) }),
        _ => None,
    });
    let mut fatal = None;
    for (i, result) in futures::future::join_all(sends).await {
        match result {
            Ok(()) => {
                if let State::Dead(d) = &states[i] {
                    tracing::warn!(
                        source = %dlq::source_ref(&batch[i]),
                        traceparent = traceparent(&batch[i]).unwrap_or_default(),
                        reason = %d.reason,
                        error = %d.error,
                        "record dead-lettered"
                    );
                }
                stats.dead_lettered.inc();
                states[i] = State::Done;
            }
            Err(source) => {
                if fatal.is_none() {
                    fatal = Some(ConsumeError::DlqUnwritable {
                        dlq_topic: dlq.topic().to_string(),
                        source_ref: dlq::source_ref(&batch[i]),
                        source,
                    });
                }
            }
        }
    }
    let done = states.iter().map(|s| matches!(s, State::Done)).collect();
    (done, fatal)
}

/// Stores, per partition, the offset of the last record of the unbroken run of done records
/// at the start of the batch. librdkafka stores `offset + 1`, the next record to read.
fn store_offsets(
    consumer: &StreamConsumer<CommitOnRevoke>,
    batch: &[OwnedMessage],
    done: &[bool],
    health: &Health,
) {
    let mut blocked: HashSet<(&str, i32)> = HashSet::new();
    let mut last: HashMap<(&str, i32), i64> = HashMap::new();
    let mut count = 0u64;
    for (m, d) in batch.iter().zip(done) {
        let tp = (m.topic(), m.partition());
        if blocked.contains(&tp) {
            continue;
        }
        if *d {
            last.insert(tp, m.offset());
            count += 1;
        } else {
            blocked.insert(tp);
        }
    }
    for ((topic, partition), offset) in last {
        if let Err(e) = consumer.store_offset(topic, partition, offset) {
            // The partition was revoked meanwhile: its new owner re-applies (idempotent).
            tracing::debug!(error = %e, topic, partition, offset, "storing offset failed");
        }
    }
    health.stats.offsets_stored.inc_by(count);
}

/// The `tracing` target of the consumer's per-batch trace: off unless `RUST_LOG` names it at
/// TRACE (e.g. `RUST_LOG=info,invalidator::consumer::trace=trace`).
pub const TRACE_TARGET: &str = "invalidator::consumer::trace";

/// One batch's timeline, logged at TRACE on [`TRACE_TARGET`] with wall-clock microseconds,
/// so a benchmark can split each event's latency where the consumer received it (the relay's
/// trace has the same form): `received_us`, when the loop took the batch's first record from
/// librdkafka; `applied_us`, when Redis had applied (or the DLQ taken) every record. Records
/// that do not decode have no event id and are not listed.
fn trace_batch(batch: &[OwnedMessage], received: std::time::Instant, applied: std::time::Instant) {
    let clock = crate::telemetry::WallClock::now();
    let ids = crate::telemetry::trace_ids(
        batch
            .iter()
            .filter_map(|m| wire::decode(m.payload()?).ok())
            .map(|e| e.event_id),
    );
    tracing::trace!(
        target: TRACE_TARGET,
        records = batch.len(),
        received_us = clock.unix_us(received),
        applied_us = clock.unix_us(applied),
        event_ids = ids,
        "batch trace"
    );
}

/// The W3C `traceparent` header the application put on the outbox row, if any.
fn traceparent(m: &OwnedMessage) -> Option<&str> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == wire::headers::TRACEPARENT)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// Records an applied event inside a span that carries its `traceparent`, so a collector
/// (or `--log-format json` with `RUST_LOG=invalidator=debug`) ties the cache invalidation to
/// the application request that wrote the outbox row.
fn trace_applied(m: &OwnedMessage, e: &Event) {
    let span = tracing::debug_span!(
        "apply",
        event_id = %e.event_id,
        traceparent = traceparent(m).unwrap_or_default(),
    );
    let _entered = span.enter();
    tracing::debug!(op = e.op.as_str(), keys = e.keys.len(), "event applied");
}
