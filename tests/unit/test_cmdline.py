"""The kernel command line: the kernel's quoting, init's arguments, and each option's values."""

from __future__ import annotations

import pytest

from cryptboot.config.cmdline import parse_cmdline, split_cmdline
from cryptboot.config.model import DeviceSpec, FailureAction, KeyKind, KeySource, SpecKind
from cryptboot.errors import ConfigError


@pytest.mark.parametrize(("text", "words", "init"), [
    ("", [], []),
    ("  ro   quiet\n", ["ro", "quiet"], []),
    ("root=/dev/sda1 ro", ["root=/dev/sda1", "ro"], []),
    # double quotes group words; the quotes around a value are removed
    ('rootflags="a b" ro', ["rootflags=a b", "ro"], []),
    ('"rootflags=a b" ro', ["rootflags=a b", "ro"], []),
    ('"two words" x', ["two words", "x"], []),
    # a quote inside a value (not at its start) is kept, as the kernel keeps it
    ('k=LABEL="KEY FS" x', ['k=LABEL="KEY FS"', "x"], []),
    ('a=b"c d"', ['a=b"c d"'], []),
    # the first '=' splits even inside quotes
    ('k="x=y"', ["k=x=y"], []),
    ("tab\tsep\fand\vmore", ["tab", "sep", "and", "more"], []),
    # '--' ends the kernel's words; the rest goes to init, quoting applies there too
    ('ro -- single "a b" --x', ["ro"], ["single", "a b", "--x"]),
    ("ro --", ["ro"], []),
    ("-- -- x", [], ["--", "x"]),
    ("a=-- b", ["a=--", "b"], []),
    ('unterminated="a b', ["unterminated=a b"], []),
])
def test_split_cmdline(text: str, words: list[str], init: list[str]) -> None:
    assert split_cmdline(text) == (words, init)


def test_last_value_wins_and_ro_rw() -> None:
    c = parse_cmdline("root=/dev/sda1 rw root=LABEL=r ro rw rootfstype=auto rootflags=x,y")
    assert c.root == DeviceSpec(SpecKind.LABEL, "r")
    assert c.readonly is False
    assert c.rootfstype is None            # "auto" means probe
    assert c.rootflags == "x,y"


def test_init_and_args() -> None:
    c = parse_cmdline('init=/usr/lib/systemd/systemd -- --unit=rescue.target "x y"')
    assert c.init == "/usr/lib/systemd/systemd"
    assert c.init_args == ("--unit=rescue.target", "x y")


def test_timeouts_and_units() -> None:
    c = parse_cmdline("rd.retry=30 rd.timeout=2min rd.luks.timeout=1min30s")
    assert (c.device_timeout, c.root_timeout, c.prompt_timeout) == (30.0, 120.0, 90.0)
    assert parse_cmdline("rootdelay=10").device_timeout == 10.0


def test_failure_and_breaks() -> None:
    c = parse_cmdline("rd.shell=0 rd.emergency=poweroff rd.break rd.break=pre-mount break")
    assert c.shell is False and c.emergency is FailureAction.POWEROFF
    assert c.breaks == {"pre-pivot", "pre-mount"}
    assert parse_cmdline("break=postmount").breaks == {"pre-pivot"}
    assert parse_cmdline("cryptboot.failure=reboot").failure is FailureAction.REBOOT


def test_cryptboot_namespace() -> None:
    c = parse_cmdline("cryptboot.tries=0 cryptboot.timeout=45 cryptboot.debug "
                      "cryptboot.cgd=cgd0:/dev/sda2:/etc/cgd/wd0a")
    assert (c.tries, c.prompt_timeout, c.debug) == (0, 45.0, True)
    (cgd,) = c.cgd
    assert (cgd.name, str(cgd.source), cgd.options["cgd_params"]) == ("cgd0", "/dev/sda2",
                                                                      "/etc/cgd/wd0a")
    assert parse_cmdline("cryptboot.debug=0").debug is False


def test_unknown_and_unimplemented_are_warned_not_dropped() -> None:
    c = parse_cmdline("quiet splash console=ttyS0 rd.vconsole.unicode=1 rd.dm.uuid=x "
                      "cryptboot.tires=3 rd.luks.frobnicate=1 rd.whatever rd.lvm.conf=0")
    text = "\n".join(c.warnings)
    for word in ("rd.vconsole.unicode=1", "rd.dm.uuid=x", "cryptboot.tires=3",
                 "rd.luks.frobnicate=1", "rd.whatever", "rd.lvm.conf=0"):
        assert word in text
    assert all(w.startswith("/proc/cmdline:1: ") for w in c.warnings)
    # the kernel's own words are not ours to warn about
    assert "quiet" not in text and "console=" not in text


@pytest.mark.parametrize(("text", "message"), [
    ("rd.retry=soon", "rd.retry: expected a time span in seconds"),
    ("rd.shell=maybe", "rd.shell: expected a boolean"),
    ("rd.emergency=explode", "rd.emergency=: expected reboot, poweroff or halt, found 'explode'"),
    ("rd.break=later", "rd.break=: expected one of cleanup, cmdline"),
    ("break=now", "break=: expected premount, postmount or y, found 'now'"),
    ("init=sbin/init", "init=: expected an absolute path, found 'sbin/init'"),
    ("root=", "root=: expected root=VALUE, found 'root='"),
    ("root=sda1", "expected UUID=, PARTUUID=, LABEL=, PARTLABEL=, ID= or an absolute path"),
    ("rd.luks.uuid=failme", "rd.luks.uuid: expected a LUKS UUID"),
    ("rd.luks.name=aaaa", "rd.luks.name=: expected rd.luks.name=UUID=NAME"),
    ("rd.luks.name=aaaa=a/b", "expected a volume name"),
    ("cryptboot.tries=-1", "cryptboot.tries: expected a non-negative whole number, found '-1'"),
    ("cryptboot.tries=１", "expected a non-negative whole number"),
    ("cryptboot.cgd=x:/dev/sda", "cryptboot.cgd=: expected NAME:DEVICE:PARAMSFILE"),
    ("cryptboot.failure=panic", "cryptboot.failure=: expected shell, reboot, poweroff or halt"),
    ("cryptdevice=/dev/sda2", "cryptdevice=: expected DEVICE:NAME[:OPTIONS]"),
    ("cryptkey=/dev/sdb:2048", "cryptkey=: expected rootfs:PATH, DEVICE:FSTYPE:PATH or"),
    ("cryptkey=/dev/sdb:2048:lots", "cryptkey= size: expected a non-negative whole number"),
    ("crypto=sha256:aes", "crypto=: expected HASH:CIPHER:KEYSIZE:OFFSET:SKIP"),
    ("cryptopts=target=x", "cryptopts=: expected a source=DEVICE item"),
    ("rd.luks.key=relative.key", "expected an absolute key file path, found 'relative.key'"),
])
def test_malformed_values(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_cmdline(text, "/proc/cmdline")
    assert str(e.value).startswith("/proc/cmdline:1: ")
    assert message in str(e.value)


def test_luks_key_forms() -> None:
    u = "b40f1abf-2a53-400a-889a-2eccc27eaa40"
    c = parse_cmdline(f"rd.luks.key={u}=/keyfile:LABEL=keydev luks.key=/etc/k "
                      "rd.luks.key=/k:UUID=CCCC:UUID=aaaa rd.luks.key=/k2:/")
    per_uuid, plain, dracut, initrd = c.keys
    assert per_uuid.uuid == u
    assert per_uuid.key == KeySource(KeyKind.DEVFILE, path="/keyfile",
                                     device=DeviceSpec(SpecKind.LABEL, "keydev"))
    assert plain.uuid is None and plain.key == KeySource(KeyKind.FILE, path="/etc/k")
    assert dracut.key.device == DeviceSpec(SpecKind.UUID, "cccc", prefix=True)
    assert dracut.luksdev == DeviceSpec(SpecKind.UUID, "aaaa", prefix=True)
    assert initrd.key == KeySource(KeyKind.FILE, path="/k2")   # keydev "/" is the initramfs


def test_escaped_colons_in_cryptdevice() -> None:
    c = parse_cmdline(r"cryptdevice=/dev/disk/by-path/pci-0000\:00\:1f.2-ata-1-part2:root")
    (e,) = c.cryptdevices
    assert e.source == DeviceSpec(SpecKind.PATH, "/dev/disk/by-path/pci-0000:00:1f.2-ata-1-part2")
    assert e.name == "root"


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30.0), ("0", 0.0), ("infinity", 0.0), ("1.5s", 1.5), ("500ms", 0.5),
    ("1min30s", 90.0), ("1 min 30 s", 90.0), ("2h", 7200.0), ("1d", 86400.0), ("10us", 1e-5),
])
def test_time_spans(text: str, seconds: float) -> None:
    assert parse_cmdline(f'rd.timeout="{text}"').root_timeout == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1.2.3", "1x", ".5", "5.", "-1", "1min-2s", "１"])
def test_bad_time_spans(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_cmdline(f"rd.timeout={text}" if text else "rd.timeout")
    assert "rd.timeout" in str(e.value)


def test_warnings_of_rd_luks_options_are_kept() -> None:
    u = "b40f1abf-2a53-400a-889a-2eccc27eaa40"
    c = parse_cmdline(f"rd.luks.options={u}=discard,tpm2-device=auto luks.options=frob")
    assert c.warnings == [
        "/proc/cmdline:1: option 'tpm2-device=auto' is not implemented by cryptboot; ignored "
        f"(rd.luks.options={u}=discard,tpm2-device=auto)",
        "/proc/cmdline:1: unknown option 'frob'; ignored (luks.options=frob)",
    ]


def test_dracut_gpg_key_is_warned() -> None:
    c = parse_cmdline("rd.luks.key=/keys/root.gpg:LABEL=usb")
    assert c.warnings == ["/proc/cmdline:1: rd.luks.key=/keys/root.gpg:LABEL=usb: GPG-encrypted "
                          "(.gpg) and loop-image (.img) key files of dracut are not implemented; "
                          "the file is used as is"]
