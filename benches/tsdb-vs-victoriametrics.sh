#!/usr/bin/env bash
# Time series: EdgeFabric (one node, `serve --dev`, release build) against VictoriaMetrics
# (Debian's `victoria-metrics`, installed if missing, as root), both on loopback in the same
# run, with the same line-protocol files (issue 7's benchmark):
#   set (a) TSBS "cpu-only": 100 hosts x 10 fields, 10 s interval, 24 h = 8.64 M samples;
#   set (b) node-exporter-like: 50 hosts x 26 series, 10 s, 24 h = 11.2 M samples.
# For each set: ingest samples/s (4 senders, 10,000 lines a request), bytes per sample on disk
# after a flush, and range-query latency (VictoriaMetrics with nocache=1).
#
#   bash benches/tsdb-vs-victoriametrics.sh [WORKDIR]     (default /tmp/tsbench; ~3 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/tsbench}
mkdir -p "$W"
if ! command -v victoria-metrics > /dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq victoria-metrics > /dev/null
fi
cargo build --release -q -p edgefabric --bin edgefabric --bin edgefabric-tsload
BIN=${CARGO_TARGET_DIR:-target}/release
[ -f "$W/cpu.lp" ] || "$BIN/edgefabric-tsload" gen --set cpu-only --hosts 100 --hours 24 --out "$W/cpu.lp"
[ -f "$W/node.lp" ] || "$BIN/edgefabric-tsload" gen --set node --hosts 50 --hours 24 --out "$W/node.lp"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done; }
trap cleanup EXIT

size() { du -sb "$1" | cut -f1; }

run_set() {
  local set=$1 file=$2 samples=$3 start=$4
  echo "== set $set: $samples samples"
  rm -rf "$W/vm-$set" "$W/ef-$set"
  victoria-metrics -storageDataPath "$W/vm-$set" -httpListenAddr 127.0.0.1:18428 \
    -retentionPeriod 100y > "$W/vm-$set.log" 2>&1 &
  PIDS+=($!)
  "$BIN/edgefabric" serve --dev --data "$W/ef-$set" --http 127.0.0.1:17480 --grpc 127.0.0.1:17400 \
    > "$W/ef-$set.log" 2>&1 &
  PIDS+=($!)
  for i in $(seq 1 100); do
    curl -sf http://127.0.0.1:17480/readyz > /dev/null && curl -sf http://127.0.0.1:18428/health > /dev/null && break
    sleep 0.2
  done
  local tok="$W/ef-$set/admin.token"
  echo "-- ingest (4 senders)"
  echo -n "VictoriaMetrics: "
  "$BIN/edgefabric-tsload" send --file "$file" --url "http://127.0.0.1:18428/write" --senders 4
  echo -n "EdgeFabric:      "
  "$BIN/edgefabric-tsload" send --file "$file" --url "http://127.0.0.1:17480/v1/ts/write?precision=ns" \
    --token-file "$tok" --senders 4
  echo "-- bytes per sample after a flush"
  curl -sf http://127.0.0.1:18428/internal/force_flush > /dev/null
  curl -sf http://127.0.0.1:18428/internal/force_merge > /dev/null || true
  local chunks
  chunks=$(curl -sf -XPOST -H "Authorization: Bearer $(cat "$tok")" http://127.0.0.1:17480/v1/ts/flush)
  echo "EdgeFabric flush: $chunks"
  sleep 20   # background merges (VictoriaMetrics) and the snapshot's log purge (EdgeFabric)
  local vm ef_all ef_ts ef_snap
  vm=$(size "$W/vm-$set")
  ef_all=$(size "$W/ef-$set")
  ef_ts=$(du -cb "$W/ef-$set"/group-*/ts | tail -1 | cut -f1)
  ef_snap=$( (ls "$W/ef-$set"/group-*/snapshot.bin 2> /dev/null || true) | xargs -r du -cb | tail -1 | cut -f1)
  local cb
  cb=$(echo "$chunks" | sed -E 's/.*"chunk_bytes":([0-9]+).*/\1/')
  awk -v vm="$vm" -v all="$ef_all" -v ts="$ef_ts" -v snap="${ef_snap:-0}" -v cb="$cb" -v n="$samples" 'BEGIN {
    printf "VictoriaMetrics: %d bytes, %.2f bytes/sample\n", vm, vm / n;
    printf "EdgeFabric:      %d bytes, %.2f bytes/sample (engine files: %.2f; raft snapshots: %.2f; compressed chunks: %.2f)\n", all, all / n, ts / n, snap / n, cb / n }'
  echo "-- range queries (median, p90 of 10; VictoriaMetrics with nocache=1)"
  local end=$((start + 86400))
  while IFS='|' read -r name q qs qe step; do
    echo "$name: $q"
    echo -n "  VictoriaMetrics: "
    "$BIN/edgefabric-tsload" query --base http://127.0.0.1:18428 --query "$q" --start "$qs" --end "$qe" \
      --step "$step" --extra nocache=1
    echo -n "  EdgeFabric:      "
    "$BIN/edgefabric-tsload" query --base http://127.0.0.1:17480 --token-file "$tok" --query "$q" \
      --start "$qs" --end "$qe" --step "$step"
  done < <(queries "$set" "$start" "$end")
  cleanup
  PIDS=()
  sleep 1
}

queries() {
  local set=$1 s=$2 e=$3
  if [ "$set" = a ]; then
    echo "single-groupby-1-1-12|max by (hostname) (max_over_time(cpu_usage_user{hostname=\"host_1\"}[1m]))|$s|$((s + 43200))|60"
    echo "cpu-max-all-8|max by (__name__, hostname) ({__name__=~\"cpu_usage_.*\",hostname=~\"host_[1-8]\"})|$s|$((s + 28800))|3600"
    echo "avg-by-region-24h|avg by (region) (cpu_usage_idle)|$s|$e|300"
  else
    echo "cpu-rate-by-mode|sum by (mode) (rate(node_cpu_seconds_total[5m]))|$s|$e|300"
    echo "rx-rate-one-host|rate(node_network_receive_bytes_total{host=\"host_7\"}[1m])|$s|$e|60"
    echo "mem-avail-avg|avg(node_memory_MemAvailable_bytes)|$s|$e|300"
  fi
}

run_set a "$W/cpu.lp" 8640000 1451606400
run_set b "$W/node.lp" 11232000 1764115200
