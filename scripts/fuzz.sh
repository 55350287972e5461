#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each): ./scripts/fuzz.sh [SECONDS] [TARGET...]
# Installs cargo-fuzz when missing. Uses a nightly toolchain when there is one, else the
# stable one with RUSTC_BOOTSTRAP=1 (libFuzzer's sanitizer flags are nightly-only).
# Not part of CI's run. A crash is saved under fuzz/artifacts/<target>/; add it as a
# regression test, then fix.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("${fuzz[@]}" list)
for target in "${targets[@]}"; do
  echo "==> $target (${seconds}s)"
  "${fuzz[@]}" run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
