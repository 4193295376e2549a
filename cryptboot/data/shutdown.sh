#!/usr/bin/busybox sh
# cryptboot's shutdown initramfs: /run/initramfs/shutdown (built with `mkinitramfs --shutdown`).
#
# systemd-shutdown pivots into /run/initramfs (the old root at /oldroot, /dev /proc /sys /run
# bound in) and runs this with the verb as $1: reboot, poweroff, halt, kexec or exit. Here the
# old root is unmounted, the storage hooks run (etc/cryptboot/shutdown.d/*.sh: deactivate LVs,
# stop md arrays), the mappings cryptboot opened at boot (etc/cryptboot/mappings) are closed
# (the kernel wipes their keys), and the machine goes down as asked.
# shellcheck shell=sh
PATH=/usr/sbin:/usr/bin
export PATH
bb=/usr/bin/busybox
verb=${1:-poweroff}

say() { echo "cryptboot-shutdown: $*"; }

say "running for '$verb'"
$bb sync

# Everything mounted at or below /oldroot, deepest first (a child's path sorts after its
# parent's). The old root itself last: unmounted, or if busy remounted read-only and detached.
# shellcheck disable=SC2016 # awk fields, not shell variables
$bb awk '$2 == "/oldroot" || index($2, "/oldroot/") == 1 { print $2 }' /proc/mounts \
    | $bb sort -r -u | while read -r point; do
    if [ "$point" = /oldroot ]; then
        if $bb umount /oldroot 2>/dev/null; then
            say "unmounted the old root"
        elif $bb mount -o remount,ro /oldroot && $bb umount -l /oldroot; then
            say "the old root was busy: remounted read-only and detached"
        else
            say "could not unmount the old root"
        fi
    else
        $bb umount "$point" 2>/dev/null || $bb umount -l "$point" 2>/dev/null \
            || say "could not unmount $point"
    fi
done
if $bb grep -q ' /oldroot ' /proc/mounts; then
    say "the old root is still mounted"
fi

# The kernel name (dm-N) of mapping $1, or nothing.
kname() {
    for d in /sys/block/dm-*; do
        [ "$($bb cat "$d/dm/name" 2>/dev/null)" = "$1" ] && { echo "${d##*/}"; return; }
    done
}

# Remove the device-mapper devices that hold block device $1 (dm-N), top first: the LVs on a
# LUKS PV (deactivated as `vgchange -an` would, no metadata written), mappings on an LV.
close_holders() (  # a subshell: the recursion must not overwrite its caller's loop
    for h in /sys/block/"$1"/holders/*; do
        [ -e "$h" ] || continue
        close_holders "${h##*/}"
        hname=$($bb cat "$h/dm/name" 2>/dev/null) || continue
        if dmsetup --noudevsync remove "$hname" 2>/dev/null; then
            say "closed $hname"
        fi
    done
)

# Close the mappings (and let the storage hooks deactivate what sits above or below them),
# a few rounds, since stacks close from the top.
mappings=$($bb cat /etc/cryptboot/mappings 2>/dev/null)
for round in 1 2 3; do
    for hook in /etc/cryptboot/shutdown.d/*.sh; do
        [ -r "$hook" ] && $bb sh "$hook" "$verb" "$round"
    done
    left=""
    for name in $mappings; do
        dmsetup info "$name" >/dev/null 2>&1 || continue
        k=$(kname "$name")
        [ -n "$k" ] && close_holders "$k"
        if dmsetup --noudevsync remove "$name" 2>/dev/null; then
            say "closed $name"
        else
            left="$left $name"
        fi
    done
    [ -z "$left" ] && break
    $bb sleep 0.5
done
if [ -n "$left" ]; then
    say "could not close:$left"
fi
# What is left below the mappings: LVs nothing holds (LUKS on an LV) are deactivated, md
# arrays nothing holds are stopped (the kernel marks them clean; no metadata is rewritten).
for d in /sys/block/dm-*; do
    [ -e "$d/dm/uuid" ] || continue
    case $($bb cat "$d/dm/uuid") in LVM-*) ;; *) continue ;; esac
    [ -z "$($bb ls "$d/holders" 2>/dev/null)" ] || continue
    lv=$($bb cat "$d/dm/name")
    dmsetup --noudevsync remove "$lv" 2>/dev/null && say "deactivated LV $lv"
done
for md in /sys/block/md*; do
    [ -e "$md/md/array_state" ] || continue
    [ -z "$($bb ls "$md/holders" 2>/dev/null)" ] || continue
    echo inactive > "$md/md/array_state" 2>/dev/null && say "stopped ${md##*/}"
done
if dmsetup ls 2>/dev/null | $bb grep -qv '^No devices found'; then
    say "device-mapper devices left: $(dmsetup ls 2>/dev/null | $bb tr '\n' ' ')"
else
    say "no device-mapper devices left"
fi

$bb sync
case "$verb" in
    reboot|kexec) exec $bb reboot -f ;;
    halt) exec $bb halt -f ;;
    *) exec $bb poweroff -f ;;
esac
