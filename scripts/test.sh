#!/usr/bin/env bash
# The whole test-suite from a fresh machine: venv, tools, private services, then pytest.
# Every step that fails stops the run; Ctrl-C or SIGTERM stops pytest (its fixtures tear down),
# whatever it left running, and the services started here.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/test-services.sh
source scripts/test-services.sh

bash scripts/bootstrap.sh --dev
test_tools_install
trap test_services_stop EXIT
trap 'exit 130' INT   # before pytest runs: stop here, the EXIT trap cleans up
trap 'exit 143' TERM
test_services_start

export LITELLM_LOCAL_MODEL_COST_MAP=True PATH="$TEST_TOOLS:$PWD/.venv/bin:$PATH:/usr/sbin"
.venv/bin/python scripts/supervise.py .venv/bin/python -m pytest "$@" &
supervisor=$!
# supervise.py turns the first signal into one SIGINT for pytest, a second into SIGKILL.
trap 'kill -INT $supervisor 2>/dev/null || true' INT
trap 'kill -TERM $supervisor 2>/dev/null || true' TERM
status=0
while true; do
    wait "$supervisor" && status=0 || status=$?
    kill -0 "$supervisor" 2>/dev/null || break
done
exit "$status"
