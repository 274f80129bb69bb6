#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and Nginx are available for the test-suite and print the
# environment the tests use. Reuses servers already listening on 127.0.0.1 (5432, 6379);
# otherwise installs Debian's packages (apt-get) and starts private instances on loopback
# under .data/test-services, leaving the machine's own configuration untouched.
# TEST_SERVICES_PRIVATE=1 uses the private instances even when system ones are running.
set -euo pipefail
cd "$(dirname "$0")/.."
state="$PWD/.data/test-services"
mkdir -p "$state"
log() { echo "[test-services] $*" >&2; }

apt_install() {
    if ! command -v apt-get >/dev/null; then log "apt-get not found: install $* yourself"; exit 1; fi
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    if [ ! -f "$state/.apt-updated" ]; then $sudo apt-get update -qq >&2 && touch "$state/.apt-updated"; fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

# --- PostgreSQL -------------------------------------------------------------------------
pg_url="${TEST_DATABASE_URL:-}"
if [ -z "$pg_url" ]; then
    if [ -z "${TEST_SERVICES_PRIVATE:-}" ] && command -v psql >/dev/null \
        && psql "postgresql://postgres@127.0.0.1:5432/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
        pg_url="postgresql://postgres@127.0.0.1:5432/postgres"
    else
        pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
        if [ -z "$pgbin" ]; then log "installing postgresql"; apt_install postgresql; pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1); fi
        port=55432
        if ! "$pgbin/pg_isready" -h 127.0.0.1 -p $port -q 2>/dev/null; then
            run_as=""; [ "$(id -u)" -eq 0 ] && run_as="runuser -u postgres --"
            if [ ! -f "$state/pg/PG_VERSION" ]; then
                rm -rf "$state/pg"; mkdir -p "$state/pg"
                [ -n "$run_as" ] && chown -R postgres "$state/pg" && chmod 755 "$state" "$PWD/.data"
                $run_as "$pgbin/initdb" -D "$state/pg" -U postgres -A trust >/dev/null
            fi
            log "starting a private PostgreSQL on 127.0.0.1:$port"
            $run_as "$pgbin/pg_ctl" -D "$state/pg" -l "$state/pg/server.log" -w \
                -o "-h 127.0.0.1 -p $port -k /tmp -c fsync=off" start >/dev/null
        fi
        pg_url="postgresql://postgres@127.0.0.1:$port/postgres"
    fi
fi

# --- Redis ------------------------------------------------------------------------------
redis_url="${TEST_REDIS_URL:-}"
if [ -z "$redis_url" ]; then
    if [ -z "${TEST_SERVICES_PRIVATE:-}" ] && command -v redis-cli >/dev/null \
        && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; then
        redis_url="redis://127.0.0.1:6379/0"
    else
        command -v redis-server >/dev/null || { log "installing redis-server"; apt_install redis-server; }
        port=56379
        if [ "$(redis-cli -h 127.0.0.1 -p $port ping 2>/dev/null)" != "PONG" ]; then
            log "starting a private Redis on 127.0.0.1:$port"
            redis-server --port $port --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
                --dir "$state" --logfile "$state/redis.log" >/dev/null
            for _ in $(seq 50); do [ "$(redis-cli -p $port ping 2>/dev/null)" = "PONG" ] && break; sleep 0.1; done
        fi
        redis_url="redis://127.0.0.1:$port/0"
    fi
fi

# --- Nginx (the tests run their own instance in a temporary prefix) -----------------------
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then log "installing nginx"; apt_install nginx-light || apt_install nginx; fi

echo "export TEST_DATABASE_URL='$pg_url'"
echo "export TEST_REDIS_URL='$redis_url'"
