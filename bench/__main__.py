"""``make bench``: run every benchmark module (or those named) and write bench/results.md.

Each ``bench/bench_NAME.py`` exposes ``main() -> str`` that runs its measurement, side by side
with the peer in the same run, and returns a Markdown section with the ratios.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    names = argv or sorted(
        m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_")
    )
    sections = []
    for name in names:
        module = name if name.startswith("bench_") else "bench_" + name
        mod = importlib.import_module(f"bench.{module}")
        t0 = time.monotonic()
        print(f"== {name}", file=sys.stderr, flush=True)
        text: str = mod.main()
        print(text, flush=True)
        sections.append(text + f"\n\n(`{name}` took {time.monotonic() - t0:.0f} s)\n")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (HERE / "results.md").write_text(f"# Benchmark results ({stamp})\n\n" + "\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
