//! `invalidator dlq list`: the dead-letter topic from its oldest retained record to its end
//! as of the start (a snapshot, not a tail), filtered, as a table or JSON lines. It joins no
//! consumer group and commits nothing.

use std::io::{self, Write};

use crate::cli::DlqListArgs;
use crate::consumer::settings::dlq_topic;
use crate::kafka::KafkaSettings;

use super::error::DlqError;
use super::filter::Filter;
use super::print::{is_closed_pipe, Printer};
use super::read::{consumer_config, Range, SnapshotReader};
use super::record::DlqRecord;

/// Runs `dlq list`.
pub async fn list(args: DlqListArgs) -> Result<(), DlqError> {
    let filter = Filter::new(&args.filter)?;
    let kafka = KafkaSettings::from_args(&args.kafka)?;
    let topic = checked_topic(&args.topic.topic)?;
    let dlq = dlq_topic(topic);
    let mut printer = Printer::new(io::stdout().lock(), args.json);
    match list_to(&kafka, &dlq, &filter, &mut printer).await {
        Err(e) if is_closed_pipe(&e) => Ok(()),
        other => other,
    }
}

/// What a pass over the DLQ found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub examined: u64,
    pub matched: u64,
}

async fn list_to<W: Write>(
    kafka: &KafkaSettings,
    dlq: &str,
    filter: &Filter,
    printer: &mut Printer<W>,
) -> Result<(), DlqError> {
    let offsets = kafka.topic_offsets(dlq, None).await?;
    let ranges: Vec<Range> = offsets.iter().map(|p| Range::new(p, None)).collect();
    let total: u64 = ranges.iter().map(Range::len).sum();
    if total == 0 {
        return say(printer, &format!("the dead-letter topic {dlq} is empty"));
    }
    let counts = print_matching(kafka, dlq, &ranges, filter, None, printer).await?;
    if counts.matched == 0 {
        return say(
            printer,
            &format!(
                "none of the {} record(s) in {dlq} match the filters",
                counts.examined
            ),
        );
    }
    if !printer.is_json() {
        printer.line(&format!(
            "{} of {} record(s) in {dlq}",
            counts.matched, counts.examined
        ))?;
    }
    printer.flush()
}

/// Reads `ranges` of `dlq` and prints the records `filter` keeps, up to its limit.
/// `group`: read with this group id (only set by a dry-run replay; nothing is committed).
pub async fn print_matching<W: Write>(
    kafka: &KafkaSettings,
    dlq: &str,
    ranges: &[Range],
    filter: &Filter,
    group: Option<&str>,
    printer: &mut Printer<W>,
) -> Result<Counts, DlqError> {
    let mut reader = SnapshotReader::open(&consumer_config(kafka, group), dlq, ranges)?;
    let mut counts = Counts::default();
    while let Some(m) = reader.next().await? {
        counts.examined += 1;
        let r = DlqRecord::parse(&m);
        if !filter.matches(&r) {
            continue;
        }
        counts.matched += 1;
        printer.record(&r)?;
        if filter.limit.is_some_and(|l| counts.matched >= l) {
            break;
        }
    }
    printer.flush()?;
    Ok(counts)
}

/// A message for people: on stdout with the table, on stderr with JSON (stdout stays JSON).
fn say<W: Write>(printer: &mut Printer<W>, s: &str) -> Result<(), DlqError> {
    if printer.is_json() {
        eprintln!("{s}");
        Ok(())
    } else {
        printer.line(s)?;
        printer.flush()
    }
}

/// `--topic`, refused when empty.
pub fn checked_topic(topic: &str) -> Result<&str, DlqError> {
    if topic.trim().is_empty() {
        return Err(DlqError::InvalidArgs("--topic must not be empty".into()));
    }
    Ok(topic)
}
