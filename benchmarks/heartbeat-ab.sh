#!/usr/bin/env bash
# What heartbeats cost: 2 nodes with --ping-interval 1 hold 38,000 idle sockets (38,000 pings
# and pongs a second, as a million sockets at the default 25 s), and the CPU of the nodes
# and of the load workers is read over 20 s of the hold, old binary against new, alternated.
#   benchmarks/heartbeat-ab.sh OLD_BIN NEW_BIN [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/cluster.sh
old=$1
new=$2
runs=${3:-2}
# cpu_ticks PID…: user+system clock ticks of the processes and their threads, summed.
cpu_ticks() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0; done | paste -sd+ | bc; }
for run in $(seq "$runs"); do
  for arm in old new; do
    bin=$old
    [ "$arm" = new ] && bin=$new
    start_redis --maxclients 20000
    start_nodes "$bin" 2 --ping-interval 1 --pong-timeout 5
    "$bin" bench connect --redis "$REDIS_URL" --servers "$SERVERS" --connections 38000 --rate 0 --hold 45 >/dev/null 2>&1 &
    bench=$!
    sleep 15
    workers=$(pgrep -P "$bench" | paste -sd' ')
    # shellcheck disable=SC2086
    n0=$(cpu_ticks "${NODE_PIDS[@]}"); w0=$(cpu_ticks $workers)
    sleep 20
    # shellcheck disable=SC2086
    n1=$(cpu_ticks "${NODE_PIDS[@]}"); w1=$(cpu_ticks $workers)
    echo "$arm run $run: nodes $(echo "scale=2; ($n1 - $n0) / 2000" | bc) cores, workers $(echo "scale=2; ($w1 - $w0) / 2000" | bc) cores, for 38,000 pings/s"
    wait "$bench" || true
    stop_all
  done
done
