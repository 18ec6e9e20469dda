# shellcheck shell=bash
# scripts/lib.sh — helpers shared by the hoist test scripts. Source it, do not run it.
#
#   REPO           the repository root (the parent of scripts/)
#   BUILD_DIR      where test artefacts live: $HOIST_TEST_DIR, default $REPO/target/hoist-test
#   need_pkgs P..  apt-get install the Debian packages among P.. that are missing
#                  (apt-get update at most once per process; noninteractive)
#   free_port      print a free TCP port on 127.0.0.1
#   port_free P    succeed if nothing listens on 127.0.0.1:P
#   wait_http URL [CURL_ARGS..]
#                  poll URL with curl for up to $WAIT_HTTP_TIMEOUT (20) seconds until it
#                  answers 2xx/3xx or 401; print the final status code; fail otherwise
#                  (at once, silently, with status 2 if $WAIT_HTTP_PID is set and exits)
#   quiet LOG CMD..
#                  run CMD with its output in LOG; on failure print LOG's tail and fail
#   die MSG, note MSG
#                  die prints MSG to stderr and exits 1; note prints only when
#                  HOIST_TEST_VERBOSE=1 (the scripts are silent unless something fails)
#   py             the system python3 (not a pyenv shim): /usr/bin/python3 when present

if [[ -n "${_HOIST_LIB_SOURCED:-}" ]]; then
    return 0
fi
_HOIST_LIB_SOURCED=1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
BUILD_DIR="$(realpath -m "${HOIST_TEST_DIR:-$REPO/target/hoist-test}")"
export REPO BUILD_DIR
export LC_ALL=C.UTF-8

die() {
    echo "error: $(basename "$0"): $*" >&2
    exit 1
}

note() {
    if [[ "${HOIST_TEST_VERBOSE:-0}" == 1 ]]; then
        echo "$(basename "$0"): $*" >&2
    fi
}

py() {
    if [[ -x /usr/bin/python3 ]]; then
        /usr/bin/python3 "$@"
    else
        python3 "$@"
    fi
}

quiet() {
    local log="$1"
    shift
    mkdir -p "$(dirname "$log")"
    if ! "$@" >"$log" 2>&1; then
        echo "error: $(basename "$0"): command failed: $*" >&2
        echo "---- last 40 lines of $log ----" >&2
        tail -n 40 "$log" >&2
        echo "----" >&2
        return 1
    fi
}

_HOIST_APT_UPDATED=0
_apt() {
    # Wait for another apt/dpkg (e.g. a background install) instead of failing on the lock;
    # retry a download the mirror dropped instead of failing the whole CI run on it.
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600 \
        -o Acquire::Retries=5 "$@"
}
_apt_update_once() {
    if ((_HOIST_APT_UPDATED == 0)); then
        quiet "$1" _apt update
        _HOIST_APT_UPDATED=1
    fi
}
need_pkgs() {
    _need_pkgs_once "$@"
    # Installing one package can remove another that was there: this machine image held a
    # backported qemu-utils that qemu-system-x86 from bookworm conflicts with, and apt removed
    # it silently. So check again; a second pass installs the matching versions together.
    _need_pkgs_once "$@"
    local p
    for p in "$@"; do
        [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" == installed ]] ||
            die "Debian package $p is still not installed after apt-get install"
    done
}

_need_pkgs_once() {
    local missing=() p status
    for p in "$@"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
        if [[ "$status" != installed ]]; then
            missing+=("$p")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    if [[ "$(id -u)" != 0 ]]; then
        die "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    fi
    note "installing ${missing[*]}"
    local log="${TMPDIR:-/tmp}/hoist-apt.$$.log"
    # Update the package lists first when they do not know a package at all (a fresh
    # machine); otherwise try as they are and update only if the install fails (stale lists).
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        _apt_update_once "$log"
    fi
    if ! _apt install --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        if ((_HOIST_APT_UPDATED == 1)); then
            tail -n 40 "$log" >&2
            die "apt-get install ${missing[*]} failed (log: $log)"
        fi
        _apt_update_once "$log"
        quiet "$log" _apt install --no-install-recommends "${missing[@]}"
    fi
    rm -f "$log"
}

free_port() {
    py - <<'EOF'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

port_free() {
    py - "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# As Go's listeners do: connections of a stopped server in TIME_WAIT do not block the port.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen()
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

wait_http() {
    local url="$1"
    shift
    local deadline=$((SECONDS + ${WAIT_HTTP_TIMEOUT:-20})) code
    while :; do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null || true)"
        case "$code" in
        2?? | 3?? | 401)
            echo "$code"
            return 0
            ;;
        esac
        if [[ -n "${WAIT_HTTP_PID:-}" ]] && ! kill -0 "$WAIT_HTTP_PID" 2>/dev/null; then
            return 2
        fi
        if ((SECONDS >= deadline)); then
            echo "error: $(basename "$0"): $url did not answer within ${WAIT_HTTP_TIMEOUT:-20}s (last status: ${code:-none})" >&2
            return 1
        fi
        sleep 0.2
    done
}
