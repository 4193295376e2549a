"""The few error classes of cryptboot.

Inside, code raises one of these; at the edge (``cli.main``) each becomes one line on stderr,
plus a hint line when there is one. Tracebacks are shown only with ``--debug``.
"""

from __future__ import annotations


class CryptbootError(Exception):
    """An error the user can act on: ``message`` says what was expected and what was found."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(CryptbootError):
    """Malformed or contradictory configuration, located as ``FILE:LINE: message``."""

    exit_code = 2

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        super().__init__(where + message, hint)
        self.file = file
        self.line = line


class CommandError(CryptbootError):
    """An external command could not be run, was killed, or exited non-zero."""

    def __init__(
        self, message: str, *, argv0: str, returncode: int | None = None,
        stderr: str = "", hint: str | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.argv0 = argv0
        self.returncode = returncode
        self.stderr = stderr


class DeviceTimeout(CryptbootError):
    """A device named by the plan did not appear in time."""


class WrongKey(CryptbootError):
    """The key or passphrase does not open the volume."""


class Cancelled(CryptbootError):
    """The work was called off: another key source opened the volume meanwhile."""


class SwitchError(CryptbootError):
    """switch_root / pivot_root refused or failed; ``errno`` is set when the kernel refused."""

    def __init__(self, message: str, *, errno: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.errno = errno
        if errno:
            self.exit_code = errno


def render(e: BaseException, debug_hint: str) -> tuple[str, str | None]:
    """The one line (and hint) an error becomes at the edge, for the CLI and the boot alike:
    a :class:`CryptbootError` says itself; anything else is an internal error, with
    ``debug_hint`` saying how to get its traceback."""
    if isinstance(e, CryptbootError):
        return e.message, e.hint
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", None
    return f"internal error: {type(e).__name__}: {e}", debug_hint
