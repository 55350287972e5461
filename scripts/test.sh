#!/usr/bin/env bash
# The project's whole test run: installs what the tests need when it is missing (as root,
# from Debian's packages and npm), then format check, clippy, cargo test, browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ -d e2e ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${missing[*]}; run as root or install them (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# rustfmt and clippy come with rustup's default profile; a minimal toolchain lacks them.
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    say "installing the $component component"
    rustup component add "$component"
  fi
done

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

say "cargo test"
cargo test --locked

if [ -d e2e ]; then
  say "browser tests"
  (cd e2e && npm ci --no-audit --no-fund --loglevel=error)
  cargo build --release --locked
  (cd e2e && node --test)
fi
