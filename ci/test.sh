#!/usr/bin/env bash
# The test command (README): installs what the tests need, then runs every tier.
#   1. unit and CLI tests (no root, no VM), then the .deb installed and used from /
#   2. the end-to-end tier (root): bootstraps debian-12 and the Ubuntu 24.04
#      disk-layout test base. Fault injection first: a master-slave build is stopped
#      during apt by SIGINT, then SIGTERM (each must unwind and leave nothing), then
#      killed with SIGKILL (no mount, loop device or process may outlive it; check must
#      refuse the directory, mesobake clean must remove the work). Then the real builds:
#      master-slave and slave-only (stand-in Mesos in AVENTER's layout, real zookeeperd)
#      and master-slave in every output format into a path with a space (Mesosphere's
#      layout booted in cgroup v1), checked with outside tools (qemu-img, sha256sum,
#      tar, sfdisk, blkid, virt-v2v) and mesobake check; then three boots at once: both
#      qcow2 roles and the VMDK taken from the OVA. Also: failed builds leave nothing,
#      and rebuilds reuse the layers.
#      e2e_lab builds master and slave-only (mesos containerizer), boots 3 masters and
#      a group with one agent with `mesobake lab up`, checks the ZooKeeper quorum, one
#      elected Mesos master with the agent registered under a name from its address,
#      checks authentication (on by default: refusals without credentials, acceptance
#      with them, 0600 secrets, none in the images), ZooKeeper's /mesos and /marathon
#      unreadable without the digest (a real client), the nftables policy (from a
#      network namespace on the lab segment: ZooKeeper, master, Marathon and agent
#      dropped from outside the cluster network, SSH not), logs in with `lab ssh` (a
#      throwaway key the topology names) and reads a master's hostname, then crashes the
#      leader with `lab kill`, checks `lab status` shows it down, that another master takes
#      over with the agent re-registered and the two ZooKeeper members left keep their
#      quorum, and that `lab down` leaves no QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "ci/test.sh needs root (loop devices, mounts, chroot): run it with sudo" >&2
  exit 1
fi
bash ci/setup-host.sh
cargo build --all-targets
cargo test --all-targets 2>&1
# mesobake as an installed tool: this build's binary packaged as a .deb, installed with
# apt, used from / with no checkout around (profiles, init, a dry run by name, seed,
# completions, man page), then purged.
MESOBAKE_BIN=target/debug/mesobake bash ci/deb/build.sh
bash ci/deb/test.sh
MESOBAKE_E2E=1 cargo test --test e2e --test e2e_lab -- --test-threads=1 --nocapture 2>&1
