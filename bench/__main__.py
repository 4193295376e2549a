"""``make bench``: run every benchmark module (or those named) and write bench/results.md.

Each run writes ``bench/results/bench_NAME.md``; ``results.md`` gathers the latest of all, so
running one benchmark does not lose the others' figures.

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
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    for name in names:
        module = name if name.startswith("bench_") else "bench_" + name
        mod = importlib.import_module(f"bench.{module}")
        t0 = time.monotonic()
        print(f"== {name}", file=sys.stderr, flush=True)
        text: str = mod.main()
        print(text, flush=True)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        took = time.monotonic() - t0
        (out / f"{module}.md").write_text(f"{text}\n\n(`{module}`, {stamp}, took {took:.0f} s)\n")
    # results.md gathers the latest section of every benchmark, whichever were run this time
    sections = [p.read_text() for p in sorted(out.glob("bench_*.md"))]
    (HERE / "results.md").write_text("# Benchmark results\n\n" + "\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
