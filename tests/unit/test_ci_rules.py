"""The CI rules of tests/conftest.py, proven by running pytest on tiny tests that skip.

Under ``CI=true`` a skip of any kind fails the run: a test that skips while it runs, a
``skipif`` marker, a module skipped while it is collected and a failed ``importorskip``. Without
CI the same tests are plain skips. ``.ci/run`` sets ``CI=true`` itself and pyproject.toml turns
``xfail_strict`` on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

SKIPPING = {
    "test_runtime.py": "import pytest\n\ndef test_x():\n    pytest.skip('no frobnicator')\n",
    "test_marker.py": "import pytest\n\n@pytest.mark.skipif(True, reason='no frobnicator')\n"
                      "def test_x():\n    pass\n",
    "test_module.py": "import pytest\n\npytest.skip('no frobnicator', allow_module_level=True)\n\n"
                      "def test_x():\n    pass\n",
    "test_import.py": "import pytest\n\npytest.importorskip('no_such_module_frobnicator')\n\n"
                      "def test_x():\n    pass\n",
}


def run_pytest(tmp_path: Path, name: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / name).write_text(SKIPPING[name])
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this repository's settings
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO)
    if ci is not None:
        env["CI"] = ci
    # tests/conftest.py as a plugin: the rules under test, outside this repository's tree
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q",
                           "-p", "no:cacheprovider", name], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=False)


@pytest.mark.parametrize("name", sorted(SKIPPING))
def test_a_skip_fails_under_ci(tmp_path: Path, name: str) -> None:
    proc = run_pytest(tmp_path, name, "true")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "skipped under CI=true, which counts as a failure" in out, out
    assert "frobnicator" in out, out  # the skip's reason is kept


@pytest.mark.parametrize("name", sorted(SKIPPING))
def test_a_skip_is_a_skip_outside_ci(tmp_path: Path, name: str) -> None:
    proc = run_pytest(tmp_path, name, None)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 5), out  # 5: a skipped module leaves no test collected
    assert "1 skipped" in out, out


def test_ci_run_sets_ci_and_xfail_is_strict() -> None:
    script = (REPO / ".ci/run").read_text().splitlines()
    exports = [i for i, line in enumerate(script) if line.strip() == "export CI=true"]
    runs = [i for i, line in enumerate(script) if line.startswith("exec ")]
    assert exports and runs and exports[0] < runs[0], script
    ini = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert ini["xfail_strict"] is True
