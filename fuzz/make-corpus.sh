#!/usr/bin/env bash
# Regenerates the seed corpora in fuzz/corpus/<target>/ from images qemu-img
# makes (small clusters keep them a few KiB) and from fuzz_journal_seeds.
#   fuzz/make-corpus.sh [build-asan]   (after scripts/build.sh asan)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-asan}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
q() { qemu-img "$@" >/dev/null; }
io() { qemu-io "$@" >/dev/null; }

q create -f qcow2 -o cluster_size=512 "$tmp/empty512.qcow2" 1M
q create -f qcow2 -o cluster_size=512 "$tmp/data512.qcow2" 1M
io -c 'write -P 0x11 0 1k' -c 'write -P 0x22 64k 512' -c 'write -z 128k 1k' "$tmp/data512.qcow2"
q create -f qcow2 -o cluster_size=512,compat=0.10 "$tmp/v2.qcow2" 1M
io -c 'write -P 0x33 4k 512' "$tmp/v2.qcow2"
q create -f qcow2 -o cluster_size=512,refcount_bits=1 "$tmp/rc1.qcow2" 1M
io -c 'write -P 0x44 0 512' "$tmp/rc1.qcow2"
q create -f qcow2 -o cluster_size=16k,extended_l2=on "$tmp/ext16k.qcow2" 1M
io -c 'write -P 0x55 4k 2k' -c 'write -z 8k 2k' "$tmp/ext16k.qcow2"
q create -f qcow2 -o cluster_size=512 -b empty512.qcow2 -F qcow2 "$tmp/backed512.qcow2" 1M
io -c 'write -P 0x66 512 512' "$tmp/backed512.qcow2"
q create -f qcow2 -o cluster_size=512 "$tmp/snap512.qcow2" 1M
io -c 'write -P 0x77 0 512' "$tmp/snap512.qcow2"
q snapshot -c s1 "$tmp/snap512.qcow2"
io -c 'write -P 0x78 0 512' "$tmp/snap512.qcow2"
q create -f qcow2 -o cluster_size=512,compression_type=zlib "$tmp/src.qcow2" 1M
io -c 'write -P 0x12 0 4k' "$tmp/src.qcow2"
q convert -c -O qcow2 -o cluster_size=512 "$tmp/src.qcow2" "$tmp/compressed512.qcow2"

# Whole images stay under 8 KiB each (the 16 KiB-cluster one is ~100 KiB, so
# it seeds only the header target); the committed corpora stay < 100 KiB.
images=(empty512 data512 v2 rc1 backed512 snap512 compressed512)
rm -rf fuzz/corpus
for t in open_read check; do
  mkdir -p "fuzz/corpus/$t"
  for i in "${images[@]}"; do cp "$tmp/$i.qcow2" "fuzz/corpus/$t/$i"; done
done
# The header target needs only the header and its extensions.
mkdir -p fuzz/corpus/header
for i in "${images[@]}" ext16k; do head -c 1024 "$tmp/$i.qcow2" > "fuzz/corpus/header/$i"; done
mkdir -p fuzz/corpus/journal
cmake --build "$build" --target fuzz_journal_seeds >/dev/null
"$build/fuzz/fuzz_journal_seeds" fuzz/corpus/journal
du -sh fuzz/corpus
