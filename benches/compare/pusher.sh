#!/usr/bin/env bash
# Fan-out in Pusher mode, in one run: ringcast's raw topics beside its Pusher Channels protocol,
# and ringcast beside Sockudo on the same Pusher workload (see README.md beside this file). For
# each workload x server: starts the server pinned to one CPU, runs `ringcast bench fanout`
# pinned to the other, stops the server by its PID, and at the end prints one markdown table.
#
#   benches/compare/pusher.sh                  # the full run
#   QUICK=1 benches/compare/pusher.sh          # every workload 10x smaller
#
# Workloads (5,000 subscribers, 1,000 messages of 64 bytes, published flat out):
#   raw-ws       ringcast only: /topics/bench subscribers, a WebSocket publisher (as run.sh)
#   raw-http     ringcast only: the same, published by `POST /topics/bench`, 32 pipelined
#   pusher-http  /app/KEY subscribers on the public channel `bench`; the publisher sends signed
#                `POST /apps/ID/events` (the Pusher HTTP API), 32 pipelined
#
# Settings (environment):
#   SERVERS="ringcast sockudo"                   which servers, in order
#   WORKLOADS="raw-ws raw-http pusher-http"      which workloads, in order
#   QUICK=1          10x smaller workloads
#   INSTALL=0        skip `cargo build --release` of ringcast (Sockudo is never installed here)
#   SMOKE=strict     a server that fails the Pusher smoke run is not measured on Pusher
#                    workloads (default); SMOKE=warn: measure it anyway; SMOKE=off: no smoke run
#   SERVER_CPU=0 LOAD_CPU=1   the CPUs for the server and for the load tool
#   PORT_BASE=18900  servers listen on 127.0.0.1:PORT_BASE+n (a new port for every start)
#   OUT=DIR          keep the raw results there (default: a new directory under /tmp)
#   RINGCAST_BIN=... BENCH_BIN=...   the ringcast server / the load tool (default: this tree's
#                    target/release/ringcast)
#   SOCKUDO_BIN=...  the Sockudo binary (default: `sockudo` on PATH, else ~/.cargo/bin/sockudo).
#                    Install it with `cargo install sockudo --locked` (its build needs `protoc`:
#                    Debian `apt-get install protobuf-compiler`); if it is missing, Sockudo is
#                    skipped with a message and a row saying so.
#   APP_ID=app-id APP_KEY=app-key APP_SECRET=app-secret   the one Pusher app, on every server
#
# Bounded: every bench runs under `timeout`, every server started is stopped by its PID (TERM,
# then KILL after 10 s), and all traffic stays on 127.0.0.1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RINGCAST_BIN=${RINGCAST_BIN:-$ROOT/target/release/ringcast}
BENCH_BIN=${BENCH_BIN:-$ROOT/target/release/ringcast}
SOCKUDO_BIN=${SOCKUDO_BIN:-$(command -v sockudo || echo "$HOME/.cargo/bin/sockudo")}
SERVERS=${SERVERS:-"ringcast sockudo"}
WORKLOADS=${WORKLOADS:-"raw-ws raw-http pusher-http"}
QUICK=${QUICK:-0}
INSTALL=${INSTALL:-1}
SMOKE=${SMOKE:-strict}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT_BASE=${PORT_BASE:-18900}
TOKEN=${TOKEN:-compare-$RANDOM$RANDOM$RANDOM}
APP_ID=${APP_ID:-app-id}
APP_KEY=${APP_KEY:-app-key}
APP_SECRET=${APP_SECRET:-app-secret}
OUT=${OUT:-$(mktemp -d /tmp/ringcast-pusher.XXXXXX)}
mkdir -p "$OUT"

if [ "$QUICK" = 1 ]; then SUBS=500 MSGS=100; else SUBS=5000 MSGS=1000; fi
BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-300}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { printf '%s\n' "$*" >&2; }

# The bench command line of workload $1 against a server on port $2 with PID $3. The app secret
# goes through the environment (RINGCAST_BENCH_APP_SECRET), not the command line.
workload_args() {
    local url="ws://127.0.0.1:$2" common="--subscribers $SUBS --messages $MSGS --bytes 64 --server-pid $3 --json"
    case $1 in
    raw-ws) echo "fanout --url $url --topic bench $common --publish ws" ;;
    raw-http) echo "fanout --url $url --topic bench $common --publish http --pipeline 32 --token $TOKEN" ;;
    pusher-http) echo "fanout --url $url --protocol pusher --app-id $APP_ID --app-key $APP_KEY --channel bench $common --publish http --pipeline 32" ;;
    *) log "unknown workload $1"; return 1 ;;
    esac
}
# Whether workload $1 applies to server $2: Sockudo speaks only the Pusher protocol.
applies() { case $1:$2 in raw-*:sockudo) return 1 ;; *) return 0 ;; esac; }

# --- install ---------------------------------------------------------------------------------
if [ "$INSTALL" = 1 ]; then
    log "== cargo build --release (ringcast)"
    (cd "$ROOT" && cargo build --release --quiet)
fi
declare -A MISSING
for s in $SERVERS; do
    case $s in
    ringcast) [ -x "$RINGCAST_BIN" ] || MISSING[$s]="no ringcast binary at $RINGCAST_BIN (run with INSTALL=1)" ;;
    sockudo)
        if [ ! -x "$SOCKUDO_BIN" ]; then
            MISSING[$s]="no executable at $SOCKUDO_BIN"
            log "  sockudo: not installed (no executable at $SOCKUDO_BIN), so it is skipped. Install it" \
                "with \`cargo install sockudo --locked\` (its build needs protoc: apt-get install" \
                "protobuf-compiler), or point SOCKUDO_BIN at it."
        fi
        ;;
    *) log "unknown server $s"; exit 64 ;;
    esac
    if [ "$s" = ringcast ] && [ -n "${MISSING[$s]:-}" ]; then log "  $s: ${MISSING[$s]}"; fi
done

# From here on this script and everything it starts without taskset runs on the load CPU.
taskset -cp "$LOAD_CPU" $$ >/dev/null

# --- servers ---------------------------------------------------------------------------------
# shellcheck source=benches/compare/lib.sh
. "$HERE/lib.sh"

# Sets SERVER_CMD to server $1's command line on $PORT (and SERVER_CWD).
server_cmd() {
    case $1 in
    ringcast)
        # One shard, like every server here on one core. The Pusher app is ringcast's built-in
        # default (app-id / app-key / app-secret, client events on) unless APP_* say otherwise,
        # in which case a config file names it.
        SERVER_CMD=("$RINGCAST_BIN" serve --shards 1 --listen "127.0.0.1:$PORT" --admin-listen 127.0.0.1:0
            --allow-client-publish --publish-token "$TOKEN")
        if [ "$APP_ID:$APP_KEY:$APP_SECRET" != app-id:app-key:app-secret ]; then
            printf '[[apps]]\nid = "%s"\nkey = "%s"\nsecret = "%s"\nenable_client_events = true\n' \
                "$APP_ID" "$APP_KEY" "$APP_SECRET" >"$OUT/ringcast-apps.toml"
            SERVER_CMD+=(--config "$OUT/ringcast-apps.toml")
        fi
        ;;
    sockudo)
        # Sockudo reads its settings from the environment (sockudo-core options/env): one app,
        # local adapter, memory cache / queue / app manager / rate-limiter backend (no Redis), the
        # HTTP API and WebSocket rate limiters off (their defaults, 100 API requests a minute,
        # would refuse the publisher), metrics and OpenTelemetry off, client events on, per-app
        # limits above the workload. tokio sizes its worker pool from the CPU mask (one core
        # under taskset); TOKIO_WORKER_THREADS=1 says so explicitly. SHUTDOWN_GRACE_PERIOD=0 only
        # makes it stop at once on SIGTERM (it waits 10 s by default).
        # An empty directory of its own, so that no config/config.toml is picked up.
        SERVER_CWD="$OUT/cwd.sockudo"
        mkdir -p "$SERVER_CWD"
        SERVER_CMD=(env HOST=127.0.0.1 PORT="$PORT" DEBUG_MODE=false
            SOCKUDO_DEFAULT_APP_ID="$APP_ID" SOCKUDO_DEFAULT_APP_KEY="$APP_KEY"
            SOCKUDO_DEFAULT_APP_SECRET="$APP_SECRET" SOCKUDO_DEFAULT_APP_ENABLED=true
            SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES=true
            SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=100000
            SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=10000000
            SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND=10000000
            SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=10000000
            SOCKUDO_MAX_CONNECTIONS=100000
            ADAPTER_DRIVER=local CACHE_DRIVER=memory QUEUE_DRIVER=memory APP_MANAGER_DRIVER=memory
            RATE_LIMITER_DRIVER=memory RATE_LIMITER_ENABLED=false
            METRICS_ENABLED=false SOCKUDO_OTEL_ENABLED=false
            TOKIO_WORKER_THREADS=1 SHUTDOWN_GRACE_PERIOD=0
            "$SOCKUDO_BIN")
        ;;
    esac
}

# What went wrong in a bench JSON report, in one line (empty: nothing).
json_problems() {
    # shellcheck disable=SC2016 # JavaScript template literals, not shell expansions.
    node -e '
const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const p = [];
if (r.subscribe_failed) {
  const f = r.subscribe_failures || {};
  const why = Object.entries(f).filter(([k, v]) => typeof v === "number" && v > 0).map(([k, v]) => `${k} ${v}`);
  for (const [code, n] of Object.entries(f.bad_status || {})) why.push(`HTTP ${code}: ${n}`);
  p.push(`${r.subscribe_failed} of ${r.subscribers} subscribers failed${why.length ? ` (${why.join(", ")})` : ""}`);
}
if (r.pusher) {
  for (const k of ["errors", "subscription_errors", "close_codes"]) {
    if (Object.keys(r.pusher[k]).length) p.push(`${k} ${JSON.stringify(r.pusher[k])}`);
  }
  if (r.pusher.subscribe_timeouts) p.push(`${r.pusher.subscribe_timeouts} subscribe timeouts`);
}
if (r.publisher_error) p.push(`publisher: ${r.publisher_error}`);
if (Object.keys(r.publish_rejected || {}).length) p.push(`publish rejected ${JSON.stringify(r.publish_rejected)}`);
if (r.lost) p.push(`lost ${r.lost} of ${r.expected}`);
console.log(p.join("; "));
' "$1" 2>/dev/null || echo "no JSON report"
}

# --- smoke run ---------------------------------------------------------------------------------
# A small Pusher fan-out (20 subscribers, 20 messages) that must come through whole: connect,
# subscribe, signed publish, delivery. A server that fails it is not measured on Pusher
# workloads under SMOKE=strict.
declare -A SMOKED
has_pusher_workload() { case " $WORKLOADS " in *" pusher-"*) return 0 ;; *) return 1 ;; esac; }
if [ "$SMOKE" != off ] && has_pusher_workload; then
    log "== Pusher smoke run (20 subscribers, 20 messages) against every server"
    for s in $SERVERS; do
        [ -z "${MISSING[$s]:-}" ] || continue
        if ! start_server "$s" "$OUT/smoke.$s.server.log"; then
            SMOKED[$s]="did not start: $(tail -n 3 "$OUT/smoke.$s.server.log" | tr '\n' ' ')"
            log "  $s: ${SMOKED[$s]}"
            continue
        fi
        RINGCAST_BENCH_APP_SECRET=$APP_SECRET timeout -k 5 60 "$BENCH_BIN" bench fanout \
            --url "ws://127.0.0.1:$PORT" --protocol pusher --app-id "$APP_ID" --app-key "$APP_KEY" \
            --channel bench --subscribers 20 --messages 20 --publish http --pipeline 4 \
            --drain-timeout-s 3 --json >"$OUT/smoke.$s.json" 2>"$OUT/smoke.$s.err" || true
        stop_server
        problems=$(json_problems "$OUT/smoke.$s.json")
        SMOKED[$s]=${problems:-ok}
        log "  $s: ${SMOKED[$s]}"
    done
fi

# --- measure -----------------------------------------------------------------------------------
for w in $WORKLOADS; do
    for s in $SERVERS; do
        applies "$w" "$s" || continue
        base="$OUT/$w.$s"
        if [ -n "${MISSING[$s]:-}" ]; then
            write_meta "$base.meta" "workload=$w" "server=$s" "kind=fanout" "status=not installed" "note=${MISSING[$s]}"
            continue
        fi
        smoke=${SMOKED[$s]:-skipped}
        note=
        case $w in pusher-*) [ "$smoke" = ok ] || [ "$smoke" = skipped ] || note="Pusher smoke run: $smoke" ;; esac
        if [ -n "$note" ] && [ "$SMOKE" = strict ]; then
            write_meta "$base.meta" "workload=$w" "server=$s" "kind=fanout" "status=not measured" "note=$note"
            continue
        fi
        if ! start_server "$s" "$base.server.log"; then
            cp "$base.server.log" "$base.err"
            write_meta "$base.meta" "workload=$w" "server=$s" "kind=fanout" "status=did not start"
            log "  $w / $s: server did not start"
            continue
        fi
        read -r -a args <<<"$(workload_args "$w" "$PORT" "$SERVER_PID")"
        log "== $w / $s: ringcast bench ${args[*]}"
        cpu0=$(cpu_s "$SERVER_PID")
        TIMEFORMAT='%U %S'
        status=ok
        { time RINGCAST_BENCH_APP_SECRET=$APP_SECRET timeout -k 5 "$BENCH_TIMEOUT_S" \
            taskset -c "$LOAD_CPU" "$BENCH_BIN" bench "${args[@]}" \
            >"$base.json" 2>"$base.err"; } 2>"$base.time" || status="bench failed (exit $?)"
        cpu1=$(cpu_s "$SERVER_PID")
        stop_server
        load_cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$base.time" 2>/dev/null || echo "")
        server_cpu=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { if (a != "" && b != "") printf "%.2f", b - a }')
        write_meta "$base.meta" "workload=$w" "server=$s" "kind=fanout" "status=$status" "note=$note" \
            "load_cpu_s=$load_cpu" "server_cpu_s_proc=$server_cpu"
        problems=$(json_problems "$base.json")
        if [ "$status" != ok ] || [ -n "$problems" ]; then
            log "   $status${problems:+: $problems} $(tail -n 2 "$base.err" | tr '\n' ' ')"
        fi
    done
done

# --- table -------------------------------------------------------------------------------------
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
sockudo_version=$("$SOCKUDO_BIN" --version 2>/dev/null | head -n 1 || true)
echo
echo "ringcast Pusher fan-out, $(date -u '+%Y-%m-%d %H:%M UTC'), $(getconf _NPROCESSORS_ONLN) CPUs ($cpu_model), $(uname -sr)," \
    "ringcast $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')${sockudo_version:+, $sockudo_version}$([ "$QUICK" = 1 ] && echo ', QUICK=1 (10x smaller)')."
echo "$SUBS subscribers, $MSGS messages of 64 bytes; server on CPU $SERVER_CPU, load tool on CPU $LOAD_CPU; raw results in $OUT."
if [ "$RINGCAST_BIN" != "$ROOT/target/release/ringcast" ] || [ "$BENCH_BIN" != "$ROOT/target/release/ringcast" ]; then
    echo "ringcast server: $RINGCAST_BIN; load tool: $BENCH_BIN."
fi
echo
node "$HERE/summarize.js" "$OUT" "$WORKLOADS" "$SERVERS"
