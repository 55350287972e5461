#!/usr/bin/env bash
# Fan-out bursts of larger messages: 10,000 sockets in one channel on one node get 100-byte,
# 4 KiB and 64 KiB messages (fewer of the large ones: each socket's queue is bounded by
# --max-queue-bytes, 1 MiB), on one private Redis, alternated over RUNS.
#   benchmarks/sizes.sh [RUNS] [OUT.jsonl]
# Needs a release build (cargo build --release) and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
out=${2:-benchmarks/sizes.jsonl}
bin=./target/release/freeim
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_port=$(port)
node="127.0.0.1:$(port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
redis_pid=$!
trap 'kill $node_pid $redis_pid 2>/dev/null || true' EXIT
sleep 0.5
redis="redis://127.0.0.1:$redis_port/0"
RUST_LOG=warn "$bin" server --redis "$redis" --servers "$node" --server "$node" &
node_pid=$!
sleep 1
common=(--redis "$redis" --servers "$node" --watch-pid "$node_pid" --redis-pid "$redis_pid" --json "$out" --connections 10000)
for run in $(seq "$runs"); do
  echo "== run $run"
  "$bin" bench fanout "${common[@]}" --size 100 --messages 200
  "$bin" bench fanout "${common[@]}" --size 4096 --messages 200
  "$bin" bench fanout "${common[@]}" --size 65536 --messages 10
done
