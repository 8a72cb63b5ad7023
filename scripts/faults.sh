#!/usr/bin/env bash
# The fault matrix (issue 7): writers commit bump invalidations while, in turn, the relay is
# killed with SIGKILL, the broker is stopped and restarted, Redis is killed and restarted
# (AOF, appendfsync always), the relay's PostgreSQL connections are terminated (the shared
# server itself is not restarted), and the consumer is killed with SIGKILL. After each fault
# it waits for quiescence and prints events, lost, applied twice, records published twice
# and duplicate deliveries the consumer skipped. Fails if an event is lost or applied twice.
# About 2 minutes; starts its own tansu (sqlite, temp dir) and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up   # PostgreSQL (shared), and the tansu binary it builds once
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
exec cargo test --locked --test fault_matrix -- --nocapture
