//! (c) Consumer throughput: keys/s the consumer applies, next to what the same Redis does with
//! redis-benchmark's pipelined DEL. Two of ours: the Redis layer alone (one `Cache::apply`
//! pipeline of delete scripts per 1000 events, exactly what the daemon sends per batch), and
//! the consumer process draining a topic of preloaded one-key delete events.

use std::time::{Duration, Instant};

use invalidator::cache::{ApplyOptions, Cache, Invalidation, RedisSettings};
use invalidator::redact::Redacted;
use invalidator::wire::{Event, Op};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use crate::common::*;

pub async fn run(env: &Env, keys: usize, rss: &mut Vec<(String, f64)>) {
    let t = Table::start(
        &format!(
            "(c) consumer throughput, {keys} one-key delete events, Redis {}",
            redact(&env.redis_url)
        ),
        &["what", "keys/s", "Redis commands per key"],
    );
    // The Redis layer alone.
    let settings = RedisSettings {
        url: Redacted::new(env.redis_url.clone()),
        response_timeout: Duration::from_secs(30),
        ..RedisSettings::default()
    };
    let mut cache = Cache::connect(&settings, ApplyOptions::default())
        .await
        .expect("connecting to Redis");
    let id = run_id();
    let all: Vec<Vec<String>> = (0..keys)
        .map(|i| vec![format!("benchc:{id}:{i}")])
        .collect();
    let started = Instant::now();
    for chunk in all.chunks(1000) {
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
    t.row(&[
        "Redis layer alone: `Cache::apply`, 1000 events per pipeline".into(),
        rate(keys as f64, started.elapsed()),
        "1 EVALSHA (UNLINK + INCR/SET + PEXPIRE)".into(),
    ]);

    // The consumer process, from Kafka.
    let topic = format!("bench_cons_{id}");
    create_topics(env, &[topic.clone(), format!("{topic}.dlq")], 6).await;
    let producer: FutureProducer = kafka(env)
        .client_config(&[("linger.ms", "20"), ("batch.num.messages", "10000")])
        .create()
        .expect("producer");
    let records: Vec<(String, Vec<u8>)> = (0..keys)
        .map(|i| {
            let e = Event {
                v: 1,
                event_id: Uuid::new_v4(),
                op: Op::Delete,
                keys: vec![format!("benchc2:{id}:{i}")],
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
    // Kafka alone: a bare librdkafka consumer with the daemon's fetch settings reads the same
    // records and does nothing with them. The consumer cannot be faster than this.
    t.row(&[
        "Kafka alone: bare librdkafka consumer, daemon's fetch settings, no Redis".into(),
        read_only_rate(env, &topic, keys).await,
        "none".into(),
    ]);
    let consumer = start_consumer(env, &topic).await;
    // From the first key applied to the last (the group join is not counted).
    while consumer
        .metric("invalidator_consumer_keys_applied_total")
        .await
        < 1.0
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    while consumer
        .metric("invalidator_consumer_keys_applied_total")
        .await
        < keys as f64
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    // Where a batch's time goes: how many records librdkafka had ready, and how long one
    // batch (decode, one Redis pipeline, offsets) took, from the consumer's own metrics.
    let batches = consumer
        .metric("invalidator_consumer_batch_duration_seconds_count")
        .await;
    let batch_seconds = consumer
        .metric("invalidator_consumer_batch_duration_seconds_sum")
        .await;
    let records = consumer.metric("invalidator_consumer_records_total").await;
    let batch_note = if batches > 0.0 {
        format!(
            "consumer batches: {batches:.0}, mean {:.0} records, mean {:.2} ms each; \
             {:.0}% of the drain was spent inside batches",
            records / batches,
            1000.0 * batch_seconds / batches,
            100.0 * batch_seconds / elapsed.as_secs_f64()
        )
    } else {
        "consumer batches: none counted".into()
    };
    rss.push((
        "consumer, draining at full speed".into(),
        consumer.peak_rss_mib(),
    ));
    consumer.stop().await;
    t.row(&[
        "consumer process, Kafka → Redis (batch 1000)".into(),
        rate(keys as f64, elapsed),
        "1 EVALSHA".into(),
    ]);

    // The same Redis with redis-benchmark: pipelined DEL, one connection and fifty.
    let (host, port) = host_port(&env.redis_url);
    for (clients, pipeline) in [(1, 1000), (50, 64)] {
        let out = tokio::process::Command::new("redis-benchmark")
            .args([
                "-h", &host, "-p", &port, "-q", "-n", "1000000", "-r", "1000000",
            ])
            .args(["-c", &clients.to_string(), "-P", &pipeline.to_string()])
            .args(["DEL", "benchdel:__rand_int__"])
            .output()
            .await;
        let cell = match out {
            Ok(o) if o.status.success() => {
                parse_redis_benchmark(&String::from_utf8_lossy(&o.stdout))
            }
            Ok(o) => format!(
                "redis-benchmark failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("redis-benchmark not run: {e} (apt-get install redis-tools)"),
        };
        t.row(&[
            format!("redis-benchmark DEL, {clients} client(s), pipeline {pipeline}"),
            cell,
            "1 DEL".into(),
        ]);
    }
    println!("\n{batch_note}");
}

/// Reads `n` records of `topic` from the start in a group of its own, with the settings the
/// consumer daemon fetches with (and `--consumer-option`s); records/s from the first record
/// to the last.
async fn read_only_rate(env: &Env, topic: &str, n: usize) -> String {
    use futures::StreamExt;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let mut options: Vec<(String, String)> = [
        ("group.id", format!("{topic}_raw")),
        ("auto.offset.reset", "earliest".into()),
        ("enable.auto.commit", "false".into()),
        ("fetch.wait.max.ms", "5".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(
        invalidator::consumer::daemon::FETCH_SETTINGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .collect();
    for o in &env.consumer_options {
        if let Some((k, v)) = o.split_once('=') {
            options.push((k.to_string(), v.to_string()));
        }
    }
    let pairs: Vec<(&str, &str)> = options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let consumer: StreamConsumer = kafka(env)
        .client_config(&pairs)
        .create()
        .expect("a bare consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut stream = consumer.stream();
    let mut seen = 0usize;
    let mut started = None;
    while seen < n {
        match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
            Ok(Some(Ok(_))) => {
                started.get_or_insert_with(Instant::now);
                seen += 1;
            }
            Ok(Some(Err(e))) => return format!("read failed: {e}"),
            Ok(None) | Err(_) => return format!("stalled after {seen} records"),
        }
    }
    let rate_text = rate(n as f64, started.map_or(Duration::ZERO, |s| s.elapsed()));
    drop(stream);
    rate_text
}

/// `DEL benchdel:__rand_int__: 977517.06 requests per second, p50=…` → `977517`.
fn parse_redis_benchmark(out: &str) -> String {
    out.rsplit(['\r', '\n'])
        .filter_map(|l| l.split_once(": ").map(|(_, r)| r))
        .find_map(|r| r.split_whitespace().next()?.parse::<f64>().ok())
        .map_or_else(
            || format!("unparsed: {}", out.trim()),
            |v| format!("{v:.0}"),
        )
}

fn host_port(url: &str) -> (String, String) {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = rest.split('/').next().unwrap_or(rest);
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.to_string()),
        None => (hostport.to_string(), "6379".to_string()),
    }
}

fn redact(url: &str) -> String {
    invalidator::redact::redact(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// redis-benchmark's quiet line is read, with or without the latency suffix.
    fn reads_redis_benchmark() {
        assert_eq!(
            parse_redis_benchmark(
                "DEL benchdel:__rand_int__: 977517.06 requests per second, p50=0.4 msec\n"
            ),
            "977517"
        );
        assert_eq!(
            parse_redis_benchmark("\rDEL x: rps=0\rDEL x: 12.4 requests per second\n"),
            "12"
        );
        assert_eq!(
            host_port("redis://:pw@h:6380/2"),
            ("h".into(), "6380".into())
        );
    }
}
