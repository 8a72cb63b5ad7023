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
//! - [`pipeline`]: `invalidator run`, relay and consumer in one process, with an embedded
//!   broker when no Kafka is given.
//! - [`metrics`]: metric names, readiness, and the `/metrics` `/healthz` `/readyz` endpoint.
//! - [`dlq`]: `invalidator dlq list|replay`; [`status`]: backlog, lag and DLQ depth;
//!   [`check`]: validate a role's configuration and reach its services.
//! - [`cli`]: the command line; [`telemetry`]: logging; [`redact`]: secret-free URLs.
//!
//! The contract the code follows is `docs/DESIGN.md`.

pub mod cache;
pub mod check;
pub mod cli;
pub mod consumer;
pub mod db;
pub mod dlq;
pub mod kafka;
pub mod keys;
pub mod metrics;
pub mod migrate;
pub mod outbox;
pub mod pipeline;
pub mod redact;
pub mod relay;
pub mod retry;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod wire;
