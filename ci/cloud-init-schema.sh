#!/usr/bin/env bash
# Validates cloud-init seed files with Debian 12's own cloud-init (22.4), without
# installing it on the host: its .deb is unpacked into target/cloud-init-22.4 and run
# from there with Debian's python3 (its library dependencies are plain python3-*
# packages from ci/setup-host.sh; cloud-init's systemd units never reach the host).
#   ci/cloud-init-schema.sh user-data FILE...       cloud-init schema --config-file; a
#       MIME multipart user-data (a seed with user cloud-configs), which 22.4's
#       `schema --config-file` refuses ("needs to begin with #cloud-config"), goes
#       through cloud-init's own user-data processing and cloud-config part handler,
#       as on a booted node, and each part and their merge (what `cloud-init schema
#       --system` would check on the node) are validated against the schema
#   ci/cloud-init-schema.sh merged FILE             prints that merge as JSON
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
  user-data|merged)
    for f in "$@"; do
      if head -c 4096 "$f" | grep -qi '^mime-version:'; then
        $py - "$kind" "$f" <<'PY'
import json, os, sys, tempfile
from cloudinit import handlers, helpers, user_data, util
from cloudinit.config import schema
from cloudinit.handlers.cloud_config import CloudConfigPartHandler
from cloudinit.settings import PER_INSTANCE

kind, path = sys.argv[1], sys.argv[2]
tmp = tempfile.mkdtemp()
merged = os.path.join(tmp, "cloud-config.txt")


class Paths(helpers.Paths):
    """cloud-init's paths, with the instance's merged cloud-config in tmp."""

    def get_ipath(self, name=None):
        return merged


paths = Paths({"cloud_dir": tmp, "run_dir": tmp})
msg = user_data.UserDataProcessor(paths).process(open(path, "rb").read())
parts = [p for p in msg.walk() if p.get_content_maintype() != "multipart"]
bad = [p.get_content_type() for p in parts if p.get_content_type() != "text/cloud-config"]
if bad or not parts:
    sys.exit(f"{path}: parts that are not text/cloud-config: {bad or 'none at all'}")
problems = []


def check(label, file):
    try:
        schema.validate_cloudconfig_file(file, schema.get_schema())
    except schema.SchemaValidationError as e:
        problems.append(f"{label}: {e}")


for i, p in enumerate(parts, 1):
    part = os.path.join(tmp, f"part-{i}")
    with open(part, "w") as out:
        out.write(util.fully_decoded_payload(p))
    check(f"part {i} ({p.get_filename()}, Merge-Type {p.get('Merge-Type')})", part)
handler = CloudConfigPartHandler(paths)
handler.handle_part(None, handlers.CONTENT_START, None, None, None, None)
handlers.walk(msg, handlers.walker_callback, {
    "handlers": {"text/cloud-config": handler}, "handlerdir": tmp, "data": None,
    "frequency": PER_INSTANCE, "handlercount": 0, "excluded": [],
})
merged_from = len(handler.file_names)
handler.handle_part(None, handlers.CONTENT_END, None, None, None, None)
if merged_from != len(parts):
    problems.append(f"only {merged_from} of {len(parts)} parts merged (see the warnings above)")
check("the merged cloud-config", merged)
if problems:
    sys.exit(f"Invalid cloud-config {path}:\n  " + "\n  ".join(problems))
if kind == "merged":
    print(json.dumps(util.load_yaml(open(merged).read()), indent=1))
else:
    print(f"Valid cloud-config: {path} (multipart: {len(parts)} parts, each and merged)")
PY
      elif [ "$kind" = merged ]; then
        $py -c 'import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))' "$f"
      else
        $py -m cloudinit.cmd.main schema --config-file "$f"
      fi
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
  *) echo "usage: $0 user-data|merged|network-config FILE..." >&2; exit 2 ;;
esac
