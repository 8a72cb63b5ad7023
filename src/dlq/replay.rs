//! `invalidator dlq replay`: re-publishes dead-letter records to their source topic, with the
//! original key, value and headers (minus `invalidator-dlq-*`, plus `invalidator-replayed-from`).
//!
//! Progress lives in a consumer group of the replay's own, `<group>.dlq-replay.<fingerprint of
//! the filters>`, committed after each chunk's deliveries were all acknowledged: an interrupted
//! replay resumes where it stopped, nothing is committed past a matching record that was not
//! acknowledged, and the DLQ itself is never written or deleted from. Records the filters pass
//! over are committed past too: they are not this replay's (another filter set has another
//! group and reads them). A kill -9 in the middle of a chunk replays that chunk again, which
//! the consumer's idempotent operations make harmless (at-least-once).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, IsTerminal};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::DlqReplayArgs;
use crate::consumer::settings::dlq_topic;
use crate::kafka::KafkaSettings;
use crate::wire::headers;

use super::error::DlqError;
use super::filter::{replay_group, Filter};
use super::list::{checked_topic, print_matching};
use super::print::{is_closed_pipe, Printer};
use super::read::{consumer_config, Range, SnapshotReader};
use super::record::DlqRecord;

/// Most re-published records awaiting acknowledgement at once (one chunk).
const CHUNK_RECORDS: usize = 100;
/// A chunk also ends after this long, so progress is committed often even at a low --rate.
const CHUNK_TIME: Duration = Duration::from_secs(1);
/// Without a terminal, a progress line this often.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Runs `dlq replay` until every record up to the DLQ's end (as of the start) is handled,
/// `--limit` is reached, or `shutdown` is cancelled (then the chunk in flight is finished and
/// committed, and it returns Ok).
pub async fn replay(args: DlqReplayArgs, shutdown: CancellationToken) -> Result<(), DlqError> {
    let filter = Filter::new(&args.filter)?;
    let kafka = KafkaSettings::from_args(&args.kafka)?;
    let topic = checked_topic(&args.topic.topic)?.to_string();
    if args.group.group.trim().is_empty() {
        return Err(DlqError::InvalidArgs("--group must not be empty".into()));
    }
    // --json without --dry-run is ignored rather than refused: INVALIDATOR_JSON is shared
    // with `dlq list` and `status`, and may be set in the environment for them.
    if args.delivery_timeout < Duration::from_millis(1) {
        return Err(DlqError::InvalidArgs(
            "--delivery-timeout must be at least 1ms".into(),
        ));
    }
    let dlq = dlq_topic(&topic);
    let group = replay_group(&args.group.group, &filter);
    let offsets = kafka.topic_offsets(&dlq, Some(&group)).await?;
    eprintln!("replay group: {group}");
    eprintln!("filters: {}", describe(&filter));
    let ranges: Vec<Range> = offsets
        .iter()
        .map(|p| Range::new(p, if args.restart { None } else { p.committed }))
        .collect();
    let depth: i64 = offsets.iter().map(|p| p.depth()).sum();
    let already_done: u64 = offsets
        .iter()
        .zip(&ranges)
        .map(|(p, r)| (r.start - p.low).max(0) as u64)
        .sum();
    let total: u64 = ranges.iter().map(Range::len).sum();
    if args.restart {
        eprintln!("--restart: starting again from the oldest record in {dlq}");
    } else if already_done > 0 {
        eprintln!("resuming: {already_done} record(s) of {dlq} were handled by an earlier run");
    }
    if total == 0 {
        if depth == 0 {
            eprintln!("nothing to replay: the dead-letter topic {dlq} is empty");
        } else {
            eprintln!(
                "nothing to replay: every record of {dlq} up to its end was handled by an \
                 earlier run of this replay (--restart replays them again)"
            );
        }
        return Ok(());
    }
    if args.dry_run {
        let mut printer = Printer::new(io::stdout().lock(), args.json);
        let counts = match print_matching(&kafka, &dlq, &ranges, &filter, None, &mut printer).await
        {
            Err(e) if is_closed_pipe(&e) => return Ok(()),
            other => other?,
        };
        eprintln!(
            "dry run: {} of {} record(s) would be replayed; nothing was published or committed",
            counts.matched, counts.examined
        );
        return Ok(());
    }

    let producer = create_producer(&kafka, args.delivery_timeout)?;
    let reader = SnapshotReader::open(&consumer_config(&kafka, Some(&group)), &dlq, &ranges)?;
    let mut run = Run {
        reader,
        producer,
        filter,
        fallback_topic: topic,
        group,
        pace: args.rate.map(Pace::new),
        progress: Progress::new(total),
        stats: Stats {
            already_done,
            ..Stats::default()
        },
        positions: ranges.iter().map(|r| (r.partition, r.start)).collect(),
        ends: ranges.iter().map(|r| (r.partition, r.end)).collect(),
        targets: BTreeSet::new(),
    };
    let end = run.run(&shutdown).await;
    run.progress.finish();
    let end = end?;
    run.summary(end, &dlq);
    Ok(())
}

/// Why the replay stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Every record up to the end offsets of the start was handled.
    Done,
    /// `--limit` matching records were replayed.
    Limit,
    /// SIGTERM/SIGINT: the chunk in flight was finished and committed.
    Interrupted,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    examined: u64,
    replayed: u64,
    skipped: u64,
    already_done: u64,
}

struct Run {
    reader: SnapshotReader,
    producer: FutureProducer,
    filter: Filter,
    /// `--topic`: where a record without a usable `invalidator-dlq-source` goes.
    fallback_topic: String,
    group: String,
    pace: Option<Pace>,
    progress: Progress,
    stats: Stats,
    /// Committed position per DLQ partition (next offset to read).
    positions: BTreeMap<i32, i64>,
    /// End offset per DLQ partition as of the start.
    ends: BTreeMap<i32, i64>,
    targets: BTreeSet<String>,
}

/// A re-published record awaiting its acknowledgement.
struct InFlight {
    delivery: rdkafka::producer::DeliveryFuture,
    record: String,
    target: String,
}

impl Run {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<End, DlqError> {
        loop {
            let started = Instant::now();
            let mut in_flight: Vec<InFlight> = Vec::new();
            // DLQ partition → offset after the last record of this chunk that was handled.
            let mut staged: BTreeMap<i32, i64> = BTreeMap::new();
            let mut skipped = 0;
            let mut examined = 0;
            let mut end = None;
            loop {
                if in_flight.len() >= CHUNK_RECORDS
                    || (started.elapsed() >= CHUNK_TIME && !staged.is_empty())
                {
                    break;
                }
                if self
                    .filter
                    .limit
                    .is_some_and(|l| self.stats.replayed + in_flight.len() as u64 >= l)
                {
                    end = Some(End::Limit);
                    break;
                }
                let next = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => { end = Some(End::Interrupted); break }
                    next = self.reader.next() => next?,
                };
                let Some(m) = next else {
                    end = Some(End::Done);
                    break;
                };
                let r = DlqRecord::parse(&m);
                if !self.filter.matches(&r) {
                    skipped += 1;
                    examined += 1;
                    staged.insert(m.partition(), m.offset() + 1);
                    continue;
                }
                if let Some(pace) = &mut self.pace {
                    tokio::select! {
                        biased;
                        // Not sent, not staged: the next run starts at this record.
                        _ = shutdown.cancelled() => { end = Some(End::Interrupted); break }
                        _ = pace.wait() => {}
                    }
                }
                let target = match r.source_topic.clone() {
                    Some(t) => t,
                    None => {
                        self.progress.note(&format!(
                            "dead-letter record {} has no usable {} header ({:?}): re-publishing \
                             it to --topic {}",
                            r.dlq_ref(),
                            headers::DLQ_SOURCE,
                            r.source.as_deref().unwrap_or("missing"),
                            self.fallback_topic
                        ));
                        self.fallback_topic.clone()
                    }
                };
                let delivery = self.enqueue(&m, &target, &r.dlq_ref())?;
                self.targets.insert(target.clone());
                in_flight.push(InFlight {
                    delivery,
                    record: r.dlq_ref(),
                    target,
                });
                examined += 1;
                staged.insert(m.partition(), m.offset() + 1);
            }
            // Every delivery of the chunk, then the commit: never past an unacknowledged record.
            let replayed = in_flight.len() as u64;
            for f in in_flight {
                let result = match f.delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                };
                result.map_err(|source| DlqError::Delivery {
                    record: f.record,
                    target: f.target,
                    source,
                })?;
            }
            self.reader.commit(&self.group, &staged).await?;
            self.positions.extend(staged);
            self.stats.replayed += replayed;
            self.stats.skipped += skipped;
            self.stats.examined += examined;
            self.progress.update(&self.stats);
            if let Some(end) = end {
                return Ok(end);
            }
        }
    }

    /// Hands one record to the producer; the returned future resolves on acknowledgement.
    fn enqueue(
        &self,
        m: &OwnedMessage,
        target: &str,
        dlq_ref: &str,
    ) -> Result<rdkafka::producer::DeliveryFuture, DlqError> {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(target).headers(replay_headers(m, dlq_ref));
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(v) = m.payload() {
            record = record.payload(v);
        }
        self.producer
            .send_result(record)
            .map_err(|(source, _)| DlqError::Delivery {
                record: dlq_ref.to_string(),
                target: target.to_string(),
                source,
            })
    }

    fn summary(&self, end: End, dlq: &str) {
        let s = &self.stats;
        let targets = if self.targets.is_empty() {
            "-".to_string()
        } else {
            self.targets.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        eprintln!(
            "replayed {} record(s) to {targets}; skipped {} not matching the filters; {} \
             already done before this run",
            s.replayed, s.skipped, s.already_done
        );
        match end {
            End::Done if s.replayed == 0 => eprintln!(
                "nothing to replay: no record of {dlq} past this replay's progress matches the \
                 filters"
            ),
            End::Done => {}
            End::Limit => eprintln!(
                "stopped at --limit {}; running the same command again continues after the \
                 last record replayed",
                self.filter.limit.unwrap_or_default()
            ),
            End::Interrupted => {
                let at: Vec<String> = self
                    .positions
                    .iter()
                    .map(|(p, o)| format!("partition {p} at offset {o} of {}", self.ends[p]))
                    .collect();
                eprintln!(
                    "interrupted: progress committed up to {} ({dlq}); running the same \
                     command again resumes there (group {})",
                    at.join(", "),
                    self.group
                );
            }
        }
    }
}

/// The idempotent, acks=all producer that re-publishes; a record not acknowledged within
/// `timeout` fails the replay.
fn create_producer(kafka: &KafkaSettings, timeout: Duration) -> Result<FutureProducer, DlqError> {
    kafka
        .client_config(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            // Dead-letter records can be large (the consumer copies a poison record whole).
            ("message.max.bytes", "16777216"),
        ])
        .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
        .create()
        .map_err(|source| DlqError::Client {
            what: "producer",
            source,
        })
}

/// The original headers without any `invalidator-dlq-*` or earlier `invalidator-replayed-from`,
/// plus `invalidator-replayed-from: <dlq topic>/<partition>/<offset>`.
pub fn replay_headers(m: &OwnedMessage, dlq_ref: &str) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            if header.key.starts_with("invalidator-dlq-") || header.key == headers::REPLAYED_FROM {
                continue;
            }
            out = out.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    out.insert(Header {
        key: headers::REPLAYED_FROM,
        value: Some(dlq_ref),
    })
}

/// The filters in words, for the start-up line.
fn describe(f: &Filter) -> String {
    if f.is_empty() {
        let limit = f
            .limit
            .map(|l| format!(", --limit {l}"))
            .unwrap_or_default();
        return format!("none (every record){limit}");
    }
    let mut s = f.canonical();
    if let Some(l) = f.limit {
        s.push_str(&format!(";limit={l}"));
    }
    s
}

/// `--rate`: at most one record per `interval`, no bursts.
struct Pace {
    interval: Duration,
    next: Instant,
}

impl Pace {
    fn new(per_second: f64) -> Pace {
        Pace {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next: Instant::now(),
        }
    }

    async fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next = self.next.max(now) + self.interval;
    }
}

/// A progress bar on a terminal; otherwise a plain line every few seconds.
struct Progress {
    bar: Option<ProgressBar>,
    last_line: Instant,
    total: u64,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} examined  {msg}  [{elapsed_precise}, eta {eta}]",
                )
                .expect("the template is valid"),
            );
            bar
        });
        Progress {
            bar,
            last_line: Instant::now(),
            total,
        }
    }

    fn update(&mut self, s: &Stats) {
        let msg = format!("replayed {}, skipped {}", s.replayed, s.skipped);
        if let Some(bar) = &self.bar {
            bar.set_position(s.examined);
            bar.set_message(msg);
        } else if self.last_line.elapsed() >= PLAIN_PROGRESS_EVERY {
            self.last_line = Instant::now();
            eprintln!("progress: {}/{} examined, {msg}", s.examined, self.total);
        }
    }

    /// A line that must not be drawn over by the bar.
    fn note(&self, s: &str) {
        match &self.bar {
            Some(bar) => bar.println(s),
            None => eprintln!("{s}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    #[test]
    /// A replayed record keeps the original headers, loses every DLQ header and any earlier
    /// replayed-from, and says which DLQ record it came from.
    fn replay_headers_are_the_originals_plus_replayed_from() {
        let mut h = OwnedHeaders::new();
        for (k, v) in [
            ("content-type", "application/json"),
            (headers::EVENT_ID, "e1"),
            ("traceparent", "00-abc"),
            (headers::DLQ_REASON, "rejected-key"),
            (headers::DLQ_SOURCE, "t/0/1"),
            (headers::DLQ_FAILED_AT, "2026-11-23T06:00:00Z"),
            (headers::REPLAYED_FROM, "t.dlq/0/0"),
        ] {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let m = OwnedMessage::new(
            Some(b"v".to_vec()),
            Some(b"k".to_vec()),
            "t.dlq".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(h),
        );
        let out = replay_headers(&m, "t.dlq/0/7");
        let got: Vec<(String, String)> = out
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("content-type", "application/json"),
            (headers::EVENT_ID, "e1"),
            ("traceparent", "00-abc"),
            (headers::REPLAYED_FROM, "t.dlq/0/7"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    /// --rate 100 lets one record through every 10 ms, without a burst at the start.
    /// (Real time, not a paused clock: tokio's test-util would rebuild every tokio dependant.)
    async fn pace_spaces_records() {
        let mut pace = Pace::new(100.0);
        let start = Instant::now();
        for _ in 0..6 {
            pace.wait().await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
