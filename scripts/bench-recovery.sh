#!/usr/bin/env bash
# Recovery time after a crash with a full journal (issue 4): a 1 TiB image
# with a JOURNAL_MB journal takes sequential 4 KiB writes at depth 32 with a
# flush every 64 writes until at least FILL_MB of transactions are pending,
# then the writer is killed with SIGKILL. (A checkpoint starts at half the
# ring, so JOURNAL_MB=128 holds up to 64 MiB of transactions.) Then, RUNS
# times each on fresh copies of the crashed image:
#   - `info`: a read-only open that replays the journal in memory;
#   - `io -c "read 0 4k"`: a read-write open that replays, writes the tables
#     in place, syncs and closes the journal.
# Prints wall and CPU seconds of each run and the recovery line.
#   scripts/bench-recovery.sh [RUNS]      (default 3)
# QCOW2J=path/to/qcow2j, BENCH_DIR=/some/dir, JOURNAL_MB=128, FILL_MB=60.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
ours=$(realpath "${QCOW2J:-build/bin/qcow2j}")
dir=${BENCH_DIR:-/var/tmp/qcow2j-bench-recovery}
journal_mb=${JOURNAL_MB:-128}
fill_kib=$(( ${FILL_MB:-60} * 1024 ))
mkdir -p "$dir"
img=$dir/crashed.qcow2
rm -f "$img"
"$ours" create -q -f qcow2 -o journal_size=${journal_mb}M "$img" 1T
"$ours" bench -w -c 2000000000 -s 4k -S 4k -d 32 -t none --flush-interval=64 "$img" \
  >/dev/null 2>&1 &
writer=$!
pending_kib() {
  "$ours" info -U "$img" 2>/dev/null | sed -n 's/.*records, \([0-9]*\) KiB).*/\1/p'
}
while kill -0 $writer 2>/dev/null; do
  sleep 1
  kib=$(pending_kib)
  if [ -n "$kib" ] && [ "$kib" -ge "$fill_kib" ]; then break; fi
done
kill -9 $writer 2>/dev/null || { echo "bench-recovery: the writer ended early" >&2; exit 1; }
wait $writer 2>/dev/null || true
echo "crashed image: $img ($(pending_kib) KiB of transactions pending, journal_size=${journal_mb}M)"

measure() {  # label, command...
  local label=$1; shift
  local out
  out=$( { /usr/bin/time -f "TIME %e %U %S" "$@" >/dev/null; } 2>&1 | grep '^TIME')
  awk -v l="$label" '{ printf "%-32s wall %.3f s, cpu %.3f s\n", l, $2, $3 + $4 }' <<<"$out"
}
"$ours" info "$img" | grep recovery
for ((i = 1; i <= runs; i++)); do
  cp --sparse=always "$img" "$dir/copy.qcow2"
  # Page cache warm and clean, as after the crash: the writer synced every
  # commit. (Unsynced, the copy's 60 MiB were written back by the first sync
  # of the read-write open, which then measured cp as much as recovery.)
  sync "$dir/copy.qcow2"
  cat "$dir/copy.qcow2" >/dev/null
  measure "read-only open (info)" "$ours" info "$dir/copy.qcow2"
  measure "read-write open (io read)" "$ours" io -c "read 0 4k" "$dir/copy.qcow2"
done
"$ours" info "$dir/copy.qcow2" | grep -E "journal pending|recovery" || true
rm -f "$dir/copy.qcow2"
