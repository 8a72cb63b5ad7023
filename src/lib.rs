//! invalidator: the transactional-outbox pattern for cache invalidation.
//!
//! ```text
//!  app transaction ──► invalidator.outbox ──► relay ──► Kafka topic ──► consumer ──► Redis
//!  (domain rows + outbox                      (claim,    (key = partition_key)  (UNLINK /
//!   row, one COMMIT)                           publish,                        guarded bump)
//!                                              delete)            poison ──► <topic>.dlq
//! ```
//!
//! Map of the crate (data flows one way, top to bottom):
//! - [`migrate`] and `migrations/`: schema `invalidator`, `invalidator.invalidate()`.
//! - [`db`]: PostgreSQL connections and the errors users hit making them.
//! - [`outbox`]: the outbox SQL the relay runs (claim, bury, schema check).
//! - [`relay`]: the relay daemon, outbox → Kafka ([`relay::run`]).
//! - [`wire`]: the record format shared by relay, consumer and DLQ tools (pure).
//! - [`kafka`]: librdkafka configuration, `-X` pass-through, topic checks.
//! - [`retry`]: backoff and once-per-state-change logging; [`shutdown`]: signals and grace.
//! - [`consumer`]: `invalidator consume`, Kafka → Redis with a dead-letter topic; [`cache`]:
//!   every Redis command and Lua script (apply, guard naming, guarded fill); [`keys`]: the
//!   key policy.
//! - [`cli`]: the command line; [`telemetry`]: logging; [`redact`]: secret-free URLs.
//!
//! The contract the code follows is `docs/DESIGN.md`.

pub mod cache;
pub mod cli;
pub mod consumer;
pub mod db;
pub mod kafka;
pub mod keys;
pub mod migrate;
pub mod outbox;
pub mod redact;
pub mod relay;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod wire;
