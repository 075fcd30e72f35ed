#!/usr/bin/env bash
# Rolling image replacement under a running 3-master lab, with the real ZooKeeper
# (issue 12, part 7). Too long for CI (four VM boots in a row under TCG); run it by hand:
#
#   sudo ci/rolling-replace.sh [WORKDIR]      (default: target/rolling-replace)
#
# It builds the `master` role twice: v1, and v2 = v1 plus one overlay file
# (/etc/mesobake-release, "2"), the way a monthly rebuild differs from the last. Then:
#   1. `lab up` three masters on v1; write a znode (/rolling-replace = "written on v1")
#      and note each member's ZooKeeper transaction logs.
#   2. A poller asks every member `srvr` through its forwarded port, rounds a second apart, all
#      the while, and logs who is leader and follower.
#   3. `lab replace` each master with v2, followers first and the leader last, each one
#      only once the one before has rejoined (lab replace waits for that).
#   4. After each step: the node runs v2 (/etc/mesobake-release over `lab ssh`), its
#      /var/lib/zookeeper is the data disk and still holds the logs from before, the
#      znode reads back, and the ensemble has one leader and two followers.
# It prints, per node, down -> configured -> rejoined, and the poller's verdict: the
# seconds, if any, when no two members served as leader and follower (a quorum), which
# is the election after the leader's replacement. Exit 0 only if every check held.
#
# Stand-ins: the Mesos and Marathon packages are the TEST STAND-INS (ci/standins); the
# ZooKeeper is Debian's real zookeeperd. Needs root, qemu-system-x86, python3-kazoo
# (ci/setup-host.sh installs all of it).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(realpath -m "${1:-target/rolling-replace}")
mkdir -p "$work"
if [ "$(id -u)" != 0 ]; then echo "rolling-replace: run as root (it boots VMs and builds images)" >&2; exit 1; fi
[ -x target/debug/mesobake ] || cargo build
mb=$PWD/target/debug/mesobake
export MESOBAKE_CACHE_DIR=${MESOBAKE_CACHE_DIR:-$PWD/target/e2e-cache}
[ -d ci/standins/out ] || bash ci/standins/build.sh ci/standins/out

log() { printf '%s rolling-replace: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
t0=$(date +%s.%N)
since() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.0f}')" "$(date +%s.%N)" "$t0"; }

# --- the two images ----------------------------------------------------------
mkdir -p "$work/release2/etc"
echo 2 > "$work/release2/etc/mesobake-release"
# A --with layer's overlays replace the profile's (arrays replace): keep common's.
cat > "$work/v2.toml" <<EOF
overlays = ["$PWD/overlays/common", "$work/release2"]
EOF
# The lab needs no Docker on masters; keep the builds as the lab tier makes them.
for v in v1 v2; do
  extra=()
  [ "$v" = v2 ] && extra=(--with "$work/v2.toml")
  log "building master $v"
  "$mb" build profiles/master.toml --with profiles/include/offline-standins.toml "${extra[@]}" --out "$work/$v" >&2
done

# --- the lab -----------------------------------------------------------------
topo_dir=$work/lab
mkdir -p "$topo_dir"
"$mb" lab down "$topo_dir/cluster.toml" --purge >/dev/null 2>&1 || true
rm -f "$topo_dir/key" "$topo_dir/key.pub"
ssh-keygen -q -t ed25519 -N '' -C rolling-replace -f "$topo_dir/key"
{
  printf 'name = "rolling"\nssh-keys = [%s]\n\n' "$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read().strip()))' "$topo_dir/key.pub")"
  printf '[network]\ncidr = "10.78.0.0/24"\ngateway = "10.78.0.1"\n\n[lab]\nmemory = 1024\n'
  for i in 1 2 3; do printf '\n[[node]]\nname = "m%s"\nrole = "master"\nip = "10.78.0.1%s"\n' "$i" "$i"; done
} > "$topo_dir/cluster.toml"
topo=$topo_dir/cluster.toml
state=$topo_dir/.mesobake-lab/rolling/state.json
cleanup() { kill "${poller:-}" 2>/dev/null || true; "$mb" lab down "$topo" >/dev/null 2>&1 || true; }
trap cleanup EXIT

log "lab up: three masters on v1"
t_up=$(date +%s)
"$mb" lab up "$topo" --images "$work/v1" --timeout 1800 >&2
log "lab up took $(( $(date +%s) - t_up )) s"

port_of() { python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(next(v["ports"]["2181"] for v in s["vms"] if v["name"]==sys.argv[2]))' "$state" "$1"; }
# srvr through bash's /dev/tcp: no netcat needed.
mode_of() {
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf srvr >&3 && cat <&3' _ "$1" 2>/dev/null |
    sed -n 's/^Mode: //p' || true
}
zk() { # zk get|create PORT
  timeout 120 /usr/bin/python3 - "$@" <<'PY'
import sys
from kazoo.client import KazooClient
op, port = sys.argv[1], sys.argv[2]
z = KazooClient(hosts=f"127.0.0.1:{port}", timeout=10)
z.start(timeout=30)
if op == "create":
    if not z.exists("/rolling-replace"):
        z.create("/rolling-replace", b"written on v1")
print(z.get("/rolling-replace")[0].decode())
z.stop()
PY
}
# on NODE SCRIPT: runs SCRIPT as root on NODE over `lab ssh`, again while ssh itself
# fails (255: sshd may still be starting on a node that just rejoined).
on() {
  local i rc
  for i in 1 2 3 4 5 6; do
    rc=0
    "$mb" lab ssh "$topo" "$1" -- "sudo sh -c $(printf %q "$2")" || rc=$?
    [ "$rc" = 255 ] || return "$rc"
    sleep 5
  done
  return 255
}

leader=
for n in m1 m2 m3; do [ "$(mode_of "$(port_of "$n")")" = leader ] && leader=$n; done
[ -n "$leader" ] || { log "no ZooKeeper leader after lab up"; exit 1; }
log "ZooKeeper leader: $leader"
[ "$(zk create "$(port_of m1)")" = "written on v1" ]
declare -A logs_before
for n in m1 m2 m3; do
  logs_before[$n]=$(on "$n" 'ls /var/lib/zookeeper/version-2 | grep ^log. | head -1')
  [ -n "${logs_before[$n]}" ] || { log "$n: no ZooKeeper transaction log"; exit 1; }
  log "$n: first transaction log ${logs_before[$n]}"
done

# --- the poller --------------------------------------------------------------
poll=$work/poll.log
step=$work/step
: > "$poll"
echo before > "$step"
(
  while :; do
    line="$(date +%s.%N) $(cat "$step")"
    for n in m1 m2 m3; do
      p=$(port_of "$n" 2>/dev/null || echo 0)
      m=$(mode_of "$p")
      line="$line $n=${m:-none}"
    done
    echo "$line" >> "$poll"
    sleep 1
  done
) &
poller=$!

# --- the rolling replacement: followers first, the leader last ----------------
order=()
for n in m1 m2 m3; do [ "$n" = "$leader" ] || order+=("$n"); done
order+=("$leader")
results=()
for n in "${order[@]}"; do
  log "replacing $n with v2"
  if [ "$n" = "$leader" ]; then echo "replacing-leader-$n" > "$step"; else echo "replacing-$n" > "$step"; fi
  out=$("$mb" --json lab replace "$topo" "$n" --image "$work/v2/master.qcow2" --timeout 1200)
  summary=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%s: down %.0f s, configured %.0f s, rejoined %.0f s" % (r["node"], r["down_s"], r["configured_s"], r["rejoined_s"]))' "$out")
  log "$summary"
  results+=("$summary")
  [ "$(on "$n" 'cat /etc/mesobake-release')" = 2 ] || { log "$n does not run v2"; exit 1; }
  src=$(on "$n" 'findmnt -no SOURCE /var/lib/mesobake-data; blkid -s LABEL -o value $(findmnt -no SOURCE /var/lib/mesobake-data)')
  echo "$src" | grep -qx mesobake-data || { log "$n: no data disk under /var/lib/mesobake-data: $src"; exit 1; }
  on "$n" 'findmnt /var/lib/zookeeper >/dev/null' || { log "$n: /var/lib/zookeeper is not bound to the data disk"; exit 1; }
  on "$n" "test -e /var/lib/zookeeper/version-2/${logs_before[$n]}" || { log "$n: ${logs_before[$n]} from before the replacement is gone"; exit 1; }
  got=$(zk get "$(port_of "$n")")
  [ "$got" = "written on v1" ] || { log "$n: znode reads '$got'"; exit 1; }
  modes=$(for m in m1 m2 m3; do mode_of "$(port_of "$m")"; done | sort | tr '\n' ' ')
  [ "$modes" = "follower follower leader " ] || { log "after $n: ensemble is '$modes'"; exit 1; }
  echo "after-$n" > "$step"
  log "after $n: v2, data disk kept (${logs_before[$n]} still there), znode read back through $n, ensemble: $modes"
done
kill "$poller"; poller=

# --- the verdict -------------------------------------------------------------
log "every replacement (seconds from the start of its lab replace):"
for r in "${results[@]}"; do log "  $r"; done
# A poll holds a quorum when one member leads and at least two serve (leader or
# follower). The one window allowed without it is the election after the leader goes
# down, and it must end within 60 s; a gap while a follower is replaced fails.
python3 - "$poll" <<'PY' >&2
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
t0 = float(rows[0][0])
gaps, start, held = [], None, 0
for r in rows:
    t, step, modes = float(r[0]), r[1], [x.split("=")[1] for x in r[2:]]
    ok = modes.count("leader") == 1 and modes.count("leader") + modes.count("follower") >= 2
    if ok:
        held += 1
        if start is not None:
            gaps.append((start[0], t, start[1])); start = None
    elif start is None:
        start = (t, step)
if start is not None:
    gaps.append((start[0], float(rows[-1][0]), start[1]))
print(f"rolling-replace: {len(rows)} polls of srvr on all three members over {float(rows[-1][0]) - t0:.0f} s: a serving quorum in {held}")
bad = False
for a, b, step in gaps:
    allowed = step.startswith("replacing-leader-") and b - a <= 60
    bad |= not allowed
    print(f"rolling-replace: no serving quorum for {b - a:.1f} s from +{a - t0:.0f} s, during {step}: {'the election after the leader went down' if allowed else 'NOT ALLOWED'}")
if not gaps:
    print("rolling-replace: the quorum held at every poll")
sys.exit(1 if bad else 0)
PY
log "done in $(since) s"
