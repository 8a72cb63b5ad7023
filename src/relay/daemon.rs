//! The relay loop: one transaction per batch — claim, publish every record, await every
//! acknowledgement, bury the never-deliverable, COMMIT. Any failure before COMMIT drops the
//! transaction, which rolls back, so the rows are claimed again (at-least-once).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::StreamExt;
use rdkafka::producer::Producer;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::cursor::{Cursor, Scan};
use super::lock;
use super::publish::{self, RecordOutcome};
use super::settings::{Failpoint, RelaySettings};
use crate::db::{self, chain, ConnectError};
use crate::kafka::KafkaSetupError;
use crate::metrics::{self, RelayMetrics};
use crate::outbox::{self, SchemaError, NOTIFY_CHANNEL};
use crate::retry;

/// Readiness and metrics of a running relay (served by [`crate::metrics::serve`]).
pub type Health = metrics::Health<RelayMetrics>;

/// Why the relay stopped (it only stops by itself for errors no retry can fix).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Schema(SchemaError),
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("creating the Kafka producer failed")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("building the PostgreSQL pool failed: {0}")]
    Pool(String),
}

/// A batch that could not be completed; its transaction rolled back.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("postgres: {0}")]
    Postgres(String),
    #[error("kafka: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
}

impl From<tokio_postgres::Error> for BatchError {
    fn from(e: tokio_postgres::Error) -> Self {
        BatchError::Postgres(chain(&e))
    }
}

/// What a committed batch did.
#[derive(Debug, Default)]
struct Batch {
    claimed: usize,
    buried: usize,
    max_id: i64,
    /// `created_at` of the rows published (microseconds since the Unix epoch), for the
    /// latency histogram.
    created: Vec<i64>,
}

/// Runs the relay until `shutdown` is cancelled. Start-up checks (schema, topic) fail fast
/// with a message saying what to do; after start-up every failure is retried.
pub async fn run(
    settings: RelaySettings,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let pool = pool(&settings)?;
    let Some(source) = startup(&settings, &pool, &shutdown).await? else {
        return Ok(()); // cancelled while waiting for the services
    };
    health.set_ready(true);
    tokio::spawn(sample_backlog(
        settings.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let producer = publish::create_producer(&settings.kafka, settings.delivery_timeout)
        .map_err(RelayError::Producer)?;

    let wake = Arc::new(Notify::new());
    if settings.listen {
        tokio::spawn(listen(settings.clone(), wake.clone(), shutdown.clone()));
    }
    tracing::info!(
        topic = settings.topic,
        batch_size = settings.batch_size,
        in_flight = settings.in_flight,
        poll_interval_ms = settings.poll_interval.as_millis() as u64,
        source,
        "relay started"
    );

    let shared = Arc::new(Shared {
        cursor: Mutex::new(Cursor::new(settings.sweep_interval)),
        producer: Mutex::new(producer),
        pg: Mutex::new(retry::Health::new("postgres", settings.max_backoff)),
        kafka: Mutex::new(retry::Health::new("kafka", settings.max_backoff)),
        turn: tokio::sync::Mutex::new(Turn {
            last_claim: None,
            again: true,
        }),
        retry_at: Mutex::new(None),
        kafka_down: std::sync::atomic::AtomicBool::new(false),
        settings,
        pool,
        encoder: crate::wire::Encoder::new(Some(&source)),
        health,
        wake,
        shutdown,
    });
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..shared.settings.in_flight {
        workers.spawn(worker(shared.clone(), index));
    }
    let mut result = Ok(());
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // A worker that cannot go on (the producer cannot be recreated): stop them all.
                shared.shutdown.cancel();
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    // Nothing is in flight between batches; flush anyway so librdkafka's queue is empty.
    let producer = lock(&shared.producer).clone();
    let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    if let Ok(Err(e)) = flushed {
        tracing::warn!(error = %e, "flushing the producer at shutdown failed");
    }
    tracing::info!("relay stopped");
    result
}

/// What the batch workers of one relay share.
struct Shared {
    settings: RelaySettings,
    pool: Pool,
    /// Writes the record values, with the relay's `--source`.
    encoder: crate::wire::Encoder,
    health: Health,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    /// Where claims start; one cursor, so only one worker sweeps at a time.
    cursor: Mutex<Cursor>,
    /// Replaced when it hits a fatal error; workers clone it (an `Arc` inside) per batch.
    producer: Mutex<publish::RelayProducer>,
    /// Once-per-state-change logging of each dependency, shared so N workers log once.
    pg: Mutex<retry::Health>,
    kafka: Mutex<retry::Health>,
    /// The right to claim next. Claims take turns; the holder passes the turn on as soon as
    /// its rows are locked, so the next claim overlaps this batch's broker round trip.
    turn: tokio::sync::Mutex<Turn>,
    /// No claim before this instant: set by a failing batch before its transaction rolls
    /// back, so the rows it releases are not claimed again before the backoff has passed.
    retry_at: Mutex<Option<Instant>>,
    /// The last batch that talked to Kafka failed: not ready until one publishes.
    kafka_down: std::sync::atomic::AtomicBool,
}

/// State handed from one claim to the next.
struct Turn {
    /// When the last claim started: idle polls are paced from it.
    last_claim: Option<Instant>,
    /// Claim at once, without waiting for a wake-up or the poll interval: the last claim
    /// came back full, or failed (then after `retry_at`), or none has run yet.
    again: bool,
}

impl Shared {
    /// Records a failed batch (metrics, once-per-change logging, a new producer after a
    /// fatal error) and holds every worker's next claim off for the backoff delay. Called
    /// while the batch's transaction is still open, before it rolls back.
    fn failed(&self, error: &BatchError) -> Result<(), RelayError> {
        let stats = &self.health.stats;
        let delay = match error {
            BatchError::Postgres(e) => {
                stats.failed("postgres");
                lock(&self.pg).failed(e, false)
            }
            BatchError::Kafka(e) => {
                stats.failed("kafka");
                let mut current = lock(&self.producer);
                if let Some(fatal) = publish::is_fatal(&current) {
                    tracing::warn!(
                        error = fatal,
                        "kafka producer hit a fatal error, recreating it"
                    );
                    *current = publish::create_producer(
                        &self.settings.kafka,
                        self.settings.delivery_timeout,
                    )
                    .map_err(RelayError::Producer)?;
                }
                drop(current);
                lock(&self.kafka).failed(&chain(e), false)
            }
        };
        if matches!(error, BatchError::Kafka(_)) {
            self.kafka_down
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.health.set_ready(false);
        // Its rows are released below any continuation point: back to the hint.
        lock(&self.cursor).continue_after(None);
        let until = Instant::now() + delay;
        let mut at = lock(&self.retry_at);
        *at = Some(at.map_or(until, |t| t.max(until)));
        Ok(())
    }

    /// Waits until no failure holds claims off; false if shutdown came first.
    async fn wait_retry_gate(&self) -> bool {
        loop {
            let until = *lock(&self.retry_at);
            match until {
                Some(t) if t > Instant::now() => {
                    if sleep_or_cancel(t - Instant::now(), &self.shutdown).await {
                        return false;
                    }
                }
                _ => return true,
            }
        }
    }
}

/// One batch loop; `--in-flight` of them run. They take turns to claim: the worker holding
/// the turn waits for a reason to claim (the last claim came back full or failed, a
/// NOTIFY wake-up, or the poll interval since the last claim started), claims, and passes
/// the turn on as soon as its rows are locked; then it publishes, awaits the acks and
/// commits while the next worker claims. So a row committed while a batch awaits its acks
/// is claimed within a poll interval (or at once, with NOTIFY), not after that batch's
/// broker round trip; and a backlog is drained with up to `--in-flight` batches in flight.
/// Each batch is its own transaction on its own connection; SKIP LOCKED keeps their rows
/// apart.
async fn worker(shared: Arc<Shared>, index: usize) -> Result<(), RelayError> {
    let s = &*shared;
    let settings = &s.settings;
    let stats = &s.health.stats;
    while !s.shutdown.is_cancelled() {
        let mut turn = tokio::select! {
            biased;
            _ = s.shutdown.cancelled() => break,
            t = s.turn.lock() => t,
        };
        if !s.wait_retry_gate().await {
            break;
        }
        let got_turn = Instant::now();
        let mut why = if turn.again { Why::Again } else { Why::Poll };
        if !turn.again {
            let next_poll = turn.last_claim.map_or_else(tokio::time::Instant::now, |t| {
                tokio::time::Instant::from_std(poll_deadline(t, settings.poll_interval))
            });
            tokio::select! {
                biased;
                _ = s.shutdown.cancelled() => break,
                _ = s.wake.notified() => why = Why::Notify,
                _ = tokio::time::sleep_until(next_poll) => {}
            }
            // A batch that failed meanwhile holds claims off.
            if !s.wait_retry_gate().await {
                break;
            }
        }
        let started = Instant::now();
        turn.last_claim = Some(started);
        let scan = lock(&s.cursor).next(started);
        let producer = lock(&s.producer).clone();
        let mut trace = Trace::new(index, why, got_turn, started);
        let outcome = relay_batch(s, &producer, scan, turn, &mut trace).await;
        match outcome {
            Ok(batch) => {
                lock(&s.pg).ok();
                // A claim that found nothing (or only rows another batch holds) never talked
                // to Kafka: it must not report Kafka as recovered, nor make the relay ready
                // while another batch is failing to publish.
                if batch.claimed > 0 {
                    lock(&s.kafka).ok();
                    s.kafka_down
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
                s.health
                    .set_ready(!s.kafka_down.load(std::sync::atomic::Ordering::Relaxed));
                if batch.claimed > 0 {
                    stats.batches.inc();
                    stats
                        .published
                        .inc_by((batch.claimed - batch.buried) as u64);
                    stats.dead.inc_by(batch.buried as u64);
                    stats
                        .batch_duration
                        .observe(started.elapsed().as_secs_f64());
                    // The whole batch was committed at once: one clock reading for all of it.
                    let now = chrono::Utc::now().timestamp_micros();
                    for created_at in &batch.created {
                        stats
                            .latency
                            .observe(metrics::seconds_between_micros(*created_at, now));
                    }
                    lock(&s.cursor).claimed(Instant::now(), batch.max_id);
                    trace.emit(&batch);
                    tracing::debug!(
                        worker = index,
                        rows = batch.claimed,
                        buried = batch.buried,
                        "batch committed"
                    );
                }
            }
            // Already recorded, readiness cleared and claims held off by `Shared::failed`.
            Err(Failed::Batch) => {}
            Err(Failed::Fatal(e)) => return Err(e),
        }
    }
    Ok(())
}

fn pool(settings: &RelaySettings) -> Result<Pool, RelayError> {
    let config = db::parse_config(&settings.database_url)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // One connection per batch in flight, and one for start-up checks.
    Pool::builder(manager)
        .max_size(settings.in_flight + 1)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| RelayError::Pool(e.to_string()))
}

/// Waits for PostgreSQL and Kafka, checks the schema and the topic. Returns the event
/// `source`, or None when cancelled first.
async fn startup(
    settings: &RelaySettings,
    pool: &Pool,
    shutdown: &CancellationToken,
) -> Result<Option<String>, RelayError> {
    let mut pg = retry::Health::new("postgres", settings.max_backoff);
    let source = loop {
        let attempt = async {
            let client = db::connect(&settings.database_url).await?;
            outbox::check_schema(&client)
                .await
                .map_err(StartupError::Schema)?;
            let name = outbox::database_name(&client)
                .await
                .map_err(|e| StartupError::Schema(e.into()))?;
            Ok::<_, StartupError>(name)
        };
        match attempt.await {
            Ok(name) => break settings.source.clone().unwrap_or(name),
            Err(StartupError::Connect(e)) if e.is_transient() => {
                let delay = pg.failed(&chain(&e), false);
                if sleep_or_cancel(delay, shutdown).await {
                    return Ok(None);
                }
            }
            Err(StartupError::Connect(e)) => return Err(e.into()),
            Err(StartupError::Schema(e)) => return Err(RelayError::Schema(e)),
        }
    };
    pg.ok();
    drop(pool.get().await.ok()); // warm the pool; errors surface in the loop

    let mut kafka = retry::Health::new("kafka", settings.max_backoff);
    loop {
        match settings
            .kafka
            .ensure_topics(
                std::slice::from_ref(&settings.topic),
                settings.create_topics,
            )
            .await
        {
            Ok(()) => break,
            Err(e) if e.is_transient() => {
                let delay = kafka.failed(&chain(&e), false);
                if sleep_or_cancel(delay, shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    kafka.ok();
    Ok(Some(source))
}

enum StartupError {
    Connect(ConnectError),
    Schema(SchemaError),
}

impl From<ConnectError> for StartupError {
    fn from(e: ConnectError) -> Self {
        StartupError::Connect(e)
    }
}

/// tokio's timer fires after its deadline, 0.5–2 ms here (it rounds the deadline up to its
/// 1 ms tick, then parks the thread for whole milliseconds): an idle poll set for 10 ms
/// after the last claim started the next one 10.8–10.9 ms after it at p99.
const TIMER_LEAD: Duration = Duration::from_millis(1);

/// When the next idle poll's timer is set: `TIMER_LEAD` early (at most a fifth of the
/// interval, so short intervals never claim back to back), so that idle claims start every
/// `--poll-interval` as the contract says, not a millisecond later (BENCHMARKS.md, item 20).
/// At 5 ms a tenth (0.5 ms) left the polls 5.6 ms apart.
fn poll_deadline(last_claim: Instant, interval: Duration) -> Instant {
    last_claim + interval - TIMER_LEAD.min(interval / 5)
}

/// Sleeps `delay`; true if shutdown came first.
async fn sleep_or_cancel(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// How a batch ended when it did not commit.
enum Failed {
    /// Rolled back; recorded and held off by [`Shared::failed`].
    Batch,
    /// The producer could not be recreated: the relay stops.
    Fatal(RelayError),
}

/// One batch, in one transaction on one connection. `turn` is released as soon as the rows
/// are claimed (locked), telling the next claim whether to go at once (a full batch). A
/// sweep ([`Scan::Sweep`]) releases it before claiming: under a long-open transaction elsewhere
/// it walks every dead tuple since, and ordinary claims from the hint need not wait for it
/// (SKIP LOCKED keeps the two apart). A failure is recorded with [`Shared::failed`] before
/// the transaction is dropped (which rolls it back), so no worker claims the released rows
/// before the backoff has passed.
async fn relay_batch(
    s: &Shared,
    producer: &publish::RelayProducer,
    scan: Scan,
    turn: tokio::sync::MutexGuard<'_, Turn>,
    trace: &mut Trace,
) -> Result<Batch, Failed> {
    let settings = &s.settings;
    let fail = |e: BatchError| match s.failed(&e) {
        Ok(()) => Failed::Batch,
        Err(fatal) => Failed::Fatal(fatal),
    };
    let mut turn = Some(turn);
    if scan == Scan::Sweep {
        drop(turn.take());
    }
    let from_id = scan.from_id();
    // Releases the turn; the next claim goes at once if `again`, and continues after
    // `continue_after` (a full batch's highest id) instead of at the trailing hint.
    let mut pass = |again: bool, continue_after: Option<i64>| {
        if let Some(mut t) = turn.take() {
            lock(&s.cursor).continue_after(continue_after);
            t.again = again;
        }
    };
    let mut client = match s.pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let failed = fail(BatchError::Postgres(chain(&e)));
            pass(true, None); // after `fail` set the retry gate the next claim waits for
            return Err(failed);
        }
    };
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => {
            let failed = fail(e.into());
            pass(true, None);
            return Err(failed);
        }
    };
    let claim_started = Instant::now();
    let raw = match outbox::claim(&tx, settings.batch_size, from_id).await {
        Ok(raw) => {
            s.health
                .stats
                .claim_duration
                .observe(claim_started.elapsed().as_secs_f64());
            trace.claimed = trace.stamp();
            raw
        }
        Err(e) if outbox::is_unreadable_text(&e) => {
            drop(tx); // aborted: rolls back
            let failed = match bury_unreadable(s, &mut client, from_id).await {
                // The next claim goes at once, past the rows moved.
                Ok(moved) if moved > 0 => None,
                // None of the rows was unreadable any more: an ordinary failure.
                Ok(_) => Some(fail(e.into())),
                Err(e) => Some(fail(e.into())),
            };
            pass(true, None);
            return match failed {
                None => Ok(Batch::default()),
                Some(failed) => Err(failed),
            };
        }
        Err(e) => {
            let failed = fail(e.into());
            pass(true, None);
            return Err(failed);
        }
    };
    let full = raw.len() as i64 >= settings.batch_size;
    pass(full, if full { raw.max_id() } else { None });
    if raw.is_empty() {
        tx.rollback().await.map_err(|e| fail(e.into()))?;
        return Ok(Batch::default());
    }
    // Let the next claim start before this task decodes and enqueues its rows, which for a
    // large batch is milliseconds of CPU without an await. The worker woken by the turn sits
    // in this thread's LIFO slot, which other threads cannot steal: without this yield it
    // waited for all of that, and the claims, which take turns, with it (BENCHMARKS.md).
    tokio::task::yield_now().await;
    let rows = match raw.rows() {
        Ok(rows) => rows,
        Err(undecodable) => {
            // The claim rolls back (its rows are released below any continuation point, so
            // the next claims start at the hint again) and the row is moved on its own.
            drop(tx);
            lock(&s.cursor).continue_after(None);
            bury_undecodable(s, &mut client, &undecodable)
                .await
                .map_err(|e| fail(e.into()))?;
            return Ok(Batch::default());
        }
    };
    let enqueued = publish::enqueue_batch(producer, &rows, &settings.topic, &s.encoder).await;
    trace.sent = trace.stamp();
    let outcomes = enqueued
        .outcomes()
        .await
        .map_err(|e| fail(BatchError::Kafka(e)))?;
    trace.acked = trace.stamp();
    let mut buried = 0;
    for (row, outcome) in rows.iter().zip(&outcomes) {
        if let RecordOutcome::Rejected(reason) = outcome {
            tracing::error!(
                id = row.id,
                event_id = %row.event_id,
                error = reason,
                "this row can never be published (the broker refuses it, or no record can carry it); moved to invalidator.outbox_dead"
            );
            outbox::bury(&tx, row, reason)
                .await
                .map_err(|e| fail(e.into()))?;
            buried += 1;
        }
    }
    if settings.failpoint == Some(Failpoint::RelayBeforeCommit) {
        tracing::warn!("failpoint relay-before-commit: aborting after publish, before COMMIT");
        std::process::abort();
    }
    tx.commit().await.map_err(|e| fail(e.into()))?;
    trace.committed = trace.stamp();
    if trace.enabled {
        trace.event_ids = rows.iter().map(|r| r.event_id).collect();
    }
    Ok(Batch {
        claimed: rows.len(),
        buried,
        max_id: rows.last().map_or(0, |r| r.id),
        created: rows
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| !matches!(o, RecordOutcome::Rejected(_)))
            .filter_map(|(r, _)| r.created_at.unix_micros())
            .collect(),
    })
}

/// A claim failed on text PostgreSQL cannot send as UTF-8 ([`outbox::is_unreadable_text`]):
/// moves the rows that claim would have taken and that cannot be read to `outbox_dead`
/// (logged and counted as dead), so the relay goes on past them instead of failing at the
/// same row forever. Returns how many were moved.
async fn bury_unreadable(
    s: &Shared,
    client: &mut deadpool_postgres::Object,
    from_id: i64,
) -> Result<usize, tokio_postgres::Error> {
    let mut tx = client.transaction().await?;
    let ids = outbox::bury_unreadable(&mut tx, s.settings.batch_size, from_id).await?;
    tx.commit().await?;
    for id in &ids {
        tracing::error!(
            id,
            error = outbox::UNREADABLE_ERROR,
            "a row cannot be read as UTF-8; moved to invalidator.outbox_dead"
        );
    }
    s.health.stats.dead.inc_by(ids.len() as u64);
    Ok(ids.len())
}

/// Moves a claimed row this client cannot decode ([`outbox::RawClaim::rows`]) to
/// `outbox_dead` inside the database, after its claim rolled back, so the relay goes on past
/// it instead of stopping at it.
async fn bury_undecodable(
    s: &Shared,
    client: &mut deadpool_postgres::Object,
    row: &outbox::Undecodable,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let moved = outbox::move_to_dead(&tx, row.id, &row.error).await?;
    tx.commit().await?;
    if moved {
        tracing::error!(
            id = row.id,
            error = row.error,
            "a row cannot be read; moved to invalidator.outbox_dead"
        );
        s.health.stats.dead.inc();
    }
    Ok(())
}

/// The `tracing` target of the per-batch trace: off unless `RUST_LOG` names it at TRACE
/// (e.g. `RUST_LOG=info,invalidator::relay::trace=trace`).
pub const TRACE_TARGET: &str = "invalidator::relay::trace";

/// What made a worker claim.
#[derive(Debug, Clone, Copy)]
enum Why {
    /// The last claim came back full or failed, or none has run yet.
    Again,
    /// A NOTIFY wake-up.
    Notify,
    /// The poll interval since the last claim started.
    Poll,
}

/// One committed batch's timeline, logged at TRACE on [`TRACE_TARGET`] as one event with
/// wall-clock microseconds, so a benchmark can follow each event through the relay (it
/// joins `event_ids` to its own commit and fetch times). Nothing is collected when the
/// target is off.
struct Trace {
    enabled: bool,
    worker: usize,
    why: Why,
    /// The worker got the claim turn (before waiting for a reason to claim).
    got_turn: Instant,
    /// It decided to claim.
    started: Instant,
    /// The claim statement returned (rows locked).
    claimed: Option<Instant>,
    /// Every record was handed to librdkafka.
    sent: Option<Instant>,
    /// Every delivery report was in.
    acked: Option<Instant>,
    /// COMMIT returned.
    committed: Option<Instant>,
    event_ids: Vec<uuid::Uuid>,
}

impl Trace {
    fn new(worker: usize, why: Why, got_turn: Instant, started: Instant) -> Trace {
        Trace {
            enabled: tracing::enabled!(target: TRACE_TARGET, tracing::Level::TRACE),
            worker,
            why,
            got_turn,
            started,
            claimed: None,
            sent: None,
            acked: None,
            committed: None,
            event_ids: Vec::new(),
        }
    }

    /// Now, if the trace is on (no clock read on the hot path otherwise).
    fn stamp(&self) -> Option<Instant> {
        self.enabled.then(Instant::now)
    }

    fn emit(&self, batch: &Batch) {
        if !self.enabled {
            return;
        }
        let clock = crate::telemetry::WallClock::now();
        let unix_us = |at: Option<Instant>| at.map_or(0, |at| clock.unix_us(at));
        let ids = crate::telemetry::trace_ids(self.event_ids.iter().copied());
        tracing::trace!(
            target: TRACE_TARGET,
            worker = self.worker,
            why = ?self.why,
            rows = batch.claimed,
            got_turn_us = unix_us(Some(self.got_turn)),
            started_us = unix_us(Some(self.started)),
            claimed_us = unix_us(self.claimed),
            sent_us = unix_us(self.sent),
            acked_us = unix_us(self.acked),
            committed_us = unix_us(self.committed),
            event_ids = ids,
            "batch trace"
        );
    }
}

/// Keeps one LISTEN connection (outside the pool: pooled connections drop notifications
/// and are `UNLISTEN *`-ed on recycling) and wakes the loop on each notification.
async fn listen(settings: RelaySettings, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut health = retry::Health::new("postgres listener", settings.max_backoff);
    while !shutdown.is_cancelled() {
        let config = match db::parse_config(&settings.database_url) {
            Ok(c) => c,
            Err(_) => return, // already validated at start-up
        };
        let (client, mut connection) = match config.connect(NoTls).await {
            Ok(pair) => pair,
            Err(e) => {
                let delay = health.failed(&chain(&e), false);
                if sleep_or_cancel(delay, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel::<()>();
        let driver_wake = wake.clone();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => driver_wake.notify_one(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "listener connection failed");
                        break;
                    }
                }
            }
            let _ = closed_tx.send(());
        });
        if let Err(e) = client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await
        {
            let delay = health.failed(&chain(&e), false);
            if sleep_or_cancel(delay, &shutdown).await {
                return;
            }
            continue;
        }
        health.ok();
        wake.notify_one(); // anything inserted while we were not listening
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = &mut closed_rx => {}
        }
    }
}

/// Samples the outbox backlog and the age of its oldest row into the gauges every
/// [`metrics::BACKLOG_SAMPLE`], on a connection of its own (a slow `count(*)` on a huge
/// backlog must not hold a pool connection the batches need).
async fn sample_backlog(settings: RelaySettings, health: Health, shutdown: CancellationToken) {
    let mut client = None;
    loop {
        if client.is_none() {
            client = db::connect(&settings.database_url).await.ok();
        }
        if let Some(c) = &client {
            match outbox::backlog(c).await {
                Ok(b) => {
                    health.stats.backlog.set(b.rows);
                    health.stats.oldest_age.set(b.oldest_age_seconds);
                }
                Err(e) => {
                    tracing::debug!(error = %chain(&e), "sampling the outbox backlog failed");
                    client = None;
                }
            }
        }
        if sleep_or_cancel(metrics::BACKLOG_SAMPLE, &shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_deadline_leads_by_a_millisecond_and_never_by_more_than_a_fifth() {
        let t = Instant::now();
        let at = |ms: u64| poll_deadline(t, Duration::from_millis(ms)) - t;
        // The default 10 ms: set 1 ms early, for a timer that fires late.
        assert_eq!(at(10), Duration::from_millis(9));
        assert_eq!(at(1000), Duration::from_millis(999));
        assert_eq!(at(5), Duration::from_millis(4));
        // Short intervals: never more than a fifth early, so claims are not run back to back.
        assert_eq!(at(2), Duration::from_micros(1600));
        assert_eq!(at(1), Duration::from_micros(800));
    }
}
