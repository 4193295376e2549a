"""Table-driven: every example line of the peers' documents, with the plan it must give.

Sources (facts only; the lines below are written for these tests):
- dracut.cmdline(7): root= forms, rootfstype=, rd.auto, rd.emergency/rd.shell, rd.retry,
  rd.timeout, rd.break, the crypto LUKS section (rd.luks, .uuid, .allow-discards, .crypttab,
  .timeout, .key and the keysource example), rd.vconsole.keymap.
- systemd-cryptsetup-generator(8) (systemd 252): luks=, luks.crypttab=, luks.uuid=, luks.name=,
  luks.data=, luks.key=, luks.options=, with the detached-header and key-device examples;
  TEST-24-CRYPTSETUP's command line.
- crypttab(5) of systemd: the five-line example, the TPM2/FIDO2/PKCS#11 lines.
- crypttab(5) of Debian cryptsetup 2.6 and README.initramfs: the example block, cryptopts=,
  keyscript=passdev, the exotic keyscript line.
- mkinitcpio's encrypt hook (help text and hook): cryptdevice=, cryptkey= (three forms),
  crypto=, its option list, escaped colons; break= of mkinitcpio's init.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from cryptboot.config.model import (
    DeviceSpec,
    FailureAction,
    KeyKind,
    KeySource,
    Plan,
    SpecKind,
    Vconsole,
    Volume,
    VolumeOptions,
)
from cryptboot.config.plan import build_plan
from cryptboot.errors import ConfigError

U = "b40f1abf-2a53-400a-889a-2eccc27eaa40"
U2 = "2505567a-9e27-4efe-a4d5-15ad146c258b"
U3 = "3f5ad593-4546-4a94-a374-bcfb68aa11f7"
CP = ["cached", "prompt"]


def key_text(k: KeySource) -> str:
    if k.kind in (KeyKind.CACHED, KeyKind.PROMPT):
        return k.kind.value
    text = f"{k.kind.value} {k.path}" if k.kind is not KeyKind.DEVRAW else "devraw"
    if k.device is not None:
        text += f" on {k.device}"
    if k.fstype:
        text += f" fstype={k.fstype}"
    if k.offset or k.kind is KeyKind.DEVRAW:
        text += f" offset={k.offset}"
    if k.size is not None:
        text += f" size={k.size}"
    if k.timeout is not None:
        text += f" timeout={k.timeout:g}"
    return text


def summarize(v: Volume) -> tuple[str, str, str, list[str], dict[str, Any]]:
    """(name, device, type, keys, options that differ from the defaults)."""
    default = VolumeOptions()
    opts = {name: value for name, value, dflt in zip(v.options._fields, v.options, default,
                                                      strict=True)
            if name != "type" and value != dflt}
    if v.name_from_device:
        opts["name_from_device"] = True
    return v.name, str(v.source), v.options.type.value, [key_text(k) for k in v.keys], opts


@dataclass
class Case:
    id: str
    cmdline: str
    crypttab: str | None = None
    volumes: list[tuple[str, str, str, list[str], dict[str, Any]]] = field(default_factory=list)
    root: str | None = None
    plan: dict[str, Any] = field(default_factory=dict)   # other Plan attributes
    warns: list[str] = field(default_factory=list)      # substrings of some warning


def V(name: str, source: str, ctype: str = "luks", keys: list[str] | None = None,
      **opts: Any) -> tuple[str, str, str, list[str], dict[str, Any]]:
    return name, source, ctype, CP if keys is None else keys, opts


DRACUT = [
    Case("root-dev", "root=/dev/sda1", root="/dev/sda1"),
    Case("root-by-path", "root=/dev/disk/by-path/pci-0000:00:1f.1-scsi-0:0:1:0-part1",
         root="/dev/disk/by-path/pci-0000:00:1f.1-scsi-0:0:1:0-part1"),
    Case("root-by-label", "root=/dev/disk/by-label/Root", root="LABEL=Root"),
    Case("root-label", "root=LABEL=Root", root="LABEL=Root"),
    Case("root-by-uuid", f"root=/dev/disk/by-uuid/{U3}", root=f"UUID={U3}"),
    Case("root-uuid", f"root=UUID={U3}", root=f"UUID={U3}"),
    Case("root-partuuid", f"root=PARTUUID={U3}", root=f"PARTUUID={U3}"),
    Case("rootfstype", "root=/dev/sda1 rootfstype=ext3 rootflags=noatime rw",
         root="/dev/sda1", plan={"root.fstype": "ext3", "root.flags": "noatime",
                                 "root.readonly": False}),
    Case("init", "root=/dev/sda1 init=/usr/lib/systemd/systemd",
         root="/dev/sda1", plan={"init": "/usr/lib/systemd/systemd", "init_args": ()}),
    Case("rd.auto", f"rd.auto root=/dev/mapper/luks-{U3}", root=f"/dev/mapper/luks-{U3}",
         plan={"auto": True}),
    Case("rd.emergency-needs-rd.shell=0", "root=/dev/sda1 rd.shell=0 rd.emergency=reboot",
         root="/dev/sda1", plan={"failure": FailureAction.REBOOT}),
    Case("rd.emergency-alone", "root=/dev/sda1 rd.emergency=poweroff", root="/dev/sda1",
         plan={"failure": FailureAction.SHELL},
         warns=["rd.emergency=poweroff takes effect only with rd.shell=0"]),
    Case("rd.shell=0-default-halt", "root=/dev/sda1 rd.shell=0", root="/dev/sda1",
         plan={"failure": FailureAction.HALT}),
    Case("rd.retry-rd.timeout", "root=/dev/sda1 rd.retry=30 rd.timeout=0", root="/dev/sda1",
         plan={"device_timeout": 30.0, "root_timeout": 0.0}),
    Case("rd.break", "root=/dev/sda1 rd.break", root="/dev/sda1",
         plan={"breaks": frozenset({"pre-pivot"})}),
    Case("rd.break-points", "root=/dev/sda1 " + " ".join(
        f"rd.break={p}" for p in ("cmdline", "pre-udev", "pre-trigger", "initqueue",
                                  "pre-mount", "mount", "pre-pivot", "cleanup")),
         root="/dev/sda1", plan={"breaks": frozenset({
             "cmdline", "pre-udev", "pre-trigger", "initqueue", "pre-mount", "mount",
             "pre-pivot", "cleanup"})}),
    Case("rd.luks=0", "root=/dev/sda1 rd.luks=0", f"c UUID={U3} none luks\n",
         root="/dev/sda1", warns=["rd.luks=0: /etc/crypttab is ignored"]),
    Case("rd.luks.uuid-strips-luks-", f"rd.luks.uuid=luks-{U3} root=/dev/mapper/luks-{U3}",
         volumes=[V(f"luks-{U3}", f"UUID={U3}")], root=f"/dev/mapper/luks-{U3}"),
    Case("rd.luks.uuid-prefix", f"rd.luks.uuid=3f5ad593 root=/dev/mapper/luks-{U3}",
         volumes=[V("luks-3f5ad593", "UUID=3f5ad593*", name_from_device=True)],
         root=f"/dev/mapper/luks-{U3}"),
    Case("rd.luks.uuid-repeated", f"rd.luks.uuid={U3} rd.luks.uuid={U2} root=/dev/sda1",
         volumes=[V(f"luks-{U3}", f"UUID={U3}"), V(f"luks-{U2}", f"UUID={U2}")],
         root="/dev/sda1"),
    Case("rd.luks.allow-discards-uuid",
         f"rd.luks.uuid={U3} rd.luks.uuid={U2} rd.luks.allow-discards=3f5a root=/dev/sda1",
         volumes=[V(f"luks-{U3}", f"UUID={U3}", discard=True), V(f"luks-{U2}", f"UUID={U2}")],
         root="/dev/sda1"),
    Case("rd.luks.allow-discards-all", "rd.luks.allow-discards root=/dev/mapper/a",
         f"a UUID={U3}\nb UUID={U2}\n",
         volumes=[V("a", f"UUID={U3}", discard=True), V("b", f"UUID={U2}", discard=True)],
         root="/dev/mapper/a"),
    Case("rd.luks.crypttab=0", f"rd.luks.crypttab=0 rd.luks.uuid={U3} root=/dev/sda1",
         f"a UUID={U2}\n", volumes=[V(f"luks-{U3}", f"UUID={U3}")], root="/dev/sda1",
         warns=["rd.luks.crypttab=0: /etc/crypttab is ignored"]),
    Case("rd.luks.timeout", "rd.luks.timeout=30 root=/dev/mapper/a",
         f"a UUID={U3}\nb UUID={U2} none timeout=5\n",
         volumes=[V("a", f"UUID={U3}", timeout=30.0), V("b", f"UUID={U2}", timeout=5.0)],
         root="/dev/mapper/a"),
    Case("rd.luks.key-simplest", f"rd.luks.uuid={U3} rd.luks.key=/foo/bar.key root=/dev/sda1",
         volumes=[V(f"luks-{U3}", f"UUID={U3}", keys=["file /foo/bar.key", *CP])],
         root="/dev/sda1"),
    Case("rd.luks.key-keysource",
         "rd.luks.uuid=aaaa rd.luks.uuid=bbbb rd.luks.uuid=keysource:cccc "
         "rd.luks.key=/keyfile:UUID=CCCC root=/dev/sda1",
         volumes=[
             V("luks-cccc", "UUID=cccc*", keysource=True, name_from_device=True),
             V("luks-aaaa", "UUID=aaaa*", keys=["devfile /keyfile on UUID=cccc*", *CP],
               name_from_device=True),
             V("luks-bbbb", "UUID=bbbb*", keys=["devfile /keyfile on UUID=cccc*", *CP],
               name_from_device=True)],
         root="/dev/sda1"),
    Case("rd.luks.key-keysource-named",
         "rd.luks.uuid=aaaa rd.luks.uuid=bbbb rd.luks.uuid=keysource:cccc "
         "rd.luks.key=/keyfile:UUID=CCCC rd.luks.name=cccc=mykeys root=/dev/sda1",
         volumes=[
             V("mykeys", "UUID=cccc*", keysource=True),
             V("luks-aaaa", "UUID=aaaa*", keys=["devfile /keyfile on UUID=cccc*", *CP],
               name_from_device=True),
             V("luks-bbbb", "UUID=bbbb*", keys=["devfile /keyfile on UUID=cccc*", *CP],
               name_from_device=True)],
         root="/dev/sda1"),
    Case("rd.luks.key-luksdev", f"rd.luks.uuid={U3} rd.luks.uuid={U2} "
         f"rd.luks.key=/k:LABEL=usb:UUID={U2} root=/dev/sda1",
         volumes=[V(f"luks-{U3}", f"UUID={U3}"),
                  V(f"luks-{U2}", f"UUID={U2}", keys=["devfile /k on LABEL=usb", *CP])],
         root="/dev/sda1"),
    Case("resume-by-uuid", f"root=/dev/sda1 resume=UUID={U3}", root="/dev/sda1",
         plan={"resume": DeviceSpec(SpecKind.UUID, U3)}),
    Case("resume-by-path", "root=/dev/sda1 "
         "resume=/dev/disk/by-path/pci-0000:00:1f.1-scsi-0:0:1:0-part1", root="/dev/sda1",
         plan={"resume": DeviceSpec(SpecKind.PATH,
                                    "/dev/disk/by-path/pci-0000:00:1f.1-scsi-0:0:1:0-part1")}),
    Case("rd.vconsole.keymap", "root=/dev/sda1 rd.vconsole.keymap=de-latin1-nodeadkeys",
         root="/dev/sda1", plan={"vconsole": Vconsole(
             keymap="de-latin1-nodeadkeys",
             keymap_from="cmdline: rd.vconsole.keymap=de-latin1-nodeadkeys")}),
]

SYSTEMD = [
    Case("luks=no", f"luks=no luks.uuid={U} root=/dev/sda1", f"a UUID={U2}\n", root="/dev/sda1",
         warns=["rd.luks=0: the LUKS volumes named on the command line are not unlocked"]),
    Case("luks.crypttab=no", f"luks.crypttab=no luks.uuid={U} root=/dev/sda1", f"a UUID={U2}\n",
         volumes=[V(f"luks-{U}", f"UUID={U}")], root="/dev/sda1"),
    Case("luks.uuid-takes-crypttab-line", f"luks.uuid={U} root=/dev/mapper/data",
         f"data UUID={U} /etc/data.key discard\nother UUID={U2}\n",
         volumes=[V("data", f"UUID={U}", keys=["file /etc/data.key", *CP], discard=True)],
         root="/dev/mapper/data",
         warns=["/etc/crypttab:2: volume 'other' left out: the command line names"]),
    Case("luks.uuid-alone", f"rd.luks.uuid={U} root=/dev/mapper/luks-{U}",
         volumes=[V(f"luks-{U}", f"UUID={U}")], root=f"/dev/mapper/luks-{U}"),
    Case("luks.uuid-keeps-initrd-lines", f"rd.luks.uuid={U} root=/dev/sda1",
         f"a UUID={U2} none x-initrd.attach\nb /dev/sdc1 none initramfs\nc /dev/sdd1\n",
         volumes=[V("a", f"UUID={U2}", initramfs=True), V("b", "/dev/sdc1", initramfs=True),
                  V(f"luks-{U}", f"UUID={U}")], root="/dev/sda1"),
    Case("luks.name", f"rd.luks.name={U}=cryptdata root=/dev/mapper/cryptdata",
         volumes=[V("cryptdata", f"UUID={U}")], root="/dev/mapper/cryptdata"),
    Case("luks.name-wins-over-crypttab", f"rd.luks.name={U}=root root=/dev/mapper/root",
         f"luks-{U} UUID={U} /k discard\n",
         volumes=[V("root", f"UUID={U}", keys=["file /k", *CP], discard=True)],
         root="/dev/mapper/root"),
    Case("luks.data-detached-header",
         f"rd.luks.uuid={U} rd.luks.options={U}=header=/path/to/luks.hdr rd.luks.data={U}=/dev/sdx "
         "root=/dev/sda1",
         volumes=[V(f"luks-{U}", "/dev/sdx", header="/path/to/luks.hdr")], root="/dev/sda1"),
    Case("luks.key-on-device", f"rd.luks.uuid={U} rd.luks.key={U}=/keyfile:LABEL=keydev "
         "root=/dev/sda1",
         volumes=[V(f"luks-{U}", f"UUID={U}", keys=["devfile /keyfile on LABEL=keydev", *CP])],
         root="/dev/sda1"),
    Case("luks.options-header-on-device",
         f"rd.luks.uuid={U} rd.luks.options={U}=header=/luks.hdr:LABEL=hdrdev "
         f"rd.luks.data={U}=/dev/sdx root=/dev/sda1",
         volumes=[V(f"luks-{U}", "/dev/sdx", header="/luks.hdr",
                    header_device=DeviceSpec(SpecKind.LABEL, "hdrdev"))],
         root="/dev/sda1"),
    Case("luks.options-default", f"luks.uuid={U} luks.uuid={U2} luks.options=discard,tries=5 "
         "root=/dev/mapper/a", f"a UUID={U2}\n",
         volumes=[V("a", f"UUID={U2}"), V(f"luks-{U}", f"UUID={U}", discard=True, tries=5)],
         root="/dev/mapper/a"),
    Case("luks.options-per-uuid-replaces-crypttab", f"luks.options={U2}=readonly root=/dev/sda1",
         f"a UUID={U2} none discard\n",
         volumes=[V("a", f"UUID={U2}", readonly=True)], root="/dev/sda1"),
    Case("TEST-24", f"luks.name={U}=test24_varcrypt luks.key={U}=/keyfile:LABEL=varcrypt_keydev "
         f"luks.options={U}=x-initrd.attach root=LABEL=root",
         volumes=[V("test24_varcrypt", f"UUID={U}",
                    keys=["devfile /keyfile on LABEL=varcrypt_keydev", *CP], initramfs=True)],
         root="LABEL=root"),
]

SYSTEMD_CRYPTTAB = [
    Case("crypttab-example", "root=/dev/mapper/luks",
         f"luks       UUID={U2}\n"
         "swap       /dev/sda7       /dev/urandom       swap\n"
         "truecrypt  /dev/sda2       /etc/container_password  tcrypt\n"
         "hidden     /mnt/tc_hidden  /dev/null    tcrypt-hidden,tcrypt-keyfile=/etc/keyfile\n"
         "external   /dev/sda3       keyfile:LABEL=keydev "
         "keyfile-timeout=10s,cipher=xchacha12\\,aes-adiantum-plain64\n",
         volumes=[
             V("luks", f"UUID={U2}"),
             V("swap", "/dev/sda7", "plain", ["file /dev/urandom", *CP]),
             V("truecrypt", "/dev/sda2", "tcrypt", ["file /etc/container_password", *CP]),
             V("hidden", "/mnt/tc_hidden", "tcrypt", ["file /dev/null", *CP]),
             V("external", "/dev/sda3", "plain",
               ["devfile /keyfile on LABEL=keydev timeout=10", *CP],
               cipher="xchacha12,aes-adiantum-plain64")],
         root="/dev/mapper/luks",
         warns=["/etc/crypttab:2: option 'swap' is not implemented",
                "/etc/crypttab:2: random key /dev/urandom only suits swap or tmp",
                "/etc/crypttab:4: option 'tcrypt-hidden' is not implemented",
                "/etc/crypttab:4: option 'tcrypt-keyfile=/etc/keyfile' is not implemented"]),
    Case("crypttab-tokens", "root=/dev/mapper/mytest",
         "mytest /dev/sdXn - fido2-device=auto\n",
         volumes=[V("mytest", "/dev/sdXn")], root="/dev/mapper/mytest",
         warns=["/etc/crypttab:1: option 'fido2-device=auto' is not implemented"]),
    Case("crypttab-fido2", "root=/dev/sda1", "mytest /dev/sdXn - fido2-device=auto\n",
         volumes=[V("mytest", "/dev/sdXn")], root="/dev/sda1",
         warns=["option 'fido2-device=auto' is not implemented"]),
    Case("crypttab-pkcs11", "root=/dev/sda1", "mytest /dev/sdXn - pkcs11-uri=auto\n",
         volumes=[V("mytest", "/dev/sdXn")], root="/dev/sda1",
         warns=["option 'pkcs11-uri=auto' is not implemented"]),
]

DEBIAN = [
    Case("debian-examples", "root=/dev/mapper/cdisk0",
         "# Encrypted swap device\n"
         "cswap /dev/sda6 /dev/urandom plain,cipher=aes-xts-plain64,size=256,hash=sha1,swap\n"
         "# LUKS by UUID, discard\n"
         "cdisk0 UUID=12345678-9abc-def012345-6789abcdef01 none luks,discard\n"
         "tdisk0 /dev/sr0 none tcrypt,discard\n"
         "cdisk1 /dev/sda2 none plain,cipher=aes-xts-plain64,size=256,hash=sha1,check,"
         "checkargs=ext4,tries=5,discard\n"
         "cdisk2 /dev/sdc1 none plain,cipher=aes-xts-plain64,size=256,hash=sha1,"
         "check=customscript,tries=1,discard\n"
         "cdisk3 /dev/sda3 none plain,cipher=twofish,size=256,hash=ripemd160,discard\n",
         volumes=[
             V("cswap", "/dev/sda6", "plain", ["file /dev/urandom", *CP],
               cipher="aes-xts-plain64", key_size=256, hash="sha1"),
             V("cdisk0", "UUID=12345678-9abc-def012345-6789abcdef01", discard=True),
             V("tdisk0", "/dev/sr0", "tcrypt", discard=True),
             V("cdisk1", "/dev/sda2", "plain", cipher="aes-xts-plain64", key_size=256,
               hash="sha1", tries=5, discard=True),
             V("cdisk2", "/dev/sdc1", "plain", cipher="aes-xts-plain64", key_size=256,
               hash="sha1", tries=1, discard=True),
             V("cdisk3", "/dev/sda3", "plain", cipher="twofish", key_size=256, hash="ripemd160",
               discard=True)],
         root="/dev/mapper/cdisk0",
         warns=["/etc/crypttab:2: option 'swap' is not implemented",
                "/etc/crypttab:6: option 'check' is not implemented",
                "/etc/crypttab:6: option 'checkargs=ext4' is not implemented",
                "/etc/crypttab:7: option 'check=customscript' is not implemented"]),
    Case("readme-plain-root", "root=/dev/mapper/cryptroot",
         "cryptroot /dev/sda2 none cipher=aes-xts-plain64,size=256,hash=sha1\n",
         volumes=[V("cryptroot", "/dev/sda2", "plain", cipher="aes-xts-plain64", key_size=256,
                    hash="sha1")], root="/dev/mapper/cryptroot"),
    Case("readme-luks-root", "root=/dev/mapper/cryptroot",
         "cryptroot /dev/sda2 none luks,discard\ncryptswap /dev/sda2x none luks\n",
         volumes=[V("cryptroot", "/dev/sda2", discard=True), V("cryptswap", "/dev/sda2x")],
         root="/dev/mapper/cryptroot"),
    Case("readme-exotic-keyscript", "root=/dev/mapper/cryptroot",
         "cryptroot /dev/sda2 none luks,discard,keyscript=/usr/local/sbin/cryptkey\n",
         volumes=[V("cryptroot", "/dev/sda2", discard=True)], root="/dev/mapper/cryptroot"),
    Case("readme-passdev", "root=/dev/mapper/cryptroot",
         "cryptroot /dev/sda2 /dev/disk/by-label/myusbkey:/keys/root.key "
         "discard,cipher=aes-xts-plain64,size=256,hash=sha1,keyscript=passdev\n",
         volumes=[V("cryptroot", "/dev/sda2", "plain",
                    ["devfile /keys/root.key on LABEL=myusbkey", *CP], discard=True,
                    cipher="aes-xts-plain64", key_size=256, hash="sha1")],
         root="/dev/mapper/cryptroot"),
    Case("readme-cryptopts", "root=/dev/mapper/crypt0 "
         "cryptopts=target=crypt0,source=/dev/sda1,cipher=aes-xts-plain64,size=256,hash=sha1",
         "other /dev/sdb1\n",
         volumes=[V("crypt0", "/dev/sda1", "plain", cipher="aes-xts-plain64", key_size=256,
                    hash="sha1")], root="/dev/mapper/crypt0",
         warns=["cryptopts= replaces /etc/crypttab"]),
    Case("cryptopts-defaults", "root=/dev/mapper/cryptroot cryptopts=source=UUID="
         f"{U},key=/etc/k,luks cryptopts=target=b,source=/dev/sdb1",
         volumes=[V("cryptroot", f"UUID={U}", keys=["file /etc/k", *CP]), V("b", "/dev/sdb1")],
         root="/dev/mapper/cryptroot"),
    Case("cryptopts-empty-disables", "root=/dev/sda1 cryptopts=", "a /dev/sdb1\n",
         root="/dev/sda1"),
]

MKINITCPIO = [
    Case("cryptdevice", "cryptdevice=/dev/sda2:cryptroot root=/dev/mapper/cryptroot",
         volumes=[V("cryptroot", "/dev/sda2")], root="/dev/mapper/cryptroot"),
    Case("cryptkey-file-on-device", f"cryptdevice=UUID={U}:root root=/dev/mapper/root "
         "cryptkey=LABEL=usbstick:vfat:/secretkey",
         volumes=[V("root", f"UUID={U}", keys=["devfile /secretkey on LABEL=usbstick fstype=vfat",
                                           *CP])], root="/dev/mapper/root"),
    Case("cryptkey-auto-fstype", "cryptdevice=/dev/sda2:root root=/dev/mapper/root "
         "cryptkey=UUID=1234-ABCD:auto:keys/root.key",
         volumes=[V("root", "/dev/sda2", keys=["devfile /keys/root.key on UUID=1234-abcd", *CP])],
         root="/dev/mapper/root"),
    Case("cryptkey-raw", "cryptdevice=/dev/sda2:root root=/dev/mapper/root "
         "cryptkey=/dev/disk/by-id/usb-Flash_123-0:0:2048:512",
         warns=[], root="/dev/mapper/root",
         volumes=[]),  # by-id with a colon must be escaped: see the next case
    Case("cryptkey-raw-escaped", "cryptdevice=/dev/sda2:root root=/dev/mapper/root "
         "cryptkey=/dev/disk/by-id/usb-Flash_123-0\\:0:2048:512",
         volumes=[V("root", "/dev/sda2",
                    keys=["devraw on ID=usb-Flash_123-0:0 offset=2048 size=512", *CP])],
         root="/dev/mapper/root"),
    Case("cryptkey-rootfs", "cryptdevice=/dev/sda2:root root=/dev/mapper/root "
         "cryptkey=rootfs:/crypto_keyfile.bin",
         volumes=[V("root", "/dev/sda2", keys=["file /crypto_keyfile.bin", *CP])],
         root="/dev/mapper/root"),
    Case("cryptdevice-options", f"cryptdevice=UUID={U}:root:allow-discards,sector-size=4096,"
         "no-read-workqueue,bogus root=/dev/mapper/root",
         volumes=[V("root", f"UUID={U}", discard=True, sector_size=4096)],
         root="/dev/mapper/root",
         warns=["cryptdevice option 'no-read-workqueue' is not implemented",
                "unknown cryptdevice option 'bogus'"]),
    Case("crypto-plain", "cryptdevice=/dev/sda2:root root=/dev/mapper/root "
         "crypto=sha512:twofish-xts-plain64:512:0:2048",
         volumes=[V("root", "/dev/sda2", "plain", hash="sha512", cipher="twofish-xts-plain64",
                    key_size=512, offset=0, skip=2048)], root="/dev/mapper/root"),
    Case("cryptdevice-escaped-path",
         "cryptdevice=/dev/disk/by-path/pci-0000\\:00\\:1f.2-ata-1-part2:root "
         "root=/dev/mapper/root",
         volumes=[V("root", "/dev/disk/by-path/pci-0000:00:1f.2-ata-1-part2")],
         root="/dev/mapper/root"),
    Case("cryptdevice-merges-crypttab-line", "cryptdevice=/dev/sda2:root root=/dev/mapper/root",
         "root /dev/sda2 /etc/root.key\nhome /dev/sda3\n",
         volumes=[V("root", "/dev/sda2", keys=["file /etc/root.key", *CP])],
         root="/dev/mapper/root", warns=["/etc/crypttab:2: volume 'home' left out"]),
    Case("break-premount", "root=/dev/sda1 break=premount", root="/dev/sda1",
         plan={"breaks": frozenset({"pre-mount"})}),
    Case("break-y", "root=/dev/sda1 break", root="/dev/sda1",
         plan={"breaks": frozenset({"pre-mount"})}),
]

CRYPTBOOT = [
    Case("crypttab-cgd", "root=/dev/mapper/cgd0", "cgd0 /dev/sdb1 none cgd=/etc/cgd/wd0a\n",
         volumes=[V("cgd0", "/dev/sdb1", "cgd", cgd_params="/etc/cgd/wd0a")],
         root="/dev/mapper/cgd0"),
    Case("cryptboot.cgd", f"cryptboot.cgd=cgd0:UUID={U}:/etc/cgd/wd0a root=/dev/mapper/cgd0",
         volumes=[V("cgd0", f"UUID={U}", "cgd", cgd_params="/etc/cgd/wd0a")],
         root="/dev/mapper/cgd0"),
    Case("cryptboot.tries-timeout-debug", "cryptboot.tries=0 cryptboot.timeout=20 "
         "cryptboot.debug root=/dev/mapper/a", "a /dev/sda2\nb /dev/sdb2 none tries=2\n",
         volumes=[V("a", "/dev/sda2", tries=0, timeout=20.0),
                  V("b", "/dev/sdb2", tries=2, timeout=20.0)],
         root="/dev/mapper/a", plan={"debug": True}),
    Case("cryptboot.failure", "root=/dev/sda1 cryptboot.failure=poweroff", root="/dev/sda1",
         plan={"failure": FailureAction.POWEROFF}),
    Case("headless-no-prompt", "root=/dev/mapper/a", "a /dev/sda2 /k headless\n",
         volumes=[V("a", "/dev/sda2", keys=["file /k", "cached"], headless=True)],
         root="/dev/mapper/a"),
]

ALL = DRACUT + SYSTEMD + SYSTEMD_CRYPTTAB + DEBIAN + MKINITCPIO + CRYPTBOOT


def _attr(plan: Plan, dotted: str) -> Any:
    value: Any = plan
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("case", [c for c in ALL if c.id != "cryptkey-raw"], ids=lambda c: c.id)
def test_documented_example(case: Case) -> None:
    plan = build_plan(case.cmdline, case.crypttab)
    assert [summarize(v) for v in plan.volumes] == case.volumes
    assert (str(plan.root.spec) if plan.root.spec is not None else None) == case.root
    for name, value in case.plan.items():
        assert _attr(plan, name) == value, name
    for text in case.warns:
        assert any(text in w for w in plan.warnings), (text, plan.warnings)


def test_unescaped_colon_in_cryptkey_device_is_an_error() -> None:
    # mkinitcpio reads the fields with IFS=: so a colon in the device must be escaped;
    # unescaped, the size field holds "2048:512", which is not a number
    (case,) = [c for c in ALL if c.id == "cryptkey-raw"]
    with pytest.raises(ConfigError) as e:
        build_plan(case.cmdline, case.crypttab)
    assert "cryptkey=" in str(e.value)


def test_placeholder_device_from_the_fido2_example_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        build_plan("", "mytest /dev/disk/by-uuid/... - fido2-device=auto\n")
    assert str(e.value).startswith("/etc/crypttab:1: expected UUID=")
    assert "'/dev/disk/by-uuid/...'" in str(e.value)
