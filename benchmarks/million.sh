#!/usr/bin/env bash
# A million sockets on this box: `freeim bench scale` (53 nodes, 67 load workers, one Redis)
# in a network namespace of its own whose TCP hash table fits a million connections.
#   sudo benchmarks/million.sh [BIN] [OUT.jsonl] [bench scale flags…]
# Needs root (sysctl, unshare) and redis-server. Run it alone: it takes the whole box and
# about 12 GB for a quarter of an hour.
#
# Why the namespace: both ends of every connection are on this box, so 1M connections are
# 2M sockets in the kernel's established-connection hash table, which this kernel sized at
# boot for 262,144 buckets (`net.ipv4.tcp_ehash_entries`). Chains of about 8 made the lookup
# of every incoming segment (`__inet_lookup_established`) a tenth of the whole box's CPU at
# 870k connections. The main table cannot be resized without a reboot, but a new namespace
# gets a table of `net.ipv4.tcp_child_ehash_entries` buckets.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/freeim}
out=${2:-benchmarks/million.jsonl}
shift $(($# < 2 ? $# : 2))
bin=$(realpath "$bin")
out=$(realpath -m "$out")
sysctl -qw net.ipv4.tcp_child_ehash_entries=4194304
before=$(pgrep -n -x redis-server || true)
export before
unshare --net -- bash -euc '
  ip link set lo up
  # The new namespace starts from the kernel defaults; these are the ones a million needs.
  sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.core.somaxconn=8192 net.ipv4.tcp_max_syn_backlog=8192
  echo "tcp_ehash_entries in the bench namespace: $(sysctl -n net.ipv4.tcp_ehash_entries)" >&2
  # Redis needs little CPU but must not queue behind 120 busy processes: on a real cluster
  # it has cores of its own. Raise the bench Redis'"'"'s priority once it runs.
  ( for _ in $(seq 100); do
      pid=$(pgrep -n -x redis-server) && [ "$pid" != "$before" ] && renice -n -10 -p "$pid" >/dev/null && exit
      sleep 0.2
    done ) &
  exec "$0" bench scale --json "$1" "${@:2}"
' "$bin" "$out" "$@"
