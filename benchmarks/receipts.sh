#!/usr/bin/env bash
# Direct messages with and without receipts, alternated in one run on one private Redis and
# two gateway nodes: p2p max, and the receipts per second the senders' sockets get back.
#   benchmarks/receipts.sh [RUNS] [OUT.jsonl]
# Needs a release build (cargo build --release) and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/cluster.sh
runs=${1:-3}
out=${2:-benchmarks/receipts.jsonl}
bin=./target/release/freeim
start_redis
start_nodes "$bin" 2
common=(--redis "$REDIS_URL" --servers "$SERVERS" "${WATCH[@]}" --redis-pid "$REDIS_PID" --json "$out" --clients 2000 --messages 100000)
for run in $(seq "$runs"); do
  echo "== run $run without receipts"
  "$bin" bench p2p "${common[@]}"
  echo "== run $run with receipts"
  "$bin" bench p2p "${common[@]}" --receipts
done
