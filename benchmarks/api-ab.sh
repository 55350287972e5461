#!/usr/bin/env bash
# Sends through the HTTP API against sends through the library, alternated in one run on one
# private Redis and two gateway nodes serving the API: p2p max and p2p at 2,000/s (latency).
#   benchmarks/api-ab.sh [RUNS] [OUT.jsonl]
# Needs a release build (cargo build --release) and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
out=${2:-benchmarks/api.jsonl}
bin=./target/release/freeim
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
key=bench-$(date +%s)
redis_port=$(port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids=($!)
redis_pid=${pids[0]}
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
sleep 0.5
redis="redis://127.0.0.1:$redis_port/0"
servers="127.0.0.1:$(port),127.0.0.1:$(port)"
watch=()
for server in ${servers//,/ }; do
  RUST_LOG=warn FREEIM_API_KEY=$key "$bin" server --redis "$redis" --servers "$servers" --server "$server" &
  pids+=($!)
  watch+=(--watch-pid $!)
done
sleep 1.5
common=(--redis "$redis" --servers "$servers" "${watch[@]}" --redis-pid "$redis_pid" --json "$out")
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
