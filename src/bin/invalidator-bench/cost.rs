//! (a) again, as a count instead of a clock: the relay's instructions per row, counted by
//! valgrind's callgrind while the relay drains N and then 2N preloaded rows. Instructions do
//! not depend on what else the machine runs, so two builds can be compared on a machine whose
//! rows/s wander by ±20% between runs (BENCHMARKS.md item 15).
//!
//! The broker is librdkafka's mock cluster inside this process, so the count is the relay
//! process alone (our code, tokio, tokio-postgres and librdkafka's client threads) and needs
//! no Kafka. Start-up, the producer's first handshake and shutdown are the same in both runs;
//! the difference of the two totals divided by N is what one more row costs.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

pub async fn run(env: &Env, rows: i64, batch: i64, dir: &Path) {
    let valgrind = std::process::Command::new("valgrind")
        .arg("--version")
        .output();
    if !matches!(&valgrind, Ok(o) if o.status.success()) {
        eprintln!(
            "bench: the cost scenario needs valgrind on PATH (Debian package valgrind); skipped"
        );
        return;
    }
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("starting the mock cluster");
    let brokers = cluster.bootstrap_servers();
    let t = Table::start(
        &format!(
            "(a) relay CPU cost, counted: callgrind instructions of the relay process draining \
             preloaded one-key rows, batch {batch}, mock cluster broker"
        ),
        &[
            "rows",
            "instructions (all threads)",
            "instructions per row",
            "wall time under callgrind (s)",
        ],
    );
    let mut totals = Vec::new();
    for n in [rows, 2 * rows] {
        let topic = format!("bench_cost_{}_{n}", run_id());
        cluster
            .create_topic(&topic, 6, 1)
            .expect("creating the topic on the mock cluster");
        let db = ScratchDb::new(env, "cost").await;
        let c = db.client().await;
        preload(&c, n, true).await;
        let out = dir.join(format!("callgrind.relay.{n}"));
        let out_arg = format!("--callgrind-out-file={}", out.display());
        let started = Instant::now();
        let relay = Daemon::start_wrapped(
            "relay",
            &["valgrind", "--tool=callgrind", "--quiet", &out_arg],
            &[
                "--topic",
                &topic,
                "--batch-size",
                &batch.to_string(),
                "--no-listen",
                // Under callgrind the relay is ~50x slower; nothing should time out.
                "--delivery-timeout",
                "300s",
            ],
            &[("DATABASE_URL", &db.url), ("KAFKA_BROKERS", &brokers)],
            None,
        )
        .await;
        // Watched from the database, not /metrics: scraping would run code in the relay.
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let left: i64 = c
                .query_one("SELECT count(*) FROM invalidator.outbox", &[])
                .await
                .expect("counting the outbox")
                .get(0);
            if left == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the relay under callgrind left {left} rows after 30 minutes"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        relay.stop().await;
        let elapsed = started.elapsed();
        let total = callgrind_total(&out);
        t.row(&[
            n.to_string(),
            total.to_string(),
            format!("{:.0}", total as f64 / n as f64),
            format!("{:.1}", elapsed.as_secs_f64()),
        ]);
        totals.push((n, total, out));
    }
    let (n1, i1, _) = &totals[0];
    let (n2, i2, out) = &totals[1];
    println!(
        "\nrelay instructions per additional row: {:.0} (({i2} - {i1}) / {})\n\
         profiles: callgrind_annotate --inclusive=yes {}",
        (*i2 as f64 - *i1 as f64) / (n2 - n1) as f64,
        n2 - n1,
        out.display()
    );
}

/// The `totals:` (or `summary:`) line of a callgrind output file: instructions executed.
fn callgrind_total(path: &Path) -> u64 {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{} has no totals line", path.display()))
}
