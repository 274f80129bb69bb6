#!/usr/bin/env bash
# Check the gateway's /health and /ready; print one line per failure (with a UTC timestamp) and
# exit non-zero if either fails. Silent when healthy unless VERBOSE=1, so cron mails only on
# trouble, e.g. every minute:
#   * * * * * /opt/llm-gateway/deployments/scripts/health-monitor.sh >>/var/log/llm-gateway/health.log 2>&1
#   GATEWAY_URL     base URL           (default: http://127.0.0.1:8000)
#   HEALTH_TIMEOUT  seconds per check  (default: 5)
set -uo pipefail

GATEWAY_URL=${GATEWAY_URL:-http://127.0.0.1:8000}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-5}
VERBOSE=${VERBOSE:-0}

log() {
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) llm-gateway health: $*"
}

failed=0
for path in /health /ready; do
    status=$(curl -sS -o /dev/null -w '%{http_code}' --max-time "$HEALTH_TIMEOUT" \
        "${GATEWAY_URL%/}$path" 2>/dev/null)
    if [[ $status == 200 ]]; then
        [[ $VERBOSE == 1 ]] && log "OK $path"
    else
        [[ $status == 000 || -z $status ]] && status="no answer within ${HEALTH_TIMEOUT}s"
        log "FAIL $path: $status" >&2
        command -v logger >/dev/null && logger -t llm-gateway-health "FAIL $path: $status"
        failed=1
    fi
done
exit "$failed"
