# Shared by the benchmark scripts that compare with etcd: a scratch directory whose processes
# are stopped on exit, etcd installed if missing, and a 3-member etcd 3.4 on loopback over TLS
# with certificates from an EdgeFabric cluster's CA.
#   bench_work PREFIX   → WORK (a new directory), PIDS (processes stopped, WORK removed on exit)
#   ensure_etcd
#   start_etcd EF_DIR PEER_BASE CLIENT_BASE   (members on PEER_BASE+i and CLIENT_BASE+i, i = 1..3)
#     → ETCD (array of pids), ETCD_URLS (array of client URLs)
# etcd runs with its default durability (WAL fsync on every commit). Peers use mutual TLS;
# clients get server TLS only: with a client --trusted-ca-file, etcd 3.4 demands a client
# certificate from every client, and neither side's clients authenticate by certificate in
# these benchmarks (EdgeFabric's by bearer token; etcd's not at all).

bench_work() { # prefix
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

ensure_etcd() {
  if ! command -v etcd >/dev/null; then
    if [ "$(id -u)" != 0 ]; then echo "etcd is missing: install Debian's etcd-server package" >&2; exit 1; fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  fi
}

start_etcd() { # ef_dir peer_base client_base
  local ef=$1 peer=$2 client=$3 i cluster=""
  for i in 1 2 3; do
    "$BIN/edgefabric" cluster cert --dir "$ef" --host 127.0.0.1 --name "etcd-$i" --out "$WORK/etcd$i-tls" >/dev/null
    cluster+="${cluster:+,}e$i=https://127.0.0.1:$((peer + i))"
  done
  ETCD=(); ETCD_URLS=()
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$WORK/etcd$i" \
      --listen-peer-urls "https://127.0.0.1:$((peer + i))" --initial-advertise-peer-urls "https://127.0.0.1:$((peer + i))" \
      --listen-client-urls "https://127.0.0.1:$((client + i))" --advertise-client-urls "https://127.0.0.1:$((client + i))" \
      --cert-file "$WORK/etcd$i-tls.crt" --key-file "$WORK/etcd$i-tls.key" \
      --peer-cert-file "$WORK/etcd$i-tls.crt" --peer-key-file "$WORK/etcd$i-tls.key" \
      --peer-trusted-ca-file "$ef/ca.pem" --peer-client-cert-auth \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "bench-$client" \
      --log-level error >"$WORK/etcd$i.log" 2>&1 &
    PIDS+=($!); ETCD+=($!)
    ETCD_URLS+=("https://127.0.0.1:$((client + i))")
  done
}
