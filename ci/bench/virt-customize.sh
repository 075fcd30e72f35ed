#!/usr/bin/env bash
# The same work as ci/bench/baseline.sh, done the libguestfs way with Debian 12's
# virt-customize. Used by ci/bench/run.sh as a peer tool, for comparison only.
#
#   virt-customize.sh --setup                          install the tools, warm the appliance
#   virt-customize.sh BASE.qcow2 DEBS_DIR OUT.qcow2    bake (needs root)
#
# --setup installs libguestfs-tools (it pulls guestfs-tools, which has virt-customize and
# virt-sparsify) pinned next to the installed qemu-utils, checks that qemu-utils is still
# there at the same version, installs the distribution's kernel when /boot has none
# (supermin builds the appliance from the host's kernel), and runs libguestfs-test-tool once so supermin's appliance is
# built and cached. Run it before timing; in bake mode the install is a no-op when the
# tools are present (and done, untimed in the printed split, when they are not).
#
# The appliance runs with --no-network: no guest traffic leaves the machine. So the debs
# are fetched on the host (Debian 12 too): the guest's /var/lib/dpkg/status is copied out
# (virt-copy-out), the host's apt resolves `mesos marathon zookeeperd docker.io` against
# it in a private apt state (the stand-ins from DEBS_DIR as a local repo), downloads
# exactly what the guest lacks, and all of it becomes one flat [trusted=yes] repo that
# is copied into the guest and installed from with apt-get, no service started.
#
# Growing: virt-resize --expand renumbers the root partition (sda1 becomes sda3) and
# copies the whole disk through the emulated appliance, so the disk is grown on the host
# like baseline.sh does (raw copy, sgdisk -e, growpart) and ext4 is grown inside the
# virt-customize run. Freed blocks are dropped by virt-sparsify --in-place (the
# baseline's fstrim), then qemu-img convert -c (single-threaded zlib, like the baseline).
#
# KVM is not used (LIBGUESTFS_BACKEND_SETTINGS=force_tcg): nested KVM breaks guests here.
# Prints to stderr:
#   virt-customize: download N s, customize N s, convert N s (...)
# where download is the host-side fetch (including reading the guest's dpkg status),
# customize is grow + virt-customize + virt-sparsify, convert is the qemu-img export.
set -euo pipefail
export LIBGUESTFS_BACKEND=direct
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}
export LIBGUESTFS_MEMSIZE=${LIBGUESTFS_MEMSIZE:-1280}
pkgs="mesos marathon zookeeperd docker.io"

die() { echo "virt-customize.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root"

# The distribution's kernel metapackage, for supermin's appliance.
kernel_package() {
  . /etc/os-release
  case "$ID" in
    ubuntu) echo linux-image-generic ;;
    *) echo linux-image-amd64 ;;
  esac
}

setup() {
  local need=() t
  for t in virt-customize virt-sparsify virt-copy-out qemu-img sgdisk growpart partx \
           dpkg-scanpackages bc; do
    command -v "$t" >/dev/null || need+=("$t")
  done
  # supermin builds its appliance from the host's own kernel: a container or a minimal
  # cloud machine has none in /boot, and libguestfs-test-tool then fails at once.
  local kernel=
  compgen -G '/boot/vmlinuz-*' >/dev/null || kernel=$(kernel_package)
  [ ${#need[@]} -eq 0 ] && [ -z "$kernel" ] && return 0
  local qv before
  qv=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null) || die "qemu-utils is not installed"
  before=$(qemu-img --version | head -1)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    libguestfs-tools gdisk cloud-guest-utils dpkg-dev bc $kernel "qemu-utils=$qv" >/dev/null \
    || die "apt-get install libguestfs-tools failed"
  [ "$(dpkg-query -W -f='${Version} ${db:Status-Abbrev}' qemu-utils 2>/dev/null)" = "$qv ii " ] \
    || die "installing libguestfs-tools changed qemu-utils (was $qv)"
  [ "$(qemu-img --version | head -1)" = "$before" ] || die "qemu-img changed: $before"
  echo "virt-customize.sh: installed libguestfs-tools; kept qemu-utils $qv ($before)" >&2
}

if [ "${1:-}" = "--setup" ]; then
  setup
  libguestfs-test-tool >/dev/null 2>&1 || die "libguestfs-test-tool failed (run it for details)"
  echo "virt-customize.sh: libguestfs appliance works ($(virt-customize --version))" >&2
  exit 0
fi

[ $# -eq 3 ] || die "usage: $0 BASE.qcow2 DEBS_DIR OUT.qcow2 | $0 --setup"
base=$(realpath "$1") debs=$(realpath "$2") out=$3
[ -f "$base" ] || die "no base disk $base"
compgen -G "$debs/*.deb" >/dev/null || die "no .deb in $debs"
setup

work=$(mktemp -d /var/tmp/virt-customize.XXXXXX)
done_ok=
cleanup() {
  rm -rf "$work"
  [ -n "$done_ok" ] || rm -f "$out"
}
trap cleanup EXIT
trap 'die "failed at line $LINENO"' ERR

now() { date +%s.%N; }
secs() { printf '%.1f' "$(echo "$2 - $1" | bc)"; }
quiet() { # run a tool, show its output only when it fails
  "$@" >"$work/log" 2>&1 || { tail -40 "$work/log" >&2; die "$1 failed"; }
}

# --- download: the guest's missing packages, fetched on the host ------------------------
t0=$(now)
quiet virt-copy-out -a "$base" /var/lib/dpkg/status "$work"
t1=$(now)
repo=$work/local-debs
mkdir -p "$repo" "$work/apt/parts" "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
cp "$debs"/*.deb "$repo/"
(cd "$repo" && dpkg-scanpackages --multiversion . > Packages 2>/dev/null)
# Host sources (bookworm, as the guest) plus the stand-ins; host lists seed the private state.
cp /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources "$work/apt/parts/" 2>/dev/null || true
[ -s /etc/apt/sources.list ] && cp /etc/apt/sources.list "$work/apt/parts/host.list"
echo "deb [trusted=yes] file:$repo ./" > "$work/apt/parts/local.list"
cp /var/lib/apt/lists/*Release* /var/lib/apt/lists/*_Packages* "$work/apt/lists/" 2>/dev/null || true
apt=(apt-get -q -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/apt/parts"
     -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
     -o "Dir::State::status=$work/status" -o "Dir::State::extended_states=$work/apt/ext"
     -o APT::Sandbox::User=root -o Debug::NoLocking=1)
quiet "${apt[@]}" update
quiet "${apt[@]}" -y --download-only --no-install-recommends install $pkgs
mv "$work"/apt/cache/archives/*.deb "$repo/" 2>/dev/null || true
(cd "$repo" && dpkg-scanpackages --multiversion . > Packages 2>/dev/null)
ndebs=$(ls "$repo"/*.deb | wc -l)
t2=$(now)

# --- customize --------------------------------------------------------------------------
disk=$work/disk.raw
qemu-img convert -O raw "$base" "$disk"
truncate -s 6G "$disk"
quiet sgdisk -e "$disk"
quiet growpart "$disk" 1
t3=$(now)
# The role files every bench tool writes (ci/bench/role/), uploaded to the same paths.
role=$(cd "$(dirname "$0")" && pwd)/role
uploads=()
while IFS= read -r f; do uploads+=(--upload "$role/$f:/$f"); done < <(cd "$role" && find . -type f -printf '%P\n')
local_list=/etc/apt/sources.list.d/local.list
aptl="-o Dir::Etc::SourceList=$local_list -o Dir::Etc::SourceParts=/dev/null"
quiet virt-customize --format raw -a "$disk" --no-network \
  --run-command 'resize2fs /dev/sda1' \
  --write $'/usr/sbin/policy-rc.d:#!/bin/sh\nexit 101\n' --chmod 0755:/usr/sbin/policy-rc.d \
  --copy-in "$repo:/var/cache" \
  --write "$local_list:deb [trusted=yes] file:/var/cache/local-debs ./" \
  --run-command "DEBIAN_FRONTEND=noninteractive apt-get -qq $aptl update" \
  --run-command "DEBIAN_FRONTEND=noninteractive apt-get -y -qq $aptl install --no-install-recommends $pkgs" \
  --run-command 'apt-get clean' \
  "${uploads[@]}" \
  --run-command 'systemctl disable docker.service docker.socket || true' \
  --delete /var/cache/local-debs --delete "$local_list" --delete /usr/sbin/policy-rc.d \
  --run-command 'rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_*' \
  --truncate /etc/machine-id
t4=$(now)
quiet virt-sparsify --in-place --format raw "$disk"
t5=$(now)

# --- convert ----------------------------------------------------------------------------
qemu-img convert -c -O qcow2 "$disk" "$out"
t6=$(now)
done_ok=1
echo "virt-customize: download $(secs "$t0" "$t2") s, customize $(secs "$t2" "$t5") s," \
  "convert $(secs "$t5" "$t6") s (download = read guest dpkg status $(secs "$t0" "$t1") s" \
  "+ host apt $(secs "$t1" "$t2") s for $ndebs debs; customize = grow $(secs "$t2" "$t3") s" \
  "+ virt-customize $(secs "$t3" "$t4") s + virt-sparsify $(secs "$t4" "$t5") s)" >&2
