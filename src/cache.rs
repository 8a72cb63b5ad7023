//! Every Redis command and Lua script invalidator runs (DESIGN §3): connecting to standalone
//! Redis or Redis Cluster, applying a batch of invalidations as pipelined scripts, naming the
//! guard and dedupe-marker keys so each script stays in one cluster slot, classifying Redis
//! errors, and the reader-side guarded fill.
//!
//! Counters (guards, version keys) are strings in Redis and never pass through a Lua number,
//! which is a double. A missing counter restarts from a random base passed in as an argument,
//! never from 1, so an old versioned entry cannot come back to life.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};
use uuid::Uuid;

use crate::redact::Redacted;
use crate::wire::Op;

/// Prefix of every key invalidator writes; applications must not use it.
pub const RESERVED_PREFIX: &str = "invalidator:";
const GUARD_PREFIX: &str = "invalidator:guard:";
const SEEN_PREFIX: &str = "invalidator:seen:";

/// `delete`: UNLINK the key, then bump its fill guard (or start it from a random base).
/// KEYS: key, guard. ARGV: guard TTL in ms, random base for a missing guard.
pub const DELETE_SCRIPT: &str = r#"
redis.call('UNLINK', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('INCR', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[2])
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"#;

/// `bump`: INCR the version key once per event. The marker is written only after the INCR
/// succeeded, so a failed attempt leaves nothing that counts as applied.
/// KEYS: version key, marker. ARGV: marker TTL in s, random base for a missing counter.
/// Returns 1 when applied, 0 when this event was applied before.
pub const BUMP_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCR', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1])
return 1
"#;

/// Reader-side guarded fill (DESIGN §3): store the value only if the guard still holds what
/// the reader saw before it read the database.
/// KEYS: key, guard. ARGV: "1" if the reader saw a guard else "0", the guard seen, value,
/// TTL in ms. Returns 1 when stored, 0 when a delete landed in between (fill refused).
pub const FILL_SCRIPT: &str = r#"
local g = redis.call('GET', KEYS[2])
if ARGV[1] == '0' then
  if g then return 0 end
elseif g ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
"#;

/// Where Redis is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS) URL; user and password (ACL) go in it. For a cluster,
    /// one or more seed nodes separated by commas.
    pub url: Redacted,
    /// Talk the Redis Cluster protocol (slot routing, MOVED/ASK).
    pub cluster: bool,
    /// How long one pipeline may wait for its replies before it counts as a timeout.
    pub response_timeout: Duration,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: Redacted::new("redis://127.0.0.1:6379"),
            cluster: false,
            // A 1000-key pipeline on a busy server takes longer than redis-rs's 500 ms default.
            response_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// TTLs the apply scripts set.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// How long a fill guard outlives its last delete. Must exceed the longest time a reader
    /// spends between reading the guard and filling.
    pub guard_ttl: Duration,
    /// How long a bump's dedupe marker lives: the window in which a redelivery is a no-op.
    pub dedupe_ttl: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            guard_ttl: Duration::from_secs(600),
            dedupe_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// How a Redis failure is handled (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Redis is unavailable (refused, reset, timeout, LOADING, TRYAGAIN, CLUSTERDOWN, …):
    /// retry forever, the message is fine.
    Transient,
    /// The message can never apply (WRONGTYPE, NOPERM, CROSSSLOT): dead-letter at once.
    Permanent,
    /// Anything else: retry a bounded number of times, then dead-letter.
    Unknown,
}

/// A Redis failure for one event, or for a whole batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub class: FailureClass,
    /// The Redis error text (never contains the URL).
    pub message: String,
}

impl Failure {
    pub fn is_transient(&self) -> bool {
        self.class == FailureClass::Transient
    }

    fn from_redis(e: &RedisError) -> Failure {
        Failure {
            class: classify(e),
            message: e.to_string(),
        }
    }

    fn from_reply(code: &str, detail: Option<&str>) -> Failure {
        Failure {
            class: classify_code(code, detail.unwrap_or("")),
            message: match detail {
                Some(d) => format!("{code} {d}"),
                None => code.to_string(),
            },
        }
    }
}

/// Sorts a client-side or server error into the classes of DESIGN §3.
pub fn classify(e: &RedisError) -> FailureClass {
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
    {
        return FailureClass::Transient;
    }
    match e.kind() {
        ErrorKind::Io
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::AuthenticationFailed
        | ErrorKind::Server(ServerErrorKind::BusyLoading)
        | ErrorKind::Server(ServerErrorKind::TryAgain)
        | ErrorKind::Server(ServerErrorKind::ClusterDown)
        | ErrorKind::Server(ServerErrorKind::MasterDown)
        | ErrorKind::Server(ServerErrorKind::ReadOnly)
        | ErrorKind::Server(ServerErrorKind::Moved)
        | ErrorKind::Server(ServerErrorKind::Ask) => FailureClass::Transient,
        ErrorKind::Server(ServerErrorKind::NoPerm)
        | ErrorKind::Server(ServerErrorKind::CrossSlot) => FailureClass::Permanent,
        _ => classify_code(e.code().unwrap_or(""), e.detail().unwrap_or("")),
    }
}

/// Classifies an error reply by its code, and by the detail text for errors raised inside a
/// script (older servers wrap them as `ERR Error running script … WRONGTYPE …`).
fn classify_code(code: &str, detail: &str) -> FailureClass {
    const TRANSIENT: &[&str] = &[
        "LOADING",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MASTERDOWN",
        "BUSY",
        "READONLY",
        "MOVED",
        "ASK",
        // Out of memory with maxmemory-policy noeviction: the operator must act, the
        // message is fine; dead-lettering invalidations would leave stale entries.
        "OOM",
        "NOAUTH",
        "WRONGPASS",
        "NOREPLICAS",
    ];
    const PERMANENT: &[&str] = &["WRONGTYPE", "NOPERM", "CROSSSLOT"];
    let code = code.to_ascii_uppercase();
    if TRANSIENT.contains(&code.as_str()) {
        return FailureClass::Transient;
    }
    if PERMANENT.contains(&code.as_str()) {
        return FailureClass::Permanent;
    }
    for p in PERMANENT {
        if detail.contains(p) {
            return FailureClass::Permanent;
        }
    }
    for t in ["LOADING", "OOM command not allowed", "-BUSY"] {
        if detail.contains(t) {
            return FailureClass::Transient;
        }
    }
    FailureClass::Unknown
}

/// Redis's hash tag of a key: the content of the FIRST `{…}`, if that content is non-empty.
/// Exactly the rule of the Redis Cluster specification.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let rest = &key[open + 1..];
    let close = rest.find('}')?;
    if close == 0 {
        None
    } else {
        Some(&rest[..close])
    }
}

/// Why no guard or marker key in the key's own slot can be named for a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "key {0:?} contains '}}' but no hash tag, so no guard key in its cluster slot can be named; \
     give it a hash tag or avoid '}}'"
)]
pub struct UnslottableKey(pub String);

/// Whether companion keys in the key's slot can be named by wrapping the key in braces:
/// true when the key has its own hash tag, or has no `}` at all.
pub fn check_slottable(key: &str) -> Result<(), UnslottableKey> {
    if hash_tag(key).is_some() || !key.contains('}') {
        Ok(())
    } else {
        Err(UnslottableKey(key.to_string()))
    }
}

/// `prefix{key}`, or `prefix key` when the key already carries a hash tag (it keeps it).
fn companion(prefix: &str, key: &str) -> String {
    if hash_tag(key).is_some() {
        format!("{prefix}{key}")
    } else {
        format!("{prefix}{{{key}}}")
    }
}

/// The fill guard of `key`: `invalidator:guard:{product:42}`, or
/// `invalidator:guard:{t1}:user:7` for a key that has a hash tag.
pub fn guard_key(key: &str) -> String {
    companion(GUARD_PREFIX, key)
}

/// The bump dedupe marker of `key` for one event: `invalidator:seen:{key}:<event_id>`.
pub fn seen_key(key: &str, event_id: Uuid) -> String {
    format!("{}:{event_id}", companion(SEEN_PREFIX, key))
}

/// The Redis Cluster slot of a key (CRC16/XMODEM of its hash tag or of the whole key).
pub fn slot(key: &str) -> u16 {
    let bytes = hash_tag(key).unwrap_or(key).as_bytes();
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// A fresh random start for a missing counter, as a string (never through a Lua number).
fn random_base() -> String {
    // Up to 2^32: far from 1 and from i64 overflow, and a collision with a value a reader
    // saw before the counter vanished is a 1 in 4 billion chance.
    (u64::from(rand::random::<u32>()) + 1_000_000).to_string()
}

/// One event to apply: its op, id and keys (already checked by the key policy).
#[derive(Debug, Clone, Copy)]
pub struct Invalidation<'a> {
    pub op: Op,
    pub event_id: Uuid,
    pub keys: &'a [String],
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Keys deleted or bumped.
    pub keys: usize,
    /// Bump keys skipped because this event had been applied before (redelivery).
    pub duplicates: usize,
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A Redis connection with the invalidation scripts. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    conn: Conn,
    url: Redacted,
    options: ApplyOptions,
    delete: Script,
    bump: Script,
    fill: Script,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("url", &self.url).finish()
    }
}

/// Why the first connection to Redis failed.
#[derive(Debug, thiserror::Error)]
#[error("connecting to Redis at {url} failed")]
pub struct ConnectError {
    pub url: Redacted,
    #[source]
    pub source: RedisError,
}

impl ConnectError {
    /// Whether retrying later may succeed (server down) rather than a bad URL or password.
    pub fn is_transient(&self) -> bool {
        classify(&self.source) == FailureClass::Transient
            && self.source.kind() != ErrorKind::AuthenticationFailed
    }
}

impl Cache {
    /// Connects and loads the scripts. The connection reconnects by itself afterwards; a
    /// command that hits a disconnect fails (transient) and the caller retries it.
    pub async fn connect(
        settings: &RedisSettings,
        options: ApplyOptions,
    ) -> Result<Cache, ConnectError> {
        let err = |source| ConnectError {
            url: settings.url.clone(),
            source,
        };
        let conn = if settings.cluster {
            let nodes: Vec<&str> = settings.url.expose().split(',').map(str::trim).collect();
            let client = ClusterClientBuilder::new(nodes)
                .connection_timeout(settings.connect_timeout)
                .response_timeout(settings.response_timeout)
                // Our own retry loop owns backoff; the cluster client only follows redirects.
                .retries(2)
                .build()
                .map_err(err)?;
            Conn::Cluster(client.get_async_connection().await.map_err(err)?)
        } else {
            let client = redis::Client::open(settings.url.expose()).map_err(err)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(Some(settings.response_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Conn::Standalone(
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(err)?,
            )
        };
        let mut cache = Cache {
            conn,
            url: settings.url.clone(),
            options,
            delete: Script::new(DELETE_SCRIPT),
            bump: Script::new(BUMP_SCRIPT),
            fill: Script::new(FILL_SCRIPT),
        };
        cache.load_scripts().await.map_err(err)?;
        Ok(cache)
    }

    /// The URL, with its password hidden.
    pub fn url(&self) -> &Redacted {
        &self.url
    }

    /// SCRIPT LOAD on the server (every primary on a cluster), so EVALSHA finds them.
    pub async fn load_scripts(&mut self) -> Result<(), RedisError> {
        for code in [DELETE_SCRIPT, BUMP_SCRIPT, FILL_SCRIPT] {
            let mut cmd = redis::cmd("SCRIPT");
            cmd.arg("LOAD").arg(code);
            let _: Value = self.query(&cmd).await?;
        }
        Ok(())
    }

    async fn query(&mut self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        match &mut self.conn {
            Conn::Standalone(c) => c.req_packed_command(cmd).await,
            Conn::Cluster(c) => c.req_packed_command(cmd).await,
        }
    }

    /// PING, for readiness probes and start-up checks.
    pub async fn ping(&mut self) -> Result<(), Failure> {
        self.query(&redis::cmd("PING"))
            .await
            .map(|_| ())
            .map_err(|e| Failure::from_redis(&e))
    }

    /// Applies a batch: one pipeline of script calls (one per slot on a cluster, all sent at
    /// once). Returns one outcome per event, in order. Re-applying an event is harmless.
    pub async fn apply(&mut self, events: &[Invalidation<'_>]) -> Vec<Result<Applied, Failure>> {
        // (event index, command) for every key of every event.
        let mut commands: Vec<(usize, redis::Cmd, u16)> = Vec::new();
        let guard_ms = self.options.guard_ttl.as_millis().max(1).to_string();
        let dedupe_s = self.options.dedupe_ttl.as_secs().max(1).to_string();
        for (i, ev) in events.iter().enumerate() {
            for key in ev.keys {
                let cmd = match ev.op {
                    Op::Delete => evalsha(
                        &self.delete,
                        &[key, &guard_key(key)],
                        &[guard_ms.as_bytes(), random_base().as_bytes()],
                    ),
                    Op::Bump => evalsha(
                        &self.bump,
                        &[key, &seen_key(key, ev.event_id)],
                        &[dedupe_s.as_bytes(), random_base().as_bytes()],
                    ),
                };
                commands.push((i, cmd, slot(key)));
            }
        }
        let mut replies = self.run_commands(&commands).await;
        // A server restarted (or a failover) forgets loaded scripts: load them, run the
        // NOSCRIPT commands again, once.
        let noscript: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(f) if f.message.starts_with("NOSCRIPT")))
            .map(|(i, _)| i)
            .collect();
        if !noscript.is_empty() {
            if let Err(e) = self.load_scripts().await {
                let f = Failure::from_redis(&e);
                for i in &noscript {
                    replies[*i] = Err(f.clone());
                }
            } else {
                let again: Vec<(usize, redis::Cmd, u16)> =
                    noscript.iter().map(|i| commands[*i].clone()).collect();
                for (i, r) in noscript.iter().zip(self.run_commands(&again).await) {
                    replies[*i] = r;
                }
            }
        }
        let mut out: Vec<Result<Applied, Failure>> = vec![Ok(Applied::default()); events.len()];
        for ((ev, _, _), reply) in commands.iter().zip(replies) {
            let slot = &mut out[*ev];
            match (reply, slot.as_mut()) {
                (Ok(applied), Ok(a)) => {
                    a.keys += 1;
                    if !applied {
                        a.duplicates += 1;
                    }
                }
                (Err(f), Ok(_)) => *slot = Err(f),
                // Keep the most severe failure of the event: transient over unknown over
                // permanent, so a Redis outage never dead-letters a message.
                (Err(f), Err(prev)) => {
                    if rank(f.class) > rank(prev.class) {
                        *prev = f;
                    }
                }
                (Ok(_), Err(_)) => {}
            }
        }
        out
    }

    /// Runs script commands pipelined; returns, per command, whether it applied (1) or was a
    /// duplicate (0), or its failure.
    async fn run_commands(
        &mut self,
        commands: &[(usize, redis::Cmd, u16)],
    ) -> Vec<Result<bool, Failure>> {
        if commands.is_empty() {
            return Vec::new();
        }
        match &mut self.conn {
            Conn::Standalone(c) => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for (_, cmd, _) in commands {
                    pipe.add_command(cmd.clone());
                }
                let replies = pipe.query_async::<Vec<Value>>(c).await;
                to_outcomes(replies, commands.len())
            }
            Conn::Cluster(c) => {
                // One pipeline per slot (the cluster client refuses cross-slot pipelines),
                // all in flight at once: the multiplexed connection to each node writes
                // them back to back, so each node sees one stream of commands.
                let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
                for (i, (_, _, slot)) in commands.iter().enumerate() {
                    by_slot.entry(*slot).or_default().push(i);
                }
                let futures = by_slot.values().map(|idx| {
                    let mut conn = c.clone();
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    for i in idx {
                        pipe.add_command(commands[*i].1.clone());
                    }
                    async move {
                        let replies = pipe.query_async::<Vec<Value>>(&mut conn).await;
                        to_outcomes(replies, idx.len())
                    }
                });
                let results = futures::future::join_all(futures).await;
                let mut out: Vec<Result<bool, Failure>> = vec![Ok(false); commands.len()];
                for (idx, res) in by_slot.values().zip(results) {
                    for (i, r) in idx.iter().zip(res) {
                        out[*i] = r;
                    }
                }
                out
            }
        }
    }

    /// Step 1 of the guarded fill: read the guard of `key` BEFORE reading the database.
    pub async fn get_guard(&mut self, key: &str) -> Result<Guard, RedisError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(guard_key(key));
        match self.query(&cmd).await? {
            Value::Nil => Ok(Guard(None)),
            v => Ok(Guard(Some(redis::from_redis_value::<String>(v)?))),
        }
    }

    /// Step 3 of the guarded fill: store `value` under `key` for `ttl` only if no delete
    /// landed since [`Cache::get_guard`]. Returns whether the value was stored.
    pub async fn fill_if_guard_unchanged(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        seen: &Guard,
    ) -> Result<bool, RedisError> {
        let ttl_ms = ttl.as_millis().max(1).to_string();
        let cmd = evalsha(
            &self.fill,
            &[key, &guard_key(key)],
            &[
                if seen.0.is_some() { b"1" } else { b"0" },
                seen.0.as_deref().unwrap_or("").as_bytes(),
                value,
                ttl_ms.as_bytes(),
            ],
        );
        let reply = match self.query(&cmd).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                self.query(&cmd).await?
            }
            r => r?,
        };
        Ok(redis::from_redis_value::<i64>(reply)? == 1)
    }
}

/// The guard value a reader saw before reading the database (`None`: no guard yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard(pub Option<String>);

fn rank(c: FailureClass) -> u8 {
    match c {
        FailureClass::Permanent => 0,
        FailureClass::Unknown => 1,
        FailureClass::Transient => 2,
    }
}

fn to_outcomes(replies: Result<Vec<Value>, RedisError>, n: usize) -> Vec<Result<bool, Failure>> {
    match replies {
        Err(e) => vec![Err(Failure::from_redis(&e)); n],
        Ok(values) if values.len() != n => vec![
            Err(Failure {
                class: FailureClass::Unknown,
                message: format!(
                    "expected {n} replies from the pipeline, got {}",
                    values.len()
                ),
            });
            n
        ],
        Ok(values) => values
            .into_iter()
            .map(|v| match v {
                Value::Int(n) => Ok(n == 1),
                Value::ServerError(e) => Err(Failure::from_reply(e.code(), e.details())),
                other => Err(Failure {
                    class: FailureClass::Unknown,
                    message: format!("unexpected script reply {other:?}"),
                }),
            })
            .collect(),
    }
}

/// `EVALSHA sha numkeys keys… args…`. `ScriptInvocation` only offers `invoke`; building the
/// command ourselves lets a whole batch share one pipeline.
fn evalsha(script: &Script, keys: &[&str], args: &[&[u8]]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// Hash tags follow Redis: the first `{…}` with non-empty content.
    fn hash_tags_follow_redis() {
        assert_eq!(hash_tag("{t1}:user:7"), Some("t1"));
        assert_eq!(hash_tag("user:{t1}:x{t2}"), Some("t1"));
        assert_eq!(hash_tag("product:42"), None);
        assert_eq!(hash_tag("{}{t1}"), None);
        assert_eq!(hash_tag("a{b"), None);
        assert_eq!(hash_tag("a{b}}c"), Some("b"));
    }

    #[test]
    /// Guard and marker names are exactly those of DESIGN §3.
    fn companion_names_match_design() {
        let id = Uuid::parse_str("6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f").unwrap();
        assert_eq!(guard_key("product:42"), "invalidator:guard:{product:42}");
        assert_eq!(guard_key("{t1}:user:7"), "invalidator:guard:{t1}:user:7");
        assert_eq!(
            seen_key("{t1}:user:7", id),
            "invalidator:seen:{t1}:user:7:6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f"
        );
        assert_eq!(
            seen_key("catalog:version", id),
            "invalidator:seen:{catalog:version}:6f1c2a9e-2f4b-4c1e-9a51-1d2b3c4d5e6f"
        );
    }

    #[test]
    /// Every companion key lands in its key's slot, for every key check_slottable accepts.
    fn companions_share_the_slot() {
        let id = Uuid::new_v4();
        for key in ["product:42", "{t1}:user:7", "a{b", "{a}}", "é:ü", "a{b}}c"] {
            assert!(check_slottable(key).is_ok(), "{key}");
            assert_eq!(slot(&guard_key(key)), slot(key), "guard of {key}");
            assert_eq!(slot(&seen_key(key, id)), slot(key), "marker of {key}");
        }
        for key in ["a}b", "{}x}", "x{}{y}z"] {
            assert!(check_slottable(key).is_err(), "{key}");
        }
    }

    #[test]
    /// The slot function matches Redis (CLUSTER KEYSLOT values).
    fn slots_match_redis() {
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
    }

    #[test]
    /// Error replies sort into the classes of DESIGN §3.
    fn reply_classes() {
        assert_eq!(
            classify_code("WRONGTYPE", "Operation against a key"),
            FailureClass::Permanent
        );
        assert_eq!(
            classify_code("NOPERM", "no permissions"),
            FailureClass::Permanent
        );
        assert_eq!(classify_code("LOADING", ""), FailureClass::Transient);
        assert_eq!(classify_code("CLUSTERDOWN", ""), FailureClass::Transient);
        assert_eq!(
            classify_code("BUSY", "script running"),
            FailureClass::Transient
        );
        assert_eq!(
            classify_code("ERR", "Error running script: @user_script:3: WRONGTYPE x"),
            FailureClass::Permanent
        );
        assert_eq!(
            classify_code("ERR", "value is not an integer"),
            FailureClass::Unknown
        );
    }
}
