#!/usr/bin/env bash
# Footprint at rest (issue 19): a 3-member etcd 3.4 cluster and a 3-node EdgeFabric cluster, both
# over TLS, started side by side and left idle; then, per process, the resident memory (RSS)
# and the CPU used over an idle window (utime + stime from /proc), and the binaries' sizes.
#
#   bash benches/footprint.sh [--shards N (16)] [--settle SECONDS (20)] [--idle SECONDS (60)]
#
# `--shards 1000` starts EdgeFabric with 1,000 shards per node (`[cluster] initial_shards`),
# the idle-groups scenario of issue 19.
set -euo pipefail
cd "$(dirname "$0")/.."

SHARDS=16 SETTLE=20 IDLE=60
while [ $# -gt 0 ]; do
  case "$1" in
    --shards) SHARDS=$2; shift 2 ;;
    --settle) SETTLE=$2; shift 2 ;;
    --idle) IDLE=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

source benches/etcd.sh
ensure_etcd
cargo build --release -q -p edgefabric --bin edgefabric
BIN=target/release
bench_work ef-footprint

"$BIN/edgefabric" cluster init --nodes 3 --sites a,b,c --host 127.0.0.1 --base-port 24600 --out "$WORK/ef" >/dev/null
CA="$WORK/ef/ca.pem"
for k in 1 2 3; do
  awk -v n="$SHARDS" '/^\[/{s=$0} s=="[cluster]" && /^initial_shards *=/{$0="initial_shards = " n} {print}' \
    "$WORK/ef/node$k.toml" >"$WORK/tmp.toml"
  mv "$WORK/tmp.toml" "$WORK/ef/node$k.toml"
  grep -q "^initial_shards = $SHARDS\$" "$WORK/ef/node$k.toml" || { echo "could not set initial_shards" >&2; exit 1; }
done
start_etcd "$WORK/ef" 23810 23780
EF=()
for k in 1 2 3; do
  EDGEFABRIC_LOG=warn "$BIN/edgefabric" serve --config "$WORK/ef/node$k.toml" >"$WORK/ef$k.log" 2>&1 &
  PIDS+=($!); EF+=($!)
done
wait_ready() { # url
  for _ in $(seq 1 600); do
    if curl -sf --cacert "$CA" "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "not ready: $1" >&2; exit 1
}
for i in 1 2 3; do wait_ready "https://127.0.0.1:2378$i/health"; done
for k in 1 2 3; do wait_ready "https://127.0.0.1:$((24600 + 2 * (k - 1) + 1))/readyz"; done
sleep "$SETTLE"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
declare -A BEFORE
for p in "${ETCD[@]}" "${EF[@]}"; do BEFORE[$p]=$(ticks "$p"); done
sleep "$IDLE"
HZ=$(getconf CLK_TCK)
echo
echo "idle ${IDLE} s after ${SETTLE} s of settling; EdgeFabric with ${SHARDS} shards; both over TLS"
echo
echo "| system | member | RSS MB | CPU % of a core |"
echo "|---|---:|---:|---:|"
sum() { # name pids...
  local name=$1; shift
  local n=0 rss=0 cpu=0
  for p in "$@"; do
    n=$((n + 1))
    local r c
    r=$(rss_mb "$p")
    c=$(awk -v a="${BEFORE[$p]}" -v b="$(ticks "$p")" -v hz="$HZ" -v s="$IDLE" 'BEGIN {printf "%.2f", 100 * (b - a) / hz / s}')
    echo "| $name | $n | $r | $c |"
    rss=$(awk -v x="$rss" -v y="$r" 'BEGIN {print x + y}')
    cpu=$(awk -v x="$cpu" -v y="$c" 'BEGIN {print x + y}')
  done
  awk -v name="$name" -v rss="$rss" -v cpu="$cpu" -v n="$n" 'BEGIN {printf "| %s | mean | %.1f | %.2f |\n", name, rss / n, cpu / n}'
  eval "${name}_RSS=$(awk -v rss="$rss" -v n="$n" 'BEGIN {print rss / n}')"
  eval "${name}_CPU=$(awk -v cpu="$cpu" -v n="$n" 'BEGIN {print cpu / n}')"
}
sum etcd "${ETCD[@]}"
sum EdgeFabric "${EF[@]}"
echo
awk -v a="$EdgeFabric_RSS" -v b="$etcd_RSS" -v c="$EdgeFabric_CPU" -v d="$etcd_CPU" \
  'BEGIN {printf "EdgeFabric/etcd per member: RSS %.2fx, CPU %.2fx\n", a / b, (d > 0 ? c / d : 0)}'
echo "binaries: edgefabric $(stat -c %s "$BIN/edgefabric") bytes, etcd $(stat -c %s "$(command -v etcd)") bytes"
