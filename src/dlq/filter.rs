//! Which dead-letter records a `dlq` command works on (`--reason`, `--since`, `--until`,
//! `--event-id`, `--partition`, `--from-offset`, `--to-offset`, `--limit`), validated once at
//! start-up, and the stable fingerprint that names a replay's consumer group. Pure: no I/O.

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::cli::DlqFilterArgs;
use crate::wire::DlqReason;

use super::error::DlqError;
use super::record::DlqRecord;

/// Validated filters. They combine with AND; the reasons match any of their values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// In `DlqReason::ALL` order, without duplicates (so the fingerprint ignores flag order).
    pub reasons: Vec<DlqReason>,
    /// Failed at or after.
    pub since: Option<DateTime<Utc>>,
    /// Failed strictly before.
    pub until: Option<DateTime<Utc>>,
    pub event_id: Option<Uuid>,
    /// Source partition.
    pub partition: Option<i32>,
    /// Source offsets, both inclusive.
    pub from_offset: Option<i64>,
    pub to_offset: Option<i64>,
    /// Most matching records one run handles; not part of the fingerprint, so a replay with
    /// `--limit N` run again continues with the next N.
    pub limit: Option<u64>,
}

impl Filter {
    /// Checks that the filters can match something.
    pub fn new(a: &DlqFilterArgs) -> Result<Filter, DlqError> {
        let bad = |m: String| Err(DlqError::InvalidArgs(m));
        if let (Some(from), Some(to)) = (a.from_offset, a.to_offset) {
            if from > to {
                return bad(format!(
                    "--from-offset {from} is after --to-offset {to}: no record can match"
                ));
            }
        }
        for (flag, v) in [
            ("--from-offset", a.from_offset),
            ("--to-offset", a.to_offset),
        ] {
            if let Some(v) = v.filter(|v| *v < 0) {
                return bad(format!("{flag} {v} is negative: offsets start at 0"));
            }
        }
        if let Some(p) = a.partition.filter(|p| *p < 0) {
            return bad(format!(
                "--partition {p} is negative: partitions start at 0"
            ));
        }
        if let (Some(since), Some(until)) = (a.since, a.until) {
            if since >= until {
                return bad(format!(
                    "--since {} is not before --until {}: no record can match",
                    since.to_rfc3339_opts(SecondsFormat::Secs, true),
                    until.to_rfc3339_opts(SecondsFormat::Secs, true)
                ));
            }
        }
        if a.limit == Some(0) {
            return bad("--limit 0 selects nothing; omit it for no limit".into());
        }
        Ok(Filter {
            reasons: DlqReason::ALL
                .into_iter()
                .filter(|r| a.reason.contains(r))
                .collect(),
            since: a.since,
            until: a.until,
            event_id: a.event_id,
            partition: a.partition,
            from_offset: a.from_offset,
            to_offset: a.to_offset,
            limit: a.limit,
        })
    }

    /// Whether a record passes every filter (`--limit` is the caller's to count). A record
    /// without the field a filter looks at does not match that filter.
    pub fn matches(&self, r: &DlqRecord) -> bool {
        if !self.reasons.is_empty() && !r.reason().is_some_and(|x| self.reasons.contains(&x)) {
            return false;
        }
        if let Some(since) = self.since {
            if r.failed_at.is_none_or(|t| t < since) {
                return false;
            }
        }
        if let Some(until) = self.until {
            if r.failed_at.is_none_or(|t| t >= until) {
                return false;
            }
        }
        if self.event_id.is_some() && r.event_id != self.event_id {
            return false;
        }
        if self.partition.is_some() && r.source_partition != self.partition {
            return false;
        }
        if let Some(from) = self.from_offset {
            if r.source_offset.is_none_or(|o| o < from) {
                return false;
            }
        }
        if let Some(to) = self.to_offset {
            if r.source_offset.is_none_or(|o| o > to) {
                return false;
            }
        }
        true
    }

    /// Whether any filter but `--limit` is set.
    pub fn is_empty(&self) -> bool {
        Filter {
            limit: None,
            ..self.clone()
        } == Filter::default()
    }

    /// The filter set as text, in a fixed order: what the fingerprint hashes, and what a
    /// replay prints. Times are absolute (a `--since 2h` is resolved at start-up).
    pub fn canonical(&self) -> String {
        let time = |t: Option<DateTime<Utc>>| {
            t.map_or("-".to_string(), |t| {
                t.to_rfc3339_opts(SecondsFormat::Micros, true)
            })
        };
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        format!(
            "reason={};since={};until={};event-id={};partition={};from-offset={};to-offset={}",
            if self.reasons.is_empty() {
                "-".to_string()
            } else {
                self.reasons
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            time(self.since),
            time(self.until),
            opt(self.event_id.map(|e| e.to_string())),
            opt(self.partition.map(|p| p.to_string())),
            opt(self.from_offset.map(|o| o.to_string())),
            opt(self.to_offset.map(|o| o.to_string())),
        )
    }

    /// 8 hex digits of SHA-256 over [`Filter::canonical`]: the same filters give the same
    /// digits in every run and every build (a replay's progress is found by it).
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.canonical().as_bytes());
        hex::encode(&digest[..4])
    }
}

/// The consumer group that remembers a replay's progress: `<group>.dlq-replay.<fingerprint>`.
/// Different filters get a different group, so a replay never skips records because another
/// filter set passed over them.
pub fn replay_group(group: &str, filter: &Filter) -> String {
    format!("{group}.dlq-replay.{}", filter.fingerprint())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, DlqCommand};
    use clap::Parser;

    fn filter(args: &[&str]) -> Result<Filter, DlqError> {
        let mut argv = vec!["invalidator", "dlq", "list"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Dlq(DlqCommand::List(a)) => Filter::new(&a.filter),
            other => panic!("parsed {other:?}"),
        }
    }

    fn record() -> DlqRecord {
        DlqRecord {
            dlq_topic: "t.dlq".into(),
            dlq_partition: 0,
            dlq_offset: 5,
            reason: Some("rejected-key".into()),
            error: None,
            source: Some("t/2/40".into()),
            source_topic: Some("t".into()),
            source_partition: Some(2),
            source_offset: Some(40),
            attempts: Some(0),
            failed_at: Some("2026-11-23T06:00:00Z".parse().unwrap()),
            event_id: Some(Uuid::parse_str("6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f").unwrap()),
            op: None,
            keys: None,
            key: None,
            decode_error: None,
            value_bytes: 0,
            replayed_from: None,
        }
    }

    #[test]
    /// Each filter keeps what it should and drops what it should; they combine with AND.
    fn filters_match() {
        let r = record();
        let yes = |args: &[&str]| assert!(filter(args).unwrap().matches(&r), "{args:?}");
        let no = |args: &[&str]| assert!(!filter(args).unwrap().matches(&r), "{args:?}");
        yes(&[]);
        yes(&["--reason", "decode", "--reason", "rejected-key"]);
        yes(&["--reason", "decode,rejected-key"]);
        no(&["--reason", "decode"]);
        yes(&["--since", "2026-11-23T06:00:00Z"]);
        no(&["--since", "2026-11-23T06:00:01Z"]);
        yes(&["--until", "2026-11-23T06:00:01Z"]);
        no(&["--until", "2026-11-23T06:00:00Z"]);
        yes(&["--event-id", "6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f"]);
        no(&["--event-id", "00000000-2f4b-4c1e-9a51-1d2b3c4d5e6f"]);
        yes(&[
            "--partition",
            "2",
            "--from-offset",
            "40",
            "--to-offset",
            "40",
        ]);
        no(&["--partition", "1"]);
        no(&["--from-offset", "41"]);
        no(&["--to-offset", "39"]);
        no(&["--reason", "rejected-key", "--partition", "1"]);
        // A record without failed-at or source matches no filter on them.
        let bare = DlqRecord {
            failed_at: None,
            source_partition: None,
            source_offset: None,
            ..record()
        };
        assert!(!filter(&["--since", "1h"]).unwrap().matches(&bare));
        assert!(!filter(&["--from-offset", "0"]).unwrap().matches(&bare));
    }

    #[test]
    /// Filters that cannot match anything are refused at start-up with the reason.
    fn impossible_filters_are_refused() {
        let err = |args: &[&str]| filter(args).unwrap_err().to_string();
        assert_eq!(
            err(&["--from-offset", "10", "--to-offset", "5"]),
            "--from-offset 10 is after --to-offset 5: no record can match"
        );
        assert!(err(&["--since", "1h", "--until", "2h"]).contains("is not before --until"));
        assert!(err(&["--limit", "0"]).contains("--limit 0"));
        assert!(err(&["--partition=-1"]).contains("negative"));
        assert!(
            filter(&["--from-offset", "5"]).is_ok(),
            "without --partition"
        );
    }

    #[test]
    /// The replay group name is stable (this exact value in every build: resume depends on
    /// it), ignores flag order, duplicates and --limit, and differs per filter set.
    fn replay_group_is_stable_and_per_filter_set() {
        let none = filter(&[]).unwrap();
        assert_eq!(
            none.canonical(),
            "reason=-;since=-;until=-;event-id=-;partition=-;from-offset=-;to-offset=-"
        );
        assert_eq!(
            replay_group("invalidator", &none),
            "invalidator.dlq-replay.61348b6b"
        );
        let a = filter(&["--reason", "decode", "--reason", "rejected-key"]).unwrap();
        let b = filter(&["--reason", "rejected-key,decode,decode", "--limit", "3"]).unwrap();
        assert_eq!(replay_group("g", &a), replay_group("g", &b));
        let mut groups = std::collections::HashSet::new();
        for args in [
            &[][..],
            &["--reason", "decode"],
            &["--reason", "rejected-key"],
            &["--since", "2026-11-23T06:00:00Z"],
            &["--until", "2026-11-23T06:00:00Z"],
            &["--event-id", "6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f"],
            &["--partition", "0"],
            &["--partition", "1"],
            &["--from-offset", "1"],
            &["--to-offset", "1"],
        ] {
            assert!(
                groups.insert(replay_group("g", &filter(args).unwrap())),
                "{args:?} collides"
            );
        }
        assert_ne!(replay_group("g1", &none), replay_group("g2", &none));
    }
}
