//! What every scenario shares: the services, a scratch database, the daemons as real
//! processes (so their memory can be read), percentiles and the report tables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub use crate::http::http_get;
use tokio::process::{Child, Command};

/// Where the services are, from the same variables the daemons read.
#[derive(Clone, Debug)]
pub struct Env {
    /// Administrative connection string: scratch databases are created through it.
    pub admin_url: String,
    pub redis_url: String,
    pub brokers: String,
    /// Extra `-X KEY=VALUE` for the consumer process (`--consumer-option`).
    pub consumer_options: Vec<String>,
    /// Extra arguments for the relay process of (b) (`--relay-arg`).
    pub relay_args: Vec<String>,
}

impl Env {
    pub fn from_env() -> Env {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        Env {
            admin_url: var("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
            redis_url: var("REDIS_URL", "redis://127.0.0.1:6379"),
            // The memory engine: latency and throughput runs never resume a consumer group.
            brokers: var("KAFKA_BROKERS", "127.0.0.1:9093"),
            consumer_options: Vec::new(),
            relay_args: Vec::new(),
        }
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to PostgreSQL: {e}"));
    tokio::spawn(conn);
    c
}

/// A migrated database of the run's own, dropped when the value is dropped.
pub struct ScratchDb {
    pub url: String,
    name: String,
    admin: String,
}

impl ScratchDb {
    pub async fn new(env: &Env, tag: &str) -> ScratchDb {
        let name = format!("inv_bench_{tag}_{}", std::process::id());
        let admin = connect(&env.admin_url).await;
        // Two statements: neither may run inside the implicit transaction of a batch.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .expect("dropping a leftover scratch database");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("creating the scratch database");
        let base = env
            .admin_url
            .split('?')
            .next()
            .and_then(|u| u.rsplit_once('/'))
            .map(|(b, _)| b.to_string())
            .expect("DATABASE_URL is a URL with a database name");
        let url = format!("{base}/{name}");
        let mut c = connect(&url).await;
        invalidator::migrate::run(&mut c, &Default::default())
            .await
            .expect("migrating the scratch database");
        c.batch_execute(
            "CREATE TABLE bench_items (id int PRIMARY KEY, v bigint NOT NULL DEFAULT 0);
             INSERT INTO bench_items (id) SELECT generate_series(1, 10000);",
        )
        .await
        .expect("creating bench_items");
        ScratchDb {
            url,
            name,
            admin: env.admin_url.clone(),
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let (name, admin) = (self.name.clone(), self.admin.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let c = connect(&admin).await;
                let _ = c
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

/// The `invalidator` binary next to this one (same profile).
pub fn invalidator_bin() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    let bin = me.with_file_name("invalidator");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --release --bins)",
        bin.display()
    );
    bin
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A daemon (`invalidator relay|consume …`) running as a child process with /metrics.
pub struct Daemon {
    child: Child,
    pub metrics: SocketAddr,
    what: &'static str,
}

impl Daemon {
    /// Starts it and waits until /readyz answers 200.
    pub async fn start(what: &'static str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_logging(what, args, env, None).await
    }

    /// [`Daemon::start`], with its stderr (the log) written to `log` when given.
    pub async fn start_logging(
        what: &'static str,
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Daemon {
        Daemon::start_wrapped(what, &[], args, env, log).await
    }

    /// [`Daemon::start_logging`], run by `wrapper` (a program and its arguments, e.g.
    /// valgrind) when that is not empty.
    pub async fn start_wrapped(
        what: &'static str,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Daemon {
        let metrics = free_addr();
        let mut cmd = match wrapper.split_first() {
            None => Command::new(invalidator_bin()),
            Some((program, wrapper_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(wrapper_args).arg(invalidator_bin());
                cmd
            }
        };
        cmd.arg(what)
            .args(args)
            .args(["--metrics-addr", &metrics.to_string()])
            .env_remove("INVALIDATOR_KAFKA_OPTIONS")
            // librdkafka's CONFWARN for consumer-only -X options on the DLQ producer is noise here.
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(match log {
                Some(path) => Stdio::from(
                    std::fs::File::create(path)
                        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display())),
                ),
                None => Stdio::inherit(),
            })
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting invalidator {what}: {e}"));
        let mut d = Daemon {
            child,
            metrics,
            what,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !http_get(metrics, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
        {
            // A daemon that exited (bad arguments, no service) is not waited for.
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("invalidator {what} exited before it was ready ({status}); see its log");
            }
            assert!(
                Instant::now() < deadline,
                "invalidator {what} not ready within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        d
    }

    /// Peak resident set size so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    /// A counter or gauge from its /metrics.
    pub async fn metric(&self, series: &str) -> f64 {
        let body = http_get(self.metrics, "/metrics").await;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// Quantile `q` of a histogram from its /metrics, as the upper bound of the bucket it
    /// falls in (our buckets double from 1 ms, so this is coarse: within a factor of 2).
    pub async fn histogram_quantile_ms(&self, name: &str, q: f64) -> Option<f64> {
        let body = http_get(self.metrics, "/metrics").await;
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = body
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total == 0.0 {
            return None;
        }
        buckets
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map(|(le, _)| le * 1000.0)
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(Ok(s)) if s.success() => {}
            other => eprintln!("bench: invalidator {} stopped badly: {other:?}", self.what),
        }
    }
}

/// An application writer: one connection that commits "update a row and invalidate its key"
/// transactions, the write the pipeline exists for.
pub struct AppWriter {
    client: tokio_postgres::Client,
    update: tokio_postgres::Statement,
    invalidate: tokio_postgres::Statement,
}

impl AppWriter {
    pub async fn connect(url: &str) -> AppWriter {
        let client = connect(url).await;
        let update = client
            .prepare("UPDATE bench_items SET v = v + 1 WHERE id = $1")
            .await
            .expect("prepare");
        let invalidate = client
            .prepare("SELECT invalidator.invalidate(ARRAY[$1::text])")
            .await
            .expect("prepare");
        AppWriter {
            client,
            update,
            invalidate,
        }
    }

    /// `UPDATE bench_items … WHERE id = row; invalidate(key); COMMIT`; the event's id.
    pub async fn commit(&mut self, row: i32, key: &str) -> uuid::Uuid {
        let tx = self.client.transaction().await.expect("begin");
        tx.execute(&self.update, &[&row]).await.expect("update");
        let event_id: uuid::Uuid = tx
            .query_one(&self.invalidate, &[&key])
            .await
            .expect("invalidate")
            .get(0);
        tx.commit().await.expect("commit");
        event_id
    }
}

/// Inserts `n` one-key delete rows straight into the outbox (`<prefix>:<i>`), one statement.
pub async fn insert_outbox(c: &tokio_postgres::Client, n: i64, prefix: &str) {
    c.execute(
        "INSERT INTO invalidator.outbox (partition_key, op, keys)
         SELECT $2 || ':' || i, 'delete', ARRAY[$2 || ':' || i] FROM generate_series(1, $1::bigint) i",
        &[&n, &prefix],
    )
    .await
    .expect("inserting outbox rows");
}

/// `n` one-key rows into the outbox ([`insert_outbox`], keys `product:<i>`); with `vacuum`,
/// then VACUUM ANALYZE, so a drain starts from a table without dead tuples and with stats.
pub async fn preload(c: &tokio_postgres::Client, n: i64, vacuum: bool) {
    insert_outbox(c, n, "product").await;
    if vacuum {
        c.batch_execute("VACUUM ANALYZE invalidator.outbox")
            .await
            .expect("vacuum");
    }
}

/// Starts `invalidator consume` on `topic` (group `<topic>_g`), polling tansu quickly.
pub async fn start_consumer(env: &Env, topic: &str) -> Daemon {
    start_consumer_tracing(env, topic, None).await
}

/// [`start_consumer`]; with `trace`, its per-batch trace
/// ([`invalidator::consumer::TRACE_TARGET`]) is on and its log (JSON lines) goes to that file.
pub async fn start_consumer_tracing(
    env: &Env,
    topic: &str,
    trace: Option<&std::path::Path>,
) -> Daemon {
    let group = format!("{topic}_g");
    let mut args = vec![
        "--topic",
        topic,
        "--group",
        &group,
        "-X",
        "fetch.wait.max.ms=5",
    ];
    for option in &env.consumer_options {
        args.extend(["-X", option.as_str()]);
    }
    let filter = format!("error,{}=trace", invalidator::consumer::TRACE_TARGET);
    let mut vars = vec![
        ("KAFKA_BROKERS", env.brokers.as_str()),
        ("REDIS_URL", env.redis_url.as_str()),
    ];
    if trace.is_some() {
        args.extend(["--log-format", "json"]);
        vars.push(("RUST_LOG", &filter));
    }
    Daemon::start_logging("consume", &args, &vars, trace).await
}

/// Creates `topics` on the brokers (memory engine by default).
pub async fn create_topics(env: &Env, topics: &[String], partitions: i32) {
    kafka(env)
        .ensure_topics(
            topics,
            Some(invalidator::kafka::TopicSpec {
                partitions,
                replication_factor: 1,
            }),
        )
        .await
        .expect("creating bench topics");
}

pub fn kafka(env: &Env) -> invalidator::kafka::KafkaSettings {
    invalidator::kafka::KafkaSettings {
        brokers: env.brokers.clone(),
        options: vec![],
    }
}

/// A unique-enough name for this run's topics and keys.
pub fn run_id() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..6)
            .unwrap_or("x")
    )
}

/// Percentiles of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn percentiles(mut ms: Vec<f64>) -> Percentiles {
    if ms.is_empty() {
        return Percentiles::default();
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    Percentiles {
        n: ms.len(),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: ms[ms.len() - 1],
    }
}

/// A Markdown table, printed as it is built.
pub struct Table;

impl Table {
    pub fn start(title: &str, headers: &[&str]) -> Table {
        println!("\n### {title}\n");
        println!("| {} |", headers.join(" | "));
        println!("|{}", " --- |".repeat(headers.len()));
        Table
    }

    pub fn row(&self, cells: &[String]) {
        println!("| {} |", cells.join(" | "));
    }
}

pub fn rate(n: f64, elapsed: Duration) -> String {
    format!("{:.0}", n / elapsed.as_secs_f64())
}

/// CPU time so far, per process (from /proc/<pid>/stat: name and ticks) and for the whole
/// machine, in clock ticks: taken before and after a run, the difference says where the cores
/// went. Per pid, not per name: a kernel worker renames itself with each work item
/// (`kworker/0:1-events` → `kworker/0:1-writeback`), and a name first seen after the run
/// would otherwise be charged the thread's whole lifetime.
#[derive(Debug, Default, Clone)]
pub struct CpuSnapshot {
    pub by_pid: std::collections::HashMap<u32, (String, u64)>,
    pub busy: u64,
    pub total: u64,
}

pub fn cpu_snapshot() -> CpuSnapshot {
    let mut snap = CpuSnapshot::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        if let Some(cpu) = stat.lines().next() {
            let v: Vec<u64> = cpu
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            snap.total = v.iter().sum();
            // idle + iowait are not busy.
            snap.busy =
                snap.total - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0);
        }
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid … utime stime …`: comm may hold spaces, so split after ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let Ok(pid) = stat[..open].trim().parse::<u32>() else {
            continue;
        };
        // All kernel workers as one: their names carry the current work item.
        let name = match &stat[open + 1..close] {
            n if n.starts_with("kworker/") => "kworker (kernel)".to_string(),
            n => n.to_string(),
        };
        let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = rest
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
            + rest
                .get(12)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        snap.by_pid.insert(pid, (name, ticks));
    }
    snap
}

/// The machine's busy CPU time between two snapshots `elapsed` apart, in core-seconds (every
/// process, the kernel included: what the run cost the machine).
pub fn busy_core_seconds(before: &CpuSnapshot, after: &CpuSnapshot, elapsed: Duration) -> f64 {
    let total = after.total.saturating_sub(before.total).max(1) as f64;
    let busy = after.busy.saturating_sub(before.busy) as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    busy / total * cores * elapsed.as_secs_f64()
}

/// "machine 97% busy; invalidator 41%, postgres 35%, tansu 20%" (shares of the machine).
pub fn cpu_summary(before: &CpuSnapshot, after: &CpuSnapshot) -> String {
    let total = after.total.saturating_sub(before.total).max(1) as f64;
    let busy = after.busy.saturating_sub(before.busy) as f64 / total * 100.0;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut by_name: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for (pid, (name, t)) in &after.by_pid {
        // A pid absent before was born during the run: all its ticks are the run's.
        let was = before.by_pid.get(pid).map_or(0, |(_, t)| *t);
        *by_name.entry(name.as_str()).or_default() += t.saturating_sub(was);
    }
    let mut shares: Vec<(String, f64)> = by_name
        .into_iter()
        // total counts ticks of every core; a process's ticks are per core too.
        .map(|(n, d)| (n.to_string(), d as f64 / total * 100.0))
        .filter(|(_, s)| *s >= 1.0)
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<String> = shares
        .iter()
        .take(4)
        .map(|(n, s)| format!("{n} {s:.0}%"))
        .collect();
    format!(
        "machine {busy:.0}% busy of {cores:.0} cores; {}",
        top.join(", ")
    )
}
