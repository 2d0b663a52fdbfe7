#!/usr/bin/env bash
# Installs the system packages that tests and local runs need, on Debian 12.
# Idempotent and quiet: each section checks first and installs only what is missing, so a second
# run takes well under a second. Run as root (CI) or as a user with sudo.
# One function per system dependency; the calls are at the bottom.
set -euo pipefail

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
else
    as_root=(sudo)
fi

apt_updated=no

# apt-get update only once per run, and only if something is actually missing.
apt_install() {
    if [ "$apt_updated" = no ]; then
        "${as_root[@]}" apt-get update -qq
        apt_updated=yes
    fi
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# PostgreSQL server binaries (initdb, pg_ctl) for the throwaway test cluster in
# scripts/pg_cluster.py. Any installed server version will do; the client library comes with
# psycopg[binary], so only the server is needed here.
install_postgresql() {
    local bindir
    for bindir in /usr/lib/postgresql/*/bin; do
        if [ -x "$bindir/initdb" ] && [ -x "$bindir/pg_ctl" ]; then
            return 0
        fi
    done
    echo "installing PostgreSQL server (apt: postgresql)"
    apt_install postgresql
}

# promtool (Debian package prometheus) for `promtool check config|rules` and `promtool test rules`
# on compose/prometheus/ (scripts/validate_stack.py, tests/test_compose_stack.py). The package
# also brings a prometheus server unit; nothing here starts it.
install_prometheus_tools() {
    if command -v promtool >/dev/null 2>&1; then
        return 0
    fi
    echo "installing promtool (apt: prometheus)"
    apt_install prometheus
}

install_postgresql
install_prometheus_tools
