//! (e) Claim cost against the backlog: the relay's own claim statement (`outbox::claim`,
//! batch 1000, one transaction that is rolled back so the backlog stays put) at 10k, 100k
//! and 1M rows; then the claim loop draining a 5k events/s stream while another session holds
//! a transaction open (so nothing it deletes can be vacuumed), with the relay's cursor (hint +
//! sweep) and, for comparison, a naive claim from the first id every time. Kafka is left out:
//! this measures the SQL, which is what dead tuples slow down.

use std::time::{Duration, Instant};

use invalidator::outbox;
use invalidator::relay::{Cursor, Scan};

use crate::common::*;

pub async fn run(env: &Env, backlogs: &[i64], hold: Duration, hold_rate: u64) {
    let t = Table::start(
        "(e) claim cost vs backlog (batch 1000, 30 claims each, rolled back)",
        &["backlog rows", "p50 ms", "p99 ms", "max ms"],
    );
    let db = ScratchDb::new(env, "backlog").await;
    let pool = pool(&db.url);
    let mut c = pool.get().await.expect("pool");
    let mut loaded = 0i64;
    let mut first_p50 = None;
    for &n in backlogs {
        insert_outbox(&c, n - loaded, "p").await;
        loaded = n;
        c.batch_execute("VACUUM ANALYZE invalidator.outbox")
            .await
            .expect("vacuum");
        let mut ms = Vec::new();
        for _ in 0..30 {
            let tx = c.transaction().await.expect("begin");
            let started = Instant::now();
            let rows = outbox::claim(&tx, 1000, 0).await.expect("claim");
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(rows.len(), 1000.min(n as usize));
            tx.rollback().await.expect("rollback");
        }
        let p = percentiles(ms);
        first_p50.get_or_insert(p.p50);
        t.row(&[
            n.to_string(),
            format!("{:.2}", p.p50),
            format!("{:.2}", p.p99),
            format!("{:.2}", p.max),
        ]);
    }
    if let Some(first) = first_p50 {
        println!("\n(flat within 2x means every p50 ≤ {:.2} ms)", 2.0 * first);
    }
    c.batch_execute("TRUNCATE invalidator.outbox")
        .await
        .expect("truncate");
    drop(c);

    let t = Table::start(
        &format!(
            "(e) claims while a transaction stays open {} s, {hold_rate} events/s written (batch 1000)",
            hold.as_secs()
        ),
        &["claim start", "window", "claims", "p50 ms", "p99 ms", "max ms"],
    );
    for naive in [false, true] {
        let (claims, sweeps) = held_run(&db, hold, hold_rate, naive).await;
        let kinds: &[(&str, &Vec<Percentiles>)] = if naive {
            &[("id 0 every time (naive)", &claims)]
        } else {
            &[
                ("relay cursor: claims from the hint", &claims),
                ("relay cursor: sweeps from id 0 (1/s)", &sweeps),
            ]
        };
        for (kind, windows) in kinds {
            for (w, p) in windows.iter().enumerate() {
                let span = hold.as_secs_f64() / windows.len() as f64;
                t.row(&[
                    kind.to_string(),
                    format!("{:.1}–{:.1} s", w as f64 * span, (w + 1) as f64 * span),
                    p.n.to_string(),
                    format!("{:.2}", p.p50),
                    format!("{:.2}", p.p99),
                    format!("{:.2}", p.max),
                ]);
            }
        }
    }
    println!(
        "\n(the relay runs a sweep without holding the claim turn: claims from the hint go on \
         while it walks the dead tuples)"
    );
    drop(db);
}

/// `outbox::claim` takes the relay's pooled transaction type, so the bench claims through a
/// pool built like the relay's.
fn pool(url: &str) -> deadpool_postgres::Pool {
    let config: tokio_postgres::Config = url.parse().expect("a connection string");
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(2)
        .build()
        .expect("a pool")
}

/// Writes `rate` events/s for `hold` while one session's transaction stays open, and drains
/// them with the claim loop. Returns claim-time percentiles per sixth of the run: claims from
/// the cursor's hint (all of them when `naive`), and the cursor's sweeps from id 0.
async fn held_run(
    db: &ScratchDb,
    hold: Duration,
    rate: u64,
    naive: bool,
) -> (Vec<Percentiles>, Vec<Percentiles>) {
    let holder = db.client().await;
    holder
        .batch_execute("TRUNCATE invalidator.outbox")
        .await
        .expect("truncate");
    // A snapshot taken and kept: nothing deleted after it can be vacuumed while it is open.
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM bench_items;")
        .await
        .expect("opening the long transaction");
    let started = Instant::now();
    let writer = {
        let url = db.url.clone();
        tokio::spawn(async move {
            let c = connect(&url).await;
            // 100 ticks a second, rate/100 rows each.
            let per_tick = (rate / 100).max(1) as i64;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while started.elapsed() < hold {
                tick.tick().await;
                insert_outbox(&c, per_tick, "h").await;
            }
        })
    };
    let pool = pool(&db.url);
    let mut c = pool.get().await.expect("pool");
    let mut cursor = Cursor::new(Duration::from_secs(1));
    let windows = 6;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); windows];
    let mut sweeps: Vec<Vec<f64>> = vec![Vec::new(); windows];
    while started.elapsed() < hold {
        let scan = if naive {
            Scan::From(0)
        } else {
            cursor.next(Instant::now())
        };
        let from = scan.from_id();
        let tx = c.transaction().await.expect("begin");
        let t0 = Instant::now();
        let rows = outbox::claim(&tx, 1000, from).await.expect("claim");
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        tx.commit().await.expect("commit");
        let w = ((started.elapsed().as_secs_f64() / hold.as_secs_f64()) * windows as f64) as usize;
        if scan == Scan::Sweep {
            sweeps[w.min(windows - 1)].push(ms);
        } else {
            samples[w.min(windows - 1)].push(ms);
        }
        if let Some(last) = rows.max_id() {
            cursor.claimed(Instant::now(), last);
        }
        if rows.len() < 1000 {
            tokio::time::sleep(Duration::from_millis(10)).await; // the relay's poll interval
        }
    }
    writer.await.expect("writer");
    holder
        .batch_execute("COMMIT")
        .await
        .expect("ending the long transaction");
    (
        samples.into_iter().map(percentiles).collect(),
        sweeps.into_iter().map(percentiles).collect(),
    )
}
