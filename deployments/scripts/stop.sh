#!/usr/bin/env bash
# Stop the gateway started by start.sh: TERM (gunicorn lets requests in flight finish for up to
# its graceful_timeout), then KILL if it is still there after STOP_TIMEOUT seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN_DIR=${RUN_DIR:-$ROOT/.run}
PIDFILE=${GUNICORN_PIDFILE:-$RUN_DIR/gunicorn.pid}
STOP_TIMEOUT=${STOP_TIMEOUT:-130}

if [[ ! -f $PIDFILE ]]; then
    echo "llm-gateway not running (no $PIDFILE)"
    exit 0
fi
pid=$(cat "$PIDFILE")
if ! [[ $pid =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then
    echo "llm-gateway not running (stale pidfile $PIDFILE)"
    rm -f "$PIDFILE"
    exit 0
fi

kill -TERM "$pid"
for ((i = 0; i < STOP_TIMEOUT * 2; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$PIDFILE"
        echo "llm-gateway stopped (pid $pid)"
        exit 0
    fi
    sleep 0.5
done
echo "llm-gateway (pid $pid) still running after ${STOP_TIMEOUT}s; sending KILL" >&2
kill -KILL "$pid" 2>/dev/null || true
rm -f "$PIDFILE"
exit 1
