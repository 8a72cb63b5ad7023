//! Dead-letter records (DESIGN §5): the original key, value and headers, plus the
//! `invalidator-dlq-*` headers saying why, where from, after how many attempts, and when.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use crate::kafka::KafkaSettings;
use crate::wire::headers;

use super::error::DlqReason;

/// Longest `invalidator-dlq-error` header, in bytes: errors can quote a 2 MB value.
const MAX_ERROR_BYTES: usize = 1024;

/// Why one record is being dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub reason: DlqReason,
    /// The error, one line.
    pub error: String,
    /// Redis attempts made (0 when the record never reached Redis).
    pub attempts: u32,
}

/// The producer that writes `<topic>.dlq`.
pub struct DlqProducer {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl DlqProducer {
    /// An idempotent, acks=all producer whose deliveries fail after `timeout`.
    pub fn new(kafka: &KafkaSettings, topic: &str, timeout: Duration) -> Result<Self, KafkaError> {
        let timeout_ms = timeout.as_millis().max(1).to_string();
        let producer: FutureProducer = kafka
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "5"),
                // A poison record can be large (it is copied whole); the broker's own
                // limit still applies.
                ("message.max.bytes", "16777216"),
            ])
            .set("message.timeout.ms", &timeout_ms)
            .create()?;
        Ok(DlqProducer {
            producer,
            topic: topic.to_string(),
            timeout,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes one dead-letter record and waits for the broker's acknowledgement.
    pub async fn send(&self, original: &OwnedMessage, dead: &DeadLetter) -> Result<(), KafkaError> {
        let record_headers = dlq_headers(original, dead);
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(record_headers);
        if let Some(k) = original.key() {
            record = record.key(k);
        }
        if let Some(v) = original.payload() {
            record = record.payload(v);
        }
        self.producer
            .send(record, self.timeout)
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// `topic/partition/offset` of a record: the `invalidator-dlq-source` header.
pub fn source_ref(m: &OwnedMessage) -> String {
    format!("{}/{}/{}", m.topic(), m.partition(), m.offset())
}

/// The original headers (minus any earlier `invalidator-dlq-*`) plus this failure's.
fn dlq_headers(original: &OwnedMessage, dead: &DeadLetter) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(h) = original.headers() {
        for header in h.iter() {
            if header.key.starts_with("invalidator-dlq-") {
                continue;
            }
            out = out.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    let error = truncate(&dead.error.replace(['\n', '\r'], " "), MAX_ERROR_BYTES);
    let source = source_ref(original);
    let attempts = dead.attempts.to_string();
    let failed_at = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    for (k, v) in [
        (headers::DLQ_REASON, dead.reason.as_str()),
        (headers::DLQ_ERROR, error.as_str()),
        (headers::DLQ_SOURCE, source.as_str()),
        (headers::DLQ_ATTEMPTS, attempts.as_str()),
        (headers::DLQ_FAILED_AT, failed_at.as_str()),
    ] {
        out = out.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    out
}

/// At most `max` bytes, cut at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    #[test]
    /// A DLQ record keeps the original headers and adds the five of DESIGN §5.
    fn headers_are_complete() {
        let original = OwnedMessage::new(
            Some(b"v".to_vec()),
            Some(b"k".to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            3,
            42,
            Some(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "traceparent",
                        value: Some("00-abc"),
                    })
                    .insert(Header {
                        key: headers::DLQ_REASON,
                        value: Some("stale"),
                    }),
            ),
        );
        let h = dlq_headers(
            &original,
            &DeadLetter {
                reason: DlqReason::RejectedKey,
                error: "bad\nkey".into(),
                attempts: 0,
            },
        );
        let get = |k: &str| -> Vec<String> {
            h.iter()
                .filter(|x| x.key == k)
                .map(|x| String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())
                .collect()
        };
        assert_eq!(get("traceparent"), ["00-abc"]);
        assert_eq!(get(headers::DLQ_REASON), ["rejected-key"]);
        assert_eq!(get(headers::DLQ_ERROR), ["bad key"]);
        assert_eq!(get(headers::DLQ_SOURCE), ["t/3/42"]);
        assert_eq!(get(headers::DLQ_ATTEMPTS), ["0"]);
        assert_eq!(get(headers::DLQ_FAILED_AT).len(), 1);
    }

    #[test]
    /// Long errors are cut at a character boundary.
    fn truncates_on_char_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1023);
        assert!(t.len() <= 1023 + '…'.len_utf8());
        assert!(t.ends_with('…'));
    }
}
