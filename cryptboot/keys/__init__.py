"""Where a volume's key comes from, in order, and how many times the user may try.

Order per volume: the plan's key sources (a keyfile in the image, a keyfile or raw bytes on
another device), then passphrases typed for earlier volumes (the cache), then the console
prompt (:mod:`cryptboot.keys.prompt`), unless the volume is ``headless``.

Each source is tried with the caller's ``opener``, which raises :class:`WrongKey` when the key
does not open the volume. Only the prompt counts against ``tries``: a keyfile that does not fit,
or a cached passphrase that fails, never eats one of the user's tries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptboot import log
from cryptboot.config.model import KeyKind, KeySource, Volume
from cryptboot.errors import CryptbootError, DeviceTimeout, WrongKey
from cryptboot.keys.cache import PassphraseCache
from cryptboot.keys.keyfile import KeyUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.keys.race import Race

__all__ = ["Key", "KeyEnv", "KeyUnavailable", "unlock_with_keys", "sources"]


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
                 ask: Callable[[str, Sequence[str], float | None], object] | None = None) -> None:
        self.cache = cache if cache is not None else PassphraseCache()
        self.consoles = consoles              # None: the kernel's active consoles
        self.device_timeout = device_timeout  # keyfile device wait when keyfile-timeout unset
        # wait(spec, timeout) -> device node; set by the flow (keeps keys/ free of udev details)
        self.wait_device = wait_device
        self.ask = ask                        # the prompt (tests give a scripted one)


Opener = Callable[[Key], None]

# issue 13: LUKS2 tokens race the prompt in threads (cryptboot.keys.race, imported only then)
BACKGROUND_KINDS = frozenset({KeyKind.CLEVIS, KeyKind.TPM2})


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


def _describe_try(n: int, tries: int) -> str:
    return f"try {n} of {tries}" if tries > 0 else f"try {n}"


def _file_key(src: KeySource, env: KeyEnv) -> Key:
    from cryptboot.keys import keyfile

    if src.kind is KeyKind.FILE:
        assert src.path is not None
        data = keyfile.read_keyfile(src.path, src.offset, src.size)
        return Key(data, src.kind, f"keyfile {src.path}", binary=True)
    if src.device is None or env.wait_device is None:
        raise KeyUnavailable("key device not given")
    timeout = src.timeout if src.timeout is not None else env.device_timeout
    try:
        node = env.wait_device(src.device, timeout)
    except DeviceTimeout:
        waited = f" within {timeout:g} s" if timeout else ""
        raise KeyUnavailable(f"key device {src.device} did not appear{waited}") from None
    except CryptbootError as e:
        raise KeyUnavailable(f"key device {src.device}: {e.message.splitlines()[0]}") from None
    if src.kind is KeyKind.DEVRAW:
        data = keyfile.read_raw(node, src.offset, src.size)
        return Key(data, src.kind, f"raw key on {src.device}", binary=True)
    assert src.path is not None
    data = keyfile.read_from_device(node, src.path, src.fstype, src.offset, src.size)
    return Key(data, src.kind, f"keyfile {src.path} on {src.device}", binary=True)


def _ask(volume: Volume, device: str, env: KeyEnv, notice: str = "",
         race: Race | None = None, question: str = "") -> tuple[bytes | None, str]:
    from cryptboot.devices import prompt_open
    from cryptboot.keys import prompt

    consoles = list(env.consoles) if env.consoles else prompt.active_consoles()
    text = (notice + "\r\n" if notice else "") + (
        question or prompt.prompt_text(volume.name, device))
    timeout = volume.options.timeout or None
    ask = env.ask or prompt.ask
    with prompt_open():
        answer = ask(text, consoles, timeout) if race is None else \
            ask(text, consoles, timeout, race.rfd)  # type: ignore[call-arg]
    assert isinstance(answer, prompt.Answer)
    reasons = {"eof": "no passphrase given (end of input)", "interrupt": "prompt interrupted",
               "timeout": f"no passphrase entered within {timeout:g} s" if timeout else "",
               "no-console": "no console to ask on"}
    return answer.passphrase, reasons.get(answer.reason, answer.reason)


def unlock_with_keys(volume: Volume, device: str, env: KeyEnv, opener: Opener) -> Key:
    """Try every key source of ``volume`` with ``opener`` until one opens it.

    Returns the key that worked. Raises :class:`WrongKey` when every source failed (the message
    says what was tried); other errors from ``opener`` (not a key problem) propagate at once.
    """
    srcs = sources(volume)
    background = [s for s in srcs if s.kind in BACKGROUND_KINDS]
    if not background:
        return _unlock(volume, device, env, opener, srcs, None)
    from cryptboot.keys.race import Race

    race = Race(volume, device, env, opener, background)
    try:
        return _unlock(volume, device, env, race.guarded(opener), srcs, race)
    finally:
        race.cancel()


def _unlock(volume: Volume, device: str, env: KeyEnv, opener: Opener,
            srcs: tuple[KeySource, ...], race: Race | None) -> Key:
    name = volume.name
    tried: list[str] = []
    pin_tries = 0  # TPM2 PINs typed count against the volume's tries
    for src in srcs:
        won = race.won_by_provider() if race is not None else None
        if won is not None:
            return won
        if src.kind in BACKGROUND_KINDS:
            continue
        if src.kind in (KeyKind.FILE, KeyKind.DEVFILE, KeyKind.DEVRAW):
            try:
                key = _file_key(src, env)
            except KeyUnavailable as e:
                log.warning(f"{name}: {e.message}; trying the next key source")
                tried.append(f"{src.kind.value} key (unavailable)")
                continue
            try:
                opener(key)
            except WrongKey:
                log.warning(f"{key.origin} does not open {name}")
                tried.append(key.origin)
                continue
            if race is not None and race.won_by_provider() is not None:
                return race.won_by_provider()  # type: ignore[return-value]
            log.info(f"{name}: unlocked with {key.origin}")
            return key
        elif src.kind is KeyKind.CACHED:
            cached = env.cache.candidates()
            for pw in cached:
                key = Key(pw, KeyKind.CACHED, "the passphrase typed earlier")
                try:
                    opener(key)
                except WrongKey:
                    log.info(f"{name}: the passphrase typed earlier does not open it")
                    continue
                if race is not None and race.won_by_provider() is not None:
                    return race.won_by_provider()  # type: ignore[return-value]
                env.cache.add(pw)
                log.info(f"{name}: unlocked with the passphrase typed earlier")
                return key
            if cached:
                tried.append(f"{len(cached)} cached passphrase(s)")
        elif src.kind is KeyKind.TPM2_PIN:
            pinned, used = _pin_loop(volume, device, env, opener, src, race)
            if pinned is not None:
                return pinned
            pin_tries += used
            if used:
                tried.append(f"{used} TPM2 PIN tr{'y' if used == 1 else 'ies'}")
        elif src.kind is KeyKind.PROMPT:
            typed = _prompt_loop(volume, device, env, opener, tried, race, pin_tries)
            if typed is not None:
                return typed
    if race is not None:
        # headless, or the prompt gave up: the tokens still have their chance
        won = race.wait()
        if won is not None:
            return won
        tried += race.failures
    if volume.options.headless and not tried:
        raise WrongKey(f"no key for {name}: it is headless (never prompts) and no keyfile or "
                       "cached passphrase applies")
    raise WrongKey(f"could not unlock {name}: " + (", ".join(tried) or "no key source"))


def _pin_loop(volume: Volume, device: str, env: KeyEnv, opener: Opener, src: KeySource,
              race: Race | None) -> tuple[Key | None, int]:
    """``tpm2-pin``: ask for the TPM2 PIN; each PIN typed is a try. An empty answer goes on to
    the passphrase. Returns the key that opened the volume (or None) and the tries used."""
    from cryptboot.keys.tpm2 import device_path, wait_device

    name = volume.name
    tpm = device_path(volume.options.tpm2_device)
    timeout = volume.options.token_timeout
    if not wait_device(tpm, timeout):
        log.warning(f"{name}: no TPM2 device: {tpm} did not appear within {timeout:g} s; "
                    "asking for the passphrase")
        return None, 0
    tries = volume.options.tries
    question = f"Please enter TPM2 PIN for disk {name} ({device}) (empty: the passphrase): "
    n = 0
    notice = ""
    while tries <= 0 or n < tries:
        pin, reason = _ask(volume, device, env, notice, race, question)
        if reason == "withdrawn" and race is not None:
            return race.won_by_provider(), n
        if pin is None:
            n += 1
            notice = f"{reason} for {name} ({_describe_try(n, tries)})"
            log.warning(notice)
            if reason == "no console to ask on":
                break
            continue
        if not pin:
            return None, n
        n += 1
        key = Key(pin, KeyKind.TPM2_PIN, f"the TPM2 token {src.token} and its PIN",
                  token=src.token)
        try:
            opener(key)
        except CryptbootError as e:
            from cryptboot.keys.tpm2 import failure_reason, is_wrong_pin

            if is_wrong_pin(e):
                notice = f"wrong TPM2 PIN for {name} ({_describe_try(n, tries)})"
                log.warning(notice)
                continue
            log.warning(f"{name}: {failure_reason(e, {}, src.token or 0)}; asking for the "
                        "passphrase")
            return None, n
        log.info(f"{name}: unlocked with {key.origin}")
        return key, n
    return None, n


def _prompt_loop(volume: Volume, device: str, env: KeyEnv, opener: Opener,
                 tried: list[str], race: Race | None = None, start: int = 0) -> Key | None:
    name = volume.name
    tries = volume.options.tries
    n = start
    notice = ""
    while tries <= 0 or n < tries:
        if race is not None and race.won_by_provider() is not None:
            return race.won_by_provider()
        n += 1
        passphrase, reason = _ask(volume, device, env, notice, race)
        if reason == "withdrawn" and race is not None:
            return race.won_by_provider()
        if passphrase is None:
            notice = f"{reason} for {name} ({_describe_try(n, tries)})"
            log.warning(notice)
            if reason == "no console to ask on":
                break
            continue
        key = Key(passphrase, KeyKind.PROMPT, "the passphrase typed")
        try:
            opener(key)
        except WrongKey:
            # said on the log and, at the next prompt, on every console the user may be at
            notice = f"wrong passphrase for {name} ({_describe_try(n, tries)})"
            log.warning(notice)
            continue
        if race is not None and race.won_by_provider() is not None:
            return race.won_by_provider()  # a token won while this passphrase waited
        env.cache.add(passphrase)
        log.info(f"{name}: unlocked")
        return key
    tried.append(f"{n} passphrase tr{'y' if n == 1 else 'ies'}")
    if tries > 0 and n >= tries:
        log.error(f"{name}: maximum number of tries ({tries}) exceeded")
    return None
