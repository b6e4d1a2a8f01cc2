#!/usr/bin/env bash
# Runs every fuzz target for a fixed time (default 20 s each) from the committed seed
# corpora; new inputs go to a scratch directory, crashes to fuzz/artifacts. Fails on a crash.
#   tools/fuzz-smoke.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1   # cargo-fuzz needs nightly flags; the stable toolchain allows them so
for target in frame http_request sync_message hocuspocus_message token side_message authorize_answer; do
  scratch=$(mktemp -d)
  log="$scratch.log"
  echo "fuzz $target for ${seconds}s"
  if ! cargo fuzz run -O "$target" "$scratch" "fuzz/corpus/$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz target $target FAILED (the input is in fuzz/artifacts/$target)"
    exit 1
  fi
  grep -E "^Done" "$log"
  rm -rf "$scratch" "$log"
done
