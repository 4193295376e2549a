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

from cryptboot.errors import CommandError, CryptbootError, WrongKey

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    import threading
    from typing import Any

    from cryptboot.keys.race import KeyRequest

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
    from cryptboot.keys.keyfile import KeyUnavailable
    from cryptboot.keys.tokens import read_tokens

    tid = req.source.token
    token = read_tokens(req.header).get(tid) if tid is not None else None
    if not token or token.get("type") != "systemd-tpm2":
        raise KeyUnavailable(f"no systemd-tpm2 token {tid} in the LUKS2 header of {req.header}")
    return int(tid), token  # type: ignore[arg-type]


def need_device(req: KeyRequest) -> None:
    from cryptboot.keys.keyfile import KeyUnavailable

    path = device_path(req.volume.options.tpm2_device)
    timeout = req.volume.options.token_timeout
    if not wait_device(path, timeout, req.cancelled):
        if req.cancelled.is_set():
            raise KeyUnavailable("TPM2: cancelled")
        raise KeyUnavailable(f"no TPM2 device: {path} did not appear within {timeout:g} s")


class Tpm2Provider:
    name = "tpm2"
    interactive = False
    background = True

    def attempt(self, req: KeyRequest) -> str:
        from cryptboot.keys.keyfile import KeyUnavailable

        tid, token = token_of(req)
        need_device(req)
        what = f"the TPM2 token {tid}"
        try:
            req.open_token(tid, b"", what)
        except WrongKey as e:
            if "opened otherwise" in e.message:
                raise
            raise KeyUnavailable(failure_reason(e, token, tid)) from None
        except CommandError as e:
            raise KeyUnavailable(failure_reason(e, token, tid)) from None
        return what


def provider() -> Tpm2Provider:
    return Tpm2Provider()
