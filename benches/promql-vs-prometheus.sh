#!/usr/bin/env bash
# Query results against Prometheus (issue 7): the node-exporter-like set (5 hosts, 6 h) is
# backfilled into Debian's Prometheus (`promtool tsdb create-blocks-from openmetrics`) and written
# into an EdgeFabric node (`serve --dev`, line protocol); every query of
# benches/golden-queries.promql runs on both at three instants and as a range query, and the
# answers must agree (same series, values within a relative 1e-9). Evaluation times are off the
# 10 s sample grid: Debian's Prometheus 2.42 closes range windows on the left, Prometheus 3 and
# EdgeFabric do not, and the two agree everywhere else.
#
#   bash benches/promql-vs-prometheus.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/promgolden}
rm -rf "$W" && mkdir -p "$W"
if ! command -v prometheus > /dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus > /dev/null
fi
cargo build --release -q -p edgefabric --bin edgefabric --bin edgefabric-tsload
BIN=${CARGO_TARGET_DIR:-target}/release
"$BIN/edgefabric-tsload" gen --set node --hosts 5 --hours 6 --out "$W/node.lp"
"$BIN/edgefabric-tsload" to-openmetrics --file "$W/node.lp" --out "$W/node.om"
promtool tsdb create-blocks-from openmetrics "$W/node.om" "$W/prom-data" > "$W/promtool.log"
echo "global: {}" > "$W/prometheus.yml"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done' EXIT
prometheus --config.file="$W/prometheus.yml" --storage.tsdb.path="$W/prom-data" \
  --storage.tsdb.retention.time=100y --web.listen-address=127.0.0.1:19090 > "$W/prometheus.log" 2>&1 &
PIDS+=($!)
"$BIN/edgefabric" serve --dev --data "$W/ef" --http 127.0.0.1:17480 --grpc 127.0.0.1:17400 > "$W/ef.log" 2>&1 &
PIDS+=($!)
for i in $(seq 1 150); do
  curl -sf http://127.0.0.1:17480/readyz > /dev/null && curl -sf http://127.0.0.1:19090/-/ready > /dev/null && break
  sleep 0.2
done
"$BIN/edgefabric-tsload" send --file "$W/node.lp" --url "http://127.0.0.1:17480/v1/ts/write?precision=ns" \
  --token-file "$W/ef/admin.token" --senders 2
S=1764115200   # the set's start (2025-11-26T00:00:00Z)
"$BIN/edgefabric-tsload" compare --a http://127.0.0.1:19090 --b http://127.0.0.1:17480 \
  --b-token-file "$W/ef/admin.token" --queries benches/golden-queries.promql \
  --at "$((S + 7207)).5,$((S + 14433)),$((S + 21547))" --range "$((S + 607)),$((S + 18007)),60"
