#!/usr/bin/env bash
# Runs the two fuzz targets (fuzz/, issue 7) for a bounded time each and prints how many
# inputs each one executed; exits non-zero if either finds a crash (a panic: a broken
# invariant), whose input libFuzzer saves under fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh            60 s per target
#   scripts/fuzz.sh 600        10 minutes per target
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Seeds: fuzz/corpus/<target>/seed-* (committed). Inputs libFuzzer finds go to
# fuzz/corpus-generated/<target>/ (ignored by git) and are reused by the next run.
# No sanitizer (`-s none`): the code under test is safe Rust, so AddressSanitizer would only
# halve the executions; debug assertions and overflow checks stay on (cargo-fuzz's default).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
targets=(decode key_policy)
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2; exit 1; }

log=$(mktemp)
if ! cargo +nightly fuzz build -s none >"$log" 2>&1; then
  tail -n 30 "$log" >&2; echo "fuzz: building the targets failed (log: $log)" >&2; exit 2
fi
rm -f "$log"
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus-generated/$t" "artifacts/$t"
  log=$(mktemp)
  # The first corpus directory receives new inputs; the seed directory is only read.
  # -max_len 8192: room for keys over the 1024-byte limit.
  if cargo +nightly fuzz run -s none "$t" "corpus-generated/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
  fi
  execs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  rate=$(grep -m1 '^stat::average_exec_per_sec' "$log" | awk '{print $2}')
  echo "fuzz: $t: $result, ${execs:-?} executions in ${seconds}s (${rate:-?}/s), corpus $(ls "corpus-generated/$t" | wc -l) generated inputs"
  if [ "$result" = CRASH ]; then
    grep -E "panicked|Test unit written|SUMMARY" "$log" | head -n 20
    echo "fuzz: full log: $log"
  else
    rm -f "$log"
  fi
done
exit $status
