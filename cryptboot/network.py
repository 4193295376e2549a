"""The initramfs network: up only when the plan needs it, down before the hand-off.

Needed when the command line has ``ip=`` (not ``off``), ``rd.neednet=1`` or ``cryptboot.ssh=1``,
or when other code asks for it at run time (:func:`ensure`: a tang token found on a volume,
issue 13). It runs in a thread of its own beside the device wait and the prompt, so the console
prompt never waits for a DHCP server:

1. wait for the interfaces: those named by ``ip=``, else every ethernet interface present once
   the first one appeared (the NIC modules are loaded by the boot's module step; the kernel names
   them ``eth0``..., there are no udev network rules in the image);
2. DHCP with busybox ``udhcpc`` (the image's ``udhcpc.sh`` event script sets the address, the
   default route and ``/etc/resolv.conf`` and writes the lease to ``/run/cryptboot/net/``), or
   a static address with ``ip addr`` / ``ip route``;
3. :func:`wait` returns once one interface has its address (tang waits on it).

:func:`down` (before the hand-off) stops ``udhcpc``, flushes every address and route of the
interfaces it set up and brings them down, so the real system's network set-up starts clean;
``rd.neednet=1`` keeps them up instead.
"""

from __future__ import annotations

import os
import threading
import time

from cryptboot import log
from cryptboot.config.model import NetConfig, NetMethod, Plan
from cryptboot.errors import CryptbootError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

SYS_NET = "/sys/class/net"
RUN_DIR = "/run/cryptboot/net"
UDHCPC_SCRIPT = "/usr/share/cryptboot/udhcpc.sh"
RESOLV_CONF = "/etc/resolv.conf"
ARPHRD_ETHER = "1"
POLL = 0.05


def required(plan: Plan) -> list[str]:
    """Why ``plan`` needs the network, in words (empty: it does not)."""
    reasons = [f"ip={c.method.value}" + (f" on {c.device}" if c.device else "")
               for c in plan.network.configs if c.method is not NetMethod.OFF]
    if plan.network.need:
        reasons.append("rd.neednet=1")
    reasons += [f"_netdev of {v.name}" for v in plan.volumes if v.options.netdev]
    if plan.ssh.enabled:
        reasons.append("cryptboot.ssh=1")
    return reasons


def udhcpc_argv(iface: str, hostname: str = "", ipv6: bool = False) -> list[str]:
    """busybox ``udhcpc`` in the foreground (the thread waits for it), exiting once it has a
    lease (``-q``), asking again every few seconds until :func:`down` stops it."""
    argv = ["udhcpc6" if ipv6 else "udhcpc", "-f", "-q", "-i", iface, "-s", UDHCPC_SCRIPT,
            "-t", "4", "-T", "1", "-A", "2"]
    if hostname and not ipv6:
        argv += ["-x", f"hostname:{hostname}"]
    return argv


def static_argv(conf: NetConfig, iface: str) -> list[list[str]]:
    """The ``ip`` commands of a static ``ip=`` word."""
    cmds = [["ip", "link", "set", iface, "up"],
            ["ip", "-4", "addr", "add", f"{conf.address}/{conf.prefix}", "dev", iface]]
    if conf.gateway:
        cmds.append(["ip", "-4", "route", "add", "default", "via", conf.gateway, "dev", iface])
    return cmds


def down_argv(iface: str) -> list[list[str]]:
    return [["ip", "addr", "flush", "dev", iface], ["ip", "route", "flush", "dev", iface],
            ["ip", "link", "set", iface, "down"]]


def ethernet_interfaces(sys_net: str = SYS_NET) -> list[str]:
    """Interfaces of type ethernet (not ``lo``), sorted."""
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        return []
    out = []
    for name in names:
        try:
            with open(f"{sys_net}/{name}/type") as f:
                if f.read().strip() != ARPHRD_ETHER:
                    continue
        except OSError:
            continue
        out.append(name)
    return out


def read_lease(iface: str, run_dir: str = RUN_DIR) -> dict[str, str]:
    """What ``udhcpc.sh`` wrote for ``iface``: ``ip``, ``mask``, ``router``, ``dns``..."""
    out: dict[str, str] = {}
    try:
        with open(f"{run_dir}/{iface}.lease") as f:
            for line in f:
                key, eq, value = line.strip().partition("=")
                if eq:
                    out[key] = value
    except OSError:
        pass
    return out


class Network:
    """The network of one boot: :meth:`start` it, :meth:`wait` for it, take it :meth:`down`."""

    def __init__(self, plan: Plan, *, sys_net: str = SYS_NET, run_dir: str = RUN_DIR,
                 resolv_conf: str = RESOLV_CONF) -> None:
        self.plan = plan
        self.sys_net = sys_net
        self.run_dir = run_dir
        self.resolv_conf = resolv_conf
        self.ready = threading.Event()      # one interface has its address
        self.finished = threading.Event()   # the thread is done (every interface or failure)
        self.stopping = threading.Event()
        self.ifaces: list[str] = []         # interfaces brought up (taken down by down())
        self.results: list[str] = []        # what happened, in words (logged by report())
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.took: float | None = None

    # -- bringing it up (in a thread)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="cryptboot-network", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._up()
        except Exception as e:  # noqa: BLE001 - reported by report(); the boot goes on
            self.errors.append(e.message if isinstance(e, CryptbootError)
                               else f"{type(e).__name__}: {e}")
        finally:
            self.finished.set()

    def _configs(self) -> list[NetConfig]:
        confs = [c for c in self.plan.network.configs if c.method is not NetMethod.OFF]
        if not confs and not self.plan.network.configs:
            confs = [NetConfig(NetMethod.DHCP)]  # nothing said: DHCP on every interface
        return confs

    def _up(self) -> None:
        os.makedirs(self.run_dir, mode=0o755, exist_ok=True)
        self._write_resolv(())
        threads = []
        for conf, iface in self._interfaces(self._configs()):
            if self.stopping.is_set():
                return
            t = threading.Thread(target=self._one, args=(conf, iface), daemon=True,
                                 name=f"cryptboot-net-{iface}")
            t.start()
            threads.append(t)
        for t in threads:
            t.join()

    def _interfaces(self, confs: list[NetConfig]) -> list[tuple[NetConfig, str]]:
        """(config, interface) pairs once the interfaces exist (up to the network timeout)."""
        timeout = self.plan.network.timeout
        end = time.monotonic() + (timeout or 1e9)
        named = [c for c in confs if c.device]
        wildcard = [c for c in confs if not c.device]
        while True:
            present = ethernet_interfaces(self.sys_net)
            missing = [c.device for c in named if c.device not in present]
            if not missing and (not wildcard or present):
                break
            if self.stopping.is_set():  # taken down before it came up
                return []
            if time.monotonic() > end:
                seen = ", ".join(present) or "none"
                what = ", ".join(missing) if missing else "any ethernet interface"
                raise CryptbootError(f"no {what} within {timeout:g} s (interfaces seen: {seen}; "
                                "is the NIC's driver in the image?)")
            time.sleep(POLL)
        pairs = [(c, c.device) for c in named]
        taken = {c.device for c in named}
        for c in wildcard:
            if c.method is NetMethod.STATIC:  # a static address goes on the first interface
                first = next((i for i in present if i not in taken), None)
                if first is not None:
                    pairs.append((c, first))
                    taken.add(first)
            else:
                pairs += [(c, i) for i in present if i not in taken]
                taken.update(present)
        return pairs

    def _one(self, conf: NetConfig, iface: str) -> None:
        try:
            self._configure(conf, iface)
        except Exception as e:  # noqa: BLE001 - reported by report(), never over the prompt
            self.errors.append(f"{iface}: " + (e.message if isinstance(e, CryptbootError)
                                                else f"{type(e).__name__}: {e}"))

    def _configure(self, conf: NetConfig, iface: str) -> None:
        from cryptboot.run import run

        t0 = time.monotonic()
        with self._lock:
            self.ifaces.append(iface)
        if conf.hostname:
            _set_hostname(conf.hostname)
        if conf.method is NetMethod.STATIC:
            for argv in static_argv(conf, iface):
                run(argv)
            self._write_resolv(conf.dns)
            via = f" via {conf.gateway}" if conf.gateway else ""
            self._done(f"{iface} {conf.address}/{conf.prefix}{via} (static)", t0)
            return
        ipv6 = conf.method is NetMethod.DHCP6
        run(["ip", "link", "set", iface, "up"])
        argv = udhcpc_argv(iface, conf.hostname, ipv6)
        if ipv6 and not _has_applet("udhcpc6"):
            self.errors.append(f"{iface}: ip=dhcp6 needs busybox udhcpc6, which this image "
                               "lacks; only IPv6 link-local addresses")
            return
        proc = self._spawn(argv)
        if proc is None:
            return
        err = proc.communicate()[1]
        if self.stopping.is_set():
            return
        if proc.returncode != 0:
            last = (err or b"").decode(errors="replace").strip().splitlines()[-1:]
            self.errors.append(f"{iface}: udhcpc failed with exit status {proc.returncode}"
                               + (f": {last[0]}" if last else ""))
            return
        lease = read_lease(iface, self.run_dir)
        addr = lease.get("ip", "?") + (f"/{lease['mask']}" if lease.get("mask") else "")
        via = f" via {lease['router'].split()[0]}" if lease.get("router") else ""
        dns = f", DNS {lease['dns']}" if lease.get("dns") else ""
        self._done(f"{iface} {addr}{via}{dns} (DHCP{'v6' if ipv6 else ''})", t0)

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes] | None:
        import subprocess

        from cryptboot.run import minimal_env

        with self._lock:
            if self.stopping.is_set():
                return None
            log.debug("run: " + " ".join(argv))
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env=minimal_env())
            except OSError as e:
                self.errors.append(f"{argv[0]}: cannot run: {e.strerror}")
                return None
            self._procs.append(proc)
            return proc

    def _done(self, text: str, t0: float) -> None:
        took = time.monotonic() - t0
        with self._lock:
            self.results.append(f"{text} in {took:.2f}s")
            if self.took is None:
                self.took = time.monotonic() - self._t0
        log.debug(f"network: {text}")
        self.ready.set()

    def _write_resolv(self, dns: tuple[str, ...]) -> None:
        servers = list(dns) + list(self.plan.network.nameservers)
        if not servers:
            return
        with self._lock:
            try:
                with open(self.resolv_conf) as f:
                    old = f.read()
            except OSError:
                old = ""
            lines = old.splitlines()
            lines += [f"nameserver {s}" for s in servers if f"nameserver {s}" not in lines]
            with open(self.resolv_conf, "w") as f:
                f.write("\n".join(lines) + "\n")

    # -- for the rest of the boot

    def wait(self, timeout: float | None) -> bool:
        """Block until an interface has its address (or every attempt failed, or ``timeout``);
        true when the network is up."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.ready.is_set() and not self.finished.is_set():
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            self.ready.wait(POLL if left is None else min(POLL * 4, left))
        return self.ready.is_set()

    def report(self) -> None:
        """Log what happened so far (never from the thread: a line would break an open
        prompt)."""
        with self._lock:
            results, errors = list(self.results), list(self.errors)
            self.results.clear()
            self.errors.clear()
        for text in results:
            log.info(f"network: {text}")
        for text in errors:
            log.warning(f"network: {text}")
        if not results and not errors and not self.ready.is_set():
            waited = time.monotonic() - self._t0
            log.warning(f"network: no interface got an address within {waited:.1f} s")

    def down(self, keep: bool = False) -> list[str]:
        """Stop udhcpc (no process of the initramfs may outlive it) and, unless ``keep``, take
        every interface that was set up down, flushed; returns their names."""
        from cryptboot.run import run

        self.stopping.set()
        with self._lock:
            procs = list(self._procs)
            ifaces = list(self.ifaces)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(2)
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(5)
        if keep:
            return ifaces
        for iface in ifaces:
            for argv in down_argv(iface):
                run(argv, check=False)
        return ifaces


def _set_hostname(name: str) -> None:
    try:
        with open("/proc/sys/kernel/hostname", "w") as f:
            f.write(name)
    except OSError as e:
        log.debug(f"network: cannot set the host name {name}: {e.strerror}")


def _has_applet(name: str) -> bool:
    from cryptboot.run import which

    return which(name) is not None


# ---------------------------------------------------------------------------------------------
# The boot's network (one per boot; the hooks for the boot steps and for key providers)

_current: Network | None = None


def start(plan: Plan) -> Network:
    """Bring the network up in the background (once per boot); returns it."""
    global _current
    if _current is None:
        _current = Network(plan)
        _current.start()
    return _current


def ensure(plan: Plan, timeout: float | None = None) -> bool:
    """For key providers that need the network (tang): start it if the plan did not, wait up
    to ``timeout`` (None: the plan's network timeout) for an address; true when up."""
    net = start(plan)
    return net.wait(plan.network.timeout if timeout is None else timeout)


def current() -> Network | None:
    return _current


def stop(plan: Plan) -> str:
    """Before the hand-off: report, then take the network down unless ``rd.neednet=1``."""
    global _current
    net = _current
    if net is None:
        return "no network was brought up"
    net.report()
    _current = None
    if plan.network.need:
        kept = net.down(keep=True)
        return "kept up for the real system (rd.neednet=1): " + (", ".join(kept) or
                                                                  "no interface")
    ifaces = net.down()
    return (", ".join(ifaces) + " flushed and down") if ifaces else "no interface was set up"
