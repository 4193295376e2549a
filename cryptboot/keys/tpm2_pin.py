"""systemd-tpm2 tokens with a PIN: the interactive provider (:class:`cryptboot.keys.tpm2.
Tpm2PinProvider`), in a module of its own because the registry maps one kind to one module."""

from __future__ import annotations

from cryptboot.keys.providers import Provider


def provider() -> Provider:
    from cryptboot.keys.tpm2 import Tpm2PinProvider

    return Tpm2PinProvider()
