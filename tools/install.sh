#!/bin/bash
# make install: tools/install.sh DESTDIR PREFIX
#
# Installs, under DESTDIR (empty = this machine):
#   PREFIX/lib/cryptboot/python/cryptboot/   the Python package (a private directory, so that no
#                                            distribution site-packages directory is touched)
#   PREFIX/bin/cryptboot                     the command: runs the package with $PYTHON
#   /usr/lib/dracut/modules.d/91cryptboot/   the dracut module (dracut looks only under /usr)
#   /usr/share/initramfs-tools/hooks/cryptboot, .../scripts/local-top/cryptboot
#                                            the initramfs-tools hook and boot script
#   /etc/initramfs/post-update.d/cryptboot-check, /usr/lib/kernel/install.d/90-cryptboot-check.install
#                                            "cryptboot check" after a build (issue 17); off
#                                            unless /etc/default/cryptboot says CHECK_AFTER_BUILD=yes
# The package needs pyudev at run time (Debian: python3-pyudev); cryptography only for
# "cryptboot cgd". PYTHON (default /usr/bin/python3) is the interpreter named in the command.
set -euo pipefail
cd "$(dirname "$0")/.."

DESTDIR=${1-}
PREFIX=${2:-/usr}
PYTHON=${PYTHON:-/usr/bin/python3}

die() {
    echo "install: $*" >&2
    exit 1
}

case $PREFIX in /*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
case $PYTHON in /*) ;; *) die "PYTHON must be an absolute path, not '$PYTHON'" ;; esac
[ -f cryptboot/__init__.py ] || die "run from a cryptboot checkout (no cryptboot/__init__.py)"

libdir="$PREFIX/lib/cryptboot/python"

# --- the Python package: sources, py.typed and data files; never caches
while IFS= read -r -d '' f; do
    install -D -m 0644 "$f" "$DESTDIR$libdir/$f"
done < <(find cryptboot -type d -name __pycache__ -prune -o -type f \
    \( -name '*.py' -o -name py.typed -o -path 'cryptboot/data/*' \) -print0)

# --- the command
install -d -m 0755 "$DESTDIR$PREFIX/bin"
cat > "$DESTDIR$PREFIX/bin/cryptboot.tmp" << EOF
#!$PYTHON -I
# cryptboot, installed by "make install" from the package in $libdir.
import sys

sys.path.insert(0, "$libdir")
from cryptboot.cli import main

sys.exit(main())
EOF
chmod 0755 "$DESTDIR$PREFIX/bin/cryptboot.tmp"
mv -f "$DESTDIR$PREFIX/bin/cryptboot.tmp" "$DESTDIR$PREFIX/bin/cryptboot"

# --- dracut module
dracut_dir="$DESTDIR/usr/lib/dracut/modules.d/91cryptboot"
install -d -m 0755 "$dracut_dir"
for f in dracut-module/91cryptboot/*.sh; do
    install -m 0755 "$f" "$dracut_dir/"
done

# --- initramfs-tools hook and boot script
itools="$DESTDIR/usr/share/initramfs-tools"
install -D -m 0755 hooks/initramfs-tools/hooks/cryptboot "$itools/hooks/cryptboot"
install -D -m 0755 hooks/initramfs-tools/scripts/local-top/cryptboot \
    "$itools/scripts/local-top/cryptboot"

# --- cryptboot check after a build (update-initramfs, kernel-install): off by default
check_hook=$(sed "s|@CRYPTBOOT@|$PREFIX/bin/cryptboot|" hooks/check/cryptboot-check)
for dest in "$DESTDIR/etc/initramfs/post-update.d/cryptboot-check" \
    "$DESTDIR/usr/lib/kernel/install.d/90-cryptboot-check.install"; do
    install -d -m 0755 "$(dirname "$dest")"
    printf '%s\n' "$check_hook" > "$dest.tmp"
    chmod 0755 "$dest.tmp"
    mv -f "$dest.tmp" "$dest"
done

echo "install: cryptboot installed under ${DESTDIR:-/}" \
    "(command $PREFIX/bin/cryptboot, dracut module 91cryptboot, initramfs-tools hooks)" >&2
if [ -z "$DESTDIR" ] && ! "$PYTHON" -c 'import pyudev' 2> /dev/null; then
    echo "install: warning: $PYTHON cannot import pyudev; install python3-pyudev" >&2
fi
