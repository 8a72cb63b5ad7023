//! Redis stopped for 10 s in the middle of a stream: the consumer waits (readiness degraded),
//! then applies everything; nothing is dead-lettered and no offset is skipped.

mod common;
mod consumer_support;

use std::time::Duration;

use common::{eventually, http_get, unique};
use consumer_support::*;
use invalidator::wire::Op;
use redis::AsyncCommands;

const WAIT: Duration = Duration::from_secs(90);

async fn exists(url: &str, k: &str) -> bool {
    let mut c = redis(url).await;
    c.exists(k).await.expect("EXISTS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Records produced while Redis is down are applied once it is back; DLQ stays empty.
async fn redis_outage_waits_and_applies_everything() {
    let b = brokers();
    let mut server = RedisServer::start(&[]);
    let url = server.url();
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    create_topics(&b, &topic, 2).await;
    let p = producer(&b);
    let key = |i: usize| format!("{px}:v{i}");

    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let running = start(settings(&b, &url, &topic, &group));
    let mut endpoint = invalidator::metrics::Endpoint::new();
    endpoint.add(
        "consumer",
        invalidator::metrics::CONSUMER_READY,
        &running.health,
    );
    invalidator::metrics::serve(metrics, endpoint, running.shutdown.clone())
        .await
        .expect("serving /metrics");
    for i in 0..20 {
        produce_event(&p, &topic, &event(Op::Bump, &[&key(i)])).await;
    }
    eventually(WAIT, "the first half applied", || {
        let h = running.health.clone();
        async move { h.stats.events_applied.get() >= 20 }
    })
    .await;
    for i in 0..20 {
        assert!(exists(&url, &key(i)).await);
    }

    server.stop();
    for i in 20..60 {
        produce_event(&p, &topic, &event(Op::Bump, &[&key(i)])).await;
    }
    eventually(WAIT, "readiness reports degraded", || {
        let h = running.health.clone();
        async move { !h.is_ready() }
    })
    .await;
    // Keep Redis down for the scenario's 10 s (not an assertion on time).
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        !running.health.is_ready(),
        "still degraded while Redis is down"
    );
    assert!(http_get(metrics, "/readyz")
        .await
        .starts_with("HTTP/1.1 503"));
    assert!(http_get(metrics, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(
        !running.handle.is_finished(),
        "the consumer waits, it does not exit"
    );
    assert_eq!(running.health.stats.events_applied.get(), 20);
    server.restart(); // empty: no persistence

    eventually(
        WAIT,
        "everything produced during the outage applied",
        || {
            let url = url.clone();
            let keys: Vec<String> = (20..60).map(key).collect();
            async move {
                for k in &keys {
                    if !exists(&url, k).await {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    eventually(WAIT, "readiness back", || {
        let h = running.health.clone();
        async move { h.is_ready() }
    })
    .await;
    assert!(http_get(metrics, "/readyz")
        .await
        .starts_with("HTTP/1.1 200"));
    let m = http_get(metrics, "/metrics").await;
    assert!(
        m.contains("invalidator_consumer_redis_retries_total"),
        "{m}"
    );
    running.stop().await.expect("clean stop");
    assert_eq!(
        record_count(&b, &format!("{topic}.dlq")).await,
        0,
        "nothing dead-lettered"
    );
    let offsets = committed(&b, &group, &topic, 2).await;
    let total: i64 = offsets.values().sum();
    assert_eq!(
        total, 60,
        "every offset committed, none skipped: {offsets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Shutdown while Redis is down abandons the batch: the consumer returns promptly and the
/// records it could not apply keep their offsets uncommitted, for the next consumer.
async fn shutdown_during_outage_commits_only_what_was_applied() {
    let b = brokers();
    let mut server = RedisServer::start(&[]);
    let url = server.url();
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    create_topics(&b, &topic, 1).await;
    let p = producer(&b);
    let running = start(settings(&b, &url, &topic, &group));
    produce_event(&p, &topic, &event(Op::Bump, &[&format!("{px}:first")])).await;
    eventually(WAIT, "the first record applied", || {
        let h = running.health.clone();
        async move { h.stats.events_applied.get() >= 1 }
    })
    .await;
    server.stop();
    for i in 0..5 {
        produce_event(&p, &topic, &event(Op::Bump, &[&format!("{px}:{i}")])).await;
    }
    eventually(WAIT, "readiness reports degraded", || {
        let h = running.health.clone();
        async move { !h.is_ready() }
    })
    .await;
    running.stop().await.expect("a clean stop, not an error");
    assert_eq!(
        committed(&b, &group, &topic, 1).await.get(&0),
        Some(&1),
        "only the applied record is committed"
    );
    assert_eq!(record_count(&b, &format!("{topic}.dlq")).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// An idle consumer notices a Redis outage (readiness degraded) and its end, with no records.
async fn idle_consumer_readiness_follows_redis() {
    let b = brokers();
    let mut server = RedisServer::start(&[]);
    let (topic, group) = (unique("t"), unique("g"));
    create_topics(&b, &topic, 1).await;
    let running = start(settings(&b, &server.url(), &topic, &group));
    eventually(WAIT, "ready", || {
        let h = running.health.clone();
        async move { h.is_ready() }
    })
    .await;
    server.stop();
    eventually(WAIT, "degraded while idle", || {
        let h = running.health.clone();
        async move { !h.is_ready() }
    })
    .await;
    server.restart();
    eventually(WAIT, "ready again", || {
        let h = running.health.clone();
        async move { h.is_ready() }
    })
    .await;
    running.stop().await.expect("clean stop");
}
