#!/usr/bin/env bash
# Runs every libFuzzer target briefly (45 s each by default) from its seed
# corpus and fails on the first crash, leak, timeout or out-of-memory.
#   scripts/fuzz-smoke.sh            after scripts/build.sh asan
#   FUZZ_BUILD_DIR=build-asan-h FUZZ_SECONDS=10 scripts/fuzz-smoke.sh
# New inputs go to a scratch corpus; crashing inputs are kept in
# $FUZZ_BUILD_DIR/fuzz-artifacts/ (reproduce: fuzz_<target> <file>).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${FUZZ_BUILD_DIR:-build-asan}
secs=${FUZZ_SECONDS:-45}
targets=(header open_read check journal)
artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  bin="$build/fuzz/fuzz_$t"
  if [ ! -x "$bin" ]; then
    echo "fuzz-smoke: $bin is missing (run scripts/build.sh asan)" >&2
    exit 1
  fi
  mkdir -p "$scratch/$t"
  echo "fuzz-smoke: $t for ${secs}s"
  if ! ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
       "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
       -artifact_prefix="$artifacts/$t-" "$scratch/$t" "fuzz/corpus/$t" >"$scratch/$t.log" 2>&1; then
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
