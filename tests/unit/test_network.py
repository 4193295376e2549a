"""The initramfs network (issue 14): ip= and friends into the plan, the commands run, the
udhcpc event script, and the network's bring-up/take-down with fake ``ip``/``udhcpc``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cryptboot import network
from cryptboot.config.model import NetConfig, NetMethod, NetPlan, Plan, Root, SshPlan
from cryptboot.config.plan import build_plan
from cryptboot.errors import ConfigError
from cryptboot.initramfs.network import SCRIPT_SRC, cmdline_needs_network

D, S, OFF, D6 = NetMethod.DHCP, NetMethod.STATIC, NetMethod.OFF, NetMethod.DHCP6


def plan_of(words: str) -> Plan:
    return build_plan(f"root=/dev/vda {words}", None)


@pytest.mark.parametrize(("word", "expected"), [
    ("ip=dhcp", NetConfig(D)),
    ("ip=on", NetConfig(D)),
    ("ip=any", NetConfig(D)),
    ("ip=off", NetConfig(OFF)),
    ("ip=none", NetConfig(OFF)),
    ("ip=dhcp6", NetConfig(D6)),
    ("ip=eth1:dhcp", NetConfig(D, "eth1")),
    ("ip=enp0s3:dhcp:1500:52:54:00:12:34:56", NetConfig(D, "enp0s3")),
    ("ip=10.0.2.15::10.0.2.2:255.255.255.0:box:eth0:none",
     NetConfig(S, "eth0", "10.0.2.15", 24, "10.0.2.2", "box")),
    ("ip=192.168.1.7::192.168.1.1:16::eth0:off:192.168.1.1:9.9.9.9",
     NetConfig(S, "eth0", "192.168.1.7", 16, "192.168.1.1", dns=("192.168.1.1", "9.9.9.9"))),
    ("ip=10.1.2.3:::255.0.0.0:::", NetConfig(S, "", "10.1.2.3", 8)),
    ("ip=:::::eth0:dhcp", NetConfig(D, "eth0")),
    ("ip=:::::eth0:", NetConfig(D, "eth0")),
    ("ip=::::host1::dhcp", NetConfig(D, hostname="host1")),
    ("ip=010.000.002.015::::::", None),   # a client without a netmask: an error (below)
])
def test_ip_words(word: str, expected: NetConfig | None) -> None:
    if expected is None:
        with pytest.raises(ConfigError, match="needs a NETMASK"):
            plan_of(word)
        return
    assert plan_of(word).network.configs == (expected,)


@pytest.mark.parametrize(("word", "message"), [
    ("ip=", r"expected ip=VALUE"),
    ("ip=rarp", r"expected dhcp, on, any, dhcp6, off, none"),
    ("ip=10.0.2.300:::24:::none", r"the address: expected an IPv4 address"),
    ("ip=10.0.2.3::10.0.2:24::eth0:none", r"the gateway: expected an IPv4 address"),
    ("ip=10.0.2.3:::255.0.255.0::eth0:none", r"not contiguous"),
    ("ip=10.0.2.3:::33::eth0:none", r"the netmask: expected an IPv4 address"),
    ("ip=:::::eth0:rarp", r"autoconf 'rarp' is not implemented"),
    ("ip=::::::none", r"autoconf none needs a CLIENT"),
    ("ip=1:2:3:4:5:6:7:8:9:10:11", r"at most 10 fields"),
    ("ip=[fd00::2]::[fd00::1]:64::eth0:none", r"static IPv6 addresses are not implemented"),
    ("ip=10.0.0.2:::24::eth/0:none", r"expected an interface name"),
    ("ip=10.0.0.2:::24:bad_host!::none", r"expected a host name"),
    ("nameserver=dns.example", r"nameserver=dns.example: the server: expected an IPv4"),
    ("cryptboot.ssh.port=0", r"expected a TCP port"),
    ("cryptboot.ssh.port=65536", r"expected a TCP port"),
    ("cryptboot.ssh=maybe", r"cryptboot.ssh"),
])
def test_bad_words_name_the_file_and_what_was_found(word: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        plan_of(word)
    assert str(e.value).startswith("/proc/cmdline:1: ")


def test_other_words_and_defaults() -> None:
    p = plan_of("")
    assert p.network == NetPlan() and p.ssh == SshPlan()
    p = plan_of("ip=dhcp ip=eth1:dhcp rd.neednet nameserver=9.9.9.9 nameserver=1.1.1.1 "
                "cryptboot.net.timeout=1min cryptboot.ssh cryptboot.ssh.port=2222 "
                "cryptboot.ssh.shell=1")
    assert p.network == NetPlan((NetConfig(D), NetConfig(D, "eth1")), True,
                                ("9.9.9.9", "1.1.1.1"), 60.0)
    assert p.ssh == SshPlan(True, 2222, True)
    assert not p.warnings  # rd.neednet is no longer "not implemented"
    # the last word wins: an image's default cryptboot.ssh=1 is turned off on the kernel's line
    assert plan_of("cryptboot.ssh=1 cryptboot.ssh=0").ssh.enabled is False


def test_required_says_why() -> None:
    assert network.required(plan_of("")) == []
    assert network.required(plan_of("ip=off")) == []
    assert network.required(plan_of("ip=eth0:dhcp rd.neednet=1 cryptboot.ssh=1")) == [
        "ip=dhcp on eth0", "rd.neednet=1", "cryptboot.ssh=1"]


def test_netdev_in_crypttab_needs_the_network(tmp_path: Path) -> None:
    """crypttab's _netdev (systemd: the volume needs the network): the boot brings it up (DHCP
    on every interface, down before the hand-off) and the image gets the network's parts."""
    from cryptboot.initramfs.build import crypttab_needs_network
    from cryptboot.steps import network_wanted

    tab = "data UUID=5e1f0000-aaaa-4bbb-8ccc-000000000002 none luks,_netdev\n"
    p = build_plan("root=/dev/vda", tab)
    assert [v.options.netdev for v in p.volumes] == [True]
    assert network.required(p) == ["_netdev of data"]
    assert network_wanted(p) and not network_wanted(plan_of(""))
    f = tmp_path / "crypttab"
    f.write_text(tab)
    assert crypttab_needs_network(str(f))
    f.write_text(tab.replace(",_netdev", ""))
    assert not crypttab_needs_network(str(f)) and not crypttab_needs_network(None)


def test_image_cmdline_needs_network() -> None:
    assert cmdline_needs_network("ip=dhcp quiet")
    assert cmdline_needs_network("rd.neednet=1")
    assert cmdline_needs_network("cryptboot.ssh=1")
    assert not cmdline_needs_network("quiet ip=off cryptboot.ssh=0")
    assert not cmdline_needs_network("")


def test_argv() -> None:
    assert network.udhcpc_argv("eth0", "box") == [
        "udhcpc", "-f", "-q", "-i", "eth0", "-s", network.UDHCPC_SCRIPT, "-t", "4", "-T", "1",
        "-A", "2", "-x", "hostname:box"]
    assert network.udhcpc_argv("eth0", ipv6=True)[0] == "udhcpc6"
    conf = NetConfig(S, "eth0", "10.0.2.15", 24, "10.0.2.2")
    assert network.static_argv(conf, "eth0") == [
        ["ip", "link", "set", "eth0", "up"],
        ["ip", "-4", "addr", "add", "10.0.2.15/24", "dev", "eth0"],
        ["ip", "-4", "route", "add", "default", "via", "10.0.2.2", "dev", "eth0"]]
    assert network.static_argv(conf._replace(gateway=""), "eth0")[-1][3] == "add"
    assert network.down_argv("eth0") == [
        ["ip", "addr", "flush", "dev", "eth0"], ["ip", "route", "flush", "dev", "eth0"],
        ["ip", "link", "set", "eth0", "down"]]


# ---------------------------------------------------------------------------------------------
# The udhcpc event script, run by busybox sh with a fake ip


def fake_bin(tmp: Path, log: Path, names: tuple[str, ...], body: str = "") -> Path:
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    for name in names:
        prog = bindir / name
        prog.write_text(f'#!/bin/sh\necho "{name} $*" >>{log}\n{body}\n')
        prog.chmod(0o755)
    return bindir


@pytest.fixture
def sh() -> str:
    """A POSIX sh that runs ``ip`` from PATH (busybox sh prefers its own applet)."""
    path = shutil.which("dash") or shutil.which("sh")
    assert path is not None
    return path


def test_udhcpc_script_sets_address_route_dns(tmp_path: Path, sh: str) -> None:
    log = tmp_path / "log"
    bindir = fake_bin(tmp_path, log, ("ip",))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.0.2.3\n")
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "interface": "eth0", "ip": "10.0.2.15",
           "mask": "24", "router": "10.0.2.2 10.0.2.9", "dns": "10.0.2.3 9.9.9.9",
           "domain": "example.org", "broadcast": "10.0.2.255",
           "CRYPTBOOT_NET_DIR": str(tmp_path / "net"), "CRYPTBOOT_RESOLV_CONF": str(resolv)}
    for event in ("deconfig", "bound", "renew"):
        subprocess.run([sh, str(SCRIPT_SRC), event], env=env, check=True)
    calls = log.read_text().splitlines()
    assert calls[:2] == ["ip -4 addr flush dev eth0", "ip link set eth0 up"]
    assert calls[2:5] == ["ip -4 addr flush dev eth0",
                          "ip -4 addr add 10.0.2.15/24 broadcast 10.0.2.255 dev eth0",
                          "ip -4 route add default via 10.0.2.2 dev eth0"]  # the first router
    # each DNS server once, however often the lease is renewed
    assert resolv.read_text() == ("nameserver 10.0.2.3\nsearch example.org\n"
                                  "nameserver 9.9.9.9\n")
    assert network.read_lease("eth0", str(tmp_path / "net")) == {
        "ip": "10.0.2.15", "mask": "24", "router": "10.0.2.2 10.0.2.9",
        "dns": "10.0.2.3 9.9.9.9", "domain": "example.org"}


# ---------------------------------------------------------------------------------------------
# Bring-up and take-down with fake programs and a fake /sys/class/net


def fake_sys_net(tmp: Path, ifaces: dict[str, str]) -> Path:
    root = tmp / "sys-net"
    for name, kind in ifaces.items():
        (root / name).mkdir(parents=True)
        (root / name / "type").write_text(kind + "\n")
    return root


def netplan(words: str) -> Plan:
    p = plan_of(words)
    return p._replace(network=p.network._replace(timeout=2.0))


def started(tmp: Path, plan: Plan | str, ifaces: dict[str, str], **kw: str) -> network.Network:
    """A Network for *plan* over a fake /sys/class/net holding *ifaces*, already started."""
    net = network.Network(netplan(plan) if isinstance(plan, str) else plan,
                          sys_net=str(fake_sys_net(tmp, ifaces)), run_dir=str(tmp / "net"),
                          **kw)
    net.start()
    return net


@pytest.fixture
def fake_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ip and udhcpc that record their argv; udhcpc writes a lease as the real script does."""
    log = tmp_path / "calls"
    netdir = tmp_path / "net"
    netdir.mkdir()
    bindir = fake_bin(tmp_path, log, ("ip",))
    udhcpc = bindir / "udhcpc"
    udhcpc.write_text(f'#!/bin/sh\necho "udhcpc $*" >>{log}\n'
                      f'printf "ip=10.0.2.15\\nmask=24\\nrouter=10.0.2.2\\ndns=10.0.2.3\\n" '
                      f'>{netdir}/$4.lease\n')
    udhcpc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    return log


def test_dhcp_on_every_ethernet_interface_then_down(tmp_path: Path, fake_path: Path) -> None:
    net = started(tmp_path, "rd.neednet=1",
                  {"lo": "772", "eth0": "1", "eth1": "1", "wg0": "65534"},
                  resolv_conf=str(tmp_path / "resolv"))
    assert net.wait(10) is True
    net.finished.wait(10)
    assert sorted(net.ifaces) == ["eth0", "eth1"]
    assert sorted(r.split(" in ")[0] for r in net.results) == [
        "eth0 10.0.2.15/24 via 10.0.2.2, DNS 10.0.2.3 (DHCP)",
        "eth1 10.0.2.15/24 via 10.0.2.2, DNS 10.0.2.3 (DHCP)"]
    assert net.errors == []
    assert sorted(net.down()) == ["eth0", "eth1"]
    calls = fake_path.read_text().splitlines()
    assert "ip link set eth0 up" in calls and "ip link set eth1 up" in calls
    assert any(c.startswith("udhcpc -f -q -i eth0 -s ") for c in calls)
    for iface in ("eth0", "eth1"):
        for argv in network.down_argv(iface):
            assert " ".join(argv) in calls


def test_static_address_and_dns(tmp_path: Path, fake_path: Path) -> None:
    resolv = tmp_path / "resolv"
    net = started(tmp_path,
                  "ip=10.0.2.77::10.0.2.2:255.255.255.0::eth0:none:10.0.2.3 nameserver=9.9.9.9",
                  {"eth0": "1"}, resolv_conf=str(resolv))
    assert net.wait(10)
    assert net.results[0].startswith("eth0 10.0.2.77/24 via 10.0.2.2 (static) in ")
    assert resolv.read_text() == "nameserver 9.9.9.9\nnameserver 10.0.2.3\n"
    calls = fake_path.read_text().splitlines()
    assert calls[:3] == ["ip link set eth0 up", "ip -4 addr add 10.0.2.77/24 dev eth0",
                         "ip -4 route add default via 10.0.2.2 dev eth0"]
    assert not any(c.startswith("udhcpc") for c in calls)


def test_missing_interface_is_one_line_after_the_timeout(tmp_path: Path,
                                                         fake_path: Path) -> None:
    plan = netplan("ip=eth7:dhcp")
    net = started(tmp_path, plan._replace(network=plan.network._replace(timeout=0.3)),
                  {"eth0": "1"})
    assert net.wait(5) is False
    assert net.errors == ["no eth7 within 0.3 s (interfaces seen: eth0; is the NIC's driver in "
                          "the image?)"]
    assert net.down() == []


def test_udhcpc_failure_is_reported(tmp_path: Path, fake_path: Path) -> None:
    (tmp_path / "bin" / "udhcpc").write_text("#!/bin/sh\necho 'no lease, failing' >&2\nexit 1\n")
    net = started(tmp_path, "ip=dhcp", {"eth0": "1"})
    assert net.wait(5) is False
    assert net.errors == ["eth0: udhcpc failed with exit status 1: no lease, failing"]


def test_down_stops_a_waiting_udhcpc(tmp_path: Path, fake_path: Path) -> None:
    """No DHCP server: udhcpc keeps asking; down() ends it at once and takes eth0 down."""
    (tmp_path / "bin" / "udhcpc").write_text("#!/bin/sh\nexec sleep 60\n")
    net = started(tmp_path, "ip=dhcp", {"eth0": "1"})
    assert net.wait(0.5) is False
    assert net.down() == ["eth0"]
    assert net.finished.wait(5)
    assert net.errors == []
    assert "ip link set eth0 down" in fake_path.read_text()


def test_plan_without_root_field_defaults() -> None:
    """Plans built by other code (tests, tools) get the network's defaults."""
    p = Plan((), Root(None))
    assert network.required(p) == [] and p.network.timeout == 30.0 and p.ssh.port == 22
    assert os.path.basename(network.UDHCPC_SCRIPT) == SCRIPT_SRC.name


def test_a_failing_ip_command_is_one_reported_line(tmp_path: Path, fake_path: Path) -> None:
    (tmp_path / "bin" / "ip").write_text("#!/bin/sh\necho 'RTNETLINK answers: File exists' >&2\n"
                                         "exit 2\n")
    net = started(tmp_path, "ip=10.0.2.77:::24::eth0:none", {"eth0": "1"})
    assert net.wait(5) is False
    assert net.errors == ["eth0: ip failed with exit status 2: RTNETLINK answers: File exists"]


def test_down_while_waiting_for_the_interface(tmp_path: Path, fake_path: Path) -> None:
    """The boot is over before the NIC appeared: no error, nothing to take down."""
    net = started(tmp_path, "ip=dhcp", {})
    assert net.wait(0.3) is False
    assert net.down() == []
    assert net.finished.wait(5) and net.errors == []
