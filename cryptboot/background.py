"""Work done in a thread beside the device wait and the prompt (module loading, imports,
starting cryptsetup): jobs run one after another, in order, and report when joined."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from cryptboot import log
from cryptboot.errors import CryptbootError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    from cryptboot.record import Record as NamedTuple


class Job(NamedTuple):
    """One piece of background work: ``name`` (logged; ``""``: not reported), what to run,
    and ``late``: only once :meth:`Background.go` was called (the first device was found)."""

    name: str
    run: Callable[[], object]
    late: bool = False


class Background:
    """Steps run in a thread beside the device wait and the prompt (module loading): the disk
    can appear and the prompt can show while the kernel is still busy loading cipher modules.

    ``late`` jobs wait for :meth:`go` (called once the first volume's device is found, so the
    CPU goes to finding the disk first) or for :meth:`join`. Outcomes are logged when joined, so
    no line is written over an open prompt; a job named ``""`` is not reported. Joined before
    the first cryptsetup and before mounting."""

    def __init__(self, jobs: Sequence[Job | tuple[str, Callable[[], object], bool]]) -> None:
        import threading

        self.jobs = [Job(*job) for job in jobs]
        self.results: list[tuple[str, float, str, bool]] = []
        for job in self.jobs:
            if job.name:
                when = ", once the device is found" if job.late else ""
                log.info(f"{job.name} ... (in the background{when})")
        self._joined = False
        self._go = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cryptboot-background",
                                        daemon=True)
        self._thread.start()

    def go(self) -> None:
        self._go.set()

    def _run(self) -> None:
        for name, fn, late in self.jobs:
            if late:
                self._go.wait()
            t0 = time.monotonic()
            try:
                out = fn()
                self.results.append((name, time.monotonic() - t0, str(out or ""), True))
            except Exception as e:  # noqa: BLE001 - reported at join; the wait goes on
                msg = e.message if isinstance(e, CryptbootError) else f"{type(e).__name__}: {e}"
                self.results.append((name or "prepare the next steps", time.monotonic() - t0,
                                     msg, False))

    def join(self) -> None:
        if self._joined:
            return
        self._joined = True
        self._go.set()
        self._thread.join()
        for name, took, text, ok in self.results:
            if ok and name:
                log.info(f"{name} (in the background): {text + '; ' if text else ''}"
                         f"done in {took:.3f}s")
            elif not ok:
                log.warning(f"{name} (in the background) failed after {took:.3f}s: {text}")
