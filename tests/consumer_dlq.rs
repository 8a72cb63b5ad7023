//! The dead-letter topic cannot be written (librdkafka's in-process mock cluster refuses every
//! Produce): the consumer exits non-zero without storing the poison record's offset, and the
//! next consumer of the group gets the record again.

mod common;
mod consumer_support;

use std::time::Duration;

use common::{eventually, unique};
use consumer_support::*;
use invalidator::consumer::ConsumeError;
use invalidator::wire::{headers, Op};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// DLQ unwritable → exit non-zero, poison offset not committed, redelivered to the next one.
async fn dlq_unwritable_stops_without_committing_the_record() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let b = mock.bootstrap_servers();
    let r = redis_url();
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    mock.create_topic(&topic, 1, 1).expect("topic");
    mock.create_topic(&format!("{topic}.dlq"), 1, 1)
        .expect("dlq topic");
    let mut c = redis(&r).await;
    let (before, after) = (format!("{px}:before"), format!("{px}:after"));
    let _: () = c.set(&before, "cached").await.unwrap();
    let _: () = c.set(&after, "cached").await.unwrap();
    let p = producer(&b);
    produce_event(&p, &topic, &event(Op::Delete, &[&before])).await; // offset 0
    produce(&p, &topic, "poison", Some(b"not json"), &[]).await; // offset 1
    produce_event(&p, &topic, &event(Op::Delete, &[&after])).await; // offset 2

    // Every Produce fails from now on: the DLQ cannot be written.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 200],
    );
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(common::bin())
            .args(["consume", "--topic", &topic, "--group", &group])
            .args(["--delivery-timeout", "5s"])
            .args(["-X", "auto.commit.interval.ms=100"])
            .env("KAFKA_BROKERS", &b)
            .env("REDIS_URL", &r)
            .env_remove("INVALIDATOR_KAFKA_OPTIONS")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the consumer exits by itself")
    .expect("running invalidator consume");
    let stderr = common::text(&out.stderr);
    assert!(!out.status.success(), "exit non-zero; stderr: {stderr}");
    assert!(stderr.contains("dead-letter topic"), "{stderr}");
    let done: Option<String> = c.get(&before).await.unwrap();
    assert_eq!(done, None, "the record before the poison was applied");
    let offsets = committed(&b, &group, &topic, 1).await;
    assert!(
        offsets.get(&0).is_none_or(|o| *o <= 1),
        "the poison record's offset (1) is not committed: {offsets:?}"
    );
    // The record after the poison may have been applied in the same batch, but its offset
    // is behind the poison's, so it is not committed either: it will come again.

    // The DLQ works again: the next consumer of the group gets the poison record again.
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    let running = start(settings(&b, &r, &topic, &group));
    eventually(
        Duration::from_secs(60),
        "the poison record dead-lettered",
        || {
            let h = running.health.clone();
            async move { h.stats.dead_lettered.get() >= 1 }
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the record after it applied again",
        || {
            let h = running.health.clone();
            async move { h.stats.events_applied.get() >= 1 }
        },
    )
    .await;
    let v: Option<String> = c.get(&after).await.unwrap();
    assert_eq!(v, None);
    running.stop().await.expect("clean stop");
    let dlq = read_all(&b, &format!("{topic}.dlq")).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        header(&dlq[0], headers::DLQ_SOURCE),
        Some(format!("{topic}/0/1"))
    );
    assert_eq!(committed(&b, &group, &topic, 1).await.get(&0), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// In-process, the same failure is `ConsumeError::DlqUnwritable`, naming the record.
async fn dlq_unwritable_is_a_typed_error() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let b = mock.bootstrap_servers();
    let (topic, group) = (unique("t"), unique("g"));
    mock.create_topic(&topic, 1, 1).expect("topic");
    mock.create_topic(&format!("{topic}.dlq"), 1, 1)
        .expect("dlq topic");
    let p = producer(&b);
    produce(&p, &topic, "poison", Some(b"{\"v\":9}"), &[]).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 200],
    );
    let mut s = settings(&b, &redis_url(), &topic, &group);
    s.delivery_timeout = Duration::from_secs(5);
    let running = start(s);
    let result = tokio::time::timeout(Duration::from_secs(120), running.handle)
        .await
        .expect("the consumer stops by itself")
        .expect("no panic");
    match result {
        Err(ConsumeError::DlqUnwritable { source_ref, .. }) => {
            assert_eq!(source_ref, format!("{topic}/0/0"))
        }
        other => panic!("expected DlqUnwritable, got {other:?}"),
    }
}
