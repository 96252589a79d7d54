# Shared by the bench-*.sh scripts (sourced): wall time of one command and
# the median of a column of numbers.

# Seconds (wall) of one run of "$@".
seconds() {
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null
  t1=$(date +%s%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", (b - a) / 1e9}'
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# ours/qemu of two medians.
ratio() { awk -v o="$2" -v q="$1" 'BEGIN {print o / q}'; }
