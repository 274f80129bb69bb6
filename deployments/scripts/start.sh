#!/usr/bin/env bash
# Start the gateway under gunicorn in the background, for hosts without systemd.
# Settings: the repository's .env (or ENV_FILE). Waits until /health answers.
#   VENV       virtualenv with the requirements   (default: <repo>/.venv)
#   RUN_DIR    where the pidfile goes              (default: <repo>/.run)
#   LOG_DIR    where gateway.log goes              (default: <repo>/logs)
#   START_TIMEOUT  seconds to wait for /health     (default: 60)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${VENV:-$ROOT/.venv}
RUN_DIR=${RUN_DIR:-$ROOT/.run}
LOG_DIR=${LOG_DIR:-$ROOT/logs}
ENV_FILE=${ENV_FILE:-$ROOT/.env}
START_TIMEOUT=${START_TIMEOUT:-60}

if [[ -f $ENV_FILE ]]; then
    # gunicorn.conf.py reads HOST, PORT, WEB_CONCURRENCY... from the environment itself.
    set -a
    # shellcheck disable=SC1090
    . "$ENV_FILE"
    set +a
fi

export GUNICORN_PIDFILE=${GUNICORN_PIDFILE:-$RUN_DIR/gunicorn.pid}
export LITELLM_LOCAL_MODEL_COST_MAP=${LITELLM_LOCAL_MODEL_COST_MAP:-True}
mkdir -p "$RUN_DIR" "$LOG_DIR"

if [[ -f $GUNICORN_PIDFILE ]] && kill -0 "$(cat "$GUNICORN_PIDFILE")" 2>/dev/null; then
    echo "llm-gateway already running (pid $(cat "$GUNICORN_PIDFILE"))"
    exit 0
fi
rm -f "$GUNICORN_PIDFILE"

cd "$ROOT"
# Appending (>>) keeps logrotate's copytruncate safe: writes continue at the new end of file.
nohup "$VENV/bin/gunicorn" -c deployments/gunicorn.conf.py app.main:app \
    >>"$LOG_DIR/gateway.log" 2>&1 </dev/null &
launcher=$!

bind=${GUNICORN_BIND:-${HOST:-127.0.0.1}:${PORT:-8000}}
host=${bind%:*}
[[ $host == 0.0.0.0 || $host == "" ]] && host=127.0.0.1
url="http://$host:${bind##*:}/health"

for ((i = 0; i < START_TIMEOUT * 2; i++)); do
    if ! kill -0 "$launcher" 2>/dev/null; then
        echo "llm-gateway exited during start-up; see $LOG_DIR/gateway.log" >&2
        tail -n 20 "$LOG_DIR/gateway.log" >&2 || true
        exit 1
    fi
    if [[ -f $GUNICORN_PIDFILE ]] && curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
        echo "llm-gateway started (pid $(cat "$GUNICORN_PIDFILE")), $url is healthy"
        exit 0
    fi
    sleep 0.5
done
echo "llm-gateway did not become healthy within ${START_TIMEOUT}s ($url); see $LOG_DIR/gateway.log" >&2
exit 1
