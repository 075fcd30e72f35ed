#!/usr/bin/env bash
# Validates cloud-init seed files with Debian 12's own cloud-init (22.4), without
# installing it on the host: its .deb is unpacked into target/cloud-init-22.4 and run
# from there with Debian's python3 (its library dependencies are plain python3-*
# packages from ci/setup-host.sh; cloud-init's systemd units never reach the host).
#   ci/cloud-init-schema.sh user-data FILE...       cloud-init schema --config-file
#   ci/cloud-init-schema.sh network-config FILE...  22.4 has no network-config schema
#       (that came in 23.4): parse each file with cloudinit.net.network_state and render
#       it with the ENI renderer Debian 12 uses; prints the rendered interfaces.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/cloud-init-22.4
if [ ! -d "$dest/usr/lib/python3/dist-packages/cloudinit" ]; then
  mkdir -p target/cloud-init-deb
  (cd target/cloud-init-deb && apt-get download -q cloud-init >/dev/null 2>&1)
  dpkg-deb -x target/cloud-init-deb/cloud-init_*.deb "$dest"
fi
py=/usr/bin/python3
export PYTHONPATH=$PWD/$dest/usr/lib/python3/dist-packages
kind=$1
shift
case $kind in
  user-data)
    for f in "$@"; do
      $py -m cloudinit.cmd.main schema --config-file "$f"
    done
    ;;
  network-config)
    for f in "$@"; do
      $py - "$f" <<'PY'
import sys, yaml
from unittest import mock
from cloudinit.net import network_state, eni
cfg = yaml.safe_load(open(sys.argv[1]))
cfg = cfg.get("network", cfg)
assert cfg.get("version") == 2, "not a version 2 network-config"
# The lookup of interface names by MAC needs the guest's NICs; nothing to look up here.
with mock.patch("cloudinit.net.network_state.get_interfaces_by_mac", return_value={}):
    ns = network_state.parse_net_config_data(cfg, skip_broken=False)
out = eni.Renderer()._render_interfaces(ns)
if "iface" not in out:
    sys.exit(sys.argv[1] + ": nothing rendered")
print(out)
PY
    done
    ;;
  *) echo "usage: $0 user-data|network-config FILE..." >&2; exit 2 ;;
esac
