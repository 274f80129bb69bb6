#!/usr/bin/env bash
# By hand, as root on a Debian host (not in CI): the README's two commands on a machine that
# has nothing. Builds a minimal Debian root with debootstrap, installs only the README's
# prerequisites in it, and in a fresh copy of that root for each case
#   root  the checkout in /root/llm-gateway (mode 700, as a root login has it)
#   user  an ordinary user `dev` with the checkout in /home/dev/llm-gateway (mode 700) and
#         sudo, which the test command needs for apt-get
# runs `make run` until the first answer to the README's curl, stops it with Ctrl-C (SIGINT)
# and checks nothing it started is left, then runs `make test`, and prints both timings and
# pytest's summary line. Logs are in $FRESH_WORK/<case>.log.
#
#   sudo bash scripts/fresh-machine-test.sh [root|user|both]
#
# The chroot shares the host's network: `make run` gets a free PORT rather than 8000 (which a
# developer may be using), and /usr/sbin/policy-rc.d stops Debian's packages from starting
# their system services there (the host's own PostgreSQL and Redis would hold their ports).
# The host's extra CA certificates (/usr/local/share/ca-certificates, e.g. a TLS-intercepting
# proxy's) are copied in so that pip can reach PyPI as it does on the host.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${FRESH_WORK:-/var/tmp/gw-fresh}
# shellcheck disable=SC1091
suite=${FRESH_SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
mirror=${FRESH_MIRROR:-http://deb.debian.org/debian}
cases=${1:-both}
[ "$cases" = both ] && cases="root user"
# The README's prerequisites line, word for word.
prerequisites=$(grep -m1 -o 'apt-get install -y [a-z0-9 .-]*' "$repo/README.md" | cut -d' ' -f4-)
[ -n "$prerequisites" ] || { echo "no 'apt-get install -y ...' line in README.md" >&2; exit 1; }

log() { echo "[fresh] $(date +%T) $*" >&2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap and chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
mkdir -p "$work"

if [ ! -f "$work/base/.complete" ]; then
    log "debootstrap $suite (minbase) into $work/base"
    rm -rf "$work/base"
    debootstrap --variant=minbase "$suite" "$work/base" "$mirror" >"$work/debootstrap.log" 2>&1
    touch "$work/base/.complete"
fi

mounted=()
unmount_all() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -R -l "${mounted[i]}" 2>/dev/null || true; done
    mounted=()
}
trap unmount_all EXIT

in_root() { chroot "$root" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb "$@"; }

prepare() {
    local name=$1
    root="$work/$name"
    log "$name: fresh copy of the base root"
    rm -rf "$root"
    cp -a "$work/base" "$root"
    for fs in proc sys dev; do
        case $fs in
            proc) mount -t proc proc "$root/proc" ;;
            sys) mount -t sysfs sys "$root/sys" ;;
            dev) mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" ;;
        esac
        mounted+=("$root/$fs")
    done
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    echo "127.0.1.1 $(hostname)" >>"$root/etc/hosts"  # sudo resolves the host's name
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        mkdir -p "$root/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    fi
    log "$name: the README's prerequisites: apt-get install -y $prerequisites"
    # shellcheck disable=SC2086  # a list of package names
    in_root sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $prerequisites" \
        >>"$work/$name.log" 2>&1
    in_root update-ca-certificates >>"$work/$name.log" 2>&1
    # pip trusts its own CA bundle; point it at the system's, as the host does.
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
}

# run_as USER COMMAND: a login shell of USER in the chroot, in the checkout.
run_as() {
    local user=$1; shift
    in_root runuser -l "$user" -c "cd ~/llm-gateway && $*"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }

one_case() {
    local name=$1 user home
    case $name in
        root) user=root; home=/root ;;
        user) user=dev; home=/home/dev ;;
        *) echo "unknown case $name" >&2; return 1 ;;
    esac
    : >"$work/$name.log"
    prepare "$name"
    if [ "$user" = dev ]; then
        in_root sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo && useradd -m -s /bin/bash dev \
            && echo 'dev ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/dev" >>"$work/$name.log" 2>&1
    fi
    chmod 700 "$root$home"
    git clone -q "$repo" "$root$home/llm-gateway"
    git -C "$root$home/llm-gateway" checkout -q "$(git -C "$repo" rev-parse HEAD)"
    in_root chown -R "$user:" "$home/llm-gateway"

    local port start first="" runner
    port=$(free_port)
    log "$name: make run (PORT=$port)"
    start=$SECONDS
    # Its own process group, as a terminal's foreground job: Ctrl-C is SIGINT to that group.
    setsid chroot "$root" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 TERM=dumb runuser -l "$user" -c "cd ~/llm-gateway && PORT=$port make run" \
        >"$work/$name-run.log" 2>&1 &
    runner=$!
    for _ in $(seq 1200); do
        if curl -sf "http://127.0.0.1:$port/v1/chat/completions" -H "Authorization: Bearer sk-gw-demo" \
            -H "Content-Type: application/json" \
            -d '{"model": "demo", "messages": [{"role": "user", "content": "Hello!"}]}' \
            >"$work/$name-answer.json" 2>/dev/null; then
            first=$((SECONDS - start))
            break
        fi
        kill -0 "$runner" 2>/dev/null || break
        sleep 0.5
    done
    if [ -z "$first" ]; then
        log "$name: make run never answered; see $work/$name-run.log"
        tail -20 "$work/$name-run.log" >&2
        kill -KILL -- "-$runner" 2>/dev/null || true
        return 1
    fi
    log "$name: first answer after $first s: $(head -c 300 "$work/$name-answer.json")"
    log "$name: make run printed $(grep -c '^\[bootstrap\]' "$work/$name-run.log" || true) progress lines"
    kill -INT -- "-$runner"
    for _ in $(seq 40); do kill -0 "$runner" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$runner" 2>/dev/null || pgrep -g "$runner" >/dev/null; then
        log "$name: FAIL: make run still running 20 s after Ctrl-C: $(pgrep -a -g "$runner" | head -5)"
        kill -KILL -- "-$runner" 2>/dev/null || true
        return 1
    fi
    log "$name: Ctrl-C stopped make run and everything it started"

    log "$name: make test"
    start=$(date +%s)
    local status=0
    run_as "$user" "make test" >"$work/$name-test.log" 2>&1 || status=$?
    local took=$(($(date +%s) - start))
    local summary
    summary=$(grep -E '^=+ .*(passed|failed|error).* in ' "$work/$name-test.log" | tail -1 || true)
    log "$name: make test exited $status after $took s: $summary"
    local leftovers
    leftovers=$(ls -d "$root"/var/tmp/llm-gateway-test.* 2>/dev/null || true)
    [ -z "$leftovers" ] || log "$name: FAIL: service directories left behind: $leftovers"
    echo "$name: make run first answer ${first%.*} s; make test $took s (exit $status): $summary" >>"$work/summary.txt"
    unmount_all
    [ "$status" -eq 0 ] && [ -z "$leftovers" ]
}

: >"$work/summary.txt"
overall=0
for c in $cases; do one_case "$c" || overall=1; done
cat "$work/summary.txt"
exit $overall
