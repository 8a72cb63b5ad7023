//! Shared test helpers: find the real services through `DATABASE_URL`, `REDIS_URL` and
//! `KAFKA_BROKERS` (loopback defaults), and give each test resources of its own.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::{Duration, Instant};

#[path = "../../src/bin/invalidator-bench/http.rs"]
mod http;
pub mod kafka;
#[allow(unused_imports)] // each test binary uses a different subset
pub use http::http_get;
pub mod postgres;
pub mod tansu;

use invalidator::redact::Redacted;
use rand::distr::{Alphanumeric, SampleString};

/// The server's connection string for administration (creating test databases).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A connection to a Redis the tests share, waiting up to 10 s for a reply and 5 s to
/// connect: redis-rs's defaults (0.5 s and 1 s) failed a run here when the loaded machine
/// stalled one reply, and a panic inside `eventually` ends the test instead of retrying.
pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// A short random lowercase suffix for names a test owns.
pub fn unique(prefix: &str) -> String {
    let s = Alphanumeric
        .sample_string(&mut rand::rng(), 10)
        .to_lowercase();
    format!("{prefix}_{s}")
}

/// A database of the test's own, created from `admin_url()` and dropped (with FORCE) when
/// the value is dropped, even when the test panics.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        TestDb::new_with("").await
    }

    /// A database created with `options` after `CREATE DATABASE name`, e.g. an encoding.
    pub async fn new_with(options: &str) -> TestDb {
        let name = unique("inv_t");
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} {options}"))
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        let url = with_database(&admin_url(), &name);
        TestDb { name, url }
    }

    pub fn redacted(&self) -> Redacted {
        Redacted::new(self.url.clone())
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime; a fresh thread with its own runtime can block.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok((c, conn)) =
                    tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Replaces the database name of a `postgres://…/db` URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{base}/{db}{query}")
}

/// Replaces the user of a `postgres://user@…` URL.
pub fn with_user(url: &str, user: &str) -> String {
    let scheme_end = url.find("://").expect("a URL") + 3;
    let rest = &url[scheme_end..];
    let host = match rest.find('@') {
        Some(at) if at < rest.find('/').unwrap_or(rest.len()) => &rest[at + 1..],
        _ => rest,
    };
    format!("{}{user}@{host}", &url[..scheme_end])
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", invalidator::redact::redact(url)));
    tokio::spawn(conn);
    client
}

/// Polls `check` until it returns true or `timeout` passes; panics with `what` then.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `invalidator` binary built for this test run.
pub fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_invalidator"))
}

/// Runs the binary with `args` and `env`, with no inherited service variables.
pub async fn run_bin(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("KAFKA_BROKERS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("running the invalidator binary")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A database of the test's own with the migrations applied.
pub async fn migrated_db() -> TestDb {
    let db = TestDb::new().await;
    let mut c = db.client().await;
    invalidator::migrate::run(&mut c, &invalidator::migrate::Options::default())
        .await
        .expect("migrate");
    db
}

/// A TCP port free right now on loopback, below the kernel's ephemeral range: tests restart
/// servers on the same port, and a port from that range (what binding port 0 gives) can be
/// taken meanwhile by any outgoing connection, or a client reconnecting to it can connect to
/// itself.
pub fn free_port() -> u16 {
    free_port_below(ephemeral_start())
}

/// A free port in `10000..below` (10000 and up keeps clear of the real services' ports).
pub fn free_port_below(below: u16) -> u16 {
    assert!(below > 10_100, "no room below {below} for a test port");
    loop {
        let port = 10_000 + rand::random::<u16>() % (below - 10_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The first port of `net.ipv4.ip_local_port_range` (Linux's default is 32768).
pub fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Parses the Prometheus text format into `series → value`, where a series is the metric
/// name with its labels as written (`a_total`, `b_bucket{le="0.5"}`). Panics on a sample line
/// that does not parse: a scrape that Prometheus could not read is a failure.
pub fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    let body = text.split_once("\r\n\r\n").map_or(text, |(_, b)| b);
    let mut out = std::collections::HashMap::new();
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("metric line without a value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("metric value is not a number: {line:?}"));
        out.insert(series.to_string(), value);
    }
    out
}
