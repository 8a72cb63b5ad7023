//! The wire format of DESIGN §4: the JSON value of a Kafka record, and header names.
//! Pure: no I/O, so the relay, the consumer, the DLQ tools and the fuzzer share it.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The only schema version this build writes and reads.
pub const SCHEMA_VERSION: u64 = 1;

/// Header names carried on every record.
pub mod headers {
    pub const CONTENT_TYPE: &str = "content-type";
    pub const CONTENT_TYPE_JSON: &str = "application/json";
    pub const EVENT_ID: &str = "invalidator-event-id";
    /// W3C trace context, carried from the outbox row's `headers` when the application sets it.
    pub const TRACEPARENT: &str = "traceparent";
    /// Set on records re-published by `dlq replay`: the DLQ record's `topic/partition/offset`.
    pub const REPLAYED_FROM: &str = "invalidator-replayed-from";
    pub const DLQ_REASON: &str = "invalidator-dlq-reason";
    pub const DLQ_ERROR: &str = "invalidator-dlq-error";
    pub const DLQ_SOURCE: &str = "invalidator-dlq-source";
    pub const DLQ_ATTEMPTS: &str = "invalidator-dlq-attempts";
    pub const DLQ_FAILED_AT: &str = "invalidator-dlq-failed-at";
}

/// What the consumer does with the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// UNLINK each key and bump its fill guard.
    Delete,
    /// INCR each key (a version counter) once per event.
    Bump,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Delete => "delete",
            Op::Bump => "bump",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "delete" => Some(Op::Delete),
            "bump" => Some(Op::Bump),
            _ => None,
        }
    }
}

/// One invalidation event, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub v: u64,
    pub event_id: Uuid,
    pub op: Op,
    pub keys: Vec<String>,
    #[serde(with = "micros")]
    pub created_at: DateTime<Utc>,
    /// Where the event came from (the relay's `--source`, by default the database name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Event {
    /// The record value: compact JSON.
    pub fn encode(&self) -> Vec<u8> {
        EventRef {
            v: self.v,
            event_id: self.event_id,
            op: self.op,
            keys: &self.keys,
            created_at: self.created_at,
            source: self.source.as_deref(),
        }
        .encode()
    }
}

/// An [`Event`] that borrows its keys and source: what the relay encodes, without copying
/// them. `K` is `String` for an [`Event`]'s keys and `&str` for keys the relay reads straight
/// from a claimed row.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a, K = String> {
    pub v: u64,
    pub event_id: Uuid,
    pub op: Op,
    pub keys: &'a [K],
    pub created_at: DateTime<Utc>,
    pub source: Option<&'a str>,
}

impl<K: AsRef<str>> EventRef<'_, K> {
    /// The record value: compact JSON, byte for byte what serde_json writes for [`Event`]
    /// (field order, escapes; tests and the fuzzer compare the two). Written by hand: through
    /// serde_json it cost 3,200 instructions per one-key event, 16% of a draining relay's
    /// (callgrind, BENCHMARKS.md item 15), most of it escaping strings that never need it.
    pub fn encode(&self) -> Vec<u8> {
        // Sized up front: growing from empty reallocated several times per record, and
        // realloc was 6.5% of a draining relay's CPU (perf, BENCHMARKS.md). The fixed part
        // (field names, v, uuid, op, created_at) is at most 124 bytes; each key adds its quotes and
        // comma, and escapes may still grow it.
        let keys: usize = self.keys.iter().map(|k| k.as_ref().len() + 3).sum();
        let source = self.source.map_or(0, |s| s.len() + 12);
        let mut out = Vec::with_capacity(128 + keys + source);
        out.extend_from_slice(b"{\"v\":");
        // Formatted straight into the buffer: no `to_string` allocation.
        write!(out, "{}", self.v).expect("writing to a Vec never fails");
        out.extend_from_slice(b",\"event_id\":\"");
        let mut uuid = Uuid::encode_buffer();
        out.extend_from_slice(
            self.event_id
                .hyphenated()
                .encode_lower(&mut uuid)
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"op\":\"");
        out.extend_from_slice(self.op.as_str().as_bytes());
        out.extend_from_slice(b"\",\"keys\":[");
        for (i, key) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_string(&mut out, key.as_ref());
        }
        out.extend_from_slice(b"],\"created_at\":\"");
        let mut time = [0u8; 32];
        out.extend_from_slice(micros::rfc3339_micros(&self.created_at, &mut time).as_bytes());
        out.push(b'"');
        if let Some(source) = self.source {
            out.extend_from_slice(b",\"source\":");
            json_string(&mut out, source);
        }
        out.push(b'}');
        out
    }
}

/// Appends `s` as a JSON string. Keys and sources rarely hold a byte JSON escapes (`"`, `\`,
/// control characters): those are copied as they are, the rest go through serde_json, so
/// escapes stay exactly serde_json's.
fn json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a str always serializes");
    }
}

/// Why a record value is not an event this build can apply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON, not an object, a missing or mistyped field, no keys.
    #[error("record value is not a valid invalidation event: {0}")]
    Invalid(String),
    /// JSON with a `v` this build does not know; a newer relay wrote it.
    #[error("unsupported event schema version {0} (this build reads version {SCHEMA_VERSION})")]
    UnsupportedVersion(u64),
}

/// Parses a record value. Unknown fields are ignored; an unknown `v` is its own error.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    #[derive(Deserialize)]
    struct Version {
        v: u64,
    }
    let version: Version =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if version.v != SCHEMA_VERSION {
        return Err(DecodeError::UnsupportedVersion(version.v));
    }
    let event: Event =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if event.keys.is_empty() {
        return Err(DecodeError::Invalid("the event has no keys".into()));
    }
    Ok(event)
}

/// Why a record was dead-lettered: the value of the `invalidator-dlq-reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqReason {
    /// Not an event: not JSON, wrong types, no keys, no value.
    Decode,
    /// An event with a schema version this build does not read.
    UnsupportedVersion,
    /// A key broke the key policy.
    RejectedKey,
    /// Redis refused it for good (WRONGTYPE, NOPERM, CROSSSLOT).
    RedisPermanent,
    /// An unclassified Redis error persisted through `--max-retries` retries.
    RetriesExhausted,
}

impl DlqReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::Decode => "decode",
            DlqReason::UnsupportedVersion => "unsupported-version",
            DlqReason::RejectedKey => "rejected-key",
            DlqReason::RedisPermanent => "redis-permanent",
            DlqReason::RetriesExhausted => "retries-exhausted",
        }
    }

    /// Every reason, in the order DESIGN §5 lists them.
    pub const ALL: [DlqReason; 5] = [
        DlqReason::Decode,
        DlqReason::UnsupportedVersion,
        DlqReason::RejectedKey,
        DlqReason::RedisPermanent,
        DlqReason::RetriesExhausted,
    ];

    pub fn parse(s: &str) -> Option<DlqReason> {
        DlqReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for DlqReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `created_at` as RFC 3339 with microseconds and `Z`, the precision PostgreSQL stores.
pub(crate) mod micros {
    use super::*;
    use serde::{Deserializer, Serializer};

    /// RFC 3339 in UTC with microseconds, written from a stack buffer. chrono's `format`
    /// interprets its format string on every call, which was 5% of the relay's CPU.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 32];
        s.serialize_str(rfc3339_micros(t, &mut buf))
    }

    /// [`serialize`] for an `Option`, `null` for `None` (`dlq list --json`'s `failed_at`).
    pub fn serialize_option<S: Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => serialize(t, s),
            None => s.serialize_none(),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`. Years outside 0..=9999 (PostgreSQL's `timestamptz`
    /// can hold some) fall back to chrono's formatter.
    pub fn rfc3339_micros<'b>(t: &DateTime<Utc>, buf: &'b mut [u8; 32]) -> &'b str {
        use chrono::{Datelike, Timelike};
        // Read from the naive UTC time: each accessor of a `DateTime` adds the (zero) offset
        // again, eight times per timestamp (callgrind, BENCHMARKS.md item 15).
        let t = t.naive_utc();
        let year = t.year();
        if !(0..=9999).contains(&year) {
            let text = t.and_utc().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            let n = text.len().min(buf.len());
            buf[..n].copy_from_slice(&text.as_bytes()[..n]);
            return std::str::from_utf8(&buf[..n]).unwrap_or("");
        }
        fn put(buf: &mut [u8], at: usize, width: usize, mut v: u32) {
            for i in (0..width).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        // Nanoseconds above 999,999,999 encode a leap second; chrono prints them as 60.
        let leap = t.nanosecond() >= 1_000_000_000;
        let micros = (t.nanosecond() % 1_000_000_000) / 1000;
        put(buf, 0, 4, year as u32);
        buf[4] = b'-';
        put(buf, 5, 2, t.month());
        buf[7] = b'-';
        put(buf, 8, 2, t.day());
        buf[10] = b'T';
        put(buf, 11, 2, t.hour());
        buf[13] = b':';
        put(buf, 14, 2, t.minute());
        buf[16] = b':';
        put(buf, 17, 2, t.second() + u32::from(leap));
        buf[19] = b'.';
        put(buf, 20, 6, micros);
        buf[26] = b'Z';
        std::str::from_utf8(&buf[..27]).expect("ASCII digits")
    }

    /// Finer digits than microseconds (another producer's nanoseconds) are truncated, so the
    /// decoded event is exactly what `encode` writes back (the fuzzer found the difference).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        use chrono::SubsecRound;
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc).trunc_subsecs(6))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// The record value is written into a buffer sized up front: no reallocation for plain
    /// keys and source (it was 6.5% of a draining relay's CPU).
    fn encode_sizes_its_buffer_up_front() {
        let keys: Vec<String> = (0..20).map(|i| format!("product:{i}")).collect();
        for (op, keys, source) in [
            (Op::Delete, &keys[..1], None),
            (Op::Bump, &keys[..], Some("shop-db")),
            (Op::Delete, &keys[..3], Some("")),
        ] {
            let e = EventRef {
                v: SCHEMA_VERSION,
                event_id: Uuid::new_v4(),
                op,
                keys,
                created_at: Utc::now(),
                source,
            };
            let out = e.encode();
            assert!(out.len() <= out.capacity());
            let keys_len: usize = keys.iter().map(|k| k.len() + 3).sum();
            let source_len = source.map_or(0, |s| s.len() + 12);
            assert_eq!(
                out.capacity(),
                128 + keys_len + source_len,
                "not reallocated: {}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!(decode(&out).unwrap().keys, keys);
        }
    }

    #[test]
    /// The hand-written encoder writes exactly what serde_json writes for the same event:
    /// escapes (quotes, backslashes, control characters, DEL, non-ASCII), no source, an empty
    /// source, many keys, any `v`, years chrono formats itself.
    fn encode_is_serde_json_byte_for_byte() {
        use chrono::TimeZone;
        let odd = [
            "product:42",
            "",
            "quote\"d",
            "back\\slash",
            "tab\tnew\nline\r",
            "\u{0}\u{1}\u{1f}",
            "del\u{7f}",
            "ünïcödé ✓ 𝄞",
            "\u{2028}\u{2029}",
            "</script>",
        ];
        let times = [
            Utc::now(),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(12, 3, 4, 5, 6, 7).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
        ];
        for (i, created_at) in times.into_iter().enumerate() {
            for source in [None, Some(""), Some("orders-db"), Some("we\"ird\u{1}")] {
                for keys in [&odd[..1], &odd[1..2], &odd[..]] {
                    for v in [SCHEMA_VERSION, 0, 10, u64::MAX] {
                        let e = Event {
                            v,
                            event_id: Uuid::new_v4(),
                            op: if i % 2 == 0 { Op::Delete } else { Op::Bump },
                            keys: keys.iter().map(|k| k.to_string()).collect(),
                            created_at,
                            source: source.map(str::to_string),
                        };
                        let ours = e.encode();
                        assert_eq!(
                            String::from_utf8(ours.clone()).unwrap(),
                            serde_json::to_string(&e).unwrap()
                        );
                        // And with keys borrowed as &str, as the relay encodes them.
                        let borrowed: Vec<&str> = e.keys.iter().map(String::as_str).collect();
                        let by_ref = EventRef {
                            v,
                            event_id: e.event_id,
                            op: e.op,
                            keys: &borrowed[..],
                            created_at,
                            source: e.source.as_deref(),
                        };
                        assert_eq!(by_ref.encode(), ours);
                    }
                }
            }
        }
    }

    fn sample() -> Event {
        Event {
            v: 1,
            event_id: Uuid::parse_str("6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f").unwrap(),
            op: Op::Delete,
            keys: vec!["product:42".into()],
            created_at: DateTime::parse_from_rfc3339("2026-11-23T06:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            source: Some("orders-db".into()),
        }
    }

    #[test]
    /// The encoding is exactly the example of DESIGN §4.
    fn encodes_design_example() {
        assert_eq!(
            String::from_utf8(sample().encode()).unwrap(),
            r#"{"v":1,"event_id":"6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f","op":"delete","keys":["product:42"],"created_at":"2026-11-23T06:00:00.123456Z","source":"orders-db"}"#
        );
    }

    #[test]
    /// decode(encode(e)) == e, and unknown fields are ignored.
    fn round_trip_and_unknown_fields() {
        assert_eq!(decode(&sample().encode()), Ok(sample()));
        let with_extra = br#"{"v":1,"event_id":"6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f","op":"bump","keys":["a"],"created_at":"2026-11-23T06:00:00Z","future":{"x":1}}"#;
        let e = decode(with_extra).unwrap();
        assert_eq!(e.op, Op::Bump);
        assert_eq!(e.source, None);
    }

    #[test]
    /// The hand-written formatter writes exactly what chrono's format string wrote, across
    /// years, leap days, sub-microsecond digits and leap seconds.
    fn rfc3339_micros_matches_chrono() {
        use chrono::{TimeZone, Timelike};
        let samples = [
            Utc.with_ymd_and_hms(2026, 11, 23, 6, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(12, 3, 4, 5, 6, 7).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
        ];
        for base in samples {
            for nanos in [0u32, 1, 999, 1_000, 123_456_789, 999_999_999, 1_500_000_000] {
                let Some(t) = base.with_nanosecond(nanos) else {
                    continue;
                };
                let mut buf = [0u8; 32];
                assert_eq!(
                    super::micros::rfc3339_micros(&t, &mut buf),
                    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                    "{t:?}"
                );
            }
        }
    }

    #[test]
    /// A created_at finer than microseconds is truncated on decode, so the event round-trips
    /// (regression: fuzz/corpus/decode/seed-nanosecond-created-at.json, found by `scripts/fuzz.sh`).
    fn sub_microsecond_created_at_round_trips() {
        let nanos = br#"{"v":1,"event_id":"6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f","op":"delete","keys":["product:42"],"created_at":"2026-11-23T06:00:00.1234856Z","source":"orders-db"}"#;
        let e = decode(nanos).unwrap();
        assert_eq!(
            e.created_at.to_rfc3339(),
            "2026-11-23T06:00:00.123485+00:00"
        );
        assert_eq!(decode(&e.encode()), Ok(e));
    }

    #[test]
    /// An unknown `v` is reported as such, not as garbage.
    fn unknown_version() {
        assert_eq!(
            decode(br#"{"v":2,"whatever":true}"#),
            Err(DecodeError::UnsupportedVersion(2))
        );
    }

    #[test]
    /// Bad values are decode errors: not JSON, wrong types, no keys, bad op, invalid UTF-8.
    fn invalid_values() {
        for bad in [
            &b"not json"[..],
            br#"[1,2]"#,
            br#"{"event_id":"x"}"#,
            br#"{"v":"1"}"#,
            br#"{"v":1,"event_id":"6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f","op":"delete","keys":[],"created_at":"2026-11-23T06:00:00Z"}"#,
            br#"{"v":1,"event_id":"6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f","op":"purge","keys":["a"],"created_at":"2026-11-23T06:00:00Z"}"#,
            br#"{"v":1,"event_id":"6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f","op":"delete","keys":[1],"created_at":"2026-11-23T06:00:00Z"}"#,
            b"{\"v\":1,\"keys\":[\"\xff\"]}",
        ] {
            assert!(matches!(decode(bad), Err(DecodeError::Invalid(_))), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
