//! The reader-side guarded fill of DESIGN §3, against real Redis: the stale-set race is
//! reproduced step by step, deterministically, with and without the guard.

mod common;

use std::time::Duration;

use common::unique;
use invalidator::cache::{ApplyOptions, Cache, Invalidation, RedisSettings};
use invalidator::redact::Redacted;
use invalidator::wire::Op;
use redis::AsyncCommands;
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn cache() -> Cache {
    let settings = RedisSettings {
        url: Redacted::new(redis_url()),
        ..RedisSettings::default()
    };
    Cache::connect(&settings, ApplyOptions::default())
        .await
        .expect("connecting to Redis")
}

/// What the consumer does for a `delete` event of `key`.
async fn consumer_deletes(cache: &mut Cache, key: &str) {
    let keys = [key.to_string()];
    let out = cache
        .apply(&[Invalidation {
            op: Op::Delete,
            event_id: Uuid::new_v4(),
            keys: &keys,
        }])
        .await;
    assert!(out[0].is_ok(), "{out:?}");
}

#[tokio::test]
/// Reader reads the guard, the delete lands, the reader fills its stale value: refused.
async fn guarded_fill_refuses_stale_value() {
    let mut reader = cache().await;
    let mut writer = cache().await;
    for key in [unique("product"), format!("{{{}}}:user:7", unique("t"))] {
        // 1. miss; read the guard BEFORE the database.
        let guard = reader.get_guard(&key).await.unwrap();
        // 2. the reader reads the old row ("price=9"); meanwhile the writer commits and the
        //    consumer applies the delete.
        consumer_deletes(&mut writer, &key).await;
        // 3. the reader fills with what it read: refused.
        let stored = reader
            .fill_if_guard_unchanged(&key, b"price=9", Duration::from_secs(60), &guard)
            .await
            .unwrap();
        assert!(!stored, "the stale fill must be refused for {key}");
        let mut c = common::redis_conn(&redis_url()).await;
        let v: Option<String> = c.get(&key).await.unwrap();
        assert_eq!(v, None, "{key} must stay empty");
    }
}

#[tokio::test]
/// With no delete in between, the guarded fill stores the value (with and without a guard).
async fn guarded_fill_stores_when_nothing_changed() {
    let mut reader = cache().await;
    let key = unique("product");
    let g = reader.get_guard(&key).await.unwrap();
    assert_eq!(g.0, None, "no guard before any delete");
    assert!(reader
        .fill_if_guard_unchanged(&key, b"v1", Duration::from_secs(60), &g)
        .await
        .unwrap());
    // After a delete there is a guard; a fill that read it afterwards succeeds.
    consumer_deletes(&mut reader, &key).await;
    let g = reader.get_guard(&key).await.unwrap();
    assert!(g.0.is_some());
    assert!(reader
        .fill_if_guard_unchanged(&key, b"v2", Duration::from_secs(60), &g)
        .await
        .unwrap());
    let mut c = common::redis_conn(&redis_url()).await;
    let v: Option<String> = c.get(&key).await.unwrap();
    assert_eq!(v.as_deref(), Some("v2"));
    let ttl: i64 = c.pttl(&key).await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "the fill sets the TTL");
}

#[tokio::test]
/// The same interleaving with plain GET/SET stores the stale value: the race is real.
async fn plain_get_set_stores_stale_value() {
    let mut writer = cache().await;
    let mut c = common::redis_conn(&redis_url()).await;
    let key = unique("product");
    let miss: Option<String> = c.get(&key).await.unwrap();
    assert_eq!(miss, None);
    consumer_deletes(&mut writer, &key).await;
    let _: () = c.set_ex(&key, "price=9", 60).await.unwrap();
    let v: Option<String> = c.get(&key).await.unwrap();
    assert_eq!(
        v.as_deref(),
        Some("price=9"),
        "plain cache-aside keeps the stale value"
    );
}
