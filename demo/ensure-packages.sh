#!/bin/sh
# `make demo`, first step: install the Debian/Ubuntu packages the demo needs, only those missing.
#   prometheus               prometheus, promtool (the backfill of the demo's history)
#   prometheus-alertmanager  prometheus-alertmanager
#   postgresql               initdb, pg_ctl (the demo's throwaway cluster)
#   python3-venv             for `make`'s virtualenv, while .venv does not exist yet
# Nothing missing (the usual case): no apt-get at all. As root, or with sudo.
set -eu

missing=""
need() {  # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || missing="$missing $2"
}
need prometheus prometheus
need promtool prometheus
need prometheus-alertmanager prometheus-alertmanager
need python3 python3
# Debian keeps PostgreSQL's server binaries off PATH, one directory per major version.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
then
    missing="$missing postgresql"
fi
if [ ! -x "${VENV:-.venv}/bin/python" ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null
then
    missing="$missing python3-venv"
fi
missing=$(printf '%s\n' $missing | sort -u | tr '\n' ' ')
[ -n "${missing% }" ] || exit 0

if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
else
    echo "demo: missing Debian packages: $missing" >&2
    echo "demo: run as root: apt-get install -y --no-install-recommends $missing" >&2
    exit 1
fi
echo "demo: installing the missing Debian packages: $missing"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# shellcheck disable=SC2086  # one word per package
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
