#!/usr/bin/env bash
# What TLS costs EdgeFabric: the same release build twice side by side in one run, one cluster
# with TLS (the default) and one with `[tls] enabled = false`, driven by benches/loadgen.rs
# (gRPC puts and linearizable gets; cells alternate between the clusters, so noise hits both).
#
#   bash benches/tls-on-vs-off.sh [loadgen options, e.g. --duration 10 --clients 1,16,256]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p edgefabric --bin edgefabric --bin edgefabric-loadgen
source benches/cluster.sh
start_cluster 24800
ON_DIR=$EF_DIR
ON_GRPC=$(IFS=,; echo "${GRPC[*]}")
start_cluster 24900 tls_off
OFF_GRPC=$(IFS=,; echo "${GRPC[*]}")

"$BIN/edgefabric-loadgen" \
  --edgefabric "$OFF_GRPC" --token-file "$EF_DIR/admin.token" \
  --compare "$ON_GRPC" --compare-token-file "$ON_DIR/admin.token" \
  --labels plaintext,tls "$@"
