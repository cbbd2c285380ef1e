#!/usr/bin/env bash
# Does a put cost more when a node hosts 1,000 shards (issue 19: "a put's p50 unchanged from 16
# shards")? Two 3-node release clusters on loopback, over TLS and with auditing on, started side
# by side: one with 16 shards, one with 1,000. Every cell runs against one, then the other.
#
#   bash benches/shards-16-vs-1000.sh [loadgen options, e.g. --duration 10 --clients 1,16]
#
# The 1,000-shard cluster is given SETTLE seconds (default 30) to finish its elections first.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p edgefabric --bin edgefabric --bin edgefabric-loadgen
source benches/cluster.sh
SHARDS=16 start_cluster 24800
FEW_DIR=$EF_DIR
FEW_GRPC=$(IFS=,; echo "${GRPC[*]}")
SHARDS=1000 start_cluster 24900
MANY_DIR=$EF_DIR
MANY_GRPC=$(IFS=,; echo "${GRPC[*]}")
sleep "${SETTLE:-30}"

"$BIN/edgefabric-loadgen" \
  --edgefabric "$FEW_GRPC" --token-file "$FEW_DIR/admin.token" \
  --compare "$MANY_GRPC" --compare-token-file "$MANY_DIR/admin.token" \
  --labels 16-shards,1000-shards --ops put "$@"
