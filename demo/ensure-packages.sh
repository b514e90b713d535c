#!/bin/sh
# The Debian/Ubuntu packages a make target needs, installed when missing: the first step of
# `make test` and `make demo`, and of .ci/run on a fresh machine.
#
#   sh demo/ensure-packages.sh TARGET...        TARGET: test, demo
#
#   package                  for                                                    targets
#   make                     make (.ci/run calls this script before any make)       test demo
#   python3, python3-venv    the virtualenv, while ${VENV:-.venv} does not exist    test demo
#   prometheus               prometheus, promtool                                   test demo
#   prometheus-alertmanager  prometheus-alertmanager, amtool                        test demo
#   postgresql               initdb, pg_ctl (throwaway clusters)                    test demo
#   prometheus-node-exporter the worker panels' machine metrics (dashboard test)     test
#   prometheus-blackbox-exporter  the endpoint probes (blackbox and dashboard tests)   test
#   prometheus-postgres-exporter  the database panels (platform dashboard test)         test
#   nodejs, npm              node, npm: the real pg-boss and graphile-worker        test
#                            (only when missing: a node 20+ from elsewhere is used as it is)
#
# Nothing missing (the usual case): no apt-get at all. Otherwise `apt-get update`, then
# `apt-get install --no-install-recommends` of the missing ones, as root or with sudo.
set -eu

[ $# -gt 0 ] || { echo "usage: $0 TARGET... (test, demo)" >&2; exit 2; }
missing=""
need() {  # need COMMAND PACKAGE...
    cmd=$1
    shift
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $*"
}
for target in "$@"; do
    case $target in
        test | demo) ;;
        *) echo "$0: unknown target $target (expected test or demo)" >&2; exit 2 ;;
    esac
    need make make
    need python3 python3
    need prometheus prometheus
    need promtool prometheus
    need prometheus-alertmanager prometheus-alertmanager
    # Debian keeps PostgreSQL's server binaries off PATH, one directory per major version.
    if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
    then
        missing="$missing postgresql"
    fi
    if [ ! -x "${VENV:-.venv}/bin/python" ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null
    then
        missing="$missing python3-venv"
    fi
    if [ "$target" = test ]; then
        need amtool prometheus-alertmanager
        need prometheus-node-exporter prometheus-node-exporter
        need prometheus-blackbox-exporter prometheus-blackbox-exporter
        need prometheus-postgres-exporter prometheus-postgres-exporter
        need node nodejs npm
        need npm npm
    fi
done
# shellcheck disable=SC2086  # one word per package
missing=$(printf '%s\n' $missing | sort -u | tr '\n' ' ')
missing=${missing% }
[ -n "$missing" ] || exit 0

what=$(echo "$*" | tr ' ' '+')
if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
else
    echo "$what: missing Debian packages: $missing" >&2
    echo "$what: run as root: apt-get update && apt-get install -y --no-install-recommends $missing" >&2
    exit 1
fi
echo "$what: installing the missing Debian packages: $missing"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# shellcheck disable=SC2086  # one word per package
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
