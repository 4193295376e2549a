#!/bin/sh
# dracut cmdline hook of the cryptboot module (sourced by dracut's init.sh).
# Queues one initqueue job that runs "cryptboot unlock": it reads rd.luks.* from /proc/cmdline
# and /etc/crypttab, waits for the devices, asks on the consoles and opens the mappings; dracut's
# rootfs-block then waits for root=, mounts it and switches root as usual.

# shellcheck source=/dev/null
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

if ! getargbool 1 rd.luks -d -n rd_NO_LUKS; then
    info "cryptboot: rd.luks=0 on the kernel command line, not unlocking anything"
elif [ -e /lib/dracut-crypt-lib.sh ]; then
    # module-setup.sh refuses this combination; an image built around it gets a clear word
    warn "cryptboot: dracut's crypt module is in this image too and would ask for the same" \
        "volumes; cryptboot stands down. Rebuild the image with --omit crypt."
else
    /sbin/initqueue --onetime --unique --name cryptboot-unlock /sbin/cryptboot-unlock
fi
