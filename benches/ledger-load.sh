#!/usr/bin/env bash
# Ledger throughput on a 3-node cluster (issue 4's benchmark): signed image registrations,
# ordered by the ledger's raft group and validated by every node.
#
#   bash benches/ledger-load.sh [edgefabric-ledger-load options, e.g. --clients 4,16 --batch 1,100,1000 --duration 10]
#
# Starts a 3-node EdgeFabric cluster on loopback (release build, 3 sites), runs
# benches/ledger_load.rs against it, prints the table, checks that every node ends with the
# same chain (and verifies one node's stored chain offline), and stops the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p edgefabric --bin edgefabric --bin edgefabric-ledger-load
source benches/cluster.sh
start_cluster 24200

"$BIN/edgefabric-ledger-load" --http "$(IFS=,; echo "${HTTP[*]}")" --token-file "$EF_DIR/admin.token" "$@"

echo
head_of() { curl -sf --cacert "$CA" "$1/v1/ledger/status" | grep -o '"head_hash":"[0-9a-f]*"'; }
for _ in $(seq 1 60); do
  h1=$(head_of "${HTTP[0]}"); h2=$(head_of "${HTTP[1]}"); h3=$(head_of "${HTTP[2]}")
  [ "$h1" = "$h2" ] && [ "$h2" = "$h3" ] && break
  sleep 0.5
done
for url in "${HTTP[@]}"; do echo "$url: $(curl -sf --cacert "$CA" "$url/v1/ledger/status")"; done
[ "$h1" = "$h2" ] && [ "$h2" = "$h3" ] || { echo "the nodes' chains differ" >&2; exit 1; }
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true
"$BIN/edgefabric" ledger verify --data "$EF_DIR/node1" --config "$EF_DIR/node1.toml"
