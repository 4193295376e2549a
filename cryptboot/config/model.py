"""The typed, frozen boot plan: the contract between the config layer and the rest.

Text (``/proc/cmdline``, ``/etc/crypttab``) is parsed once into these values by
``cryptboot.config.plan.build_plan``; nothing later re-reads the text.

The records are NamedTuples for type checkers and :class:`cryptboot.record.Record` at run time,
not frozen dataclasses: just as immutable and typed, but creating them imports neither
``dataclasses`` (with ``inspect``, ``ast``, ``dis``, ``tokenize``) nor ``typing``, which under
QEMU TCG, where imports are 10-30x slower than natively, is ~0.1 s of every boot each.
Tuple semantics to keep in mind: change one with ``x._replace(...)``, list the fields with
``type(x)._fields``, and a record compares equal to a plain tuple of the same values.
"""

from __future__ import annotations

from enum import StrEnum

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple
else:  # typing costs ~35 ms per boot under emulation: see cryptboot.record
    from cryptboot.record import Record as NamedTuple


class SpecKind(StrEnum):
    UUID = "UUID"            # filesystem / LUKS UUID (ID_FS_UUID)
    PARTUUID = "PARTUUID"    # GPT/MBR partition UUID (ID_PART_ENTRY_UUID)
    LABEL = "LABEL"          # filesystem label (ID_FS_LABEL)
    PARTLABEL = "PARTLABEL"  # GPT partition name (ID_PART_ENTRY_NAME)
    ID = "ID"                # a /dev/disk/by-id/ name
    PATH = "PATH"            # a device node or a /dev/disk/by-*/ link


class DeviceSpec(NamedTuple):
    """Which block device: ``kind`` and ``value`` (UUIDs lower-case, dashed when complete).

    ``prefix`` is true for dracut's ``rd.luks.uuid`` prefix matching.
    """

    kind: SpecKind
    value: str
    prefix: bool = False

    def __str__(self) -> str:
        if self.kind is SpecKind.PATH:
            return self.value
        return f"{self.kind.value}={self.value}" + ("*" if self.prefix else "")


class KeyKind(StrEnum):
    FILE = "file"        # a keyfile inside the image (path)
    DEVFILE = "devfile"  # a keyfile on another device (device, path, fstype?), mounted read-only
    DEVRAW = "devraw"    # raw bytes on another device (device, offset, size) - mkinitcpio form
    CACHED = "cached"    # a passphrase already typed for an earlier volume
    PROMPT = "prompt"    # ask at the console(s)
    # --- issue 13: LUKS2 tokens, found in the header once the device is there ---
    CLEVIS = "clevis"    # a clevis token (tang, sss pins): cryptboot.keys.clevis
    TPM2 = "tpm2"        # a systemd-tpm2 token (systemd-cryptenroll): cryptboot.keys.tpm2
    TPM2_PIN = "tpm2-pin"  # a systemd-tpm2 token with a PIN: asked at the prompt, counts a try


class KeySource(NamedTuple):
    kind: KeyKind
    path: str | None = None
    device: DeviceSpec | None = None
    fstype: str | None = None
    offset: int = 0            # bytes to skip in the key material (keyfile-offset)
    size: int | None = None    # bytes to read (keyfile-size); None = all
    timeout: float | None = None  # how long to wait for ``device`` (keyfile-timeout)
    # --- issue 13 ---
    token: int | None = None   # CLEVIS / TPM2: the LUKS2 token's number in the header


class CryptType(StrEnum):
    LUKS = "luks"      # LUKS1 or LUKS2, whichever the header says
    PLAIN = "plain"
    BITLK = "bitlk"
    TCRYPT = "tcrypt"
    CGD = "cgd"        # NetBSD cgd, opened through dm-crypt plain mode where possible


class VolumeOptions(NamedTuple):
    type: CryptType = CryptType.LUKS
    cipher: str | None = None
    key_size: int | None = None        # size= (bits)
    hash: str | None = None
    offset: int | None = None          # offset= (512-byte sectors)
    skip: int | None = None            # skip= (512-byte sectors of IV)
    sector_size: int | None = None
    key_slot: int | None = None
    header: str | None = None          # detached header path (inside ``header_device`` if set)
    header_device: DeviceSpec | None = None
    discard: bool = False
    readonly: bool = False
    noauto: bool = False
    nofail: bool = False
    tries: int = 3                     # 0 = forever
    timeout: float = 0.0               # prompt timeout, 0 = forever
    device_timeout: float | None = None  # x-systemd.device-timeout; None = the plan's, 0 = forever
    headless: bool = False
    cgd_params: str | None = None      # cgd=PARAMSFILE
    initramfs: bool = False            # Debian "initramfs" / systemd "x-initrd.attach"
    # --- added by the config layer (issue 3); all have defaults ---
    keysource: bool = False            # dracut keysource:UUID: unlocked first, to hold keys
    # --- issue 13: TPM2 / tang tokens (systemd's crypttab options) ---
    token_timeout: float = 30.0        # token-timeout=: how long a token may wait, 0 = forever
    tpm2_device: str | None = None     # tpm2-device=auto|PATH (None: auto when a token exists)
    tpm2_pcrs: str | None = None       # tpm2-pcrs= (for enrolment; the token names its PCRs)
    tpm2_pin: bool = False             # tpm2-pin=yes: ask for the TPM2 PIN
    netdev: bool = False               # _netdev: needs the network (the initramfs brings it up)


class Volume(NamedTuple):
    name: str                       # the mapping name, /dev/mapper/NAME
    source: DeviceSpec
    keys: tuple[KeySource, ...]     # in the order they will be tried
    options: VolumeOptions = VolumeOptions()  # immutable, so one shared default is safe
    origin: str = ""                # where it came from: "cmdline: PARAM" or "FILE:LINE"
    # True for a partial dracut rd.luks.uuid: the mapping is named luks-<UUID of the device
    # found>, and ``name`` holds the planned form luks-<prefix>.
    name_from_device: bool = False


class Root(NamedTuple):
    spec: DeviceSpec | None         # None: no root= given
    fstype: str | None = None       # rootfstype=, None = probe
    readonly: bool = True           # ro (default) / rw
    flags: str = ""                 # rootflags=, passed to mount(8) -o


# Names accepted by rd.break= (dracut's hook points); a plain rd.break means "pre-pivot"
# (just before the hand-off). mkinitcpio's break=premount / break=postmount map to
# "pre-mount" / "pre-pivot".
BREAK_POINTS: frozenset[str] = frozenset({
    "cmdline", "pre-udev", "pre-trigger", "initqueue", "pre-mount", "mount", "pre-pivot",
    "cleanup",
})


class FailureAction(StrEnum):
    SHELL = "shell"
    REBOOT = "reboot"
    POWEROFF = "poweroff"
    HALT = "halt"


# --- issue 14: the initramfs network and SSH unlock (records used by Plan, below) ---


class NetMethod(StrEnum):
    DHCP = "dhcp"        # ip=dhcp, ip=on, ip=any, ip=IFACE:dhcp: busybox udhcpc
    DHCP6 = "dhcp6"      # ip=dhcp6: busybox udhcpc6 (when the image's busybox has it)
    STATIC = "static"    # ip=CLIENT:SERVER:GW:NETMASK:HOSTNAME:IFACE:none[:DNS0[:DNS1]]
    OFF = "off"          # ip=off / ip=none: no network from this word


class NetConfig(NamedTuple):
    """One ``ip=`` word (the kernel's nfsroot.txt syntax, with dracut's ``IFACE:dhcp``)."""

    method: NetMethod
    device: str = ""            # "": every interface (dhcp), the first one found (static)
    address: str = ""           # static: the client address
    prefix: int = 0             # static: netmask as a prefix length
    gateway: str = ""
    hostname: str = ""
    dns: tuple[str, ...] = ()   # static: DNS0, DNS1


class NetPlan(NamedTuple):
    """The initramfs network: brought up only when something needs it (see
    :func:`cryptboot.network.required`)."""

    configs: tuple[NetConfig, ...] = ()  # ip= words in order; none given: DHCP on every NIC
    need: bool = False                   # rd.neednet=1: bring it up, and keep it at the hand-off
    nameservers: tuple[str, ...] = ()    # nameserver= (dracut), added to /etc/resolv.conf
    timeout: float = 30.0                # cryptboot.net.timeout=: wait for a NIC and an address


class SshPlan(NamedTuple):
    """Remote unlock over SSH (dropbear, :mod:`cryptboot.ssh`)."""

    enabled: bool = False   # cryptboot.ssh=1 (an image built with authorized keys sets it)
    port: int = 22          # cryptboot.ssh.port=
    shell: bool = False     # cryptboot.ssh.shell=1: a shell instead of the forced prompt command
class Vconsole(NamedTuple):
    """The console's keyboard layout and font (issue 15): names as ``loadkeys`` / ``setfont``
    take them, each with where it came from ("/etc/vconsole.conf:2", "cmdline:
    rd.vconsole.keymap=de"). ``kmap`` is a console-setup keymap file (Debian's
    ``/etc/console-setup/cached_*.kmap.gz``) compiled instead of looking ``keymap`` up."""

    keymap: str | None = None
    keymap_from: str = ""
    toggle: str | None = None           # KEYMAP_TOGGLE: a second keymap loaded on top
    toggle_from: str = ""
    font: str | None = None
    font_from: str = ""
    kmap: str | None = None


class Plan(NamedTuple):
    volumes: tuple[Volume, ...]
    root: Root
    init: str = "/sbin/init"
    init_args: tuple[str, ...] = ()
    device_timeout: float = 180.0     # rd.retry: how long to wait for a device
    root_timeout: float = 0.0         # rd.timeout: 0 = forever
    failure: FailureAction = FailureAction.SHELL
    breaks: frozenset[str] = frozenset()   # rd.break points
    auto: bool = False                # rd.auto: unlock any LUKS device found, as luks-UUID
    debug: bool = False
    warnings: tuple[str, ...] = ()    # options named but not implemented, with FILE:LINE
    # kernel modules: MODULE.PARAM[=VALUE] words as (module, "param=value"), passed when the
    # image loads MODULE; modprobe.blacklist= / rd.driver.blacklist= names, never loaded
    module_params: tuple[tuple[str, str], ...] = ()
    module_blacklist: frozenset[str] = frozenset()
    # --- issue 14: the initramfs network (shared with tang, issue 13) and SSH unlock ---
    network: NetPlan = NetPlan()     # ip=, rd.neednet=, nameserver=
    ssh: SshPlan = SshPlan()         # cryptboot.ssh=, cryptboot.ssh.port=, cryptboot.ssh.shell=
    # --- issue 15: the console's keymap and font ---
    vconsole: Vconsole = Vconsole()
    # --- issue 12: stacked storage (LVM, md RAID, btrfs) and resume; all have defaults ---
    # storage layers in play besides crypt, each used only when its tool is in the image
    layers: tuple[str, ...] = ("lvm", "md", "btrfs")
    lvm_vgs: tuple[str, ...] = ()        # rd.lvm.vg=: only these VGs are activated
    lvm_lvs: tuple[str, ...] = ()        # rd.lvm.lv=VG/LV: only these LVs are activated
    md_uuids: tuple[str, ...] = ()       # rd.md.uuid=: only these arrays are assembled
    md_conf: bool = True                 # rd.md.conf=0: ignore the image's mdadm.conf
    resume: DeviceSpec | None = None     # resume=: the swap holding a hibernation image
    resume_offset: int = 0               # resume_offset=: pages into a swap file
