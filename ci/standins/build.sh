#!/usr/bin/env bash
# Builds the TEST STAND-IN packages that mesobake's tests install in place of
# the real Mesos and Marathon packages, which cannot be downloaded where the
# tests run (see README.md beside this script):
#
#   mesos_1.11.0-0.1.standin_all.deb          Mesosphere's layout
#   aventer-mesos_1.11.0-0.1.standin_all.deb  AVENTER's layout
#   marathon_1.10.17-0.1.standin_all.deb      Marathon 1.10's layout
#
# Usage: ci/standins/build.sh OUTDIR
#
# The output is reproducible: file modes, owners (--root-owner-group) and
# mtimes are fixed, dpkg-deb sorts the archive members, and SOURCE_DATE_EPOCH
# (default: the Mesos 1.11.0 release day) sets the ar timestamps. Two builds of
# the same sources are byte-for-byte identical, so a test can cache on a hash.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1606176000}

for tool in dpkg-deb find sort touch; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "$0: $tool is required (dpkg-deb: apt-get install dpkg-dev)" >&2
    exit 1
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# stage NAME: copies the package tree ci/standins/NAME (root files plus DEBIAN/)
# to the work area and sets $root to it. (A global rather than printing it:
# errexit does not reach into a command substitution.)
stage() {
  root="$work/$1"
  cp -R "$here/$1" "$root"
  # Editor and Python leftovers must never end up in a package.
  find "$root" \( -name '__pycache__' -o -name '*.pyc' -o -name '*~' \) -prune \
    -exec rm -rf {} +
}

# conffiles ROOT: like fpm's --config-files etc/, everything under /etc.
conffiles() {
  local root=$1
  if [[ -d $root/etc ]]; then
    (cd "$root" && find etc -type f | LC_ALL=C sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
  fi
}

# finish ROOT FILE.deb: fixes modes and mtimes, then builds the package.
finish() {
  local root=$1 deb=$2
  # Modes from the checkout (umask, core.fileMode) must not leak in: 0755 for
  # directories and for what is meant to run, 0644 for the rest.
  find "$root" -type d -exec chmod 0755 {} +
  find "$root" -type f -exec chmod 0644 {} +
  local executable
  for executable in usr/bin usr/sbin usr/share/marathon/bin; do
    if [[ -d $root/$executable ]]; then
      find "$root/$executable" -type f -exec chmod 0755 {} +
    fi
  done
  find "$root/DEBIAN" -type f \( -name preinst -o -name postinst -o -name prerm \
    -o -name postrm \) -exec chmod 0755 {} +
  find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  dpkg-deb --root-owner-group -Zgzip -z9 --build "$root" "$out/$deb" >/dev/null
  printf '%s\n' "$out/$deb"
}

# The two Mesos layouts share the daemon: one Python program and a launcher
# that is installed once per binary name.
# FLAVOUR (apache or aventer) is written beside the daemon: the builds differ
# in a few checks (AVENTER's skips the cgroup v1 `cpu` check of Docker).
install_mesos_daemon() {
  local root=$1 bindir=$2 flavour=$3
  install -D -m 0644 "$here/daemons/mesos_standin.py" "$root/usr/lib/mesos-standin/standin.py"
  printf '%s\n' "$flavour" >"$root/usr/lib/mesos-standin/flavour"
  install -D -m 0755 "$here/daemons/mesos-launcher" "$root/$bindir/mesos-master"
  install -D -m 0755 "$here/daemons/mesos-launcher" "$root/$bindir/mesos-agent"
}

# mesos: Mesosphere's package (mesos-packaging.md 1.1-1.4).
stage mesos
install_mesos_daemon "$root" usr/sbin apache
# Mesos 1.x's `make install` links the old name to the agent.
ln -s mesos-agent "$root/usr/sbin/mesos-slave"
mkdir -p "$root/var/lib/mesos" "$root/var/log/mesos"
conffiles "$root"
finish "$root" mesos_1.11.0-0.1.standin_all.deb

# aventer-mesos: AVENTER's package (mesos-packaging.md 1.5): units, wrapper and
# binaries only; no /etc files, no maintainer scripts, no mesos-slave link.
stage aventer-mesos
install_mesos_daemon "$root" usr/bin aventer
finish "$root" aventer-mesos_1.11.0-0.1.standin_all.deb

# marathon: Marathon 1.10's package (mesos-packaging.md 2.1).
stage marathon
install -D -m 0644 "$here/daemons/marathon_standin.py" \
  "$root/usr/share/marathon/lib/marathon_standin.py"
install -D -m 0755 "$here/daemons/marathon-launcher" "$root/usr/share/marathon/bin/marathon"
mkdir -p "$root/usr/bin"
ln -s ../share/marathon/bin/marathon "$root/usr/bin/marathon"
conffiles "$root"
finish "$root" marathon_1.10.17-0.1.standin_all.deb
