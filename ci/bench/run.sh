#!/usr/bin/env bash
# Benchmark: mesobake against the tools people use for this work today, on this machine,
# in one run, with the same packages (stand-in Mesos/Marathon debs + Debian's zookeeperd
# and docker.io). mesobake, the shell baseline and virt-customize start from the same
# cached debian-12 base disk; mkosi cannot start from a disk, so it bootstraps (its
# package cache and Incremental= image are its layers). Prints every target of issue 13
# as a ratio beside its reference and the target, then absolute times and sizes.
#
#   sudo ci/bench/run.sh                 everything (about 35 minutes on 2 cores)
#   BENCH_PEERS=0 sudo ci/bench/run.sh   without virt-customize and mkosi (the size row
#                                        then compares with the shell baseline only)
#   BENCH_BOOT=0 sudo ci/bench/run.sh    without the two TCG boots
#
# Run it on a quiet machine: every row is wall-clock time. The setup (not timed) installs
# what the peers need, libguestfs and a kernel for its appliance included.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo ci/bench/run.sh)" >&2; exit 1; }
peers=${BENCH_PEERS:-1}
boots=${BENCH_BOOT:-1}
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
# Every layer above the base: the next build is cold.
drop_layers() { rm -rf "$MESOBAKE_CACHE_DIR"/layers/{provisioned,packed,packed-vmdk,configured}; }
# edit: one overlay file changes, as in an edit-rebuild loop.
edit() { date +%s.%N > "$out/overlay/etc/mesobake-bench"; }
# timed CMD...: runs CMD, prints its wall-clock seconds.
# A failing CMD fails the caller's assignment, so set -e stops the bench (command
# substitutions do not inherit set -e).
timed() { local t0 t1; t0=$(now); "$@" || return; t1=$(now); secs "$t0" "$t1"; }

echo "bench: warming the base cache (bootstrap, not timed)"
build master-slave "$out/warmup"
base=$(ls -t "$MESOBAKE_CACHE_DIR"/layers/base/*/disk.qcow2 | head -1)

# The overlay edit: a fresh overlay tree layered on the profile, one file in it.
mkdir -p "$out/overlay/etc"
edit
printf 'overlays = ["%s", "%s"]\n' "$PWD/overlays/common" "$out/overlay" > "$out/edit.toml"
all_formats=qcow2,ova,ec2,vmdk,vdi,vhdx,raw

echo "bench: mesobake cold, qcow2 only"
drop_layers
cold=$(timed build master-slave "$out/cold" --with "$out/edit.toml")
cold_mb=$(size_mb "$out/cold/master-slave.qcow2")
cold_export=$(stage_time "$out/cold.log" export)
cold_provision=$(stage_time "$out/cold.log" provision)

echo "bench: mesobake cold, every format ($all_formats)"
drop_layers
cold_all=$(timed build master-slave "$out/all" --with "$out/edit.toml" --format "$all_formats")

echo "bench: mesobake warm, one overlay file edited, each format alone"
declare -A warm_f
for f in ${all_formats//,/ }; do
  edit
  warm_f[$f]=$(timed build master-slave "$out/warm-$f" --with "$out/edit.toml" --format "$f")
done
edit
warm_all=$(timed build master-slave "$out/warm-all" --with "$out/edit.toml" --format "$all_formats")
same=$(timed build master-slave "$out/same" --with "$out/edit.toml" --format "$all_formats")

echo "bench: mesobake, all three roles from cold"
drop_layers
three=$(timed bash -c 'for r in master-slave master slave-only; do "$0" build "profiles/$r.toml" \
  --with "$1" --out "$2/three-$r" --timings >/dev/null 2>>"$2/three.log"; done' "$mb" "$off" "$out")

echo "bench: hand-written shell baseline"
shell=$(timed bash ci/bench/baseline.sh "$base" "$debs" "$out/baseline.qcow2")
shell_mb=$(size_mb "$out/baseline.qcow2")
smallest_mb=$shell_mb smallest=shell

if [ "$peers" = 1 ]; then
  echo "bench: virt-customize"
  vc=$(timed bash ci/bench/virt-customize.sh "$base" "$debs" "$out/vc.qcow2" 2> "$out/vc.log")
  vc_mb=$(size_mb "$out/vc.qcow2")
  vc_split=$(grep '^virt-customize:' "$out/vc.log" | tail -1)
  if [ "$(echo "$vc_mb < $smallest_mb" | bc)" = 1 ]; then smallest_mb=$vc_mb smallest=virt-customize; fi

  echo "bench: mkosi (cold, cold with its package cache, incremental)"
  # A peer that fails (mkosi fetches from the network inside its own sandbox) leaves its
  # rows marked "failed" instead of stopping the bench; its log says why.
  mk() { timed bash ci/bench/mkosi.sh "$1" "$debs" "$out/mkosi" 2>> "$out/mkosi.log" || echo failed; }
  export MKOSI_BENCH_STATE=$out/mkosi-state
  mk_cold=$(mk cold); mk_cached=$(mk cold-cached)
  mk_prep=$(mk incremental-prepare)
  mk_inc=$(mk incremental)
  mk_mb=failed
  if [ -f "$out/mkosi/mkosi.qcow2" ]; then mk_mb=$(size_mb "$out/mkosi/mkosi.qcow2"); fi
fi

echo "bench: export alone (the finished disk, converted by qemu-img)"
qemu-img convert -O raw "$out/cold/master-slave.qcow2" "$out/disk.raw"
st=$(timed qemu-img convert -c -o compression_type=zlib -O qcow2 "$out/disk.raw" "$out/st.qcow2")
zl=$(timed qemu-img convert -c -W -m 16 -o compression_type=zlib -O qcow2 "$out/disk.raw" "$out/zl.qcow2")
rm -f "$out/disk.raw" "$out/st.qcow2"

if [ "$boots" = 1 ]; then
  echo "bench: first boot under TCG (mesobake's image, then its base)"
  bash ci/bench/boot.sh "$out/cold/master-slave.qcow2" "$base" "$out/boot" > "$out/boot.log"
  boot_conf=$(awk '$2 == "image" { print $5 }' "$out/boot.log")
  boot_base=$(awk '$2 == "base" { print $4 }' "$out/boot.log")
fi

ratio() {
  case "$1$2" in *failed*) echo "-" ;; *) echo "scale=2; $1 / $2" | bc ;; esac
}
# verdict RATIO LIMIT: "met" when RATIO <= LIMIT.
verdict() { if [ "$(echo "$1 <= $2" | bc)" = 1 ]; then echo met; else echo MISSED; fi; }
# target NAME MEASURED REFERENCE_NAME REFERENCE LIMIT
target() {
  local r; r=$(ratio "$2" "$4")
  printf '%-44s %9.1f  %-34s %9.1f %6s  <= %-5s %s\n' "$1" "$2" "$3" "$4" "$r" "$5" "$(verdict "$r" "$5")"
}
# within NAME MEASURED LIMIT: an absolute target in seconds.
within() {
  printf '%-44s %9.1f  %-34s %9s %6s  <= %-5s %s\n' "$1" "$2" "wall clock" "-" "-" "$3 s" "$(verdict "$2" "$3")"
}
echo
echo "== issue 13 targets (seconds or MiB; ratio = measured / reference) =="
printf '%-44s %9s  %-34s %9s %6s  %-8s %s\n' target measured reference value ratio limit verdict
target "mesobake cold build (qcow2)" "$cold" "hand-written shell baseline" "$shell" 0.6
target "all three roles from cold" "$three" "one role from cold" "$cold" 1.1
target "cold qcow2 export (packs the layer)" "$cold_export" "qemu-img convert -c, one thread" "$st" 0.3
target "output size, MiB (master-slave.qcow2)" "$cold_mb" "smallest peer ($smallest)" "$smallest_mb" 0.92
for f in ${all_formats//,/ }; do
  within "warm rebuild after an overlay edit: $f" "${warm_f[$f]}" 10
done
target "cold build, every format" "$cold_all" "cold build, qcow2 only" "$cold" 1.5
if [ "$boots" = 1 ]; then
  target "TCG first boot to 'configured'" "$boot_conf" "the base's boot to cloud-init runcmd" "$boot_base" 0.8
fi

row() {
  case "$2" in
    failed) printf '%-50s %8s %7s  %s\n' "$1" failed - "see mkosi.log" ;;
    *) printf '%-50s %8.1f %7s  %s\n' "$1" "$2" "$3" "$4" ;;
  esac
}
echo
echo "== everything measured =="
printf '%-50s %8s %7s  %s\n' "case" "seconds" "ratio" "ratio of"
row "hand-written shell baseline (cold)" "$shell" 1.00 "reference"
row "mesobake cold, qcow2 (no provisioned layer)" "$cold" "$(ratio "$cold" "$shell")" "x shell"
row "  of which provision (apt)" "$cold_provision" "-" ""
row "  of which export (packs the provisioned layer)" "$cold_export" "-" ""
row "mesobake cold, every format" "$cold_all" "$(ratio "$cold_all" "$cold")" "x cold qcow2"
row "mesobake warm, every format in one build" "$warm_all" "-" ""
row "mesobake rebuild, nothing changed (every format)" "$same" "-" ""
row "mesobake all three roles from cold" "$three" "$(ratio "$three" "$cold")" "x cold qcow2"
if [ "$peers" = 1 ]; then
  row "mkosi cold (bootstrap, empty package cache)" "$mk_cold" "$(ratio "$mk_cold" "$shell")" "x shell"
  row "mkosi cold, package cache warm" "$mk_cached" "$(ratio "$mk_cached" "$shell")" "x shell"
  row "mkosi incremental, first (builds its cache)" "$mk_prep" "$(ratio "$mk_prep" "$shell")" "x shell"
  row "mkosi incremental (one file edited)" "$mk_inc" 1.00 "reference for warm"
  row "mesobake warm qcow2 (one overlay file edited)" "${warm_f[qcow2]}" "$(ratio "${warm_f[qcow2]}" "$mk_inc")" "x mkosi incremental"
  row "virt-customize (host download included)" "$vc" "$(ratio "$vc" "$shell")" "x shell  [$vc_split]"
fi
row "qemu-img convert -c zlib, one thread" "$st" 1.00 "reference for export"
row "qemu-img convert -c zlib -W -m 16" "$zl" "$(ratio "$zl" "$st")" "x one thread"
if [ "$boots" = 1 ]; then
  row "TCG boot: base to runcmd" "$boot_base" 1.00 "reference for boot"
  row "TCG boot: mesobake image to configured" "$boot_conf" "$(ratio "$boot_conf" "$boot_base")" "x base"
  row "TCG boot: mesobake image to runcmd" "$(awk '$2 == "image" { print $7 }' "$out/boot.log")" "-" ""
fi
printf '\n%-50s %8s\n' "output" "MiB"
printf '%-50s %8.1f\n' "mesobake master-slave.qcow2 (zstd)" "$cold_mb"
printf '%-50s %8.1f\n' "shell baseline (zlib)" "$shell_mb"
if [ "$peers" = 1 ]; then
  printf '%-50s %8.1f\n' "virt-customize (zlib)" "$vc_mb"
  printf '%-50s %8s\n' "mkosi, not bootable here (zlib)" "$mk_mb"
fi
printf '%-50s %8.1f\n' "the finished disk as zlib qcow2 (-W -m 16)" "$(size_mb "$out/zl.qcow2")"
for f in "$out"/all/master-slave.*; do
  printf '%-50s %8.1f\n' "every-format build: $(basename "$f")" "$(size_mb "$f")"
done
echo
echo "mesobake stage timings (cold qcow2; cold every format; warm every format):"
grep '^timing' "$out/cold.log" | tr '\n' ';'; echo
grep '^timing' "$out/all.log" | tr '\n' ';'; echo
grep '^timing' "$out/warm-all.log" | tr '\n' ';'; echo
if [ "$boots" = 1 ]; then
  echo
  echo "first boots (systemd-analyze, from the serial logs):"
  grep -v '^boot ' "$out/boot.log" | grep -E 'ANALYZE|CHAIN' || true
  grep -E '^image BENCH-BLAME' "$out/boot.log" | head -12 || true
fi
echo
echo "verification (every build checks each cached layer's content digest before use):"
bash ci/bench/verify-cost.sh "$MESOBAKE_CACHE_DIR"
