#!/usr/bin/env bash
# Sends through the HTTP API against sends through the library, alternated in one run on one
# private Redis and two gateway nodes serving the API: p2p max and p2p at 2,000/s (latency).
#   benchmarks/api-ab.sh [RUNS] [OUT.jsonl]
# Needs a release build (cargo build --release) and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/cluster.sh
runs=${1:-3}
out=${2:-benchmarks/api.jsonl}
bin=./target/release/freeim
key=bench-$(date +%s)
start_redis
FREEIM_API_KEY=$key start_nodes "$bin" 2
common=(--redis "$REDIS_URL" --servers "$SERVERS" "${WATCH[@]}" --redis-pid "$REDIS_PID" --json "$out")
for run in $(seq "$runs"); do
  for route in library api; do
    flags=()
    [ "$route" = api ] && flags=(--api-key "$key")
    echo "== run $run p2p max through the $route"
    "$bin" bench p2p "${common[@]}" "${flags[@]}" --clients 2000 --messages 100000
    echo "== run $run p2p at 2,000/s through the $route"
    "$bin" bench p2p "${common[@]}" "${flags[@]}" --clients 2000 --messages 20000 --rate 2000
  done
done
