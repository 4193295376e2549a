"""Where a volume's key comes from: key providers, tried in order, racing the prompt.

Order per volume: the plan's key sources (a keyfile in the image, a keyfile or raw bytes on
another device), then passphrases typed for earlier volumes (the cache), then the console
prompt (:mod:`cryptboot.keys.prompt`), unless the volume is ``headless``.

Each source is served by a provider (:mod:`cryptboot.keys.providers`: one module per key kind,
imported only when a volume uses it). A provider that can answer at once is tried in order; one
that must wait for something (a key device that is not there yet, a TPM, a network server) is
started in a thread and races everything after it, the prompt included: the prompt shows at
once, and when the racing provider opens the volume the prompt is withdrawn on every console
with one line naming what unlocked it. A provider that fails says why in one line (on the open
prompt, or in the log) and the rest go on.

Keys are tried with the caller's ``opener``, which raises :class:`WrongKey` when the key does
not open the volume; openings are serialised, and after the first success no other key is tried.
Only the prompt counts against ``tries``: a keyfile that does not fit, or a cached passphrase
that fails, never eats one of the user's tries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from cryptboot import log
from cryptboot.config.model import KeyKind, KeySource, Volume
from cryptboot.errors import CryptbootError, WrongKey
from cryptboot.keys.cache import PassphraseCache
from cryptboot.keys.keyfile import KeyUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from cryptboot.config.model import Plan
    from cryptboot.keys.prompt import Control
    from cryptboot.keys.providers import Provider

__all__ = ["Key", "KeyEnv", "KeyRequest", "KeyUnavailable", "Cancelled", "unlock_with_keys",
           "sources"]

RACERS_JOIN = 2.0  # seconds to let cancelled racers finish when the volume is done


class Key:
    """Key material and where it came from; ``binary`` for keyfiles (not a typed passphrase).

    The repr never shows the key."""

    __slots__ = ("data", "kind", "origin", "binary", "token")

    def __init__(self, data: bytes, kind: KeyKind, origin: str, binary: bool = False,
                 token: int | None = None) -> None:
        self.data = data
        self.kind = kind
        self.origin = origin
        self.binary = binary
        # issue 13: open through this LUKS2 token (cryptsetup's plugin); ``data`` is its PIN
        self.token = token

    def __repr__(self) -> str:
        return f"Key({self.kind.value}, {self.origin!r}, {len(self.data)} bytes)"


class KeyEnv:
    """What key sources need from the running boot."""

    def __init__(self, cache: PassphraseCache | None = None,
                 consoles: Sequence[str] | None = None,
                 device_timeout: float | None = 180.0,
                 wait_device: Callable[..., str] | None = None,
                 ask: Callable[..., object] | None = None,
                 find_device: Callable[..., str | None] | None = None) -> None:
        self.cache = cache if cache is not None else PassphraseCache()
        self.consoles = consoles              # None: the kernel's active consoles
        self.device_timeout = device_timeout  # keyfile device wait when keyfile-timeout unset
        # wait(spec, timeout, cancelled=None) -> device node; set by the flow (keeps keys/ free
        # of udev details)
        self.wait_device = wait_device
        # find(spec) -> node of a device already there, or None; None here: unknown, so a key
        # device is always waited for in order (as in unit tests)
        self.find_device = find_device
        self.ask = ask                        # the prompt (tests give a scripted one)
        self.plan: Plan | None = None         # issue 13: tang brings the network up for it


class Cancelled(CryptbootError):
    """The volume was opened by another key source meanwhile: stop."""


Opener = Callable[[Key], None]


class KeyRequest:
    """One key source asked for one volume: what a provider's ``attempt`` gets.

    ``open(key)`` tries a key (raises :class:`WrongKey`, or :class:`Cancelled` once another
    source won); ``cancelled`` is set when the volume is done (or this racer is called off);
    ``racing``: it runs beside the prompt; ``say(line)`` reports a failure without writing over
    an open prompt; ``tried`` collects what was tried, for the final error.
    """

    __slots__ = ("volume", "source", "device", "env", "race", "cancelled", "racing")

    def __init__(self, volume: Volume, source: KeySource, device: str, env: KeyEnv,
                 race: _Race, *, racing: bool = False) -> None:
        self.volume = volume
        self.source = source
        self.device = device
        self.env = env
        self.race = race
        self.cancelled = threading.Event()
        self.racing = racing
        race.requests.append(self)
        if race.done.is_set():
            self.cancelled.set()

    @property
    def tried(self) -> list[str]:
        return self.race.tried

    def open(self, key: Key) -> None:
        self.race.open(key)

    def open_with(self, key: Key) -> str:
        """For a source with one key: open with it and return its origin; when it does not
        fit, note the try and raise :class:`WrongKey` naming it."""
        try:
            self.open(key)
        except WrongKey:
            self.tried.append(key.origin)
            raise WrongKey(f"{key.origin} does not open {self.volume.name}") from None
        return key.origin

    def say(self, line: str) -> None:
        self.race.say(line)

    @property
    def control(self) -> Control | None:
        """For the prompt: how racing sources withdraw it (None when nothing races)."""
        return self.race.control if self.race.racers else None


class _Race:
    """The sources of one volume: serialised openings, the winner, the prompt's control."""

    def __init__(self, volume: Volume, opener: Opener) -> None:
        self.volume = volume
        self._opener = opener
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.won: Key | None = None
        self.tried: list[str] = []
        self.requests: list[KeyRequest] = []
        self.racers: list[threading.Thread] = []
        self._control: Control | None = None
        self.prompt_open = False

    @property
    def control(self) -> Control:
        if self._control is None:
            from cryptboot.keys.prompt import Control

            self._control = Control()
        return self._control

    def open(self, key: Key) -> None:
        with self._lock:
            if self.done.is_set():
                raise Cancelled(f"{self.volume.name} was unlocked meanwhile")
            self._opener(key)
            self.won = key
            self.finish()

    def finish(self) -> None:
        self.done.set()
        for req in self.requests:
            req.cancelled.set()

    def start(self, provider: Provider, req: KeyRequest) -> None:
        t = threading.Thread(target=_race, args=(provider, req), daemon=True,
                             name=f"cryptboot-key-{provider.name}")
        self.racers.append(t)
        t.start()

    def say(self, line: str) -> None:
        if self.prompt_open and self._control is not None:
            log.log(log.WARNING, line, console=False)  # on the prompt instead, not over it
            self._control.notice(line)
        else:
            log.warning(line)

    def withdraw(self, what: str) -> None:
        if self._control is not None:
            self._control.withdraw(f"{self.volume.name} unlocked with {what}")

    def close(self) -> None:
        self.finish()
        for t in self.racers:
            t.join(RACERS_JOIN)
        if self._control is not None:
            self._control.close()


def sources(volume: Volume) -> tuple[KeySource, ...]:
    """The plan's key sources, then the cache and the prompt unless already named.

    ``headless`` volumes never prompt.
    """
    keys = list(volume.keys)
    kinds = {k.kind for k in keys}
    if KeyKind.CACHED not in kinds and KeyKind.PROMPT not in kinds:
        keys.append(KeySource(KeyKind.CACHED))
        keys.append(KeySource(KeyKind.PROMPT))
    if volume.options.headless:
        keys = [k for k in keys if k.kind is not KeyKind.PROMPT]
    return tuple(keys)


def _attempt(provider: Provider, req: KeyRequest,
             later: list[tuple[Provider, KeyRequest]] | None = None) -> str | None:
    """One provider's attempt; what opened the volume, or None (said why, noted the try).
    A source whose key may still come is put on ``later``, to race the prompt."""
    name = req.volume.name
    try:
        return provider.attempt(req)
    except Cancelled:
        return None
    except KeyUnavailable as e:
        if not req.cancelled.is_set():
            req.say(f"{name}: {e.message}; trying the next key source")
            req.tried.append(f"{req.source.kind.value} key (unavailable)")
            if e.later and later is not None:
                later.append((provider, KeyRequest(req.volume, req.source, req.device, req.env,
                                                   req.race, racing=True)))
        return None
    except WrongKey as e:
        if not req.cancelled.is_set():
            req.say(e.message)
        return None


def _race(provider: Provider, req: KeyRequest) -> None:
    """A racing provider's thread: on success, withdraw the prompt and say what won."""
    try:
        what = _attempt(provider, req)
    except CryptbootError as e:  # not a key problem (cryptsetup failed): the prompt stays
        if not req.cancelled.is_set():
            req.say(f"{req.volume.name}: {provider.name}: {e.message}")
            req.tried.append(f"{provider.name} (failed)")
        return
    except Exception as e:  # noqa: BLE001 - a bug in one source must not end the boot
        req.say(f"{req.volume.name}: {provider.name}: internal error: {type(e).__name__}: {e}")
        return
    if what is not None and req.race.won is not None:
        log.info(f"{req.volume.name}: unlocked with {what}")
        req.race.withdraw(what)


def unlock_with_keys(volume: Volume, device: str, env: KeyEnv, opener: Opener) -> Key:
    """Try every key source of ``volume`` with ``opener`` until one opens it.

    Returns the key that worked. Raises :class:`WrongKey` when every source failed (the message
    says what was tried); other errors from ``opener`` (not a key problem) propagate at once
    from sources tried in order, and are reported from racing ones.

    A source that can answer at once is tried in order. One that must wait races what comes
    after it in a thread, at once (a token) or, for a key device, after waiting for it in order
    up to its ``keyfile-timeout`` (as systemd does): then it keeps waiting beside the prompt, and
    is called off when the prompt ends without a key.
    """
    from cryptboot.keys.providers import provider_for

    name = volume.name
    race = _Race(volume, opener)
    later: list[tuple[Provider, KeyRequest]] = []  # key devices that may still come
    try:
        for src in sources(volume):
            provider = provider_for(src.kind)
            req = KeyRequest(volume, src, device, env, race)
            if provider.background and not provider.ready(req) and not provider.waits_first:
                race.start(provider, req)
                continue
            if provider.interactive:
                for p, r in later:
                    race.start(p, r)
                race.prompt_open = True
            try:
                what = _attempt(provider, req, later)
            finally:
                race.prompt_open = False
            if race.won is not None:
                if what is not None:
                    log.info(f"{name}: unlocked" + (f" with {what}" if what else ""))
                return race.won
            if provider.interactive:  # no key typed: the key devices stop waiting too
                for _p, r in later:
                    r.cancelled.set()
                later.clear()
        for t in race.racers:  # nothing else left: wait for the racing sources to end
            t.join()
        if race.won is not None:
            return race.won
    finally:
        race.close()
    if volume.options.headless and not race.tried:
        raise WrongKey(f"no key for {name}: it is headless (never prompts) and no keyfile or "
                       "cached passphrase applies")
    raise WrongKey(f"could not unlock {name}: " + (", ".join(race.tried) or "no key source"))
