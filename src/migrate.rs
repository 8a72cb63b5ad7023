//! `invalidator migrate`: applies the embedded SQL files of `migrations/` to an existing
//! database.
//!
//! All pending files run in one transaction under an advisory lock, so two `migrate`
//! processes started together both succeed and the files apply once. Each applied file is
//! recorded in `invalidator.schema_migrations` with the SHA-256 of its text; a recorded
//! checksum that differs from the embedded file is refused, because it means the schema the
//! database has is not the one this binary was built against.
//!
//! Files applied by another tool (psql, Flyway) record themselves with a NULL checksum; this
//! command re-runs such a file (every file is idempotent) and records the checksum, which
//! is called adopting it.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// One embedded migration file.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    /// The file name under `migrations/`, e.g. `V001__outbox.sql`.
    pub file: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// SHA-256 of the file's text, hex.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

macro_rules! migration {
    ($version:literal, $name:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $name,
            file: $file,
            sql: include_str!(concat!("../migrations/", $file)),
        }
    };
}

/// Every migration, in order. A test checks that this list and `migrations/` agree.
pub static MIGRATIONS: &[Migration] = &[
    migration!(1, "outbox", "V001__outbox.sql"),
    migration!(2, "notify", "V002__notify.sql"),
];

/// The advisory lock every `migrate` takes: the bytes of "invalida" as a big-endian i64.
pub const LOCK_KEY: i64 = 0x696e_7661_6c69_6461;

/// What `migrate` should do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Print the SQL that would run instead of running it.
    pub dry_run: bool,
    /// How long to wait for another `migrate` (or a conflicting transaction) before giving up.
    pub lock_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dry_run: false,
            lock_timeout: Duration::from_secs(60),
        }
    }
}

/// What a run did (or, with `dry_run`, would do).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Files applied for the first time.
    pub applied: Vec<&'static Migration>,
    /// Files another tool had applied; re-run and given their checksum.
    pub adopted: Vec<&'static Migration>,
    /// The highest version the database is at afterwards.
    pub version: i32,
}

impl Outcome {
    pub fn nothing_to_do(&self) -> bool {
        self.applied.is_empty() && self.adopted.is_empty()
    }
}

/// Why `migrate` stopped. Nothing was changed in the database when it returns an error.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "migration {file} was applied with checksum {recorded}, but this binary embeds {embedded}: \
         an applied migration must never change; restore the original file or use the \
         invalidator release that applied it"
    )]
    ChecksumMismatch {
        file: &'static str,
        recorded: String,
        embedded: String,
    },
    #[error(
        "the database has migration {version} ({name}), which this binary does not know: it was \
         migrated by a newer invalidator; run that version's `migrate` and daemons instead"
    )]
    DatabaseAhead { version: i32, name: String },
    #[error(
        "role {user:?} may not create schema `invalidator` or its objects in database {database:?}: \
         run `invalidator migrate` as the database owner, or have an owner run \
         `GRANT CREATE ON DATABASE \"{database}\" TO \"{user}\"`"
    )]
    NoPrivilege {
        user: String,
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "waited {timeout:?} for the migration lock: another `invalidator migrate`, or a long \
         transaction on invalidator's tables, is holding it; try again when it has finished"
    )]
    LockTimeout {
        timeout: Duration,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("applying migration {file} failed")]
    Apply {
        file: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("reading the migration history failed")]
    Query(#[source] tokio_postgres::Error),
}

/// Applies every pending migration (or, with `dry_run`, computes them) on `client`.
pub async fn run(client: &mut Client, options: &Options) -> Result<Outcome, MigrateError> {
    let who = client
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .map_err(MigrateError::Query)?;
    let (user, database): (String, String) = (who.get(0), who.get(1));

    let tx = client.transaction().await.map_err(MigrateError::Query)?;
    // SET LOCAL: the timeout applies to this transaction only. Advisory locks honour it.
    let timeout_ms = options.lock_timeout.as_millis().max(1);
    tx.batch_execute(&format!("SET LOCAL lock_timeout = {timeout_ms}"))
        .await
        .map_err(MigrateError::Query)?;
    if !options.dry_run {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(|source| {
                if source.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                    MigrateError::LockTimeout {
                        timeout: options.lock_timeout,
                        source,
                    }
                } else {
                    MigrateError::Query(source)
                }
            })?;
    }

    let applied = applied_versions(&tx).await?;
    let mut outcome = Outcome::default();
    for (version, name, checksum) in &applied {
        let Some(m) = MIGRATIONS.iter().find(|m| m.version == *version) else {
            return Err(MigrateError::DatabaseAhead {
                version: *version,
                name: name.clone(),
            });
        };
        match checksum {
            Some(recorded) if *recorded != m.checksum() => {
                return Err(MigrateError::ChecksumMismatch {
                    file: m.file,
                    recorded: recorded.clone(),
                    embedded: m.checksum(),
                });
            }
            Some(_) => {}
            None => outcome.adopted.push(m),
        }
    }
    for m in MIGRATIONS {
        if !applied.iter().any(|(v, _, _)| *v == m.version) {
            outcome.applied.push(m);
        }
    }
    outcome.version = MIGRATIONS.last().map_or(0, |m| m.version);

    if options.dry_run {
        tx.rollback().await.map_err(MigrateError::Query)?;
        return Ok(outcome);
    }

    let mut to_run: Vec<&'static Migration> = outcome
        .adopted
        .iter()
        .chain(&outcome.applied)
        .copied()
        .collect();
    to_run.sort_by_key(|m| m.version);
    for m in to_run {
        let started = Instant::now();
        tx.batch_execute(m.sql)
            .await
            .map_err(|source| apply_error(m, &user, &database, source))?;
        tx.execute(
            "INSERT INTO invalidator.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)
             ON CONFLICT (version) DO UPDATE SET checksum = EXCLUDED.checksum",
            &[&m.version, &m.name, &m.checksum()],
        )
        .await
        .map_err(|source| apply_error(m, &user, &database, source))?;
        tracing::info!(
            file = m.file,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "migration applied"
        );
    }
    tx.commit().await.map_err(MigrateError::Query)?;
    Ok(outcome)
}

fn apply_error(
    m: &'static Migration,
    user: &str,
    database: &str,
    source: tokio_postgres::Error,
) -> MigrateError {
    if source.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        MigrateError::NoPrivilege {
            user: user.to_string(),
            database: database.to_string(),
            source,
        }
    } else {
        MigrateError::Apply {
            file: m.file,
            source,
        }
    }
}

/// `(version, name, checksum)` of every recorded migration; empty when the history table
/// does not exist yet.
async fn applied_versions(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<Vec<(i32, String, Option<String>)>, MigrateError> {
    let exists: bool = tx
        .query_one(
            "SELECT to_regclass('invalidator.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(MigrateError::Query)?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = tx
        .query(
            "SELECT version, name, checksum FROM invalidator.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(MigrateError::Query)?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// Every file in migrations/ is embedded, numbered by its name, in order, with no gap.
    fn embedded_list_matches_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations/ exists")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<&str> = MIGRATIONS.iter().map(|m| m.file).collect();
        assert_eq!(
            files, embedded,
            "add new files in migrations/ to MIGRATIONS"
        );
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                m.version,
                i as i32 + 1,
                "versions are 1, 2, 3, … without gaps"
            );
            assert_eq!(m.file, format!("V{:03}__{}.sql", m.version, m.name));
            assert!(
                m.sql
                    .contains(&format!("VALUES ({}, '{}')", m.version, m.name)),
                "{} must record itself in schema_migrations for psql/Flyway users",
                m.file
            );
        }
    }
}
