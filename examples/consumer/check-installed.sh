#!/usr/bin/env bash
# Installs a built qcow2j tree into a temporary prefix and proves a consumer
# can use it: this CMake project via find_package(qcow2j) (C++ API static,
# C API shared), and a C program via pkg-config (shared, then static with
# Libs.private / Requires.private). Each creates, writes, reads back; QEMU
# checks the images.
#   examples/consumer/check-installed.sh BUILD_DIR
set -euo pipefail
src="$(cd "$(dirname "$0")" && pwd)"
build="$(cd "${1:?usage: $0 BUILD_DIR}" && pwd)"
tmp="$(mktemp -d /var/tmp/qcow2j-consumer-XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"

cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S "$src" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/build" -j "$(nproc)" >/dev/null
"$tmp/build/consumer" "$tmp/cxx.qcow2"
"$tmp/build/consumer_c" "$tmp/c.qcow2"

export PKG_CONFIG_PATH="$(dirname "$(find "$prefix" -name qcow2j.pc)")"
cc -std=c11 -o "$tmp/pc_shared" "$src/main.c" $(pkg-config --cflags --libs qcow2j) \
   -Wl,-rpath,"$(pkg-config --variable=libdir qcow2j)"
"$tmp/pc_shared" "$tmp/pc_shared.qcow2"
cc -std=c11 -o "$tmp/pc_static" "$src/main.c" $(pkg-config --cflags qcow2j) \
   $(pkg-config --static --libs qcow2j | sed 's/-lqcow2j /-l:libqcow2j.a /')
"$tmp/pc_static" "$tmp/pc_static.qcow2"

for img in "$tmp"/*.qcow2; do qemu-img check -q -f qcow2 "$img"; done
echo "check-installed: find_package and pkg-config consumers ok"
