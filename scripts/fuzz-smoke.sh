#!/usr/bin/env bash
# Runs every libFuzzer target briefly (45 s each by default) from its seed
# corpus and fails on the first crash, leak, timeout or out-of-memory.
# libFuzzer uses one core: FUZZ_JOBS targets (default: one per core) run at
# once, each for the whole FUZZ_SECONDS.
#   scripts/fuzz-smoke.sh            after scripts/build.sh asan
#   FUZZ_BUILD_DIR=build-asan-h FUZZ_SECONDS=10 FUZZ_JOBS=1 scripts/fuzz-smoke.sh
# New inputs go to a scratch corpus; crashing inputs are kept in
# $FUZZ_BUILD_DIR/fuzz-artifacts/ (reproduce: fuzz_<target> <file>).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${FUZZ_BUILD_DIR:-build-asan}
secs=${FUZZ_SECONDS:-45}
max_jobs=${FUZZ_JOBS:-$(nproc)}
targets=(header open_read check journal)
artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  if [ ! -x "$build/fuzz/fuzz_$t" ]; then
    echo "fuzz-smoke: $build/fuzz/fuzz_$t is missing (run scripts/build.sh asan)" >&2
    exit 1
  fi
done
run() {
  local t=$1 rc=0
  mkdir -p "$scratch/$t"
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$build/fuzz/fuzz_$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$t-" "$scratch/$t" "fuzz/corpus/$t" >"$scratch/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$scratch/$t.rc"
}
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$max_jobs" ]; do wait -n || true; done
  echo "fuzz-smoke: $t for ${secs}s"
  run "$t" &
done
wait
failed=()
for t in "${targets[@]}"; do
  if [ "$(cat "$scratch/$t.rc" 2>/dev/null || echo none)" != 0 ]; then
    echo "fuzz-smoke: $t failed:" >&2
    tail -n 60 "$scratch/$t.log" >&2
    failed+=("$t")
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$scratch/$t.log" | sed "s/^/  $t: /" || true
  fi
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz-smoke: FAILED: ${failed[*]} (inputs in $artifacts)" >&2
  exit 1
fi
echo "fuzz-smoke: all ${#targets[@]} targets ran ${secs}s without a crash"
