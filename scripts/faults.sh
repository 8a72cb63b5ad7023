#!/usr/bin/env bash
# The fault matrix (issue 7): writers commit bump invalidations while, in turn, the relay is
# killed with SIGKILL, the broker is stopped and restarted, Redis is killed and restarted
# (AOF, appendfsync always), a PostgreSQL server of the test's own is crashed (pg_ctl stop
# -m immediate) and restarted, and the consumer is killed with SIGKILL. After each fault
# it waits for quiescence and prints events, lost, applied twice, records published twice
# and duplicate deliveries the consumer skipped. Fails if an event is lost or applied twice.
# About 2 minutes; starts its own PostgreSQL (initdb, temp dir), tansu (sqlite, temp dir)
# and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up   # PostgreSQL's binaries, and the tansu binary it builds once
exec cargo test --locked --test fault_matrix -- --nocapture
