#!/bin/bash
# Build a tiny bootable guest for the VM backend's tests, from Debian packages only:
#
#   scripts/build-tiny-vm-image.sh DEST_DIR [ARCH]
#
# ARCH is a Debian architecture: amd64 (the default) or arm64. An amd64 guest is made of this
# (amd64) machine's busybox and dropbear; an arm64 one entirely of Debian's arm64 packages,
# downloaded and extracted (dpkg must know the arm64 architecture: scripts/ensure-services.sh
# adds it), for QEMU's emulated `-M virt` machine (qemu-system-aarch64).
#
# DEST_DIR/vmlinuz         Debian's kernel (linux-image-ARCH, extracted, not installed); for arm64
#                          the uncompressed Image that QEMU's -kernel boots
# DEST_DIR/initrd.img      busybox + dropbear (SSH server) + the kernel modules for QEMU's e1000
#                          NIC, virtio disks, ISO 9660 and ext2 (arm64: and virtio-scsi CD-ROMs,
#                          as the provisioner attaches ISOs on `virt`); its init brings up user-mode
#                          networking (10.0.2.15/24, gateway 10.0.2.2), reads the cloud-init
#                          NoCloud seed and starts SSH on port 22
# DEST_DIR/kernel          the kernel's package name (linux-image-VERSION)
# DEST_DIR/kernel.deb      that package, for tests that package the same kernel another way
#                          (tests/tests/kernel.rs: as a Fedora-style kernel RPM)
# DEST_DIR/id_ed25519      an SSH key for tests (.pub beside it); NOT in the guest: the guest
#                          accepts the keys of its seed's user-data, so without a seed no one
#                          can log in
#
# The init is a minimal NoCloud consumer, not cloud-init: from a disk labelled `cidata` it takes
# `hostname:` and the `ssh-...` keys of user-data, for root. With `taskbot.install=DISK` on the
# kernel command line it is an installer first: it writes a small system (an ext2 file system
# with busybox and /etc/taskbot-release naming `taskbot.item=`) to DISK, then starts SSH the
# same way, so a test can inspect what was installed.
#
# With `taskbot.persist=DISK` on the kernel command line, /var/tmp and the SSH host key live on
# DISK (an ext2 file system made at the first boot), so both survive a reboot as on a real
# machine: the tests of the runner's reboot step use it. Without it everything is in memory.
#
# Booted with QEMU's direct kernel boot (-kernel/-initrd), no disk image needed; disks given to
# the VM appear as /dev/vda, /dev/vdb, ... Safe to run again: it does nothing when DEST_DIR is
# complete for this kernel and this script (delete DEST_DIR to rebuild).
set -euo pipefail

dest=${1:?"usage: $0 DEST_DIR [amd64|arm64]"}
arch=${2:-amd64}
case "$arch" in
  amd64) ;;
  arm64) triplet=aarch64-linux-gnu ;;
  *) echo "$0: ARCH is amd64 or arm64, not $arch" >&2; exit 2 ;;
esac
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
need() { # package command
  command -v "$2" >/dev/null 2>&1 || $SUDO apt-get install -y --no-install-recommends "$1" >/dev/null
}
need busybox-static busybox
need dropbear-bin dropbear
need openssh-client ssh-keygen
need cpio cpio
need kmod depmod
need binutils readelf

# The kernel package the linux-image-ARCH metapackage points at today (for arm64, named
# `linux-image-VERSION-arm64:arm64`).
if [ "$arch" = amd64 ]; then
  kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
else
  { dpkg --print-architecture; dpkg --print-foreign-architectures; } | grep -qx "$arch" ||
    { echo "dpkg does not know the $arch architecture: run scripts/ensure-services.sh" >&2; exit 1; }
  kernel_pkg=$(apt-cache depends "linux-image-$arch:$arch" | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
[ -n "$kernel_pkg" ] || { echo "cannot find Debian's kernel package (apt-get update?)" >&2; exit 1; }
# One build at a time (tests run in parallel and each asks for the image): the others wait,
# then find it up to date.
exec 9>"$dest/.lock"
flock 9
# Rebuilt when the kernel package or this script changes.
stamp="$kernel_pkg $(sha256sum "$0" | cut -c1-16)"
if [ -f "$dest/initrd.img" ] && [ -f "$dest/vmlinuz" ] && [ "$(cat "$dest/stamp" 2>/dev/null)" = "$stamp" ]; then
  log "$dest is up to date ($kernel_pkg)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "fetching $kernel_pkg"
(cd "$work" && apt-get download "$kernel_pkg" >/dev/null 2>&1)
dpkg-deb -x "$work"/"${kernel_pkg%:*}"_*.deb "$work/kernel"
cp "$work"/"${kernel_pkg%:*}"_*.deb "$dest/kernel.deb"
version=$(ls "$work/kernel/lib/modules")
cp "$work/kernel/boot/vmlinuz-$version" "$dest/vmlinuz"
# QEMU boots an arm64 kernel only as an uncompressed Image; Debian's may be gzip'd.
if [ "$arch" = arm64 ] && [ "$(head -c 2 "$dest/vmlinuz" | od -An -tx1 | tr -d ' ')" = 1f8b ]; then
  gunzip -c "$work/kernel/boot/vmlinuz-$version" >"$dest/vmlinuz"
fi

# A foreign arch's busybox and dropbear, from Debian's packages of that arch, with the libraries
# dropbear links: ldd cannot run a foreign binary, so its NEEDED entries (and theirs) are
# resolved with readelf against the extracted packages dropbear-bin depends on (recursively), and its program interpreter (the dynamic loader) copied where it asks for it.
add_foreign_programs() {
  local sysroot="$work/sysroot" debs deb
  # dropbear-bin and what it depends on, recursively (libtomcrypt1 needs libgmp10, ...).
  debs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances "dropbear-bin:$arch" | grep "^[a-z0-9].*:$arch\$" | sort -u)
  log "fetching busybox-static, dropbear-bin and its libraries for $arch"
  # shellcheck disable=SC2086 # one package name per word
  (cd "$work" && apt-get download "busybox-static:$arch" $debs >/dev/null 2>&1)
  for deb in "$work"/*_"$arch".deb; do
    case "$deb" in */linux-image-*) continue ;; esac
    dpkg-deb -x "$deb" "$sysroot"
  done
  cp "$sysroot/bin/busybox" "$root/bin/busybox"
  cp "$sysroot/usr/sbin/dropbear" "$root/sbin/dropbear"
  local interp
  interp=$(readelf -l "$sysroot/usr/sbin/dropbear" | sed -n 's/.*program interpreter: \(.*\)]$/\1/p')
  mkdir -p "$root$(dirname "$interp")"
  cp -L "$sysroot$interp" "$root$interp"
  local -A copied=()
  local pending=("$sysroot/usr/sbin/dropbear") file name dir found
  while [ ${#pending[@]} -gt 0 ]; do
    file=${pending[0]}
    pending=("${pending[@]:1}")
    for name in $(readelf -d "$file" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
      [ -n "${copied[$name]:-}" ] && continue
      copied[$name]=1
      found=""
      for dir in "/lib/$triplet" "/usr/lib/$triplet"; do
        [ -e "$sysroot$dir/$name" ] || continue
        mkdir -p "$root$dir"
        cp -L "$sysroot$dir/$name" "$root$dir/$name"
        pending+=("$sysroot$dir/$name")
        found=1
        break
      done
      [ -n "$found" ] || { echo "no $arch library $name for dropbear" >&2; exit 1; }
    done
  done
}

log "building the initramfs"
root="$work/initramfs"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,root/.ssh,lib/modules,var/log,etc/dropbear}
if [ "$arch" = amd64 ]; then
  cp /bin/busybox "$root/bin/busybox"
  # dropbear and the libraries it links (with the dynamic loader).
  cp /usr/sbin/dropbear "$root/sbin/dropbear"
  for lib in $(ldd /usr/sbin/dropbear | awk '/=>/{print $3} /ld-linux/{print $1}'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
else
  add_foreign_programs
fi
# Modules, with what they depend on (modules.dep) before them: the e1000 NIC (a PCI card, on
# the PC as on aarch64's virt), virtio disks, ISO 9660 (the seed) and ext4 (which mounts ext2:
# the installed system).
moddir="$work/kernel/lib/modules/$version"
depmod -b "$work/kernel" "$version" 2>/dev/null || true
declare -A added=()
add_module() { # path relative to $moddir
  local m=$1 dep
  [ -n "${added[$m]:-}" ] && return
  added[$m]=1
  for dep in $(awk -v m="$m:" '$1 == m {for (i = NF; i > 1; i--) print $i}' "$moddir/modules.dep"); do
    add_module "$dep"
  done
  if [ -f "$moddir/$m" ]; then
    cp "$moddir/$m" "$root/lib/modules/"
    basename "$m" >>"$root/lib/modules/order"
  fi
}
modules=(
  kernel/drivers/net/ethernet/intel/e1000/e1000.ko
  kernel/drivers/virtio/virtio_pci.ko
  kernel/drivers/block/virtio_blk.ko
  kernel/crypto/crc32c_generic.ko
  kernel/fs/isofs/isofs.ko
  kernel/fs/ext4/ext4.ko
)
# QEMU's virt machine has no IDE: the provisioner attaches an ISO there as a SCSI CD-ROM on a
# virtio-scsi controller.
[ "$arch" = amd64 ] || modules+=(kernel/drivers/scsi/virtio_scsi.ko kernel/drivers/scsi/sr_mod.ko)
for m in "${modules[@]}"; do
  add_module "$m"
done

# Root (its keys come from the seed at boot); a key for tests. No host key: dropbear makes one
# at boot (-R), so every VM has its own and a runner pinning it cannot reach another VM.
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf '/bin/sh\n' >"$root/etc/shells"
printf 'NAME="Taskbot tiny guest"\nID=tiny\nVERSION_ID=1\n' >"$root/etc/os-release"
chmod 700 "$root/root/.ssh"
[ -f "$dest/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C taskbot-tiny-vm -f "$dest/id_ed25519"

cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
# The image's own kernel loads the modules copied here; a job's own kernel (the provisioner's
# kernel_from_item) comes with its modules in /lib/modules/<its release>/, appended to this
# initramfs with their modules.dep: the same drivers are loaded from there, by name.
kver=$(uname -r)
for m in $(cat /lib/modules/order); do
  if [ -f "/lib/modules/$kver/modules.dep" ]; then
    name=${m%.ko}
    grep -q "/$name.ko" "/lib/modules/$kver/modules.builtin" 2>/dev/null ||
      modprobe "$name" || echo "taskbot-vm: modprobe $name failed" >/dev/console
  else
    insmod /lib/modules/$m || echo "taskbot-vm: insmod $m failed" >/dev/console
  fi
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
hostname taskbot-vm
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tail -n 1; }

# A persistent /var/tmp (and host key) on the disk taskbot.persist names.
persist=$(arg taskbot.persist)
if [ -n "$persist" ]; then
  mkdir -p /var/tmp
  if mount -t ext2 "$persist" /var/tmp 2>/dev/null ||
    { mke2fs -q -L taskbot-var "$persist" && mount -t ext2 "$persist" /var/tmp; }; then
    mkdir -p /var/tmp/.taskbot-vm-hostkeys
    mount -o bind /var/tmp/.taskbot-vm-hostkeys /etc/dropbear
    echo "taskbot-vm: /var/tmp on $persist, boot $(cat /proc/sys/kernel/random/boot_id)" >/dev/console
  else
    echo "taskbot-vm: cannot keep /var/tmp on $persist" >/dev/console
  fi
fi

# The NoCloud seed: a disk labelled cidata (ISO 9660) with meta-data and user-data.
mkdir -p /run/seed
for dev in /dev/vd? /dev/sr0; do
  [ -b "$dev" ] || continue
  if mount -t iso9660 -o ro "$dev" /run/seed 2>/dev/null; then
    if [ -f /run/seed/user-data ]; then
      echo "taskbot-vm: cloud-init seed on $dev" >/dev/console
      name=$(sed -n 's/^hostname: *//p' /run/seed/user-data | head -n 1)
      [ -n "$name" ] && hostname "$name"
      grep -o 'ssh-[a-z0-9-]* [A-Za-z0-9+/=]*[^"]*' /run/seed/user-data >/root/.ssh/authorized_keys
      chmod 600 /root/.ssh/authorized_keys
      umount /run/seed
      break
    fi
    umount /run/seed
  fi
done

# Installer mode: write a small system to the target disk.
target=$(arg taskbot.install)
if [ -n "$target" ]; then
  echo "taskbot-vm: installing to $target" >/dev/console
  mkdir -p /run/target
  if mke2fs -q -L taskbot-root "$target" && mount -t ext2 "$target" /run/target; then
    mkdir -p /run/target/bin /run/target/etc /run/target/root
    cp /bin/busybox /run/target/bin/busybox
    cp /etc/passwd /etc/group /etc/os-release /run/target/etc/
    printf 'item=%s\ninstalled_by=%s\n' "$(arg taskbot.item)" "$(uname -r)" >/run/target/etc/taskbot-release
    umount /run/target && sync
    echo "taskbot-vm: installed" >/dev/console
  else
    echo "taskbot-vm: installation failed" >/dev/console
  fi
fi
echo "taskbot-vm: network up, starting SSH" >/dev/console
/sbin/dropbear -R -E -s -p 22
echo "taskbot-vm: ready" >/dev/console
while true; do sleep 3600; done
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/initrd.img")
mv "$work/initrd.img" "$dest/initrd.img"
echo "${kernel_pkg%:*}" >"$dest/kernel"
echo "$stamp" >"$dest/stamp"
log "built $dest (kernel $version, initramfs $(du -h "$dest/initrd.img" | cut -f1))"
