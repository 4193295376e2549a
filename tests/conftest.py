"""Test tiers and their gates.

- unit (no marker): needs nothing.
- ``root``: needs root, unshare and loop devices.
- ``vm``: needs qemu-system-x86_64, a Debian cloud kernel and cryptsetup.

A test of a tier the machine cannot run is skipped with the reason. Under ``CI=true`` every
skip is turned into a failure, so a CI run cannot go green by skipping a tier: a skip while a
test runs (``pytest.skip``, ``skipif``) and a skip while a module is collected (a module-level
``pytest.skip``, ``pytest.importorskip``) alike. ``xfail_strict`` (pyproject.toml) makes an
xfail that passes fail too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent


def _root_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces, loop devices)"
    for tool in ("unshare", "losetup", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.path.exists("/dev/loop-control"):
        return "needs /dev/loop-control"
    return None


def _vm_missing() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "needs qemu-system-x86_64 (apt-get install qemu-system-x86)"
    if not list(Path("/boot").glob("vmlinuz-*-cloud-amd64")):
        return "needs a Debian cloud kernel (apt-get install linux-image-cloud-amd64)"
    if shutil.which("cryptsetup") is None and not os.path.exists("/sbin/cryptsetup"):
        return "needs cryptsetup (apt-get install cryptsetup-bin)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {"root": _root_missing(), "vm": _vm_missing()}
    for item in items:
        for tier, reason in reasons.items():
            if reason and item.get_closest_marker(tier):
                item.add_marker(pytest.mark.skip(reason=f"{tier} tier: {reason}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = _ci_failure(reason)


def _ci_failure(reason: object) -> str:
    return f"skipped under CI=true, which counts as a failure: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """A module skipped while collected (``pytest.skip(allow_module_level=True)``,
    ``importorskip``) fails under CI=true too."""
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if IN_CI and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid}: {_ci_failure(reason)}"
