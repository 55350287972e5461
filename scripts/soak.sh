#!/usr/bin/env bash
# Soak test: one gateway node on its own redis-server; for MINUTES, cycles of CONNECTIONS
# sockets connecting, joining a channel, receiving messages and disconnecting (the bench's
# fanout scenario), with the node's RSS sampled every minute. Prints the samples and the
# drift between the first and the last sample. Not part of CI (it runs for minutes).
#
#   ./scripts/soak.sh [MINUTES=10] [CONNECTIONS=19000] [MESSAGES=20]
# FREEIM_BIN=path uses that binary instead of building target/release/freeim.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
connections=${2:-19000}
messages=${3:-20}

bin=${FREEIM_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --locked -q
  bin=target/release/freeim
fi
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
node="127.0.0.1:$(free_port)"

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
redis_pid=$!
trap 'kill $node_pid $redis_pid 2>/dev/null || true; rm -rf "$work"' EXIT
sleep 0.5
RUST_LOG=warn "$bin" server --redis "redis://127.0.0.1:$redis_port/0" --server "$node" --servers "$node" \
  >"$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 50); do curl -fs "http://$node/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$node_pid/status"; }
samples=()
echo "node pid $node_pid, idle RSS $(rss_kb) kB; $minutes min of cycles of $connections sockets × $messages messages"
start=$SECONDS
next_sample=$start
cycles=0
while (( SECONDS - start < minutes * 60 )); do
  "$bin" bench fanout --servers "$node" --redis "redis://127.0.0.1:$redis_port/0" --connections "$connections" \
    --messages "$messages" --rate 0 --watch-pid "$node_pid" --json "$work/soak.jsonl" >/dev/null 2>>"$work/bench.log" \
    || { echo "cycle $cycles failed:"; tail -5 "$work/bench.log"; exit 1; }
  cycles=$(( cycles + 1 ))
  # The first sample follows the first cycle: the allocator keeps what one cycle needed,
  # so drift is measured from a warm node.
  if (( SECONDS >= next_sample )); then
    samples+=("$(( (SECONDS - start) / 60 )) $(rss_kb)")
    echo "minute $(( (SECONDS - start) / 60 )): RSS $(rss_kb) kB after $cycles cycles"
    next_sample=$(( next_sample + 60 ))
  fi
done
first=${samples[0]#* }
last=${samples[-1]#* }
echo "cycles: $cycles; RSS at the end of a cycle, per minute (minute kB): ${samples[*]}"
echo "drift: $(( last - first )) kB from the first to the last minute's sample"
sleep 2
echo "idle RSS after the run: $(rss_kb) kB"
missing=$(python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(sum(int(r.get("missing", 0)) for r in rows))' "$work/soak.jsonl" 2>/dev/null || echo "?")
echo "messages missing over all cycles: $missing"
echo "connections still open on the node: $(curl -fs "http://$node/metrics" | awk '/^freeim_connections / { print $2 }')"
