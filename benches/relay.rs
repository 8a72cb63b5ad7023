//! Relay throughput, next to its two limits, in one run:
//!   1. the relay draining N preloaded rows (rows/s) for batch sizes 100, 1000, 5000;
//!   2. the same claim/delete SQL alone, no Kafka (rows/s);
//!   3. the broker's own produce rate from one librdkafka client, records like the relay's.
//!
//!   KAFKA_BROKERS=127.0.0.1:9093 cargo bench --bench relay      (BENCH_ROWS, default 50000)
//!
//! Uses a database of its own (dropped afterwards) and topics of its own.

use std::time::{Duration, Instant};

use futures::future::join_all;
use invalidator::kafka::{KafkaSettings, TopicSpec};
use invalidator::redact::Redacted;
use invalidator::relay::{self, RelaySettings};
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;

fn env(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_string())
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("postgres");
    tokio::spawn(conn);
    c
}

async fn preload(c: &tokio_postgres::Client, n: i64) {
    c.execute(
        "INSERT INTO invalidator.outbox (partition_key, op, keys)
         SELECT 'product:' || i, 'delete', ARRAY['product:' || i] FROM generate_series(1, $1::bigint) i",
        &[&n],
    )
    .await
    .expect("preload");
    c.batch_execute("VACUUM ANALYZE invalidator.outbox")
        .await
        .expect("vacuum");
}

async fn create_topic(kafka: &KafkaSettings, topic: &str) {
    let spec = TopicSpec {
        partitions: 6,
        replication_factor: 1,
    };
    kafka
        .ensure_topics(&[topic.to_string()], Some(spec))
        .await
        .expect("creating the bench topic");
}

#[tokio::main]
async fn main() {
    let admin = env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let brokers = env("KAFKA_BROKERS", "127.0.0.1:9093");
    let rows: i64 = env("BENCH_ROWS", "50000").parse().expect("BENCH_ROWS");
    let db = format!("inv_bench_{}", std::process::id());
    let a = connect(&admin).await;
    a.batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("create database");
    let url = format!(
        "{}/{db}",
        admin.rsplit_once('/').expect("a URL with a database").0
    );
    let mut c = connect(&url).await;
    invalidator::migrate::run(&mut c, &Default::default())
        .await
        .expect("migrate");
    let kafka = KafkaSettings {
        brokers: brokers.clone(),
        options: vec![],
    };

    println!("rows per run: {rows}; broker {brokers}");
    println!("{:<44} {:>12}", "scenario", "rows/s");
    for batch in [100i64, 1000, 5000] {
        // SQL alone: the relay's claim/delete statement, one transaction per batch.
        preload(&c, rows).await;
        let started = Instant::now();
        loop {
            let tx = c.transaction().await.unwrap();
            let n = tx
                .execute(
                    "WITH batch AS (SELECT id FROM invalidator.outbox WHERE id >= 0 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                     DELETE FROM invalidator.outbox o USING batch WHERE o.id = batch.id
                     RETURNING o.id, o.event_id, o.created_at, o.topic, o.partition_key, o.op, o.keys, o.headers",
                    &[&batch],
                )
                .await
                .unwrap();
            tx.commit().await.unwrap();
            if n == 0 {
                break;
            }
        }
        let sql = rows as f64 / started.elapsed().as_secs_f64();
        println!(
            "{:<44} {:>12.0}",
            format!("claim/delete SQL alone, batch {batch}"),
            sql
        );

        // The relay, draining the same backlog to Kafka.
        let topic = format!("bench_relay_{}_{batch}", std::process::id());
        create_topic(&kafka, &topic).await;
        preload(&c, rows).await;
        let token = CancellationToken::new();
        let settings = RelaySettings {
            database_url: Redacted::new(url.clone()),
            kafka: kafka.clone(),
            topic: topic.clone(),
            batch_size: batch,
            poll_interval: Duration::from_millis(10),
            sweep_interval: Duration::from_secs(1),
            delivery_timeout: Duration::from_secs(30),
            source: None,
            create_topics: None,
            listen: false,
            max_backoff: Duration::from_secs(1),
            failpoint: None,
        };
        let started = Instant::now();
        let handle = tokio::spawn(relay::run(settings, relay::Health::new(), token.clone()));
        loop {
            let left: i64 = c
                .query_one("SELECT count(*) FROM invalidator.outbox", &[])
                .await
                .unwrap()
                .get(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let relay_rate = rows as f64 / started.elapsed().as_secs_f64();
        token.cancel();
        handle.await.unwrap().expect("relay");
        println!(
            "{:<44} {:>12.0}",
            format!("relay to Kafka, batch {batch}"),
            relay_rate
        );
    }

    // The broker's own produce rate from one client: same record size, same settings.
    let topic = format!("bench_produce_{}", std::process::id());
    create_topic(&kafka, &topic).await;
    // The relay's own producer settings (idempotence, acks=all, lz4, linger), not a copy.
    let producer = relay::create_producer(&kafka, Duration::from_secs(30)).expect("producer");
    let value = br#"{"v":1,"event_id":"6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f","op":"delete","keys":["product:12345"],"created_at":"2026-11-23T06:00:00.123456Z","source":"bench"}"#;
    let started = Instant::now();
    let mut sent = 0i64;
    while sent < rows {
        let chunk = (rows - sent).min(5000);
        let keys: Vec<String> = (sent..sent + chunk)
            .map(|i| format!("product:{i}"))
            .collect();
        let futures: Vec<_> = keys
            .iter()
            .map(|k| {
                producer
                    .send_result(FutureRecord::to(&topic).key(k).payload(&value[..]))
                    .expect("enqueue")
            })
            .collect();
        for r in join_all(futures).await {
            r.expect("delivery report").expect("delivered");
        }
        sent += chunk;
    }
    let produce = rows as f64 / started.elapsed().as_secs_f64();
    println!(
        "{:<44} {:>12.0}",
        "broker produce, one librdkafka client", produce
    );

    drop(c);
    a.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .ok();
}
