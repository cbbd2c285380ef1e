#!/usr/bin/env bash
# The cost of a confidential namespace (issue 5's benchmark): puts and gets of 1 KiB values in
# a public namespace and in a confidential one, side by side in one run.
#
#   bash benches/confidential-vs-public.sh [loadgen options, e.g. --duration 10 --clients 1,16]
#
# Starts a 3-node release cluster on loopback (sites a, b, c), creates namespace `conf` of class
# confidential with every site a key site (so every node can seal and open, as the public
# namespace is served by every node), runs benches/loadgen.rs with `--ns default,conf`, and
# stops the cluster. The ratio column is confidential / public.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p edgefabric --bin edgefabric --bin edgefabric-loadgen
BIN=target/release
WORK=$(mktemp -d /tmp/ef-conf.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/edgefabric" cluster init --nodes 3 --sites a,b,c --host 127.0.0.1 --base-port 24400 --out "$WORK/ef" >/dev/null
for k in 1 2 3; do
  EDGEFABRIC_LOG=warn "$BIN/edgefabric" serve --config "$WORK/ef/node$k.toml" >"$WORK/ef$k.log" 2>&1 &
  PIDS+=($!)
done
for k in 1 2 3; do
  url="http://127.0.0.1:$((24400 + 2 * (k - 1) + 1))"
  for _ in $(seq 1 120); do curl -sf "$url/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
  curl -sf "$url/readyz" >/dev/null || { echo "node $k not ready" >&2; exit 1; }
done
"$BIN/edgefabric" ns create conf --class confidential --key-sites a,b,c \
  --endpoint http://127.0.0.1:24401 --token-file "$WORK/ef/admin.token" >/dev/null

"$BIN/edgefabric-loadgen" \
  --edgefabric http://127.0.0.1:24400,http://127.0.0.1:24402,http://127.0.0.1:24404 \
  --token-file "$WORK/ef/admin.token" --ns default,conf --value-size 1024 "$@"
