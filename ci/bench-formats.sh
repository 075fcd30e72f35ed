#!/usr/bin/env bash
# Benchmarks the output formats for one image (needs root, like a build).
#
#   sudo ci/bench-formats.sh [PROFILE] [WORKDIR]
#
# 1. Builds PROFILE (default profiles/master-slave.toml, offline stand-ins) in every
#    format with --timings; mesobake prints each output's conversion time (packing and
#    digest included) and size.
# 2. Takes the same image's untrimmed disk (the cached provisioned layer: before
#    finalize's cleanup and fstrim) and runs a plain `qemu-img convert -O FMT` of it per
#    format, without mesobake's options (no compression, default subformats).
# 3. Prints both side by side.
# BENCH_REUSE=1 skips step 1 when WORKDIR holds an earlier run's build.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-profiles/master-slave.toml}
work=${2:-target/bench-formats}
name=$(basename "$profile" .toml)
formats=qcow2,raw,vmdk,vdi,vhdx,vhd,vhd-fixed,ova,ec2
export MESOBAKE_CACHE_DIR=${MESOBAKE_CACHE_DIR:-$PWD/target/e2e-cache}
if [ "$(id -u)" -ne 0 ]; then
  echo "ci/bench-formats.sh builds an image and needs root: run it with sudo" >&2
  exit 1
fi
bash ci/standins/build.sh ci/standins/out >/dev/null
cargo build --release -q
# BENCH_REUSE=1 keeps the previous build in WORKDIR and re-runs only the comparison.
if [ "${BENCH_REUSE:-0}" != 1 ] || [ ! -f "$work/build.log" ]; then
  rm -rf "$work"
  mkdir -p "$work/out" "$work/plain"
  target/release/mesobake build "$profile" --with profiles/include/offline-standins.toml \
    --format "$formats" --out "$work/out" --timings 2>"$work/build.log" >/dev/null \
    || { tail -20 "$work/build.log"; exit 1; }
fi

# The provisioned layer this build used: the newest one in the cache.
layer=$(ls -t "$MESOBAKE_CACHE_DIR"/layers/provisioned/*/disk.qcow2 | head -1)
qemu-img convert -O raw "$layer" "$work/plain/untrimmed.raw"
# The layer keeps the base's size; give it the image's size, as the build does.
vsize=$(qemu-img info --output=json "$work/out/$name.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
truncate -s "$vsize" "$work/plain/untrimmed.raw"

plain() { # FORMAT QEMU_FORMAT EXT -> "seconds MiB"
  local dest="$work/plain/plain.$3" t0 t1
  t0=$(date +%s.%N)
  qemu-img convert -O "$2" "$work/plain/untrimmed.raw" "$dest"
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" -v s="$(stat -c %s "$dest")" 'BEGIN { printf "%.1f %.1f\n", b - a, s / 1048576 }'
  rm -f "$dest"
}

printf '%-10s %-30s %9s %10s   %-24s %9s %10s\n' format "mesobake output" "time (s)" "size (MiB)" "plain qemu-img convert" "time (s)" "size (MiB)"
for f in ${formats//,/ }; do
  case $f in
    qcow2) q=qcow2 e=qcow2 file=$name.qcow2 ;;
    raw) q=raw e=raw file=$name.raw ;;
    vmdk) q=vmdk e=vmdk file=$name.vmdk ;;
    vdi) q=vdi e=vdi file=$name.vdi ;;
    vhdx) q=vhdx e=vhdx file=$name.vhdx ;;
    vhd) q=vpc e=vhd file=$name.vhd ;;
    vhd-fixed) q=vpc e=vhd file=$name.fixed.vhd ;;
    ova) q=vmdk e=vmdk file=$name.ova ;;
    ec2) q=vmdk e=vmdk file=$name.ec2.vmdk ;;
  esac
  line=$(grep "timing output $file " "$work/build.log" || true)
  secs=$(awk '{print $4}' <<<"$line")
  mib=$(awk '{print $6}' <<<"$line")
  read -r psecs pmib < <(plain "$f" "$q" "$e")
  printf '%-10s %-30s %9s %10s   %-24s %9s %10s\n' "$f" "$file" "$secs" "$mib" "-O $q" "$psecs" "$pmib"
done
echo
echo "size = apparent file size; the plain raw/vhd outputs are sparse on disk."
grep '^timing' "$work/build.log" | grep -v 'timing output' || true
