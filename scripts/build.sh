#!/usr/bin/env bash
# Configures and builds one flavour of qcow2j.
#   scripts/build.sh            release build (RelWithDebInfo) in build/
#   scripts/build.sh asan       AddressSanitizer + UBSan in build-asan/
#   scripts/build.sh tsan       ThreadSanitizer in build-tsan/
#   scripts/build.sh fuzz       clang libFuzzer targets in build-fuzz/
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${1:-release}
jobs=$(nproc)
case "$flavour" in
  release) dir=build; args=() ;;
  asan) dir=build-asan; args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DQCOW2J_SANITIZE=address;undefined") ;;
  tsan) dir=build-tsan; args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DQCOW2J_SANITIZE=thread) ;;
  fuzz) dir=build-fuzz; args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang
                              -DCMAKE_CXX_COMPILER=clang++ -DQCOW2J_FUZZ=ON -DQCOW2J_TESTS=OFF
                              "-DQCOW2J_SANITIZE=address;undefined") ;;
  *) echo "unknown flavour $flavour" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" "${args[@]}" >/dev/null
cmake --build "$dir" -j "$jobs"
