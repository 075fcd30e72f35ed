#!/usr/bin/env bash
# The main job (README): installs the host tools, builds mesobake and bakes an image.
#
#   sudo ci/build-image.sh [PROFILE] [mesobake build options...]
#       real sources: the Ubuntu 24.04 cloud image and AVENTER's maintained Mesos
#       repository (put its key at keys/aventer.asc first, see README).
#   sudo ci/build-image.sh --offline [PROFILE] [options...]
#       offline variant for machines that reach only Debian's archive: the bootstrapped
#       debian-12 base plus the local TEST STAND-IN Mesos/Marathon packages.
set -euo pipefail
cd "$(dirname "$0")/.."
offline=0
if [ "${1:-}" = "--offline" ]; then offline=1; shift; fi
profile=${1:-profiles/master-slave.toml}
shift || true
bash ci/setup-host.sh
cargo build --release
extra=()
if [ "$offline" = 1 ]; then
  bash ci/standins/build.sh ci/standins/out
  extra=(--with profiles/include/offline-standins.toml)
fi
exec target/release/mesobake build "$profile" "${extra[@]}" --out out --timings "$@"
