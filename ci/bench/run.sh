#!/usr/bin/env bash
# Benchmark: mesobake against the tools people use for this work today, on this machine,
# in one run, with the same packages (stand-in Mesos/Marathon debs + Debian's zookeeperd
# and docker.io). mesobake, the shell baseline and virt-customize start from the same
# cached debian-12 base disk; mkosi cannot start from a disk, so it bootstraps (its
# package cache and Incremental= image are its layers). Prints absolute times, ratios
# against each target's reference, and output sizes.
#
#   sudo ci/bench/run.sh            everything (about 25 minutes on 2 cores)
#   BENCH_PEERS=0 sudo ci/bench/run.sh   mesobake, shell and qemu-img only
#   BENCH_WARM_ONLY=1 sudo ci/bench/run.sh   the edit-rebuild loop only: cold, warm
#                                        (one overlay edit), unchanged, and what the
#                                        layers' digest checks cost (about 6 minutes)
#
# Run it on a quiet machine: every row is wall-clock time.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo ci/bench/run.sh)" >&2; exit 1; }
peers=${BENCH_PEERS:-1}
echo "bench: setting up (not timed)"
bash ci/setup-host.sh >/dev/null
cargo build --release -q
bash ci/standins/build.sh ci/standins/out >/dev/null
if [ "$peers" = 1 ]; then
  bash ci/bench/virt-customize.sh --setup >/dev/null
fi
export MESOBAKE_CACHE_DIR=${MESOBAKE_CACHE_DIR:-$PWD/target/bench-cache}
mb=$PWD/target/release/mesobake
debs=$PWD/ci/standins/out
off=profiles/include/offline-standins.toml
out=$(mktemp -d /var/tmp/mesobake-bench.XXXXXX)
trap 'rm -rf "$out"' EXIT

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
size_mb() { echo "scale=1; $(stat -c %s "$1") / 1048576" | bc; }
# build ROLE OUTDIR [--with FILE]...: a timed build whose --timings go to OUTDIR.log.
build() {
  local role=$1 dir=$2; shift 2
  "$mb" build "profiles/$role.toml" --with "$off" "$@" --out "$dir" --timings >/dev/null 2>>"$dir.log"
}
stage_time() { awk -v s="$2" '$1 == "timing" && $2 == s { t += $3 } END { printf "%.1f", t }' "$1"; }
drop_layers() { rm -rf "$MESOBAKE_CACHE_DIR"/layers/{provisioned,packed,configured}; }

echo "bench: warming the base cache (bootstrap, not timed)"
build master-slave "$out/warmup"
base=$(ls -t "$MESOBAKE_CACHE_DIR"/layers/base/*/disk.qcow2 | head -1)

# The overlay edit: a fresh overlay tree layered on the profile, one file in it.
mkdir -p "$out/overlay/etc"
date +%s.%N > "$out/overlay/etc/mesobake-bench"
printf 'overlays = ["%s", "%s"]\n' "$PWD/overlays/common" "$out/overlay" > "$out/edit.toml"

echo "bench: mesobake cold"
drop_layers
t0=$(now); build master-slave "$out/cold" --with "$out/edit.toml"; t1=$(now)
cold=$(secs "$t0" "$t1"); cold_mb=$(size_mb "$out/cold/master-slave.qcow2")
cold_export=$(stage_time "$out/cold.log" export)

echo "bench: mesobake warm (one overlay file edited)"
date +%s.%N > "$out/overlay/etc/mesobake-bench"
t0=$(now); build master-slave "$out/warm" --with "$out/edit.toml"; t1=$(now)
warm=$(secs "$t0" "$t1"); warm_export=$(stage_time "$out/warm.log" export)
t0=$(now); build master-slave "$out/same" --with "$out/edit.toml"; t1=$(now)
same=$(secs "$t0" "$t1")

if [ "${BENCH_WARM_ONLY:-0}" = 1 ]; then
  printf '\n%-50s %8s  %s\n' "case" "seconds" "target"
  printf '%-50s %8.1f  %s\n' "mesobake cold (no provisioned layer)" "$cold" "-"
  printf '%-50s %8.1f  %s\n' "mesobake warm (one overlay file edited)" "$warm" \
    "<= 10 s, every layer's content digest checked (issue 14)"
  printf '%-50s %8.1f  %s\n' "mesobake rebuild, nothing changed" "$same" "-"
  echo
  echo "mesobake stage timings (warm):"
  grep '^timing' "$out/warm.log" | tr '\n' ';'; echo
  echo
  bash ci/bench/verify-cost.sh "$MESOBAKE_CACHE_DIR"
  exit 0
fi

echo "bench: mesobake, all three roles from cold"
drop_layers
t0=$(now)
for r in master-slave master slave-only; do build "$r" "$out/three"; done
t1=$(now); three=$(secs "$t0" "$t1")

echo "bench: hand-written shell baseline"
t0=$(now); bash ci/bench/baseline.sh "$base" "$debs" "$out/baseline.qcow2"; t1=$(now)
shell=$(secs "$t0" "$t1"); shell_mb=$(size_mb "$out/baseline.qcow2")

if [ "$peers" = 1 ]; then
  echo "bench: virt-customize"
  t0=$(now)
  bash ci/bench/virt-customize.sh "$base" "$debs" "$out/vc.qcow2" 2> "$out/vc.log"
  t1=$(now); vc=$(secs "$t0" "$t1"); vc_mb=$(size_mb "$out/vc.qcow2")
  vc_split=$(grep '^virt-customize:' "$out/vc.log" | tail -1)

  echo "bench: mkosi (cold, cold with its package cache, incremental)"
  mk() {
    local t0 t1
    t0=$(now); bash ci/bench/mkosi.sh "$1" "$debs" "$out/mkosi" 2>> "$out/mkosi.log"; t1=$(now)
    secs "$t0" "$t1"
  }
  export MKOSI_BENCH_STATE=$out/mkosi-state
  mk_cold=$(mk cold); mk_cached=$(mk cold-cached)
  mk_prep=$(mk incremental-prepare)
  mk_inc=$(mk incremental); mk_mb=$(size_mb "$out/mkosi/mkosi.qcow2")
fi

echo "bench: export alone (the finished disk, converted by qemu-img)"
qemu-img convert -O raw "$out/cold/master-slave.qcow2" "$out/disk.raw"
t0=$(now); qemu-img convert -c -O qcow2 "$out/disk.raw" "$out/st.qcow2"; t1=$(now); st=$(secs "$t0" "$t1")
t0=$(now); qemu-img convert -c -W -m 16 -o compression_type=zstd -O qcow2 "$out/disk.raw" "$out/zstd.qcow2"; t1=$(now); zs=$(secs "$t0" "$t1")

ratio() { echo "scale=2; $1 / $2" | bc; }
row() { printf '%-50s %8.1f %7s  %s\n' "$1" "$2" "$3" "$4"; }
printf '\n%-50s %8s %7s  %s\n' "case" "seconds" "ratio" "ratio of / target"
row "hand-written shell baseline (cold)" "$shell" 1.00 "reference"
row "mesobake cold (no provisioned layer)" "$cold" "$(ratio "$cold" "$shell")" "x shell; target <= 1.0"
row "mesobake all three roles from cold" "$three" "$(ratio "$three" "$cold")" "x mesobake cold; target <= 1.3"
if [ "$peers" = 1 ]; then
  row "mkosi cold (bootstrap, empty package cache)" "$mk_cold" "$(ratio "$mk_cold" "$shell")" "x shell"
  row "mkosi cold, package cache warm" "$mk_cached" "$(ratio "$mk_cached" "$shell")" "x shell"
  row "mkosi incremental, first (builds its cache)" "$mk_prep" "$(ratio "$mk_prep" "$shell")" "x shell"
  row "mkosi incremental (one file edited)" "$mk_inc" 1.00 "reference for warm"
  row "mesobake warm (one overlay file edited)" "$warm" "$(ratio "$warm" "$mk_inc")" "x mkosi incremental; target <= 0.25 and <= 10 s"
  row "virt-customize (host download included)" "$vc" "$(ratio "$vc" "$shell")" "x shell  [$vc_split]"
else
  row "mesobake warm (one overlay file edited)" "$warm" "-" "target <= 10 s"
fi
row "mesobake rebuild, nothing changed" "$same" "$(ratio "$same" "$cold")" "x mesobake cold"
row "qemu-img convert -c (zlib, one thread)" "$st" 1.00 "reference for export"
row "mesobake export, cold (packs the layer, -W -m 16)" "$cold_export" "$(ratio "$cold_export" "$st")" "x one thread; target <= 0.6"
row "mesobake export, warm (packed layer + delta)" "$warm_export" "$(ratio "$warm_export" "$st")" "x one thread; target <= 0.6"
row "qemu-img convert -c zstd -W -m 16" "$zs" "$(ratio "$zs" "$st")" "x one thread (--compression zstd; QEMU >= 5.1 to read)"
printf '\n%-50s %8s\n' "output (compressed qcow2)" "MiB"
printf '%-50s %8.1f\n' "mesobake master-slave.qcow2 (zlib)" "$cold_mb"
printf '%-50s %8.1f\n' "shell baseline (zlib)" "$shell_mb"
if [ "$peers" = 1 ]; then
  printf '%-50s %8.1f\n' "virt-customize (zlib)" "$vc_mb"
  printf '%-50s %8.1f\n' "mkosi, not bootable here (zlib)" "$mk_mb"
fi
printf '%-50s %8.1f\n' "the same disk as zstd qcow2" "$(size_mb "$out/zstd.qcow2")"
echo
echo "mesobake stage timings (cold, then warm):"
grep '^timing' "$out/cold.log" | tr '\n' ';'; echo
grep '^timing' "$out/warm.log" | tr '\n' ';'; echo
echo
echo "verification (every build checks each cached layer's content digest before use):"
bash ci/bench/verify-cost.sh "$MESOBAKE_CACHE_DIR"
