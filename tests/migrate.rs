//! `invalidator migrate` and the SQL contract of DESIGN §1, against a real PostgreSQL that
//! already holds an application's own tables and rows.

mod common;

use common::*;
use invalidator::migrate;

/// A database that looks like an application's: a `products` table with rows.
async fn app_db() -> TestDb {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price numeric NOT NULL);
             INSERT INTO products VALUES (1, 'tea', 3.50), (2, 'coffee', 4.20), (42, 'cake', 9.99);
             CREATE INDEX products_name ON products (name);",
        )
        .await
        .expect("creating the application's tables");
    db
}

async fn migrate_lib(db: &TestDb) -> migrate::Outcome {
    let mut c = db.client().await;
    migrate::run(&mut c, &migrate::Options::default())
        .await
        .expect("migrate")
}

/// Everything outside schema `invalidator`: relations, functions, schemas, types, and the
/// products rows, as one comparable text.
async fn outside_invalidator(db: &TestDb) -> String {
    let c = db.client().await;
    let q = "
      SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
        SELECT 'rel ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text AS x
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname <> 'invalidator'
           -- a TOAST table (and its index) belongs to its table, here invalidator's own
           AND NOT EXISTS (SELECT 1 FROM pg_class t JOIN pg_namespace tn ON tn.oid = t.relnamespace
                           WHERE tn.nspname = 'invalidator' AND t.reltoastrelid <> 0
                             AND (t.reltoastrelid = c.oid OR c.oid IN
                                  (SELECT indexrelid FROM pg_index WHERE indrelid = t.reltoastrelid)))
        UNION ALL SELECT 'fn ' || n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname <> 'invalidator'
        UNION ALL SELECT 'ns ' || nspname FROM pg_namespace WHERE nspname <> 'invalidator'
        UNION ALL SELECT 'row ' || p::text FROM products p
        UNION ALL SELECT 'ext ' || extname FROM pg_extension
      ) s";
    c.query_one(q, &[]).await.expect("catalog snapshot").get(0)
}

#[tokio::test]
/// migrate creates the contract's objects in a database with existing tables, and nothing
/// outside schema `invalidator` changes.
async fn applies_to_existing_database_without_touching_app_objects() {
    let db = app_db().await;
    let before = outside_invalidator(&db).await;
    let outcome = migrate_lib(&db).await;
    assert_eq!(outcome.applied.len(), migrate::MIGRATIONS.len());
    assert_eq!(
        outside_invalidator(&db).await,
        before,
        "objects or rows outside schema invalidator changed"
    );

    let c = db.client().await;
    for obj in [
        "invalidator.outbox",
        "invalidator.outbox_dead",
        "invalidator.schema_migrations",
    ] {
        let exists: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&obj])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "{obj} missing");
    }
    let recorded: Vec<(i32, Option<String>)> = c
        .query(
            "SELECT version, checksum FROM invalidator.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(i32, Option<String>)> = migrate::MIGRATIONS
        .iter()
        .map(|m| (m.version, Some(m.checksum())))
        .collect();
    assert_eq!(recorded, expected);
}

#[tokio::test]
/// The binary applies once, and a second run reports that there is nothing to do.
async fn binary_twice_second_is_noop() {
    let db = app_db().await;
    let first = run_bin(&["migrate"], &[("DATABASE_URL", &db.url)]).await;
    assert!(
        first.status.success(),
        "first migrate failed: {}",
        text(&first.stderr)
    );
    assert!(
        text(&first.stdout).contains("applied V001__outbox.sql"),
        "{}",
        text(&first.stdout)
    );

    let c = db.client().await;
    c.batch_execute("SELECT invalidator.invalidate(ARRAY['product:1'])")
        .await
        .unwrap();

    let second = run_bin(&["migrate", "--database-url", &db.url], &[]).await;
    assert!(
        second.status.success(),
        "second migrate failed: {}",
        text(&second.stderr)
    );
    let out = text(&second.stdout);
    assert!(out.contains("nothing to do"), "second run said: {out}");
    assert!(
        !out.contains("applied V"),
        "second run applied something: {out}"
    );
    let pending: i64 = c
        .query_one("SELECT count(*) FROM invalidator.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 1, "re-running migrate must keep the outbox rows");
}

#[tokio::test]
/// Two `migrate` processes started together both succeed, and the files apply once.
async fn concurrent_processes_apply_once() {
    let db = app_db().await;
    let env = [("DATABASE_URL", db.url.as_str())];
    let (a, b) = tokio::join!(run_bin(&["migrate"], &env), run_bin(&["migrate"], &env));
    assert!(
        a.status.success(),
        "first process failed: {}",
        text(&a.stderr)
    );
    assert!(
        b.status.success(),
        "second process failed: {}",
        text(&b.stderr)
    );
    let applied_by = [&a, &b]
        .iter()
        .filter(|o| text(&o.stdout).contains("applied V001"))
        .count();
    assert_eq!(
        applied_by,
        1,
        "exactly one process applies: {} / {}",
        text(&a.stdout),
        text(&b.stdout)
    );
    let c = db.client().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM invalidator.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, migrate::MIGRATIONS.len() as i64);
}

#[tokio::test]
/// --dry-run prints the pending SQL and changes nothing.
async fn dry_run_prints_sql_and_changes_nothing() {
    let db = app_db().await;
    let out = run_bin(&["migrate", "--dry-run"], &[("DATABASE_URL", &db.url)]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("-- would apply V001__outbox.sql"),
        "{stdout}"
    );
    assert!(
        stdout.contains("CREATE TABLE IF NOT EXISTS invalidator.outbox"),
        "{stdout}"
    );
    let c = db.client().await;
    let exists: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'invalidator')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "dry run created the schema");
}

#[tokio::test]
/// The plain files apply in order with `psql -f`; migrate then adopts them (re-runs and
/// records checksums) and afterwards has nothing to do.
async fn psql_applied_files_are_adopted() {
    let db = app_db().await;
    let mut files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    for f in &files {
        for _ in 0..2 {
            // twice: the files are idempotent
            let out = std::process::Command::new("psql")
                .args([
                    "-v",
                    "ON_ERROR_STOP=1",
                    "--single-transaction",
                    "-q",
                    "-d",
                    &db.url,
                    "-f",
                ])
                .arg(f)
                .output()
                .expect("psql is installed");
            assert!(out.status.success(), "psql -f {f:?}: {}", text(&out.stderr));
        }
    }
    let c = db.client().await;
    let nulls: i64 = c
        .query_one(
            "SELECT count(*) FROM invalidator.schema_migrations WHERE checksum IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        nulls,
        migrate::MIGRATIONS.len() as i64,
        "psql-applied files record themselves"
    );

    let out = run_bin(&["migrate"], &[("DATABASE_URL", &db.url)]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("adopted V001__outbox.sql"),
        "{}",
        text(&out.stdout)
    );
    let again = run_bin(&["migrate"], &[("DATABASE_URL", &db.url)]).await;
    assert!(
        text(&again.stdout).contains("nothing to do"),
        "{}",
        text(&again.stdout)
    );
}

#[tokio::test]
/// A recorded checksum that differs from the embedded file is refused with a clear message.
async fn changed_checksum_is_refused() {
    let db = app_db().await;
    migrate_lib(&db).await;
    let c = db.client().await;
    c.batch_execute(
        "UPDATE invalidator.schema_migrations SET checksum = 'deadbeef' WHERE version = 1",
    )
    .await
    .unwrap();
    let out = run_bin(&["migrate"], &[("DATABASE_URL", &db.url)]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("V001__outbox.sql was applied with checksum deadbeef"),
        "{err}"
    );
    assert!(err.contains("must never change"), "{err}");
}

#[tokio::test]
/// A database migrated by a newer release is refused rather than half-understood.
async fn database_ahead_is_refused() {
    let db = app_db().await;
    migrate_lib(&db).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO invalidator.schema_migrations (version, name, checksum) VALUES (999, 'future', 'x')")
        .await
        .unwrap();
    let out = run_bin(&["migrate"], &[("DATABASE_URL", &db.url)]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("migration 999 (future), which this binary does not know"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
/// Errors a user will hit say what failed and what to do.
async fn connection_errors_say_what_to_do() {
    // Server unreachable: nothing listens on port 1.
    let out = run_bin(
        &["migrate"],
        &[(
            "DATABASE_URL",
            "postgres://postgres:hunter2@127.0.0.1:1/test",
        )],
    )
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach the PostgreSQL server"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");

    // Database missing.
    let url = with_database(&admin_url(), "inv_no_such_db");
    let out = run_bin(&["migrate"], &[("DATABASE_URL", &url)]).await;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("database \"inv_no_such_db\" does not exist") && err.contains("createdb"),
        "{err}"
    );

    // Authentication: a role that does not exist.
    let url = with_user(&admin_url(), "inv_no_such_role");
    let out = run_bin(&["migrate"], &[("DATABASE_URL", &url)]).await;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("refused the login of role \"inv_no_such_role\""),
        "{err}"
    );

    // Not a connection string at all.
    let out = run_bin(&["migrate"], &[("DATABASE_URL", "postgres://[::1")]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a valid PostgreSQL connection string"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
/// A role without CREATE on the database is told how to get it, and nothing is created.
async fn no_create_privilege_says_what_to_do() {
    let db = app_db().await;
    let role = unique("inv_role");
    let c = db.client().await;
    c.batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    let url = with_user(&db.url, &role);
    let out = run_bin(&["migrate"], &[("DATABASE_URL", &url)]).await;
    c.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .ok();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "role \"{role}\" may not create schema `invalidator`"
        )),
        "{err}"
    );
    assert!(err.contains("GRANT CREATE ON DATABASE"), "{err}");
}

#[tokio::test]
/// invalidate() inside an application transaction: the row exists iff that transaction
/// commits, with the defaults of DESIGN §1.
async fn invalidate_row_exists_iff_transaction_commits() {
    let db = app_db().await;
    migrate_lib(&db).await;
    let mut c = db.client().await;

    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE products SET price = 10 WHERE id = 42", &[])
        .await
        .unwrap();
    tx.execute(
        "SELECT invalidator.invalidate(ARRAY['product:42', 'product:42:card'])",
        &[],
    )
    .await
    .unwrap();
    tx.execute(
        "SELECT invalidator.invalidate(ARRAY['catalog:version'], op => 'bump')",
        &[],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM invalidator.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a rolled-back transaction left outbox rows");

    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE products SET price = 10 WHERE id = 42", &[])
        .await
        .unwrap();
    let eid: uuid::Uuid = tx
        .query_one(
            "SELECT invalidator.invalidate(ARRAY['product:42', 'product:42:card'])",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tx.execute(
        "SELECT invalidator.invalidate(ARRAY['catalog:version'], op => 'bump', topic => 'other', \
         headers => '{\"traceparent\": \"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\"}')",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let rows = c
        .query("SELECT event_id, op, keys, partition_key, topic, headers FROM invalidator.outbox ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, uuid::Uuid>(0), eid);
    assert_eq!(rows[0].get::<_, String>(1), "delete");
    assert_eq!(
        rows[0].get::<_, Vec<String>>(2),
        vec!["product:42", "product:42:card"]
    );
    assert_eq!(
        rows[0].get::<_, String>(3),
        "product:42",
        "partition_key defaults to the first key"
    );
    assert_eq!(
        rows[0].get::<_, Option<String>>(4),
        None,
        "topic NULL = the relay's default"
    );
    assert_eq!(rows[1].get::<_, String>(1), "bump");
    assert_eq!(
        rows[1].get::<_, Option<String>>(4).as_deref(),
        Some("other")
    );
    let headers: serde_json::Value = rows[1].get(5);
    assert!(headers["traceparent"]
        .as_str()
        .unwrap()
        .starts_with("00-0af7"));
}

#[tokio::test]
/// Every bad input of DESIGN §1 fails inside the app's transaction with an error that names
/// the problem, and the transaction's domain change does not commit.
async fn bad_invalidate_calls_fail_with_named_problem() {
    let db = app_db().await;
    migrate_lib(&db).await;
    let mut c = db.client().await;
    let long_key = format!("'{}'", "k".repeat(1025));
    let many_keys = "(SELECT array_agg('k' || i) FROM generate_series(1, 1001) i)".to_string();
    let cases: Vec<(String, &str)> = vec![
        ("ARRAY['a'], op => 'purge'".into(), "unknown op 'purge'"),
        ("ARRAY['a'], op => NULL".into(), "unknown op NULL"),
        ("ARRAY[]::text[]".into(), "keys must not be empty"),
        ("NULL".into(), "keys must not be empty"),
        (many_keys, "too many keys (1001); at most 1000"),
        ("ARRAY['a', '']".into(), "key 2 is an empty string"),
        ("ARRAY['a', NULL]".into(), "key 2 is NULL"),
        (
            format!("ARRAY[{long_key}]"),
            "key 1 is too long (1025 bytes); at most 1024 bytes",
        ),
        (
            "ARRAY[ARRAY['a','b'],ARRAY['c','d']]".into(),
            "one-dimensional",
        ),
        (
            "ARRAY['a'], headers => '[1]'".into(),
            "headers must be a JSON object",
        ),
        (
            "ARRAY['a'], partition_key => ''".into(),
            "partition_key must not be an empty string",
        ),
        (
            "ARRAY['a'], topic => ''".into(),
            "topic must not be an empty string",
        ),
    ];
    for (args, expected) in cases {
        let tx = c.transaction().await.unwrap();
        tx.execute("UPDATE products SET price = 0 WHERE id = 1", &[])
            .await
            .unwrap();
        let err = tx
            .execute(&format!("SELECT invalidator.invalidate({args})"), &[])
            .await
            .expect_err(&format!("invalidate({args}) must fail"));
        let db_err = err.as_db_error().expect("a SQL error");
        assert!(
            db_err.message().contains(expected),
            "invalidate({args}): got {:?}, want {expected:?}",
            db_err.message()
        );
        assert_eq!(db_err.code().code(), "22023", "invalid_parameter_value");
        // The transaction is aborted: committing it rolls back the domain change.
        let _ = tx.commit().await;
    }
    let price: String = c
        .query_one("SELECT price::text FROM products WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        price, "3.50",
        "a failed invalidate() must take the domain change down with it"
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM invalidator.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
/// Rows inserted directly (bypassing invalidate()) are checked by named constraints.
async fn direct_inserts_are_checked_by_named_constraints() {
    let db = app_db().await;
    migrate_lib(&db).await;
    let c = db.client().await;
    let long = "k".repeat(1025);
    let cases: Vec<(String, &str)> = vec![
        (
            "'a', 'purge', ARRAY['a']".into(),
            "outbox_op_must_be_delete_or_bump",
        ),
        (
            "'a', 'delete', ARRAY[]::text[]".into(),
            "outbox_keys_must_not_be_empty",
        ),
        (
            "'a', 'delete', (SELECT array_agg('k' || i) FROM generate_series(1, 1001) i)".into(),
            "outbox_keys_at_most_1000",
        ),
        (
            "'a', 'delete', ARRAY['a', '']".into(),
            "outbox_key_must_not_be_empty_string",
        ),
        (
            format!("'a', 'delete', ARRAY['{long}']"),
            "outbox_key_at_most_1024_bytes",
        ),
    ];
    for (values, constraint) in cases {
        let err = c
            .execute(
                &format!(
                    "INSERT INTO invalidator.outbox (partition_key, op, keys) VALUES ({values})"
                ),
                &[],
            )
            .await
            .expect_err("the insert must fail");
        let msg = err
            .as_db_error()
            .expect("a SQL error")
            .message()
            .to_string();
        assert!(
            msg.contains(constraint),
            "got {msg:?}, want constraint {constraint}"
        );
    }
}

#[tokio::test]
/// enable_notify() installs the wake-up trigger, disable_notify() removes it; both idempotent.
async fn notify_trigger_toggles() {
    let db = app_db().await;
    migrate_lib(&db).await;
    let c = db.client().await;
    let q = "SELECT invalidator.notify_enabled()";
    assert!(
        !c.query_one(q, &[]).await.unwrap().get::<_, bool>(0),
        "off by default"
    );
    c.batch_execute("SELECT invalidator.enable_notify(); SELECT invalidator.enable_notify();")
        .await
        .unwrap();
    assert!(c.query_one(q, &[]).await.unwrap().get::<_, bool>(0));
    c.batch_execute("SELECT invalidator.disable_notify(); SELECT invalidator.disable_notify();")
        .await
        .unwrap();
    assert!(!c.query_one(q, &[]).await.unwrap().get::<_, bool>(0));
}
