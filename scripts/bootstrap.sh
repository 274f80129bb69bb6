#!/usr/bin/env bash
# Create .venv with the pinned packages (runtime, or runtime + dev with --dev). Idempotent:
# reinstalls only when the requirement files changed.
set -euo pipefail
cd "$(dirname "$0")/.."
req=requirements.txt
[ "${1:-}" = "--dev" ] && req=requirements-dev.txt
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Python 3.11+ is required (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if ! "$PY" -m venv --help >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' 2>/dev/null; then
    echo "installing python3-venv" >&2
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.installed-$(cat requirements.txt "$req" | sha256sum | cut -c1-16)-$(basename "$req")"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -m pip install -q -r "$req" 2>&1 | grep -v '^WARNING: Location' || true
    LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python -c 'import litellm, fastapi, asyncpg' # fail loudly if the install failed
    touch "$stamp"
fi
