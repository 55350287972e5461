#!/usr/bin/env bash
# Direct messages with and without receipts, alternated in one run on one private Redis and
# two gateway nodes: p2p max, and the receipts per second the senders' sockets get back.
#   benchmarks/receipts.sh [RUNS] [OUT.jsonl]
# Needs a release build (cargo build --release) and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
out=${2:-benchmarks/receipts.jsonl}
bin=./target/release/freeim
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
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
  RUST_LOG=warn "$bin" server --redis "$redis" --servers "$servers" --server "$server" &
  pids+=($!)
  watch+=(--watch-pid $!)
done
sleep 1.5
common=(--redis "$redis" --servers "$servers" "${watch[@]}" --redis-pid "$redis_pid" --json "$out" --clients 2000 --messages 100000)
for run in $(seq "$runs"); do
  echo "== run $run without receipts"
  "$bin" bench p2p "${common[@]}"
  echo "== run $run with receipts"
  "$bin" bench p2p "${common[@]}" --receipts
done
