#!/usr/bin/env bash
# Internal snapshots against qemu-img (issue 7): the W9 image of
# ../shared/bench/vs-qemu.py (1 TiB, preallocation=metadata, every cluster
# mapped), made once by qemu-img, and once by qcow2j with its journal (where
# each operation is one journal transaction). Each run takes sparse copies of one image
# state and times `snapshot -c s1` on it (both tools), then `snapshot -d s1`
# on copies of an image that has s1 (both tools). Every result must pass
# qemu-img check. Then writes after a snapshot: a 1 GiB image, filled, with
# s1, takes `bench -w -c 16384 -s 4k -S 64k -d 32 -t none` on copies (every
# write COWs a shared cluster). Prints median times and ratios ours/qemu.
#   scripts/bench-snapshot.sh [RUNS]        (default 3)
# QCOW2J=path/to/qcow2j and BENCH_DIR=/some/dir override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
ours=$(realpath "${QCOW2J:-build/bin/qcow2j}")
dir=${BENCH_DIR:-/var/tmp/qcow2j-bench-snapshot}
mkdir -p "$dir"
base=$dir/w9.qcow2 snap=$dir/w9-s1.qcow2
if [ ! -f "$snap" ]; then
  qemu-img create -q -f qcow2 -o preallocation=metadata "$base" 1T
  cp --sparse=always "$base" "$snap"
  qemu-img snapshot -c s1 "$snap"
fi
# The same image made by qcow2j (journal on): there each operation is one
# journal transaction (docs/crash-safety.md, "Internal snapshots").
jbase=$dir/w9j.qcow2 jsnap=$dir/w9j-s1.qcow2
if [ ! -f "$jsnap" ]; then
  "$ours" create -q -f qcow2 -o preallocation=metadata "$jbase" 1T
  cp --sparse=always "$jbase" "$jsnap"
  "$ours" snapshot -c s1 "$jsnap"
fi

. scripts/bench-lib.sh

for kind in qemu-made journaled; do
  for op in c d; do
    if [ $kind = qemu-made ]; then from=$base; [ $op = d ] && from=$snap
    else from=$jbase; [ $op = d ] && from=$jsnap; fi
    : >"$dir/ours.t"; : >"$dir/qemu.t"
    for ((i = 0; i < runs; i++)); do
      cp --sparse=always "$from" "$dir/q.qcow2"
      cp --sparse=always "$from" "$dir/o.qcow2"
      sync
      seconds qemu-img snapshot -$op s1 "$dir/q.qcow2" >>"$dir/qemu.t"
      seconds "$ours" snapshot -$op s1 "$dir/o.qcow2" >>"$dir/ours.t"
      qemu-img check -q "$dir/o.qcow2"
    done
    q=$(median <"$dir/qemu.t"); o=$(median <"$dir/ours.t")
    printf 'snapshot -%s s1 (1 TiB, all mapped, %-9s)  qemu-img %6.2f s  qcow2j %6.3f s  ratio %.3f\n' \
      "$op" "$kind" "$q" "$o" "$(ratio "$q" "$o")"
  done
done

cow=$dir/cow-s1.qcow2
if [ ! -f "$cow" ]; then
  qemu-img create -q -f qcow2 "$cow" 1G
  qemu-io -f qcow2 -c 'write -P 0x55 0 1G' "$cow" >/dev/null
  qemu-img snapshot -c s1 "$cow"
fi
bench=(bench -w -c 16384 -s 4k -S 64k -d 32 -t none -f qcow2)
: >"$dir/ours.t"; : >"$dir/qemu.t"
for ((i = 0; i < runs; i++)); do
  cp --sparse=always "$cow" "$dir/q.qcow2"
  cp --sparse=always "$cow" "$dir/o.qcow2"
  sync
  seconds qemu-img "${bench[@]}" "$dir/q.qcow2" >>"$dir/qemu.t"
  seconds "$ours" "${bench[@]}" "$dir/o.qcow2" >>"$dir/ours.t"
  qemu-img check -q "$dir/o.qcow2"
done
q=$(median <"$dir/qemu.t"); o=$(median <"$dir/ours.t")
printf 'bench -w 4k/64k -d 32 -t none after s1  qemu-img %6.2f s  qcow2j %6.3f s  ratio %.3f\n' \
  "$q" "$o" "$(ratio "$q" "$o")"
rm -f "$dir/q.qcow2" "$dir/o.qcow2"
