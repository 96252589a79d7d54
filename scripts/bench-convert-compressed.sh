#!/usr/bin/env bash
# convert -c against qemu-img convert -c (issue 7): a 256 MiB raw image, one
# MiB of random bytes then one MiB of compressible text, in turn; both tools
# write a compressed qcow2 with the default cache (unsafe) and with -t none
# (O_DIRECT), alternately, RUNS times each. Prints the median times and the
# ratios ours/qemu; checks every output with qemu-img compare.
#   scripts/bench-convert-compressed.sh [RUNS]      (default 3)
# QCOW2J=path/to/qcow2j and BENCH_DIR=/some/dir override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
ours=${QCOW2J:-build/bin/qcow2j}
dir=${BENCH_DIR:-/var/tmp/qcow2j-bench-convert}
mkdir -p "$dir"
src=$dir/mixed.raw
if [ ! -f "$src" ]; then
  python3 - "$src" <<'EOF'
import os, random, sys
random.seed(7)
words = ("the quick brown fox jumps over lazy dog cluster refcount table image qemu storage "
         "engine compression zlib zstd journal metadata write read flush sync allocate free "
         "snapshot backing offset length sector header extension feature bitmap guest host").split()
words += [w + str(i) for w in words for i in range(20)]
MB = 1 << 20
with open(sys.argv[1], "wb") as f:
    for i in range(256):
        if i % 2 == 0:
            f.write(os.urandom(MB))
        else:
            text, n = [], 0
            while n < MB:
                line = " ".join(random.choice(words) for _ in range(12)) + "\n"
                text.append(line)
                n += len(line)
            f.write("".join(text).encode()[:MB])
EOF
fi

. scripts/bench-lib.sh

for mode in default none; do
  cache=(); [ "$mode" = none ] && cache=(-t none)
  : >"$dir/ours.t"; : >"$dir/qemu.t"
  for ((i = 0; i < runs; i++)); do
    rm -f "$dir/q.qcow2" "$dir/o.qcow2"
    seconds qemu-img convert "${cache[@]}" -c -O qcow2 "$src" "$dir/q.qcow2" >>"$dir/qemu.t"
    seconds "$ours" convert "${cache[@]}" -c -O qcow2 "$src" "$dir/o.qcow2" >>"$dir/ours.t"
    qemu-img compare -q "$src" "$dir/o.qcow2"
  done
  q=$(median <"$dir/qemu.t"); o=$(median <"$dir/ours.t")
  printf 'convert -c %-9s qemu-img %6.2f s  qcow2j %6.2f s  ratio %.3f  (sizes: qemu %s, ours %s)\n' \
    "${cache[*]:-(unsafe)}" "$q" "$o" "$(ratio "$q" "$o")" \
    "$(stat -c %s "$dir/q.qcow2")" "$(stat -c %s "$dir/o.qcow2")"
done
