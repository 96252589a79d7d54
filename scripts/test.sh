#!/usr/bin/env bash
# Runs every test: the release build's suite (unit + interop against qemu-img /
# qemu-io), the same suite under AddressSanitizer + UBSan (clang) and a short
# run of every fuzz target from that same build, and the concurrency tests
# under ThreadSanitizer.
# QCOW2J_QUICK=1 runs only the release suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CTEST_OUTPUT_ON_FAILURE=1
start=$SECONDS
# Most tests wait on fdatasync (qemu-img's, qemu-io's and our engine's) more
# than they compute: three at a time per core keep the cores busy (release
# suite: 362 s at -j2, 148 s at -j6 on a loaded 2-core machine). The long
# tests start first (tests/test_costs.cmake).
test_jobs=$((3 * $(nproc)))
# For the same reason the next flavour is built beside a suite, at a lower
# priority (nice), on the CPU the suite leaves idle; its output goes to
# DIR/build.log, shown if the build fails.
build_in_background() {  # flavour dir
  mkdir -p "$2"
  nice -n 10 scripts/build.sh "$1" >"$2/build.log" 2>&1 &
  bg_build=$!
}
wait_for_build() {  # dir
  wait "$bg_build" || { cat "$1/build.log" >&2; echo "test.sh: build of $1 failed" >&2; exit 1; }
  echo "test.sh: $1 built"
}
quick=${QCOW2J_QUICK:-0}
tsan=0
[ "$quick" != 1 ] && [ -f tests/tsan_tests.txt ] && tsan=1

scripts/build.sh release
# One clang build for the sanitized suite and the libFuzzer targets.
[ "$quick" = 1 ] || build_in_background asan build-asan
(cd build && ctest -j "$test_jobs" --timeout 600 --no-tests=error)
# The installed package: cmake --install into a temp prefix, then consumers
# built with find_package(qcow2j) and with pkg-config create, write, read back.
examples/consumer/check-installed.sh build

if [ "$quick" != 1 ]; then
  wait_for_build build-asan
  # Only the test binary, from the files tests/tsan_tests.txt names
  # (scripts/build.sh): the regexes select tests that run neither the CLI nor nbdkit.
  [ "$tsan" = 0 ] || build_in_background tsan build-tsan
  # Leak checking is on; halt on the first UBSan report.
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
     ctest -j "$test_jobs" --timeout 900 --no-tests=error)
  # The fuzz targets have the cores to themselves for their whole budget.
  [ "$tsan" = 0 ] || wait_for_build build-tsan
  FUZZ_BUILD_DIR=build-asan scripts/fuzz-smoke.sh
  if [ "$tsan" = 1 ]; then
    # The regex is built here, in the repository root, where the list lives.
    tsan_regexes=($(grep -v '^#' tests/tsan_tests.txt | awk 'NF {print $1}'))
    for r in "${tsan_regexes[@]}"; do
      (cd build-tsan && ctest -N -R "$r" | grep -q '^Total Tests: [1-9]') ||
        { echo "test.sh: tests/tsan_tests.txt: no test in build-tsan matches $r" >&2; exit 1; }
    done
    tsan_regex="$(IFS='|'; echo "${tsan_regexes[*]}")"
    # These few tests compute (threads racing): one per core.
    (cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ctest -j "$(nproc)" --timeout 900 --no-tests=error -R "$tsan_regex")
  fi
fi
echo "test.sh: all suites passed in $((SECONDS - start)) s"
