"""``cryptboot plan``: text and JSON output, errors as one line, lean imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cryptboot.config.cli import main

REPO = Path(__file__).resolve().parents[2]
U = "b40f1abf-2a53-400a-889a-2eccc27eaa40"


@pytest.fixture
def crypttab(tmp_path: Path) -> Path:
    p = tmp_path / "crypttab"
    p.write_text(f"# root\ncryptroot UUID={U} /etc/root.key luks,discard,fido2-device=auto\n")
    return p


def test_text_output(crypttab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--cmdline", "root=/dev/mapper/cryptroot rw -- single", "--crypttab",
               str(crypttab)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "1. cryptroot" in out
    assert f"device:  UUID={U}" in out
    assert "key file /etc/root.key in the image" in out
    assert "a passphrase typed for an earlier volume" in out
    assert "ask at the console" in out
    assert "mount:   read-write" in out
    assert "init:         /sbin/init single" in out
    assert f"{crypttab}:2: option 'fido2-device=auto' is not implemented" in out


def test_json_output(crypttab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--cmdline", "root=/dev/mapper/cryptroot rd.break=pre-mount", "--crypttab",
               str(crypttab), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert data["schema"] == 1
    (vol,) = data["volumes"]
    assert vol["name"] == "cryptroot"
    assert vol["source"] == {"kind": "UUID", "value": U, "prefix": False}
    assert [k["kind"] for k in vol["keys"]] == ["file", "cached", "prompt"]
    assert vol["keys"][0]["path"] == "/etc/root.key"
    assert vol["options"]["type"] == "luks" and vol["options"]["discard"] is True
    assert vol["origin"] == f"{crypttab}:2"
    assert data["root"] == {"spec": {"kind": "PATH", "value": "/dev/mapper/cryptroot",
                                     "prefix": False},
                            "fstype": None, "readonly": True, "flags": ""}
    assert data["breaks"] == ["pre-mount"]
    assert data["failure"] == "shell"
    assert data["init"] == "/sbin/init" and data["init_args"] == []
    assert set(data) == {"schema", "volumes", "root", "init", "init_args", "device_timeout",
                         "root_timeout", "failure", "breaks", "auto", "debug", "warnings",
                         "module_params", "module_blacklist", "network", "ssh",
                         "vconsole", "layers", "lvm_vgs", "lvm_lvs", "md_uuids", "md_conf",
                         "resume", "resume_offset", "stack"}


def test_cmdline_from_file_and_no_crypttab(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "cmdline"
    f.write_text(f"rd.luks.name={U}=root root=/dev/mapper/root\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    assert main(["--cmdline", f"@{f}", "--crypttab", str(empty), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in data["volumes"]] == ["root"]


def _cryptboot(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "cryptboot", *args], capture_output=True,
                          text=True, env=env, cwd=REPO)


def test_malformed_crypttab_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "crypttab"
    bad.write_text("ok /dev/sda1\nbroken\n")
    r = _cryptboot("plan", "--cmdline", "root=/dev/sda1", "--crypttab", str(bad))
    err = r.stderr
    assert r.returncode == 2 and r.stdout == ""
    assert err == (f"cryptboot: error: {bad}:2: expected NAME DEVICE [KEYFILE [OPTIONS]] "
                   "(2 to 4 fields), found 1 field: 'broken'\n")
    assert "Traceback" not in err


def test_contradiction_exit_2_with_hint(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    r = _cryptboot("plan", "--cmdline", "root=/dev/mapper/gone", "--crypttab", str(empty))
    err = r.stderr.splitlines()
    assert r.returncode == 2
    assert err[0] == ("cryptboot: error: --cmdline:1: root=/dev/mapper/gone: expected a volume "
                      "named 'gone', found no volumes")
    assert err[1].startswith("cryptboot: hint: name it in crypttab")


def test_missing_files(tmp_path: Path) -> None:
    r = _cryptboot("plan", "--cmdline", f"@{tmp_path}/none", "--crypttab", "/dev/null")
    assert r.returncode == 2
    assert r.stderr == (f"cryptboot: error: {tmp_path}/none: cannot read the "
                        "kernel command line: No such file or directory\n")
    r = _cryptboot("plan", "--cmdline", "ro", "--crypttab", f"{tmp_path}/none")
    assert r.returncode == 2
    assert "cannot read the crypttab: No such file or directory" in r.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    r = _cryptboot("--debug", "plan", "--cmdline", "root=sda1", "--crypttab", "/dev/null")
    assert r.returncode == 2
    assert "Traceback" in r.stderr and "cryptboot: error: --cmdline:1: expected UUID=" in r.stderr


def test_usage_error_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bogus"]) == 2
    assert "usage: cryptboot plan" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_undecodable_bytes_do_not_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ct = tmp_path / "crypttab"
    ct.write_bytes(b"a LABEL=\xff\xfe\n")
    assert main(["--cmdline", "root=/dev/mapper/a", "--crypttab", str(ct)]) == 0
    assert "LABEL=\\udcff\\udcfe" in capsys.readouterr().out
    assert main(["--cmdline", "root=/dev/mapper/a", "--crypttab", str(ct), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["volumes"][0]["source"]["value"] == "\udcff\udcfe"


def _fresh_python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, env=env, cwd=REPO).stdout


def test_plan_path_imports_neither_argparse_nor_json() -> None:
    out = _fresh_python(
        "import sys\n"
        "from cryptboot.config.plan import build_plan\n"
        "build_plan('root=/dev/mapper/a rd.luks.uuid=aaaa', 'a /dev/sda2 /k luks,initramfs\\n')\n"
        "print(sorted(m for m in ('argparse', 'json') if m in sys.modules))\n")
    assert out.strip() == "[]"


def test_json_imported_only_for_json() -> None:
    code = ("import sys, io\n"
            "sys.stdout = io.StringIO()\n"
            "from cryptboot.config.cli import main\n"
            "main(['--cmdline', 'ro', '--crypttab', '/dev/null'{extra}])\n"
            "sys.__stdout__.write(str('json' in sys.modules))\n")
    assert _fresh_python(code.format(extra="")) == "False"
    assert _fresh_python(code.format(extra=", '--json'")) == "True"


def test_crypttab_that_is_a_directory(tmp_path: Path) -> None:
    r = _cryptboot("plan", "--cmdline", "ro", "--crypttab", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr == f"cryptboot: error: {tmp_path}: cannot read the crypttab: Is a directory\n"


def test_text_output_keysource_and_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cmdline", "rd.luks.uuid=keysource:cccc rd.luks.uuid=aaaa "
                 "rd.luks.key=/keyfile:UUID=CCCC root=/dev/sda1", "--crypttab", "/dev/null"]) == 0
    out = capsys.readouterr().out
    assert "1. luks-cccc (named luks-UUID of the device found)" in out
    assert "keysource (holds key files for other volumes)" in out
    assert "device:  UUID=aaaa* (UUID prefix)" in out
    assert "key file /keyfile on UUID=cccc*" in out


def test_default_reads_proc_cmdline() -> None:
    from cryptboot.config.cmdline import split_cmdline

    r = _cryptboot("plan", "--crypttab", "/dev/null", "--json")
    assert r.returncode in (0, 2), r.stderr           # a plan, or one located ConfigError
    if r.returncode == 2:
        assert r.stderr.startswith("cryptboot: error: /proc/cmdline:1: ")
        return
    with open("/proc/cmdline") as f:
        assert json.loads(r.stdout)["init_args"] == split_cmdline(f.read())[1]
