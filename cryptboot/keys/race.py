"""Background key providers racing the prompt (TPM2 and clevis tokens).

Each background source of a volume gets a thread running its provider's ``attempt(req)``
(the provider modules are named in :data:`PROVIDERS` and imported only when a volume has such a
source). Meanwhile the sequential sources (keyfiles, the cache) and the prompt go on as before.
Opening is serialised by one lock: whoever opens the volume first wins, the other key is never
given to cryptsetup. A provider that wins writes one line into the race's pipe; the prompt
polls that pipe beside the consoles, shows the line on every console and returns at once
("withdrawn"). A provider that fails logs one line saying why; the prompt stays.

When the prompt is answered (or the volume opened otherwise), :meth:`Race.cancel` sets
``req.cancelled``: the providers stop at their next check; nothing waits for them.
"""

from __future__ import annotations

import os
import threading

from cryptboot import log
from cryptboot.config.model import KeyKind, KeySource, Volume
from cryptboot.errors import CryptbootError, WrongKey

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from collections.abc import Callable, Sequence

    from cryptboot.keys import Key, KeyEnv

# key kind -> provider module (its ``provider()`` factory); issue 11's registry takes these lines
PROVIDERS = {
    KeyKind.CLEVIS: "cryptboot.keys.clevis",
    KeyKind.TPM2: "cryptboot.keys.tpm2",
}
BACKGROUND = frozenset(PROVIDERS)


class KeyRequest:
    """What a provider gets: the volume, its source, the device (and the header to read tokens
    from), the boot's key environment, ``open(key, what)`` and the ``cancelled`` event."""

    def __init__(self, race: Race, source: KeySource) -> None:
        self.race = race
        self.volume: Volume = race.volume
        self.source = source
        self.device: str = race.device
        self.header: str = race.volume.options.header or race.device
        self.env: KeyEnv = race.env
        self.cancelled = race.cancelled

    def open(self, key: bytes, what: str) -> None:
        """Open the volume with ``key``; :class:`WrongKey` when it does not fit."""
        self.race.open_with(key, what, self.source.kind)

    def open_token(self, token: int, pin: bytes, what: str) -> None:
        """Open the volume through LUKS2 token ``token`` (cryptsetup's plugin; ``pin`` on its
        stdin, empty for none)."""
        self.race.open_with(pin, what, self.source.kind, token)

    def need_network(self) -> None:
        """Bring up (or wait for) the initramfs network before talking to a server."""
        need = getattr(self.env, "need_network", None)
        if need is not None:
            need(self.volume)


class Race:
    def __init__(self, volume: Volume, device: str, env: KeyEnv,
                 opener: Callable[[Key], None], sources: Sequence[KeySource]) -> None:
        self.volume = volume
        self.device = device
        self.env = env
        self.opener = opener
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.key: Key | None = None      # the key that opened the volume, once one did
        self.failures: list[str] = []
        self.rfd, self.wfd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.threads: list[threading.Thread] = []
        for src in sources:
            th = threading.Thread(target=self._run, args=(src,), daemon=True,
                                  name=f"key-{src.kind.value}")
            self.threads.append(th)
        for th in self.threads:
            th.start()

    # -- the providers' side

    def _run(self, src: KeySource) -> None:
        import importlib

        from cryptboot.keys.keyfile import KeyUnavailable

        name = self.volume.name
        what = f"{src.kind.value} token {src.token}"
        try:
            mod = importlib.import_module(PROVIDERS[src.kind])
            prov = mod.provider()
            what = prov.attempt(KeyRequest(self, src))
            log.info(f"{name}: unlocked with {what}")
        except WrongKey as e:
            self._failed(f"{what} does not open {name}: {e.message}")
        except KeyUnavailable as e:
            self._failed(e.message)
        except CryptbootError as e:
            self._failed(f"{what}: {e.message}")
        except Exception as e:  # a provider's bug must not take the prompt down with it
            self._failed(f"{what}: internal error: {type(e).__name__}: {e}")

    def _failed(self, reason: str) -> None:
        with self.lock:
            self.failures.append(reason)
        if not self.cancelled.is_set() and self.key is None:
            log.warning(f"{self.volume.name}: {reason}")

    def open_with(self, data: bytes, what: str, kind: KeyKind, token: int | None = None
                  ) -> None:
        from cryptboot.keys import Key

        key = Key(data, kind, what, token=token)
        with self.lock:
            if self.key is not None or self.cancelled.is_set():
                raise WrongKey(f"{self.volume.name} was opened otherwise meanwhile")
            self.opener(key)  # raises WrongKey
            self.key = key
        try:
            os.write(self.wfd, f"({self.volume.name} unlocked with {what})".encode()[:500])
        except OSError:
            pass

    # -- the flow's side

    def guarded(self, opener: Callable[[Key], None]) -> Callable[[Key], None]:
        """``opener`` for the sequential sources and the prompt: under the lock, and a no-op
        once a provider opened the volume (the caller then checks :attr:`key`)."""
        def open_key(key: Key) -> None:
            with self.lock:
                if self.key is not None:
                    return
                opener(key)
                self.key = key
        return open_key

    def won_by_provider(self) -> Key | None:
        key = self.key
        return key if key is not None and key.kind in BACKGROUND else None

    def wait(self, timeout: float | None = None) -> Key | None:
        """Wait for every provider to finish (headless volumes, or after the prompt gave up)."""
        for th in self.threads:
            th.join(timeout)
        return self.won_by_provider()

    def cancel(self) -> None:
        self.cancelled.set()
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.rfd = self.wfd = -1
