#!/usr/bin/env bash
# The long fuzzing run of issue 6: runs one libFuzzer target until it has
# executed RUNS inputs (default 10 million) in total, spread over JOBS
# processes (default: one per core), growing a local corpus that is not
# committed. Fails on the first crash, leak, timeout or out-of-memory, and
# ends with the executions each process made. A SIGINT to the fuzzers
# (pkill -INT -f fuzz_<target>) stops the run early: exit 130, with the
# executions made so far.
#   scripts/build.sh asan
#   scripts/fuzz-long.sh open_read                    # 10M executions
#   RUNS=1000000 JOBS=1 scripts/fuzz-long.sh check
# The corpus and crashing inputs go to $FUZZ_DIR (default
# /var/tmp/qcow2j-fuzz/<target>); logs to $FUZZ_DIR/fuzz-<n>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz-long.sh header|open_read|check|journal}
build=${FUZZ_BUILD_DIR:-build-asan}
runs=${RUNS:-10000000}
jobs=${JOBS:-$(nproc)}
dir=${FUZZ_DIR:-/var/tmp/qcow2j-fuzz/$target}
bin="$build/fuzz/fuzz_$target"
[ -x "$bin" ] || { echo "fuzz-long: $bin is missing (run scripts/build.sh asan)" >&2; exit 1; }
mkdir -p "$dir/corpus"
per_job=$(( (runs + jobs - 1) / jobs ))
start=$(date +%s)
pids=()
for ((n = 0; n < jobs; n++)); do
  # Each process runs its share with its own seed; they share the corpus
  # directory, so inputs one finds the others pick up when they reload it.
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$bin" -runs="$per_job" -seed=$((n + 1)) -reload=60 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$dir/" "$dir/corpus" "fuzz/corpus/$target" \
    >"$dir/fuzz-$n.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
total=0
for ((n = 0; n < jobs; n++)); do
  e=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/fuzz-$n.log" | tail -1)
  echo "fuzz-long: $target process $n: ${e:-?} executions"
  total=$((total + ${e:-0}))
done
secs=$(( $(date +%s) - start ))
# libFuzzer exits 72 (-interrupted_exitcode) when stopped by SIGINT: an
# early stop, not a finding, unless it left an input behind.
findings=$(ls "$dir" | grep -E '^(crash|leak|timeout|oom)-' | head -1 || true)
if [ "$rc" -eq 72 ] && [ -z "$findings" ]; then
  echo "fuzz-long: $target interrupted: $total executions in ${secs}s, no crash, leak, timeout or OOM"
  exit 130
fi
if [ "$rc" -ne 0 ]; then
  echo "fuzz-long: $target FAILED (exit $rc); see $dir/fuzz-*.log and $dir/crash-* $dir/leak-* $dir/timeout-* $dir/oom-*" >&2
  grep -l -E "ERROR|SUMMARY" "$dir"/fuzz-*.log | head -3 | xargs -r tail -n 40 >&2
  exit 1
fi
echo "fuzz-long: $target: $total executions in ${secs}s, no crash, leak, timeout or OOM"
