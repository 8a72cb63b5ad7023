//! `invalidator dlq list|replay` against real services: records dead-lettered by the real
//! consumer are listed and filtered, replayed to their source topic (and applied by a
//! consumer whose policy now allows them), an interrupted replay resumes without replaying
//! twice, `--dry-run` changes nothing, and bad input is refused at start-up.

mod common;
mod consumer_support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{eventually, text, unique};
use consumer_support::*;
use invalidator::wire::{headers, Op};
use redis::AsyncCommands;

const WAIT: Duration = Duration::from_secs(60);

/// Runs `invalidator dlq <args>` against the test broker.
async fn dlq(args: &[&str]) -> std::process::Output {
    let mut argv = vec!["dlq"];
    argv.extend_from_slice(args);
    common::run_bin(&argv, &[("KAFKA_BROKERS", &brokers())]).await
}

/// Runs it and insists on exit 0; returns (stdout, stderr).
async fn dlq_ok(args: &[&str]) -> (String, String) {
    let out = dlq(args).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "dlq {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    (stdout, stderr)
}

/// `dlq list --json` parsed, one object per record.
async fn list_json(topic: &str, filters: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["list", "--topic", topic, "--json"];
    args.extend_from_slice(filters);
    let (stdout, _) = dlq_ok(&args).await;
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Runs the real consumer (in-process) with `allow` as its key policy until `want` records
/// are on the DLQ, then stops it.
async fn consume_until_dead_lettered(topic: &str, group: &str, allow: &[String], want: i64) {
    let mut s = settings(&brokers(), &redis_url(), topic, group);
    s.policy.allow_prefixes = allow.to_vec();
    let running = start(s);
    let (b, dlq_topic) = (brokers(), format!("{topic}.dlq"));
    eventually(WAIT, "the poison records dead-lettered", || {
        let (b, t) = (b.clone(), dlq_topic.clone());
        async move { record_count(&b, &t).await >= want }
    })
    .await;
    running.stop().await.expect("clean stop");
    assert_eq!(record_count(&b, &dlq_topic).await, want);
}

/// Records on `topic` that carry `invalidator-replayed-from`, counted by its value.
async fn replayed_from(topic: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in read_all(&brokers(), topic).await {
        if let Some(v) = header(&m, headers::REPLAYED_FROM) {
            *out.entry(v).or_default() += 1;
        }
    }
    out
}

/// The replay group's name, from the line the replay prints at start.
fn group_line(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("replay group: "))
        .unwrap_or_else(|| panic!("no replay group line in: {stderr}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Records dead-lettered by the consumer for each kind of poison are listed with their
/// reason, source, event id and keys (JSON and table), and every filter selects the right ones.
async fn lists_and_filters_dead_lettered_records() {
    let b = brokers();
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    create_topics(&b, &topic, 2).await;
    let p = producer(&b);
    let mut rejected = HashMap::new(); // event id → key
    for i in 0..3 {
        let key = format!("{px}:rejected:{i}");
        let e = event(Op::Delete, &[&key]);
        produce_event(&p, &topic, &e).await;
        rejected.insert(e.event_id.to_string(), key);
    }
    produce(&p, &topic, "garbage", Some(b"not json"), &[]).await;
    produce(&p, &topic, "future", Some(br#"{"v":9,"shape":"new"}"#), &[]).await;
    consume_until_dead_lettered(&topic, &group, &[format!("{px}:allowed:")], 5).await;

    let all = list_json(&topic, &[]).await;
    assert_eq!(all.len(), 5, "{all:?}");
    let reason = |v: &serde_json::Value| v["reason"].as_str().unwrap_or_default().to_string();
    let mut reasons: Vec<String> = all.iter().map(reason).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "decode",
            "rejected-key",
            "rejected-key",
            "rejected-key",
            "unsupported-version"
        ]
    );
    for r in all.iter().filter(|r| reason(r) == "rejected-key") {
        let id = r["event_id"].as_str().expect("event id");
        assert_eq!(r["keys"][0].as_str(), Some(rejected[id].as_str()));
        assert_eq!(r["op"], "delete");
        assert_eq!(r["source_topic"].as_str(), Some(topic.as_str()));
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert_eq!(r["attempts"], 0);
        assert!(r["replayed_from"].is_null());
    }
    let decode = all.iter().find(|r| reason(r) == "decode").unwrap();
    assert!(decode["keys"].is_null() && decode["decode_error"].is_string());

    // The table names every reason and a key.
    let (table, _) = dlq_ok(&["list", "--topic", &topic]).await;
    for want in [
        "FAILED-AT",
        "rejected-key",
        "decode",
        "unsupported-version",
        "5 of 5 record(s)",
    ] {
        assert!(table.contains(want), "{want} in:\n{table}");
    }
    assert!(table.contains(&format!("{px}:rejected:")), "{table}");

    // Filters.
    let n = |v: Vec<serde_json::Value>| v.len();
    assert_eq!(n(list_json(&topic, &["--reason", "rejected-key"]).await), 3);
    assert_eq!(
        n(list_json(
            &topic,
            &["--reason", "decode", "--reason", "unsupported-version"]
        )
        .await),
        2
    );
    let (id, _) = rejected.iter().next().unwrap();
    let one = list_json(&topic, &["--event-id", id]).await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["event_id"].as_str(), Some(id.as_str()));
    let target = &all[2];
    let (sp, so) = (
        target["source_partition"].to_string(),
        target["source_offset"].to_string(),
    );
    let exact = list_json(
        &topic,
        &["--partition", &sp, "--from-offset", &so, "--to-offset", &so],
    )
    .await;
    assert_eq!(exact.len(), 1, "{exact:?}");
    assert_eq!(exact[0]["source"], target["source"]);
    let same_partition = all
        .iter()
        .filter(|r| r["source_partition"] == target["source_partition"])
        .count();
    assert_eq!(
        n(list_json(&topic, &["--partition", &sp]).await),
        same_partition
    );
    assert_eq!(n(list_json(&topic, &["--limit", "2"]).await), 2);
    let mut times: Vec<String> = all
        .iter()
        .map(|r| r["failed_at"].as_str().unwrap().to_string())
        .collect();
    times.sort();
    let middle = &times[2];
    let at_or_after = times.iter().filter(|t| *t >= middle).count();
    assert_eq!(
        n(list_json(&topic, &["--since", middle]).await),
        at_or_after
    );
    assert_eq!(
        n(list_json(&topic, &["--until", middle]).await),
        5 - at_or_after
    );
    let (stdout, stderr) = dlq_ok(&[
        "list",
        "--topic",
        &topic,
        "--since",
        "2999-01-01T00:00:00Z",
        "--json",
    ])
    .await;
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("none of the 5 record(s)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Records dead-lettered by a key policy are replayed after the policy is fixed and then
/// applied in Redis; the DLQ still holds every record; running the replay again replays
/// nothing new.
async fn replay_applies_after_the_policy_is_fixed() {
    let (b, r) = (brokers(), redis_url());
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    create_topics(&b, &topic, 2).await;
    let mut c = redis(&r).await;
    let keys: Vec<String> = (0..3).map(|i| format!("{px}:item:{i}")).collect();
    for k in &keys {
        let _: () = c.set(k, "stale").await.unwrap();
    }
    let ver = format!("{px}:ver");
    let _: () = c.set(&ver, "41").await.unwrap();
    let p = producer(&b);
    for k in &keys {
        produce_event(&p, &topic, &event(Op::Delete, &[k])).await;
    }
    produce_event(&p, &topic, &event(Op::Bump, &[&ver])).await;
    consume_until_dead_lettered(&topic, &group, &[format!("{px}:elsewhere:")], 4).await;
    for k in &keys {
        let v: Option<String> = c.get(k).await.unwrap();
        assert_eq!(v.as_deref(), Some("stale"), "nothing applied yet");
    }

    // The policy is fixed: the same group, every key allowed.
    let running = start(settings(&b, &r, &topic, &group));
    let (_, stderr) = dlq_ok(&["replay", "--topic", &topic, "--group", &group]).await;
    assert!(stderr.contains("replayed 4 record(s)"), "{stderr}");
    let replay_group = group_line(&stderr);
    assert!(
        replay_group.starts_with(&format!("{group}.dlq-replay.")),
        "{replay_group}"
    );
    eventually(WAIT, "the replayed events applied", || {
        let (r, keys, ver) = (r.clone(), keys.clone(), ver.clone());
        async move {
            let mut c = redis(&r).await;
            for k in &keys {
                let v: Option<String> = c.get(k).await.unwrap();
                if v.is_some() {
                    return false;
                }
            }
            let v: Option<String> = c.get(&ver).await.unwrap();
            v.as_deref() == Some("42")
        }
    })
    .await;
    running.stop().await.expect("clean stop");

    let dlq_topic = format!("{topic}.dlq");
    assert_eq!(
        record_count(&b, &dlq_topic).await,
        4,
        "replay never deletes"
    );
    assert_eq!(list_json(&topic, &[]).await.len(), 4);
    let seen = replayed_from(&topic).await;
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.keys().all(|k| k.starts_with(&format!("{dlq_topic}/"))));

    let (_, again) = dlq_ok(&["replay", "--topic", &topic, "--group", &group]).await;
    assert!(again.contains("nothing to replay"), "{again}");
    assert_eq!(group_line(&again), replay_group, "same filters, same group");
    assert_eq!(
        record_count(&b, &topic).await,
        8,
        "4 originals + 4 replayed, no more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// A replay stopped by SIGTERM exits 0 after committing its chunk, and running it again
/// resumes: every dead-letter record ends up replayed exactly once.
async fn interrupted_replay_resumes_without_duplicates() {
    let b = brokers();
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    create_topics(&b, &topic, 1).await;
    let p = producer(&b);
    for i in 0..40 {
        produce_event(&p, &topic, &event(Op::Delete, &[&format!("{px}:x:{i}")])).await;
    }
    consume_until_dead_lettered(&topic, &group, &[format!("{px}:allowed:")], 40).await;

    let args = [
        "dlq", "replay", "--topic", &topic, "--group", &group, "--rate", "10",
    ];
    let child = tokio::process::Command::new(common::bin())
        .args(args)
        .env("KAFKA_BROKERS", &b)
        .env_remove("INVALIDATOR_KAFKA_OPTIONS")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting dlq replay");
    eventually(WAIT, "some records replayed", || {
        let (b, t) = (b.clone(), topic.clone());
        async move { record_count(&b, &t).await >= 45 }
    })
    .await;
    let pid = child.id().expect("pid");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("exits within 60s")
        .expect("wait");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "exit 0 on SIGTERM; stderr: {stderr}");
    assert!(
        stderr.contains("running the same command again resumes"),
        "{stderr}"
    );
    let first = replayed_from(&topic).await.len();
    assert!(
        first < 40,
        "interrupted before the end ({first} replayed): {stderr}"
    );

    let (_, stderr) = dlq_ok(&args[1..]).await;
    assert!(
        stderr.contains(&format!("replayed {} record(s)", 40 - first)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{first} already done before this run")),
        "{stderr}"
    );
    let seen = replayed_from(&topic).await;
    let dlq_topic = format!("{topic}.dlq");
    let want: BTreeMap<String, usize> =
        (0..40).map(|o| (format!("{dlq_topic}/0/{o}"), 1)).collect();
    assert_eq!(seen, want, "each dead-letter record replayed exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// --dry-run prints what would be replayed and neither publishes nor commits: a real replay
/// afterwards still replays everything.
async fn dry_run_publishes_and_commits_nothing() {
    let b = brokers();
    let (topic, group, px) = (unique("t"), unique("g"), unique("k"));
    create_topics(&b, &topic, 1).await;
    let p = producer(&b);
    for i in 0..3 {
        produce_event(&p, &topic, &event(Op::Delete, &[&format!("{px}:x:{i}")])).await;
    }
    consume_until_dead_lettered(&topic, &group, &[format!("{px}:allowed:")], 3).await;

    let (stdout, stderr) = dlq_ok(&[
        "replay",
        "--topic",
        &topic,
        "--group",
        &group,
        "--dry-run",
        "--json",
    ])
    .await;
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(
        stderr.contains("nothing was published or committed"),
        "{stderr}"
    );
    let replay_group = group_line(&stderr);
    assert_eq!(record_count(&b, &topic).await, 3, "nothing published");
    assert!(
        committed(&b, &replay_group, &format!("{topic}.dlq"), 1)
            .await
            .is_empty(),
        "nothing committed"
    );
    let (table, _) = dlq_ok(&["replay", "--topic", &topic, "--group", &group, "--dry-run"]).await;
    assert!(table.contains("rejected-key"), "{table}");

    let (_, stderr) = dlq_ok(&["replay", "--topic", &topic, "--group", &group]).await;
    assert!(stderr.contains("replayed 3 record(s)"), "{stderr}");
    assert_eq!(replayed_from(&topic).await.len(), 3);
    assert_eq!(
        committed(&b, &replay_group, &format!("{topic}.dlq"), 1)
            .await
            .get(&0),
        Some(&3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// A dead-letter record without a usable source header is re-published to --topic, and the
/// replay says so; a filtered replay passes over other records and has a group of its own.
async fn replay_falls_back_to_topic_and_filters_have_their_own_group() {
    let b = brokers();
    let (topic, group) = (unique("t"), unique("g"));
    create_topics(&b, &topic, 1).await;
    let dlq_topic = format!("{topic}.dlq");
    let p = producer(&b);
    produce(
        &p,
        &dlq_topic,
        "k1",
        Some(b"one"),
        &[(headers::DLQ_REASON, "decode")],
    )
    .await;
    produce(
        &p,
        &dlq_topic,
        "k2",
        Some(b"two"),
        &[
            (headers::DLQ_REASON, "rejected-key"),
            (headers::DLQ_SOURCE, "garbage"),
        ],
    )
    .await;

    let (_, stderr) = dlq_ok(&[
        "replay", "--topic", &topic, "--group", &group, "--reason", "decode",
    ])
    .await;
    assert!(stderr.contains("replayed 1 record(s)"), "{stderr}");
    assert!(stderr.contains("skipped 1 not matching"), "{stderr}");
    assert!(
        stderr.contains(&format!("re-publishing it to --topic {topic}")),
        "{stderr}"
    );
    let filtered_group = group_line(&stderr);

    let (_, stderr) = dlq_ok(&["replay", "--topic", &topic, "--group", &group]).await;
    assert_ne!(group_line(&stderr), filtered_group);
    assert!(
        stderr.contains("replayed 2 record(s)"),
        "starts from the beginning: {stderr}"
    );
    let replayed = read_all(&b, &topic).await;
    assert_eq!(replayed.len(), 3);
    for m in &replayed {
        assert!(
            header(m, headers::DLQ_REASON).is_none(),
            "DLQ headers dropped"
        );
        assert!(header(m, headers::REPLAYED_FROM).is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Bad input fails at start-up with a clear message; an empty DLQ is not an error.
async fn bad_input_is_refused_and_empty_is_fine() {
    let out = dlq(&["list", "--reason", "nonsense"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "decode, unsupported-version, rejected-key, redis-permanent, retries-exhausted"
        ),
        "{stderr}"
    );

    let out = dlq(&["replay", "--from-offset", "10", "--to-offset", "5"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--from-offset 10 is after --to-offset 5"),
        "{stderr}"
    );

    let missing = unique("missing");
    for cmd in ["list", "replay"] {
        let out = dlq(&[cmd, "--topic", &missing]).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("\"{missing}.dlq\" does not exist")),
            "{stderr}"
        );
        assert!(
            stderr.contains("check --topic") && !stderr.contains("start with --create-topics"),
            "a read-only command must not suggest a flag it does not have: {stderr}"
        );
    }

    let topic = unique("t");
    create_topics(&brokers(), &topic, 1).await;
    let (stdout, _) = dlq_ok(&["list", "--topic", &topic]).await;
    assert!(stdout.contains("is empty"), "{stdout}");
    let (_, stderr) = dlq_ok(&["replay", "--topic", &topic, "--group", &unique("g")]).await;
    assert!(
        stderr.contains("nothing to replay: the dead-letter topic"),
        "{stderr}"
    );
}
