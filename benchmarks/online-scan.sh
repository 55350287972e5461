#!/usr/bin/env bash
# Listing 1,000,000 online clients: the longest Redis command while `freeim ctl online` pages
# through `{P}Online` with HSCAN, against FreeIM's single `HKEYS {P}Online`.
#   benchmarks/online-scan.sh [CLIENTS]
# Needs a release build (cargo build --release), redis-server and redis-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-1000000}
bin=./target/release/freeim
source benchmarks/cluster.sh
start_redis
port=$REDIS_PORT
cli() { redis-cli -p "$port" "$@"; }
python3 -c "
import sys
out = sys.stdout
for start in range(1, $clients + 1, 1000):
    ids = range(start, min(start + 1000, $clients + 1))
    args = ['HSET', 'im_v2_wsOnline'] + [a for i in ids for a in (str(i), '1')]
    out.write('*%d\r\n' % len(args) + ''.join('\$%d\r\n%s\r\n' % (len(a), a) for a in args))
" | cli --pipe >/dev/null
echo "{P}Online holds $(cli HLEN im_v2_wsOnline) clients"
# Record every command from here, with its duration.
cli CONFIG SET slowlog-log-slower-than 0 >/dev/null
cli CONFIG SET slowlog-max-len 100000 >/dev/null
cli SLOWLOG RESET >/dev/null
listed=$("$bin" ctl --redis "redis://127.0.0.1:$port/0" --servers 127.0.0.1:1 online | wc -l)
scan_max=$(cli SLOWLOG GET 100000 | python3 -c "
import sys
text = sys.stdin.read().split()
# redis-cli prints each entry as: id, unix time, duration µs, then the command words.
best = 0
for i, word in enumerate(text):
    if word == 'HSCAN' and i >= 1 and text[i - 1].isdigit():
        best = max(best, int(text[i - 1]))
print(best)")
scans=$(cli SLOWLOG GET 100000 | grep -c '^HSCAN$' || true)
cli SLOWLOG RESET >/dev/null
cli HKEYS im_v2_wsOnline >/dev/null
hkeys=$(cli SLOWLOG GET 10 | python3 -c "
import sys
text = sys.stdin.read().split()
print(max(int(text[i - 1]) for i, w in enumerate(text) if w == 'HKEYS'))")
echo "ctl online listed $listed clients in $scans HSCAN pages; longest HSCAN: $scan_max µs"
echo "FreeIM's HKEYS {P}Online of the same hash: $hkeys µs"
