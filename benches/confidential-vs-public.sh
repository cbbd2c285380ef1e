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
source benches/cluster.sh
start_cluster 24400
"$BIN/edgefabric" ns create conf --class confidential --key-sites a,b,c \
  --endpoint "${HTTP[0]}" --token-file "$EF_DIR/admin.token" >/dev/null

"$BIN/edgefabric-loadgen" \
  --edgefabric "$(IFS=,; echo "${GRPC[*]}")" \
  --token-file "$EF_DIR/admin.token" --ns default,conf --value-size 1024 "$@"
