//! The consumer daemon, `invalidator consume` (DESIGN §3): Kafka → Redis, idempotent, with
//! a dead-letter topic for what can never apply.
//!
//! - [`settings`]: the validated configuration, built from the command line.
//! - [`daemon`]: the poll → apply → store-offset loop, [`run`].
//! - [`dlq`]: dead-letter records and their headers (DESIGN §5).
//! - [`error`]: why the daemon stops, and why a record is dead-lettered.

pub mod daemon;
pub mod dlq;
pub mod error;
pub mod settings;

pub use daemon::{run, TRACE_TARGET};
pub use error::{ConsumeError, DlqReason};
/// Readiness and metrics of a running consumer (served by [`crate::metrics::serve`]).
pub type Health = crate::metrics::Health<crate::metrics::ConsumerMetrics>;
pub use settings::ConsumerSettings;
