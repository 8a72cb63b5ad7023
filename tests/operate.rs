//! Operating invalidator (issue 5): `run` on the embedded broker with `/metrics`, readiness
//! and trace propagation; `status` on a prepared state; `check` for each role. Real
//! PostgreSQL, Redis and tansu; the binary as an operator runs it.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::kafka as k;
use common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redis::AsyncCommands;
use tokio::io::AsyncReadExt;

const WAIT: Duration = Duration::from_secs(60);

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis() -> redis::aio::MultiplexedConnection {
    common::redis_conn(&redis_url()).await
}

async fn exists(key: &str) -> bool {
    redis().await.exists(key).await.expect("EXISTS")
}

/// Sends SIGTERM to a child process.
fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("the child is running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -TERM {pid}");
}

/// The value of a series in a scrape, 0 when absent.
fn value(m: &std::collections::HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// `run --migrate` with only PostgreSQL and Redis: it migrates, starts the embedded broker
/// (saying loudly that it is not durable), invalidates keys end to end, serves /readyz and a
/// /metrics whose counters move as events flow, carries the outbox row's traceparent into the
/// consumer's span, and exits 0 on SIGTERM.
async fn run_embedded_end_to_end_with_metrics_and_trace() {
    let db = TestDb::new().await; // not migrated: --migrate does it
    let px = unique("run");
    let first = format!("{px}:first");
    let _: () = redis().await.set(&first, "cached").await.unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = tokio::process::Command::new(bin())
        .args(["run", "--migrate", "--log-format", "json"])
        .args(["--metrics-addr", &addr.to_string()])
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env_remove("KAFKA_BROKERS")
        .env_remove("INVALIDATOR_KAFKA_OPTIONS")
        .env("RUST_LOG", "info,invalidator::consumer=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting invalidator run");
    // Drain stderr while it runs, so a full pipe never blocks the process.
    let drain = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let log = drain(Box::new(child.stderr.take().unwrap()));
    let stdout = drain(Box::new(child.stdout.take().unwrap()));

    eventually(WAIT, "/readyz answers 200", || async move {
        http_get(addr, "/readyz").await.starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));

    let c = db.client().await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let headers = serde_json::json!({ "traceparent": traceparent });
    c.execute(
        "SELECT invalidator.invalidate(ARRAY[$1::text], headers => $2::jsonb)",
        &[&first, &headers],
    )
    .await
    .expect("invalidate");
    eventually(WAIT, "the first key is deleted", || {
        let first = first.clone();
        async move { !exists(&first).await }
    })
    .await;
    let before = parse_metrics(&http_get(addr, "/metrics").await);
    assert!(
        value(&before, "invalidator_relay_published_total") >= 1.0,
        "{before:?}"
    );
    assert!(
        value(&before, "invalidator_consumer_events_applied_total") >= 1.0,
        "{before:?}"
    );
    assert_eq!(value(&before, "invalidator_relay_ready"), 1.0);
    assert_eq!(value(&before, "invalidator_consumer_ready"), 1.0);

    // Five more: the counters and the latency histograms move by five.
    for i in 0..5 {
        c.execute(
            "SELECT invalidator.invalidate(ARRAY[$1::text])",
            &[&format!("{px}:more{i}")],
        )
        .await
        .unwrap();
    }
    let published = value(&before, "invalidator_relay_published_total");
    let applied = value(&before, "invalidator_consumer_events_applied_total");
    let latency = value(
        &before,
        "invalidator_consumer_end_to_end_latency_seconds_count",
    );
    eventually(WAIT, "the counters moved by five", || async move {
        let m = parse_metrics(&http_get(addr, "/metrics").await);
        value(&m, "invalidator_relay_published_total") >= published + 5.0
            && value(&m, "invalidator_consumer_events_applied_total") >= applied + 5.0
            && value(&m, "invalidator_consumer_end_to_end_latency_seconds_count") >= latency + 5.0
            && value(&m, "invalidator_relay_latency_seconds_count") >= published + 5.0
            && value(&m, "invalidator_relay_batches_total") >= 2.0
    })
    .await;

    sigterm(&child);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("run stops within 60s of SIGTERM")
        .unwrap();
    let log = log.await.unwrap();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(
        log.contains("EMBEDDED") && log.contains("NOT durable"),
        "the log says the embedded broker is not durable:\n{log}"
    );
    let stdout = stdout.await.unwrap();
    assert!(
        stdout.contains("applied V001__outbox.sql"),
        "--migrate applied the migrations:\n{stdout}"
    );
    let traced = log.lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|j| {
            j["message"] == "event applied" && j["span"]["traceparent"] == traceparent
        })
    });
    assert!(
        traced,
        "the applied event's span carries the traceparent:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// `status` reports a prepared state exactly: 3 pending rows, the oldest 90 s old,
/// 2 outbox_dead rows, a group 1 behind on one partition and 3 on another (never committed),
/// 2 records in the DLQ; thresholds exit 2 when exceeded and 0 when not.
async fn status_reports_a_prepared_state() {
    let db = migrated_db().await;
    let c = db.client().await;
    for i in 0..3 {
        c.execute(
            "SELECT invalidator.invalidate(ARRAY[$1::text])",
            &[&format!("st:{i}")],
        )
        .await
        .unwrap();
    }
    c.batch_execute(
        "UPDATE invalidator.outbox SET created_at = clock_timestamp() - interval '90 seconds';
         INSERT INTO invalidator.outbox_dead (id, event_id, created_at, partition_key, op, keys, headers, error)
         VALUES (1001, gen_random_uuid(), now(), 'a', 'delete', ARRAY['a'], '{}', 'too large'),
                (1002, gen_random_uuid(), now(), 'b', 'delete', ARRAY['b'], '{}', 'too large');",
    )
    .await
    .unwrap();

    let brokers = k::brokers();
    let (topic, group) = (unique("st"), unique("g"));
    let dlq = format!("{topic}.dlq");
    k::create_topic(&brokers, &topic, 2).await;
    k::create_topic(&brokers, &dlq, 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for (t, partition, n) in [(&topic, 0, 5), (&topic, 1, 3), (&dlq, 0, 2)] {
        for _ in 0..n {
            producer
                .send(
                    FutureRecord::<str, str>::to(t)
                        .partition(partition)
                        .payload("x"),
                    Duration::from_secs(10),
                )
                .await
                .expect("producing");
        }
    }
    {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(4))
            .unwrap();
        consumer.commit(&tpl, CommitMode::Sync).expect("committing");
        drop(tpl);
    }

    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("KAFKA_BROKERS", brokers.as_str()),
    ];
    let args = ["status", "--json", "--topic", &topic, "--group", &group];
    let out = run_bin(&args, &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(s["outbox"]["pending_rows"], 3);
    let age = s["outbox"]["oldest_pending_age_seconds"].as_f64().unwrap();
    assert!((90.0..150.0).contains(&age), "oldest age {age}");
    assert_eq!(s["outbox"]["dead_rows"], 2);
    let g = &s["consumer_group"];
    assert_eq!(g["partitions"][0]["end_offset"], 5);
    assert_eq!(g["partitions"][0]["committed"], 4);
    assert_eq!(g["partitions"][0]["lag"], 1);
    assert_eq!(g["partitions"][1]["committed"], serde_json::Value::Null);
    assert_eq!(g["partitions"][1]["lag"], 3);
    assert_eq!(g["total_lag"], 4);
    assert_eq!(s["dlq"]["records"], 2);
    assert_eq!(s["ok"], true);

    // The table says the same for people.
    let out = run_bin(&["status", "--topic", &topic, "--group", &group], &env).await;
    let table = text(&out.stdout);
    assert!(table.contains("pending rows         3"), "{table}");
    assert!(table.contains("total lag            4"), "{table}");
    assert!(table.contains("outbox_dead rows     2"), "{table}");

    // Thresholds: each exceeded one exits 2 and says EXCEEDED; within limits exits 0.
    for (flag, limit) in [
        ("--max-lag", "3"),
        ("--max-age", "30s"),
        ("--max-dlq", "1"),
        ("--max-dead", "1"),
    ] {
        let out = run_bin(&[&args[..], &[flag, limit]].concat(), &env).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag} {limit}: {}",
            text(&out.stderr)
        );
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s["ok"], false, "{flag}");
        assert_eq!(s["thresholds"][0]["exceeded"], true, "{flag}");
    }
    let relaxed = [
        "--max-lag",
        "4",
        "--max-age",
        "1h",
        "--max-dlq",
        "2",
        "--max-dead",
        "2",
    ];
    let out = run_bin(&[&args[..], &relaxed[..]].concat(), &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[tokio::test]
/// `status` with bad input says what is missing and exits 1: nothing configured, a threshold
/// whose service is not configured, a missing topic, an unmigrated database.
async fn status_errors_say_what_to_do() {
    let out = run_bin(&["status"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("set DATABASE_URL"),
        "{}",
        text(&out.stderr)
    );

    let brokers = k::brokers();
    let out = run_bin(
        &["status", "--max-age", "1m"],
        &[("KAFKA_BROKERS", &brokers)],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--max-age needs DATABASE_URL"),
        "{}",
        text(&out.stderr)
    );

    let missing = unique("nope");
    let out = run_bin(
        &["status", "--topic", &missing],
        &[("KAFKA_BROKERS", &brokers)],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("topic \"{missing}\" does not exist"))
            && text(&out.stderr).contains("this command only reads"),
        "{}",
        text(&out.stderr)
    );

    let bare = TestDb::new().await;
    let out = run_bin(&["status"], &[("DATABASE_URL", &bare.url)]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("run `invalidator migrate` first"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
/// `check` passes for a working setup and, for each broken service, exits 1 with a FAIL line
/// that says what to do; `check run` without brokers warns about the embedded broker.
async fn check_reaches_each_service_of_a_role() {
    let db = migrated_db().await;
    let brokers = k::brokers();
    let topic = unique("ck");
    k::create_topic(&brokers, &topic, 1).await;
    k::create_topic(&brokers, &format!("{topic}.dlq"), 1).await;
    let redis = redis_url();
    let good = [
        ("DATABASE_URL", db.url.as_str()),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("REDIS_URL", redis.as_str()),
    ];

    for role in ["relay", "consume", "run"] {
        let out = run_bin(&["check", role, "--topic", &topic], &good).await;
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "check {role}:\n{stdout}{}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains("check passed") && !stdout.contains("FAIL"),
            "{stdout}"
        );
    }
    let out = run_bin(&["check", "run", "--topic", &topic], &good).await;
    let stdout = text(&out.stdout);
    for line in [
        "ok    postgres:",
        "ok    postgres privileges:",
        "ok    kafka:",
        "ok    redis:",
    ] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }

    // Each broken piece, one at a time.
    let bare = TestDb::new().await;
    let missing = unique("ck_missing");
    let closed = format!("redis://127.0.0.1:{}", free_port());
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        (
            "relay",
            vec!["--topic", &topic],
            vec![("DATABASE_URL", &bare.url), ("KAFKA_BROKERS", &brokers)],
            "run `invalidator migrate` first".into(),
        ),
        (
            "relay",
            vec!["--topic", &topic],
            vec![("DATABASE_URL", &db.url)],
            "set --kafka-brokers or KAFKA_BROKERS".into(),
        ),
        (
            "consume",
            vec!["--topic", &missing],
            vec![("KAFKA_BROKERS", &brokers), ("REDIS_URL", &redis)],
            format!("topic \"{missing}\" does not exist"),
        ),
        (
            "consume",
            vec!["--topic", &topic],
            vec![("KAFKA_BROKERS", &brokers), ("REDIS_URL", &closed)],
            "FAIL  redis".into(),
        ),
        (
            "consume",
            vec!["--topic", &topic, "-X", "group.id=x"],
            vec![("KAFKA_BROKERS", &brokers), ("REDIS_URL", &redis)],
            "-X group.id is set by --group".into(),
        ),
    ];
    for (role, args, env, expect) in cases {
        let out = run_bin(&[&["check", role][..], &args[..]].concat(), &env).await;
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "check {role} {args:?}:\n{stdout}"
        );
        assert!(
            stdout.contains(&expect) && stdout.contains("check failed"),
            "{expect:?} in:\n{stdout}"
        );
    }

    // --create-topics turns a missing topic into a warning.
    let out = run_bin(
        &["check", "consume", "--topic", &missing, "--create-topics"],
        &[("KAFKA_BROKERS", &brokers), ("REDIS_URL", &redis)],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("--create-topics will create them"));

    // run without brokers: the embedded broker, with a warning.
    let out = run_bin(
        &["check", "run"],
        &[("DATABASE_URL", &db.url), ("REDIS_URL", &redis)],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("warn  kafka: no KAFKA_BROKERS"),
        "{}",
        text(&out.stdout)
    );
}
