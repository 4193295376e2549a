"""The network and SSH words of the kernel command line (issue 14).

``ip=`` follows the kernel's syntax (Documentation/admin-guide/nfs/nfsroot.rst)::

    ip=CLIENT:SERVER:GATEWAY:NETMASK:HOSTNAME:DEVICE:AUTOCONF:DNS0:DNS1:NTP0
    ip=dhcp | on | any | off | none | dhcp6

with dracut's ``ip=DEVICE:dhcp`` form. A static address needs CLIENT and NETMASK (dotted or a
prefix length) with AUTOCONF empty, ``none`` or ``off``; an empty CLIENT with AUTOCONF ``dhcp``,
``on``, ``any``, ``bootp`` or ``both`` asks for DHCP on DEVICE (every interface when empty).
``rd.neednet=1`` brings the network up even when nothing else needs it and keeps it up for the
real system; ``nameserver=`` adds a DNS server. ``cryptboot.ssh=1`` starts the SSH unlock,
``cryptboot.ssh.port=`` (22) and ``cryptboot.ssh.shell=1`` (a shell, for debugging) tune it.
"""

from __future__ import annotations

from cryptboot.config.model import NetConfig, NetMethod, NetPlan, SshPlan
from cryptboot.config.values import Where, parse_bool, parse_seconds, parse_uint

KEYS = frozenset({"ip", "rd.neednet", "nameserver", "cryptboot.net.timeout", "cryptboot.ssh",
                  "cryptboot.ssh.port", "cryptboot.ssh.shell"})
_DHCP = {"dhcp": NetMethod.DHCP, "on": NetMethod.DHCP, "any": NetMethod.DHCP,
         "bootp": NetMethod.DHCP, "both": NetMethod.DHCP, "dhcp6": NetMethod.DHCP6,
         "auto6": NetMethod.DHCP6}
_IFACE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-@")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")


class NetWords:
    """What the command line says about the network and SSH; last word wins, ``ip=`` adds up."""

    def __init__(self) -> None:
        self.configs: list[NetConfig] = []
        self.need = False
        self.nameservers: list[str] = []
        self.timeout = 30.0
        self.ssh = False
        self.port = 22
        self.shell = False

    def plans(self) -> tuple[NetPlan, SshPlan]:
        return (NetPlan(tuple(self.configs), self.need, tuple(self.nameservers), self.timeout),
                SshPlan(self.ssh, self.port, self.shell))


def apply(words: NetWords, key: str, has: bool, value: str, word: str, where: Where) -> None:
    """One word whose key is in :data:`KEYS`."""
    if key in ("rd.neednet", "cryptboot.ssh", "cryptboot.ssh.shell"):
        flag = parse_bool(value, where, key) if has else True
        if key == "rd.neednet":
            words.need = flag
        elif key == "cryptboot.ssh":
            words.ssh = flag
        else:
            words.shell = flag
        return
    if not has or not value:
        raise where.error(f"{key}=: expected {key}=VALUE, found {word!r}")
    if key == "ip":
        words.configs.append(parse_ip(value, word, where))
    elif key == "nameserver":
        words.nameservers.append(_ipv4(value, where, f"{word}: the server"))
    elif key == "cryptboot.net.timeout":
        words.timeout = parse_seconds(value, where, key)
    else:
        port = parse_uint(value, where, key)
        if not 0 < port < 65536:
            raise where.error(f"{key}=: expected a TCP port (1-65535), found {value!r}")
        words.port = port


def parse_ip(value: str, word: str, where: Where) -> NetConfig:
    """One ``ip=`` value (see the module's docstring)."""
    if ":" not in value:
        if value in ("off", "none"):
            return NetConfig(NetMethod.OFF)
        if value in _DHCP:
            return NetConfig(_DHCP[value])
        raise where.error(f"ip=: expected dhcp, on, any, dhcp6, off, none, DEVICE:dhcp or "
                          f"CLIENT::GATEWAY:NETMASK:HOSTNAME:DEVICE:none, found {word!r}")
    if "[" in value:
        raise where.error(f"{word}: static IPv6 addresses are not implemented by cryptboot "
                          "(use ip=dhcp6 or IPv4)")
    fields = value.split(":")
    if fields[0] and fields[1] in _DHCP:  # dracut: DEVICE:dhcp[:MTU[:MAC]] (MAC has colons)
        return NetConfig(_DHCP[fields[1]], device=_iface(fields[0], where, word))
    if len(fields) > 10:
        raise where.error(f"ip=: expected at most 10 fields (CLIENT:SERVER:GATEWAY:NETMASK:"
                          f"HOSTNAME:DEVICE:AUTOCONF:DNS0:DNS1:NTP0), found {len(fields)} in "
                          f"{word!r}")
    fields += [""] * (10 - len(fields))
    client, _server, gateway, netmask, hostname, device, auto, dns0, dns1, _ntp = fields
    device = _iface(device, where, word) if device else ""
    if hostname and (not _HOST_CHARS.issuperset(hostname) or len(hostname) > 64):
        raise where.error(f"{word}: expected a host name (letters, digits, '.', '-'), found "
                          f"{hostname!r}")
    dns = tuple(_ipv4(d, where, f"{word}: DNS server") for d in (dns0, dns1) if d)
    gw = _ipv4(gateway, where, f"{word}: the gateway") if gateway else ""
    if auto in ("", "off", "none") and client:
        if not netmask:
            raise where.error(f"{word}: a static address needs a NETMASK (4th field, e.g. "
                              "255.255.255.0 or 24)")
        return NetConfig(NetMethod.STATIC, device, _ipv4(client, where, f"{word}: the address"),
                         _prefix(netmask, where, word), gw, hostname, dns)
    if auto in ("off", "none"):
        raise where.error(f"{word}: autoconf {auto} needs a CLIENT address (1st field)")
    if auto == "" or auto in _DHCP:
        return NetConfig(_DHCP.get(auto, NetMethod.DHCP), device, hostname=hostname, dns=dns)
    raise where.error(f"{word}: autoconf {auto!r} is not implemented by cryptboot (expected "
                      "none, off, dhcp, on, any or dhcp6)")


def _iface(name: str, where: Where, word: str) -> str:
    if not name or len(name) > 15 or not _IFACE_CHARS.issuperset(name):
        raise where.error(f"{word}: expected an interface name (at most 15 letters, digits, "
                          f"'_', '.', '-'), found {name!r}")
    return name


def _ipv4(text: str, where: Where, what: str) -> str:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        raise where.error(f"{what}: expected an IPv4 address (a.b.c.d), found {text!r}")
    return ".".join(str(int(p)) for p in parts)


def _prefix(text: str, where: Where, word: str) -> int:
    if text.isdigit() and int(text) <= 32:
        return int(text)
    mask = _ipv4(text, where, f"{word}: the netmask")
    bits = int.from_bytes(bytes(int(p) for p in mask.split(".")), "big")
    n = bin(bits).count("1")
    if bits != ((1 << 32) - 1) ^ ((1 << (32 - n)) - 1):
        raise where.error(f"{word}: the netmask {text} is not contiguous (e.g. 255.255.255.0)")
    return n
