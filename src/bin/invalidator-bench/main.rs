//! `invalidator-bench`: measures the pipeline against the limits it is held to, in one run,
//! and prints Markdown tables (BENCHMARKS.md records a run). Scenarios (issue 6):
//!
//! - `relay`: (a) relay throughput next to the claim SQL alone and the broker's produce rate;
//! - `latency`: (b) commit → key gone in Redis at fixed rates, next to the broker's own floor;
//! - `consumer`: (c) keys/s applied next to redis-benchmark's pipelined DEL;
//! - `notify`: (d) the application's commit rate with `enable_notify()` off and on;
//! - `backlog`: (e) claim cost at growing backlogs and under a long-open transaction;
//! - (f) peak RSS of the relay and consumer processes, from the scenarios that run them;
//! - `cost` (not in the default set; needs valgrind): the relay's instructions per row,
//!   counted by callgrind, for comparing builds on a noisy machine.
//!
//! It runs the `invalidator` binary next to it as real processes, against the services in
//! DATABASE_URL (administrative: it creates and drops databases of its own), REDIS_URL and
//! KAFKA_BROKERS (default: the memory-engine tansu on 127.0.0.1:9093). Build both in release:
//!
//! ```sh
//! cargo build --release --bins && target/release/invalidator-bench            # everything
//! target/release/invalidator-bench --scenarios latency --rates 1000            # one part
//! target/release/invalidator-bench --smoke                                     # tiny sizes
//! ```
//!
//! Never run as a test; `tests/bench_smoke.rs` runs `--smoke` only to prove it works.

mod backlog;
mod common;
mod consumer;
mod cost;
mod http;
mod latency;
mod notify;
mod relay;

use std::time::Duration;

use clap::Parser;

/// Benchmarks of the invalidator pipeline (issue 6). Prints Markdown tables on stdout.
#[derive(Debug, Parser)]
#[command(name = "invalidator-bench")]
struct Args {
    /// Which scenarios to run: relay, latency, consumer, notify, backlog, and cost (not by
    /// default: it runs the relay under valgrind) (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "relay,latency,consumer,notify,backlog"
    )]
    scenarios: Vec<String>,
    /// (a) rows preloaded per relay run.
    #[arg(long, default_value_t = 50_000)]
    rows: i64,
    /// (a) relay batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    batches: Vec<i64>,
    /// (a) relay `--in-flight` values.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    in_flight: Vec<u32>,
    /// cost: rows drained in the first run (the second drains twice as many).
    #[arg(long, default_value_t = 20_000)]
    cost_rows: i64,
    /// cost: the relay's batch size.
    #[arg(long, default_value_t = 5000)]
    cost_batch: i64,
    /// cost: where the callgrind output files go (kept, for callgrind_annotate).
    #[arg(long, default_value = "target/bench-cost")]
    cost_dir: std::path::PathBuf,
    /// (b) event rates, per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u64>,
    /// (b) seconds of writing per rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// (b) rounds per rate: the two broker floors and both pipeline paths, again and again
    /// in turn, so that a summary compares each run with the floors measured just before it.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// (b) also measure the broker floor during each pipeline run, at this many records/s
    /// (0: not). The probe's own load is on the pipeline too; compare with a run without it.
    #[arg(long, default_value_t = 0)]
    floor_probe_rate: u64,
    /// (b) also read the pipeline's topic with a second consumer and split each event's
    /// latency where its record could be fetched from Kafka.
    #[arg(long)]
    tap: bool,
    /// (b) also log the relay's per-batch trace and follow each event through the relay
    /// (commit → claim → handed to librdkafka → acked; with `--tap`, → fetched).
    #[arg(long)]
    trace: bool,
    /// (c) events drained by the consumer.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// (d) concurrent writers.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    writers: Vec<usize>,
    /// (d) seconds per cell.
    #[arg(long, default_value_t = 5)]
    notify_seconds: u64,
    /// (e) backlog sizes.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    backlogs: Vec<i64>,
    /// (e) how long the other session's transaction stays open.
    #[arg(long, default_value_t = 60)]
    hold_seconds: u64,
    /// (e) events per second written meanwhile.
    #[arg(long, default_value_t = 5000)]
    hold_rate: u64,
    /// (b), (c) extra librdkafka options for the consumer process, `KEY=VALUE` (its `-X`),
    /// e.g. `--consumer-option queued.max.messages.kbytes=2048` to measure the memory and
    /// throughput trade-off of a smaller prefetch.
    #[arg(long = "consumer-option", value_name = "KEY=VALUE")]
    consumer_options: Vec<String>,
    /// (b) extra arguments for the relay process, one per flag, e.g.
    /// `--relay-arg=--in-flight --relay-arg=8`.
    #[arg(long = "relay-arg", value_name = "ARG", allow_hyphen_values = true)]
    relay_args: Vec<String>,
    /// Tiny sizes everywhere: proves the harness works, measures nothing.
    #[arg(long)]
    smoke: bool,
}

#[tokio::main]
async fn main() {
    let mut a = Args::parse();
    if a.smoke {
        a.rows = 500;
        a.batches = vec![100];
        a.rates = vec![100];
        a.seconds = 1;
        a.keys = 500;
        a.writers = vec![1, 2];
        a.notify_seconds = 1;
        a.backlogs = vec![1000, 2000];
        a.hold_seconds = 3;
        a.hold_rate = 500;
        a.cost_rows = 1000; // under callgrind, idle polls vary by ~10M instructions between runs
    }
    let mut env = common::Env::from_env();
    env.consumer_options = a.consumer_options.clone();
    env.relay_args = a.relay_args.clone();
    let wants = |s: &str| a.scenarios.iter().any(|x| x == s);
    println!("# invalidator-bench");
    println!(
        "\nmachine: {} cores, {}; services: PostgreSQL {}, Redis {}, Kafka {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory(),
        invalidator::redact::redact(&env.admin_url),
        invalidator::redact::redact(&env.redis_url),
        env.brokers
    );
    let mut rss: Vec<(String, f64)> = Vec::new();
    if wants("relay") {
        relay::run(&env, a.rows, &a.batches, &a.in_flight, &mut rss).await;
    }
    if wants("cost") {
        cost::run(&env, a.cost_rows, a.cost_batch, &a.cost_dir).await;
    }
    if wants("latency") {
        latency::run(
            &env,
            &a.rates,
            a.seconds,
            a.rounds,
            latency::Extras {
                probe_rate: a.floor_probe_rate,
                tap: a.tap,
                trace: a.trace,
            },
            &mut rss,
        )
        .await;
    }
    if wants("consumer") {
        consumer::run(&env, a.keys, &mut rss).await;
    }
    if wants("notify") {
        notify::run(&env, &a.writers, a.notify_seconds).await;
    }
    if wants("backlog") {
        backlog::run(
            &env,
            &a.backlogs,
            Duration::from_secs(a.hold_seconds),
            a.hold_rate,
        )
        .await;
    }
    if !rss.is_empty() {
        let t = common::Table::start(
            "(f) peak RSS of the daemon processes (VmHWM)",
            &["process, load", "MiB"],
        );
        for (what, mib) in rss {
            t.row(&[what, format!("{mib:.1}")]);
        }
    }
}

fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB RAM", kb / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "RAM unknown".into())
}
