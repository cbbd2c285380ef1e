#!/usr/bin/env bash
# What auditing costs (issue 6's benchmark): KV puts and gets against two 3-node release
# clusters running at the same time on loopback, one recording every access in the ledger
# (the default) and one with `[audit] enabled = false`; every cell runs against one, then
# the other, so the ratio column compares them under the same machine load. Goal: the audited
# cluster keeps at least 90 % of the unaudited throughput.
#
#   bash benches/audit-on-vs-off.sh [loadgen options, e.g. --duration 10 --clients 16,64]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p edgefabric --bin edgefabric --bin edgefabric-loadgen
source benches/cluster.sh
start_cluster 24600
ON_DIR=$EF_DIR
ON_GRPC=$(IFS=,; echo "${GRPC[*]}")
start_cluster 24700 audit_off
OFF_GRPC=$(IFS=,; echo "${GRPC[*]}")

"$BIN/edgefabric-loadgen" \
  --edgefabric "$OFF_GRPC" --token-file "$EF_DIR/admin.token" \
  --compare "$ON_GRPC" --compare-token-file "$ON_DIR/admin.token" \
  --labels unaudited,audited "$@"
