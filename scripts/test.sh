#!/usr/bin/env bash
# The project's whole test run: installs what the tests need when it is missing (as root,
# from Debian's packages and npm), then format check, clippy, the library without default
# features (clippy, tests, dependency tree), cargo test, browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# Debian's python3 has the venv module but not ensurepip, without which a venv has no pip.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3 python3-venv)
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

# The library as a business app takes it (`default-features = false`): ImClient, the wire
# format and the backends, without the gateway's and the binary's dependencies.
say "cargo clippy --no-default-features"
cargo clippy --all-targets --locked --no-default-features -- -D warnings

say "cargo test --no-default-features (library and doc tests)"
cargo test --locked --no-default-features --lib
cargo test --locked --no-default-features --doc

say "cargo tree --no-default-features: none of the gateway's or the binary's heavy crates"
heavy='^(axum|clap|anyhow|tracing-subscriber|tikv-jemallocator|tikv-jemalloc-sys|rustls|tokio-rustls|tungstenite|hyper) '
tree=$(cargo tree --locked -e normal --no-default-features --prefix none)
if found=$(grep -E "$heavy" <<<"$tree"); then
  echo "the library without default features pulls in:" >&2
  sort -u <<<"$found" >&2
  exit 1
fi

say "cargo test"
cargo test --locked

# About 25 s (100 examples per operation); the venv is made once, under target/venv.
say "schemathesis: the HTTP API against its OpenAPI document"
./scripts/api-fuzz.sh

if [ -d e2e ]; then
  say "browser tests"
  (cd e2e && npm ci --no-audit --no-fund --loglevel=error)
  cargo build --release --locked
  (cd e2e && node --test)
fi
