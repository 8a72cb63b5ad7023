//! PostgreSQL connections, and the errors a user hits while making one, explained.
//!
//! Every SQL statement invalidator runs lives in this module or in `migrations/`, so the
//! database contract can be read in one place.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

use crate::redact::Redacted;

/// How long a connection attempt may take before it counts as "server unreachable".
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection to PostgreSQL could not be made, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DATABASE_URL is not a valid PostgreSQL connection string ({url}): {source}")]
    BadUrl {
        url: Redacted,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "cannot reach the PostgreSQL server at {url}: is it running and listening there? \
         (check host and port, firewalls, and `pg_isready -h HOST -p PORT`)"
    )]
    Unreachable {
        url: Redacted,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "PostgreSQL refused the login of role {user:?} at {url}: check the user and password in \
         DATABASE_URL, and that pg_hba.conf allows this client"
    )]
    AuthFailed {
        url: Redacted,
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "database {database:?} does not exist on the server at {url}: create it \
         (`createdb {database}`) or point DATABASE_URL at the application's database"
    )]
    DatabaseMissing {
        url: Redacted,
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("connecting to PostgreSQL at {url} failed")]
    Other {
        url: Redacted,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// Whether trying again later may succeed (server down or restarting), as opposed to a
    /// configuration mistake that only an operator can fix.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Unreachable { .. } => true,
            ConnectError::Other { source, .. } => matches!(
                source.code(),
                Some(c) if *c == SqlState::CANNOT_CONNECT_NOW || *c == SqlState::TOO_MANY_CONNECTIONS
                    || *c == SqlState::ADMIN_SHUTDOWN
            ),
            _ => false,
        }
    }
}

/// Parses a connection string (URL or libpq key/value form), setting a connect timeout
/// and an application name unless the string sets them.
pub fn parse_config(url: &Redacted) -> Result<Config, ConnectError> {
    let mut config: Config = url
        .expose()
        .parse()
        .map_err(|source| ConnectError::BadUrl {
            url: url.clone(),
            source,
        })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("invalidator");
    }
    Ok(config)
}

/// Opens one connection and spawns its driver task. A connection error after start-up is
/// logged by the driver and surfaces as an error on the client's next query.
pub async fn connect(url: &Redacted) -> Result<Client, ConnectError> {
    let config = parse_config(url)?;
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| classify_connect_error(url, &config, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// Sorts a failed connection attempt into the cases a user can act on.
pub fn classify_connect_error(
    url: &Redacted,
    config: &Config,
    source: tokio_postgres::Error,
) -> ConnectError {
    let url = url.clone();
    let user = config.get_user().unwrap_or("").to_string();
    match source.code() {
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            ConnectError::AuthFailed { url, user, source }
        }
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
            let database = config.get_dbname().unwrap_or(&user).to_string();
            ConnectError::DatabaseMissing {
                url,
                database,
                source,
            }
        }
        Some(_) => ConnectError::Other { url, source },
        // No SQLSTATE: the failure happened below the protocol (refused, DNS, timeout).
        None if is_io_failure(&source) => ConnectError::Unreachable { url, source },
        None => ConnectError::Other { url, source },
    }
}

/// True when the error chain holds an I/O error or the driver's own timeout.
fn is_io_failure(e: &tokio_postgres::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<std::io::Error>() {
            return true;
        }
        cur = err.source();
    }
    // tokio-postgres reports its connect timeout and a closed socket without a source.
    let text = e.to_string();
    text.contains("timed out")
        || text.contains("connection closed")
        || text.contains("error connecting")
}

/// Renders an error and its whole `source()` chain on one line, for logs and exit messages.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = err.source();
    }
    out
}
