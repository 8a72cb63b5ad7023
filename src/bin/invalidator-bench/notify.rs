//! (d) What the opt-in wake-up trigger costs the application: commits/s of
//! `UPDATE … ; SELECT invalidator.invalidate(…) ; COMMIT` with `enable_notify()` off and on,
//! at 1, 8 and 32 concurrent writers. A NOTIFY takes a database-wide lock at commit, which
//! serializes committing transactions. Each writer updates rows of its own, so row locks do
//! not interfere; no relay runs (the outbox only grows).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

pub async fn run(env: &Env, writers: &[usize], seconds: u64) {
    let db = ScratchDb::new(env, "notify").await;
    let c = db.client().await;
    let t = Table::start(
        &format!("(d) application commit rate, {seconds} s per cell"),
        &[
            "writers",
            "notify off (commits/s)",
            "notify on (commits/s)",
            "on / off",
        ],
    );
    for &n in writers {
        let mut cells = vec![n.to_string()];
        let mut rates = Vec::new();
        for notify in [false, true] {
            c.batch_execute(if notify {
                "TRUNCATE invalidator.outbox; SELECT invalidator.enable_notify();"
            } else {
                "TRUNCATE invalidator.outbox; SELECT invalidator.disable_notify();"
            })
            .await
            .expect("toggling notify");
            let r = commits_per_second(&db.url, n, Duration::from_secs(seconds)).await;
            cells.push(format!("{r:.0}"));
            rates.push(r);
        }
        cells.push(format!("{:.2}", rates[1] / rates[0]));
        t.row(&cells);
    }
    drop(c);
    drop(db);
}

async fn commits_per_second(url: &str, writers: usize, run: Duration) -> f64 {
    let commits = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let url = url.to_string();
        let commits = commits.clone();
        tasks.push(tokio::spawn(async move {
            let mut writer = AppWriter::connect(&url).await;
            // A slice of the 10,000 rows of this writer's own.
            let span = (10_000 / writers) as i32;
            let mut i = 0i32;
            while Instant::now() < deadline {
                let id = w as i32 * span + i % span + 1;
                writer.commit(id, &format!("item:{id}")).await;
                commits.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await.expect("writer");
    }
    commits.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
