"""The kernel command line: the kernel's own word splitting, then every option cryptboot reads.

Forms from dracut (``rd.*``), systemd (``luks.*`` / ``rd.luks.*``), Arch mkinitcpio
(``cryptdevice=``, ``cryptkey=``, ``crypto=``, ``break=``), Debian (``cryptopts=``) and cryptboot's
own ``cryptboot.*`` are read into :class:`Cmdline`, a flat record that ``plan.py`` merges with
crypttab. Repeated scalar options: the last one wins (as in dracut); repeatable ones add up.
"""

from __future__ import annotations

from cryptboot.config import netconf
from cryptboot.config.crypttab import Entry, Options, check_name, make_entry, parse_options
from cryptboot.config.devspec import is_devspec, normalize_uuid, parse_devspec, split_file_device
from cryptboot.config.model import (
    BREAK_POINTS,
    CryptType,
    DeviceSpec,
    FailureAction,
    KeyKind,
    KeySource,
)
from cryptboot.config.stack import KEYS as STACK_KEYS
from cryptboot.config.stack import StackArgs
from cryptboot.config.stack import apply as apply_stack
from cryptboot.config.values import Where, is_uint, parse_bool, parse_seconds, parse_uint
from cryptboot.paths import module_name

_SPACE = " \t\n\v\f\r"


def split_cmdline(text: str) -> tuple[list[str], list[str]]:
    """Split like the kernel's ``next_arg()``: double quotes group words (a quote toggles
    quoting anywhere; a leading quote of the word or of its value, and the matching last quote,
    are removed). A bare ``--`` ends the kernel's words; the rest are init's arguments."""
    words: list[str] = []
    init: list[str] | None = None
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n:
            break
        quoted = text[i] == '"'
        if quoted:
            i += 1
        start, in_quote, equals = i, quoted, -1
        while i < n and (in_quote or text[i] not in _SPACE):
            if equals < 0 and text[i] == "=":
                equals = i
            if text[i] == '"':
                in_quote = not in_quote
            i += 1
        end = i
        word = text[start:end]
        if equals >= 0:
            key, value = text[start:equals], text[equals + 1:end]
            if value.startswith('"'):
                value = value[1:]
                if value.endswith('"'):
                    value = value[:-1]
            elif quoted and value.endswith('"'):
                value = value[:-1]
            word = f"{key}={value}"
        elif quoted and word.endswith('"'):
            word = word[:-1]
        if init is None and word == "--" and equals < 0:
            init = []
            continue
        (words if init is None else init).append(word)
    return words, init or []


class LuksRequest:
    """One volume named by ``rd.luks.uuid`` / ``rd.luks.name`` (systemd, dracut)."""

    __slots__ = ("uuid", "prefix", "name", "keysource", "param")

    def __init__(self, uuid: str, prefix: bool, name: str | None, keysource: bool,
                 param: str) -> None:
        self.uuid = uuid
        self.prefix = prefix
        self.name = name
        self.keysource = keysource
        self.param = param


class CmdlineKey:
    """A key from ``rd.luks.key``: for one UUID (systemd) or for all volumes, optionally only
    those whose device matches ``luksdev`` (dracut)."""

    __slots__ = ("key", "uuid", "luksdev", "param")

    def __init__(self, key: KeySource, uuid: str | None = None,
                 luksdev: DeviceSpec | None = None, param: str = "") -> None:
        self.key = key
        self.uuid = uuid
        self.luksdev = luksdev
        self.param = param


class Cmdline:
    """Everything the command line says, before merging with crypttab."""

    def __init__(self, where: Where, init_args: tuple[str, ...] = ()) -> None:
        self.where = where
        self.root: DeviceSpec | None = None
        self.rootfstype: str | None = None
        self.readonly = True
        self.rootflags = ""
        self.init = "/sbin/init"
        self.init_args = init_args
        self.device_timeout = 180.0
        self.root_timeout = 0.0
        self.shell = True
        self.emergency: FailureAction | None = None
        self.failure: FailureAction | None = None            # cryptboot.failure=
        self.breaks: set[str] = set()
        self.auto = False
        self.debug = False
        self.luks = True                                     # rd.luks=0 / luks=0: all off
        self.crypttab = True                                 # rd.luks.crypttab=0
        self.requests: list[LuksRequest] = []
        self.keys: list[CmdlineKey] = []
        self.uuid_options: dict[str, tuple[Options, str]] = {}
        self.default_options: tuple[Options, str] | None = None
        self.data: dict[str, tuple[DeviceSpec, str]] = {}
        self.discard_all = False
        self.discard_uuids: list[str] = []
        self.prompt_timeout: float | None = None             # rd.luks.timeout, cryptboot.timeout
        self.tries: int | None = None                        # cryptboot.tries=
        self.cryptdevices: list[Entry] = []
        self.cryptkey: tuple[KeySource, str] | None = None
        self.crypto: dict[str, object] | None = None
        self.cryptopts: list[Entry] | None = None            # None: not given; []: all empty
        self.cgd: list[Entry] = []
        self.warnings: list[str] = []
        self.module_params: list[tuple[str, str]] = []       # MODULE.PARAM[=VALUE]
        self.module_blacklist: list[str] = []                # modprobe.blacklist=, rd.driver...
        self.net = netconf.NetWords()                        # ip=, rd.neednet, cryptboot.ssh*
        # issue 15: (rd.)vconsole.keymap/keymap_toggle/font words, {key: (value, word)}
        self.vconsole: dict[str, tuple[str, str]] = {}
        self.stack = StackArgs()                             # rd.lvm*, rd.md*, resume= (#12)


# Options of other initramfs systems that matter for booting but that cryptboot does not do.
_UNIMPLEMENTED = frozenset({
    "rd.fstab", "rd.skipfsck", "rootfallback", "rd.hostonly",
    "rd.cmdline", "rd.luks.key.tout", "rd.luks.partuuid", "rd.luks.serial", "netroot",
    "rd.luks.tpm2-device", "rd.luks.fido2-device", "rd.distroinit", "real_init",
})
_UNIMPLEMENTED_PREFIXES = (
    "rd.lvm", "rd.md", "rd.dm", "rd.vconsole.", "vconsole.", "rd.locale.", "rd.driver.",
    "rd.multipath", "rd.iscsi", "rd.nfs", "rd.net", "rd.fcoe", "rd.zfcp", "rd.dasd",
    "rd.live", "rd.systemd.", "rd.udev.",
)
_VCONSOLE_KEYS = frozenset({"keymap", "keymap_toggle", "font"})  # the rest stay "not implemented"
# dotted words that are not module parameters (the kernel's, systemd's)
_NOT_MODULES = ("systemd.", "luks.", "modprobe.", "udev.", "rd.", "cryptboot.")
_EMERGENCY = {"reboot": FailureAction.REBOOT, "poweroff": FailureAction.POWEROFF,
              "halt": FailureAction.HALT}
_MKINITCPIO_BREAKS = {"y": "pre-mount", "premount": "pre-mount", "postmount": "pre-pivot"}
_HEX = frozenset("0123456789abcdefABCDEF-")


def _uuid_eq(text: str) -> int:
    """Length of a leading ``[luks-]UUID=`` (hex digits and dashes), or 0 when there is none."""
    eq = text.find("=")
    head = text[:eq]
    if head.lower().startswith("luks-"):
        head = head[5:]
    return eq + 1 if eq > 0 and head.strip("-") and _HEX.issuperset(head) else 0


def _luks_uuid(text: str, where: Where, what: str) -> tuple[str, bool]:
    """A LUKS UUID as dracut takes it: optional ``luks-``, dashes optional, a prefix allowed."""
    value = text[5:] if text.lower().startswith("luks-") else text
    try:
        norm, complete = normalize_uuid(value)
    except ValueError:
        raise where.error(f"{what}: expected a LUKS UUID (hex digits, dashes optional, "
                          f"optionally luks-UUID), found {text!r}") from None
    return norm, not complete


def _split_escaped(text: str, sep: str, maxsplit: int) -> list[str]:
    """Split like ``IFS=: read a b c``: a backslash keeps the next character literal."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            i += 2
            continue
        if c == sep and len(parts) < maxsplit:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def parse_cmdline(text: str, path: str = "/proc/cmdline") -> Cmdline:
    """Read the command line ``text`` (from ``path``, named in messages) into a :class:`Cmdline`."""
    where = Where(path, 1)
    words, init_args = split_cmdline(text)
    cmd = Cmdline(where=where, init_args=tuple(init_args))
    for word in words:
        key, eq, value = word.partition("=")
        _apply(cmd, key, eq == "=", value, word, where)
    return cmd


def _apply(cmd: Cmdline, key: str, has: bool, value: str, word: str, where: Where) -> None:
    def need() -> str:
        if not has or not value:
            raise where.error(f"{key}=: expected {key}=VALUE, found {word!r}")
        return value

    def flag(what: str) -> bool:
        return parse_bool(value, where, what) if has else True

    if key == "root":
        cmd.root = parse_devspec(need(), where)
    elif key == "rootfstype":
        cmd.rootfstype = None if need() == "auto" else value
    elif key == "rootflags":
        cmd.rootflags = value
    elif key in ("ro", "rw") and not has:
        cmd.readonly = key == "ro"
    elif key == "init":
        if not need().startswith("/"):
            raise where.error(f"init=: expected an absolute path, found {value!r}")
        cmd.init = value
    elif key == "rd.retry" or key == "rootdelay":
        cmd.device_timeout = parse_seconds(need(), where, key)
    elif key == "rd.timeout":
        cmd.root_timeout = parse_seconds(need(), where, key)
    elif key == "rd.shell":
        cmd.shell = flag(key)
    elif key == "rd.emergency":
        if need() not in _EMERGENCY:
            raise where.error(f"rd.emergency=: expected reboot, poweroff or halt, found {value!r}")
        cmd.emergency = _EMERGENCY[value]
    elif key == "cryptboot.failure":
        try:
            cmd.failure = FailureAction(need())
        except ValueError:
            raise where.error(f"cryptboot.failure=: expected shell, reboot, poweroff or halt, "
                              f"found {value!r}") from None
    elif key == "rd.break":
        point = value if has else "pre-pivot"
        if point not in BREAK_POINTS:
            raise where.error(f"rd.break=: expected one of {', '.join(sorted(BREAK_POINTS))}, "
                              f"found {value!r}")
        cmd.breaks.add(point)
    elif key == "break":
        point = value if has else "y"
        if point not in _MKINITCPIO_BREAKS:
            raise where.error(f"break=: expected premount, postmount or y, found {value!r}")
        cmd.breaks.add(_MKINITCPIO_BREAKS[point])
    elif key == "rd.auto":
        cmd.auto = flag(key)
    elif key in ("rd.debug", "cryptboot.debug"):
        cmd.debug = flag(key)
    elif key == "cryptboot.tries":
        cmd.tries = parse_uint(need(), where, key)
    elif key == "cryptboot.timeout":
        cmd.prompt_timeout = parse_seconds(need(), where, key)
    elif key == "cryptboot.cgd":
        cmd.cgd.append(_cgd(need(), word, where))
    elif key in ("cryptdevice", "cryptkey", "crypto", "cryptopts"):
        _arch_debian(cmd, key, value if has else "", word, where)
    elif key.startswith("rd.luks") or key.startswith("luks"):
        _luks(cmd, key, has, value, word, where)
    elif key in ("modprobe.blacklist", "rd.driver.blacklist"):
        cmd.module_blacklist += [module_name(m) for m in need().split(",") if m]
    elif key in netconf.KEYS:
        netconf.apply(cmd.net, key, has, value, word, where)
    elif key.removeprefix("rd.").removeprefix("vconsole.") in _VCONSOLE_KEYS and (
            key.startswith(("rd.vconsole.", "vconsole."))):
        cmd.vconsole[key] = (value, word)   # issue 15: see config/vconsole.py
    elif key in STACK_KEYS:
        apply_stack(cmd.stack, key, has, value, word, where, cmd.warnings)
    elif key in _UNIMPLEMENTED or key.startswith(_UNIMPLEMENTED_PREFIXES):
        cmd.warnings.append(f"{where}: {word}: not implemented by cryptboot; ignored")
    elif key.startswith("cryptboot."):
        cmd.warnings.append(f"{where}: {word}: unknown cryptboot option; ignored "
                            "(see docs/plan.md)")
    elif key.startswith("rd."):
        cmd.warnings.append(f"{where}: {word}: a dracut option cryptboot does not know; ignored")
    elif "." in key and not key.startswith(_NOT_MODULES):
        # a module parameter, as modprobe reads them; used if the image loads that module
        module, _, param = key.partition(".")
        if module and param:
            cmd.module_params.append((module_name(module), f"{param}={value}" if has
                                      else param))
    # anything else belongs to the kernel or the real init


def _luks(cmd: Cmdline, key: str, has: bool, value: str, word: str, where: Where) -> None:
    def need() -> str:
        if not has or not value:
            raise where.error(f"{key}=: expected {key}=VALUE, found {word!r}")
        return value

    short = key.removeprefix("rd.")
    if short == "luks":
        cmd.luks = parse_bool(value, where, key) if has else True
    elif short == "luks.crypttab":
        cmd.crypttab = parse_bool(value, where, key) if has else True
    elif short == "luks.uuid":
        text = need()
        keysource = text.startswith("keysource:")
        uuid, prefix = _luks_uuid(text.removeprefix("keysource:"), where, key)
        cmd.requests.append(LuksRequest(uuid, prefix, None, keysource, word))
    elif short == "luks.name":
        uuid_text, eq, name = need().partition("=")
        if not eq:
            raise where.error(f"{key}=: expected {key}=UUID=NAME, found {word!r}")
        uuid, prefix = _luks_uuid(uuid_text, where, key)
        cmd.requests.append(LuksRequest(uuid, prefix, check_name(name, where), False, word))
    elif short == "luks.data":
        uuid_text, eq, dev = need().partition("=")
        if not eq:
            raise where.error(f"{key}=: expected {key}=UUID=DEVICE, found {word!r}")
        uuid, _ = _luks_uuid(uuid_text, where, key)
        cmd.data[uuid] = (parse_devspec(dev, where), word)
    elif short == "luks.key":
        k = _luks_key(need(), word, where)
        if k.key.path is not None and k.key.path.endswith((".gpg", ".img")):
            cmd.warnings.append(f"{where}: {word}: GPG-encrypted (.gpg) and loop-image (.img) key "
                                "files of dracut are not implemented; the file is used as is")
        cmd.keys.append(k)
    elif short == "luks.options":
        text = need()
        end = _uuid_eq(text)
        opts = parse_options(text[end:], where)
        cmd.warnings += [f"{w} ({word})" for w in opts.warnings]
        if end:
            uuid, _ = _luks_uuid(text[:end - 1], where, key)
            cmd.uuid_options[uuid] = (opts, word)
        else:
            cmd.default_options = (opts, word)
    elif short == "luks.allow-discards":
        if has and value == "0":
            return
        if has and value not in ("", "1"):
            cmd.discard_uuids.append(_luks_uuid(value, where, key)[0])
        else:
            cmd.discard_all = True
    elif short == "luks.timeout":
        cmd.prompt_timeout = parse_seconds(need(), where, key)
    elif short in _UNIMPLEMENTED or f"rd.{short}" in _UNIMPLEMENTED:
        cmd.warnings.append(f"{where}: {word}: not implemented by cryptboot; ignored")
    else:
        cmd.warnings.append(f"{where}: {word}: unknown LUKS option; ignored")


def _luks_key(text: str, word: str, where: Where) -> CmdlineKey:
    """systemd ``[UUID=]FILE[:KEYDEV]`` or dracut ``KEYPATH[:KEYDEV[:LUKSDEV]]``."""
    end = _uuid_eq(text)
    if end and len(text) > end:
        uuid, _ = _luks_uuid(text[:end - 1], where, "rd.luks.key")
        path, dev = split_file_device(text[end:], where, allow_prefix=True)
        return CmdlineKey(_file_key(path, dev, word, where), uuid=uuid, param=word)
    pos = text.find(":")
    while pos != -1 and not is_devspec(text[pos + 1:]):
        pos = text.find(":", pos + 1)
    if pos == -1:
        return CmdlineKey(_file_key(text, None, word, where), param=word)
    path, tail = text[:pos], text[pos + 1:]
    luksdev: DeviceSpec | None = None
    cut = tail.find(":")
    while cut != -1:
        left, right = tail[:cut], tail[cut + 1:]
        if is_devspec(left) and is_devspec(right):
            luksdev = parse_devspec(right, where, allow_prefix=True)
            tail = left
            break
        cut = tail.find(":", cut + 1)
    dev = None if tail == "/" else parse_devspec(tail, where, allow_prefix=True)
    return CmdlineKey(_file_key(path, dev, word, where), luksdev=luksdev, param=word)


def _file_key(path: str, dev: DeviceSpec | None, word: str, where: Where) -> KeySource:
    if not path or (dev is None and not path.startswith("/")):
        raise where.error(f"{word}: expected an absolute key file path, found {path!r}")
    if dev is None:
        return KeySource(KeyKind.FILE, path=path)
    return KeySource(KeyKind.DEVFILE, path=path if path.startswith("/") else "/" + path,
                     device=dev)


def _cgd(text: str, word: str, where: Where) -> Entry:
    parts = text.split(":")
    if len(parts) < 3 or not parts[0] or not parts[-1] or not parts[1]:
        raise where.error(f"cryptboot.cgd=: expected NAME:DEVICE:PARAMSFILE, found {word!r}")
    name, params, dev = parts[0], parts[-1], ":".join(parts[1:-1])
    check_name(name, where)
    return Entry(name, parse_devspec(dev, where), (),
                 {"type": CryptType.CGD, "cgd_params": params}, where)


def _arch_debian(cmd: Cmdline, key: str, value: str, word: str, where: Where) -> None:
    if key == "cryptopts":
        cmd.cryptopts = cmd.cryptopts if cmd.cryptopts is not None else []
        if value:
            cmd.cryptopts.append(_cryptopts(value, word, where))
        return
    if not value:
        raise where.error(f"{key}=: expected {key}=VALUE, found {word!r}")
    if key == "cryptdevice":
        dev, name, opts = (_split_escaped(value, ":", 2) + ["", ""])[:3]
        if not dev or not name:
            raise where.error(f"cryptdevice=: expected DEVICE:NAME[:OPTIONS], found {word!r}")
        entry = make_entry(name, dev, "none", "", where)
        fields = dict(entry.options)
        warnings = list(entry.warnings)
        for opt in filter(None, opts.split(",")):
            if opt in ("allow-discards", "discard"):
                fields["discard"] = True
            elif opt.startswith("sector-size="):
                fields.update(parse_options(opt, where).fields)
            elif opt in ("no-read-workqueue", "perf-no_read_workqueue", "no-write-workqueue",
                         "perf-no_write_workqueue"):
                warnings.append(f"{where}: cryptdevice option '{opt}' is not implemented by "
                                "cryptboot; ignored")
            else:
                warnings.append(f"{where}: unknown cryptdevice option '{opt}'; ignored")
        cmd.cryptdevices.append(Entry(entry.name, entry.source, (), fields, where,
                                      tuple(warnings)))
    elif key == "cryptkey":
        cmd.cryptkey = (_cryptkey(value, word, where), word)
    else:  # crypto=hash:cipher:keysize:offset:skip
        parts = _split_escaped(value, ":", 4)
        if len(parts) != 5:
            raise where.error(f"crypto=: expected HASH:CIPHER:KEYSIZE:OFFSET:SKIP (5 fields, "
                              f"some may be empty), found {word!r}")
        crypto: dict[str, object] = {"type": CryptType.PLAIN}
        for name, text in zip(("hash", "cipher", "key_size", "offset", "skip"), parts,
                              strict=True):
            if text:
                crypto[name] = text if name in ("hash", "cipher") else \
                    parse_uint(text, where, f"crypto= {name}")
        cmd.crypto = crypto


def _cryptkey(value: str, word: str, where: Where) -> KeySource:
    """mkinitcpio: ``rootfs:PATH``, ``DEVICE:FSTYPE:PATH`` or ``DEVICE:OFFSET:SIZE``."""
    parts = _split_escaped(value, ":", 2)
    if parts[0] == "rootfs" and len(parts) == 2 and parts[1].startswith("/"):
        return KeySource(KeyKind.FILE, path=parts[1])
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
        raise where.error(f"cryptkey=: expected rootfs:PATH, DEVICE:FSTYPE:PATH or "
                          f"DEVICE:OFFSET:SIZE, found {word!r}")
    dev = parse_devspec(parts[0], where)
    if is_uint(parts[1]):
        return KeySource(KeyKind.DEVRAW, device=dev, offset=int(parts[1]),
                         size=parse_uint(parts[2], where, "cryptkey= size"))
    fstype = None if parts[1] == "auto" else parts[1]
    path = parts[2] if parts[2].startswith("/") else "/" + parts[2]
    return KeySource(KeyKind.DEVFILE, path=path, device=dev, fstype=fstype)


def _cryptopts(value: str, word: str, where: Where) -> Entry:
    """Debian: ``target=NAME,source=DEVICE,key=KEY,OPTIONS`` (target defaults to cryptroot)."""
    target, source, key = "cryptroot", "", "none"
    rest: list[str] = []
    for item in value.split(","):
        if item.startswith("target="):
            target = item[7:]
        elif item.startswith("source="):
            source = item[7:]
        elif item.startswith("key="):
            key = item[4:]
        elif item:
            rest.append(item)
    if not source:
        raise where.error(f"cryptopts=: expected a source=DEVICE item, found {word!r}")
    return make_entry(target, source, key, ",".join(rest), where)
