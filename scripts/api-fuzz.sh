#!/usr/bin/env bash
# Property-based test of the HTTP API against its OpenAPI document: schemathesis, every check,
# positive and negative data, a bounded number of examples per operation (default 100):
#   ./scripts/api-fuzz.sh [EXAMPLES]
# Makes a Python venv under target/venv with schemathesis from PyPI (first run only), starts a
# private redis-server and a one-node `freeim server` (debug build) on free ports with a random
# key, runs `schemathesis run` against the node's /api/openapi.json, and stops both. Exits
# non-zero on any failure; the node's log is in target/api-fuzz-node.log.
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-100}
venv=target/venv

if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "==> installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis>=4,<5"
fi
cargo build --locked --quiet --bin freeim

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
node=127.0.0.1:$(free_port)
key=$(python3 -c 'import secrets; print(secrets.token_hex(16))')

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
redis_pid=$!
FREEIM_API_KEY=$key target/debug/freeim server --redis "redis://127.0.0.1:$redis_port/0" \
  --server "$node" --servers "$node" 2>target/api-fuzz-node.log &
node_pid=$!
trap 'kill "$node_pid" "$redis_pid" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
python3 - "$node" <<'PY'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://{sys.argv[1]}/healthz", timeout=1)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the node did not become healthy")
PY

echo "==> schemathesis: every check, $examples examples per operation"
"$venv/bin/schemathesis" run "http://$node/api/openapi.json" --url "http://$node" \
  --checks all --mode all --max-examples "$examples" --seed 1 \
  --header "X-API-Key: $key" --generation-database none --no-color
