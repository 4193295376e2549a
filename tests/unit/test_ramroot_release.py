"""ramroot --release's pieces that need no device-mapper: holders of a file open for writing,
the state file's records, the LUKS uuid in a dm uuid, udev's stale control socket, the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cryptboot import cli, log, udev
from cryptboot.switch import release


def test_process_holders_mark_writers_and_readers(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("")
    dev = release.devnum(os.stat(tmp_path).st_dev)
    with open(path, "a") as w, open(path) as r:
        writer = subprocess.Popen(["sleep", "30"], stdout=w, cwd="/")
        reader = subprocess.Popen(["sleep", "30"], stdin=r, cwd="/")
    try:
        lines = release.process_holders({dev})
    finally:
        for p in (writer, reader):
            p.kill()
            p.wait()
    by_pid = {ln.split()[0]: ln for ln in lines}
    assert by_pid[str(writer.pid)].startswith(f"{writer.pid} sleep: ")
    assert f"fd 1 ({path}, open for writing)" in by_pid[str(writer.pid)]
    assert f"fd 0 ({path})" in by_pid[str(reader.pid)]
    assert f"fd 0 ({path}, open for writing)" not in by_pid[str(reader.pid)]


def test_own_process_is_named_only_when_asked(tmp_path: Path) -> None:
    dev = release.devnum(os.stat(tmp_path).st_dev)
    with open(tmp_path / "f", "w"):
        mine = [ln for ln in release.process_holders({dev}, skip_self=False)
                if ln.startswith(f"{os.getpid()} ")]
        assert mine and "open for writing" in mine[0]
        assert not [ln for ln in release.process_holders({dev})
                    if ln.startswith(f"{os.getpid()} ")]


def test_luks_uuid_from_the_dm_uuid() -> None:
    m = release.Mapping("dm-0", "root", "253:0",
                        "CRYPT-LUKS2-5e1f0000aaaa4bbb8ccc000000000001-root")
    assert m.crypt and m.luks_uuid == "5e1f0000-aaaa-4bbb-8ccc-000000000001"
    assert release.Mapping("dm-1", "p", "253:1", "CRYPT-PLAIN-p").luks_uuid is None
    assert not release.Mapping("dm-2", "vg-lv", "253:2", "LVM-abc").crypt


def test_closed_records_in_order() -> None:
    text = ("mountpoint=/run/cryptboot/ramroot\nput_old=/oldroot\n"
            "closed=root,CRYPT-LUKS2-aa-root\nclosed=inner,CRYPT-PLAIN-inner\nreleased=1\n")
    assert release.closed_records(text) == [("root", "CRYPT-LUKS2-aa-root"),
                                            ("inner", "CRYPT-PLAIN-inner")]


def test_udev_listening_tells_a_bound_socket_from_a_left_file(tmp_path: Path) -> None:
    path = str(tmp_path / "control")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(path)
    s.listen()
    try:
        assert udev.listening(path)
    finally:
        s.close()
    assert os.path.exists(path)      # what a udevd that is gone leaves behind
    assert not udev.listening(path)


def test_device_and_nextroot_need_return(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log._state, "stream", sys.stderr)
    with pytest.raises(SystemExit) as e:
        cli.main(["ramroot", "--device", "/dev/mapper/root"])
    assert e.value.code == 2
    assert "--device and --nextroot go with --return" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["ramroot", "--release", "--return"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_release_outside_a_ramroot_is_refused(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log._state, "stream", sys.stderr)
    assert cli.main(["ramroot", "--release"]) == 1
    assert "not running from a ramroot: /.cryptboot-ramroot not found" in (
        capsys.readouterr().err)


def test_memory_refusal_says_the_size_needed_before_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptboot.errors import SwitchError
    from cryptboot.switch import ramroot

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(3 << 20))          # 3 MiB of real blocks
    monkeypatch.setattr(ramroot, "_mem_available", lambda: 2 << 20)
    mountpoint = tmp_path / "mnt"
    with pytest.raises(SwitchError) as e:
        ramroot.enter(str(tree), mountpoint=str(mountpoint))
    assert e.value.message == (f"the RAM copy of {tree} needs about 3 MiB but only 2 MiB of "
                               "memory is available (the copy may take 80 %: 1 MiB)")
    assert not mountpoint.exists()                             # refused before any change
    monkeypatch.setattr(ramroot, "_mem_available", lambda: 64 << 20)
    ramroot._check_memory(str(tree))                           # fits: no refusal


def test_return_goes_back_to_the_released_mapping_by_name() -> None:
    from cryptboot.switch import ramroot

    text = ("put_old=/oldroot\nroot_source=/dev/dm-0\nclosed=root,CRYPT-LUKS2-aa-root\n"
            "closed=inner,CRYPT-PLAIN-inner\nreleased=1\n")
    state = ramroot._parse_state(text)
    assert ramroot.released_root(state, text) == "/dev/mapper/root"
    plain = "put_old=/oldroot\nroot_source=/dev/vda2\nreleased=1\n"   # no mapping under it
    assert ramroot.released_root(ramroot._parse_state(plain), plain) == "/dev/vda2"
    unreleased = "put_old=/oldroot\nroot_source=/dev/dm-0\n"           # unmounted by hand
    assert ramroot.released_root(ramroot._parse_state(unreleased), unreleased) is None
