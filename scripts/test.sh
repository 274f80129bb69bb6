#!/usr/bin/env bash
# The whole test-suite from a fresh machine: venv, services, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --dev
eval "$(bash scripts/test-services.sh)"
export LITELLM_LOCAL_MODEL_COST_MAP=True PATH="$PWD/.venv/bin:$PATH:/usr/sbin"
exec .venv/bin/python -m pytest "$@"
