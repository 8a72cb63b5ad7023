//! (a) Relay throughput next to its two limits, and (f) the relay's peak memory: N preloaded
//! rows drained by the relay process (rows/s), the same claim/delete SQL alone with no Kafka,
//! and the broker's own produce rate from one librdkafka client with the relay's settings.

use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common::*;

pub async fn run(
    env: &Env,
    rows: i64,
    batches: &[i64],
    in_flights: &[u32],
    rss: &mut Vec<(String, f64)>,
) {
    let db = ScratchDb::new(env, "relay").await;
    let mut c = db.client().await;
    let t = Table::start(
        &format!(
            "(a) relay throughput: {rows} preloaded one-key rows, broker {}",
            env.brokers
        ),
        &[
            "batch size",
            "claim/delete SQL alone (rows/s)",
            "in flight",
            "relay to Kafka (rows/s)",
            "relay / SQL",
            "claims: count, mean ms, busy share of the drain",
            "CPU during the drain (share of the machine)",
        ],
    );
    let mut best_relay = 0f64;
    // Whole-machine CPU per row (µs) and where it went, of the SQL alone per batch size and of
    // the best relay, for the summary.
    let mut sql_cpu = std::collections::HashMap::new();
    let mut best_relay_cpu = (0i64, f64::NAN);
    // Per batch size: (batch, SQL alone, the best relay at that batch size).
    let mut per_batch: Vec<(i64, f64, f64)> = Vec::new();
    for &batch in batches {
        preload(&c, rows, true).await;
        let cpu_before = cpu_snapshot();
        let started = Instant::now();
        loop {
            let tx = c.transaction().await.expect("begin");
            // The relay's own statement, from the first id, one transaction per batch.
            let n = tx
                .execute(invalidator::outbox::CLAIM, &[&batch, &0i64])
                .await
                .expect("claim");
            tx.commit().await.expect("commit");
            if n == 0 {
                break;
            }
        }
        let elapsed = started.elapsed();
        let sql = rows as f64 / elapsed.as_secs_f64();
        let cpu_after = cpu_snapshot();
        sql_cpu.insert(
            batch,
            (
                busy_core_seconds(&cpu_before, &cpu_after, elapsed) / rows as f64 * 1e6,
                cpu_summary(&cpu_before, &cpu_after),
            ),
        );

        per_batch.push((batch, sql, 0.0));
        for &in_flight in in_flights {
            let topic = format!("bench_relay_{}_{batch}_{in_flight}", run_id());
            create_topics(env, std::slice::from_ref(&topic), 6).await;
            let relay = Daemon::start(
                "relay",
                &[
                    "--topic",
                    &topic,
                    "--batch-size",
                    &batch.to_string(),
                    "--in-flight",
                    &in_flight.to_string(),
                    "--no-listen",
                ],
                &[("DATABASE_URL", &db.url), ("KAFKA_BROKERS", &env.brokers)],
            )
            .await;
            // One row first: the producer's first delivery pays the idempotence handshake.
            preload(&c, 1, false).await;
            while relay.metric("invalidator_relay_published_total").await < 1.0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Timed from the preload's COMMIT: its rows become visible to the relay at once.
            preload(&c, rows, false).await;
            let started = Instant::now();
            let cpu_before = cpu_snapshot();
            // After the preload: the empty polls while it ran are not the drain's.
            let claims_before = claim_totals(&relay).await;
            while relay.metric("invalidator_relay_published_total").await < (rows + 1) as f64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let elapsed = started.elapsed();
            let relay_rate = rows as f64 / elapsed.as_secs_f64();
            let cpu_after = cpu_snapshot();
            let cpu = cpu_summary(&cpu_before, &cpu_after);
            let relay_cpu = busy_core_seconds(&cpu_before, &cpu_after, elapsed) / rows as f64 * 1e6;
            let claims_after = claim_totals(&relay).await;
            let (claims, claim_secs) = (
                claims_after.0 - claims_before.0,
                claims_after.1 - claims_before.1,
            );
            rss.push((
                format!("relay, drain at batch {batch}, {in_flight} in flight"),
                relay.peak_rss_mib(),
            ));
            relay.stop().await;
            if let Some(last) = per_batch.last_mut() {
                last.2 = last.2.max(relay_rate);
            }
            if relay_rate > best_relay {
                best_relay = relay_rate;
                best_relay_cpu = (batch, relay_cpu);
            }
            t.row(&[
                batch.to_string(),
                format!("{sql:.0}"),
                in_flight.to_string(),
                format!("{relay_rate:.0}"),
                format!("{:.2}", relay_rate / sql),
                format!(
                    "{claims:.0}, {:.2} ms, {:.0}%",
                    claim_secs / claims.max(1.0) * 1e3,
                    claim_secs / elapsed.as_secs_f64() * 100.0
                ),
                cpu,
            ]);
        }
    }

    // The broker's own rate from one client: the relay's producer settings, records like its.
    let topic = format!("bench_produce_{}", run_id());
    create_topics(env, std::slice::from_ref(&topic), 6).await;
    let producer: FutureProducer =
        invalidator::relay::producer_config(&kafka(env), Duration::from_secs(30))
            .create()
            .expect("producer");
    producer
        .send(
            FutureRecord::to(&topic).key("warm-up").payload("{}"),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("warm-up record");
    let value = br#"{"v":1,"event_id":"6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f","op":"delete","keys":["product:12345"],"created_at":"2026-11-23T06:00:00.123456Z","source":"bench"}"#;
    let cpu_before = cpu_snapshot();
    let started = Instant::now();
    let mut sent = 0i64;
    while sent < rows {
        let chunk = (rows - sent).min(5000);
        let keys: Vec<String> = (sent..sent + chunk)
            .map(|i| format!("product:{i}"))
            .collect();
        let deliveries: Vec<_> = keys
            .iter()
            .map(|k| {
                producer
                    .send_result(FutureRecord::to(&topic).key(k).payload(&value[..]))
                    .map_err(|(e, _)| e)
                    .expect("enqueue")
            })
            .collect();
        for d in join_all(deliveries).await {
            d.expect("delivery report")
                .map_err(|(e, _)| e)
                .expect("delivered");
        }
        sent += chunk;
    }
    let elapsed = started.elapsed();
    let broker = rows as f64 / elapsed.as_secs_f64();
    let cpu_after = cpu_snapshot();
    let broker_cpu = busy_core_seconds(&cpu_before, &cpu_after, elapsed) / rows as f64 * 1e6;
    let broker_cpu_summary = cpu_summary(&cpu_before, &cpu_after);
    let best_sql = per_batch.iter().map(|(_, sql, _)| *sql).fold(0.0, f64::max);
    println!(
        "\nbroker produce, one librdkafka client (the relay's settings): {broker:.0} records/s\n\
         best relay {best_relay:.0} rows/s = {:.2} x min(SQL alone {best_sql:.0}, broker {broker:.0}) (target >= 0.8)",
        best_relay / best_sql.min(broker)
    );
    // The same statement at the same batch size: what "the same claim/delete SQL alone" of
    // the target compares with, where the line above holds the fastest relay to the fastest SQL.
    let same_batch: Vec<String> = per_batch
        .iter()
        .map(|(batch, sql, relay)| format!("batch {batch} {:.2}", relay / sql.min(broker)))
        .collect();
    println!(
        "at each batch size, best relay / min(SQL alone at that batch size, broker): {} (target >= 0.8)",
        same_batch.join(", ")
    );
    // What the cores allow: a relay must run the claim SQL and the produce for every row, on
    // the same cores as PostgreSQL and the broker. Whole-machine CPU per row of each, measured
    // alone, adds up to a floor on the relay's CPU per row, and the cores to a ceiling on its
    // rate (a floor and a ceiling: running together only adds contention).
    let (batch, relay_cpu) = best_relay_cpu;
    if let Some((sql_cpu, sql_cpu_summary)) = sql_cpu.get(&batch) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let both = sql_cpu + broker_cpu;
        println!(
            "CPU per row, whole machine, at batch {batch}: SQL alone {sql_cpu:.2} µs + broker produce {broker_cpu:.2} µs \
             = {both:.2} µs, so {cores:.0} cores run both for at most {:.0} rows/s; \
             the best relay used {relay_cpu:.2} µs per row ({:.2} of that ceiling)\n\
             - SQL alone, batch {batch}: {sql_cpu_summary}\n\
             - broker produce (the harness is the client): {broker_cpu_summary}",
            cores / both * 1e6,
            best_relay / (cores / both * 1e6),
        );
    }
    drop(c);
    drop(db);
}

/// The relay's claim histogram so far: (claims, seconds spent in claim statements).
async fn claim_totals(relay: &Daemon) -> (f64, f64) {
    (
        relay
            .metric("invalidator_relay_claim_duration_seconds_count")
            .await,
        relay
            .metric("invalidator_relay_claim_duration_seconds_sum")
            .await,
    )
}
