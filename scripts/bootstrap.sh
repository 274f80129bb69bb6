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
log() { echo "[bootstrap] $*" >&2; }
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(cat requirements.txt "$req" | sha256sum | cut -c1-16)-$(basename "$req")"
if [ ! -f "$stamp" ]; then
    started=$SECONDS
    total=$(cat requirements.txt "$req" | grep '==' | sort -u | wc -l)
    log "installing $total pinned packages from $req into .venv (about a minute the first time)"
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
    # pip's own output, condensed to a progress line every 10 packages.
    pip_status=0
    .venv/bin/python -m pip install --progress-bar off -r "$req" 2>&1 | awk -v total="$total" '
        /^Collecting / { n++; if (n % 10 == 0) printf "[bootstrap]   %d/%d packages fetched\n", n, total; fflush() }
        /^Installing collected packages/ { printf "[bootstrap]   unpacking %d packages\n", n; fflush() }
        /^(ERROR|error)/ || failed { failed = 1; print }
    ' >&2 || pip_status=$?
    if [ "$pip_status" -ne 0 ]; then
        log "pip install -r $req failed (see above)"
        exit 1
    fi
    LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python -c 'import litellm, fastapi, asyncpg' # fail loudly if the install failed
    touch "$stamp"
    log "installed in $((SECONDS - started)) s"
fi
