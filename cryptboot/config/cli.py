"""``cryptboot plan``: print the boot plan that the kernel command line and crypttab give.

Exits 0 with the plan, or raises :class:`ConfigError` (one ``FILE:LINE: ...`` line at the CLI
edge, exit status 2) on malformed input or a contradiction. argparse lives here only; the plan
modules never import it, and ``json`` is imported only for ``--json``.
"""

from __future__ import annotations

import argparse
import sys

from cryptboot.config.model import Vconsole
from cryptboot.config.plan import build_plan
from cryptboot.config.values import read_input


def console_files(vconsole: str | None, keyboard: str | None) -> Vconsole:
    """The keymap and font the files say (issue 15): ``None`` = the default path if it exists,
    ``none`` = not read; a file named explicitly must exist."""
    from cryptboot.config.vconsole import KEYBOARD, VCONSOLE_CONF, read_vconsole

    for given, what in ((vconsole, "vconsole.conf"), (keyboard, "keyboard file")):
        if given and given != "none":
            read_input(given, what)  # a named file must be there
    return read_vconsole(VCONSOLE_CONF if vconsole is None else
                         (None if vconsole == "none" else vconsole),
                         KEYBOARD if keyboard is None else
                         (None if keyboard == "none" else keyboard))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cryptboot plan",
        description="Print what cryptboot will do at boot: the volumes to unlock (in order, with "
                    "the keys to try), the root to mount and the init to start.")
    p.add_argument("--cmdline", metavar="STRING|@FILE", default="@/proc/cmdline",
                   help="the kernel command line, or @FILE to read it from FILE "
                        "(default: @/proc/cmdline)")
    p.add_argument("--crypttab", metavar="FILE", default=None,
                   help="crypttab to read (default: /etc/crypttab if it exists)")
    p.add_argument("--vconsole", metavar="FILE|none", default=None,
                   help="systemd's vconsole.conf for the keymap and font (default: "
                        "/etc/vconsole.conf if it exists)")
    p.add_argument("--keyboard", metavar="FILE|none", default=None,
                   help="Debian console-setup's keyboard file, used when vconsole.conf names "
                        "no keymap; its compiled keymap is DIR/console-setup/cached_*.kmap.gz "
                        "beside DIR/default/keyboard (default: /etc/default/keyboard)")
    p.add_argument("--json", action="store_true", help="print JSON (schema in docs/plan.md)")
    return p


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:   # --help or a usage error: argparse has printed it
        return e.code if isinstance(e.code, int) else 2
    if args.cmdline.startswith("@"):
        cmdline_path = args.cmdline[1:]
        cmdline = read_input(cmdline_path, "kernel command line") or ""
    else:
        cmdline_path, cmdline = "--cmdline", args.cmdline
    # the default crypttab may be absent (none); one named with --crypttab must be there
    crypttab_path = args.crypttab or "/etc/crypttab"
    crypttab = read_input(crypttab_path, "crypttab", missing_ok=args.crypttab is None)
    plan = build_plan(cmdline, crypttab, crypttab_path, cmdline_path,
                      console_files(args.vconsole, args.keyboard))
    if args.json:
        from cryptboot.config.render import render_json

        text = render_json(plan)
    else:
        from cryptboot.config.render import render_text

        text = render_text(plan)
    # undecodable bytes from the files come back as \udcXX escapes, never a traceback
    sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))
    sys.stdout.flush()
    return 0
