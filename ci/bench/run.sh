#!/usr/bin/env bash
# Benchmark: mesobake against the hand-written way, on this machine, in one run, from the
# same cached base with the same packages (stand-in Mesos debs + Debian's zookeeperd and
# docker.io). Prints absolute times, ratios against the references, and output sizes.
#
#   sudo ci/bench/run.sh
#
# virt-customize and mkosi are not run: both would need their guest or build root to
# fetch packages from the archive through their own network paths, and mkosi 14 cannot
# make a bootable image on these machines (no vfat to mount the ESP). See the issue note.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo ci/bench/run.sh)" >&2; exit 1; }
bash ci/setup-host.sh >/dev/null
cargo build --release -q
bash ci/standins/build.sh ci/standins/out >/dev/null
export MESOBAKE_CACHE_DIR=${MESOBAKE_CACHE_DIR:-$PWD/target/bench-cache}
mb=target/release/mesobake
off=profiles/include/offline-standins.toml
out=$(mktemp -d /var/tmp/mesobake-bench.XXXXXX)
trap 'rm -rf "$out"' EXIT

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
size_mb() { echo $(( $(stat -c %s "$1") / 1048576 )); }
build() { "$mb" build "profiles/$1.toml" --with "$off" ${2:+--with "$2"} --out "$3" >/dev/null; }
drop_layers() { rm -rf "$MESOBAKE_CACHE_DIR/layers/provisioned"; }

echo "bench: warming the base cache (bootstrap, not timed)"
build master-slave "" "$out/warmup"
base=$(ls -t "$MESOBAKE_CACHE_DIR"/layers/base/*/disk.qcow2 | head -1)

drop_layers
t0=$(now); build master-slave "" "$out/cold"; t1=$(now)
cold=$(secs "$t0" "$t1"); cold_mb=$(size_mb "$out/cold/master-slave.qcow2")

# Warm: one overlay file edited (a fresh overlay tree layered on the profile).
mkdir -p "$out/overlay/etc"
date +%s.%N > "$out/overlay/etc/mesobake-bench"
printf 'overlays = ["%s", "%s"]\n' "$PWD/overlays/common" "$out/overlay" > "$out/edit.toml"
t0=$(now); build master-slave "$out/edit.toml" "$out/warm"; t1=$(now)
warm=$(secs "$t0" "$t1")
date +%s.%N > "$out/overlay/etc/mesobake-bench"
t0=$(now)
"$mb" build profiles/master-slave.toml --with "$off" --with "$out/edit.toml" --compression zstd --out "$out/warmz" >/dev/null
t1=$(now); warmz=$(secs "$t0" "$t1")

drop_layers
t0=$(now)
for r in master-slave master slave-only; do build "$r" "" "$out/three"; done
t1=$(now); three=$(secs "$t0" "$t1")

t0=$(now); bash ci/bench/baseline.sh "$base" ci/standins/out "$out/baseline.qcow2"; t1=$(now)
shell=$(secs "$t0" "$t1"); shell_mb=$(size_mb "$out/baseline.qcow2")

# Export alone: the same finished disk, single-threaded zlib vs what mesobake runs.
qemu-img convert -O raw "$out/cold/master-slave.qcow2" "$out/disk.raw"
t0=$(now); qemu-img convert -c -O qcow2 "$out/disk.raw" "$out/st.qcow2"; t1=$(now); st=$(secs "$t0" "$t1")
t0=$(now); qemu-img convert -c -W -m 16 -O qcow2 "$out/disk.raw" "$out/mt.qcow2"; t1=$(now); mt=$(secs "$t0" "$t1")
t0=$(now); qemu-img convert -c -W -m 16 -o compression_type=zstd -O qcow2 "$out/disk.raw" "$out/zstd.qcow2"; t1=$(now); zs=$(secs "$t0" "$t1")

ratio() { echo "scale=2; $1 / $2" | bc; }
printf '\n%-44s %9s %9s  %s\n' "case" "seconds" "ratio" "reference / target"
printf '%-44s %9.1f %9s  %s\n' "hand-written shell baseline (cold)" "$shell" "1.00" "reference"
printf '%-44s %9.1f %9s  %s\n' "mesobake cold (no provisioned layer)" "$cold" "$(ratio "$cold" "$shell")" "x shell; target <= 1.0"
printf '%-44s %9.1f %9s  %s\n' "mesobake warm (one overlay file edited)" "$warm" "$(ratio "$warm" "$cold")" "x mesobake cold; target <= 15 s"
printf '%-44s %9.1f %9s  %s\n' "mesobake warm, --compression zstd" "$warmz" "$(ratio "$warmz" "$cold")" "x mesobake cold; target <= 15 s"
printf '%-44s %9.1f %9s  %s\n' "mesobake all three roles from cold" "$three" "$(ratio "$three" "$cold")" "x one role cold; target <= 1.3"
printf '%-44s %9.1f %9s  %s\n' "qemu-img convert -c (single thread, zlib)" "$st" "1.00" "reference"
printf '%-44s %9.1f %9s  %s\n' "mesobake export (zlib, -W -m 16)" "$mt" "$(ratio "$mt" "$st")" "x single thread; target <= 0.6"
printf '%-44s %9.1f %9s  %s\n' "qemu-img convert -c zstd (-W -m 16)" "$zs" "$(ratio "$zs" "$st")" "x single thread (consumers need QEMU >= 5.1)"
printf '\n%-44s %9s\n' "output" "MiB"
printf '%-44s %9d\n' "mesobake master-slave.qcow2 (zlib)" "$cold_mb"
printf '%-44s %9d\n' "shell baseline qcow2 (zlib)" "$shell_mb"
printf '%-44s %9d\n' "zstd qcow2 of the same disk" "$(size_mb "$out/zstd.qcow2")"
