"""The key providers: one module per key kind, imported only when a volume uses that kind.

A provider module has a ``provider()`` factory returning a :class:`Provider`. Adding a key
source is a new module plus one line in :data:`PROVIDERS` (and its :class:`KeyKind`)::

    class Tang(Provider):
        name = "tang"
        background = True          # races the prompt in a thread

        def attempt(self, req: KeyRequest) -> str | None:
            key = Key(fetch_key(req), KeyKind.TANG, "tang")
            req.open(key)          # raises WrongKey, or Cancelled once another source won
            return "tang http://tang.example"

    def provider() -> Provider:
        return Tang()
"""

from __future__ import annotations

import importlib

from cryptboot.config.model import KeyKind

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.keys import KeyRequest

# key kind -> the module serving it
PROVIDERS: dict[KeyKind, str] = {
    KeyKind.FILE: "cryptboot.keys.keyfile",
    KeyKind.DEVFILE: "cryptboot.keys.keydev",
    KeyKind.DEVRAW: "cryptboot.keys.keydev",
    KeyKind.CACHED: "cryptboot.keys.cache",
    KeyKind.PROMPT: "cryptboot.keys.prompt",
    # issue 13: LUKS2 tokens found in the volume's header (cryptboot.keys.tokens)
    KeyKind.CLEVIS: "cryptboot.keys.clevis",
    KeyKind.TPM2: "cryptboot.keys.tpm2",
    KeyKind.TPM2_PIN: "cryptboot.keys.tpm2_pin",
}


class Provider:
    """Gets a key for a volume. ``interactive``: asks a person (counts tries, pauses device
    timeouts); ``background``: may have to wait (a device, a network, a TPM), and then races
    the rest in a thread instead of holding them up."""

    name = "key source"
    interactive = False
    background = False
    # background only: first waited for in order, up to its own timeout (a key device's
    # keyfile-timeout, as systemd does), then racing the prompt; False: racing at once (tokens)
    waits_first = False

    def ready(self, req: KeyRequest) -> bool:
        """For a background provider: can it answer at once (then it is tried in order)?"""
        return not self.background

    def attempt(self, req: KeyRequest) -> str | None:
        """Open ``req.volume`` with ``req.open(key)``; return a few words naming what opened
        it (``""`` when nothing more needs saying), or None when nothing of this source did
        (having said why with ``req.say`` and noted the try in ``req.tried``). Raise
        :class:`~cryptboot.keys.KeyUnavailable` (one line) when it has no key to give, and
        check ``req.cancelled`` between slow steps. ``req.racing``: it runs beside the prompt
        (wait as long as it takes; the wait is called off when the volume is done)."""
        raise NotImplementedError


def provider_for(kind: KeyKind) -> Provider:
    factory = importlib.import_module(PROVIDERS[kind]).provider
    made: Provider = factory()
    return made
