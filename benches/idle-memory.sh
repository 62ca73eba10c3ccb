#!/usr/bin/env bash
# Idle memory per connection: start the release server (one shard, on the given driver), read
# its RSS, hold N idle WebSocket connections with `ringcast bench connect`, read its RSS and the
# kernel's socket counters again, and print the growth per connection.
#
#   benches/idle-memory.sh [uring|epoll] [N] [PATH]   (default: uring 19000 /echo)
#
# PATH /app/app-key?protocol=7 measures idle Pusher connections (connected, no subscription).
#
# Bounded: N must stay under the 20,000 open-file limit of each process here; the connections
# are held for a few seconds and closed; every process started is ended by its PID.
set -euo pipefail
IO=${1:-uring}
N=${2:-19000}
TARGET=${3:-/echo}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${RINGCAST_BIN:-$ROOT/target/release/ringcast}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --quiet)
OUT=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$OUT"' EXIT

"$BIN" serve --io "$IO" --shards 1 --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --echo \
    >"$OUT/server.out" 2>"$OUT/server.err" &
SERVER=$!
for _ in $(seq 100); do grep -q 'listening on' "$OUT/server.out" 2>/dev/null && break; sleep 0.05; done
ADDR=$(sed -n 's/^ringcast: listening on //p' "$OUT/server.out")
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER/status"; }
sock_pages() { awk '/^TCP:/ {for (i=1;i<=NF;i++) if ($i=="mem") print $(i+1)}' /proc/net/sockstat; }
slab_kib() { awk '/^Slab:/ {print $2}' /proc/meminfo; }

sleep 0.5
RSS0=$(rss_kib); PAGES0=$(sock_pages); SLAB0=$(slab_kib)
"$BIN" bench connect --url "ws://$ADDR$TARGET" --connections "$N" --hold-s 6 >"$OUT/bench.out" 2>&1 &
BENCH=$!
# Sample in the middle of the hold, after every handshake finished.
for _ in $(seq 200); do grep -q 'holding\|connected' "$OUT/bench.out" 2>/dev/null && break; sleep 0.1; done
sleep 3
RSS1=$(rss_kib); PAGES1=$(sock_pages); SLAB1=$(slab_kib)
wait "$BENCH" || true
CONNECTED=$(grep -m1 -o 'connected[^0-9]*[0-9]*' "$OUT/bench.out" | grep -o '[0-9]*$' || echo "$N")

awk -v io="$IO" -v path="$TARGET" -v n="$N" -v c="$CONNECTED" -v r0="$RSS0" -v r1="$RSS1" -v p0="$PAGES0" -v p1="$PAGES1" \
    -v s0="$SLAB0" -v s1="$SLAB1" 'BEGIN {
  printf "driver=%s path=%s connections=%s (connected %s)\n", io, path, n, c
  printf "server RSS: %d KiB -> %d KiB: %.0f bytes per connection\n", r0, r1, (r1 - r0) * 1024 / c
  printf "kernel TCP buffer pages (sockstat mem): %d -> %d\n", p0, p1
  printf "kernel slab: %d KiB -> %d KiB: %.0f bytes per socket (both ends of loopback pairs: halve it for the server side)\n", s0, s1, (s1 - s0) * 1024 / (2 * c)
}'
cat "$OUT/bench.out" | sed 's/^/  bench: /' | head -20
