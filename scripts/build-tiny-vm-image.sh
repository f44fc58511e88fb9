#!/bin/bash
# Build a tiny bootable guest for the VM backend's tests, from Debian packages only:
#
#   scripts/build-tiny-vm-image.sh DEST_DIR
#
# DEST_DIR/vmlinuz         Debian's kernel (linux-image-amd64, extracted, not installed)
# DEST_DIR/initrd.img      busybox + dropbear (SSH server) + the kernel modules for QEMU's e1000
#                          NIC and virtio disks; its init brings up user-mode networking
#                          (10.0.2.15/24, gateway 10.0.2.2) and starts SSH on port 22
# DEST_DIR/id_ed25519      the SSH key (root) the guest accepts; .pub beside it
#
# Booted with QEMU's direct kernel boot (-kernel/-initrd), no disk image needed; disks given to
# the VM appear as /dev/vda, /dev/vdb, ... Safe to run again: it does nothing when DEST_DIR is
# complete for this kernel (delete DEST_DIR to rebuild).
set -euo pipefail

dest=${1:?"usage: $0 DEST_DIR"}
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

# The kernel package the linux-image-amd64 metapackage points at today.
kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kernel_pkg" ] || { echo "cannot find Debian's kernel package (apt-get update?)" >&2; exit 1; }
if [ -f "$dest/initrd.img" ] && [ -f "$dest/vmlinuz" ] && [ "$(cat "$dest/kernel" 2>/dev/null)" = "$kernel_pkg" ]; then
  log "$dest is up to date ($kernel_pkg)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "fetching $kernel_pkg"
(cd "$work" && apt-get download "$kernel_pkg" >/dev/null 2>&1)
dpkg-deb -x "$work"/"$kernel_pkg"_*.deb "$work/kernel"
version=$(ls "$work/kernel/lib/modules")
cp "$work/kernel/boot/vmlinuz-$version" "$dest/vmlinuz"

log "building the initramfs"
root="$work/initramfs"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,root/.ssh,lib/modules,var/log,etc/dropbear}
cp /bin/busybox "$root/bin/busybox"
# dropbear and the libraries it links (with the dynamic loader).
cp /usr/sbin/dropbear "$root/sbin/dropbear"
for lib in $(ldd /usr/sbin/dropbear | awk '/=>/{print $3} /ld-linux/{print $1}'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# Modules, in load order: the e1000 NIC; virtio for disks.
modules=(
  kernel/drivers/net/ethernet/intel/e1000/e1000.ko
  kernel/drivers/virtio/virtio_ring.ko
  kernel/drivers/virtio/virtio.ko
  kernel/drivers/virtio/virtio_pci_modern_dev.ko
  kernel/drivers/virtio/virtio_pci_legacy_dev.ko
  kernel/drivers/virtio/virtio_pci.ko
  kernel/drivers/block/virtio_blk.ko
)
for m in "${modules[@]}"; do
  src="$work/kernel/lib/modules/$version/$m"
  if [ -f "$src" ]; then cp "$src" "$root/lib/modules/"; echo "$(basename "$m")" >>"$root/lib/modules/order"; fi
done

# Root, with the SSH key; dropbear's host key.
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf '/bin/sh\n' >"$root/etc/shells"
rm -f "$dest/id_ed25519" "$dest/id_ed25519.pub"
ssh-keygen -q -t ed25519 -N '' -C taskbot-tiny-vm -f "$dest/id_ed25519"
cp "$dest/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
chmod 700 "$root/root/.ssh"; chmod 600 "$root/root/.ssh/authorized_keys"
dropbearkey -t ed25519 -f "$root/etc/dropbear/dropbear_ed25519_host_key" >/dev/null 2>&1

cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m || echo "taskbot-vm: insmod $m failed" >/dev/console; done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
hostname taskbot-vm
echo "taskbot-vm: network up, starting SSH" >/dev/console
/sbin/dropbear -R -E -s -p 22 -r /etc/dropbear/dropbear_ed25519_host_key
echo "taskbot-vm: ready" >/dev/console
while true; do sleep 3600; done
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 >"$dest/initrd.img")
echo "$kernel_pkg" >"$dest/kernel"
log "built $dest (kernel $version, initramfs $(du -h "$dest/initrd.img" | cut -f1))"
