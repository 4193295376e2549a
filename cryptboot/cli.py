"""Entry point: dispatch to a subcommand, turn errors into one clear line.

Subcommands live in their own modules and are imported only when used, so that
``cryptboot boot`` (``/init`` of an initramfs) imports nothing it does not need.
Each module exposes ``main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from cryptboot import log
from cryptboot.errors import CryptbootError

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "boot": ("cryptboot.boot", "main", "run as /init: unlock, mount and switch to the real root"),
    "unlock": ("cryptboot.boot", "unlock_main", "wait for, get keys for, and unlock volumes"),
    "plan": ("cryptboot.config.cli", "main", "print the boot plan from cmdline and crypttab"),
    "switch-root": ("cryptboot.switch.cli", "switch_root_main",
                    "busybox-compatible switch_root: NEWROOT INIT [ARGS...]"),
    "pivot-root": ("cryptboot.switch.cli", "pivot_root_main",
                   "pivot_root(2) with checks: NEW_ROOT PUT_OLD"),
    "ramroot": ("cryptboot.switch.cli", "ramroot_main",
                "pivot into a RAM copy of the root and back (upgrade without reboot)"),
    "mkinitramfs": ("cryptboot.initramfs.cli", "main", "build a bootable cryptboot initramfs"),
    "check": ("cryptboot.check.cli", "main", "will this image boot this machine? (issue 17)"),
    "cgd": ("cryptboot.unlock.cgd_cli", "main", "NetBSD cgd params files: keygen fingerprints"),
    "ssh-prompt": ("cryptboot.keys.remote", "client_main",
                   "answer the boot's passphrase prompt (the SSH login's forced command)"),
}

DEBUG_HINT = "run `cryptboot --debug ...` for a traceback"

# busybox-style applet names: argv[0] basename -> subcommand
APPLETS = {"switch_root": "switch-root", "pivot_root": "pivot-root", "init": "boot"}

USAGE = "usage: cryptboot [--debug] COMMAND [ARGS...]\n\ncommands:\n" + "".join(
    f"  {name:<12} {text}\n" for name, (_, _, text) in COMMANDS.items()
)


def _resolve(name: str) -> Callable[[list[str]], int]:
    module, func = COMMANDS[name][:2]
    fn: Callable[[list[str]], int] = getattr(importlib.import_module(module), func)
    return fn


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    applet = os.path.basename(sys.argv[0]) if argv is None else ""
    debug = False
    while args and args[0] in ("--debug", "-d"):
        debug = True
        args.pop(0)
    log.configure(debug=debug)
    if applet in APPLETS:
        command = APPLETS[applet]
    elif not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    elif args[0] in ("-V", "--version"):
        from cryptboot import __version__

        print(f"cryptboot {__version__}")
        return 0
    else:
        command = args.pop(0)
    if command not in COMMANDS:
        sys.stderr.write(f"cryptboot: unknown command {command!r}\n{USAGE}")
        return 2
    try:
        return _resolve(command)(args)
    except CryptbootError as e:
        log.report(e, DEBUG_HINT)
        return e.exit_code
    except KeyboardInterrupt as e:
        log.report(e, DEBUG_HINT)
        return 130
