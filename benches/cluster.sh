# Shared by the benchmark scripts: a 3-node release EdgeFabric cluster on loopback.
#   source benches/cluster.sh; start_cluster BASE_PORT [audit_off|tls_off]
#     → $WORK, $EF_DIR, $HTTP (array), $GRPC (array), $CA (the cluster's ca.pem)
# Sites a, b, c; node K uses gRPC BASE+2(K-1) and HTTP BASE+2(K-1)+1. Stopped on exit.
# TLS on, as `cluster init` writes it (the default every user gets): URLs are https:// and
# EDGEFABRIC_CA_FILE names the CA for the load generators. `audit_off` starts the nodes with
# `[audit] enabled = false`, `tls_off` with `[tls] enabled = false` (to measure what each costs).
# Several clusters may run at once (different base ports); each call sets the variables anew.
BIN=${BIN:-target/release}
WORK=$(mktemp -d /tmp/ef-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start_cluster() { # base port [audit_off]
  local base=$1
  EF_DIR="$WORK/ef-$base"
  "$BIN/edgefabric" cluster init --nodes 3 --sites a,b,c --host 127.0.0.1 --base-port "$base" --out "$EF_DIR" >/dev/null
  local section="" scheme=https
  case "${2:-}" in
    audit_off) section="[audit]" ;;
    tls_off) section="[tls]"; scheme=http ;;
  esac
  if [ -n "$section" ]; then
    for k in 1 2 3; do
      awk -v sec="$section" '/^\[/{s=$0} s==sec && /^enabled *=/{$0="enabled = false"} {print}' "$EF_DIR/node$k.toml" >"$EF_DIR/tmp.toml"
      mv "$EF_DIR/tmp.toml" "$EF_DIR/node$k.toml"
      grep -q '^enabled = false' "$EF_DIR/node$k.toml" || { echo "could not set $section enabled = false" >&2; exit 1; }
    done
  fi
  if [ -n "${SHARDS:-}" ]; then
    for k in 1 2 3; do
      awk -v n="$SHARDS" '/^\[/{s=$0} s=="[cluster]" && /^initial_shards *=/{$0="initial_shards = " n} {print}' \
        "$EF_DIR/node$k.toml" >"$EF_DIR/tmp.toml"
      mv "$EF_DIR/tmp.toml" "$EF_DIR/node$k.toml"
      grep -q "^initial_shards = $SHARDS\$" "$EF_DIR/node$k.toml" || { echo "could not set initial_shards" >&2; exit 1; }
    done
  fi
  CA="$EF_DIR/ca.pem"
  export EDGEFABRIC_CA_FILE="$CA"
  HTTP=(); GRPC=()
  for k in 1 2 3; do
    EDGEFABRIC_LOG=warn "$BIN/edgefabric" serve --config "$EF_DIR/node$k.toml" >"$WORK/ef-$base-$k.log" 2>&1 &
    PIDS+=($!)
    GRPC+=("$scheme://127.0.0.1:$((base + 2 * (k - 1)))")
    HTTP+=("$scheme://127.0.0.1:$((base + 2 * (k - 1) + 1))")
  done
  for url in "${HTTP[@]}"; do
    # Up to 60 s; 5 minutes for a cluster of many shards (each needs a leader first).
    for _ in $(seq 1 $(( ${SHARDS:-16} > 100 ? 600 : 120 ))); do curl -sf --cacert "$CA" "$url/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
    curl -sf --cacert "$CA" "$url/readyz" >/dev/null || { echo "not ready: $url" >&2; exit 1; }
  done
}
