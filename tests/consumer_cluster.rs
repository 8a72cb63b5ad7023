//! Redis Cluster: a local three-master cluster of the test's own; keys in many slots,
//! including keys with {hash tags}, are all applied (one pipeline per slot, one script per key
//! touching one slot).

mod common;
mod consumer_support;

use std::process::Command;
use std::time::Duration;

use common::{eventually, unique};
use consumer_support::*;
use invalidator::wire::Op;
use redis::AsyncCommands;

/// Three masters on free ports, joined with `redis-cli --cluster create`.
fn cluster() -> Vec<RedisServer> {
    let servers: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_on(
                free_cluster_port(),
                &["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"],
            )
        })
        .collect();
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for s in &servers {
        create.arg(format!("127.0.0.1:{}", s.port));
    }
    let out = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(out.status.success(), "{}", common::text(&out.stdout));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for s in &servers {
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &s.port.to_string(), "cluster", "info"])
                .output()
                .expect("cluster info");
            if common::text(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    servers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Deletes and bumps of keys spread over all three masters, with and without hash tags.
async fn cluster_keys_in_many_slots_are_applied() {
    let servers = cluster();
    let seeds: Vec<String> = servers.iter().map(|s| s.url()).collect();
    let b = brokers();
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    create_topics(&b, &topic, 2).await;

    let client = redis::cluster::ClusterClient::new(seeds.clone()).expect("cluster client");
    let mut c = client
        .get_async_connection()
        .await
        .expect("cluster connection");
    let plain: Vec<String> = (0..60).map(|i| format!("{px}:item:{i}")).collect();
    let tagged: Vec<String> = (0..20)
        .map(|i| format!("{{{px}-t{}}}:user:{i}", i % 4))
        .collect();
    let versions: Vec<String> = (0..20).map(|i| format!("{px}:ver:{i}")).collect();
    let tagged_versions: Vec<String> = (0..5).map(|i| format!("{{{px}-t{i}}}:ver")).collect();
    for k in plain.iter().chain(&tagged) {
        let _: () = c.set(k, "cached").await.unwrap();
    }
    for k in &versions {
        let _: () = c.set(k, "10").await.unwrap();
    }
    let slots: std::collections::HashSet<u16> = plain
        .iter()
        .chain(&tagged)
        .map(|k| invalidator::cache::slot(k))
        .collect();
    assert!(slots.len() > 30, "the keys spread over many slots");

    let p = producer(&b);
    for chunk in plain.chunks(7).chain(tagged.chunks(3)) {
        let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
        produce_event(&p, &topic, &event(Op::Delete, &keys)).await;
    }
    let bump_keys: Vec<&str> = versions
        .iter()
        .chain(&tagged_versions)
        .map(String::as_str)
        .collect();
    let bump = event(Op::Bump, &bump_keys);
    produce_event(&p, &topic, &bump).await;
    produce_event(&p, &topic, &bump).await; // a redelivery

    let mut s = settings(&b, &seeds.join(","), &topic, &group);
    s.redis.cluster = true;
    let running = start(s);
    let events = plain.chunks(7).count() + tagged.chunks(3).count() + 2;
    let dups = bump_keys.len() as u64;
    // Both counters: the daemon counts an event applied just before its duplicates.
    eventually(Duration::from_secs(90), "every event applied", || {
        let h = running.health.clone();
        async move {
            h.stats.events_applied.get() >= events as u64 && h.stats.duplicates.get() >= dups
        }
    })
    .await;
    for k in plain.iter().chain(&tagged) {
        let v: Option<String> = c.get(k).await.unwrap();
        assert_eq!(v, None, "{k} deleted");
        let g: Option<String> = c.get(invalidator::cache::guard_key(k)).await.unwrap();
        assert!(g.is_some(), "guard of {k}");
    }
    for k in &versions {
        let v: Option<String> = c.get(k).await.unwrap();
        assert_eq!(v.as_deref(), Some("11"), "{k} bumped once");
    }
    for k in &tagged_versions {
        let v: Option<String> = c.get(k).await.unwrap();
        assert!(v.is_some(), "{k} started from a random base");
    }
    assert_eq!(
        running.health.stats.duplicates.get(),
        bump_keys.len() as u64,
        "the redelivered bump was a no-op"
    );
    running.stop().await.expect("clean stop");
    assert_eq!(record_count(&b, &format!("{topic}.dlq")).await, 0);
    drop(servers);
}
