#!/usr/bin/env bash
# The full 3 masters + 1 agent lab run (4 VMs under TCG do not fit CI's time budget next
# to the rest of the end-to-end tier, so CI runs the 3 masters and this runs all four).
# It runs tests/e2e_lab.rs with the agent added and prints the figures: lab up -> ZooKeeper
# quorum, -> all nodes configured, -> all services healthy.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "ci/lab-4node.sh needs root (image builds): run it with sudo" >&2
  exit 1
fi
bash ci/setup-host.sh
MESOBAKE_E2E=1 MESOBAKE_LAB_AGENT=1 cargo test --test e2e_lab -- --test-threads=1 --nocapture 2>&1 |
  tee target/lab-4node.log
grep -E "e2e-lab:|mesobake: lab:" target/lab-4node.log
