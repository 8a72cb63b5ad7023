//! The outbox's SQL, as the relay uses it: claim a batch, bury undeliverable rows, check
//! the schema. (Schema changes themselves live in `migrations/`.)

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// The schema version (highest migration) this build needs.
pub const REQUIRED_VERSION: i32 = 2;

/// One claimed outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub topic: Option<String>,
    pub partition_key: String,
    pub op: String,
    pub keys: Vec<String>,
    pub headers: serde_json::Value,
}

/// Claims and deletes up to `limit` rows with `id >= from_id`, in id order, skipping rows
/// another relay holds. The deletion only takes effect if the caller's transaction commits:
/// every failure before COMMIT gives the rows back.
///
/// Not the card's `DELETE … USING batch`: PostgreSQL joins that CTE to the outbox with a hash
/// join built from a sequential scan of the whole table (every live row, and every dead one
/// while an old snapshot holds the horizon), so a claim cost O(table), 40 ms at a 100k
/// backlog. `id = ANY(ARRAY(…))` makes the batch an InitPlan array probed through the primary
/// key: O(batch), 2.7 ms there (EXPLAIN ANALYZE in docs/DESIGN.md §7).
pub const CLAIM: &str = "
    DELETE FROM invalidator.outbox
    WHERE id = ANY(ARRAY(
        SELECT id FROM invalidator.outbox
        WHERE id >= $2
        ORDER BY id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING id, event_id, created_at, topic, partition_key, op, keys, headers";

pub async fn claim(
    tx: &Transaction<'_>,
    limit: i64,
    from_id: i64,
) -> Result<Vec<OutboxRow>, tokio_postgres::Error> {
    Ok(claimed_rows(claim_raw(tx, limit, from_id).await?))
}

/// Rows claimed by [`claim_raw`], still as PostgreSQL sent them: enough to know how many and
/// the highest id (what the next claim needs) before decoding them with [`claimed_rows`].
pub struct RawClaim(Vec<tokio_postgres::Row>);

impl RawClaim {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The highest id claimed (RETURNING has no defined order).
    pub fn max_id(&self) -> Option<i64> {
        self.0.iter().map(|r| r.get::<_, i64>(0)).max()
    }
}

/// Runs the claim statement only. The relay holds its claim turn for this part and decodes
/// the rows ([`claimed_rows`]) after passing the turn on: decoding 5,000 rows' keys and
/// headers took milliseconds the next claim need not wait for.
pub async fn claim_raw(
    tx: &Transaction<'_>,
    limit: i64,
    from_id: i64,
) -> Result<RawClaim, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(CLAIM).await?;
    Ok(RawClaim(tx.query(&stmt, &[&limit, &from_id]).await?))
}

/// Decodes claimed rows, in id order.
pub fn claimed_rows(raw: RawClaim) -> Vec<OutboxRow> {
    let mut out: Vec<OutboxRow> = raw
        .0
        .iter()
        .map(|r| OutboxRow {
            id: r.get(0),
            event_id: r.get(1),
            created_at: r.get(2),
            topic: r.get(3),
            partition_key: r.get(4),
            op: r.get(5),
            keys: r.get(6),
            headers: r.get(7),
        })
        .collect();
    // RETURNING has no defined order.
    out.sort_unstable_by_key(|r| r.id);
    out
}

/// Moves a claimed (already deleted) row to `outbox_dead` with the reason, in the same
/// transaction, so that it never blocks the rows behind it and is never lost.
pub async fn bury(
    tx: &Transaction<'_>,
    row: &OutboxRow,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO invalidator.outbox_dead
                 (id, event_id, created_at, topic, partition_key, op, keys, headers, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error, failed_at = now()",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &row.id,
            &row.event_id,
            &row.created_at,
            &row.topic,
            &row.partition_key,
            &row.op,
            &row.keys,
            &row.headers,
            &error,
        ],
    )
    .await?;
    Ok(())
}

/// Why the database is not ready for the relay.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database has no schema `invalidator`: run `invalidator migrate` first")]
    Missing,
    #[error(
        "the database's invalidator schema is at version {found}, this build needs {REQUIRED_VERSION}: \
         run `invalidator migrate` with this build"
    )]
    Old { found: i32 },
    #[error("checking the invalidator schema failed")]
    Query(#[from] tokio_postgres::Error),
}

/// Checks that the migrations this build needs are applied.
pub async fn check_schema(client: &impl GenericClient) -> Result<(), SchemaError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('invalidator.schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Err(SchemaError::Missing);
    }
    let found: Option<i32> = client
        .query_one(
            "SELECT max(version) FROM invalidator.schema_migrations",
            &[],
        )
        .await?
        .get(0);
    match found {
        None => Err(SchemaError::Missing),
        Some(v) if v < REQUIRED_VERSION => Err(SchemaError::Old { found: v }),
        Some(_) => Ok(()),
    }
}

/// The database's name: the default `source` of published events.
pub async fn database_name(client: &impl GenericClient) -> Result<String, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .get(0))
}

/// How far behind the relay is: pending rows and the age of the oldest.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Backlog {
    pub rows: i64,
    /// 0 when the outbox is empty. Measured with the database's clock, like `created_at`.
    pub oldest_age_seconds: f64,
}

/// Counts the outbox (rows a relay has claimed but not yet committed still count).
pub async fn backlog(client: &impl GenericClient) -> Result<Backlog, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*),
                    COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), 0)::float8
             FROM invalidator.outbox",
            &[],
        )
        .await?;
    Ok(Backlog {
        rows: row.get(0),
        oldest_age_seconds: row.get::<_, f64>(1).max(0.0),
    })
}

/// Rows in `invalidator.outbox_dead`: rows the broker refused for good.
pub async fn dead_rows(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT count(*) FROM invalidator.outbox_dead", &[])
        .await?
        .get(0))
}

/// The channel the opt-in trigger notifies.
pub const NOTIFY_CHANNEL: &str = "invalidator_outbox";
