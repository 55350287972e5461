# Sourced by the benchmark scripts: a private redis-server and gateway nodes on free ports,
# all stopped on exit (or by `stop_all`).
#   start_redis [redis-server flags…]  sets REDIS_PID, REDIS_PORT, REDIS_URL
#   start_nodes BIN N [server flags…]  sets SERVERS (A,B,…), NODE_PIDS, WATCH (--watch-pid …);
#                                      the nodes get the caller's environment (FREEIM_API_KEY…)
PIDS=()
NODE_PIDS=()

# free_ports N: N distinct free ports, one per line (all held bound until each is picked).
free_ports() {
  python3 -c 'import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held: s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in held))' "$1"
}
free_port() { free_ports 1; }

# Nodes first (a graceful shutdown, while their Redis still answers), then the rest.
stop_all() {
  if [ ${#NODE_PIDS[@]} -gt 0 ]; then
    kill "${NODE_PIDS[@]}" 2>/dev/null || true
    wait "${NODE_PIDS[@]}" 2>/dev/null || true
  fi
  if [ ${#PIDS[@]} -gt 0 ]; then
    kill "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
  fi
  PIDS=()
  NODE_PIDS=()
}
trap stop_all EXIT

start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no "$@" >/dev/null &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
  sleep 0.5
}

start_nodes() {
  local bin=$1 n=$2 names=() server
  shift 2
  for port in $(free_ports "$n"); do names+=("127.0.0.1:$port"); done
  SERVERS=$(IFS=,; echo "${names[*]}")
  NODE_PIDS=()
  WATCH=()
  for server in "${names[@]}"; do
    RUST_LOG=warn "$bin" server --redis "$REDIS_URL" --servers "$SERVERS" --server "$server" "$@" &
    NODE_PIDS+=($!)
    PIDS+=($!)
    WATCH+=(--watch-pid $!)
  done
  sleep 1.5
}
