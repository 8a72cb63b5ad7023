//! (a) Relay throughput next to its two limits, and (f) the relay's peak memory: N preloaded
//! rows drained by the relay process (rows/s), the same claim/delete SQL alone with no Kafka,
//! and the broker's own produce rate from one librdkafka client with the relay's settings.

use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::producer::FutureRecord;

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
            "CPU during the drain (share of the machine)",
        ],
    );
    let mut best_relay = 0f64;
    let mut best_sql = 0f64;
    for &batch in batches {
        preload(&c, rows, true).await;
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
        let sql = rows as f64 / started.elapsed().as_secs_f64();

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
            while relay.metric("invalidator_relay_published_total").await < (rows + 1) as f64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let relay_rate = rows as f64 / started.elapsed().as_secs_f64();
            let cpu = cpu_summary(&cpu_before, &cpu_snapshot());
            rss.push((
                format!("relay, drain at batch {batch}, {in_flight} in flight"),
                relay.peak_rss_mib(),
            ));
            relay.stop().await;
            best_relay = best_relay.max(relay_rate);
            t.row(&[
                batch.to_string(),
                format!("{sql:.0}"),
                in_flight.to_string(),
                format!("{relay_rate:.0}"),
                format!("{:.2}", relay_rate / sql),
                cpu,
            ]);
        }
        best_sql = best_sql.max(sql);
    }

    // The broker's own rate from one client: the relay's producer settings, records like its.
    let topic = format!("bench_produce_{}", run_id());
    create_topics(env, std::slice::from_ref(&topic), 6).await;
    let producer = invalidator::relay::create_producer(&kafka(env), Duration::from_secs(30))
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
    let broker = rows as f64 / started.elapsed().as_secs_f64();
    println!(
        "\nbroker produce, one librdkafka client (the relay's settings): {broker:.0} records/s\n\
         best relay {best_relay:.0} rows/s = {:.2} x min(SQL alone {best_sql:.0}, broker {broker:.0}) (target >= 0.8)",
        best_relay / best_sql.min(broker)
    );
    drop(c);
    drop(db);
}

async fn preload(c: &tokio_postgres::Client, n: i64, vacuum: bool) {
    insert_outbox(c, n, "product").await;
    if vacuum {
        c.batch_execute("VACUUM ANALYZE invalidator.outbox")
            .await
            .expect("vacuum");
    }
}
