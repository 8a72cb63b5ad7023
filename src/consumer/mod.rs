//! The consumer daemon, `invalidator consume` (DESIGN §3): Kafka → Redis, idempotent, with
//! a dead-letter topic for what can never apply.
//!
//! - [`settings`]: the validated configuration, built from the command line.
//! - [`daemon`]: the poll → apply → store-offset loop, [`run`].
//! - [`dlq`]: dead-letter records and their headers (DESIGN §5).
//! - [`error`]: why the daemon stops, and why a record is dead-lettered.
//! - [`health`]: readiness, counters and the `/healthz` `/readyz` `/metrics` endpoint.

pub mod daemon;
pub mod dlq;
pub mod error;
pub mod health;
pub mod settings;

pub use daemon::run;
pub use error::{ConsumeError, DlqReason};
pub use health::{Health, Stats};
pub use settings::ConsumerSettings;
