//! The outbox's SQL, as the relay uses it: claim a batch, bury undeliverable rows, check
//! the schema. (Schema changes themselves live in `migrations/`.)

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// The schema version (highest migration) this build needs.
pub const REQUIRED_VERSION: i32 = 2;

/// One claimed outbox row, borrowed from the rows PostgreSQL sent ([`RawClaim::rows`]):
/// decoding 5,000 rows into owned strings, key vectors and parsed JSON was 3,100
/// instructions per row, a sixth of a draining relay's (callgrind, BENCHMARKS.md item 15).
#[derive(Debug, Clone)]
pub struct OutboxRow<'a> {
    pub id: i64,
    pub event_id: Uuid,
    pub created_at: PgTimestamp,
    pub topic: Option<&'a str>,
    pub partition_key: &'a str,
    pub op: &'a str,
    pub keys: Vec<&'a str>,
    pub headers: JsonText<'a>,
}

/// A `timestamptz` as PostgreSQL sends it: microseconds since 2000-01-01 00:00:00 UTC, with
/// `i64::MAX` and `i64::MIN` for `infinity` and `-infinity`. Written back as it came
/// ([`bury`]). Not chrono's `DateTime`: its range (±262,143 years) is smaller than
/// timestamptz's, and decoding a row with `created_at = 'infinity'` into it made the relay
/// panic at that row on every claim; and through chrono, decoding and formatting cost 580
/// instructions per row (BENCHMARKS.md item 18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgTimestamp(pub i64);

/// 2000-01-01 00:00:00 UTC, PostgreSQL's epoch, in microseconds since the Unix epoch.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl PgTimestamp {
    /// Microseconds since the Unix epoch; None for ±infinity.
    pub fn unix_micros(self) -> Option<i64> {
        match self.0 {
            i64::MAX | i64::MIN => None,
            t => t.checked_add(PG_EPOCH_UNIX_MICROS),
        }
    }

    pub fn from_datetime(t: DateTime<Utc>) -> PgTimestamp {
        PgTimestamp(t.timestamp_micros() - PG_EPOCH_UNIX_MICROS)
    }
}

impl std::fmt::Display for PgTimestamp {
    /// As PostgreSQL prints it, for error messages: RFC 3339 where it can be, else
    /// `infinity`, `-infinity` or the microseconds since 2000-01-01.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            i64::MAX => f.write_str("infinity"),
            i64::MIN => f.write_str("-infinity"),
            t => match self
                .unix_micros()
                .and_then(DateTime::<Utc>::from_timestamp_micros)
            {
                Some(dt) => write!(f, "{}", dt.format("%Y-%m-%d %H:%M:%S%.6f+00")),
                None => write!(f, "{t} µs after 2000-01-01"),
            },
        }
    }
}

impl<'a> tokio_postgres::types::FromSql<'a> for PgTimestamp {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let raw: [u8; 8] = raw
            .try_into()
            .map_err(|_| "a timestamptz is 8 bytes in the binary format")?;
        Ok(PgTimestamp(i64::from_be_bytes(raw)))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::TIMESTAMPTZ
    }
}

impl tokio_postgres::types::ToSql for PgTimestamp {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0.to_be_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::TIMESTAMPTZ
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A `json` or `jsonb` value as the JSON text PostgreSQL sent, not parsed. An outbox row's
/// `headers` is almost always `{}`, which then costs nothing to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonText<'a>(pub &'a str);

impl JsonText<'_> {
    /// The object's members; an empty list for `{}` without parsing it. An error if the text
    /// is not a JSON object (the outbox's CHECK constraint makes that impossible there).
    pub fn object(&self) -> Result<serde_json::Map<String, serde_json::Value>, serde_json::Error> {
        if self.0 == "{}" {
            return Ok(serde_json::Map::new());
        }
        serde_json::from_str(self.0)
    }

    /// The value, for writing it back (`outbox_dead`).
    pub fn value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(self.0)
    }
}

impl<'a> tokio_postgres::types::FromSql<'a> for JsonText<'a> {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::Type;
        // jsonb's binary form is a version byte (1) and the JSON text; json's is the text.
        let text = if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, text)) => text,
                _ => return Err("unsupported jsonb encoding version".into()),
            }
        } else {
            raw
        };
        Ok(JsonText(std::str::from_utf8(text)?))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        use tokio_postgres::types::Type;
        *ty == Type::JSONB || *ty == Type::JSON
    }
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

/// Rows claimed by [`claim`], still as PostgreSQL sent them: enough to know how many and
/// the highest id (what the next claim needs) before decoding them with [`RawClaim::rows`].
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

    /// The claimed rows, decoded in place (borrowing their text), in id order; or the first
    /// row this client cannot decode. `Row::get` would panic there, and a panic at a row
    /// the next claim takes again stopped the relay for good (a `created_at` of
    /// `'infinity'` did, BENCHMARKS.md item 18); the CHECK constraints keep every column
    /// decodable, unless someone drops them.
    pub fn rows(&self) -> Result<Vec<OutboxRow<'_>>, Undecodable> {
        let mut out = Vec::with_capacity(self.0.len());
        for r in &self.0 {
            // The primary key (bigint, NOT NULL) always decodes.
            let id: i64 = r.get(0);
            let column = |index: usize, e: tokio_postgres::Error| Undecodable {
                id,
                error: format!(
                    "column {} of the row cannot be read ({}): invalidate its keys again with \
                     invalidator.invalidate(), then delete this row",
                    r.columns()[index].name(),
                    crate::db::chain(&e)
                ),
            };
            out.push(OutboxRow {
                id,
                event_id: r.try_get(1).map_err(|e| column(1, e))?,
                created_at: r.try_get(2).map_err(|e| column(2, e))?,
                topic: r.try_get(3).map_err(|e| column(3, e))?,
                partition_key: r.try_get(4).map_err(|e| column(4, e))?,
                op: r.try_get(5).map_err(|e| column(5, e))?,
                keys: r.try_get(6).map_err(|e| column(6, e))?,
                headers: r.try_get(7).map_err(|e| column(7, e))?,
            });
        }
        // RETURNING has no defined order.
        out.sort_unstable_by_key(|r| r.id);
        Ok(out)
    }
}

/// A claimed row this client cannot decode ([`RawClaim::rows`]), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    pub id: i64,
    pub error: String,
}

/// Runs the claim statement only. The relay holds its claim turn for this part and decodes
/// the rows ([`RawClaim::rows`]) after passing the turn on: decoding 5,000 rows' keys and
/// headers took milliseconds the next claim need not wait for.
pub async fn claim(
    tx: &Transaction<'_>,
    limit: i64,
    from_id: i64,
) -> Result<RawClaim, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(CLAIM).await?;
    Ok(RawClaim(tx.query(&stmt, &[&limit, &from_id]).await?))
}

/// Moves a claimed (already deleted) row to `outbox_dead` with the reason, in the same
/// transaction, so that it never blocks the rows behind it and is never lost.
pub async fn bury(
    tx: &Transaction<'_>,
    row: &OutboxRow<'_>,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    // jsonb text from PostgreSQL always parses; if it ever did not, the row keeps its place
    // in outbox_dead with empty headers rather than blocking the rows behind it.
    let headers = row
        .headers
        .value()
        .unwrap_or_else(|_| serde_json::Value::Object(Default::default()));
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
            &headers,
            &error,
        ],
    )
    .await?;
    Ok(())
}

/// Whether a claim failed because PostgreSQL cannot send a row's text as UTF-8 (SQLSTATE
/// 22021). That happens in a `SQL_ASCII` database, which stores any bytes: a key written
/// there in another encoding can never be read by a UTF-8 client, so its row would fail
/// every claim that reaches it, and stop the relay at that row for good.
pub fn is_unreadable_text(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::CHARACTER_NOT_IN_REPERTOIRE)
}

/// The `outbox_dead.error` of a row moved by [`bury_unreadable`].
pub const UNREADABLE_ERROR: &str = "the row's text is not valid UTF-8 (a SQL_ASCII database \
    holding bytes of another encoding), so no client can read it as text: invalidate its keys \
    again with invalidator.invalidate() written as UTF-8, then delete this row";

/// After a claim failed with [`is_unreadable_text`]: looks at the rows that claim would
/// have taken (up to `limit` from `from_id`, skipping rows other batches hold), one at a
/// time, and moves each one PostgreSQL cannot send as UTF-8 to `outbox_dead` inside the
/// database (the bytes are copied as they are, never through this client). Returns the ids
/// moved; the rows that can be read are left for the next claim. Slow (a round trip per
/// row), and only ever run after such a failure.
pub async fn bury_unreadable(
    tx: &mut Transaction<'_>,
    limit: i64,
    from_id: i64,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let ids: Vec<i64> = tx
        .query(
            "SELECT id FROM invalidator.outbox WHERE id >= $1 ORDER BY id LIMIT $2 \
             FOR UPDATE SKIP LOCKED",
            &[&from_id, &limit],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut buried = Vec::new();
    for id in ids {
        let savepoint = tx.savepoint("invalidator_read_check").await?;
        // The text columns, as text: PostgreSQL converts them for this client or fails.
        let read = savepoint
            .query_one(
                "SELECT topic, partition_key, op, keys::text, headers::text \
                 FROM invalidator.outbox WHERE id = $1",
                &[&id],
            )
            .await;
        match read {
            Ok(_) => savepoint.commit().await?,
            Err(e) if is_unreadable_text(&e) => {
                savepoint.rollback().await?;
                move_to_dead(tx, id, UNREADABLE_ERROR).await?;
                buried.push(id);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(buried)
}

/// Moves one outbox row to `outbox_dead` with `error`, inside the database: its values are
/// copied as they are, never through this client (which may be unable to read them). True
/// if the row was there to move.
pub async fn move_to_dead(
    tx: &Transaction<'_>,
    id: i64,
    error: &str,
) -> Result<bool, tokio_postgres::Error> {
    let moved = tx
        .execute(
            "WITH gone AS (DELETE FROM invalidator.outbox WHERE id = $1 RETURNING *)
             INSERT INTO invalidator.outbox_dead
                 (id, event_id, created_at, topic, partition_key, op, keys, headers, error)
             SELECT id, event_id, created_at, topic, partition_key, op, keys, headers, $2
             FROM gone
             ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error, failed_at = now()",
            &[&id, &error],
        )
        .await?;
    Ok(moved > 0)
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

/// Counts the outbox (rows a relay has claimed but not yet committed still count). The age
/// is the oldest finite `created_at`'s: PostgreSQL cannot subtract `'-infinity'` or
/// `'infinity'` ("cannot subtract infinite timestamps"), and one such row made `status` and
/// the relay's backlog gauge fail until the relay buried it.
pub async fn backlog(client: &impl GenericClient) -> Result<Backlog, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*),
                    COALESCE(EXTRACT(EPOCH FROM clock_timestamp()
                        - min(created_at) FILTER (WHERE isfinite(created_at))), 0)::float8
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::types::{FromSql, Type};

    #[test]
    /// jsonb arrives as a version byte and the text, json as the text; `{}` is not parsed,
    /// anything else is, and a foreign jsonb version is an error rather than garbage.
    fn json_text_reads_jsonb_and_json() {
        let jsonb = JsonText::from_sql(&Type::JSONB, b"\x01{\"a\": 1}").unwrap();
        assert_eq!(jsonb, JsonText(r#"{"a": 1}"#));
        assert_eq!(jsonb.object().unwrap()["a"], serde_json::json!(1));
        assert_eq!(
            JsonText::from_sql(&Type::JSON, b"{}")
                .unwrap()
                .object()
                .unwrap()
                .len(),
            0
        );
        assert!(JsonText::from_sql(&Type::JSONB, b"\x02{}").is_err());
        assert!(JsonText::from_sql(&Type::JSONB, b"").is_err());
        assert!(JsonText::from_sql(&Type::JSONB, b"\x01\xff").is_err());
        assert!(JsonText("[1]").object().is_err());
        assert!(!<JsonText as FromSql>::accepts(&Type::TEXT));
    }
}
