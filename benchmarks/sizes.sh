#!/usr/bin/env bash
# Fan-out bursts of larger messages: 10,000 sockets in one channel on one node get 100-byte,
# 4 KiB and 64 KiB messages (fewer of the large ones: each socket's queue is bounded by
# --max-queue-bytes, 1 MiB), on one private Redis, alternated over RUNS.
#   benchmarks/sizes.sh [RUNS] [OUT.jsonl]
# Needs a release build (cargo build --release) and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/cluster.sh
runs=${1:-3}
out=${2:-benchmarks/sizes.jsonl}
bin=./target/release/freeim
start_redis
start_nodes "$bin" 1
common=(--redis "$REDIS_URL" --servers "$SERVERS" "${WATCH[@]}" --redis-pid "$REDIS_PID" --json "$out" --connections 10000)
for run in $(seq "$runs"); do
  echo "== run $run"
  "$bin" bench fanout "${common[@]}" --size 100 --messages 200
  "$bin" bench fanout "${common[@]}" --size 4096 --messages 200
  "$bin" bench fanout "${common[@]}" --size 65536 --messages 10
done
