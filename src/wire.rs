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
        let mut id = Uuid::encode_buffer();
        let mut time = [0u8; 32];
        Encoder::new(self.source.as_deref()).encode(
            self.v,
            self.event_id.hyphenated().encode_lower(&mut id),
            self.op,
            &self.keys,
            micros::rfc3339_micros(&self.created_at, &mut time),
        )
    }
}

/// Writes record values for one source (the relay's `--source`, for every row it relays):
/// the source's JSON is escaped once here, not per event.
///
/// Byte for byte what serde_json writes for [`Event`] (field order, escapes; tests and the
/// fuzzer compare the two). Written by hand: through serde_json it cost 3,200 instructions
/// per one-key event, 16% of a draining relay's (callgrind, BENCHMARKS.md item 15), most of
/// it escaping strings that never need it.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// `,"source":"…"`, escaped; empty without a source.
    source: Vec<u8>,
}

impl Encoder {
    pub fn new(source: Option<&str>) -> Encoder {
        let mut out = Vec::new();
        if let Some(source) = source {
            out.extend_from_slice(b",\"source\":");
            json_string(&mut out, source);
        }
        Encoder { source: out }
    }

    /// The record value of one event. The caller has already written two of its fields as
    /// text, which the relay needs for itself too: `event_id` hyphenated in lower case (it is
    /// also a header) and `created_at` as [`micros`] writes it (RFC 3339, UTC, microseconds).
    pub fn encode<K: AsRef<str>>(
        &self,
        v: u64,
        event_id: &str,
        op: Op,
        keys: &[K],
        created_at: &str,
    ) -> Vec<u8> {
        // Sized up front: growing from empty reallocated several times per record, and
        // realloc was 6.5% of a draining relay's CPU (perf, BENCHMARKS.md). The fixed part
        // (field names, v, op) is at most 80 bytes; each key adds its quotes and comma, and
        // escapes may still grow it.
        let keys_len: usize = keys.iter().map(|k| k.as_ref().len() + 3).sum();
        let mut out = Vec::with_capacity(
            80 + event_id.len() + keys_len + created_at.len() + self.source.len(),
        );
        out.extend_from_slice(b"{\"v\":");
        // Formatted straight into the buffer: no `to_string` allocation.
        write!(out, "{v}").expect("writing to a Vec never fails");
        out.extend_from_slice(b",\"event_id\":\"");
        out.extend_from_slice(event_id.as_bytes());
        out.extend_from_slice(b"\",\"op\":\"");
        out.extend_from_slice(op.as_str().as_bytes());
        out.extend_from_slice(b"\",\"keys\":[");
        for (i, key) in keys.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_string(&mut out, key.as_ref());
        }
        out.extend_from_slice(b"],\"created_at\":\"");
        out.extend_from_slice(created_at.as_bytes());
        out.push(b'"');
        out.extend_from_slice(&self.source);
        out.push(b'}');
        out
    }
}

/// Appends `s` as a JSON string. Keys and sources rarely hold a byte JSON escapes (`"`, `\`,
/// control characters): those are copied as they are, the rest go through serde_json, so
/// escapes stay exactly serde_json's.
fn json_string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *out, s).expect("a str always serializes");
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether `s` holds a byte JSON escapes: below 0x20, `"` or `\`. Eight bytes at a time (a
/// byte at a time was 190 instructions per one-key event, callgrind, BENCHMARKS.md item 18).
/// Bytes of multi-byte UTF-8 characters are all 0x80 or above, so they never match.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Some byte of `x` is zero / below `n` (n <= 128): exact for "some byte", see
    // "Determine if a word has a byte less than n" in Bit Twiddling Hacks.
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGHS != 0;
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        if below(x, 0x20)
            || below(x ^ (ONES * u64::from(b'"')), 1)
            || below(x ^ (ONES * u64::from(b'\\')), 1)
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
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
        // Nanoseconds above 999,999,999 encode a leap second; chrono prints them as 60.
        let leap = t.nanosecond() >= 1_000_000_000;
        let micros = (t.nanosecond() % 1_000_000_000) / 1000;
        write(
            buf,
            [
                year as u32,
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second() + u32::from(leap),
            ],
            micros,
        )
    }

    /// [`rfc3339_micros`] of a time given as microseconds since the Unix epoch, in integer
    /// arithmetic alone: through chrono (decoding PostgreSQL's timestamp, then its calendar)
    /// it cost the relay 580 instructions per row (callgrind, BENCHMARKS.md item 18). None
    /// for a year outside 0000–9999, which RFC 3339 cannot write.
    pub fn rfc3339_unix_micros(us: i64, buf: &mut [u8; 32]) -> Option<&str> {
        /// 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z, in microseconds since 1970.
        const FIRST: i64 = -62_167_219_200_000_000;
        const END: i64 = 253_402_300_800_000_000;
        if !(FIRST..END).contains(&us) {
            return None;
        }
        // Unsigned from here on, which makes every division a multiplication.
        let t = (us - FIRST) as u64;
        let secs = t / 1_000_000;
        let micros = (t % 1_000_000) as u32;
        let of_day = (secs % 86_400) as u32;
        let (year, month, day) = civil_from_days((secs / 86_400) as u32);
        Some(write(
            buf,
            [
                year,
                month,
                day,
                of_day / 3600,
                of_day / 60 % 60,
                of_day % 60,
            ],
            micros,
        ))
    }

    /// The proleptic Gregorian date `days` after 0000-01-01 (up to 9999-12-31): Howard
    /// Hinnant's `civil_from_days`, counted from -0400-03-01 so that it stays unsigned.
    fn civil_from_days(days: u32) -> (u32, u32, u32) {
        // 0000-03-01 is day 60 of year 0 (a leap year); one 400-year era earlier is
        // 146,097 days before it.
        let z = days + 146_097 - 60;
        let era = z / 146_097;
        let doe = z % 146_097; // [0, 146096]
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
        let mp = (5 * doy + 2) / 153; // [0, 11], from March
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + u32::from(month <= 2) - 400, month, day)
    }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ` from year, month, day, hour, minute, second; two digits
    /// at a time from a table.
    fn write(buf: &mut [u8; 32], fields: [u32; 6], micros: u32) -> &str {
        const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
            2021222324252627282930313233343536373839\
            4041424344454647484950515253545556575859\
            6061626364656667686970717273747576777879\
            8081828384858687888990919293949596979899";
        fn put2(buf: &mut [u8], at: usize, v: u32) {
            let i = 2 * (v % 100) as usize;
            buf[at..at + 2].copy_from_slice(&PAIRS[i..i + 2]);
        }
        let [year, month, day, hour, minute, second] = fields;
        put2(buf, 0, year / 100);
        put2(buf, 2, year);
        buf[4] = b'-';
        put2(buf, 5, month);
        buf[7] = b'-';
        put2(buf, 8, day);
        buf[10] = b'T';
        put2(buf, 11, hour);
        buf[13] = b':';
        put2(buf, 14, minute);
        buf[16] = b':';
        put2(buf, 17, second);
        buf[19] = b'.';
        put2(buf, 20, micros / 10_000);
        put2(buf, 22, micros / 100);
        put2(buf, 24, micros);
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
            let mut id = Uuid::encode_buffer();
            let id = Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut id)
                .to_string();
            let mut time = [0u8; 32];
            let created_at = micros::rfc3339_micros(&Utc::now(), &mut time);
            let out = Encoder::new(source).encode(u64::MAX, &id, op, keys, created_at);
            assert!(out.len() <= out.capacity());
            let keys_len: usize = keys.iter().map(|k| k.len() + 3).sum();
            let source_len = source.map_or(0, |s| s.len() + 12);
            // The longest fixed part: `v` of 20 digits, op "delete".
            assert_eq!(
                out.capacity(),
                80 + 36 + keys_len + 27 + source_len,
                "not reallocated: {}",
                String::from_utf8_lossy(&out)
            );
            if op == Op::Delete {
                // Exactly full, but for the comma the last key does not have.
                assert_eq!(out.len() + 1, out.capacity(), "the fixed part is 80 bytes");
            }
            let decoded: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(decoded["keys"], serde_json::json!(keys));
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
                        // And with keys borrowed as &str and one encoder for many events,
                        // as the relay encodes them.
                        let borrowed: Vec<&str> = e.keys.iter().map(String::as_str).collect();
                        let encoder = Encoder::new(e.source.as_deref());
                        let mut time = [0u8; 32];
                        let by_ref = encoder.encode(
                            v,
                            &e.event_id.to_string(),
                            e.op,
                            &borrowed[..],
                            micros::rfc3339_micros(&created_at, &mut time),
                        );
                        assert_eq!(by_ref, ours);
                    }
                }
            }
        }
    }

    #[test]
    /// The eight-bytes-at-a-time check finds exactly the bytes JSON escapes, at every
    /// position of strings of every length up to 40, next to multi-byte characters.
    fn needs_escape_is_the_bytewise_check() {
        let slow = |s: &[u8]| s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        let fillers: [&[u8]; 3] = [b"a", "é".as_bytes(), b"\x7f"];
        for filler in fillers {
            for len in 0..40 {
                let base: Vec<u8> = filler.iter().copied().cycle().take(len).collect();
                assert_eq!(needs_escape(&base), slow(&base));
                for at in 0..len {
                    for b in 0u8..=255 {
                        let mut s = base.clone();
                        s[at] = b;
                        assert_eq!(needs_escape(&s), slow(&s), "{s:?}");
                    }
                }
            }
        }
    }

    #[test]
    /// The integer calendar writes what chrono writes, over the years RFC 3339 can hold and
    /// their edges (leap days, centuries, the epoch, negative times), and refuses the rest.
    fn rfc3339_unix_micros_is_chronos() {
        use chrono::TimeZone;
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let first = Utc
            .with_ymd_and_hms(0, 1, 1, 0, 0, 0)
            .unwrap()
            .timestamp_micros();
        let end = Utc
            .with_ymd_and_hms(10000, 1, 1, 0, 0, 0)
            .unwrap()
            .timestamp_micros();
        let mut samples = vec![
            first,
            first - 1,
            end - 1,
            end,
            0,
            -1,
            1,
            951_782_400_000_000,
        ];
        for year in [1600, 1900, 1970, 2000, 2024, 2100] {
            for (m, d) in [(1, 1), (2, 28), (2, 29), (3, 1), (12, 31)] {
                if let chrono::LocalResult::Single(t) = Utc.with_ymd_and_hms(year, m, d, 23, 59, 59)
                {
                    samples.extend([t.timestamp_micros(), t.timestamp_micros() + 999_999]);
                }
            }
        }
        samples.extend((0..20_000).map(|_| (next() % (end - first + 2) as u64) as i64 + first - 1));
        // Far outside RFC 3339 both ways, still inside chrono.
        samples.extend([i64::MIN / 2, i64::MAX / 2]);
        for us in samples {
            let mut buf = [0u8; 32];
            let ours = micros::rfc3339_unix_micros(us, &mut buf).map(str::to_string);
            let chrono = DateTime::from_timestamp_micros(us).expect("in chrono's range");
            let mut cbuf = [0u8; 32];
            let expected = (first..end)
                .contains(&us)
                .then(|| micros::rfc3339_micros(&chrono, &mut cbuf).to_string());
            assert_eq!(ours, expected, "{us}");
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
