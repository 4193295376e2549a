#!/bin/bash
# Install everything cryptboot's demo, tests and benchmarks need on a Debian 12 machine:
# Debian packages (only those missing) and a virtual environment at .venv with cryptboot
# installed in it (editable), so that .venv/bin/cryptboot works afterwards.
# Idempotent: a second run installs nothing and takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
    python3 python3-venv            # the interpreter the venv and the initramfs use
    python3-pyudev                  # pyudev for `make install` (system python)
    qemu-system-x86                 # VM tier, demo, benchmark (always -accel tcg)
    linux-image-cloud-amd64         # the kernel booted by the VM tier
    cryptsetup-bin                  # cryptsetup: LUKS images on the host, unlock in the guest
    busybox-static                  # emergency shell in the image; switch_root peer in the bench
    udev                            # systemd-udevd + udevadm + rules, copied into the image
    kmod                            # modprobe/depmod (modules.* indexes of the image)
    e2fsprogs util-linux fdisk      # mkfs.ext4 -d, blkid, losetup, unshare, sfdisk
    cpio zstd lz4                   # building and inspecting images (zstd default, lz4 option)
    shellcheck                      # the shell scripts pass shellcheck
    argon2                          # reference argon2id for the cgd keygen tests
    dracut-core systemd             # peer (its default initrd is systemd-based), the dracut module's VM test
    initramfs-tools cryptsetup-initramfs  # peer, and the initramfs-tools hooks' VM test
    dmsetup                         # the shutdown initramfs closes mappings with it (--shutdown)
    mmdebstrap                      # the Debian 12 systemd root of the VM tier and bench_systemd
    tang clevis clevis-luks         # issue 13: real tangd and clevis bind/encrypt in the tang tests
    python3-cryptography            # issue 13: the image's tang client (Debian's build, for its python)
    swtpm swtpm-tools tpm2-tools    # issue 13: the TPM2 tests' emulated TPM, PCR extend
    dropbear-bin openssh-client     # SSH unlock: dropbear in the image; ssh, ssh-keygen, -keyscan in its tests
    lvm2 mdadm btrfs-progs          # issue 12: LVM/md/btrfs tools for the image and the stack disks
    kbd console-data                # loadkeys -b compiles the image's keymap (issue 15); kbd keymaps
    console-setup                   # ckbcomp: console-setup's compiled keymap in the keymap tests
)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

missing=()
for p in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

PY=/usr/bin/python3
stamp=.venv/.cryptboot-setup
if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: creating .venv" >&2
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test]'
    touch "$stamp"
fi
