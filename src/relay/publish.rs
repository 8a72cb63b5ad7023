//! Turning outbox rows into Kafka records and publishing a batch of them: every record is
//! enqueued first ([`enqueue_batch`]), then all delivery reports are awaited
//! ([`Enqueued::outcomes`]).
//!
//! Delivery reports are collected per batch by the producer's own context
//! ([`BatchDeliveries`]), not through rdkafka's `FutureProducer`: that one allocates a
//! oneshot channel and a box for every record and resolves one future per record, about a
//! thousand instructions per row, 6% of a draining relay's (callgrind, BENCHMARKS.md item 15).
//! Here a record's delivery opaque is a plain number (its batch and its index), a batch keeps
//! only its failures, and its task is woken once, by the last report.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::lock;
use crate::kafka::KafkaSettings;
use crate::outbox::OutboxRow;
use crate::wire::{self, Op};

/// The relay's producer: librdkafka's, polled by its own thread, reporting deliveries to
/// [`BatchDeliveries`].
pub type RelayProducer = ThreadedProducer<BatchDeliveries>;

/// The producer settings DESIGN §2 requires. `-X` may tune others (linger, batch size, …).
pub fn producer_config(kafka: &KafkaSettings, delivery_timeout: Duration) -> ClientConfig {
    let timeout_ms = delivery_timeout.as_millis().to_string();
    kafka.client_config(&[
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("compression.type", "lz4"),
        // A batch is enqueued at once and awaited together, so a linger only holds it back:
        // 2 ms -> 0 took 2 ms off the p50 and p99 at 1k events/s with polling and changed no
        // drain rate (BENCHMARKS.md item 16). With enable_notify()'s claims of one or two
        // rows, a linger merges consecutive claims; README suggests `-X linger.ms` there.
        ("linger.ms", "0"),
        ("message.timeout.ms", &timeout_ms),
    ])
}

/// The relay's producer ([`producer_config`]).
pub fn create_producer(
    kafka: &KafkaSettings,
    delivery_timeout: Duration,
) -> Result<RelayProducer, KafkaError> {
    producer_config(kafka, delivery_timeout).create_with_context(BatchDeliveries::default())
}

/// Collects delivery reports by batch. A record's delivery opaque is its batch's number in
/// the high 32 bits and its index in the batch in the low 32.
#[derive(Default)]
pub struct BatchDeliveries {
    next: AtomicU32,
    /// The batches awaiting reports: at most `--in-flight`, so a short list.
    open: Mutex<Vec<(u32, Arc<Reports>)>>,
}

const _: () = assert!(
    usize::BITS >= 64,
    "delivery opaques pack two u32s into a usize"
);

/// One batch's reports so far.
struct Reports {
    /// Records enqueued and not yet reported, plus one while records are still being
    /// enqueued (so the count cannot reach zero early).
    left: AtomicUsize,
    /// The records that failed, by index.
    failed: Mutex<Vec<(usize, KafkaError)>>,
    /// Woken once, by the report that takes `left` to zero.
    done: tokio::sync::Notify,
}

impl ClientContext for BatchDeliveries {}

impl ProducerContext for BatchDeliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (batch, index) = ((opaque >> 32) as u32, opaque & 0xffff_ffff);
        let reports = {
            let open = lock(&self.open);
            match open.iter().find(|(b, _)| *b == batch) {
                Some((_, r)) => Arc::clone(r),
                // The batch was given up (its task dropped): nobody waits for this report.
                None => return,
            }
        };
        if let Err((e, _)) = result {
            lock(&reports.failed).push((index, e.clone()));
        }
        if reports.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            reports.done.notify_one();
        }
    }
}

impl BatchDeliveries {
    fn open(&self) -> (u32, Arc<Reports>) {
        let batch = self.next.fetch_add(1, Ordering::Relaxed);
        let reports = Arc::new(Reports {
            left: AtomicUsize::new(1),
            failed: Mutex::new(Vec::new()),
            done: tokio::sync::Notify::new(),
        });
        lock(&self.open).push((batch, Arc::clone(&reports)));
        (batch, reports)
    }

    fn close(&self, batch: u32) {
        lock(&self.open).retain(|(b, _)| *b != batch);
    }
}

/// A batch registered with the producer's context; unregistered when dropped, so reports
/// that come after a batch was given up are ignored.
struct Registration {
    producer: RelayProducer,
    batch: u32,
    reports: Arc<Reports>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.producer.context().close(self.batch);
    }
}

/// A record ready to send.
pub struct Prepared<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// Builds the record of DESIGN §4 for a row, with the relay's [`wire::Encoder`] (which
/// carries its `--source`). The row's headers are carried over (string values as they are,
/// other JSON values as JSON text); ours win over theirs on collision. An error (the row is
/// buried with it) for what no record can carry.
pub fn prepare<'a>(
    row: &'a OutboxRow<'a>,
    default_topic: &'a str,
    encoder: &wire::Encoder,
) -> Result<Prepared<'a>, String> {
    let op = Op::parse(row.op).ok_or_else(|| format!("unknown op {:?}", row.op))?;
    let theirs = row
        .headers
        .object()
        .map_err(|e| format!("the row's headers are not a JSON object: {e}"))?;
    let mut time = [0u8; 32];
    let created_at = row
        .created_at
        .unix_micros()
        .and_then(|us| wire::micros::rfc3339_unix_micros(us, &mut time))
        .ok_or_else(|| {
            format!(
                "created_at is {}, which the event's RFC 3339 timestamp cannot carry (years \
                 0000-9999 only): invalidate its keys again with invalidator.invalidate(), \
                 which stamps the current time, then delete this row",
                row.created_at
            )
        })?;
    // Encoded once, for the header and the event.
    let mut event_id_buf = uuid::Uuid::encode_buffer();
    let event_id: &str = row.event_id.hyphenated().encode_lower(&mut event_id_buf);
    // Keys borrowed from the row: the relay encodes every row once, and copying its keys only
    // to serialize them showed in the profile (allocation was the largest share of its CPU).
    let payload = encoder.encode(wire::SCHEMA_VERSION, event_id, op, &row.keys, created_at);
    let mut headers = OwnedHeaders::new_with_capacity(2 + theirs.len())
        .insert(Header {
            key: wire::headers::CONTENT_TYPE,
            value: Some(wire::headers::CONTENT_TYPE_JSON),
        })
        .insert(Header {
            key: wire::headers::EVENT_ID,
            value: Some(event_id),
        });
    for (k, v) in &theirs {
        if k == wire::headers::CONTENT_TYPE || k == wire::headers::EVENT_ID {
            continue;
        }
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        headers = headers.insert(Header {
            key: k,
            value: Some(text.as_str()),
        });
    }
    Ok(Prepared {
        topic: row.topic.unwrap_or(default_topic),
        key: row.partition_key,
        payload,
        headers,
    })
}

/// What a failed delivery means for the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryClass {
    /// The broker can never accept this record: move the row to `outbox_dead`.
    Permanent,
    /// Broker down, timeout, leader change…: roll back the batch and retry.
    Transient,
}

/// Sorts a produce or delivery error. `row_topic_is_default` says whether the record went
/// to the relay's own `--topic`: a missing default topic is an operator's problem to fix
/// (retry), a missing topic named by one row is that row's problem (bury it).
pub fn classify(error: &KafkaError, row_topic_is_default: bool) -> DeliveryClass {
    use RDKafkaErrorCode as C;
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        _ => return DeliveryClass::Transient,
    };
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::InvalidTopic
        | C::UnsupportedForMessageFormat
        | C::PolicyViolation => DeliveryClass::Permanent,
        C::UnknownTopic | C::UnknownTopicOrPartition if !row_topic_is_default => {
            DeliveryClass::Permanent
        }
        _ => DeliveryClass::Transient,
    }
}

/// One row's result in a batch that had no transient failure.
#[derive(Debug)]
pub enum RecordOutcome {
    Delivered,
    /// Never deliverable; the reason goes to `outbox_dead.error`.
    Rejected(String),
}

/// A batch whose records are all in librdkafka's queue; [`Enqueued::outcomes`] awaits
/// their delivery reports. Two steps, so the relay can trace when the last record was
/// handed over.
pub struct Enqueued {
    registration: Registration,
    /// Per row: `None` if enqueued, else why it was not (empty for a transient error).
    refused: Vec<Option<String>>,
    /// Per row: whether its record went to the relay's `--topic`.
    to_default: Vec<bool>,
    transient: Option<KafkaError>,
}

/// Hands every row's record to librdkafka (waiting out a full local queue).
pub async fn enqueue_batch(
    producer: &RelayProducer,
    rows: &[OutboxRow<'_>],
    default_topic: &str,
    encoder: &wire::Encoder,
) -> Enqueued {
    let (batch, reports) = producer.context().open();
    let registration = Registration {
        producer: producer.clone(),
        batch,
        reports,
    };
    let mut refused = Vec::with_capacity(rows.len());
    let mut to_default = Vec::with_capacity(rows.len());
    let mut transient: Option<KafkaError> = None;
    for (index, row) in rows.iter().enumerate() {
        let prepared = match prepare(row, default_topic, encoder) {
            Ok(p) => p,
            Err(reason) => {
                refused.push(Some(reason));
                to_default.push(true); // unused: a refused row has no report to classify
                continue;
            }
        };
        let is_default = prepared.topic == default_topic;
        to_default.push(is_default);
        let opaque = ((batch as usize) << 32) | index;
        let mut record = BaseRecord::with_opaque_to(prepared.topic, opaque)
            .key(prepared.key)
            .payload(&prepared.payload)
            .headers(prepared.headers);
        // Counted before the send: its report may come before `send` returns.
        registration.reports.left.fetch_add(1, Ordering::AcqRel);
        loop {
            match producer.send(record) {
                Ok(()) => {
                    refused.push(None);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: give the background thread a moment to drain
                    // it, then send the same record (handed back, headers and all) again.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    // Not enqueued: no report will come for it.
                    registration.reports.left.fetch_sub(1, Ordering::AcqRel);
                    match classify(&e, is_default) {
                        DeliveryClass::Permanent => refused.push(Some(e.to_string())),
                        DeliveryClass::Transient => {
                            transient.get_or_insert(e);
                            refused.push(Some(String::new()));
                        }
                    }
                    break;
                }
            }
        }
    }

    Enqueued {
        registration,
        refused,
        to_default,
        transient,
    }
}

impl Enqueued {
    /// Awaits every delivery report; one outcome per row, or the first transient error
    /// (after all reports are in, so nothing is left in flight).
    pub async fn outcomes(self) -> Result<Vec<RecordOutcome>, KafkaError> {
        let Enqueued {
            registration,
            refused,
            to_default,
            mut transient,
        } = self;
        let reports = &registration.reports;
        // Drop the count's hold: zero now means every report is already in; otherwise the
        // last report wakes this task (`notify_one` keeps the wake-up if it comes first).
        if reports.left.fetch_sub(1, Ordering::AcqRel) != 1 {
            reports.done.notified().await;
        }
        let mut outcomes: Vec<RecordOutcome> = refused
            .into_iter()
            .map(|r| match r {
                None => RecordOutcome::Delivered,
                Some(reason) => RecordOutcome::Rejected(reason),
            })
            .collect();
        for (index, e) in std::mem::take(&mut *lock(&reports.failed)) {
            if classify(&e, to_default[index]) == DeliveryClass::Transient {
                transient.get_or_insert(e.clone());
            }
            outcomes[index] = RecordOutcome::Rejected(e.to_string());
        }
        match transient {
            Some(e) => Err(e),
            None => Ok(outcomes),
        }
    }
}

/// Whether the producer hit a fatal error (idempotence broken) and must be recreated.
pub fn is_fatal(producer: &RelayProducer) -> Option<String> {
    producer
        .client()
        .fatal_error()
        .map(|(code, reason)| format!("{code}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use rdkafka::message::Headers;

    const HEADERS: &str =
        r#"{"n": 3, "traceparent": "00-abc-def-01", "content-type": "text/evil"}"#;

    fn row() -> OutboxRow<'static> {
        OutboxRow {
            id: 7,
            event_id: uuid::Uuid::new_v4(),
            created_at: crate::outbox::PgTimestamp::from_datetime(Utc::now()),
            topic: None,
            partition_key: "product:42",
            op: "bump",
            keys: vec!["product:42", "catalog"],
            headers: crate::outbox::JsonText(HEADERS),
        }
    }

    #[test]
    /// The record carries the event JSON, key = partition_key, our headers and the row's.
    fn record_has_value_key_and_headers() {
        let r = row();
        let p = prepare(&r, "cache-invalidations", &wire::Encoder::new(Some("shop"))).unwrap();
        assert_eq!(p.topic, "cache-invalidations");
        assert_eq!(p.key, "product:42");
        let e = wire::decode(&p.payload).unwrap();
        assert_eq!(
            (e.event_id, e.op, e.keys.clone(), e.source.as_deref()),
            (
                r.event_id,
                Op::Bump,
                vec!["product:42".to_string(), "catalog".to_string()],
                Some("shop")
            )
        );
        assert_eq!(
            Some(e.created_at.timestamp_micros()),
            r.created_at.unix_micros()
        );
        let hs: Vec<(String, String)> = p
            .headers
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        assert!(hs.contains(&("content-type".into(), "application/json".into())));
        assert!(
            !hs.contains(&("content-type".into(), "text/evil".into())),
            "ours win"
        );
        assert!(hs.contains(&("invalidator-event-id".into(), r.event_id.to_string())));
        assert!(hs.contains(&("traceparent".into(), "00-abc-def-01".into())));
        assert!(hs.contains(&("n".into(), "3".into())));
    }

    #[test]
    /// A created_at that RFC 3339 cannot write (PostgreSQL's ±infinity, years past 9999 or
    /// before year 0) is the row's error, to bury it, saying what to do; the edges of the
    /// range are written.
    fn created_at_outside_rfc3339_is_the_rows_error() {
        use crate::outbox::PgTimestamp;
        use chrono::TimeZone;
        let encoder = wire::Encoder::new(None);
        let at = |t: PgTimestamp| {
            let r = OutboxRow {
                created_at: t,
                ..row()
            };
            prepare(&r, "t", &encoder).map(|p| wire::decode(&p.payload).unwrap().created_at)
        };
        let ymd = |y, m, d, h, mi, sec| Utc.with_ymd_and_hms(y, m, d, h, mi, sec).unwrap();
        for t in [ymd(0, 1, 1, 0, 0, 0), ymd(9999, 12, 31, 23, 59, 59)] {
            assert_eq!(at(PgTimestamp::from_datetime(t)), Ok(t));
        }
        for (t, shown) in [
            (PgTimestamp(i64::MAX), "created_at is infinity,"),
            (PgTimestamp(i64::MIN), "created_at is -infinity,"),
            (
                PgTimestamp::from_datetime(ymd(10000, 1, 1, 0, 0, 0)),
                "created_at is +10000-01-01 00:00:00.000000+00,",
            ),
            (
                PgTimestamp::from_datetime(ymd(-1, 12, 31, 23, 59, 59)),
                "created_at is -0001-12-31 23:59:59.000000+00,",
            ),
        ] {
            let error = at(t).unwrap_err();
            assert!(error.starts_with(shown), "{error}");
            assert!(error.contains("invalidator.invalidate()"), "{error}");
        }
    }

    #[test]
    /// Size errors are permanent; broker trouble is transient; an unknown topic is the row's
    /// fault only when the row chose the topic.
    fn classification() {
        let e = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge), true),
            DeliveryClass::Permanent
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageTimedOut), true),
            DeliveryClass::Transient
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::UnknownTopicOrPartition), true),
            DeliveryClass::Transient
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::UnknownTopicOrPartition), false),
            DeliveryClass::Permanent
        );
        assert_eq!(
            classify(&KafkaError::Canceled, true),
            DeliveryClass::Transient
        );
    }

    fn plain(id: i64, topic: Option<&'static str>) -> OutboxRow<'static> {
        OutboxRow {
            id,
            topic,
            headers: crate::outbox::JsonText("{}"),
            ..row()
        }
    }

    #[tokio::test]
    /// Each delivery report lands on its own row: in one batch, a row naming a topic that does
    /// not exist is rejected (its own fault) and the rows around it are delivered; a row whose
    /// op is unknown is rejected before it is sent. Then a batch whose records time out (the
    /// broker down) is a transient failure, reported after every record's report is in.
    async fn delivery_reports_map_to_their_rows() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        let kafka = KafkaSettings {
            brokers: cluster.bootstrap_servers(),
            options: vec![
                ("allow.auto.create.topics".into(), "false".into()),
                ("topic.metadata.propagation.max.ms".into(), "10".into()),
            ],
        };
        let producer = create_producer(&kafka, Duration::from_secs(5)).unwrap();
        let mut bad_op = plain(4, None);
        bad_op.op = "purge";
        let rows = vec![
            plain(1, None),
            plain(2, Some("no-such-topic")),
            plain(3, Some("t")),
            bad_op,
            plain(5, None),
        ];
        let outcomes = enqueue_batch(&producer, &rows, "t", &wire::Encoder::new(Some("src")))
            .await
            .outcomes()
            .await
            .expect("no transient failure");
        let kinds: Vec<String> = outcomes
            .iter()
            .map(|o| match o {
                RecordOutcome::Delivered => "delivered".to_string(),
                RecordOutcome::Rejected(reason) => reason.to_lowercase(),
            })
            .collect();
        assert_eq!(kinds[0], "delivered");
        assert!(kinds[1].contains("unknown topic"), "{kinds:?}");
        assert_eq!(kinds[2], "delivered");
        assert!(kinds[3].contains("unknown op"), "{kinds:?}");
        assert_eq!(kinds[4], "delivered");
        assert!(
            lock(&producer.context().open).is_empty(),
            "the batch unregistered itself"
        );

        let short = create_producer(&kafka, Duration::from_secs(2)).unwrap();
        // A first record while the broker is up, so the batch below fails by timing out.
        enqueue_batch(&short, &rows[..1], "t", &wire::Encoder::new(Some("src")))
            .await
            .outcomes()
            .await
            .unwrap();
        cluster.broker_down(1).unwrap();
        let failed = enqueue_batch(&short, &rows[..3], "t", &wire::Encoder::new(Some("src")))
            .await
            .outcomes()
            .await;
        let e = failed.expect_err("a broker down is a transient failure");
        assert_eq!(classify(&e, true), DeliveryClass::Transient, "{e}");
    }
}
