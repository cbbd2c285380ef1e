#!/usr/bin/env bash
# Confidential time series against plain ones, side by side on one node (`serve --dev`, release
# build), the same node-exporter-like data written into a public namespace and a confidential
# one: ingest samples/s (sealing costs CPU), stored bytes per sample after a flush (a sealed
# block per series per request costs a key, a nonce and a tag) and again after the key site's
# compaction (`POST /v1/ts/maintain`), and range-query latency (blocks are opened per query).
#
#   bash benches/tsdb-confidential.sh [WORKDIR] [HOSTS]     (default /tmp/tsconf, 10 hosts)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/tsconf}
HOSTS=${2:-10}
mkdir -p "$W"
cargo build --release -q -p edgefabric --bin edgefabric --bin edgefabric-tsload
BIN=${CARGO_TARGET_DIR:-target}/release
LP="$W/node-$HOSTS.lp"
[ -f "$LP" ] || "$BIN/edgefabric-tsload" gen --set node --hosts "$HOSTS" --hours 24 --out "$LP"
# Lines at one timestamp (10 s steps over 24 h): a request of that many lines carries one
# sample of each series, as a scrape does.
SCRAPE_LINES=$(($(wc -l < "$LP") / 8640))

rm -rf "$W/ef"
"$BIN/edgefabric" serve --dev --data "$W/ef" --http 127.0.0.1:17580 --grpc 127.0.0.1:17500 > "$W/ef.log" 2>&1 &
PID=$!
trap 'kill $PID 2> /dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:17580/readyz > /dev/null && break; sleep 0.2; done
TOK="$W/ef/admin.token"
api() { curl -sf -X "$1" -H "Authorization: Bearer $(cat "$TOK")" "http://127.0.0.1:17580$2" ${3:+-d "$3"}; }

for ns in open openscrape; do api PUT "/v1/namespaces/$ns" '{"class":"public"}' > /dev/null; done
for ns in vault scrape; do
  api PUT "/v1/namespaces/$ns" '{"class":"confidential","key_sites":["dev"]}' > /dev/null
done
for ns in open vault openscrape scrape; do
  api PUT "/v1/namespaces/$ns/retention" '{"raw":"3650d","rollups":"3650d"}' > /dev/null
done

# chunk_bytes: compressed chunks and sealed blocks of every namespace, keys and values; each
# namespace's share is what its ingest added. (The node's own maintenance pass runs every 60 s
# and may compact some of a namespace's blocks before its "as written" figure is taken.)
chunk_bytes() { api POST /v1/ts/flush | sed -E 's/.*"chunk_bytes":([0-9]+).*/\1/'; }
echo "== node-exporter-like, $HOSTS hosts, 10 s, 24 h; 4 senders"
declare -A BYTES
before=0
for spec in open:10000 vault:10000 openscrape:$SCRAPE_LINES scrape:$SCRAPE_LINES; do
  ns=${spec%%:*} lines=${spec#*:}
  echo -n "ingest $ns ($lines lines a request): "
  out=$("$BIN/edgefabric-tsload" send --file "$LP" --url "http://127.0.0.1:17580/v1/ts/write?precision=ns&ns=$ns" \
    --token-file "$TOK" --senders 4 --batch-lines "$lines")
  echo "$out"
  SAMPLES=$(echo "$out" | sed -E 's/^([0-9]+) samples.*/\1/')
  now=$(chunk_bytes)
  BYTES[$ns]=$((now - before))
  before=$now
done
echo "maintenance: $(api POST /v1/ts/maintain)"
after=$(chunk_bytes)
echo "-- stored bytes per sample (chunks / sealed blocks, keys and values)"
awk -v n="$SAMPLES" -v o="${BYTES[open]}" -v v="${BYTES[vault]}" -v os="${BYTES[openscrape]}" \
  -v s="${BYTES[scrape]}" -v a="$after" 'BEGIN {
  c = a - o - os
  printf "10,000 lines a request:   plain %6.2f  sealed %6.2f  (x%.2f)\n", o / n, v / n, v / o
  printf "a sample a series a request: plain %6.2f  sealed %6.2f  (x%.2f)\n", os / n, s / n, s / os
  printf "sealed, both after compaction: %6.2f a sample (x%.2f of plain)\n", c / (2 * n), c / (o + os) }'

echo "-- range queries, 24 h at 60 s steps (median of 5)"
START=1764115200
END=$((START + 86400))
q() {
  local ns=$1 query=$2 best=()
  for _ in 1 2 3 4 5; do
    best+=("$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $(cat "$TOK")" \
      --get --data-urlencode "query=$query" \
      "http://127.0.0.1:17580/api/v1/query_range?ns=$ns&start=$START&end=$END&step=60")")
  done
  printf '%s\n' "${best[@]}" | sort -n | sed -n 3p
}
for query in 'rate(node_cpu_seconds_total{host="host_3",mode="user"}[5m])' 'avg(node_memory_MemAvailable_bytes)'; do
  o=$(q open "$query")
  v=$(q vault "$query")
  awk -v o="$o" -v v="$v" -v qq="$query" 'BEGIN { printf "%-55s open %.3fs  vault %.3fs  (x%.2f)\n", qq, o, v, v / o }'
done
