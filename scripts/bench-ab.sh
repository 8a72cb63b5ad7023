#!/usr/bin/env bash
# A/B of two builds of the relay, alternating, so that both see the same phases of a noisy
# machine (BENCHMARKS.md, items 12 and 14). Each directory holds an `invalidator` and an
# `invalidator-bench` built from one revision, e.g.
#   cargo build --release --bins && mkdir -p /tmp/a && cp target/release/invalidator{,-bench} /tmp/a/
# Usage: scripts/bench-ab.sh DIR_A DIR_B [ROUNDS] [invalidator-bench args…]
# The memory-engine tansu on 127.0.0.1:9093 is restarted empty before every run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
a="${1:?usage: $0 DIR_A DIR_B [ROUNDS] [bench args…]}"
b="${2:?usage: $0 DIR_A DIR_B [ROUNDS] [bench args…]}"
rounds="${3:-5}"
shift $(( $# < 3 ? $# : 3 ))
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--scenarios relay --rows 200000 --batches 5000 --in-flight 4)
pidfile="$HOME/.cache/invalidator-tools/run/tansu-9093/tansu.pid"
for dir in "$a" "$b"; do
    for bin in invalidator invalidator-bench; do
        [ -x "$dir/$bin" ] || { echo "bench-ab: $dir/$bin is missing: copy both binaries of one build there" >&2; exit 2; }
    done
done
for round in $(seq 1 "$rounds"); do
    for dir in "$a" "$b"; do
        if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; sleep 1; fi
        if ! out="$(bash "$here/services.sh" up 2>&1)"; then
            echo "$out" >&2
            exit 1
        fi
        echo "== round $round $dir $(date -u +%T)"
        KAFKA_BROKERS=127.0.0.1:9093 "$dir/invalidator-bench" "${args[@]}" 2>/dev/null \
            | grep -E '^\| [0-9]|^best relay'
    done
done
