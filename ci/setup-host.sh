#!/usr/bin/env bash
# Installs the host tools mesobake and its tests need on a fresh Debian/Ubuntu machine.
# qemu-system-x86 and qemu-utils are named in one command on purpose: installing
# qemu-system-x86 alone replaces a backported qemu-img and can leave the two mismatched.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
pkgs=(
  qemu-system-x86 qemu-utils   # boot (verify) and disk conversion
  mmdebstrap                   # bootstrapped bases
  fdisk gdisk                  # sfdisk --json, sgdisk: partition tables
  cloud-guest-utils            # growpart
  e2fsprogs util-linux mount   # mkfs.ext4, resize2fs, losetup, mount
  dosfstools mtools            # the ESP is built as a file, never mounted
  grub-pc-bin grub-efi-amd64-bin grub2-common  # boot loaders written from the host
  genisoimage                  # NoCloud seed ISOs (label cidata); its isoinfo: verify reads their network-config
  gpg                          # --sign: detached signature of SHA256SUMS; check verifies it
  virt-v2v                     # e2e (formats): an independent OVF consumer (virt-v2v -i ova)
  dpkg-dev                     # stand-in test packages and the local .deb repo
  zookeeper python3-kazoo      # tests/standins.rs: leader election through a real ZooKeeper
  python3 curl ca-certificates zstd
  python3-venv                 # the SPDX validator's own venv (below)
  busybox posh shellcheck       # the configurator tests run it under several POSIX shells
  nftables                     # ... and load its firewall rules into the real nft (throwaway netns)
  iproute2                     # e2e_lab: a host on the lab segment in a network namespace
  openssh-client               # lab ssh; e2e_lab's throwaway key (ssh-keygen)
  # tests/seed.rs checks seeds with Debian's cloud-init unpacked from its .deb
  # (ci/cloud-init-schema.sh), never installed: only its python libraries are.
  python3-yaml python3-jsonschema python3-jinja2 python3-configobj python3-jsonpatch
  python3-netifaces python3-oauthlib python3-requests python3-serial
)
if ! dpkg -s "${pkgs[@]}" >/dev/null 2>&1 || ! command -v qemu-system-x86_64 >/dev/null; then
  $SUDO apt-get update -qq
  # Some machines carry a newer backported qemu-utils that breaks qemu-system-x86 7.2;
  # pin qemu-utils to the version qemu-system-x86 comes in, so the two always match.
  qver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "${pkgs[@]/#qemu-utils/qemu-utils=$qver}"
fi
# The SPDX project's own validator (pyspdxtools, from spdx-tools on PyPI) checks the
# SBOMs in tests/sbom.rs and the e2e tier. It lives in a venv of its own, so the
# system Python is left alone; re-running skips it once it works.
SPDX_VENV=/opt/mesobake-ci/spdx-tools
if ! "$SPDX_VENV/bin/pyspdxtools" --help >/dev/null 2>&1; then
  $SUDO rm -rf "$SPDX_VENV"
  $SUDO mkdir -p "$(dirname "$SPDX_VENV")"
  $SUDO /usr/bin/python3 -m venv "$SPDX_VENV"
  $SUDO "$SPDX_VENV/bin/pip" install --quiet --disable-pip-version-check "spdx-tools==0.8.5"
  "$SPDX_VENV/bin/pyspdxtools" --help >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (https://rustup.rs) and re-run" >&2
  exit 1
fi
