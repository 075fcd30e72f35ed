#!/usr/bin/env bash
# First boot under TCG: mesobake's image to its configured line, against the base it was
# built from to cloud-init's runcmd. Both disks boot with the same QEMU command line
# (what `mesobake verify` uses: TCG, 1 vCPU, 1536 MiB, virtio disk as a snapshot, the
# seed as a second virtio disk, user networking restricted to the host) and the same
# NoCloud seed, whose runcmd prints a marker and systemd-analyze's view of the boot to
# the console. mesobake's image needs no user-data (master-slave is a one-node cluster
# as shipped), so the seed is all the boot gets.
#
#   boot.sh IMAGE.qcow2 BASE.qcow2 WORKDIR
#
# Prints: "boot IMAGE configured S runcmd S" and "boot BASE runcmd S", then each boot's
# systemd-analyze lines (from the serial logs, kept in WORKDIR).
set -euo pipefail
image=$1 base=$2 work=$3
timeout=${BOOT_TIMEOUT:-900}
mkdir -p "$work/seed"
cat > "$work/seed/meta-data" <<'EOF'
instance-id: bench-boot
EOF
# The marker goes out first. systemd-analyze answers only once the boot is over, which
# is after runcmd (cloud-final is part of the boot), so a transient unit waits for that
# and then prints what the boot spent its time on.
cat > "$work/seed/user-data" <<'EOF'
#cloud-config
write_files:
  - path: /run/bench-analyze.sh
    permissions: '0755'
    content: |
      #!/bin/sh
      # Units still starting after 5 minutes are listed instead of waited for.
      if ! timeout 300 systemctl is-system-running --wait >/dev/null 2>&1; then
        systemctl list-jobs --no-pager 2>&1 | sed 's/^/BENCH-JOBS /' > /dev/console
      fi
      {
        systemd-analyze time 2>&1 | sed 's/^/BENCH-ANALYZE /'
        systemd-analyze critical-chain --no-pager 2>&1 | sed 's/^/BENCH-CHAIN /'
        systemd-analyze critical-chain --no-pager mesobake-configure.service 2>&1 | sed 's/^/BENCH-CONF /'
        systemd-analyze blame --no-pager 2>&1 | head -25 | sed 's/^/BENCH-BLAME /'
        echo BENCH-DONE
      } > /dev/console
runcmd:
  - echo "BENCH-RUNCMD $(cut -d' ' -f1 /proc/uptime)" > /dev/console
  - systemd-run --no-block --unit=bench-analyze /bin/sh /run/bench-analyze.sh
EOF
genisoimage -quiet -output "$work/seed.iso" -volid cidata -joliet -rock \
  "$work/seed/user-data" "$work/seed/meta-data"

# boot NAME DISK PATTERN...: boots DISK, prints the seconds from QEMU's start to the first
# serial line matching each PATTERN, waits for BENCH-DONE, and stops QEMU.
boot() {
  local name=$1 disk=$2; shift 2
  local log=$work/$name.serial.log pid t0 now
  : > "$log"
  t0=$(date +%s.%N)
  qemu-system-x86_64 -accel tcg -cpu max -m 1536 -smp 1 -display none -monitor none \
    -no-reboot -serial "file:$log" \
    -drive "file=$disk,if=virtio,format=qcow2,snapshot=on" \
    -drive "file=$work/seed.iso,if=virtio,format=raw,readonly=on" \
    -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0 \
    </dev/null >/dev/null 2>"$work/$name.qemu.log" &
  pid=$!
  declare -A seen=()
  while :; do
    now=$(date +%s.%N)
    for p in "$@"; do
      if [ -z "${seen[$p]:-}" ] && grep -q -- "$p" "$log"; then
        seen[$p]=$(echo "$now - $t0" | bc)
      fi
    done
    grep -q BENCH-DONE "$log" && break
    kill -0 "$pid" 2>/dev/null || { echo "boot.sh: QEMU for $name exited early" >&2; break; }
    if [ "$(echo "$now - $t0 > $timeout" | bc)" = 1 ]; then
      echo "boot.sh: $name did not finish booting in $timeout s" >&2
      break
    fi
    sleep 0.5
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  printf 'boot %s' "$name"
  for p in "$@"; do printf ' %s %s' "$p" "${seen[$p]:-none}"; done
  echo
}

boot image "$image" "mesobake: configured" BENCH-RUNCMD
boot base "$base" BENCH-RUNCMD
for n in image base; do
  grep -a -E '^BENCH-(JOBS|ANALYZE|CHAIN|CONF|BLAME)' "$work/$n.serial.log" | sed "s/^/$n /" || true
done
