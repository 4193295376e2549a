"""``make bench``: run every benchmark module (or those named) and write bench/results.md.

Each run writes ``bench/results/bench_NAME.md``, which names the commit measured (``git
rev-parse HEAD``, ``+dirty`` when tracked files outside the results differ from it);
``results.md`` gathers the latest of all, so running one benchmark does not lose the others'
figures. Sections measured at different commits are not merged: the run fails and says which
sections to run again, unless ``CRYPTBOOT_BENCH_MIXED=mark``, which merges them with every
section marked with its own commit. ``CRYPTBOOT_BENCH_OUT=DIR`` writes ``DIR/results/`` and
``DIR/results.md`` instead (a trial run that leaves the committed figures alone).

Each ``bench/bench_NAME.py`` exposes ``main() -> str`` that runs its measurement, side by side
with the peer in the same run, and returns a Markdown section with the ratios.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMIT_LINE = re.compile(r"^<!-- commit: (\S+) -->$", re.M)
# what a bench run itself changes: not a change of the code measured
NOT_CODE = (":!bench/results", ":!bench/results.md", ":!README.md")


class MixedCommits(Exception):
    pass


def measured_commit(repo: Path = HERE.parent) -> str:
    """The commit of the code being measured; ``+dirty`` when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def section_commit(text: str) -> str:
    m = COMMIT_LINE.search(text)
    return m.group(1) if m else "unknown"


def merge(sections: dict[str, str], mixed: str = "") -> str:
    """results.md from the sections (file name → text); raises :class:`MixedCommits` when they
    were measured at different commits (or at an unknown or dirty one), unless ``mixed`` is
    ``"mark"``."""
    commits = {name: section_commit(text) for name, text in sections.items()}
    distinct = sorted(set(commits.values()))
    clean = len(distinct) == 1 and distinct[0] != "unknown" and not distinct[0].endswith("+dirty")
    if clean:
        head = (f"Every section below was measured at commit `{distinct[0]}`, in one run of "
                "the committed code.\n")
        return "# Benchmark results\n\n" + head + "\n" + "\n".join(sections.values())
    by_commit: dict[str, list[str]] = {}
    for name, c in sorted(commits.items()):
        by_commit.setdefault(c, []).append(name)
    said = "; ".join(f"{c}: {', '.join(n)}" for c, n in sorted(by_commit.items()))
    if mixed != "mark":
        raise MixedCommits(
            f"bench: not merging results measured at different or uncommitted code ({said}); "
            "run `make bench` on a clean checkout, or `python -m bench NAME...` for the stale "
            "ones, or set CRYPTBOOT_BENCH_MIXED=mark to merge them marked")
    marked = []
    for name, text in sections.items():
        c = commits[name]
        marked.append(re.sub(r"^(## .*)$", rf"\1 [measured at commit {c}]", text, count=1,
                             flags=re.M))
    head = ("**These sections were not measured in one run of one commit** "
            f"({said}): compare figures only within a section.\n")
    return "# Benchmark results\n\n" + head + "\n" + "\n".join(marked)


def main(argv: list[str]) -> int:
    names = argv or sorted(
        m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_")
    )
    base = Path(os.environ.get("CRYPTBOOT_BENCH_OUT") or HERE)
    out = base / "results"
    out.mkdir(parents=True, exist_ok=True)
    commit = measured_commit()
    for name in names:
        module = name if name.startswith("bench_") else "bench_" + name
        mod = importlib.import_module(f"bench.{module}")
        t0 = time.monotonic()
        print(f"== {name} (commit {commit})", file=sys.stderr, flush=True)
        text: str = mod.main()
        print(text, flush=True)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        took = time.monotonic() - t0
        (out / f"{module}.md").write_text(
            f"<!-- commit: {commit} -->\n{text}\n\n(`{module}`, {stamp}, took {took:.0f} s, "
            f"commit {commit})\n")
    # results.md gathers the latest section of every benchmark, whichever were run this time
    sections = {p.name: p.read_text() for p in sorted(out.glob("bench_*.md"))}
    try:
        merged = merge(sections, os.environ.get("CRYPTBOOT_BENCH_MIXED", ""))
    except MixedCommits as e:
        print(e, file=sys.stderr)
        return 1
    (base / "results.md").write_text(merged)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
