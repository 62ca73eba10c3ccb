# shellcheck shell=bash
# Sourced by run.sh and pusher.sh: start and stop one server at a time by its PID, read a
# process's CPU time, write a row's meta file. The sourcing script sets PORT_BASE and OUT,
# SERVER_CPU, and defines `server_cmd NAME`, which sets the array SERVER_CMD (the command line
# for a server listening on 127.0.0.1:$PORT) and may set SERVER_CWD (where it runs; default:
# the current directory).

SERVER_PID=
PORT=
NEXT_PORT=$PORT_BASE
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill -KILL "$SERVER_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

# start_server NAME LOGFILE: sets SERVER_PID and PORT; fails if it does not listen within 10 s.
# The server gets PORT and TOKEN in its environment and runs pinned to SERVER_CPU.
start_server() {
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
    SERVER_CWD=.
    server_cmd "$1" || return 1
    # shellcheck disable=SC2153 # SERVER_CPU comes from the sourcing script, SERVER_CMD from server_cmd.
    (cd "$SERVER_CWD" && PORT=$PORT TOKEN=${TOKEN:-} exec taskset -c "$SERVER_CPU" "${SERVER_CMD[@]}") >"$2" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID=
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            sleep 0.3
            return 0
        fi
        sleep 0.1
    done
    stop_server
    return 1
}

# Stops the running server: TERM, then KILL after 10 s.
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# utime + stime of a process, in seconds.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo ""; }

write_meta() { # file key=value...
    local f=$1
    shift
    printf '%s\n' "$@" >"$f"
}
