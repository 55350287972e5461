#!/usr/bin/env bash
# Durable against non-durable sends, alternated in one run on one private Redis and one
# gateway node: p2p max and a fan-out burst, then the Redis memory per logged message.
#   benchmarks/durable-ab.sh [RUNS] [OUT.jsonl]
# Needs a release build (cargo build --release) and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/cluster.sh
runs=${1:-3}
out=${2:-benchmarks/durable.jsonl}
bin=./target/release/freeim
start_redis
start_nodes "$bin" 1
redis=$REDIS_URL
redis_port=$REDIS_PORT
node=$SERVERS
common=(--redis "$redis" --servers "$node" "${WATCH[@]}" --redis-pid "$REDIS_PID" --json "$out")
for run in $(seq "$runs"); do
  for durable in "" --durable; do
    echo "== run $run p2p ${durable:-non-durable}"
    "$bin" bench p2p "${common[@]}" $durable --clients 2000 --messages 100000
    echo "== run $run fanout ${durable:-non-durable}"
    "$bin" bench fanout "${common[@]}" $durable --connections 10000 --messages 200
  done
done
# Memory per logged message: 100,000 durable 100-byte messages into an empty log.
redis-cli -p "$redis_port" FLUSHALL >/dev/null
before=$(redis-cli -p "$redis_port" INFO memory | awk -F: '/^used_memory:/{print $2}' | tr -d '\r')
message=$(printf 'x%.0s' $(seq 98))
python3 -c "
for i in range(100000): print('$message')" | "$bin" ctl --redis "$redis" --servers "$node" send --durable --to 3 --history-size 100000 - >/dev/null
after=$(redis-cli -p "$redis_port" INFO memory | awk -F: '/^used_memory:/{print $2}' | tr -d '\r')
entries=$(redis-cli -p "$redis_port" XLEN "im_v2_wsLog$node")
echo "redis memory per logged message: $(( (after - before) / entries )) B ($entries entries, content of 100 bytes)"
