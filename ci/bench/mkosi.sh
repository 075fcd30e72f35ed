#!/usr/bin/env bash
# Peer tool for ci/bench/run.sh: mkosi 14 (Debian 12's package) building the same content
# as ci/bench/baseline.sh and the mesobake master-slave image: Debian bookworm with the
# base's packages (src/base/bootstrap/mod.rs), zookeeperd and docker.io from the archive,
# the stand-in mesos/marathon debs from DEBS_DIR, the role files, docker disabled, cleaned.
# The mkosi configuration is ci/bench/mkosi/ (mkosi.default, mkosi.prepare, mkosi.postinst,
# mkosi.extra/).
#
#   ci/bench/mkosi.sh MODE DEBS_DIR OUT_DIR
#
# MODE (times one line to stderr: "mkosi: MODE N s (mkosi build N s, qcow2 N s)"):
#   cold                 mkosi -f -f -f: no incremental image, package cache emptied, so
#                        everything comes from the archive, debootstrap included (mesobake
#                        starts from a cached base; mkosi has no such layer).
#   cold-cached          mkosi -f -f with the package cache left warm (by an earlier cold):
#                        a full build from the same downloaded packages, no Incremental.
#   incremental-prepare  mkosi -f -f --incremental: builds the cached post-install image
#                        (packages + mkosi.prepare) and then the image from it.
#   incremental          edits one file in mkosi.extra (a timestamp in /etc/mesobake-bench)
#                        and runs mkosi -f --incremental: the cached image is copied, package
#                        installation is skipped (checked: fails if mkosi installed anything).
#   bootable             tries Format=gpt_ext4 Bootable=yes and fails with mkosi's error
#                        (here: "unknown filesystem type 'vfat'" mounting the ESP).
#   all                  cold, cold-cached, incremental-prepare, incremental in that order.
# Every mode writes the timestamp file, so all outputs have the same content.
#
# Output: OUT_DIR/mkosi.qcow2, `qemu-img convert -c -O qcow2` (as baseline.sh) of mkosi's
# Format=gpt_ext4 Bootable=no disk: a GPT disk with one ext4 root partition holding the
# whole tree (kernel and initrd in /boot, grub packages installed) but NO boot loader and
# no ESP, so it is NOT bootable as is. Bootable=yes needs a vfat ESP mounted, which these
# machines' kernels cannot do.
#
# Kept between runs under $MKOSI_BENCH_STATE (default OUT_DIR/mkosi-state): src/ (the
# config copy with debs/), cache/ (mkosi's package cache), inc/ (the incremental image),
# log/ (the last mkosi log per mode). Everything else is removed on exit.
# MKOSI_BENCH_ROOT_SIZE (default 6G, as baseline.sh) sets the root partition size.
#
# Needs root, mkosi 14 (installed here with apt-get if missing, refusing if apt would
# touch the pinned qemu packages), and the host's apt sources: the mirror is read from
# them at run time (mkosi's default otherwise). systemd-nspawn runs with
# --nspawn-keep-unit, since these machines have no systemd as PID 1 (no system bus).
set -euo pipefail
die() { echo "mkosi.sh: $*" >&2; exit 1; }
[ $# -eq 3 ] || die "usage: $0 cold|cold-cached|incremental-prepare|incremental|bootable|all DEBS_DIR OUT_DIR"
mode=$1 debs=$2 outdir=$3
here=$(cd "$(dirname "$0")" && pwd)
conf=$here/mkosi
[ "$(id -u)" -eq 0 ] || die "run as root"
[ -f "$conf/mkosi.default" ] || die "missing $conf/mkosi.default"
ls "$debs"/mesos_*.deb "$debs"/marathon_*.deb >/dev/null 2>&1 \
  || die "no mesos_*.deb and marathon_*.deb in $debs"
mkdir -p "$outdir"
debs=$(cd "$debs" && pwd) outdir=$(cd "$outdir" && pwd)
state=${MKOSI_BENCH_STATE:-$outdir/mkosi-state}
root_size=${MKOSI_BENCH_ROOT_SIZE:-6G}

ensure_mkosi() {
  if command -v mkosi >/dev/null; then
    case $(mkosi --version) in *" 14"*) return ;; *) die "need mkosi 14, have: $(mkosi --version)" ;; esac
  fi
  echo "mkosi.sh: installing Debian's mkosi" >&2
  DEBIAN_FRONTEND=noninteractive apt-get -s install -y mkosi >"$state/apt-sim" 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -s install -y mkosi >"$state/apt-sim" 2>&1; } \
    || die "apt-get cannot install mkosi: $(tail -3 "$state/apt-sim")"
  if grep -E '^(Remv|Inst) qemu' "$state/apt-sim" >&2; then
    die "installing mkosi would change the qemu packages above; not installing"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mkosi >/dev/null || die "apt-get install mkosi failed"
}

# The host's Debian mirror (first deb URI serving the bookworm suite), never hard-coded.
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN{RS=""} /(^|\n)Types:[^\n]*deb([ \n]|$)/ && /(^|\n)Suites:[^\n]*[ \t]bookworm([ \n]|$)/ {
           if (match($0, /(^|\n)URIs:[ \t]*[^ \t\n]+/)) { s=substr($0,RSTART,RLENGTH); sub(/.*URIs:[ \t]*/,"",s); print s; exit } }' "$f"
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1)=="bookworm") { print $i; exit } }'
}

mkdir -p "$state"/{src,cache,inc,log}
ensure_mkosi
scratch=$(mktemp -d /var/tmp/mkosi-bench.XXXXXX)
cleanup() {
  rm -rf "$scratch"
  # mkosi's raw outputs are big; only the incremental image (inc/*/*.cache-pre-inst) stays.
  find "$state/inc" -type f ! -name '*.cache-pre-inst' -delete 2>/dev/null || true
  rm -f "$state/apt-sim"
}
trap cleanup EXIT

# The source tree mkosi runs in: the config, the stand-in debs (mounted at /root/src for
# mkosi.prepare), empty man directories in the skeleton (mkosi drops /usr/share/man before
# installing, and Java's postinst needs man1 for its alternatives; git keeps no empty dirs).
rm -rf "$state/src"; mkdir -p "$state/src/debs"
cp -a "$conf/." "$state/src/"
# The role files every bench tool writes (ci/bench/role/), as extra files.
cp -a "$here/role/." "$state/src/mkosi.extra/"
cp "$debs"/mesos_*.deb "$debs"/marathon_*.deb "$state/src/debs/"
for i in 1 2 3 4 5 6 7 8; do mkdir -p "$state/src/mkosi.skeleton/usr/share/man/man$i"; done
chmod 755 "$state/src/mkosi.prepare" "$state/src/mkosi.postinst"

# mkosi 14's incremental path runs "tune2fs -U random" on the cached image's root file
# system, which e2fsprogs 1.47 refuses on a metadata_csum file system that is not freshly
# checked ("This operation requires a freshly checked filesystem."), failing the build.
# So mkosi's mkfs.ext4 makes the root without metadata_csum (grub 2.06 reads that too),
# in every mode, so all outputs have the same file system.
sed -e '/^[[:space:]]*ext4 = {/,/}/ s/metadata_csum,//' /etc/mke2fs.conf > "$scratch/mke2fs.conf"
grep -A2 '^[[:space:]]*ext4 = {' "$scratch/mke2fs.conf" | grep -q metadata_csum \
  && die "could not drop metadata_csum from the ext4 defaults in /etc/mke2fs.conf"
export MKE2FS_CONFIG=$scratch/mke2fs.conf

mirror=$(host_mirror | head -1 || true)
common=(--nspawn-keep-unit --cache "$state/cache" --root-size "$root_size" ${mirror:+--mirror "$mirror"})

now() { date +%s.%N; }
secs() { printf '%.0f' "$(echo "$2 - $1" | bc)"; }

# run_mkosi MODE OUTPUT_DIR ARGS...: runs mkosi in the source tree, log in log/MODE.log.
run_mkosi() {
  local m=$1 od=$2; shift 2
  local log=$state/log/$m.log
  if ! (cd "$state/src" && mkosi "${common[@]}" --output-dir "$od" "$@" build) >"$log" 2>&1; then
    echo "mkosi.sh: mkosi failed in mode $m; last lines of $log:" >&2
    grep -v '^  ' "$log" | grep -E 'Error|error|rror:|E: |unknown|failed' | tail -8 >&2 || true
    tail -3 "$log" >&2
    return 1
  fi
}

one() {
  local m=$1 od t0 t1 t2 img
  date +%s.%N > "$state/src/mkosi.extra/etc/mesobake-bench"
  case $m in
    cold|cold-cached|bootable) od=$scratch/out ;;
    incremental-prepare|incremental) od=$state/inc ;;
    *) die "unknown mode $m" ;;
  esac
  t0=$(now)
  case $m in
    cold) run_mkosi "$m" "$od" --format gpt_ext4 -f -f -f ;;
    cold-cached)
      [ -n "$(find "$state/cache" -name '*.deb' -print -quit)" ] \
        || echo "mkosi.sh: warning: package cache is empty (run cold first); this is a cold run" >&2
      run_mkosi "$m" "$od" --format gpt_ext4 -f -f ;;
    incremental-prepare) run_mkosi "$m" "$od" --format gpt_ext4 --incremental -f -f ;;
    incremental)
      [ -n "$(find "$state/inc" -name '*.cache-pre-inst' -print -quit)" ] \
        || die "no incremental image under $state/inc: run incremental-prepare first"
      run_mkosi "$m" "$od" --format gpt_ext4 --incremental -f
      if grep -q -E 'Installing Debian|Running prepare script' "$state/log/$m.log" \
         || ! grep -q 'Basing off cached image' "$state/log/$m.log"; then
        die "incremental build did not reuse the cached image (see $state/log/$m.log)"
      fi
      echo "mkosi: incremental reused the cached image (no package installation, no prepare script)" >&2 ;;
    bootable)
      if run_mkosi "$m" "$od" --format gpt_ext4 --bootable -f -f; then
        echo "mkosi: bootable image built (unexpected on these machines)" >&2; return 0
      fi
      die "mkosi cannot build a bootable disk here (Format=gpt_ext4 Bootable=yes)" ;;
  esac
  t1=$(now)
  img=$(find "$od" -name image.raw -type f | head -1)
  [ -n "$img" ] || die "mkosi left no image.raw under $od"
  rm -f "$outdir/mkosi.qcow2"
  qemu-img convert -c -O qcow2 "$img" "$outdir/mkosi.qcow2"
  t2=$(now)
  rm -f "$img" "$img.manifest"
  [ "$od" = "$scratch/out" ] && rm -rf "$od"
  echo "mkosi: $m $(secs "$t0" "$t2") s (mkosi build $(secs "$t0" "$t1") s, qcow2 $(secs "$t1" "$t2") s, $(( $(stat -c %s "$outdir/mkosi.qcow2") / 1048576 )) MiB)" >&2
}

case $mode in
  all) for m in cold cold-cached incremental-prepare incremental; do one "$m"; done ;;
  *) one "$mode" ;;
esac
