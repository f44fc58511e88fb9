#!/bin/sh
# The installer comes from the job argument boot_dir, else $INSTALLER_DIR (runner.task_env),
# else /var/lib/taskbot/installer: a directory with vmlinuz and initrd.img whose init installs to
# the disk named by the kernel argument taskbot.install= (scripts/build-tiny-vm-image.sh builds
# such a one from Debian packages). Tasks run sandboxed: the operator lists that directory in
# runner.sandbox_read_only. Anything missing is a CRASHED result saying what.
set -eu

report() { # outcome note
  cat >"$TASKBOT_RESULTS" <<RESULTS
results:
  - item: $TASKBOT_ITEM
    type: $TASKBOT_ITEM_TYPE
    checkname: dist.build-iso
    outcome: $1
    note: '$(printf '%s' "$2" | sed "s/'/''/g")'
RESULTS
}
crash() { report CRASHED "$1"; exit 0; }

case "$TASKBOT_ITEM" in
  *[!A-Za-z0-9._+~-]*) crash "item $TASKBOT_ITEM is not a build name (letters, digits, ._+~-)" ;;
esac
boot_dir=${TASKBOT_ARG_BOOT_DIR:-${INSTALLER_DIR:-/var/lib/taskbot/installer}}
for file in "$boot_dir/vmlinuz" "$boot_dir/initrd.img"; do
  [ -f "$file" ] || crash "no installer file $file"
done
isolinux=/usr/lib/ISOLINUX/isolinux.bin
ldlinux=/usr/lib/syslinux/modules/bios/ldlinux.c32
for file in "$isolinux" "$ldlinux"; do
  [ -f "$file" ] || crash "no $file (packages isolinux, syslinux-common)"
done
command -v xorriso >/dev/null || crash "no xorriso (package xorriso)"

tree=iso-tree
rm -rf "$tree"
mkdir -p "$tree/isolinux"
cp "$isolinux" "$ldlinux" "$tree/isolinux/"
cp "$boot_dir/vmlinuz" "$boot_dir/initrd.img" "$tree/"
cat >"$tree/isolinux/isolinux.cfg" <<CFG
DEFAULT install
PROMPT 0
TIMEOUT 0
LABEL install
  KERNEL /vmlinuz
  APPEND initrd=/initrd.img console=ttyS0 quiet panic=-1 taskbot.install=/dev/vda taskbot.item=$TASKBOT_ITEM
CFG
iso="${TASKBOT_ARTIFACTS}install.iso"
if ! xorriso -as mkisofs -quiet -o "$iso" -V TASKBOT_INSTALL -J -r \
    -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
    "$tree" 2>xorriso.log; then
  crash "xorriso failed: $(tail -n 1 xorriso.log)"
fi
sum=$(sha256sum "$iso" | cut -d' ' -f1)
size=$(wc -c <"$iso")
printf '{"topic": "taskbot.task.iso.built", "msg": {"item": "%s", "arch": "%s", "job_id": "%s", "iso": {"url": "%sinstall.iso", "sha256": "%s", "size": %s}}}\n' \
  "$TASKBOT_ITEM" "$TASKBOT_ARCH" "$TASKBOT_JOB_ID" "$TASKBOT_ARTIFACTS_URL" "$sum" "$size" >>"$TASKBOT_EVENTS"
report PASSED "install.iso: $size bytes, sha256 $sum"
