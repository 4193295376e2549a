"""Passphrases typed during this boot, offered to the next volume before asking again.

Several disks often share one passphrase (systemd's keyring cache, Debian's decrypt_keyctl).
Only passphrases that opened a volume are kept, most recent first, in memory only; they are
wiped (overwritten) when the boot hands off.
"""

from __future__ import annotations

from cryptboot import log
from cryptboot.config.model import KeyKind
from cryptboot.errors import WrongKey
from cryptboot.keys.providers import Provider

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.keys import KeyRequest


class PassphraseCache:
    def __init__(self) -> None:
        self._items: list[bytearray] = []

    def add(self, passphrase: bytes) -> None:
        """Remember ``passphrase`` (it opened a volume); a repeat moves to the front."""
        for i, item in enumerate(self._items):
            if bytes(item) == passphrase:
                self._items.insert(0, self._items.pop(i))
                return
        self._items.insert(0, bytearray(passphrase))

    def candidates(self) -> list[bytes]:
        """The cached passphrases to try, most recent first."""
        return [bytes(item) for item in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def wipe(self) -> None:
        """Overwrite and forget every cached passphrase."""
        for item in self._items:
            for i in range(len(item)):
                item[i] = 0
        self._items.clear()


class _Cached(Provider):
    """Passphrases that opened an earlier volume: tried before asking again."""

    name = "cache"

    def attempt(self, req: KeyRequest) -> str | None:
        from cryptboot.keys import Key

        cached = req.env.cache.candidates()
        for pw in cached:
            try:
                req.open(Key(pw, KeyKind.CACHED, "the passphrase typed earlier"))
            except WrongKey:
                log.info(f"{req.volume.name}: the passphrase typed earlier does not open it")
                continue
            req.env.cache.add(pw)
            return "the passphrase typed earlier"
        if cached:
            req.tried.append(f"{len(cached)} cached passphrase(s)")
        return None


def provider() -> Provider:
    return _Cached()
