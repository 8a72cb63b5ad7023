//! `invalidator status`: how far behind the pipeline is, as a table or JSON, and optionally a
//! check (cron, Nagios) that exits 2 when a threshold is exceeded.
//!
//! It only reads: the outbox and `outbox_dead` counts, the topic's watermarks, the consumer
//! group's committed offsets and the dead-letter topic's watermarks. It joins no group.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::StatusArgs;
use crate::db::{self, ConnectError};
use crate::kafka::{KafkaSettings, KafkaSetupError, PartitionOffsets};
use crate::outbox::{self, Backlog, SchemaError};

/// Why `status` could not report.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "nothing to report on: set DATABASE_URL (the outbox) and/or KAFKA_BROKERS (consumer lag, \
         dead-letter topic)"
    )]
    NothingConfigured,
    #[error("{flag} needs {needs}")]
    ThresholdNeeds {
        flag: &'static str,
        needs: &'static str,
    },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("reading the outbox failed")]
    Query(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
}

/// The outbox side.
#[derive(Debug, Serialize)]
pub struct OutboxStatus {
    pub pending_rows: i64,
    pub oldest_pending_age_seconds: f64,
    pub dead_rows: i64,
}

/// The consumer group on the invalidation topic.
#[derive(Debug, Serialize)]
pub struct GroupStatus {
    pub topic: String,
    pub group: String,
    pub partitions: Vec<PartitionLag>,
    pub total_lag: i64,
}

#[derive(Debug, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    pub end_offset: i64,
    /// None: the group never committed on this partition.
    pub committed: Option<i64>,
    pub lag: i64,
}

/// The dead-letter topic.
#[derive(Debug, Serialize)]
pub struct DlqStatus {
    pub topic: String,
    /// Records retained, replayed ones included (replay never deletes).
    pub records: i64,
}

/// One `--max-*` threshold and how the current value compares.
#[derive(Debug, Serialize)]
pub struct Threshold {
    pub flag: &'static str,
    pub limit: f64,
    pub value: f64,
    pub exceeded: bool,
}

/// Everything `status` reports. A part is None when its service is not configured.
#[derive(Debug, Serialize)]
pub struct Status {
    pub outbox: Option<OutboxStatus>,
    pub consumer_group: Option<GroupStatus>,
    pub dlq: Option<DlqStatus>,
    pub thresholds: Vec<Threshold>,
    /// False when a threshold is exceeded.
    pub ok: bool,
}

/// Collects, prints (table or JSON on stdout) and returns whether a threshold was exceeded.
pub async fn run(args: StatusArgs) -> Result<bool, StatusError> {
    let status = collect(&args).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&status).expect("the status serializes")
        );
    } else {
        print!("{}", render(&status));
    }
    Ok(!status.ok)
}

/// Reads every part the configuration allows and evaluates the thresholds.
pub async fn collect(args: &StatusArgs) -> Result<Status, StatusError> {
    let kafka = match KafkaSettings::from_args(&args.kafka) {
        Ok(k) => Some(k),
        Err(KafkaSetupError::NoBrokers) => None,
        Err(e) => return Err(e.into()),
    };
    if args.database_url.is_none() && kafka.is_none() {
        return Err(StatusError::NothingConfigured);
    }
    let needs_db = [
        ("--max-age", args.max_age.is_some()),
        ("--max-dead", args.max_dead.is_some()),
    ];
    if args.database_url.is_none() {
        if let Some((flag, _)) = needs_db.iter().find(|(_, set)| *set) {
            return Err(StatusError::ThresholdNeeds {
                flag,
                needs: "DATABASE_URL (--database-url)",
            });
        }
    }
    let needs_kafka = [
        ("--max-lag", args.max_lag.is_some()),
        ("--max-dlq", args.max_dlq.is_some()),
    ];
    if kafka.is_none() {
        if let Some((flag, _)) = needs_kafka.iter().find(|(_, set)| *set) {
            return Err(StatusError::ThresholdNeeds {
                flag,
                needs: "KAFKA_BROKERS (--kafka-brokers)",
            });
        }
    }

    let outbox = match &args.database_url {
        Some(url) => Some(outbox_status(url).await?),
        None => None,
    };
    let topic = &args.topic.topic;
    let dlq_topic = format!("{topic}.dlq");
    let (consumer_group, dlq) = match &kafka {
        Some(k) => {
            let offsets = k.topic_offsets(topic, Some(&args.group.group)).await?;
            let dlq_offsets = k.topic_offsets(&dlq_topic, None).await?;
            (
                Some(group_status(topic, &args.group.group, &offsets)),
                Some(DlqStatus {
                    topic: dlq_topic,
                    records: dlq_offsets.iter().map(PartitionOffsets::depth).sum(),
                }),
            )
        }
        None => (None, None),
    };

    let mut thresholds = Vec::new();
    let mut check = |flag, limit: Option<f64>, value: Option<f64>| {
        if let (Some(limit), Some(value)) = (limit, value) {
            thresholds.push(Threshold {
                flag,
                limit,
                value,
                exceeded: value > limit,
            });
        }
    };
    check(
        "--max-lag",
        args.max_lag.map(|v| v as f64),
        consumer_group.as_ref().map(|g| g.total_lag as f64),
    );
    check(
        "--max-age",
        args.max_age.map(|d| d.as_secs_f64()),
        outbox.as_ref().map(|o| o.oldest_pending_age_seconds),
    );
    check(
        "--max-dlq",
        args.max_dlq.map(|v| v as f64),
        dlq.as_ref().map(|d| d.records as f64),
    );
    check(
        "--max-dead",
        args.max_dead.map(|v| v as f64),
        outbox.as_ref().map(|o| o.dead_rows as f64),
    );
    let ok = thresholds.iter().all(|t| !t.exceeded);
    Ok(Status {
        outbox,
        consumer_group,
        dlq,
        thresholds,
        ok,
    })
}

async fn outbox_status(url: &crate::redact::Redacted) -> Result<OutboxStatus, StatusError> {
    let client = db::connect(url).await?;
    outbox::check_schema(&client).await?;
    let Backlog {
        rows,
        oldest_age_seconds,
    } = outbox::backlog(&client).await.map_err(StatusError::Query)?;
    let dead_rows = outbox::dead_rows(&client)
        .await
        .map_err(StatusError::Query)?;
    Ok(OutboxStatus {
        pending_rows: rows,
        oldest_pending_age_seconds: oldest_age_seconds,
        dead_rows,
    })
}

fn group_status(topic: &str, group: &str, offsets: &[PartitionOffsets]) -> GroupStatus {
    let partitions: Vec<PartitionLag> = offsets
        .iter()
        .map(|o| PartitionLag {
            partition: o.partition,
            end_offset: o.high,
            committed: o.committed,
            lag: o.lag(),
        })
        .collect();
    GroupStatus {
        topic: topic.to_string(),
        group: group.to_string(),
        total_lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
    }
}

/// The human-readable table.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    match &s.outbox {
        Some(o) => {
            let _ = writeln!(out, "outbox");
            let _ = writeln!(out, "  pending rows         {}", o.pending_rows);
            let _ = writeln!(
                out,
                "  oldest pending       {}",
                human_age(o.oldest_pending_age_seconds, o.pending_rows)
            );
            let _ = writeln!(out, "  outbox_dead rows     {}", o.dead_rows);
        }
        None => {
            let _ = writeln!(out, "outbox: not checked (no DATABASE_URL)");
        }
    }
    match &s.consumer_group {
        Some(g) => {
            let _ = writeln!(out, "consumer group {:?} on topic {:?}", g.group, g.topic);
            let _ = writeln!(
                out,
                "  {:>9}  {:>12}  {:>12}  {:>10}",
                "partition", "end offset", "committed", "lag"
            );
            for p in &g.partitions {
                let committed = p.committed.map_or("-".to_string(), |c| c.to_string());
                let _ = writeln!(
                    out,
                    "  {:>9}  {:>12}  {:>12}  {:>10}",
                    p.partition, p.end_offset, committed, p.lag
                );
            }
            let _ = writeln!(out, "  total lag            {}", g.total_lag);
        }
        None => {
            let _ = writeln!(out, "consumer group: not checked (no KAFKA_BROKERS)");
        }
    }
    if let Some(d) = &s.dlq {
        let _ = writeln!(out, "dead-letter topic {:?}", d.topic);
        let _ = writeln!(out, "  records              {}", d.records);
    }
    for t in &s.thresholds {
        let _ = writeln!(
            out,
            "{} {}: {} ({})",
            t.flag,
            t.limit,
            if t.exceeded { "EXCEEDED" } else { "ok" },
            t.value
        );
    }
    out
}

fn human_age(seconds: f64, rows: i64) -> String {
    if rows == 0 {
        return "- (empty)".into();
    }
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else if seconds < 120.0 {
        format!("{seconds:.1} s")
    } else if seconds < 7200.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// Lag counts from the committed offset, or from the oldest retained record without one.
    fn lag_and_depth() {
        let p = |low, high, committed| PartitionOffsets {
            partition: 0,
            low,
            high,
            committed,
        };
        assert_eq!(p(0, 10, Some(7)).lag(), 3);
        assert_eq!(p(0, 10, None).lag(), 10);
        assert_eq!(p(5, 10, None).lag(), 5);
        assert_eq!(p(5, 10, Some(2)).lag(), 5, "committed below retention");
        assert_eq!(p(5, 10, Some(10)).lag(), 0);
        assert_eq!(p(5, 10, None).depth(), 5);
    }
}
