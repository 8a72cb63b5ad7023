//! Keys per second the consumer's Redis layer applies, for a few batch sizes: each batch is
//! one `Cache::apply` call, i.e. one pipeline of `delete` scripts (UNLINK + guard INCR +
//! PEXPIRE per key), exactly what the daemon sends per polled batch. Kafka is not involved.
//!
//! `cargo bench --bench consumer` (REDIS_URL, default redis://127.0.0.1:6379). A
//! `harness = false` target: it prints a table and never runs under `cargo test`.
//! Compare with `redis-benchmark -P <n> -n 1000000 -q DEL key:__rand_int__`.
//!
//! With `BENCH_E2E=1` it also measures the whole consumer (Kafka → Redis) on KAFKA_BROKERS:
//! records are produced first, then timed from the first record taken to the last key applied
//! (the consumer-group join is not counted).

use std::time::{Duration, Instant};

use invalidator::cache::{ApplyOptions, Cache, Invalidation, RedisSettings};
use invalidator::redact::Redacted;
use invalidator::wire::Op;
use uuid::Uuid;

fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let total: usize = std::env::var("BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let settings = RedisSettings {
            url: Redacted::new(url.clone()),
            response_timeout: Duration::from_secs(30),
            ..RedisSettings::default()
        };
        let mut cache = Cache::connect(&settings, ApplyOptions::default())
            .await
            .expect("connecting to Redis");
        println!(
            "redis: {}  keys per run: {total}  op: delete (1 key per event)",
            cache.url()
        );
        println!("{:>12} {:>12} {:>14}", "batch size", "seconds", "keys/s");
        let run = Uuid::new_v4().simple().to_string();
        for batch in [1usize, 10, 100, 1000, 5000] {
            // Fewer keys for tiny batches: one round trip each.
            let n = if batch == 1 { total / 10 } else { total };
            let keys: Vec<Vec<String>> = (0..n)
                .map(|i| vec![format!("bench:{run}:{batch}:{i}")])
                .collect();
            let start = Instant::now();
            for chunk in keys.chunks(batch) {
                let events: Vec<Invalidation<'_>> = chunk
                    .iter()
                    .map(|k| Invalidation {
                        op: Op::Delete,
                        event_id: Uuid::nil(),
                        keys: k,
                    })
                    .collect();
                for outcome in cache.apply(&events).await {
                    outcome.expect("apply");
                }
            }
            let secs = start.elapsed().as_secs_f64();
            println!("{batch:>12} {secs:>12.3} {:>14.0}", n as f64 / secs);
        }
        println!("(guards written: invalidator:guard:{{bench:{run}:…}}, TTL 10 min)");
        if std::env::var("BENCH_E2E").is_ok_and(|v| v == "1") {
            e2e(&url, total / 4).await;
        }
    });
}

/// The whole consumer: produce `n` one-key delete events, then time their application.
async fn e2e(redis_url: &str, n: usize) {
    use invalidator::consumer::{ConsumerSettings, Health};
    use invalidator::kafka::{KafkaSettings, TopicSpec};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let kafka = KafkaSettings {
        brokers: brokers.clone(),
        options: vec![("fetch.wait.max.ms".into(), "5".into())],
    };
    println!("\nend to end via {brokers}: {n} one-key delete events per run");
    println!("{:>12} {:>12} {:>14}", "batch size", "seconds", "keys/s");
    for batch in [100usize, 1000] {
        let topic = format!("bench-{}", Uuid::new_v4().simple());
        kafka
            .ensure_topics(
                &[topic.clone(), format!("{topic}.dlq")],
                Some(TopicSpec {
                    partitions: 1,
                    replication_factor: 1,
                }),
            )
            .await
            .expect("creating bench topics");
        let producer: FutureProducer = kafka
            .client_config(&[("linger.ms", "20"), ("batch.num.messages", "10000")])
            .create()
            .expect("producer");
        let records: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| {
                let e = invalidator::wire::Event {
                    v: 1,
                    event_id: Uuid::new_v4(),
                    op: Op::Delete,
                    keys: vec![format!("bench:{topic}:{i}")],
                    created_at: chrono::Utc::now(),
                    source: None,
                };
                (e.keys[0].clone(), e.encode())
            })
            .collect();
        for chunk in records.chunks(5000) {
            let sends = chunk.iter().map(|(k, v)| {
                producer.send(
                    FutureRecord::to(&topic).key(k).payload(v),
                    Duration::from_secs(60),
                )
            });
            for d in futures::future::join_all(sends).await {
                d.map_err(|(e, _)| e).expect("produce");
            }
        }
        let mut settings = ConsumerSettings::new(
            kafka.clone(),
            RedisSettings {
                url: Redacted::new(redis_url),
                ..RedisSettings::default()
            },
            &topic,
            &format!("{topic}-g"),
        );
        settings.batch_size = batch;
        let health = Health::new();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(invalidator::consumer::run(
            settings,
            health.clone(),
            shutdown.clone(),
        ));
        while health.stats.records.get() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let start = Instant::now();
        while health.stats.keys_applied.get() < n as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{batch:>12} {secs:>12.3} {:>14.0}", n as f64 / secs);
        shutdown.cancel();
        task.await.expect("consumer task").expect("consumer");
    }
}
