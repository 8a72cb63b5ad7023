//! Turning outbox rows into Kafka records and publishing a batch of them: every record is
//! enqueued first ([`enqueue_batch`]), then all delivery reports are awaited
//! ([`Enqueued::outcomes`]).

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::KafkaSettings;
use crate::outbox::OutboxRow;
use crate::wire::{self, EventRef, Op};

/// The producer settings DESIGN §2 requires. `-X` may tune others (linger, batch size, …).
pub fn create_producer(
    kafka: &KafkaSettings,
    delivery_timeout: Duration,
) -> Result<FutureProducer, KafkaError> {
    let timeout_ms = delivery_timeout.as_millis().to_string();
    kafka
        .client_config(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            // A batch is enqueued at once and awaited together, so a long linger only adds
            // latency; 2 ms still lets librdkafka pack concurrent records.
            ("linger.ms", "2"),
            ("message.timeout.ms", &timeout_ms),
        ])
        .create()
}

/// A record ready to send.
pub struct Prepared<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// Builds the record of DESIGN §4 for a row. The row's headers are carried over (string
/// values as they are, other JSON values as JSON text); ours win over theirs on collision.
pub fn prepare<'a>(
    row: &'a OutboxRow,
    default_topic: &'a str,
    source: &str,
) -> Result<Prepared<'a>, String> {
    let op = Op::parse(&row.op).ok_or_else(|| format!("unknown op {:?}", row.op))?;
    // Borrowed: the relay encodes every row once, and copying its keys only to serialize
    // them showed in the profile (allocation was the largest share of the relay's CPU).
    let event = EventRef {
        v: wire::SCHEMA_VERSION,
        event_id: row.event_id,
        op,
        keys: &row.keys,
        created_at: row.created_at,
        source: Some(source),
    };
    let mut event_id_buf = uuid::Uuid::encode_buffer();
    let event_id: &str = row.event_id.hyphenated().encode_lower(&mut event_id_buf);
    let mut headers =
        OwnedHeaders::new_with_capacity(2 + row.headers.as_object().map_or(0, |o| o.len()))
            .insert(Header {
                key: wire::headers::CONTENT_TYPE,
                value: Some(wire::headers::CONTENT_TYPE_JSON),
            })
            .insert(Header {
                key: wire::headers::EVENT_ID,
                value: Some(event_id),
            });
    if let Some(object) = row.headers.as_object() {
        for (k, v) in object {
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
    }
    Ok(Prepared {
        topic: row.topic.as_deref().unwrap_or(default_topic),
        key: &row.partition_key,
        payload: event.encode(),
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
    pending: Vec<Result<(DeliveryFuture, bool), String>>,
    transient: Option<KafkaError>,
}

/// Hands every row's record to librdkafka (waiting out a full local queue).
pub async fn enqueue_batch(
    producer: &FutureProducer,
    rows: &[OutboxRow],
    default_topic: &str,
    source: &str,
) -> Enqueued {
    let mut pending = Vec::with_capacity(rows.len());
    let mut transient: Option<KafkaError> = None;
    for row in rows {
        let prepared = match prepare(row, default_topic, source) {
            Ok(p) => p,
            Err(reason) => {
                pending.push(Err(reason));
                continue;
            }
        };
        let is_default = prepared.topic == default_topic;
        let mut record = FutureRecord::to(prepared.topic)
            .key(prepared.key)
            .payload(&prepared.payload)
            .headers(prepared.headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(Ok((delivery, is_default)));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: give the background thread a moment to drain
                    // it, then send the same record (handed back, headers and all) again.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    match classify(&e, is_default) {
                        DeliveryClass::Permanent => pending.push(Err(e.to_string())),
                        DeliveryClass::Transient => {
                            transient.get_or_insert(e);
                            pending.push(Err(String::new()));
                        }
                    }
                    break;
                }
            }
        }
    }

    Enqueued { pending, transient }
}

impl Enqueued {
    /// Awaits every delivery report; one outcome per row, or the first transient error
    /// (after all reports are in, so nothing is left in flight).
    pub async fn outcomes(self) -> Result<Vec<RecordOutcome>, KafkaError> {
        let Enqueued {
            pending,
            mut transient,
        } = self;
        // One after another, in order: the batch is done when its last report is in, and once
        // the first is, most of the rest are already there (a ready future returns at once).
        // `join_all` over thousands of futures polled them through `FuturesOrdered`, whose
        // bookkeeping was 20% of a draining relay's CPU (perf, BENCHMARKS.md).
        let mut outcomes = Vec::with_capacity(pending.len());
        for p in pending {
            let result = match p {
                Err(reason) => Err((reason, None)),
                Ok((delivery, is_default)) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err((e.to_string(), Some((e, is_default)))),
                    Err(_canceled) => Err((
                        "the producer dropped the delivery report".to_string(),
                        Some((KafkaError::Canceled, is_default)),
                    )),
                },
            };
            match result {
                Ok(()) => outcomes.push(RecordOutcome::Delivered),
                Err((reason, None)) => outcomes.push(RecordOutcome::Rejected(reason)),
                Err((reason, Some((e, is_default)))) => match classify(&e, is_default) {
                    DeliveryClass::Permanent => outcomes.push(RecordOutcome::Rejected(reason)),
                    DeliveryClass::Transient => {
                        transient.get_or_insert(e);
                        outcomes.push(RecordOutcome::Rejected(reason));
                    }
                },
            }
        }
        match transient {
            Some(e) => Err(e),
            None => Ok(outcomes),
        }
    }
}

/// Whether the producer hit a fatal error (idempotence broken) and must be recreated.
pub fn is_fatal(producer: &FutureProducer) -> Option<String> {
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

    fn row() -> OutboxRow {
        OutboxRow {
            id: 7,
            event_id: uuid::Uuid::new_v4(),
            created_at: Utc::now(),
            topic: None,
            partition_key: "product:42".into(),
            op: "bump".into(),
            keys: vec!["product:42".into(), "catalog".into()],
            headers: serde_json::json!({"traceparent": "00-abc-def-01", "n": 3, "content-type": "text/evil"}),
        }
    }

    #[test]
    /// The record carries the event JSON, key = partition_key, our headers and the row's.
    fn record_has_value_key_and_headers() {
        let r = row();
        let p = prepare(&r, "cache-invalidations", "shop").unwrap();
        assert_eq!(p.topic, "cache-invalidations");
        assert_eq!(p.key, "product:42");
        let e = wire::decode(&p.payload).unwrap();
        assert_eq!(
            (e.event_id, e.op, e.keys.clone(), e.source.as_deref()),
            (r.event_id, Op::Bump, r.keys.clone(), Some("shop"))
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
}
