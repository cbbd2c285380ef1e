#!/usr/bin/env bash
# What routing each request to its shard's leader buys (issue 19): one 3-node release cluster
# (TLS, the defaults), driven by benches/loadgen.rs twice per cell, side by side — clients that
# route by the shard map (`edgefabric::kv_client`, `--route leader`) and clients spread over
# the nodes that let the node forward (`--route any`).
#
#   bash benches/route-leader-vs-any.sh [loadgen options, e.g. --duration 10 --clients 1,16,256]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p edgefabric --bin edgefabric --bin edgefabric-loadgen
source benches/cluster.sh
start_cluster 25100
"$BIN/edgefabric-loadgen" --edgefabric "$(IFS=,; echo "${GRPC[*]}")" \
  --token-file "$EF_DIR/admin.token" --route both "$@"
