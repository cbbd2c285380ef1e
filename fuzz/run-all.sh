#!/usr/bin/env bash
# Runs every fuzz target for RUNS executions (default 10 million) on the committed corpus and
# prints each one's final libFuzzer line. Needs nightly and cargo-fuzz (`cargo install
# cargo-fuzz`). A crash stops the script with the target's output; the input is in
# fuzz/artifacts/<target>/.
#
#   bash fuzz/run-all.sh [RUNS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-10000000}
# The regex crates are built without coverage feedback: see fuzz/rustc-wrapper.sh. Cargo does
# not rebuild when only the wrapper changes, so these builds have a target directory of their own.
export RUSTC_WRAPPER="$PWD/fuzz/rustc-wrapper.sh"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <(cargo +nightly fuzz list)
fi
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  start=$(date +%s)
  # No sanitizer: the code under test is safe Rust, whose faults (panics, overflows with debug
  # assertions, allocation bombs past -rss_limit_mb, hangs past -timeout) libFuzzer sees
  # without one, at several times the speed. Add `-s address` to look for memory errors in
  # dependencies' unsafe code.
  if ! cargo +nightly fuzz run -s none --target-dir fuzz/target/wrapped "$t" "fuzz/corpus/$t" -- -runs="$RUNS" -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
    -print_final_stats=1 > "$log" 2>&1; then
    cat "$log"
    echo "FAILED: $t"
    exit 1
  fi
  end=$(date +%s)
  echo "$t: $(grep -E '^Done [0-9]+ runs' "$log" | tail -1) (wall $((end - start)) s)"
  rm -f "$log"
done
