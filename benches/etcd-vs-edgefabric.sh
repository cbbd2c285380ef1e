#!/usr/bin/env bash
# EdgeFabric vs etcd, side by side in one run on this machine (issue 3's benchmark).
#
#   bash benches/etcd-vs-edgefabric.sh [loadgen options, e.g. --duration 10 --clients 1,16,256]
#
# Installs etcd from Debian's etcd-server package if it is missing (needs root), starts a
# 3-member etcd on loopback with its default durability (WAL fsync on every commit), starts a
# 3-node EdgeFabric cluster on loopback (release build; 3 sites, 16 shards, raft log fdatasync
# on every commit), both over TLS (clients verify the servers; peers authenticate each other),
# runs benches/loadgen.rs against both, prints the table, and stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/etcd.sh
ensure_etcd
cargo build --release -q -p edgefabric --bin edgefabric --bin edgefabric-loadgen
BIN=target/release

bench_work ef-vs-etcd

# EdgeFabric: 3 nodes, gRPC on 2410x/2410x+2/.., HTTP next to each; TLS, as `cluster init`
# writes it. Its CA also issues etcd's certificates, so both sides stand on the same footing:
# clients over TLS (server authenticated), peers over mutual TLS.
"$BIN/edgefabric" cluster init --nodes 3 --sites a,b,c --host 127.0.0.1 --base-port 24100 --out "$WORK/ef" >/dev/null
CA="$WORK/ef/ca.pem"
# etcd: 3 members, peers on 2380x, clients on 2379x, all over TLS (benches/etcd.sh).
start_etcd "$WORK/ef" 23800 23790

for k in 1 2 3; do
  EDGEFABRIC_LOG=warn "$BIN/edgefabric" serve --config "$WORK/ef/node$k.toml" >"$WORK/ef$k.log" 2>&1 &
  PIDS+=($!)
done

wait_ready() { # url
  for _ in $(seq 1 120); do
    if curl -sf --cacert "$CA" "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "not ready: $1" >&2; exit 1
}
for i in 1 2 3; do wait_ready "https://127.0.0.1:2379$i/health"; done
for k in 1 2 3; do wait_ready "https://127.0.0.1:$((24100 + 2 * (k - 1) + 1))/readyz"; done

"$BIN/edgefabric-loadgen" \
  --edgefabric https://127.0.0.1:24100,https://127.0.0.1:24102,https://127.0.0.1:24104 \
  --token-file "$WORK/ef/admin.token" --ca-file "$CA" \
  --etcd https://127.0.0.1:23791,https://127.0.0.1:23792,https://127.0.0.1:23793 \
  "$@"
