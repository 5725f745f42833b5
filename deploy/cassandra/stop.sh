#!/usr/bin/env bash
# Stop the test Cassandra node started by deploy/cassandra/start.sh.
#
#   deploy/cassandra/stop.sh [DATA_DIR]
#
# DATA_DIR as for start.sh ($1, else $CASSANDRA_DIR, else <repo>/target/cassandra). Sends TERM to
# the pid in DATA_DIR/cassandra.pid, waits up to CASSANDRA_STOP_TIMEOUT (default 60) seconds,
# then KILLs. Exits 0 when nothing is left running (including "was not running").
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
DATA_DIR=${1:-${CASSANDRA_DIR:-$REPO_ROOT/target/cassandra}}
STOP_TIMEOUT=${CASSANDRA_STOP_TIMEOUT:-60}
PID_FILE=$DATA_DIR/cassandra.pid

log() { echo "cassandra: $*" >&2; }

if [[ ! -s $PID_FILE ]]; then
    log "not running (no $PID_FILE)"
    exit 0
fi
pid=$(tr -dc 0-9 < "$PID_FILE")
if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
    log "not running (stale pid file, pid ${pid:-?})"
    rm -f "$PID_FILE"
    exit 0
fi
if ! tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q CassandraDaemon; then
    log "pid $pid is not a Cassandra process; leaving it alone and removing the stale pid file"
    rm -f "$PID_FILE"
    exit 0
fi

t0=$(date +%s)
kill -TERM "$pid" 2>/dev/null || true
while kill -0 "$pid" 2>/dev/null; do
    if (( $(date +%s) - t0 >= STOP_TIMEOUT )); then
        log "pid $pid still running after ${STOP_TIMEOUT} s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        break
    fi
    sleep 0.2
done
if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not exit"
    exit 1
fi
rm -f "$PID_FILE"
log "stopped (pid $pid) after $(( $(date +%s) - t0 )) s"
