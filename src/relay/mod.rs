//! The relay daemon (DESIGN §2): claims outbox rows, publishes them to Kafka, deletes them,
//! one transaction per batch.

mod cursor;
mod daemon;
mod publish;
mod settings;

pub use cursor::{Cursor, Scan, HINT_LAG};
pub use daemon::{run, Health, RelayError, TRACE_TARGET};
pub use publish::{classify, producer_config, DeliveryClass};
pub use settings::{Failpoint, RelaySettings};

/// Locks a mutex that no holder can leave poisoned (no code panics while holding one).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
