#!/usr/bin/env bash
# selftest.sh - check conformance/autobahn.sh itself, without ringcast: run it against the
# stdlib-only stand-in server selftest/mini_echo_server.py (must pass, exit 0) and its
# --broken-utf8 mode (must fail, exit 1, listing 6.3.1), via the hidden
# RINGCAST_CONFORMANCE_SERVER_CMD override. Also checks that a server which never listens
# is a setup error (exit 2). ~50 s once the wstest runtime is cached.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/ringcast-conformance-selftest.XXXXXX")
trap 'rm -rf "$work"' EXIT
srv="python3 $here/selftest/mini_echo_server.py --port {port} --lifetime 900"

run() {  # name, server command, extra args...
  local name=$1 cmd=$2; shift 2
  set +e
  RINGCAST_CONFORMANCE_SERVER_CMD="$cmd" RINGCAST_LISTEN_TIMEOUT=5 \
    bash "$here/autobahn.sh" --report-dir "$work/$name" "$@" > "$work/$name.out" 2> "$work/$name.err"
  rc=$?
  set -e
  echo "== $name: exit $rc: $(tail -n 1 "$work/$name.out")"
}

ok=1
run good "$srv" "$@"
[ "$rc" -eq 0 ] || { echo "FAIL: conformant server: exit $rc"; cat "$work/good.out" "$work/good.err"; ok=0; }
grep -Eq '^autobahn: [1-9][0-9]* passed, 0 failed$' <(tail -n 1 "$work/good.out") || { echo "FAIL: good: bad last line"; ok=0; }

run bad "$srv --broken-utf8" "$@"
[ "$rc" -eq 1 ] || { echo "FAIL: broken server: exit $rc (expected 1)"; cat "$work/bad.out" "$work/bad.err"; ok=0; }
grep -q '^  6\.3\.1 ' "$work/bad.out" || { echo "FAIL: 6.3.1 not listed for the broken server"; ok=0; }
grep -Eq '^autobahn: [0-9]+ passed, [1-9][0-9]* failed$' <(tail -n 1 "$work/bad.out") || { echo "FAIL: bad: bad last line"; ok=0; }

run silent "sleep 30"
[ "$rc" -eq 2 ] || { echo "FAIL: never-listening server: exit $rc (expected 2)"; cat "$work/silent.err"; ok=0; }

if [ "$ok" = 1 ]; then echo "selftest: 3 passed, 0 failed"; else echo "selftest: failed"; exit 1; fi
