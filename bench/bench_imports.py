"""Import time of ``cryptboot plan`` over a bare interpreter (goal: at most 30 ms added).

``python -X importtime`` prints every import with its own ("self") time; their sum is the
process's import time. We run the bare interpreter (``-c pass``) and ``-m cryptboot plan`` in
turns, many times, and report medians, the difference and the ratio, plus the heaviest modules
of one ``cryptboot plan`` run, so a regression names its culprit.

Bytecode: an initramfs ships compiled ``.pyc`` files, so the goal is measured with a warm
bytecode cache (kept in a temporary ``PYTHONPYCACHEPREFIX``, never in the source tree, with
``PYTHONDONTWRITEBYTECODE`` unset for these runs). The cost without any cache (every module
compiled from source, as in a development checkout with ``PYTHONDONTWRITEBYTECODE=1``; the
standard library still uses its installed ``.pyc``) is shown too.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = 31
GOAL_MS = 30.0
CMDLINE = ("root=/dev/mapper/cryptroot ro quiet "
           "rd.luks.name=b40f1abf-2a53-400a-889a-2eccc27eaa40=cryptroot "
           "rd.luks.key=/etc/root.key cryptboot.tries=5")


def _importtime(args: list[str], pycache: str | None) -> tuple[float, dict[str, float]]:
    """(total import time in ms, self ms per module) of one run of ``python -X importtime``;
    ``pycache`` is the bytecode cache directory, None for none at all."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTHONSTARTUP", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPYCACHEPREFIX", None)
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"      # the stdlib's own .pyc files still serve
    else:
        env["PYTHONPYCACHEPREFIX"] = pycache
    r = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                       text=True, env=env, cwd=REPO, check=True)
    per: dict[str, float] = {}
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cum, name = line[len("import time:"):].split("|", 2)
        per[name.strip()] = per.get(name.strip(), 0.0) + int(self_us) / 1000.0
    return sum(per.values()), per


PLAN = ["-m", "cryptboot", "plan", "--cmdline", CMDLINE, "--crypttab", "/dev/null"]
VARIANTS = {"bare interpreter (-c pass)": ["-c", "pass"],
            "cryptboot plan": PLAN,
            "cryptboot plan --json": [*PLAN, "--json"]}


def measure(runs: int, pycache: str | None) -> tuple[dict[str, float], dict[str, float]]:
    """Medians per variant, and the per-module times of the last ``cryptboot plan`` run."""
    samples: dict[str, list[float]] = {k: [] for k in VARIANTS}
    last: dict[str, float] = {}
    if pycache is not None:
        for args in VARIANTS.values():          # fill the cache first
            _importtime(args, pycache)
    for _ in range(runs):
        for name, args in VARIANTS.items():     # interleaved, so load changes hit all alike
            total, per = _importtime(args, pycache)
            samples[name].append(total)
            if name == "cryptboot plan":
                last = per
    return {k: statistics.median(v) for k, v in samples.items()}, last


def _rows(medians: dict[str, float]) -> list[str]:
    bare = medians["bare interpreter (-c pass)"]
    rows = ["| run | median import time (ms) | added over bare (ms) | ratio to bare |",
            "|---|---:|---:|---:|"]
    for name, value in medians.items():
        rows.append(f"| {name} | {value:.1f} | {value - bare:+.1f} | {value / bare:.2f}x |")
    return rows


def main() -> str:
    with tempfile.TemporaryDirectory(prefix="cryptboot-bench-pycache-") as pycache:
        medians, heaviest = measure(RUNS, pycache)
    cold, _ = measure(max(RUNS // 3, 5), None)
    bare = medians["bare interpreter (-c pass)"]
    added = medians["cryptboot plan"] - bare
    verdict = "meets" if added <= GOAL_MS else "MISSES"
    top = sorted(heaviest.items(), key=lambda kv: kv[1], reverse=True)[:10]
    lines = [
        "## Import time: `cryptboot plan` vs a bare interpreter",
        "",
        f"`python -X importtime`, sum of per-module self times, median of {RUNS} interleaved "
        f"runs each, on this machine (`{sys.executable}`, Python "
        f"{sys.version.split()[0]}), bytecode cache warm (as in an image with `.pyc` files):",
        "",
        *_rows(medians),
        "",
        f"`cryptboot plan` adds **{added:.1f} ms** over the bare interpreter: {verdict} the "
        f"goal of at most {GOAL_MS:.0f} ms.",
        "",
        "Without a bytecode cache for cryptboot (its modules compiled from source on every run, "
        "as in this checkout with PYTHONDONTWRITEBYTECODE=1; for information, "
        f"median of {max(RUNS // 3, 5)} runs):",
        "",
        *_rows(cold),
        "",
        "Heaviest modules (self time, one warm `cryptboot plan` run):",
        "",
        "| module | self (ms) |",
        "|---|---:|",
        *[f"| {name} | {ms:.2f} |" for name, ms in top],
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
