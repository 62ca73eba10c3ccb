#!/usr/bin/env bash
# ringcast against Bun, Node ws, tokio-tungstenite and fastwebsockets, in one run, on the same
# endpoints (see README.md beside this file). Installs the peers, builds ringcast, then for each
# workload x server: starts the server pinned to one CPU, runs `ringcast bench` pinned to the
# other, stops the server by its PID, and at the end prints one markdown table.
#
#   benches/compare/run.sh                  # the full run
#   QUICK=1 benches/compare/run.sh          # every workload 10x smaller
#
# Settings (environment):
#   SERVERS="ringcast bun node-ws tokio-tungstenite fastwebsockets"   which servers, in order
#   WORKLOADS="fanout-ws fanout-http fanout-rate echo idle"           which workloads, in order
#   QUICK=1          10x smaller workloads
#   INSTALL=0        skip npm ci and the cargo builds (use what is built)
#   SMOKE=strict     a server that fails the smoke test is not measured (default);
#   SMOKE=warn       measure it anyway; SMOKE=off: no smoke test
#   SERVER_CPU=0 LOAD_CPU=1   the CPUs for the server and for the load tool
#   PORT_BASE=17900  servers listen on 127.0.0.1:PORT_BASE+n (a new port for every start)
#   OUT=DIR          keep the raw results there (default: a new directory under /tmp)
#   RINGCAST_BIN=... BENCH_BIN=...   the ringcast server / the load tool to use (default: this
#                    tree's target/release/ringcast, built by the install step)
#
# Bounded: every bench runs under `timeout`, every server started is stopped by its PID (TERM,
# then KILL after 10 s), and all traffic stays on 127.0.0.1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# The ringcast server and the load tool (`ringcast bench`); both default to this tree's build.
RINGCAST_BIN=${RINGCAST_BIN:-$ROOT/target/release/ringcast}
BENCH_BIN=${BENCH_BIN:-$ROOT/target/release/ringcast}
SERVERS=${SERVERS:-"ringcast bun node-ws tokio-tungstenite fastwebsockets"}
WORKLOADS=${WORKLOADS:-"fanout-ws fanout-http fanout-rate echo idle"}
QUICK=${QUICK:-0}
INSTALL=${INSTALL:-1}
SMOKE=${SMOKE:-strict}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT_BASE=${PORT_BASE:-17900}
TOKEN=${TOKEN:-compare-$RANDOM$RANDOM$RANDOM}
OUT=${OUT:-$(mktemp -d /tmp/ringcast-compare.XXXXXX)}
mkdir -p "$OUT"

# Workload sizes (QUICK=1: 10x smaller).
if [ "$QUICK" = 1 ]; then
    SUBS=500 MSGS=100 RATE_MSGS=200 ECHO_CONNS=10 ECHO_S=1 IDLE_CONNS=1900 HOLD_S=3
else
    SUBS=5000 MSGS=1000 RATE_MSGS=2000 ECHO_CONNS=100 ECHO_S=10 IDLE_CONNS=19000 HOLD_S=5
fi
RATE=200
BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-300}
# The idle workload needs an open file per connection, in the server and in the load tool.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -le "$((IDLE_CONNS + 100))" ]; then
    printf 'warning: open-file limit %s is too low for %s idle connections\n' "$(ulimit -n)" "$IDLE_CONNS" >&2
fi

# The bench command line of workload $1 against a server on port $2 with PID $3.
workload_args() {
    local url="ws://127.0.0.1:$2"
    case $1 in
    fanout-ws) echo "fanout --url $url --topic bench --subscribers $SUBS --messages $MSGS --bytes 64 --publish ws --server-pid $3 --json" ;;
    fanout-http) echo "fanout --url $url --topic bench --subscribers $SUBS --messages $MSGS --bytes 64 --publish http --pipeline 32 --token $TOKEN --server-pid $3 --json" ;;
    fanout-rate) echo "fanout --url $url --topic bench --subscribers $SUBS --rate $RATE --messages $RATE_MSGS --bytes 64 --publish ws --server-pid $3 --json" ;;
    echo) echo "echo --url $url/echo --connections $ECHO_CONNS --in-flight 16 --bytes 32 --duration-s $ECHO_S --server-pid $3 --json" ;;
    idle) echo "connect --url $url/echo --connections $IDLE_CONNS --hold-s $HOLD_S --json" ;;
    *) echo "unknown workload $1" >&2; return 1 ;;
    esac
}
workload_kind() { case $1 in fanout-*) echo fanout ;; echo) echo echo ;; idle) echo idle ;; esac; }
# Workloads that use only /echo (measured even when a server fails the /topics part of the smoke test).
echo_only_workload() { case $1 in echo | idle) return 0 ;; *) return 1 ;; esac; }

log() { printf '%s\n' "$*" >&2; }

# --- install ---------------------------------------------------------------------------------
timed() {
    local t0=$SECONDS
    "$@"
    log "    ($((SECONDS - t0)) s)"
}
if [ "$INSTALL" = 1 ]; then
    log "== install"
    log "  npm ci (bun, ws)"
    timed bash -c "cd '$HERE' && npm ci --no-audit --no-fund --loglevel=error >/dev/null"
    # bun's postinstall puts the platform binary in place; if it did not run, run it.
    if ! "$HERE/node_modules/.bin/bun" --version >/dev/null 2>&1; then
        (cd "$HERE/node_modules/bun" && node install.js)
    fi
    log "  cargo build --release (peers workspace)"
    timed cargo build --release --locked --quiet --manifest-path "$HERE/peers/rust/Cargo.toml"
    log "  cargo build --release (ringcast)"
    timed bash -c "cd '$ROOT' && cargo build --release --quiet"
fi
BUN="$HERE/node_modules/.bin/bun"
PEERS="$HERE/peers/rust/target/release"

# From here on this script and everything it starts without taskset runs on the load CPU.
taskset -cp "$LOAD_CPU" $$ >/dev/null

# --- servers ---------------------------------------------------------------------------------
# shellcheck source=benches/compare/lib.sh
. "$HERE/lib.sh"

server_cmd() {
    case $1 in
    ringcast)
        SERVER_CMD=("$RINGCAST_BIN" serve --shards 1 --listen "127.0.0.1:$PORT" --admin-listen 127.0.0.1:0 --echo)
        # Until this build of ringcast has the publish flags, start it without them (its /topics
        # part of the smoke test then fails, and only the /echo workloads are measured).
        if "$RINGCAST_BIN" serve --help 2>/dev/null | grep -q -- --allow-client-publish; then
            SERVER_CMD+=(--allow-client-publish --publish-token "$TOKEN")
        fi
        ;;
    bun) SERVER_CMD=("$BUN" "$HERE/peers/bun/server.ts") ;;
    node-ws) SERVER_CMD=(node "$HERE/peers/node-ws/server.js") ;;
    tokio-tungstenite) SERVER_CMD=("$PEERS/tokio-tungstenite-peer") ;;
    fastwebsockets) SERVER_CMD=("$PEERS/fastwebsockets-peer") ;;
    *) log "unknown server $1"; return 1 ;;
    esac
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo ""; }
established() { ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l; }

# --- smoke test --------------------------------------------------------------------------------
declare -A SMOKED
if [ "$SMOKE" != off ]; then
    log "== smoke test (benches/compare/smoke.js) against every server"
    for s in $SERVERS; do
        if ! start_server "$s" "$OUT/smoke.$s.server.log"; then
            SMOKED[$s]="start_failed"
            log "  $s: did not start: $(tail -n 3 "$OUT/smoke.$s.server.log" | tr '\n' ' ')"
            continue
        fi
        if timeout 60 node "$HERE/smoke.js" "127.0.0.1:$PORT" "$TOKEN" >"$OUT/smoke.$s.log" 2>&1; then
            SMOKED[$s]=ok
        elif timeout 60 node "$HERE/smoke.js" "127.0.0.1:$PORT" "$TOKEN" --echo-only >"$OUT/smoke.$s.echo.log" 2>&1; then
            SMOKED[$s]=echo_only
        else
            SMOKED[$s]=failed
        fi
        stop_server
        log "  $s: ${SMOKED[$s]} ($(tail -n 1 "$OUT/smoke.$s.log"))"
        if [ "${SMOKED[$s]}" != ok ]; then grep -E '^FAIL' "$OUT/smoke.$s.log" | sed 's/^/      /' >&2 || true; fi
    done
fi

# --- measure -----------------------------------------------------------------------------------
for w in $WORKLOADS; do
    kind=$(workload_kind "$w")
    for s in $SERVERS; do
        base="$OUT/$w.$s"
        smoke=${SMOKED[$s]:-skipped}
        if [ "$SMOKE" = strict ] && [ "$smoke" != ok ] && [ "$smoke" != skipped ] &&
            ! { [ "$smoke" = echo_only ] && echo_only_workload "$w"; }; then
            write_meta "$base.meta" "workload=$w" "server=$s" "kind=$kind" "status=not measured" "note=smoke test: $smoke"
            continue
        fi
        if ! start_server "$s" "$base.server.log"; then
            cp "$base.server.log" "$base.err"
            write_meta "$base.meta" "workload=$w" "server=$s" "kind=$kind" "status=did not start"
            log "  $w / $s: server did not start"
            continue
        fi
        read -r -a args <<<"$(workload_args "$w" "$PORT" "$SERVER_PID")"
        log "== $w / $s: ringcast bench ${args[*]}"
        cpu0=$(cpu_s "$SERVER_PID")
        rss0=$(rss_kib "$SERVER_PID")
        t0=$(date +%s.%N)
        TIMEFORMAT='%U %S'
        status=ok
        if [ "$kind" = idle ]; then
            { time timeout -k 5 "$BENCH_TIMEOUT_S" taskset -c "$LOAD_CPU" "$BENCH_BIN" bench "${args[@]}" \
                >"$base.json" 2>"$base.err"; } 2>"$base.time" &
            bench=$!
            # Wait for all connections (or a count that has not grown for 2 s), then read the RSS.
            last=-1 stable=0 rss1='' conns=''
            while kill -0 "$bench" 2>/dev/null; do
                sleep 0.25
                n=$(established "$PORT")
                if [ "$n" -gt 0 ] && [ "$n" -eq "$last" ]; then stable=$((stable + 1)); else stable=0; fi
                last=$n
                if [ "$n" -ge "$IDLE_CONNS" ] || [ "$stable" -ge 8 ]; then
                    sleep 0.5
                    rss1=$(rss_kib "$SERVER_PID")
                    conns=$(established "$PORT")
                    break
                fi
            done
            wait "$bench" || status="bench failed (exit $?)"
        else
            { time timeout -k 5 "$BENCH_TIMEOUT_S" taskset -c "$LOAD_CPU" "$BENCH_BIN" bench "${args[@]}" \
                >"$base.json" 2>"$base.err"; } 2>"$base.time" || status="bench failed (exit $?)"
            rss1='' conns=''
        fi
        t1=$(date +%s.%N)
        cpu1=$(cpu_s "$SERVER_PID")
        stop_server
        load_cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$base.time" 2>/dev/null || echo "")
        server_cpu=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { if (a != "" && b != "") printf "%.2f", b - a }')
        note=
        [ "$smoke" = ok ] || note="smoke test: $smoke"
        write_meta "$base.meta" "workload=$w" "server=$s" "kind=$kind" "status=$status" "note=$note" \
            "load_cpu_s=$load_cpu" "server_cpu_s_proc=$server_cpu" "wall_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" \
            "rss0_kib=$rss0" "rss1_kib=$rss1" "conns_at_sample=$conns"
        if [ "$status" != ok ]; then log "   $status: $(tail -n 2 "$base.err" | tr '\n' ' ')"; fi
    done
done

# --- table -------------------------------------------------------------------------------------
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo
echo "ringcast compare, $(date -u '+%Y-%m-%d %H:%M UTC'), $(getconf _NPROCESSORS_ONLN) CPUs ($cpu_model), $(uname -sr)," \
    "ringcast $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), bun $("$BUN" --version 2>/dev/null || echo '?')," \
    "node $(node --version), ws $(node -p "require('$HERE/node_modules/ws/package.json').version" 2>/dev/null || echo '?')$([ "$QUICK" = 1 ] && echo ', QUICK=1 (10x smaller)')."
echo "Server on CPU $SERVER_CPU, load tool on CPU $LOAD_CPU; raw results in $OUT."
if [ "$RINGCAST_BIN" != "$ROOT/target/release/ringcast" ] || [ "$BENCH_BIN" != "$ROOT/target/release/ringcast" ]; then
    echo "ringcast server: $RINGCAST_BIN; load tool: $BENCH_BIN."
fi
echo
node "$HERE/summarize.js" "$OUT" "$WORKLOADS" "$SERVERS"
