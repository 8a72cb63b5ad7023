#!/usr/bin/env bash
# Starts, idempotently, the services invalidator's tests talk to, installing what is missing:
#   PostgreSQL on 127.0.0.1:5432 (database `test`, trust auth on loopback),
#   Redis on 127.0.0.1:6379,
#   tansu (a Kafka-protocol broker) on 127.0.0.1:9092 with the sqlite storage engine, which
#     keeps every record when a consumer group resumes (tests that restart consumers), and
#   tansu on 127.0.0.1:9093 with the memory engine: fast, for volume and latency tests that
#     never resume a group (it skips records of a batch a group resumes in the middle of).
# Each one that already answers is left alone. Safe to run any number of times.
#
#   scripts/services.sh          start what is not running
#   scripts/services.sh stop     stop the tansu brokers this script started
#
# Environment: INVALIDATOR_TOOLS (cache dir for the tansu binary and broker data,
# default ~/.cache/invalidator-tools).
set -euo pipefail

TOOLS=${INVALIDATOR_TOOLS:-$HOME/.cache/invalidator-tools}
TANSU_VERSION=0.6.0
TANSU=$TOOLS/tansu-$TANSU_VERSION/bin/tansu

say() { printf 'services: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root (or sudo) to run: $*"; fi
}

apt_updated=
apt_install() {
  command -v apt-get >/dev/null || die "$* missing and there is no apt-get here: install it by hand"
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_closed() { ! port_open "$1"; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${secs}s"
}

postgres() {
  if ! command -v pg_ctlcluster >/dev/null || ! command -v psql >/dev/null; then
    apt_install postgresql postgresql-client
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    local ver
    ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    [ -n "$ver" ] || die "no PostgreSQL cluster under /etc/postgresql: create one with pg_createcluster"
    say "starting PostgreSQL $ver"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start
    wait_for 30 PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
  fi
  # Tests log in as postgres over loopback without a password. A fresh Debian cluster asks
  # for one (scram): allow trust on loopback only, which is what a test machine wants.
  if ! psql -w -X -q -h 127.0.0.1 -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
    local ver hba
    ver=$(ls /etc/postgresql | sort -V | tail -n 1)
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    say "allowing trust auth on loopback in $hba (test machine)"
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
    wait_for 10 "PostgreSQL login" psql -w -X -q -h 127.0.0.1 -U postgres -d postgres -c 'SELECT 1'
  fi
  if ! psql -w -X -qAt -h 127.0.0.1 -U postgres -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    psql -w -X -q -h 127.0.0.1 -U postgres -d postgres -c 'CREATE DATABASE test' >/dev/null
  fi
  say "PostgreSQL ready on 127.0.0.1:5432"
}

redis() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server redis-tools
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    say "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for 10 Redis sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG'
  fi
  say "Redis ready on 127.0.0.1:6379"
}

# The tansu binary is built once from crates.io (about 9 minutes on 2 cores) and cached.
tansu_binary() {
  [ -x "$TANSU" ] && return 0
  command -v cargo >/dev/null || die "cargo is needed to build the tansu broker"
  say "building tansu $TANSU_VERSION once into $TOOLS (about 9 minutes on 2 cores)"
  mkdir -p "$TOOLS"
  cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql \
    --root "$TOOLS/tansu-$TANSU_VERSION" >"$TOOLS/tansu-install.log" 2>&1 \
    || { tail -n 30 "$TOOLS/tansu-install.log" >&2; die "building tansu failed (log: $TOOLS/tansu-install.log)"; }
}

# Whether the broker on PORT answers a Metadata request (v1, all topics) within 3 s. A port
# that accepts connections is not enough: tansu 0.6.0's sqlite engine can panic in its
# idempotence check and then keep listening while failing every request.
kafka_answers() { # kafka_answers PORT
  local reply
  reply=$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    # size 17: api_key 3 (Metadata), version 1, correlation id 1, client id "inv", topics -1
    printf "\x00\x00\x00\x11\x00\x03\x00\x01\x00\x00\x00\x01\x00\x03inv\xff\xff\xff\xff" >&3
    head -c 8 <&3 | od -An -tx1' _ "$1" 2>/dev/null)
  # The reply starts with its size, then our correlation id.
  [[ $reply =~ 00\ 00\ 00\ 01$ ]]
}

kafka() { # kafka PORT ENGINE
  local port=$1 engine=$2 dir=$TOOLS/run/tansu-$1
  if port_open "$port"; then
    if kafka_answers "$port"; then say "a broker already listens on 127.0.0.1:$port"; return 0; fi
    [ -f "$dir/tansu.pid" ] && kill -0 "$(cat "$dir/tansu.pid")" 2>/dev/null \
      || die "something listens on 127.0.0.1:$port but does not answer Kafka requests, and it is not the tansu this script started; stop it and run again"
    local aside
    aside="$dir/wedged-$(date -u +%Y%m%dT%H%M%SZ)"
    say "the tansu on 127.0.0.1:$port does not answer (its log: $dir/tansu.log); restarting it on fresh storage, the old files kept in $aside"
    kill -9 "$(cat "$dir/tansu.pid")" 2>/dev/null || true
    rm -f "$dir/tansu.pid"
    wait_for 10 "port $port to close" port_closed "$port"
    mkdir -p "$aside"
    mv "$dir"/tansu.db* "$dir/tansu.log" "$aside/" 2>/dev/null || true
  fi
  tansu_binary
  mkdir -p "$dir"
  say "starting tansu on 127.0.0.1:$port (storage $engine in $dir)"
  # A relative sqlite path: the database lives in $dir.
  # `cd` first and on its own: with `cd && nohup … &` the `&` would background a subshell
  # and $! would be that subshell, not tansu.
  (cd "$dir" || exit 1
   nohup "$TANSU" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "$engine" >"$dir/tansu.log" 2>&1 &
   echo $! >"$dir/tansu.pid")
  wait_for 60 "tansu (log: $dir/tansu.log)" port_open "$port"
  say "tansu ready on 127.0.0.1:$port"
}

stop_kafka() { # stop_kafka PORT
  local pidfile=$TOOLS/run/tansu-$1/tansu.pid
  if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
}

case "${1:-up}" in
  up) postgres; redis; kafka 9092 sqlite://tansu.db; kafka 9093 memory://tansu/ ;;
  stop) stop_kafka 9092; stop_kafka 9093 ;;
  *) die "usage: $0 [up|stop]" ;;
esac
