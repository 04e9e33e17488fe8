#!/usr/bin/env bash
# Fuzzes every decoder of untrusted bytes (the targets in fuzz/fuzz_targets/,
# docs/fuzzing.md) for SECONDS_PER_TARGET seconds each (default 30): installs
# cargo-fuzz if it is missing, builds the targets, writes the seed corpora from
# the project's own encoders (fuzz/src/bin/gen_seeds.rs), runs the targets
# (FUZZ_JOBS at a time, default 2), prints the executions of each, and exits
# non-zero if any target crashed, failed an assertion or hung.
#
#   scripts/fuzz.sh            # 30 s per target (what CI runs)
#   scripts/fuzz.sh 3600       # an hour per target
#   FUZZ_TARGETS="wal_segment snapshot_load" scripts/fuzz.sh 600
#
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 7200   # each target until 10^7 executions
#                                            # (or 2 h, whichever comes first)
#
# Environment: FUZZ_RUNS (stop a target after this many executions),
# FUZZ_SANITIZER (address, the default, or none), FUZZ_JOBS,
# FUZZ_TARGETS (a subset), FUZZ_SKIP_BUILD=1 (use the binaries already built).
# libFuzzer's compiler flags are nightly-only: RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-2}
export RUSTC_BOOTSTRAP=1

if [ "${FUZZ_SKIP_BUILD:-0}" != 1 ]; then
  if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz: installing cargo-fuzz (crates.io)"
    cargo install cargo-fuzz --locked
  fi
  cargo fuzz build -s "$sanitizer"
fi

triple=$(rustc -vV | sed -n 's/^host: //p')
bin=fuzz/target/$triple/release
targets=${FUZZ_TARGETS:-$(cd fuzz/fuzz_targets && ls -- *.rs | sed 's/\.rs$//')}

TINKERDB_FUZZ_SEEDS=fuzz/corpus "$bin/gen_seeds"

logs=fuzz/artifacts/logs
mkdir -p "$logs"
run_one() {
  local target=$1
  mkdir -p "fuzz/artifacts/$target" "fuzz/corpus/$target"
  # -timeout: an input taking over 10 s is a hang, reported as a failure.
  if "$bin/$target" "fuzz/corpus/$target" \
      -max_total_time="$seconds" ${runs:+-runs="$runs"} -timeout=10 -print_final_stats=1 \
      -artifact_prefix="fuzz/artifacts/$target/" >"$logs/$target.log" 2>&1; then
    echo "ok" >"$logs/$target.status"
  else
    echo "failed" >"$logs/$target.status"
  fi
}
export -f run_one
runs=${FUZZ_RUNS:-}
export bin seconds logs runs
rm -f "$logs"/*.status
echo "fuzz: $(echo $targets | wc -w) targets, ${seconds} s each, $jobs at a time, sanitizer $sanitizer"
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'run_one {}'

passed=0
failed=0
printf '%-16s %14s  %s\n' target executions result
for target in $targets; do
  status=$(cat "$logs/$target.status" 2>/dev/null || echo "failed")
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target.log" | tail -1)
  printf '%-16s %14s  %s\n' "$target" "${execs:-?}" "$status"
  if [ "$status" = ok ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "---- $target: last lines of $logs/$target.log"
    grep -v -E '^#[0-9]+' "$logs/$target.log" | tail -40
    ls "fuzz/artifacts/$target/" 2>/dev/null | sed "s|^|  crash input: fuzz/artifacts/$target/|"
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
