#!/usr/bin/env bash
# The one test command (README): installs and starts whatever is missing, then runs every
# test against the real services. Works on a fresh Debian machine with a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build prerequisites of the bundled librdkafka (with OpenSSL for SASL/SSL), and valgrind.
missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
# The bench's cost scenario counts instructions with callgrind; its smoke test runs it.
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test: installing build prerequisites: ${missing[*]}" >&2
  if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bash scripts/services.sh up

export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}            # durable (sqlite) broker
export KAFKA_FAST_BROKERS=${KAFKA_FAST_BROKERS:-127.0.0.1:9093}  # memory broker: volume tests
export INVALIDATOR_TOOLS=${INVALIDATOR_TOOLS:-$HOME/.cache/invalidator-tools}

# --lib --bins --tests: not --all-targets, which would also run the benchmark harnesses.
cargo test --locked --lib --bins --tests --no-fail-fast "$@"
