//! `invalidator consume` against real Redis and a real broker (tansu): applying, redelivery,
//! poison records and the dead-letter topic, crash between apply and commit, SIGTERM.

mod common;
mod consumer_support;

use std::time::Duration;

use common::{eventually, unique};
use consumer_support::*;
use invalidator::wire::{headers, Op};
use rdkafka::Message;
use redis::AsyncCommands;

const WAIT: Duration = Duration::from_secs(60);

async fn get(c: &mut redis::aio::MultiplexedConnection, k: &str) -> Option<String> {
    c.get(k).await.expect("GET")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// A delete removes its keys and creates their guards; a bump increments its version key.
async fn applies_delete_and_bump() {
    let (b, r) = (brokers(), redis_url());
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    create_topics(&b, &topic, 2).await;
    let mut c = redis(&r).await;
    let (k1, k2, ver) = (
        format!("{px}:a"),
        format!("{{{px}}}:b"),
        format!("{px}:ver"),
    );
    let _: () = c.set(&k1, "old").await.unwrap();
    let _: () = c.set(&k2, "old").await.unwrap();
    let _: () = c.set(&ver, "41").await.unwrap();

    let p = producer(&b);
    produce_event(&p, &topic, &event(Op::Delete, &[&k1, &k2])).await;
    produce_event(&p, &topic, &event(Op::Bump, &[&ver])).await;
    let running = start(settings(&b, &r, &topic, &group));

    eventually(WAIT, "both events applied", || {
        let h = running.health.clone();
        async move { h.stats.events_applied.get() >= 2 }
    })
    .await;
    assert_eq!(get(&mut c, &k1).await, None);
    assert_eq!(get(&mut c, &k2).await, None);
    assert_eq!(get(&mut c, &ver).await.as_deref(), Some("42"));
    assert!(get(&mut c, &format!("invalidator:guard:{{{k1}}}"))
        .await
        .is_some());
    assert!(get(&mut c, &format!("invalidator:guard:{k2}"))
        .await
        .is_some());
    let ttl: i64 = c.pttl(format!("invalidator:guard:{{{k1}}}")).await.unwrap();
    assert!(ttl > 0, "the guard has a TTL");
    running.stop().await.expect("clean stop");
    assert_eq!(record_count(&b, &format!("{topic}.dlq")).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// The same record delivered five times bumps once; the delete is harmless each time.
async fn redelivery_is_a_no_op() {
    let (b, r) = (brokers(), redis_url());
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    create_topics(&b, &topic, 1).await;
    let mut c = redis(&r).await;
    let (ver, key) = (format!("{px}:ver"), format!("{px}:item"));
    let _: () = c.set(&ver, "100").await.unwrap();
    let _: () = c.set(&key, "cached").await.unwrap();
    let bump = event(Op::Bump, &[&ver]);
    let delete = event(Op::Delete, &[&key]);
    let p = producer(&b);
    for _ in 0..5 {
        produce_event(&p, &topic, &bump).await;
        produce_event(&p, &topic, &delete).await;
    }
    let running = start(settings(&b, &r, &topic, &group));
    eventually(WAIT, "all ten records applied", || {
        let h = running.health.clone();
        async move { h.stats.events_applied.get() >= 10 }
    })
    .await;
    assert_eq!(
        get(&mut c, &ver).await.as_deref(),
        Some("101"),
        "bumped once, not five times"
    );
    assert_eq!(running.health.stats.duplicates.get(), 4);
    assert_eq!(get(&mut c, &key).await, None);
    running.stop().await.expect("clean stop");
    assert_eq!(committed(&b, &group, &topic, 1).await.get(&0), Some(&10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Every kind of poison record lands in the DLQ with its reason and the DLQ headers; valid
/// records around them are applied and the consumer keeps running.
async fn poison_records_are_dead_lettered() {
    let (b, r) = (brokers(), redis_url());
    let (topic, group, px) = (unique("t"), unique("g"), unique("ok"));
    create_topics(&b, &topic, 1).await;
    let mut c = redis(&r).await;
    let ok = |i: usize| format!("{px}:{i}");
    for i in 0..12 {
        let _: () = c.set(ok(i), "cached").await.unwrap();
    }
    let hash_key = format!("{px}:hash");
    let _: () = c.hset(&hash_key, "f", "v").await.unwrap();
    let text_key = format!("{px}:text");
    let _: () = c.set(&text_key, "not a number").await.unwrap();

    let id = uuid::Uuid::new_v4();
    let valid_json = |keys: &str| {
        format!(r#"{{"v":1,"event_id":"{id}","op":"delete","keys":{keys},"created_at":"2026-11-23T06:00:00Z"}}"#)
            .into_bytes()
    };
    let huge_key = format!("{px}:{}", "x".repeat(2_000_000));
    let mut bad_utf8 = valid_json(r#"["PLACEHOLDER"]"#);
    let at = bad_utf8
        .windows(11)
        .position(|w| w == b"PLACEHOLDER")
        .unwrap();
    bad_utf8.splice(at..at + 11, [b'a', 0xff, 0xfe, b'b']);
    let poison: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("not json", Some(b"not json at all".to_vec()), "decode"),
        ("wrong types", Some(valid_json("[1,2]")), "decode"),
        (
            "unknown v",
            Some(br#"{"v":7,"event_id":"x","shape":"future"}"#.to_vec()),
            "unsupported-version",
        ),
        ("no keys", Some(valid_json("[]")), "decode"),
        (
            "forbidden prefix",
            Some(valid_json(r#"["forbidden:1"]"#)),
            "rejected-key",
        ),
        (
            "2 MB value",
            Some(valid_json(&format!(r#"["{huge_key}"]"#))),
            "rejected-key",
        ),
        ("invalid utf-8", Some(bad_utf8), "decode"),
        ("no value", None, "decode"),
        (
            "wrongtype",
            Some(serde_json::to_vec(&event(Op::Bump, &[&hash_key])).unwrap()),
            "redis-permanent",
        ),
        (
            "not an integer",
            Some(serde_json::to_vec(&event(Op::Bump, &[&text_key])).unwrap()),
            "retries-exhausted",
        ),
    ];
    let p = producer(&b);
    let mut expected = Vec::new(); // (offset, reason)
    let mut n = 0;
    for (name, value, reason) in &poison {
        produce_event(&p, &topic, &event(Op::Delete, &[&ok(n)])).await;
        n += 1;
        let (_, off) = produce(&p, &topic, name, value.as_deref(), &[("traceparent", name)]).await;
        expected.push((off, *reason, *name));
    }
    produce_event(&p, &topic, &event(Op::Delete, &[&ok(n)])).await;

    let mut s = settings(&b, &r, &topic, &group);
    s.policy.allow_prefixes = vec![format!("{px}:")];
    let running = start(s);
    let dlq = format!("{topic}.dlq");
    let want = expected.len() as i64;
    eventually(WAIT, "every poison record dead-lettered", || {
        let (b, dlq) = (b.clone(), dlq.clone());
        async move { record_count(&b, &dlq).await >= want }
    })
    .await;
    // The last valid record may come in a batch after the last poison one.
    let valid = n as u64 + 1;
    eventually(WAIT, "every valid record applied", || {
        let h = running.health.clone();
        async move { h.stats.events_applied.get() >= valid }
    })
    .await;
    for i in 0..=n {
        assert_eq!(get(&mut c, &ok(i)).await, None, "valid record {i} applied");
    }
    let mut records = read_all(&b, &dlq).await;
    // In source order (dead letters of one batch are produced concurrently).
    records.sort_by_key(|m| {
        header(m, headers::DLQ_SOURCE)
            .and_then(|s| s.rsplit('/').next().and_then(|o| o.parse::<i64>().ok()))
            .unwrap_or(-1)
    });
    assert_eq!(records.len(), expected.len());
    for (m, (off, reason, name)) in records.iter().zip(&expected) {
        assert_eq!(
            header(m, headers::DLQ_REASON).as_deref(),
            Some(*reason),
            "{name}"
        );
        assert_eq!(
            header(m, headers::DLQ_SOURCE),
            Some(format!("{topic}/0/{off}")),
            "{name}"
        );
        assert_eq!(
            header(m, "traceparent").as_deref(),
            Some(*name),
            "original headers kept"
        );
        assert_eq!(m.key(), Some(name.as_bytes()), "original key kept");
        assert!(
            header(m, headers::DLQ_ERROR).is_some_and(|e| !e.is_empty()),
            "{name}"
        );
        assert!(header(m, headers::DLQ_FAILED_AT).is_some(), "{name}");
        assert!(header(m, headers::DLQ_ATTEMPTS).is_some(), "{name}");
    }
    let original = &poison[5].1.as_ref().unwrap();
    assert_eq!(
        records[5].payload().map(<[u8]>::len),
        Some(original.len()),
        "the 2 MB value is kept whole"
    );
    assert_eq!(
        header(&records[9], headers::DLQ_ATTEMPTS).as_deref(),
        Some("3"),
        "1 try + 2 retries"
    );

    // Still running: a later record is applied.
    let later = format!("{px}:later");
    let _: () = c.set(&later, "cached").await.unwrap();
    produce_event(&p, &topic, &event(Op::Delete, &[&later])).await;
    eventually(WAIT, "a record after the poison is applied", || {
        let r = r.clone();
        let later = later.clone();
        async move { get(&mut redis(&r).await, &later).await.is_none() }
    })
    .await;
    assert!(!running.handle.is_finished());
    running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// A consumer killed after applying but before committing: the next one gets the records
/// again, re-applies them harmlessly, and the end state is identical.
async fn crash_before_commit_redelivers() {
    let (b, r) = (brokers(), redis_url());
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    create_topics(&b, &topic, 1).await;
    let mut c = redis(&r).await;
    let (ver, key) = (format!("{px}:ver"), format!("{px}:item"));
    let _: () = c.set(&ver, "7").await.unwrap();
    let _: () = c.set(&key, "cached").await.unwrap();
    let p = producer(&b);
    produce_event(&p, &topic, &event(Op::Bump, &[&ver])).await;
    produce_event(&p, &topic, &event(Op::Delete, &[&key])).await;

    // The binary, with auto-commit pushed out of reach: only a clean stop would commit.
    let mut child = tokio::process::Command::new(common::bin())
        .args(["consume", "--topic", &topic, "--group", &group])
        .args([
            "-X",
            "fetch.wait.max.ms=5",
            "-X",
            "auto.commit.interval.ms=3600000",
        ])
        .env("KAFKA_BROKERS", &b)
        .env("REDIS_URL", &r)
        .env_remove("INVALIDATOR_KAFKA_OPTIONS")
        .kill_on_drop(true)
        .spawn()
        .expect("starting invalidator consume");
    eventually(WAIT, "the first consumer applied both events", || {
        let r = r.clone();
        let (ver, key) = (ver.clone(), key.clone());
        async move {
            let mut c = redis(&r).await;
            get(&mut c, &ver).await.as_deref() == Some("8") && get(&mut c, &key).await.is_none()
        }
    })
    .await;
    child.start_kill().expect("SIGKILL");
    let status = child.wait().await.expect("wait");
    assert!(!status.success());
    assert_eq!(
        committed(&b, &group, &topic, 1).await.get(&0),
        None,
        "nothing committed"
    );

    let _: () = c.set(&key, "refilled after the crash").await.unwrap();
    let running = start(settings(&b, &r, &topic, &group));
    eventually(WAIT, "both records delivered again", || {
        let h = running.health.clone();
        async move { h.stats.events_applied.get() >= 2 }
    })
    .await;
    assert_eq!(
        running.health.stats.duplicates.get(),
        1,
        "the bump was seen before"
    );
    assert_eq!(
        get(&mut c, &ver).await.as_deref(),
        Some("8"),
        "bumped once overall"
    );
    assert_eq!(get(&mut c, &key).await, None);
    running.stop().await.expect("clean stop");
    assert_eq!(committed(&b, &group, &topic, 1).await.get(&0), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// The binary stops on SIGTERM with exit 0 and commits the offsets of what it applied.
async fn sigterm_commits_and_exits_zero() {
    let (b, r) = (brokers(), redis_url());
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    create_topics(&b, &topic, 1).await;
    let key = format!("{px}:item");
    let mut c = redis(&r).await;
    let _: () = c.set(&key, "cached").await.unwrap();
    let p = producer(&b);
    produce_event(&p, &topic, &event(Op::Delete, &[&key])).await;
    let child = tokio::process::Command::new(common::bin())
        .args(["consume", "--topic", &topic, "--group", &group])
        .args([
            "-X",
            "fetch.wait.max.ms=5",
            "-X",
            "auto.commit.interval.ms=3600000",
        ])
        .env("KAFKA_BROKERS", &b)
        .env("REDIS_URL", &r)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting invalidator consume");
    eventually(WAIT, "the key is deleted", || {
        let (r, key) = (r.clone(), key.clone());
        async move { get(&mut redis(&r).await, &key).await.is_none() }
    })
    .await;
    let pid = child.id().expect("pid");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("exits within 60s")
        .expect("wait");
    assert!(
        out.status.success(),
        "exit 0; stderr: {}",
        common::text(&out.stderr)
    );
    assert_eq!(committed(&b, &group, &topic, 1).await.get(&0), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// A rebalance commits what the consumer finished: with librdkafka's auto-commit off, a
/// second member joining the group makes the first commit its stored offsets on revoke.
async fn partition_revoke_commits_stored_offsets() {
    let (b, r) = (brokers(), redis_url());
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    create_topics(&b, &topic, 2).await;
    let p = producer(&b);
    for i in 0..10 {
        let key = format!("{px}:{i}");
        produce_event(&p, &topic, &event(Op::Bump, &[&key])).await;
    }
    // librdkafka's auto-commit would commit on revoke by itself; without it only the
    // consumer's own revoke hook can.
    let no_autocommit = |mut s: invalidator::consumer::ConsumerSettings| {
        s.kafka
            .options
            .push(("enable.auto.commit".into(), "false".into()));
        s
    };
    let first = start(no_autocommit(settings(&b, &r, &topic, &group)));
    eventually(WAIT, "the first member applied everything", || {
        let h = first.health.clone();
        async move { h.stats.events_applied.get() >= 10 }
    })
    .await;
    assert!(
        committed(&b, &group, &topic, 2).await.is_empty(),
        "nothing committed yet"
    );
    let second = start(no_autocommit(settings(&b, &r, &topic, &group)));
    eventually(WAIT, "the revoke committed all ten offsets", || {
        let (b, group, topic) = (b.clone(), group.clone(), topic.clone());
        async move { committed(&b, &group, &topic, 2).await.values().sum::<i64>() == 10 }
    })
    .await;
    assert!(
        !first.handle.is_finished(),
        "the first member is still running"
    );
    assert_eq!(
        second.health.stats.events_applied.get(),
        0,
        "nothing redelivered"
    );
    second.stop().await.expect("clean stop");
    first.stop().await.expect("clean stop");
}
