#!/bin/sh
# The kernel test suite, run inside a VM that booted the item's kernel. POSIX sh and the tools
# of busybox (the tiny test guest has nothing else), so it runs on any image. One result per
# check, all in one results file: a failing check does not hide the others.
set -u

art=$TASKBOT_ARTIFACTS
scratch=/tmp/kernel-tests
mkdir -p "$scratch"
results=""
check() { # name outcome note
  results="$results
  - item: $TASKBOT_ITEM
    type: $TASKBOT_ITEM_TYPE
    checkname: dist.kernel-tests.$1
    outcome: $2
    note: '$(printf '%s' "$3" | tr '\n' ' ' | sed "s/'/''/g")'"
  echo "$1: $2: $3"
}

running=$(uname -r)
modules_dir=/lib/modules/$running

check_boot() {
  check boot PASSED "$running booted and answered SSH; up $(cut -d' ' -f1 /proc/uptime)s"
}

# Fedora names a kernel's release after its build: version-release.arch (6.11.5-300.fc41.x86_64,
# +debug for debug kernels). Kernels named another way (Debian's 6.1.0-57-amd64 under the NVR
# kernel-6.1.0-57, as in the tests) must still start with the item's version-release and a `-`.
check_uname() {
  nvr=$TASKBOT_ITEM
  release=${nvr##*-}
  rest=${nvr%-*}
  vr="${rest##*-}-$release"
  fedora="$vr.$TASKBOT_ARCH"
  case "$running" in
    "$fedora" | "$fedora+"*) check uname PASSED "running $running, the kernel of $nvr" ;;
    "$vr-"*) check uname PASSED "running $running, the kernel of $nvr (its flavour suffix ${running#"$vr"}; Fedora would name it $fedora)" ;;
    *) check uname FAILED "running $running, not the kernel of $nvr (expected $fedora)" ;;
  esac
}

check_dmesg() {
  if ! dmesg >"${art}dmesg.txt" 2>&1; then
    check dmesg FAILED "cannot read the kernel log: $(head -n 1 "${art}dmesg.txt")"
    return
  fi
  pattern='Oops|BUG:|kernel BUG|WARNING:|Kernel panic|general protection fault|Call Trace:|UBSAN:|KASAN:|soft lockup|hung_task'
  found=$(grep -E "$pattern" "${art}dmesg.txt")
  if [ -n "$found" ]; then
    check dmesg FAILED "$(echo "$found" | wc -l) alarming lines in the boot log, first: $(echo "$found" | head -n 3)"
  else
    check dmesg PASSED "$(wc -l <"${art}dmesg.txt") lines, no oops, BUG, WARNING or panic"
  fi
}

# A module of the item loads: the first of some harmless ones the kernel has as a module and has
# not loaded yet is loaded with modprobe (resolving its dependencies from the item's modules.dep)
# and must then be in /sys/module; it is removed again.
check_modules() {
  if [ ! -f "$modules_dir/modules.dep" ]; then
    check modules FAILED "no $modules_dir/modules.dep: the item's modules are not there"
    return
  fi
  at_boot=$(wc -l </proc/modules)
  for name in dummy loop vfat fat isofs udf crc_itu_t; do
    grep -qE "/$name\.ko(\.xz|\.zst|\.gz)?:" "$modules_dir/modules.dep" || continue
    [ -d "/sys/module/$name" ] && continue
    if ! out=$(modprobe "$name" 2>&1); then
      check modules FAILED "modprobe $name failed: $out"
    elif [ ! -d "/sys/module/$name" ]; then
      check modules FAILED "modprobe $name succeeded but /sys/module/$name is missing"
    else
      file=$(grep -oE "[^ ]*/$name\.ko[^:]*:" "$modules_dir/modules.dep" | tr -d :)
      modprobe -r "$name" 2>/dev/null
      check modules PASSED "$at_boot modules were loaded; modprobe $name loaded $file from $modules_dir"
    fi
    return
  done
  if [ "$at_boot" -gt 0 ]; then
    check modules PASSED "$at_boot modules loaded from $modules_dir (no other to try)"
  else
    check modules FAILED "no module is loaded and none of dummy, loop, vfat, isofs, udf could be tried"
  fi
}

# Write a file and read it back on a tmpfs, then on an ext4 file system (made with mkfs.ext4, or
# busybox's mke2fs, whose ext2 the ext4 driver mounts) in a file on a loop device.
check_filesystems() {
  mkdir -p "$scratch/tmpfs" "$scratch/ext4"
  seq 1 20000 >"$scratch/data"
  want=$(md5sum <"$scratch/data")
  if ! out=$(mount -t tmpfs -o size=8m tmpfs "$scratch/tmpfs" 2>&1); then
    check filesystems FAILED "mount -t tmpfs failed: $out"
    return
  fi
  cp "$scratch/data" "$scratch/tmpfs/data" && sync
  got=$(md5sum <"$scratch/tmpfs/data")
  umount "$scratch/tmpfs"
  if [ "$got" != "$want" ]; then
    check filesystems FAILED "a file written to tmpfs read back different"
    return
  fi
  grep -q "^loop " /proc/modules || modprobe loop 2>/dev/null
  mkfs=$(command -v mkfs.ext4 || command -v mke2fs)
  if [ -z "$mkfs" ]; then
    check filesystems PASSED "tmpfs: written and read back; ext4 skipped: no mkfs.ext4 or mke2fs"
    return
  fi
  dd if=/dev/zero of="$scratch/ext4.img" bs=1M count=16 2>/dev/null
  loop=$(losetup -f 2>/dev/null)
  if [ -z "$loop" ] || ! out=$(losetup "$loop" "$scratch/ext4.img" 2>&1); then
    check filesystems FAILED "tmpfs: written and read back; no loop device for ext4: ${out:-losetup -f found none}"
  elif ! out=$("$mkfs" -q "$loop" 2>&1); then
    check filesystems FAILED "$mkfs $loop failed: $out"
  elif ! out=$(mount -t ext4 "$loop" "$scratch/ext4" 2>&1); then
    check filesystems FAILED "mount -t ext4 $loop failed: $out"
  else
    cp "$scratch/data" "$scratch/ext4/data" && sync
    umount "$scratch/ext4" && mount -t ext4 -o ro "$loop" "$scratch/ext4"
    got=$(md5sum <"$scratch/ext4/data")
    umount "$scratch/ext4"
    if [ "$got" = "$want" ]; then
      check filesystems PASSED "tmpfs and ext4 (made by $(basename "$mkfs") on $loop): a file written, remounted and read back"
    else
      check filesystems FAILED "a file written to ext4 read back different after a remount"
    fi
  fi
  [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null
  rm -f "$scratch/ext4.img"
}

# Loopback answers, the default route exists and its gateway answers (ping, else ARP).
check_network() {
  if ! ping -c 1 -W 2 127.0.0.1 >/dev/null 2>&1; then
    check network FAILED "loopback: 127.0.0.1 does not answer ping ($(ip link show lo | head -n 1))"
    return
  fi
  gateway=$(ip route | awk '$1 == "default" {print $3; exit}')
  if [ -z "$gateway" ]; then
    check network FAILED "loopback answers; no default route: $(ip route | tr '\n' ';')"
  elif ping -c 1 -W 3 "$gateway" >/dev/null 2>&1; then
    check network PASSED "loopback answers; default route via $gateway, which answers ping"
  elif ip neigh show "$gateway" | grep -q lladdr; then
    check network PASSED "loopback answers; default route via $gateway, which answers ARP ($(ip neigh show "$gateway"))"
  else
    check network FAILED "loopback answers; the default gateway $gateway does not answer ($(ip neigh show "$gateway"))"
  fi
}

mem_kb() { # field of /proc/meminfo
  awk -v f="$1:" '$1 == f {print $2}' /proc/meminfo
}

# Allocate a quarter of the available memory (at most 32 MiB) as a tmpfs file, touching every
# page, check the kernel accounts for it (tmpfs pages are counted in Shmem, exactly; MemAvailable
# is an estimate that moves with the page cache), read it back, and check it is freed.
check_memory() {
  before=$(mem_kb MemAvailable)
  mb=$((before / 4096))
  [ "$mb" -gt 32 ] && mb=32
  if [ "$mb" -lt 4 ]; then
    check memory FAILED "only ${before} kB available"
    return
  fi
  shmem_before=$(mem_kb Shmem)
  mkdir -p "$scratch/mem"
  mount -t tmpfs -o size=$((mb + 4))m tmpfs "$scratch/mem"
  dd if=/dev/zero of="$scratch/mem/fill" bs=1M count="$mb" 2>/dev/null
  shmem_held=$(mem_kb Shmem)
  want=$(dd if=/dev/zero bs=1M count="$mb" 2>/dev/null | md5sum)
  got=$(md5sum <"$scratch/mem/fill")
  umount "$scratch/mem"
  shmem_after=$(mem_kb Shmem)
  held=$(((shmem_held - shmem_before) / 1024))
  kept=$(((shmem_after - shmem_before) / 1024))
  if [ "$got" != "$want" ]; then
    check memory FAILED "$mb MiB written to memory read back different"
  elif [ "$held" -lt $((mb * 9 / 10)) ]; then
    check memory FAILED "$mb MiB written to tmpfs, but the kernel accounts only $held MiB more shared memory"
  elif [ "$kept" -gt $((mb / 2)) ]; then
    check memory FAILED "$mb MiB allocated and freed, but $kept MiB stayed in use"
  else
    check memory PASSED "$mb MiB allocated, touched and read back (Shmem $((shmem_before / 1024)) -> $((shmem_held / 1024)) -> $((shmem_after / 1024)) MiB)"
  fi
}

# Fork many short processes at once, and run CPU-bound workers in parallel: every one must run
# to its end and exit 0.
check_processes() {
  rm -rf "$scratch/forks" && mkdir -p "$scratch/forks"
  i=0
  while [ $i -lt 200 ]; do
    (: >"$scratch/forks/$i") &
    i=$((i + 1))
  done
  wait
  forked=$(ls "$scratch/forks" | wc -l)
  start=$(cut -d' ' -f1 /proc/uptime)
  i=0
  pids=""
  while [ $i -lt 4 ]; do
    (n=0; while [ $n -lt 3000 ]; do n=$((n + 1)); done; [ $n -eq 3000 ]) &
    pids="$pids $!"
    i=$((i + 1))
  done
  ok=0
  for pid in $pids; do wait "$pid" && ok=$((ok + 1)); done
  took=$(awk -v a="$start" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN {printf "%.1f", b - a}')
  if [ "$forked" -ne 200 ]; then
    check processes FAILED "$forked of 200 forked processes ran"
  elif [ "$ok" -ne 4 ]; then
    check processes FAILED "$ok of 4 parallel workers exited 0"
  else
    check processes PASSED "200 forked processes ran and exited; 4 parallel CPU workers all finished in ${took}s"
  fi
}

# What the kernel shows of itself in /proc and /sys agrees with what it is.
check_sysfs_procfs() {
  problems=""
  [ "$(cat /proc/sys/kernel/osrelease)" = "$running" ] || problems="$problems; /proc/sys/kernel/osrelease is not $running"
  [ "$(awk '/^Pid:/ {print $2}' /proc/$$/status)" = "$$" ] || problems="$problems; /proc/$$/status has another Pid"
  grep -q '^MemTotal: *[1-9]' /proc/meminfo || problems="$problems; /proc/meminfo has no MemTotal"
  grep -q '^processor' /proc/cpuinfo || problems="$problems; /proc/cpuinfo lists no processor"
  grep -q ' /sys sysfs ' /proc/mounts || problems="$problems; /proc/mounts has no sysfs on /sys"
  [ -n "$(cat /sys/devices/system/cpu/online 2>/dev/null)" ] || problems="$problems; /sys/devices/system/cpu/online is empty"
  [ -e /sys/class/net/lo ] || problems="$problems; /sys/class/net/lo is missing"
  [ -n "$(ls /sys/block 2>/dev/null)" ] || problems="$problems; /sys/block is empty"
  if [ -n "$problems" ]; then
    check sysfs-procfs FAILED "${problems#; }"
  else
    check sysfs-procfs PASSED "osrelease, /proc/<pid>/status, meminfo, cpuinfo, mounts; cpus online $(cat /sys/devices/system/cpu/online), block devices: $(ls /sys/block | tr '\n' ' ')"
  fi
}

uname -a >"${art}uname.txt"
cat /proc/cmdline >"${art}cmdline.txt"
for c in boot uname dmesg modules filesystems network memory processes sysfs_procfs; do
  started=$(cut -d' ' -f1 /proc/uptime)
  "check_$c"
  echo "($c took $(awk -v a="$started" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN {printf "%.1f", b - a}')s)"
done
printf 'results:%s\n' "$results" >"$TASKBOT_RESULTS"
