#!/usr/bin/env bash
# autobahn.sh - RFC 6455 conformance: run the Autobahn|TestSuite fuzzingclient against
# ringcast's echo endpoint and print a summary.
#
#   usage: conformance/autobahn.sh [--io MODE] [--cases LIST] [--exclude LIST] [--no-perf]
#                                  [--report-dir DIR] [--no-build]
#
#   --io MODE         pass "--io MODE" to the server (uring|epoll|auto); omitted if not given
#   --cases LIST      cases to run, comma/space separated, wildcards ok (default: all of 1-10)
#   --exclude LIST    cases to exclude (default: 12.* 13.*, i.e. permessage-deflate)
#   --no-perf         also exclude 9.* (16 MiB messages, 4 MiB in 64 KiB fragments)
#   --report-dir DIR  where reports go (default: autobahn-report/<io mode or "default">)
#   --no-build        do not run "cargo build --release"; use the existing binary
#
# Steps: make sure the private py2.7 wstest runtime exists (conformance/install-wstest.sh,
# ~35 s the first time, cached in $AUTOBAHN_HOME), build the release binary (or use
# $RINGCAST_BIN), start
#   ringcast serve --listen 127.0.0.1:0 --echo --max-message-bytes 16777216 \
#                  --max-frame-bytes 16777216 [--io MODE]
# read the port from its "ringcast: listening on 127.0.0.1:PORT" stdout line, run wstest
# against ws://127.0.0.1:PORT/echo, stop the server by PID (SIGTERM), summarize.
#
# A case passes when behavior is OK / NON-STRICT / INFORMATIONAL / UNIMPLEMENTED and
# behaviorClose is not FAILED / UNCLEAN (close WRONG CODE / FAILED BY CLIENT count as passed).
# The last stdout line is "autobahn: N passed, M failed".
# Exit status: 0 all passed; 1 a case failed, cases did not run, the server crashed or
# exited badly on SIGTERM; 2 setup error (install, build, server never listened).
#
# Environment (optional):
#   RINGCAST_BIN           server binary (default: target/release/ringcast, built if needed)
#   AUTOBAHN_HOME          wstest runtime cache (default: $HOME/.cache/ringcast-autobahn-py27)
#   AUTOBAHN_TIMEOUT       hard limit in seconds for the wstest run (default: 1200)
#   RINGCAST_LISTEN_TIMEOUT seconds to wait for the "listening on" line (default: 30)
#   AUTOBAHN_VERBOSE=1     also stream wstest output (always in <report>/wstest.log)
#   RINGCAST_CONFORMANCE_SERVER_ARGS  extra flags for "ringcast serve" (word-split)
# If "serve --help" lists --admin-listen, the admin listener goes to 127.0.0.1:0 too.
set -euo pipefail
# One brace group: bash parses the whole script before running it, so editing this file
# (e.g. a git checkout) during a run cannot break that run.
{

say() { printf '%s\n' "conformance: $*" >&2; }
die() { say "error: $*"; exit 2; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit "${1:-2}"; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

IO_MODE=""
CASES=""
EXCLUDE="12.* 13.*"
PERF=1
REPORT_DIR=""
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --io) [ $# -ge 2 ] || usage; IO_MODE=$2; shift 2 ;;
    --io=*) IO_MODE=${1#--io=}; shift ;;
    --cases) [ $# -ge 2 ] || usage; CASES=$2; shift 2 ;;
    --exclude) [ $# -ge 2 ] || usage; EXCLUDE=$2; shift 2 ;;
    --no-perf) PERF=0; shift ;;
    --report-dir) [ $# -ge 2 ] || usage; REPORT_DIR=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) usage 0 ;;
    *) say "unknown argument: $1"; usage ;;
  esac
done
case "$IO_MODE" in
  ""|uring|epoll|auto) ;;
  *) die "--io must be uring, epoll or auto (got: $IO_MODE)" ;;
esac
[ "$PERF" = 1 ] || EXCLUDE="$EXCLUDE 9.*"
REPORT_DIR=${REPORT_DIR:-$ROOT/autobahn-report/${IO_MODE:-default}}
command -v python3 >/dev/null || die "python3 is required"

# Hidden, for checking this runner itself (conformance/selftest.sh): start this shell
# command instead of ringcast. "{port}" in it is replaced by a free loopback port; it must
# print "listening on [ws://]127.0.0.1:PORT" on stdout.
SERVER_CMD_OVERRIDE="${RINGCAST_CONFORMANCE_SERVER_CMD:-}"

# ---------------------------------------------------------------- wstest runtime
WSTEST=$(bash "$HERE/install-wstest.sh" | tail -n 1) || die "wstest runtime install failed"
[ -x "$WSTEST" ] || die "wstest not found at '$WSTEST'"

# ---------------------------------------------------------------- server binary
if [ -z "$SERVER_CMD_OVERRIDE" ]; then
  if [ -n "${RINGCAST_BIN:-}" ]; then
    BIN=$RINGCAST_BIN
  else
    BIN=$ROOT/target/release/ringcast
    if [ "$BUILD" = 1 ]; then
      say "cargo build --release --bin ringcast"
      (cd "$ROOT" && cargo build --release --bin ringcast) >&2 || die "cargo build --release failed"
    fi
  fi
  [ -x "$BIN" ] || die "server binary not found: $BIN (build it or set RINGCAST_BIN)"
fi

# ---------------------------------------------------------------- start server
mkdir -p "$REPORT_DIR"
REPORT_DIR=$(cd "$REPORT_DIR" && pwd)
OUTDIR="$REPORT_DIR/servers"
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
SRV_OUT="$REPORT_DIR/server.stdout"
SRV_ERR="$REPORT_DIR/server.stderr"
WSLOG="$REPORT_DIR/wstest.log"
SPEC="$REPORT_DIR/fuzzingclient.json"
: > "$SRV_OUT"; : > "$SRV_ERR"

SRV_PID=""
cleanup() {
  if [ -n "$SRV_PID" ] && kill -0 "$SRV_PID" 2>/dev/null; then
    kill -KILL "$SRV_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

server_tail() {
  say "server stdout ($SRV_OUT), last lines:"; tail -n 20 "$SRV_OUT" >&2 || true
  say "server stderr ($SRV_ERR), last lines:"; tail -n 40 "$SRV_ERR" >&2 || true
}

if [ -n "$SERVER_CMD_OVERRIDE" ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  cmd=${SERVER_CMD_OVERRIDE//\{port\}/$port}
  SERVER_DESC="$cmd"
  bash -c "exec $cmd" > "$SRV_OUT" 2> "$SRV_ERR" &
  SRV_PID=$!
else
  SRV_ARGS=(serve --listen 127.0.0.1:0 --echo --max-message-bytes 16777216 --max-frame-bytes 16777216)
  [ -n "$IO_MODE" ] && SRV_ARGS+=(--io "$IO_MODE")
  # the admin listener has a fixed default port; keep parallel runs from colliding on it
  if "$BIN" serve --help 2>&1 | grep -Eq -- '--admin-listen([^-[:alnum:]_]|$)'; then
    SRV_ARGS+=(--admin-listen 127.0.0.1:0)
  fi
  # extra server flags, e.g. RINGCAST_CONFORMANCE_SERVER_ARGS="--shards 1" (word-split)
  # shellcheck disable=SC2206
  [ -n "${RINGCAST_CONFORMANCE_SERVER_ARGS:-}" ] && SRV_ARGS+=(${RINGCAST_CONFORMANCE_SERVER_ARGS})
  SERVER_DESC="$BIN ${SRV_ARGS[*]}"
  "$BIN" "${SRV_ARGS[@]}" > "$SRV_OUT" 2> "$SRV_ERR" &
  SRV_PID=$!
fi
say "started server (pid $SRV_PID): $SERVER_DESC"

PORT=""
deadline=$((SECONDS + ${RINGCAST_LISTEN_TIMEOUT:-30}))
while :; do
  PORT=$(sed -n -E 's#.*listening on (ws://)?127\.0\.0\.1:([0-9]+).*#\2#p' "$SRV_OUT" | head -n 1)
  [ -n "$PORT" ] && break
  if ! kill -0 "$SRV_PID" 2>/dev/null; then
    set +e; wait "$SRV_PID"; rc=$?; set -e
    SRV_PID=""
    server_tail
    die "server exited (status $rc) before it printed 'listening on 127.0.0.1:PORT'"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    server_tail
    die "server did not print 'listening on 127.0.0.1:PORT' within ${RINGCAST_LISTEN_TIMEOUT:-30}s"
  fi
  sleep 0.1
done
# the line says it listens; check that it accepts
python3 - "$PORT" <<'PYEOF' || { server_tail; die "server announced port $PORT but does not accept connections"; }
import socket, sys, time
deadline = time.time() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.1)
PYEOF
URL="ws://127.0.0.1:$PORT/echo"
say "server listening on 127.0.0.1:$PORT"

# ---------------------------------------------------------------- spec
AB_URL="$URL" AB_OUTDIR="$OUTDIR" AB_SPEC="$SPEC" AB_CASES="$CASES" AB_EXCLUDE="$EXCLUDE" \
AB_AGENT="ringcast${IO_MODE:+-$IO_MODE}" python3 - <<'PYEOF'
import json, os, re, sys
env = os.environ
lst = lambda s: [x for x in re.split(r"[,\s]+", s or "") if x]
spec = {
    "outdir": env["AB_OUTDIR"],
    "options": {"failByDrop": False},
    "servers": [{"agent": env["AB_AGENT"], "url": env["AB_URL"]}],
    "cases": lst(env["AB_CASES"]) or ["*"],
    "exclude-cases": lst(env["AB_EXCLUDE"]),
    "exclude-agent-cases": {},
}
with open(env["AB_SPEC"], "w") as f:
    json.dump(spec, f, indent=2)
print("conformance: cases=%s exclude=%s" % (",".join(spec["cases"]), ",".join(spec["exclude-cases"]) or "-"),
      file=sys.stderr)
PYEOF

# ---------------------------------------------------------------- run wstest
say "running wstest fuzzingclient against $URL (log: $WSLOG)"
T0=$SECONDS
set +e
if [ "${AUTOBAHN_VERBOSE:-0}" = 1 ]; then
  (cd "$REPORT_DIR" && timeout -k 10 "${AUTOBAHN_TIMEOUT:-1200}" "$WSTEST" -m fuzzingclient -s "$SPEC" 2>&1 \
     | tee "$WSLOG" >&2; exit "${PIPESTATUS[0]}")
else
  (cd "$REPORT_DIR" && timeout -k 10 "${AUTOBAHN_TIMEOUT:-1200}" "$WSTEST" -m fuzzingclient -s "$SPEC" > "$WSLOG" 2>&1)
fi
WS_RC=$?
set -e
ELAPSED=$((SECONDS - T0))
PROBLEMS=()
if [ "$WS_RC" -ne 0 ]; then
  if [ "$WS_RC" -eq 124 ] || [ "$WS_RC" -eq 137 ]; then
    PROBLEMS+=("wstest did not finish within ${AUTOBAHN_TIMEOUT:-1200}s (AUTOBAHN_TIMEOUT)")
  else
    PROBLEMS+=("wstest exited with status $WS_RC after ${ELAPSED}s")
  fi
  say "last lines of $WSLOG:"; tail -n 30 "$WSLOG" >&2 || true
fi

# ---------------------------------------------------------------- stop server
if ! kill -0 "$SRV_PID" 2>/dev/null; then
  set +e; wait "$SRV_PID"; rc=$?; set -e
  SRV_PID=""
  PROBLEMS+=("server CRASHED during the run (pid gone, exit status $rc)")
  server_tail
else
  kill -TERM "$SRV_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$SRV_PID" 2>/dev/null; then
    say "warning: server still running 10s after SIGTERM; sending SIGKILL"
    kill -KILL "$SRV_PID" 2>/dev/null || true
  fi
  set +e; wait "$SRV_PID"; rc=$?; set -e
  SRV_PID=""
  case "$rc" in
    0|143|137) say "server stopped (exit status $rc)" ;;   # 143: default SIGTERM action; 137: killed above
    *) PROBLEMS+=("server exited with status $rc on SIGTERM (panic/abort/crash on shutdown?)"); server_tail ;;
  esac
fi

# ---------------------------------------------------------------- summary
set +e
python3 "$HERE/summarize.py" --outdir "$OUTDIR" --wslog "$WSLOG" --url "$URL" --elapsed "$ELAPSED" \
  > "$REPORT_DIR/summary.txt"
SUM_RC=$?
set -e
# everything but the final count line, then the problems, then the count line last
sed '$d' "$REPORT_DIR/summary.txt"
for p in "${PROBLEMS[@]+"${PROBLEMS[@]}"}"; do echo "  PROBLEM: $p"; done
tail -n 1 "$REPORT_DIR/summary.txt"
if [ "$SUM_RC" -ne 0 ] || [ "${#PROBLEMS[@]}" -ne 0 ]; then
  exit 1
fi
exit 0
}
