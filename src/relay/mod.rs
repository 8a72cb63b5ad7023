//! The relay daemon (DESIGN §2): claims outbox rows, publishes them to Kafka, deletes them,
//! one transaction per batch.

mod cursor;
mod daemon;
mod publish;
mod settings;

pub use cursor::{Cursor, HINT_LAG};
pub use daemon::{run, Health, RelayError, TRACE_TARGET};
pub use publish::{classify, producer_config, DeliveryClass};
pub use settings::{Failpoint, RelaySettings};
