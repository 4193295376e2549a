"""Where ``cryptboot boot`` reads its inputs: its own arguments (the kernel passes unknown
command-line words to /init too, so anything else is ignored)."""

from __future__ import annotations

from collections.abc import Sequence

from cryptboot.paths import CMDLINE_DEFAULTS, SYSROOT

MODULES_FILE = "/etc/cryptboot/modules"
VCONSOLE_CONF = "/etc/vconsole.conf"


class BootArgs:
    """Where ``cryptboot boot`` reads its inputs (a plain class: no dataclass cost at boot)."""

    __slots__ = ("cmdline", "crypttab", "sysroot", "modules", "defaults", "vconsole")

    def __init__(self, cmdline: str = "/proc/cmdline", crypttab: str = "/etc/crypttab",
                 sysroot: str = SYSROOT, modules: str = MODULES_FILE,
                 defaults: str = CMDLINE_DEFAULTS, vconsole: str = VCONSOLE_CONF) -> None:
        self.cmdline = cmdline
        self.crypttab = crypttab
        self.sysroot = sysroot
        self.modules = modules
        self.defaults = defaults
        # issue 15: the image's /etc/vconsole.conf (written by mkinitramfs) names its keymap
        self.vconsole = vconsole


def parse_boot_args(argv: Sequence[str]) -> BootArgs:
    """``--cmdline FILE --crypttab FILE --sysroot DIR``; anything else is ignored, because the
    kernel passes unknown command-line words to /init as arguments."""
    args = BootArgs()
    it = iter(argv)
    for word in it:
        key, eq, value = word.partition("=")
        if key in ("--cmdline", "--crypttab", "--sysroot", "--modules", "--defaults",
                   "--vconsole"):
            if not eq:
                value = next(it, "")
            setattr(args, key[2:], value)
    return args


