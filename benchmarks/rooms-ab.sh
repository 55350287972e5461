#!/usr/bin/env bash
# One big room over 3 nodes, the binary before the in-memory channel members against the one
# after, alternated in one run, each scenario on a fresh private Redis and fresh nodes of the
# binary measured (which also runs the bench): a channel burst and paced comments to a
# 50,000-member room, the same burst as a broadcast (the reference), and rooms of 100, 1,000
# and 10,000 members (Redis cost against room size). Prints deliveries/s, p99, Redis CPU per
# message (the process, from schedstat) and Redis command time per message (INFO commandstats).
#   benchmarks/rooms-ab.sh OLD_BIN NEW_BIN [RUNS] [OUT.jsonl]
# OLD_BIN `-` measures NEW_BIN alone. Needs redis-server; each binary a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/cluster.sh
old=$1
new=$2
runs=${3:-1}
out=${4:-benchmarks/rooms.jsonl}
# measure ARM BIN SCENARIO FANOUT-FLAGS…: one scenario on a fresh cluster of BIN.
measure() {
  local arm=$1 bin=$2 scenario=$3
  shift 3
  start_redis --maxclients 20000
  start_nodes "$bin" 3
  local tmp
  tmp=$(mktemp)
  echo "== $arm $scenario"
  "$bin" bench fanout --redis "$REDIS_URL" --servers "$SERVERS" "${WATCH[@]}" --redis-pid "$REDIS_PID" --json "$tmp" "$@"
  python3 - "$tmp" "$arm" "$scenario" "$out" <<'PY'
import json, sys
tmp, arm, scenario, out = sys.argv[1:]
with open(tmp) as f, open(out, "a") as o:
    for line in f:
        r = json.loads(line)
        r["arm"], r["case"] = arm, scenario
        o.write(json.dumps(r) + "\n")
PY
  rm -f "$tmp"
  stop_all
}

for run in $(seq "$runs"); do
  for arm in old new; do
    [ "$arm" = old ] && [ "$old" = - ] && continue
    bin=$old
    [ "$arm" = new ] && bin=$new
    measure "$arm" "$bin" room-50k-burst --connections 50000 --messages 200 --workers 4
    measure "$arm" "$bin" room-50k-100/s --connections 50000 --messages 500 --rate 100 --workers 4
    measure "$arm" "$bin" broadcast-50k-burst --connections 50000 --messages 200 --workers 4 --broadcast
    measure "$arm" "$bin" room-10k-burst --connections 10000 --messages 1000 --workers 2
    measure "$arm" "$bin" room-1k-burst --connections 1000 --messages 5000
    measure "$arm" "$bin" room-100-burst --connections 100 --messages 5000
    measure "$arm" "$bin" room-100-100/s --connections 100 --messages 500 --rate 100
  done
done

python3 - "$out" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if '"arm"' in l]
cases = {}
for r in rows:
    cpu = dict(r["cpu"])
    redis_us = cpu.get("redis", 0) * r["elapsed_s"] / max(r["messages"], 1) * 1e6
    rss = r.get("rss_loaded_kib", 0) / 1024
    command_us = r.get("redis_command_us", float("nan"))
    cases.setdefault((r["case"], r["arm"]), []).append((r["deliveries_per_s"], r["latency"]["p99_ms"], redis_us, r["missing"], rss, command_us))
print("| case | arm | runs | deliveries/s (median) | p99 ms (median) | Redis CPU per message (median) | Redis command time per message (median) | nodes' RSS, members joined (median) | missing |")
print("|---|---|---|---|---|---|---|---|---|")
for (case, arm), v in sorted(cases.items()):
    med = lambda i: statistics.median(x[i] for x in v)
    print(f"| {case} | {arm} | {len(v)} | {med(0):,.0f} | {med(1):.1f} | {med(2):,.0f} µs | {med(5):.1f} µs | {med(4):.1f} MiB | {sum(x[3] for x in v)} |")
PY
