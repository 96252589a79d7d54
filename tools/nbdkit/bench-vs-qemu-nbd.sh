#!/usr/bin/env bash
# Benchmark (not a test): fio 4K random I/O at iodepth 32 over NBD, served by
# qemu-nbd (--cache=none --aio=threads) and by nbdkit with the qcow2j plugin
# (direct=on, i.e. O_DIRECT like cache=none), each on a fresh qcow2 image made
# by qemu-img with the same options.
#
#   tools/nbdkit/bench-vs-qemu-nbd.sh [BUILD_DIR]
#   env: SIZE=1G RUNTIME=20 DIR=/var/tmp (must support O_DIRECT) CLUSTER=65536
#
# Phases per server:
#   randwrite-alloc  random 4K writes into the empty image (allocating)
#   randread         random 4K reads after a sequential 1M fill of the image
#   randwrite-over   random 4K overwrites of allocated clusters
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$root/build}"
plugin="$build/bin/nbdkit-qcow2j-plugin.so"
SIZE="${SIZE:-1G}"
RUNTIME="${RUNTIME:-20}"
CLUSTER="${CLUSTER:-65536}"
[ -f "$plugin" ] || { echo "no plugin at $plugin (build first)" >&2; exit 1; }
for p in fio qemu-nbd qemu-img nbdkit python3; do
  command -v "$p" >/dev/null || { echo "$p is missing (scripts/install-deps.sh)" >&2; exit 1; }
done

tmp="$(mktemp -d "${DIR:-/var/tmp}/qcow2j-bench-XXXXXX")"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
sock="$tmp/nbd.sock"
uri="nbd+unix:///?socket=$sock"

wait_for_socket() {
  for _ in $(seq 1 600); do
    if [ -S "$sock" ] && nbdinfo --size "$uri" >/dev/null 2>&1; then return 0; fi
    kill -0 "$server_pid" 2>/dev/null || { echo "server exited" >&2; cat "$tmp/server.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "server did not start" >&2; exit 1
}

stop_server() {
  kill "$server_pid"
  wait "$server_pid" || true
  server_pid=""
}

# fio_iops NAME RW [extra fio args...] -> prints IOPS
fio_iops() {
  local name=$1 rw=$2; shift 2
  fio --name="$name" --ioengine=nbd --uri="$uri" --rw="$rw" --bs=4k --iodepth=32 \
      --size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time=2 --randrepeat=0 \
      --norandommap --output-format=json --output="$tmp/$name.json" "$@" >/dev/null
  python3 - "$tmp/$name.json" "$rw" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
job = json.loads(text[text.index('{'):])['jobs'][0]
side = 'read' if 'read' in sys.argv[2] else 'write'
print(f"{job[side]['iops']:.0f}")
EOF
}

fill() {
  fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size="$SIZE" \
      --output="$tmp/fill.json" >/dev/null
}

run_phases() {  # label
  local label=$1 a r o
  a=$(fio_iops "$label-alloc" randwrite)
  fill
  r=$(fio_iops "$label-read" randread)
  o=$(fio_iops "$label-over" randwrite)
  printf '%-28s %12s %12s %12s\n' "$label" "$a" "$r" "$o"
}

printf 'fio 4K, iodepth 32, %s image, %s s per phase, cluster %s, %s\n' "$SIZE" "$RUNTIME" "$CLUSTER" "$(nproc) CPUs"
printf '%-28s %12s %12s %12s\n' "server" "randwr-alloc" "randread" "randwr-over"

qemu-img create -q -f qcow2 -o cluster_size="$CLUSTER" "$tmp/q.qcow2" "$SIZE"
qemu-nbd -k "$sock" -f qcow2 --cache=none --aio=threads --persistent "$tmp/q.qcow2" \
  >"$tmp/server.log" 2>&1 &
server_pid=$!
wait_for_socket
run_phases "qemu-nbd cache=none"
stop_server
rm -f "$tmp/q.qcow2"

qemu-img create -q -f qcow2 -o cluster_size="$CLUSTER" "$tmp/j.qcow2" "$SIZE"
nbdkit -f -U "$sock" "$plugin" file="$tmp/j.qcow2" direct=on >"$tmp/server.log" 2>&1 &
server_pid=$!
wait_for_socket
run_phases "nbdkit qcow2j direct=on"
stop_server
qemu-img check -q "$tmp/j.qcow2" || { echo "qemu-img check failed on the qcow2j image" >&2; exit 1; }
