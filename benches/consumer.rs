//! Keys per second the consumer's Redis layer applies, for a few batch sizes: each batch is
//! one `Cache::apply` call, i.e. one pipeline of `delete` scripts (UNLINK + guard INCR +
//! PEXPIRE per key), exactly what the daemon sends per polled batch. Kafka is not involved.
//!
//! `cargo bench --bench consumer` (REDIS_URL, default redis://127.0.0.1:6379). A
//! `harness = false` target: it prints a table and never runs under `cargo test`.
//! Compare with `redis-benchmark -P <n> -n 1000000 -q DEL key:__rand_int__`.

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
    });
}
