#!/bin/bash
# make demo: boot a small encrypted disk through a cryptboot initramfs in QEMU, on this terminal.
#
# Installs what it needs (tools/setup.sh), builds a LUKS2 disk whose root holds busybox and a
# greeting /sbin/init, builds a cryptboot initramfs for the Debian cloud kernel, and boots it.
# Type the passphrase at the prompt:  cryptboot
# The real root's init greets you with the boot timeline, then powers the VM off.
# Leave QEMU at any time with Ctrl-a x.  Scratch files: build/demo/ (DEMO_DIR to change).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh

DEMO=${DEMO_DIR:-build/demo}
PASSPHRASE=cryptboot
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

kernel=$(find /boot -maxdepth 1 -name 'vmlinuz-*-cloud-amd64' | sort -V | tail -n 1)
if [ -z "$kernel" ]; then
    echo "demo: no /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)" >&2
    exit 1
fi
kver=${kernel#/boot/vmlinuz-}
mkdir -p "$DEMO"

if [ ! -f "$DEMO/disk.img" ] || [ "$0" -nt "$DEMO/disk.img" ]; then
    echo "demo: building a 48 MiB LUKS2 disk ($DEMO/disk.img)" >&2
    tree=$(mktemp -d)
    trap 'rm -rf "$tree"' EXIT
    mkdir -p "$tree"/{bin,sbin,dev,proc,sys,run,tmp,etc}
    cp /bin/busybox "$tree/bin/busybox"
    for applet in $("$tree/bin/busybox" --list); do
        [ -e "$tree/bin/$applet" ] || ln -s busybox "$tree/bin/$applet"
    done
    cat >"$tree/sbin/init" <<'INIT'
#!/bin/sh
# The demo's real init: greet, show how the boot went, power off.
export PATH=/bin:/sbin
[ -c /dev/console ] || mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
[ -r /proc/uptime ] || mount -t proc proc /proc
[ -d /sys/block ] || mount -t sysfs sysfs /sys
dev=$(awk '$5 == "/" { d = $3 } END { print d }' /proc/self/mountinfo)
echo
echo "================================================================="
echo " Hello from the real root!  I am /sbin/init, PID $$."
echo " / is /dev/mapper/$(cat "/sys/dev/block/$dev/dm/name" 2>/dev/null), unlocked by cryptboot."
echo " Up $(cut -d' ' -f1 /proc/uptime) s since the kernel started.  The boot, step by step:"
echo "================================================================="
# raw dmesg: <PRI> first; debug lines (priority 7, e.g. the switch's expected fallback) left out
dmesg -r | awk -F'[<>]' '$2 % 8 != 7' | sed 's/^<[0-9]*>//' | grep 'cryptboot:' \
    | grep -v -e ' \.\.\.$' -e ' \.\.\. (in the background' -e ': run: ' -e ': start: ' | sed 's/^/  /'
echo
printf 'Press Enter to power off (or type sh and Enter for a shell): '
read -r answer || answer=""
if [ "$answer" = sh ]; then
    echo "exit the shell to power off"
    sh -i
fi
poweroff -f
INIT
    chmod 755 "$tree/sbin/init"
    printf 'NAME=cryptboot-demo\nID=cryptboot-demo\n' >"$tree/etc/os-release"
    rm -f "$DEMO/disk.img"
    truncate -s 48M "$DEMO/disk.img"
    mkfs.ext4 -q -F -L demoroot -d "$tree" "$DEMO/disk.img" 32M
    # Encrypt in place (no device-mapper needed). pbkdf2 with few iterations: the emulated CPU
    # is slow, and this disk protects nothing.
    printf %s "$PASSPHRASE" | $SUDO cryptsetup reencrypt --encrypt --type luks2 -q \
        --reduce-device-size 16M --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --key-file=- "$DEMO/disk.img"
fi
uuid=$(cryptsetup luksUUID "$DEMO/disk.img")

echo "demo: building the cryptboot initramfs for $kver ($DEMO/initrd.img)" >&2
$SUDO .venv/bin/cryptboot mkinitramfs -o "$DEMO/initrd.img" --kver "$kver" --crypttab none \
    --cache-dir "$DEMO/pyc"

cat >&2 <<EOF

demo: booting in QEMU (software emulation: give it a few seconds).
      At "Please enter passphrase for disk root", type:   $PASSPHRASE
      Leave QEMU at any time with Ctrl-a x.

EOF
exec qemu-system-x86_64 -accel tcg -cpu max -m 512 -nographic -nodefaults \
    -serial mon:stdio -net none -no-reboot \
    -kernel "$kernel" -initrd "$DEMO/initrd.img" \
    -append "console=ttyS0 panic=-1 quiet root=/dev/mapper/root rd.luks.uuid=$uuid rd.luks.name=$uuid=root" \
    -drive "file=$DEMO/disk.img,format=raw,if=virtio,snapshot=on"
