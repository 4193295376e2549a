"""``cryptboot cgd``: look at NetBSD cgd params files without opening anything.

- ``cryptboot cgd keygen [-p] PARAMSFILE`` prints the fingerprint (SHA-256) of the key the params
  file makes, never the key, to compare with ``cgdconfig -t PARAMSFILE | base64 -d | cksum -a
  sha256`` on the NetBSD host. ``-f CGD.CONF`` does it for every line of a cgd.conf.
- ``cryptboot cgd check [-p] PARAMSFILE DEVICE`` also runs the verify_method on the device,
  decrypting in Python (works for every cgd cipher but adiantum, mapped or not).
- ``cryptboot cgd info PARAMSFILE`` shows the settings and whether Linux can map the volume.

Passphrases are asked on the terminal (``<target>'s passphrase:``, as cgdconfig asks), or with
``-p`` read one per line from standard input, trailing newline removed (as ``cgdconfig -p``).
"""

from __future__ import annotations

import sys

from cryptboot.errors import CryptbootError, WrongKey
from cryptboot.unlock.cgd_params import Params, load_cgd_conf, load_params

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    import argparse


class _Passphrases:
    def __init__(self, from_stdin: bool) -> None:
        self.from_stdin = from_stdin

    def get(self, params: Params, target: str) -> bytes | None:
        if not params.needs_passphrase:
            return None
        if self.from_stdin:
            line = sys.stdin.buffer.readline()
            if not line:
                raise CryptbootError(f"{target}: no passphrase on standard input")
            return line[:-1] if line.endswith(b"\n") else line
        import getpass

        try:
            return getpass.getpass(f"{target}'s passphrase:").encode()
        except EOFError:
            raise CryptbootError(f"{target}: no passphrase given") from None


def _parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(prog="cryptboot cgd",
                                description="NetBSD cgd params files: key fingerprints and checks")
    sub = p.add_subparsers(dest="cmd", required=True)
    kg = sub.add_parser("keygen", help="print the fingerprint of the key a params file makes")
    kg.add_argument("-p", action="store_true", help="read passphrases from stdin, one a line")
    kg.add_argument("-f", metavar="CGD.CONF", help="every volume of this cgd.conf")
    kg.add_argument("paramsfile", nargs="?")
    ck = sub.add_parser("check", help="make the key and run the verify_method on DEVICE")
    ck.add_argument("-p", action="store_true", help="read the passphrase from stdin")
    ck.add_argument("paramsfile")
    ck.add_argument("device")
    info = sub.add_parser("info", help="show the settings and whether Linux can map the volume")
    info.add_argument("paramsfile")
    return p


def _keygen(args: argparse.Namespace) -> int:
    from cryptboot.unlock.cgd_keygen import derive_key, fingerprint

    conf, paramsfile = args.f, args.paramsfile
    if (conf is None) == (paramsfile is None):
        raise CryptbootError("cgd keygen: give either PARAMSFILE or -f CGD.CONF")
    pw = _Passphrases(args.p)
    if conf is not None:
        for entry in load_cgd_conf(conf):
            params = load_params(entry.params)
            key = derive_key(params, pw.get(params, entry.target))
            print(f"{entry.target}: {fingerprint(key)}")
        return 0
    params = load_params(paramsfile)
    print(fingerprint(derive_key(params, pw.get(params, paramsfile))))
    return 0


def _check(args: argparse.Namespace) -> int:
    from cryptboot.unlock.cgd import check_key, sector_size
    from cryptboot.unlock.cgd_keygen import derive_key
    from cryptboot.unlock.cgd_verify import describe

    device = args.device
    params = load_params(args.paramsfile)
    key = derive_key(params, _Passphrases(args.p).get(params, device))
    ok = check_key(params, key, device, sector_size(device))
    if ok is None:
        print(f"{device}: verify_method {params.verify_method}: the key cannot be checked")
        return 0
    if not ok:
        raise WrongKey(f"{device}: wrong passphrase or key: no "
                       f"{describe(params.verify_method)} in the decrypted start")
    print(f"{device}: key verified ({describe(params.verify_method)} found)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from cryptboot.unlock.cgd import linux_refusal

    params = load_params(args.paramsfile)
    print(f"params file:   {params.path}")
    print(f"algorithm:     {params.algorithm}, {params.keylength} bits, iv-method "
          f"{params.iv_method}")
    print(f"verify_method: {params.verify_method}")
    for kg in params.keygens:
        shared = f", shared {kg.shared.ident!r}" if kg.shared else ""
        print(f"keygen:        {kg.method} (line {kg.line}){shared}")
    reason = linux_refusal(params)
    print("linux:         " + ("can be opened (dm-crypt plain, aes-xts-plain64)" if not reason
                               else f"cannot be opened: {reason}"))
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    cmd = args.cmd
    if cmd == "keygen":
        return _keygen(args)
    if cmd == "check":
        return _check(args)
    return _info(args)
