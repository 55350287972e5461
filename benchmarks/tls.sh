#!/usr/bin/env bash
# wss:// against ws://, alternated: a node serving TLS (a self-signed certificate made here)
# and a plain one, each on a fresh private Redis; 10,000 sockets connecting as fast as they
# can, then a fan-out burst of 200 channel messages to them.
#   [FREEIM_BIN=…] benchmarks/tls.sh [RUNS] [OUT.jsonl]
# Needs a release build (cargo build --release), redis-server and openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/cluster.sh
runs=${1:-3}
out=${2:-benchmarks/tls.jsonl}
bin=${FREEIM_BIN:-./target/release/freeim}
dir=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=freeim-bench \
  -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
for run in $(seq "$runs"); do
  for scheme in ws wss; do
    start_redis
    tls=()
    [ "$scheme" = wss ] && tls=(--tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem")
    start_nodes "$bin" 1 "${tls[@]}"
    client=(--redis "$REDIS_URL" --servers "$SERVERS" "${WATCH[@]}" --redis-pid "$REDIS_PID" --json "$out")
    [ "$scheme" = wss ] && client+=(--tls-ca "$dir/cert.pem")
    echo "== run $run $scheme"
    "$bin" bench connect "${client[@]}" --connections 10000 --rate 0
    "$bin" bench fanout "${client[@]}" --connections 10000 --messages 200
    stop_all
  done
done
rm -rf "$dir"
