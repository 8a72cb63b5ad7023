//! One dead-letter record, parsed: where it sits in the DLQ, the `invalidator-dlq-*` headers
//! (DESIGN §5), and what the original value says. Pure: no I/O.
//!
//! Parsing never fails: a dead-letter record is by definition something that went wrong, so
//! whatever is missing or malformed is left `None` and the record still lists.

use chrono::{DateTime, Utc};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use serde::Serialize;
use uuid::Uuid;

use crate::wire::{self, headers, DlqReason, Op};

/// Where a record came from: the `invalidator-dlq-source` header, `topic/partition/offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl SourceRef {
    /// Parses `topic/partition/offset`. Topic names cannot contain `/`, but split from the
    /// right anyway so only the two numbers have to be well-formed.
    pub fn parse(s: &str) -> Option<SourceRef> {
        let mut parts = s.trim().rsplitn(3, '/');
        let offset = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let topic = parts.next()?;
        if topic.is_empty() || partition < 0 || offset < 0 {
            return None;
        }
        Some(SourceRef {
            topic: topic.to_string(),
            partition,
            offset,
        })
    }
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// A dead-letter record as `dlq list --json` prints it: every field, untruncated.
#[derive(Debug, Clone, Serialize)]
pub struct DlqRecord {
    /// The DLQ topic, partition and offset of this record (`invalidator-replayed-from` names it).
    pub dlq_topic: String,
    pub dlq_partition: i32,
    pub dlq_offset: i64,
    /// `invalidator-dlq-reason` as written (a newer build may write a reason this one does not
    /// know; it is kept as text and matches no `--reason`).
    pub reason: Option<String>,
    pub error: Option<String>,
    /// `invalidator-dlq-source` as written, and parsed.
    pub source: Option<String>,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub attempts: Option<u32>,
    /// Always six fractional digits in JSON (`…T06:00:01.500000Z`), so the strings sort in
    /// time order; chrono's default drops trailing zero groups (`.5Z`, `.500Z`).
    #[serde(serialize_with = "wire::micros::serialize_option")]
    pub failed_at: Option<DateTime<Utc>>,
    /// From the value when it has one, else from the `invalidator-event-id` header.
    pub event_id: Option<Uuid>,
    pub op: Option<Op>,
    pub keys: Option<Vec<String>>,
    /// The record key (the outbox row's partition key), lossy UTF-8.
    pub key: Option<String>,
    /// Why the value is not an event this build applies; `None` when it decodes.
    pub decode_error: Option<String>,
    pub value_bytes: usize,
    /// `invalidator-replayed-from` of the original: it had already been replayed once.
    pub replayed_from: Option<String>,
}

impl DlqRecord {
    /// The parsed reason, if it is one this build knows.
    pub fn reason(&self) -> Option<DlqReason> {
        self.reason.as_deref().and_then(DlqReason::parse)
    }

    /// `dlq-topic/partition/offset`: the value of `invalidator-replayed-from` on a replay.
    pub fn dlq_ref(&self) -> String {
        format!(
            "{}/{}/{}",
            self.dlq_topic, self.dlq_partition, self.dlq_offset
        )
    }

    /// The parsed source, when the header is present and well-formed.
    pub fn source_ref(&self) -> Option<SourceRef> {
        Some(SourceRef {
            topic: self.source_topic.clone()?,
            partition: self.source_partition?,
            offset: self.source_offset?,
        })
    }

    /// Parses a record read from the dead-letter topic.
    pub fn parse(m: &OwnedMessage) -> DlqRecord {
        let header = |name: &str| -> Option<String> {
            m.headers()?
                .iter()
                .filter(|h| h.key == name)
                .last()
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let source = header(headers::DLQ_SOURCE);
        let parsed_source = source.as_deref().and_then(SourceRef::parse);
        let value = m.payload().unwrap_or_default();
        let mut r = DlqRecord {
            dlq_topic: m.topic().to_string(),
            dlq_partition: m.partition(),
            dlq_offset: m.offset(),
            reason: header(headers::DLQ_REASON),
            error: header(headers::DLQ_ERROR),
            source,
            source_topic: parsed_source.as_ref().map(|s| s.topic.clone()),
            source_partition: parsed_source.as_ref().map(|s| s.partition),
            source_offset: parsed_source.as_ref().map(|s| s.offset),
            attempts: header(headers::DLQ_ATTEMPTS).and_then(|a| a.trim().parse().ok()),
            failed_at: header(headers::DLQ_FAILED_AT).and_then(|t| {
                DateTime::parse_from_rfc3339(t.trim())
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }),
            event_id: None,
            op: None,
            keys: None,
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            decode_error: None,
            value_bytes: value.len(),
            replayed_from: header(headers::REPLAYED_FROM),
        };
        match m.payload().map(wire::decode) {
            Some(Ok(event)) => {
                r.event_id = Some(event.event_id);
                r.op = Some(event.op);
                r.keys = Some(event.keys);
            }
            Some(Err(e)) => {
                r.decode_error = Some(e.to_string());
                lenient(value, &mut r);
            }
            None => r.decode_error = Some("the record has no value".into()),
        }
        if r.event_id.is_none() {
            r.event_id = header(headers::EVENT_ID).and_then(|h| Uuid::parse_str(h.trim()).ok());
        }
        r
    }
}

/// What can be salvaged from a value that does not decode: the event id, op and keys when
/// they are there with the right types (e.g. an event of a newer schema version).
fn lenient(value: &[u8], r: &mut DlqRecord) {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(value)
    else {
        return;
    };
    r.event_id = obj
        .get("event_id")
        .and_then(|v| v.as_str())
        .and_then(|s| Uuid::parse_str(s).ok());
    r.op = obj.get("op").and_then(|v| v.as_str()).and_then(Op::parse);
    r.keys = obj.get("keys").and_then(|v| v.as_array()).and_then(|a| {
        a.iter()
            .map(|k| k.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::Timestamp;

    fn message(value: Option<&[u8]>, hs: &[(&str, &str)]) -> OwnedMessage {
        let mut h = OwnedHeaders::new();
        for (k, v) in hs {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        OwnedMessage::new(
            value.map(<[u8]>::to_vec),
            Some(b"product:42".to_vec()),
            "t.dlq".into(),
            Timestamp::NotAvailable,
            2,
            17,
            Some(h),
        )
    }

    const ID: &str = "6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f";

    #[test]
    /// Source references parse from the right; malformed ones are None, not an error.
    fn source_refs_parse() {
        assert_eq!(
            SourceRef::parse("orders.inv/3/42"),
            Some(SourceRef {
                topic: "orders.inv".into(),
                partition: 3,
                offset: 42
            })
        );
        assert_eq!(SourceRef::parse("t/3/42").unwrap().to_string(), "t/3/42");
        for bad in [
            "", "t", "t/3", "/3/4", "t/x/4", "t/3/-1", "t/-1/3", "t/3/4x",
        ] {
            assert_eq!(SourceRef::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    /// Every DLQ header and the decoded event end up in the record.
    fn parses_headers_and_event() {
        let value = format!(
            r#"{{"v":1,"event_id":"{ID}","op":"bump","keys":["a","b"],"created_at":"2026-11-23T06:00:00Z"}}"#
        );
        let r = DlqRecord::parse(&message(
            Some(value.as_bytes()),
            &[
                (headers::DLQ_REASON, "rejected-key"),
                (headers::DLQ_ERROR, "key \"a\" is not allowed"),
                (headers::DLQ_SOURCE, "t/1/99"),
                (headers::DLQ_ATTEMPTS, "0"),
                (headers::DLQ_FAILED_AT, "2026-11-23T06:00:01.5Z"),
            ],
        ));
        assert_eq!(r.reason(), Some(DlqReason::RejectedKey));
        assert_eq!(r.error.as_deref(), Some("key \"a\" is not allowed"));
        assert_eq!(
            r.source_ref(),
            Some(SourceRef {
                topic: "t".into(),
                partition: 1,
                offset: 99
            })
        );
        assert_eq!(r.attempts, Some(0));
        assert_eq!(
            r.failed_at.unwrap().to_rfc3339(),
            "2026-11-23T06:00:01.500+00:00"
        );
        // JSON keeps every fractional digit, so failed_at strings sort in time order.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["failed_at"], "2026-11-23T06:00:01.500000Z");
        assert_eq!(r.event_id.unwrap().to_string(), ID);
        assert_eq!(r.op, Some(Op::Bump));
        assert_eq!(r.keys, Some(vec!["a".into(), "b".into()]));
        assert_eq!(r.decode_error, None);
        assert_eq!(r.replayed_from, None);
        assert_eq!(r.dlq_ref(), "t.dlq/2/17");
        assert_eq!(r.key.as_deref(), Some("product:42"));
    }

    #[test]
    /// A value that does not decode still lists: the event id comes from the header, and
    /// what a newer schema version's value says is salvaged.
    fn undecodable_values_still_list() {
        let r = DlqRecord::parse(&message(
            Some(b"not json"),
            &[
                (headers::EVENT_ID, ID),
                (headers::DLQ_REASON, "decode"),
                (headers::REPLAYED_FROM, "t.dlq/0/3"),
            ],
        ));
        assert_eq!(r.event_id.unwrap().to_string(), ID);
        assert!(r.decode_error.is_some());
        assert_eq!(r.keys, None);
        assert_eq!(r.replayed_from.as_deref(), Some("t.dlq/0/3"));
        assert_eq!(r.source_ref(), None);
        assert_eq!(r.failed_at, None);
        assert!(serde_json::to_value(&r).unwrap()["failed_at"].is_null());

        let newer = format!(r#"{{"v":7,"event_id":"{ID}","op":"delete","keys":["x"]}}"#);
        let r = DlqRecord::parse(&message(Some(newer.as_bytes()), &[]));
        assert!(r.decode_error.unwrap().contains("version 7"));
        assert_eq!(r.event_id.unwrap().to_string(), ID);
        assert_eq!(r.keys, Some(vec!["x".into()]));

        let r = DlqRecord::parse(&message(None, &[(headers::DLQ_REASON, "some-new-reason")]));
        assert_eq!(r.reason.as_deref(), Some("some-new-reason"));
        assert_eq!(r.reason(), None);
        assert_eq!(r.value_bytes, 0);
        assert!(r.decode_error.is_some());
    }
}
