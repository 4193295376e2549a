#!/bin/sh
# Installed as /sbin/cryptboot-unlock; run once from dracut's initqueue (see cryptboot-cmdline.sh).
# "cryptboot unlock" asks on the consoles itself; when it cannot open a volume it needs, this
# goes to dracut's emergency path at once (a shell, or rd.emergency with rd.shell=0) instead
# of waiting rd.retry seconds for a root device that cannot appear.

# shellcheck source=/dev/null
. /lib/dracut-lib.sh

# stdin from /dev/null: cryptboot then asks on every active console (serial and screen), not
# only on the one init's stdin happens to be
/usr/bin/cryptboot unlock < /dev/null
rc=$?
if [ "$rc" -ne 0 ]; then
    emergency_shell -n cryptboot "cryptboot unlock failed (exit status $rc)"
fi
exit "$rc"
