#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each): ./scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz). Not part of CI's run.
# A crash is saved under fuzz/artifacts/<target>/; add it as a regression test, then fix.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for target in "${targets[@]}"; do
  echo "==> $target (${seconds}s)"
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
