#!/usr/bin/env bash
# The test command (README): installs what the tests need, then runs every tier.
#   1. unit and CLI tests (no root, no VM)
#   2. the end-to-end tier (root): bootstraps debian-12, builds master-slave and
#      slave-only with the stand-in Mesos packages and the real zookeeperd, boots both
#      under QEMU, and checks failed and interrupted builds leave nothing behind.
#      e2e_formats builds master-slave in every output format on the Ubuntu 24.04
#      disk-layout test base with Mesosphere's layout booted in cgroup v1, checks the
#      partitions, fstab and grub.cfg with outside tools, runs mesobake check,
#      re-checks the OVA with tar and sha256sum, and boots the VMDK taken from the OVA.
#      e2e_lab builds master and slave-only, boots 3 masters and a group of 2 agents
#      with `mesobake lab up`, checks the ZooKeeper quorum, one elected Mesos master
#      with both agents registered under their own names, then kills the leader's VM
#      and checks that another master takes over with the agents re-registered, and
#      that `lab down` leaves no QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "ci/test.sh needs root (loop devices, mounts, chroot): run it with sudo" >&2
  exit 1
fi
bash ci/setup-host.sh
cargo build --all-targets
cargo test --all-targets 2>&1
MESOBAKE_E2E=1 cargo test --test e2e --test e2e_formats --test e2e_lab -- --test-threads=1 --nocapture 2>&1
