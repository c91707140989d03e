#!/usr/bin/env bash
# Installs the system packages walcast's tests and native build need, only those that are missing: PostgreSQL 15
# server and client (real primaries, standbys and pg_receivewal in the tests), barman (a real backup client of
# walcast's replication slots), liburing-dev (the native addon's io_uring strategy) and a C++ toolchain for node-gyp. Used by .ci/run before `npm ci`, and by `npm test` itself
# (pretest) so that `npm ci && npm test` works on a fresh Debian machine. Needs root or passwordless sudo when
# something is missing; when everything is present it changes nothing and needs neither.
#
# Environment (tests only): WALCAST_DEBIAN_CLUSTER_CONFIG, WALCAST_POLICY_RC_D move the two system paths it checks.
#
# --rebuild-native: afterwards, build the native addon if it is not built yet (npm ci skips it without liburing).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
cd "$(dirname "$0")/.."

# Prints the packages from "$@" that dpkg does not report as installed.
missing_packages() {
  local package
  for package in "$@"; do
    # No pipes into grep -q here: under pipefail an early grep exit can turn a match into a failure.
    if [ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)" != 'install ok installed' ]; then
      printf '%s\n' "$package"
    fi
  done
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

install_packages() {
  local wanted=(postgresql-15 postgresql-client-15 liburing-dev barman)
  # The toolchain node-gyp needs; only installed when a piece is absent, since CI images often carry their own.
  command -v g++ >/dev/null 2>&1 || wanted+=(g++)
  command -v make >/dev/null 2>&1 || wanted+=(make)
  command -v python3 >/dev/null 2>&1 || wanted+=(python3)
  # ss(8): test/tcp-congestion.test.ts reads the congestion control of walcast's accepted sockets with it.
  command -v ss >/dev/null 2>&1 || wanted+=(iproute2)
  local missing
  mapfile -t missing < <(missing_packages "${wanted[@]}")
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "packages: all present (${wanted[*]})"
    return
  fi
  echo "installing ${missing[*]}"
  # Debian's packages must not start a cluster during install in a container without systemd; policy-rc.d
  # is the documented switch (invoke-rc.d, exit 101 = action forbidden). Removed again afterwards.
  local policy="${WALCAST_POLICY_RC_D:-/usr/sbin/policy-rc.d}" created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 0755 "$policy"
    created_policy=1
  fi
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
  if [ "$created_policy" -eq 1 ]; then as_root rm -f "$policy"; fi
}

# Debian's postgresql-15 package creates a `main` cluster (config in /etc/postgresql/15/main) and, where services
# may start, starts it on 5432. The tests never use it, so a cluster that this run's install created is stopped
# again. A cluster that was there before this run belongs to whoever set up the machine (a developer's own
# PostgreSQL): it is never touched, and no service is ever stopped or disabled here.
# Both paths can be moved by the environment only so that test/install-system-deps.test.ts can run this script
# against stand-ins without touching the machine's own PostgreSQL.
DEBIAN_CLUSTER_CONFIG="${WALCAST_DEBIAN_CLUSTER_CONFIG:-/etc/postgresql/15/main}"

stop_cluster_created_by_install() {
  local existed_before="$1"
  if [ "$existed_before" -eq 1 ] || [ ! -d "$DEBIAN_CLUSTER_CONFIG" ]; then return; fi
  local clusters=''
  if command -v pg_lsclusters >/dev/null 2>&1; then clusters="$(pg_lsclusters -h 2>/dev/null || true)"; fi
  if [[ "$clusters" =~ 15[[:space:]]+main[[:space:]]+[0-9]+[[:space:]]+online ]]; then
    echo "stopping cluster 15/main, which this install created and started (the tests never use it)"
    as_root pg_ctlcluster 15 main stop || true
  fi
}

rebuild_native=0
[ "${1:-}" = "--rebuild-native" ] && rebuild_native=1
if [ "$(uname -s)" != "Linux" ] || ! command -v dpkg-query >/dev/null 2>&1; then
  if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
    echo "walcast tests need PostgreSQL 15 (server + client tools) in /usr/lib/postgresql/15/bin; install it with your package manager" >&2
    exit 1
  fi
  exit 0
fi
if [ "$(id -u)" -ne 0 ] && ! sudo -n true 2>/dev/null && [ -n "$(missing_packages postgresql-15 postgresql-client-15 liburing-dev)" ]; then
  echo "missing packages: $(missing_packages postgresql-15 postgresql-client-15 liburing-dev | tr '\n' ' ')- run as root or install them: apt-get install postgresql-15 postgresql-client-15 liburing-dev" >&2
  exit 1
fi
cluster_existed_before=0
[ -d "$DEBIAN_CLUSTER_CONFIG" ] && cluster_existed_before=1
install_packages
stop_cluster_created_by_install "$cluster_existed_before"
if [ "$rebuild_native" -eq 1 ] && [ ! -e build/Release/walcast_native.node ] && [ ! -e build/Debug/walcast_native.node ] && [ -d node_modules/node-gyp ]; then
  echo "building the native addon (it was not built at install time)"
  node scripts/build-native.mjs || true
fi
