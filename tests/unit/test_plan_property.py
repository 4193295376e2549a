"""Any text as command line or crypttab gives a plan or one ConfigError, never another error."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptboot.config.model import Plan
from cryptboot.config.plan import build_plan
from cryptboot.errors import ConfigError

# Words that reach deep into the parsers, so random text exercises more than "unknown option".
_WORDS = [
    "root=", "root=/dev/mapper/", "rd.luks.uuid=", "rd.luks.name=", "rd.luks.key=",
    "rd.luks.options=", "rd.luks.data=", "luks.key=", "rd.luks.allow-discards",
    "rd.luks.crypttab=0", "rd.luks=0", "rd.auto", "rd.break=", "rd.retry=", "rd.shell=0",
    "rd.emergency=", "cryptdevice=", "cryptkey=", "crypto=", "cryptopts=", "cryptboot.cgd=",
    "cryptboot.tries=", "cryptboot.timeout=", "init=", "rootfstype=", "--", '"', "=", ":",
    ",", "\\", "UUID=", "LABEL=", "PARTUUID=", "ID=", "/dev/", "/dev/disk/by-uuid/",
    "keysource:", "luks-", "b40f1abf-2a53-400a-889a-2eccc27eaa40", "aaaa", "none", "-",
    "luks", "plain", "tcrypt", "cgd=", "header=", "keyfile-timeout=", "keyscript=passdev",
    "tries=", "timeout=", "headless", "initramfs", "\\040", "\\0", "\\,", "1min", "ms",
    " ", "\t", "\n", "#", "0", "9", "a",
]
_texty = st.lists(st.one_of(st.sampled_from(_WORDS), st.text(max_size=6)), max_size=25).map(
    "".join)


def _plan_or_config_error(cmdline: str, crypttab: str | None) -> None:
    try:
        plan = build_plan(cmdline, crypttab)
    except ConfigError as e:
        assert e.message and "\n" not in e.message   # one clear line
        assert "expected" in e.message or "cannot" in e.message
        return
    assert isinstance(plan, Plan)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cmdline=_texty, crypttab=st.one_of(st.none(), _texty))
def test_any_text_gives_a_plan_or_a_config_error(cmdline: str, crypttab: str | None) -> None:
    _plan_or_config_error(cmdline, crypttab)


@settings(max_examples=200, deadline=None)
@given(cmdline=st.text(), crypttab=st.one_of(st.none(), st.text()))
def test_any_unicode_text(cmdline: str, crypttab: str | None) -> None:
    _plan_or_config_error(cmdline, crypttab)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=4).map(
    lambda ws: " ".join(ws)), max_size=6))
def test_crypttab_shaped_lines(lines: list[str]) -> None:
    _plan_or_config_error("root=/dev/sda1", "\n".join(lines) + "\n")


@settings(max_examples=200, deadline=None)
@given(cmdline=st.binary(max_size=80), crypttab=st.binary(max_size=200))
def test_undecodable_bytes_as_load_plan_reads_them(cmdline: bytes, crypttab: bytes) -> None:
    # load_plan decodes files with surrogateescape: lone surrogates must not crash anything
    _plan_or_config_error(cmdline.decode("utf-8", "surrogateescape"),
                          crypttab.decode("utf-8", "surrogateescape"))
