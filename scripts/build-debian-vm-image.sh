#!/bin/bash
# Build a real Debian system image for the VM backend, from the OS packages (debootstrap):
#
#   scripts/build-debian-vm-image.sh [DEST_DIR] [RELEASE]
#
# DEST_DIR defaults to /var/cache/taskbot/debian-vm, RELEASE to bookworm; the arch is amd64.
# It needs root (debootstrap, chroot): run as another user, it runs itself again with sudo.
#
# DEST_DIR/disk.qcow2   one ext4 file system (no partition table), the guest's /dev/vda: a
#                       minimal Debian with systemd, udev, dbus, openssh-server, sudo, the real
#                       cloud-init (NoCloud datasource, then None), linux-image-amd64 (with its
#                       modules) and systemd-networkd (DHCP on every en*/eth* NIC, as QEMU's
#                       user networking gives); the serial console on ttyS0
# DEST_DIR/vmlinuz      that system's kernel and initramfs (initramfs-tools, MODULES=most: it
# DEST_DIR/initrd.img   has virtio_blk and ext4), for QEMU's direct kernel boot with
#                       `root=/dev/vda rw console=ttyS0`
# DEST_DIR/kernel       the kernel's release (`uname -r` in the guest)
# DEST_DIR/version      the Debian version (`/etc/debian_version`, e.g. 12.11)
# DEST_DIR/built        when it was built (UTC, YYYY-MM-DDTHH:MM:SSZ), for the catalogue's `built`
# DEST_DIR/packages.txt every package installed, with its version
# DEST_DIR/id_ed25519   an SSH key for tests (.pub beside it); NOT in the guest
#
# Nobody can log in without a seed: root has no password (locked), password logins are off,
# no key is in the image; cloud-init puts the seed's keys in place at first boot, and generates
# the host keys (none are in the image, so every VM has its own; without cloud-init a unit makes
# an ed25519 key before sshd starts). The network is the image's own (cloud-init's network
# configuration is off), so it comes up whatever the seed says. /etc/machine-id is empty: every
# VM makes its own at first boot. Apt's caches and lists are removed (`apt-get update` first).
#
# Safe to run again, also from parallel tests (a lock): it does nothing when DEST_DIR was built
# by this script for this RELEASE (delete DEST_DIR/stamp to rebuild). The mirror is the one of
# /etc/apt/sources.list* serving RELEASE (else deb.debian.org), or $DEBIAN_MIRROR.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=DEBIAN_MIRROR bash "$0" "$@"
fi
dest=${1:-/var/cache/taskbot/debian-vm}
release=${2:-bookworm}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
need() { # package command
  command -v "$2" >/dev/null 2>&1 && return 0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}
need debootstrap debootstrap
need qemu-utils qemu-img
need e2fsprogs mkfs.ext4
need openssh-client ssh-keygen

# The first URI of the system's apt sources (one-line or deb822) that serves suite $1.
mirror_for() {
  local suite=$1
  {
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk -v s="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++; if ($2 ~ /^\[/) i++;
                                       if ($(i + 1) == s) print $i }'
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
      awk -v s="$suite" 'BEGIN { RS = ""; FS = "\n" }
        { uris = ""; ok = 0; deb = 0
          for (n = 1; n <= NF; n++) {
            if ($n ~ /^Types:.*(^|[ \t])deb([ \t]|$)/) deb = 1
            if ($n ~ /^URIs:/) { uris = $n; sub(/^URIs:[ \t]*/, "", uris) }
            if ($n ~ /^Suites:/) { k = split($n, w, /[ \t]+/); for (j = 2; j <= k; j++) if (w[j] == s) ok = 1 }
          }
          if (deb && ok) { split(uris, u, /[ \t]+/); print u[1] } }'
  } | head -n 1
}
mirror=${DEBIAN_MIRROR:-$(mirror_for "$release")}
mirror=${mirror:-http://deb.debian.org/debian}
security=$(mirror_for "$release-security")

# One build at a time (tests run in parallel and each asks for the image): the others wait,
# then find it up to date.
exec 9>"$dest/.lock"
flock 9
stamp="$release $(sha256sum "$0" | cut -c1-16)"
if [ -f "$dest/disk.qcow2" ] && [ -f "$dest/vmlinuz" ] && [ -f "$dest/initrd.img" ] &&
  [ "$(cat "$dest/stamp" 2>/dev/null)" = "$stamp" ]; then
  log "$dest is up to date (Debian $(cat "$dest/version"), kernel $(cat "$dest/kernel"))"
  exit 0
fi
rm -f "$dest/stamp"

work=$(mktemp -d "$dest/.build.XXXXXX")
root="$work/root"
# What is mounted under $1, deepest first.
mounts_under() {
  findmnt -rn -o TARGET | awk -v p="$1/" 'index($0, p) == 1' | sort -r
}
# Unmount whatever is mounted inside the tree before removing it: never follow a mount out of it.
cleanup() {
  local m
  for m in $(mounts_under "$root"); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }

log "debootstrap $release from $mirror"
debootstrap --variant=minbase --arch=amd64 --components=main "$release" "$root" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

# Services are not started in the chroot; the release's updates and security fixes are used.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
{
  echo "deb $mirror $release main"
  echo "deb $mirror $release-updates main"
  [ -z "$security" ] || echo "deb $security $release-security main"
} >"$root/etc/apt/sources.list"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount -t devpts devpts "$root/dev/pts"

log "installing the kernel, systemd, openssh-server and cloud-init"
# cloud-init's answers before it is installed: NoCloud first, then None (no datasource).
mkdir -p "$root/etc/cloud/cloud.cfg.d"
cat >"$root/etc/cloud/cloud.cfg.d/90_taskbot.cfg" <<'EOF'
# The provisioner's NoCloud seed (a disk labelled cidata); without one, no datasource.
datasource_list: [NoCloud, None]
# The image brings its own network (systemd-networkd, DHCP on every NIC): it comes up whatever
# the seed says.
network: {config: disabled}
# C.UTF-8 is built in; the default en_US.UTF-8 is not generated in a minimal system, and Debian's
# locale-gen ignores cloud-init's request to generate it (the locale module then fails).
locale: C.UTF-8
# Host keys of one type (a seed's ssh_keys replace them): under TCG, RSA-3072, DSA and ECDSA
# keys took 40 s of each boot.
ssh_genkeytypes: [ed25519]
# Debian's module lists without what this system has no use for (snap, byobu, Ubuntu's and the
# configuration managers' modules, grub-dpkg: QEMU boots the kernel itself): each module listed
# is imported at every stage, and grub-dpkg alone took 7 s under TCG.
cloud_config_modules:
  - ssh-import-id
  - keyboard
  - locale
  - set-passwords
  - apt-configure
  - ntp
  - timezone
  - runcmd
cloud_final_modules:
  - package-update-upgrade-install
  - write-files-deferred
  - scripts-vendor
  - scripts-per-once
  - scripts-per-boot
  - scripts-per-instance
  - scripts-user
  - ssh-authkey-fingerprints
  - keys-to-console
  - phone-home
  - final-message
  - power-state-change
EOF
in_root apt-get update -qq
# Not libpam-systemd (openssh-server only recommends it): with it every SSH login, and a job makes
# many, starts a systemd --user manager for root when none runs, 6 s under TCG.
in_root apt-get install -y -qq --no-install-recommends \
  linux-image-amd64 initramfs-tools systemd-sysv udev dbus kmod \
  openssh-server cloud-init sudo iproute2 procps e2fsprogs netbase \
  >"$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; exit 1; }
in_root apt-get -y -qq upgrade >>"$work/apt.log" 2>&1

log "configuring the system"
printf 'debian\n' >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
printf '/dev/vda\t/\text4\trw,errors=remount-ro\t0\t0\n' >"$root/etc/fstab"
# QEMU's user networking: DHCP, DNS at 10.0.2.3.
cat >"$root/etc/systemd/network/80-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
EOF
printf 'nameserver 10.0.2.3\n' >"$root/etc/resolv.conf"
in_root systemctl enable systemd-networkd.service >/dev/null 2>&1
# What a VM for one job never needs, and what would slow its boot under TCG.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer; do
  in_root systemctl disable "$unit" >/dev/null 2>&1 || true
done
in_root systemctl mask systemd-firstboot.service >/dev/null 2>&1
# No host keys in the image (cloud-init makes each VM's own); an ed25519 one for a VM that
# boots without cloud-init, so that sshd starts there too.
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/systemd/system/ssh.service.d/taskbot-host-key.conf" <<'EOF'
[Service]
ExecStartPre=/bin/sh -c 'ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
EOF
# Keys only (cloud-init says so too when the seed has ssh_pwauth: false); root has no password.
mkdir -p "$root/etc/ssh/sshd_config.d"
printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\n' \
  >"$root/etc/ssh/sshd_config.d/10-taskbot.conf"
in_root usermod -p '*' root
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

kernel=$(ls "$root/lib/modules")
[ "$(echo "$kernel" | wc -w)" -eq 1 ] || { echo "more than one kernel: $kernel" >&2; exit 1; }
[ -f "$root/boot/initrd.img-$kernel" ] || { echo "no initramfs for $kernel" >&2; exit 1; }
in_root dpkg-query -W -f '${Package} ${Version}\n' >"$work/packages.txt"

log "cleaning up"
in_root apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old \
  "$root"/var/lib/cloud/* "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root/usr/sbin/policy-rc.d"
cp "$root/boot/vmlinuz-$kernel" "$work/vmlinuz"
cp "$root/boot/initrd.img-$kernel" "$work/initrd.img"
version=$(cat "$root/etc/debian_version")
for m in $(mounts_under "$root"); do umount "$m"; done

log "making the ext4 disk"
# The system plus 1 GiB for the tasks.
size_mb=$(($(du -sm "$root" | cut -f1) + 1024))
mkfs.ext4 -q -L taskbot-root -d "$root" "$work/disk.raw" "${size_mb}M"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
[ -f "$dest/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C taskbot-debian-vm -f "$dest/id_ed25519"
for f in disk.qcow2 vmlinuz initrd.img packages.txt; do
  mv "$work/$f" "$dest/$f"
done
chmod 644 "$dest/disk.qcow2" "$dest/vmlinuz" "$dest/initrd.img"
echo "$kernel" >"$dest/kernel"
echo "$version" >"$dest/version"
date -u +%Y-%m-%dT%H:%M:%SZ >"$dest/built"
echo "$stamp" >"$dest/stamp"
log "built $dest: Debian $version, kernel $kernel, disk $(du -h "$dest/disk.qcow2" | cut -f1) ($size_mb MiB)"
