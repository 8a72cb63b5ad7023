//! The benchmark harness runs end to end with tiny sizes (`--smoke`). It measures nothing
//! here: this only proves every scenario still works, so `BENCHMARKS.md` can be reproduced.

mod common;

#[tokio::test]
/// `invalidator-bench --smoke` exits 0 and prints every scenario's table, and the latency
/// scenario observed every event it wrote (the pipeline lost none), the floor probe's too,
/// the tap consumer fetched every one, and the relay's and the consumer's traces accounted
/// for every one.
async fn bench_smoke_runs_every_scenario() {
    let brokers = common::kafka::fast_brokers();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_invalidator-bench"))
        .arg("--smoke")
        // The floor probed during each pipeline run, at a rate of its own to tell its rows apart.
        .args(["--floor-probe-rate", "50"])
        // And each event's latency split where a second consumer fetched its record.
        .arg("--tap")
        // And each event followed through the relay by its per-batch trace.
        .arg("--trace")
        .env("KAFKA_BROKERS", &brokers)
        .env_remove("INVALIDATOR_KAFKA_OPTIONS")
        .output()
        .await
        .expect("running invalidator-bench");
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        common::text(&out.stderr)
    );
    for heading in [
        "### (a) relay throughput",
        "### (b) end-to-end latency",
        "### (c) consumer throughput",
        "### (d) application commit rate",
        "### (e) claim cost vs backlog",
        "### (e) claims while a transaction stays open",
        "### (f) peak RSS",
    ] {
        assert!(stdout.contains(heading), "{heading} missing:\n{stdout}");
    }
    // Each table's own rows (later tables also start with the rate): `want` rows that start
    // with `prefix` in the section titled `title`, each containing `every`.
    let check = |title: &str, prefix: &str, want: usize, every: &str| {
        let section = stdout
            .split("### ")
            .find(|section| section.starts_with(title))
            .unwrap_or_else(|| panic!("no table {title:?}:\n{stdout}"));
        let rows: Vec<&str> = section.lines().filter(|l| l.starts_with(prefix)).collect();
        assert_eq!(rows.len(), want, "{title} rows {prefix:?}:\n{stdout}");
        for row in rows {
            assert!(row.contains(every), "{title}: {every:?} missing in {row}");
        }
    };
    // The relay against the SQL alone, the fastest of each and at every batch size run.
    assert!(stdout.contains("best relay "), "{stdout}");
    let same_batch = stdout
        .lines()
        .find(|l| l.starts_with("at each batch size, best relay / min(SQL alone at that batch size, broker): batch "))
        .unwrap_or_else(|| panic!("no per-batch-size ratio:\n{stdout}"));
    assert!(same_batch.ends_with("(target >= 0.8)"), "{same_batch}");
    // Every event observed: the pipeline lost none (two floors, two paths).
    check("(b) end-to-end latency", "| 100 | ", 4, "| 100/100 |");
    // Each path's p99 next to the floors of its round.
    check(
        "(b) p99 against the targets",
        "| 100 | pipeline, ",
        2,
        " of 1 |",
    );
    // One probe per pipeline run, every probe record observed.
    check(
        "(b) end-to-end latency",
        "| 50 | broker alone, probed during the run above | ",
        2,
        "| 50/50 |",
    );
    // Every event fetched by the tap and seen gone.
    check("(b) each event split", "| 100 | ", 2, " | 100 | ");
    // Every event found in the relay's and the consumer's traces, joined to its commit,
    // the tap's fetch and its deletion: eleven stages per path (ours and the broker's among
    // them), and the count under the table.
    check(
        "(b) each event through the relay and the consumer",
        "| 100 | ",
        22,
        "| pipeline, ",
    );
    let ours = stdout
        .matches("| ours: commit → handed over, plus received → key gone |")
        .count();
    assert_eq!(ours, 2, "our part per path:\n{stdout}");
    let traced = stdout.matches(": 100 events traced;").count();
    assert_eq!(traced, 2, "trace summaries:\n{stdout}");
}

#[tokio::test]
/// `invalidator-bench --smoke --scenarios cost` runs the relay under callgrind twice (it
/// needs valgrind, which `scripts/test.sh` installs) and prints a positive count of
/// instructions per row: the instrument of BENCHMARKS.md item 15 keeps working.
async fn bench_smoke_counts_the_relays_instructions() {
    let dir = tempfile_dir();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_invalidator-bench"))
        .args(["--smoke", "--scenarios", "cost", "--cost-dir"])
        .arg(&dir)
        .env_remove("INVALIDATOR_KAFKA_OPTIONS")
        .output()
        .await
        .expect("running invalidator-bench");
    let stdout = common::text(&out.stdout);
    let stderr = common::text(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("### (a) relay CPU cost, counted"),
        "no cost table (valgrind missing?):\n{stdout}\n{stderr}"
    );
    let per_row: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("relay instructions per additional row: "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no per-row count:\n{stdout}"));
    assert!(per_row > 0.0, "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A directory of this test's own under the system's temporary directory.
fn tempfile_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("invalidator-bench-cost-{}", std::process::id()))
}
