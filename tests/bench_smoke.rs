//! The benchmark harness runs end to end with tiny sizes (`--smoke`). It measures nothing
//! here: this only proves every scenario still works, so `BENCHMARKS.md` can be reproduced.

mod common;

#[tokio::test]
/// `invalidator-bench --smoke` exits 0 and prints every scenario's table, and the latency
/// scenario observed every event it wrote (the pipeline lost none), the floor probe's too,
/// and the tap consumer fetched every one.
async fn bench_smoke_runs_every_scenario() {
    let brokers = common::kafka::fast_brokers();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_invalidator-bench"))
        .arg("--smoke")
        // The floor probed during each pipeline run, at a rate of its own to tell its rows apart.
        .args(["--floor-probe-rate", "50"])
        // And each event's latency split where a second consumer fetched its record.
        .arg("--tap")
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
    // The rows of the latency table itself (later tables also start with the rate).
    let latency = stdout
        .split("### ")
        .find(|section| section.starts_with("(b) end-to-end latency"))
        .expect("the latency table");
    let latency_rows: Vec<&str> = latency
        .lines()
        .filter(|l| l.starts_with("| 100 | "))
        .collect();
    assert_eq!(latency_rows.len(), 3, "{stdout}");
    for row in latency_rows {
        assert!(row.contains("| 100/100 |"), "every event observed: {row}");
    }
    let probe_rows: Vec<&str> = latency
        .lines()
        .filter(|l| l.starts_with("| 50 | broker alone, probed during the run above | "))
        .collect();
    assert_eq!(probe_rows.len(), 2, "one probe per pipeline run:\n{stdout}");
    for row in probe_rows {
        assert!(
            row.contains("| 50/50 |"),
            "every probe record observed: {row}"
        );
    }
    let split = stdout
        .split("### ")
        .find(|section| section.starts_with("(b) each event split"))
        .expect("the --tap table");
    let split_rows: Vec<&str> = split
        .lines()
        .filter(|l| l.starts_with("| 100 | "))
        .collect();
    assert_eq!(split_rows.len(), 2, "{stdout}");
    for row in split_rows {
        assert!(
            row.contains(" | 100 | "),
            "every event fetched by the tap and seen gone: {row}"
        );
    }
}
