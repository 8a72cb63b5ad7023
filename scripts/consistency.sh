#!/usr/bin/env bash
# The full-size consistency check (issue 7): `invalidator run` on a private tansu broker
# (sqlite, temp dir), 4 writers, 4 guarded and 4 plain cache-aside readers on 200 rows,
# 1,000,000 reads per reader family, checkpoints every 3 s; prints the figures and fails if
# a guarded key is stale. About 10 minutes on 2 shared cores (debug build). The bounded
# version (150,000 reads per family) runs in `scripts/test.sh` as
# `guarded_fill_is_never_stale`.
#
#   scripts/consistency.sh                         # the full run
#   CONSISTENCY_READS=3000000 scripts/consistency.sh   # any field: ROWS, WRITERS,
#       WRITE_PAUSE_MS, READERS, READS, SLOW_ONE_IN, CHECKPOINT_MS
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up   # PostgreSQL, Redis, and the tansu binary it builds once
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
exec cargo test --locked --test consistency -- --ignored --exact guarded_fill_is_never_stale_full --nocapture
