"""systemd-tpm2 tokens (``systemd-cryptenroll --tpm2-device=``): the key provider.

The unsealing is systemd's own code: cryptsetup opens the volume with ``--token-only
--token-id N`` and loads systemd's token plugin (``libcryptsetup-token-systemd-tpm2.so``), which
talks to the TPM through tpm2-tss (``/dev/tpmrm0``). Why that and not a Python TPM library:
docs/tpm2.md. This module waits for the TPM, names what happened in one line, and turns the
plugin's failures into reasons: a PCR policy that no longer matches is "TPM2 policy does not
match (PCR 7 changed?)", and the next key source (the prompt) carries on.

The TPM of a PC or VM is usually built into the kernel (tpm_tis, tpm_crb): its device appears
during the kernel's own start, with no uevent a boot would see later, so the wait polls for the
node (every 50 ms, ``token-timeout``, default 30 s).

Tokens with a PIN (``tpm2-pin: true``) are not tried here: the prompt asks for the PIN
(:data:`cryptboot.config.model.KeyKind.TPM2_PIN`), each PIN counting as one of the volume's
tries.
"""

from __future__ import annotations

import os
import time

from cryptboot import log
from cryptboot.config.model import KeyKind
from cryptboot.errors import CommandError, CryptbootError, WrongKey
from cryptboot.keys.providers import Provider

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    import threading
    from typing import Any

    from cryptboot.keys import KeyRequest

DEFAULT_DEVICE = "/dev/tpmrm0"
POLL = 0.05
# what systemd's plugin (252: it compares the PCR policy digest before unsealing) and tpm2-tss
# (TPM_RC_POLICY_FAIL 0x99d, "a policy check failed") say when the PCRs are not the sealed ones
POLICY_FAILED = ("policy digest does not match", "policy check failed", "0x99d", "policy_fail")


# a wrong PIN: TPM_RC_AUTH_FAIL (0x98e) through the plugin's session
WRONG_PIN = ("authorization HMAC check failed", "0x98e", "TPM_RC_AUTH_FAIL")


def is_wrong_pin(e: CryptbootError) -> bool:
    if isinstance(e, WrongKey):
        return True
    text = e.stderr if isinstance(e, CommandError) else e.message
    return any(w.lower() in text.lower() for w in WRONG_PIN)


def device_path(setting: str | None) -> str:
    """``tpm2-device=`` (None and ``auto``: the kernel's resource manager, /dev/tpmrm0)."""
    return DEFAULT_DEVICE if setting in (None, "", "auto") else str(setting)


def wait_device(path: str, timeout: float, cancelled: threading.Event | None = None) -> bool:
    """Wait until ``path`` exists; False when it did not within ``timeout`` (0: forever)."""
    end = time.monotonic() + timeout if timeout else None
    while not os.path.exists(path):
        if end is not None and time.monotonic() >= end:
            return False
        if cancelled is not None:
            if cancelled.wait(POLL):
                return False
        else:
            time.sleep(POLL)
    return True


def pcr_text(token: dict[str, Any]) -> str:
    pcrs = token.get("tpm2-pcrs") or []
    if not isinstance(pcrs, list) or not pcrs:
        return "PCRs"
    return ("PCR " if len(pcrs) == 1 else "PCRs ") + ", ".join(str(p) for p in pcrs)


def failure_reason(e: CryptbootError, token: dict[str, Any], tid: int) -> str:
    """One line for a failed token open."""
    text = e.stderr if isinstance(e, CommandError) else e.message
    if any(w.lower() in text.lower() for w in POLICY_FAILED):
        return f"TPM2 policy does not match ({pcr_text(token)} changed?)"
    last = text.strip().splitlines()[-1] if text.strip() else e.message
    return f"TPM2 token {tid}: {last}"


def token_of(req: KeyRequest) -> tuple[int, dict[str, Any]]:
    from cryptboot.keys import KeyUnavailable
    from cryptboot.keys.tokens import read_tokens

    header = req.volume.options.header or req.device
    tid = req.source.token
    token = read_tokens(header).get(tid) if tid is not None else None
    if tid is None or not token or token.get("type") != "systemd-tpm2":
        raise KeyUnavailable(f"no systemd-tpm2 token {tid} in the LUKS2 header of {header}")
    return tid, token


def need_device(req: KeyRequest) -> None:
    from cryptboot.keys import Cancelled, KeyUnavailable

    path = device_path(req.volume.options.tpm2_device)
    timeout = req.volume.options.token_timeout
    if not wait_device(path, timeout, req.cancelled):
        if req.cancelled.is_set():
            raise Cancelled("TPM2: another key source won")
        raise KeyUnavailable(f"no TPM2 device: {path} did not appear within {timeout:g} s")


class Tpm2Provider(Provider):
    """A token without PIN: raced beside the prompt."""

    name = "TPM2"
    background = True

    def attempt(self, req: KeyRequest) -> str | None:
        from cryptboot.keys import Key, KeyUnavailable

        tid, token = token_of(req)
        need_device(req)
        what = f"the TPM2 token {tid}"
        try:
            req.open(Key(b"", KeyKind.TPM2, what, token=tid))
        except (WrongKey, CommandError) as e:
            req.tried.append(f"{what} ({failure_reason(e, token, tid)})")
            raise KeyUnavailable(failure_reason(e, token, tid)) from None
        return what


class Tpm2PinProvider(Provider):
    """A token with a PIN: asked at the prompt, on every console; each PIN typed is one of the
    volume's tries (the passphrase prompt after it counts on). An empty PIN goes on to the
    passphrase."""

    name = "TPM2 PIN"
    interactive = True

    def attempt(self, req: KeyRequest) -> str | None:
        from cryptboot.keys import Key, KeyUnavailable

        tid, token = token_of(req)
        name = req.volume.name
        path = device_path(req.volume.options.tpm2_device)
        timeout = req.volume.options.token_timeout
        if not wait_device(path, timeout, req.cancelled):
            raise KeyUnavailable(f"no TPM2 device: {path} did not appear within {timeout:g} s")
        tries = req.volume.options.tries
        question = f"Please enter TPM2 PIN for disk {name} ({req.device}) (empty: the passphrase): "
        what = f"the TPM2 token {tid} and its PIN"
        n = 0
        notice = ""
        while tries <= 0 or n < tries:
            if req.cancelled.is_set():
                return None
            pin, reason = _ask(req, (notice + "\r\n" if notice else "") + question)
            if reason == "withdrawn":
                return None
            if pin is None:
                n += 1
                notice = f"{reason} for {name} ({_describe_try(n, tries)})"
                log.warning(notice)
                if reason == "no console to ask on":
                    break
                continue
            if not pin:
                break
            n += 1
            try:
                req.open(Key(pin, KeyKind.TPM2_PIN, what, token=tid))
            except (WrongKey, CommandError) as e:
                if is_wrong_pin(e):
                    notice = f"wrong TPM2 PIN for {name} ({_describe_try(n, tries)})"
                    log.warning(notice)
                    continue
                _count(req, n)
                raise KeyUnavailable(failure_reason(e, token, tid)) from None
            return what
        _count(req, n)
        return None


def _count(req: KeyRequest, n: int) -> None:
    """The PIN tries used, for the passphrase prompt's count (``tries`` is the volume's)."""
    if n:
        req.tried.append(f"{n} TPM2 PIN tr{'y' if n == 1 else 'ies'}")
        setattr(req.race, "tries_used", getattr(req.race, "tries_used", 0) + n)  # noqa: B010


def _describe_try(n: int, tries: int) -> str:
    return f"try {n} of {tries}" if tries > 0 else f"try {n}"


def _ask(req: KeyRequest, text: str) -> tuple[bytes | None, str]:
    from cryptboot.clock import prompt_open
    from cryptboot.keys import prompt

    env = req.env
    consoles = list(env.consoles) if env.consoles else prompt.active_consoles()
    timeout = req.volume.options.timeout or None
    control = req.control
    with prompt_open():
        if env.ask is not None:
            answer = env.ask(text, consoles, timeout) if control is None else \
                env.ask(text, consoles, timeout, control)
        else:
            answer = prompt.ask(text, consoles, timeout, control)
    assert isinstance(answer, prompt.Answer)
    reasons = {"eof": "no PIN given (end of input)", "interrupt": "prompt interrupted",
               "no-console": "no console to ask on",
               "timeout": f"no PIN entered within {timeout:g} s" if timeout else "timeout"}
    return answer.passphrase, reasons.get(answer.reason, answer.reason)


def provider() -> Provider:
    return Tpm2Provider()
