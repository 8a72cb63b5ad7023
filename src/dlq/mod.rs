//! `invalidator dlq list|replay`: reading and replaying the dead-letter topic (DESIGN §5).
//!
//! - [`record`]: one dead-letter record parsed (headers, decoded value); pure.
//! - [`filter`]: the `--reason/--since/…` filters and the replay group's name; pure.
//! - [`read`]: a snapshot reader of the DLQ (assigned partitions, up to the start's end).
//! - [`print`]: the table and JSON lines.
//! - [`list`] and [`replay`]: the two commands.

// A DlqError is built once, when a command stops, never on a hot path: boxing its Kafka
// errors to please `result_large_err` would only add noise.
#![allow(clippy::result_large_err)]

mod error;
pub mod filter;
mod list;
pub mod print;
pub mod read;
pub mod record;
mod replay;

pub use error::DlqError;
pub use list::list;
pub use replay::replay;
