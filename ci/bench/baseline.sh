#!/usr/bin/env bash
# The hand-written baseline: what people script today without mesobake. Same base, same
# packages, same kind of output: loop mount, chroot apt-get install, write the role's
# files, unmount, qemu-img convert -c. Used by ci/bench/run.sh for comparison only.
#
#   baseline.sh BASE.qcow2 DEBS_DIR OUT.qcow2
set -euo pipefail
base=$1 debs=$2 out=$3
work=$(mktemp -d /var/tmp/baseline.XXXXXX)
root=$work/root
loop=
cleanup() {
  for m in dev/pts dev sys proc; do umount "$root/$m" 2>/dev/null || true; done
  umount "$root" 2>/dev/null || true
  [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

qemu-img convert -O raw "$base" "$work/disk.raw"
truncate -s 6G "$work/disk.raw"
sgdisk -e "$work/disk.raw" >/dev/null
growpart "$work/disk.raw" 1 >/dev/null
start=$(partx -g -o START --nr 1 "$work/disk.raw")
loop=$(losetup --find --show --offset $((start * 512)) "$work/disk.raw")
e2fsck -fp "$loop" >/dev/null
resize2fs "$loop" >/dev/null 2>&1
mkdir -p "$root"
mount "$loop" "$root"
mount -t proc proc "$root/proc"; mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"; mount --bind /dev/pts "$root/dev/pts"
cp /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
mkdir -p "$root/var/cache/local-debs"
cp "$debs"/*.deb "$root/var/cache/local-debs/"
(cd "$root/var/cache/local-debs" && dpkg-scanpackages --multiversion . > Packages 2>/dev/null)
echo "deb [trusted=yes] file:/var/cache/local-debs ./" > "$root/etc/apt/sources.list.d/local.list"
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -qq update
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq install --no-install-recommends \
  mesos marathon zookeeperd docker.io >/dev/null
chroot "$root" apt-get clean
# The role's files (ci/bench/role/, shared by every bench tool), written from inside the
# chroot: /etc/zookeeper/conf is an absolute alternatives link that, followed from the
# host side, would point into the host's /etc.
role=$(cd "$(dirname "$0")" && pwd)/role
(cd "$role" && find . -type f -printf '%P\n') | while IFS= read -r f; do
  chroot "$root" sh -c 'cat > "/$1"' sh "$f" < "$role/$f"
done
chroot "$root" systemctl disable docker.service docker.socket >/dev/null 2>&1 || true
rm -rf "$root/var/cache/local-debs" "$root/etc/apt/sources.list.d/local.list" "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/var/lib/apt/lists/* "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
sync; fstrim "$root"
for m in dev/pts dev sys proc; do umount "$root/$m"; done
umount "$root"; losetup -d "$loop"; loop=
qemu-img convert -c -O qcow2 "$work/disk.raw" "$out"
