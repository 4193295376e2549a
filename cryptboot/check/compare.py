"""Compare what the next boot needs with what the image holds, and the plan with the system.

Needs come from two places: the running system's block stack under ``/``, ``/usr`` and the
resume device (what this machine boots from now), and the plan the image will follow (its
``/etc/crypttab`` and the kernel command line: the volumes the boot will unlock). Each need
carries the reason it exists, so a finding says what is missing and why: ``module virtio_blk
(driver of /dev/vda, under the LUKS volume root of /) is not in the image``.

Only reads: ``cryptsetup isLuks``, ``luksDump`` and ``open --test-passphrase`` never map
anything; a keyfile copied in the image is tested on stdin, one on this system by its path.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from cryptboot.check import system
from cryptboot.check.image import Image
from cryptboot.check.system import Block, SystemRoot
from cryptboot.config.model import CryptType, KeyKind, KeySource, Plan, Volume
from cryptboot.errors import ConfigError
from cryptboot.run import run


@dataclass(frozen=True)
class Finding:
    kind: str          # module, program, keyfile, device, volume, root, plan, kernel
    name: str
    message: str
    blocking: bool = True


@dataclass
class Needs:
    modules: dict[str, str] = field(default_factory=dict)      # module -> why
    algorithms: dict[str, str] = field(default_factory=dict)   # crypto algorithm -> why
    programs: dict[str, str] = field(default_factory=dict)     # program -> why

    def module(self, name: str, why: str) -> None:
        self.modules.setdefault(name.replace("-", "_"), why)

    def program(self, name: str, why: str) -> None:
        self.programs.setdefault(name, why)


@dataclass
class Report:
    image: str
    kver: str
    parts: list[str]
    findings: list[Finding]
    checked: dict[str, list[str]]

    @property
    def blocking(self) -> bool:
        return any(f.blocking for f in self.findings)


@dataclass
class Context:
    image: Image
    sr: SystemRoot
    kver: str
    km: system.KernelModules
    plan: Plan | None
    host_crypttab: tuple[str, str | None]   # (path, text)
    needs: Needs = field(default_factory=Needs)
    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, name: str, message: str, blocking: bool = True) -> None:
        if not any(f.message == message for f in self.findings):
            self.findings.append(Finding(kind, name, message, blocking))

    def note(self, what: str, text: str) -> None:
        notes = self.checked.setdefault(what, [])
        if text not in notes:
            notes.append(text)


# ---------------------------------------------------------------------------------------------
# Needs of a block stack


def _stack_needs(ctx: Context, top: str, where: str) -> list[Block]:
    """Add the modules and programs of every layer under block device ``top``; ``where`` names
    what sits on it ("/", "the LUKS volume root")."""
    layers = system.stack(ctx.sr, top)
    crypt_above: str | None = None
    for b in layers:
        under = f"under {where}" if crypt_above is None else \
            f"under the LUKS volume {crypt_above} of {where}"
        if b.kind == "crypt":
            ctx.needs.module("dm_crypt", f"dm-crypt, for {b.node} {under}")
            ctx.needs.program("cryptsetup", f"to unlock {b.node} {under}")
            if b.slaves:
                _luks_needs(ctx, b.slaves[0], f"LUKS volume {b.dm_name}", under)
            crypt_above = crypt_above or b.dm_name or b.name
        elif b.kind == "lvm":
            ctx.needs.module("dm_mod", f"device-mapper, for the logical volume {b.node} {under}")
            ctx.needs.program("lvm", f"to activate the logical volume {b.node} {under}")
        elif b.kind == "dm":
            ctx.needs.module("dm_mod", f"device-mapper, for {b.node} {under}")
        elif b.kind == "md":
            ctx.needs.module("md_mod", f"md RAID, for /dev/{b.name} {under}")
            personality = system.md_module(ctx.sr, b.name)
            if personality:
                ctx.needs.module(personality, f"md personality of /dev/{b.name} {under}")
            ctx.needs.program("mdadm", f"to assemble /dev/{b.name} {under}")
        elif b.kind == "disk":
            for i, (device, driver, module) in enumerate(system.drivers(ctx.sr, b.name)):
                if module is None:
                    continue
                named = "" if driver.replace("-", "_") == module else f" {driver}"
                of = f"/dev/{b.name}" if i == 0 else f"{device}, a controller of /dev/{b.name}"
                ctx.needs.module(module, f"driver{named} of {of}, {under}")
    return layers


def _luks_needs(ctx: Context, name: str, what: str, under: str) -> None:
    """The kernel ciphers of the LUKS header on block device ``name``."""
    node = ctx.sr.node(name)
    info = system.luks_dump(ctx.sr.path(node))
    if info is None:
        return
    for spec in info.ciphers:
        for alg in system.cipher_algorithms(spec):
            ctx.needs.algorithms.setdefault(alg, f"cipher {spec} of {what} on {node}"
                                            + (f", {under}" if under else ""))
    ctx.note("luks", f"{node}: LUKS{info.version} cipher {', '.join(info.ciphers) or '?'}, "
                     f"hash {', '.join(info.hashes) or '?'} (hashes run in user space)")


# ---------------------------------------------------------------------------------------------
# The running system's stack: /, /usr, resume


def _targets(ctx: Context, cmdline_resume: str | None) -> list[tuple[str, str]]:
    """(what, block device name) of /, a separate /usr and the resume device."""
    mounts = system.mounts(ctx.sr)
    out: list[tuple[str, str]] = []
    for target in ("/", "/usr"):
        m = mounts.get(target)
        if m is None:
            continue
        name = system.mount_block(ctx.sr, m)
        if name is None:
            continue
        out.append((target, name))
        fs = m.fstype
        if target == "/" and fs not in ctx.km.builtin and fs in ctx.km.deps:
            ctx.needs.module(fs, f"file system of {target}")
    resume = None
    if cmdline_resume:
        from cryptboot.config.devspec import parse_devspec

        try:
            spec = parse_devspec(cmdline_resume)
        except ConfigError:
            spec = None
        resume = system.resolve(ctx.sr, spec) if spec else None
    else:
        devnum = (system._read(ctx.sr.sysfs / "power/resume") or "0:0")
        if devnum != "0:0":
            resume = system.by_devnum(ctx.sr, devnum)
    if resume:
        out.append(("the resume device", resume))
    return out


def _crypt_layers(layers: list[Block]) -> list[Block]:
    return [b for b in layers if b.kind == "crypt" and b.slaves]


# ---------------------------------------------------------------------------------------------
# The plan's volumes


def _volume_checks(ctx: Context, v: Volume, devs: dict[str, str]) -> None:
    where = f"volume {v.name} ({v.origin})" if v.origin else f"volume {v.name}"
    name = system.resolve(ctx.sr, v.source)
    if name is None:
        ctx.add("device", str(v.source),
                f"device {v.source} of {where} does not exist on this system",
                blocking=not v.options.nofail)
        return
    devs[v.name] = name
    node = ctx.sr.node(name)
    path = ctx.sr.path(node)
    ctx.note("volumes", f"{v.name}: {v.source} is {node}")
    ctx.needs.module("dm_crypt", f"dm-crypt, to unlock {where}")
    ctx.needs.program("cryptsetup", f"to unlock {where}")
    if v.options.type is CryptType.LUKS and (v.options.header or v.options.header_device):
        ctx.note("volumes", f"{v.name}: detached header: the header and its cipher are not "
                            "checked")
    elif v.options.type is CryptType.LUKS:
        if not system.is_luks(path):
            ctx.add("device", str(v.source),
                    f"device {node} ({v.source}) of {where} is not a LUKS device "
                    "(cryptsetup isLuks)")
            return
        _luks_needs(ctx, name, f"LUKS volume {v.name}", "")
    elif v.options.cipher:
        for alg in system.cipher_algorithms(v.options.cipher):
            ctx.needs.algorithms.setdefault(alg, f"cipher {v.options.cipher} of {where}")
    _stack_needs(ctx, name, f"the {v.options.type.value.upper()} volume {v.name}")
    prompt = any(k.kind is KeyKind.PROMPT for k in v.keys)
    for k in v.keys:
        if k.kind is KeyKind.FILE and k.path:
            _keyfile_check(ctx, v, k, path, where, prompt)
        elif k.kind in (KeyKind.DEVFILE, KeyKind.DEVRAW) and k.device is not None:
            if system.resolve(ctx.sr, k.device) is None:
                ctx.add("device", str(k.device),
                        f"key device {k.device} of {where} does not exist on this system"
                        + (" (the boot will ask for a passphrase instead)" if prompt else ""),
                        blocking=not prompt)


def _test_key(v: Volume, k: KeySource, device: str, *, key: bytes | None = None,
              path: str | None = None) -> bool:
    """``cryptsetup open --test-passphrase``: does this key open the volume (mapping nothing)?
    The key travels on stdin, or as the path of a file that exists."""
    argv = ["cryptsetup", "open", "--test-passphrase", "--key-file", path or "-"]
    if k.offset:
        argv += ["--keyfile-offset", str(k.offset)]
    if k.size is not None:
        argv += ["--keyfile-size", str(k.size)]
    if v.options.key_slot is not None:
        argv += ["--key-slot", str(v.options.key_slot)]
    if v.options.header and v.options.header_device is None:
        argv += ["--header", v.options.header]
    argv.append(device)
    return run(argv, input=key if key is not None else b"", check=False).returncode == 0


def _keyfile_check(ctx: Context, v: Volume, k: KeySource, device: str, where: str,
                   prompt: str | bool) -> None:
    assert k.path is not None
    fallback = " (the boot will ask for a passphrase instead)" if prompt else ""
    data = ctx.image.read(k.path)
    host = ctx.sr.path(k.path)
    if data is None:
        member = ctx.image.lookup(k.path)
        if member is not None and member.data is None:
            return   # larger than we keep: present; not tested
        msg = f"keyfile {k.path} (key of {where}) is not in the image{fallback}"
        if os.path.isfile(host):
            if _test_key(v, k, device, path=host):
                msg += f"; {k.path} on this system opens the volume"
            else:
                msg += f"; {k.path} on this system does not open the volume either"
        ctx.add("keyfile", k.path, msg, blocking=not prompt)
        return
    if v.options.type in (CryptType.LUKS, CryptType.BITLK, CryptType.TCRYPT):
        if _test_key(v, k, device, key=data):
            ctx.note("keyfiles", f"{k.path}: the image's copy opens {v.name}")
        else:
            ctx.add("keyfile", k.path,
                    f"keyfile {k.path} in the image does not open {where} (cryptsetup open "
                    f"--test-passphrase){fallback}", blocking=not prompt)


# ---------------------------------------------------------------------------------------------
# The comparison


def _image_modules(ctx: Context) -> set[str]:
    return ctx.image.modules(ctx.kver)


def _module_findings(ctx: Context) -> None:
    have = _image_modules(ctx)
    km = ctx.km

    def present(m: str) -> bool:
        return m in have or m in km.builtin

    for m, why in ctx.needs.modules.items():
        if m in km.builtin:
            continue
        if m not in have:
            if km.known() and m not in km.deps:
                ctx.add("module", m, f"module {m} ({why}) does not exist for kernel "
                        f"{ctx.kver} (not in {km.moddir}/modules.dep nor built in)")
            else:
                ctx.add("module", m, f"module {m} ({why}) is not in the image")
            continue
        for d in _closure(km, m):
            if not present(d):
                ctx.add("module", d, f"module {d} (needed by {m}: {why}) is not in the image")
    for alg, why in ctx.needs.algorithms.items():
        providers, builtin = km.providers(f"crypto-{alg}")
        if builtin or providers & have:
            continue
        if not providers:
            if km.known():
                ctx.add("module", alg, f"kernel {ctx.kver} has no module for the crypto "
                        f"algorithm {alg} ({why}) and does not have it built in")
            continue
        names = sorted(providers)
        label = f"module {names[0]}" if len(names) == 1 else \
            f"a module for {alg} (one of {', '.join(names)})"
        ctx.add("module", names[0] if len(names) == 1 else alg,
                f"{label} ({why}) is not in the image")


def _closure(km: system.KernelModules, m: str) -> list[str]:
    out: list[str] = []
    todo = list(km.deps.get(m, []))
    while todo:
        d = todo.pop()
        if d not in out:
            out.append(d)
            todo.extend(km.deps.get(d, []))
    return out


def _program_findings(ctx: Context) -> None:
    for p, why in ctx.needs.programs.items():
        if not ctx.image.has_file_exec(p):
            ctx.add("program", p, f"program {p} ({why}) is not in the image")


def _coverage(ctx: Context, target: str, layers: list[Block], devs: dict[str, str]) -> None:
    """Every LUKS volume under ``target`` must be unlocked by a volume of the plan."""
    for b in _crypt_layers(layers):
        backing = b.slaves[0]
        if backing in devs.values():
            continue
        host_path, host_text = ctx.host_crypttab
        hint = ""
        if host_text:
            hint = _host_line(ctx, host_path, host_text, backing)
        ctx.add("volume", b.dm_name or b.name,
                f"the LUKS volume {b.dm_name} on /dev/{backing} (under {target}) is unlocked "
                "by nothing the boot reads: no crypttab line in the image and nothing on the "
                f"command line names it{hint}")


def _host_line(ctx: Context, path: str, text: str, backing: str) -> str:
    from cryptboot.config.crypttab import parse_crypttab

    try:
        entries = parse_crypttab(text, path)
    except ConfigError:
        return ""
    for e in entries:
        if system.resolve(ctx.sr, e.source) == backing:
            return (f" ({e.where} names it as {e.name}: mark it 'initramfs' and rebuild the "
                    "image)")
    return ""


def _root_check(ctx: Context, devs: dict[str, str], root_dev: str | None) -> None:
    plan = ctx.plan
    if plan is None:
        return
    spec = plan.root.spec
    if spec is None:
        ctx.add("root", "root=", "no root= on the kernel command line: the boot has no root "
                "file system to mount")
        return
    from cryptboot.config.devspec import mapper_name

    if mapper_name(spec) is not None:
        return   # build_plan has checked that a volume of the plan is named so
    name = system.resolve(ctx.sr, spec)
    if name is None:
        closed = [v for v, d in devs.items() if not _holders(ctx, d)]
        if closed:
            ctx.add("root", str(spec), f"root={spec} is no device on this system now; it may "
                    f"be inside {', '.join(closed)}, which is not open here, so it is not "
                    "checked", blocking=False)
        else:
            ctx.add("root", str(spec), f"root={spec} is no device on this system, and every "
                    "volume of the plan is open here: no mapping the plan makes holds it")
        return
    layers = system.stack(ctx.sr, name)
    crypts = _crypt_layers(layers)
    if crypts and not any(b.slaves[0] in devs.values() for b in crypts):
        return   # reported by _coverage when it is the running root; else below
    if root_dev is not None and name != root_dev:
        ctx.add("root", str(spec), f"root={spec} is /dev/{name}, but / is mounted from "
                f"/dev/{root_dev} now", blocking=False)


def _holders(ctx: Context, name: str) -> list[str]:
    d = ctx.sr.sysfs / "class/block" / name / "holders"
    return sorted(os.listdir(d)) if d.is_dir() else []


def _shell_vars(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, eq, v = line.strip().partition("=")
        if eq and k and not k.startswith("#"):
            out[k] = v.strip().strip("\"'")
    return out


def system_keymap(sr: SystemRoot) -> tuple[str, str] | None:
    """(keymap, where it is set) of this system: vconsole.conf's KEYMAP, else console-setup's
    XKBLAYOUT (and variant); None for the kernel's default US layout."""
    for rel, keys in (("etc/vconsole.conf", ("KEYMAP",)),
                      ("etc/default/keyboard", ("XKBLAYOUT", "XKBVARIANT"))):
        text = system._read(sr.root / rel)
        if text is None:
            continue
        v = _shell_vars(text)
        name = "-".join(v[k] for k in keys if v.get(k))
        if name and name not in ("us", "us-"):
            return name, f"/{rel}"
        return None
    return None


def _keymap_check(ctx: Context) -> None:
    """A volume that asks for a passphrase needs this system's keymap in the image (dracut:
    /etc/vconsole.conf; initramfs-tools: /etc/boottime.kmap.gz; any KEYMAP.map file)."""
    if ctx.plan is None:
        return
    asking = [v.name for v in ctx.plan.volumes if not v.options.noauto and
              any(k.kind is KeyKind.PROMPT for k in v.keys)]
    found = system_keymap(ctx.sr)
    if not asking or found is None:
        return
    name, where = found
    conf = ctx.image.read("etc/vconsole.conf")
    if conf is not None and _shell_vars(conf.decode(errors="replace")).get("KEYMAP") == \
            name.split("-")[0]:
        return
    if ctx.image.has_file("etc/boottime.kmap.gz"):
        return
    base = name.split("-")[0]
    if any(posixpath.basename(p).split(".")[0] == base and ".map" in posixpath.basename(p)
           for p in ctx.image.members):
        return
    ctx.add("keymap", name, f"keymap {name} (set in {where}) is not in the image: the "
            f"passphrase of {', '.join(asking)} will be read with the kernel's US layout",
            blocking=False)


def compare(image: Image, sr: SystemRoot, cmdline: str, cmdline_path: str, kver: str,
            host_crypttab: tuple[str, str | None], modules_root: Path = Path("/")) -> Report:
    from cryptboot.config.plan import build_plan

    km = system.kernel_modules(kver, modules_root)
    crypttab = image.read("etc/crypttab")
    crypttab_text = crypttab.decode("utf-8", "surrogateescape") if crypttab is not None else None
    ctx = Context(image, sr, kver, km, None, host_crypttab)
    try:
        ctx.plan = build_plan(cmdline, crypttab_text, f"{image.path}:/etc/crypttab",
                              cmdline_path)
    except ConfigError as e:
        ctx.add("plan", "plan", f"the boot's plan fails: {e.message}")
    if not km.known():
        ctx.add("kernel", kver, f"no modules.dep for kernel {kver} in {km.moddir}: module needs "
                "are not checked", blocking=False)
    versions = image.kernel_versions()
    other_kernel = bool(versions) and kver not in versions
    if other_kernel:
        ctx.add("kernel", kver, f"the image holds modules for {', '.join(versions)}, not for "
                f"kernel {kver}")
    ctx.note("command line", f"{cmdline_path}: {cmdline}")
    words = cmdline.split()
    resume = next((w[7:] for w in words if w.startswith("resume=")), None)
    targets = _targets(ctx, resume)
    stacks = [(t, _stack_needs(ctx, name, t)) for t, name in targets]
    for t, layers in stacks:
        ctx.note("stack", f"{t}: " + " <- ".join(
            f"{b.node} ({b.kind})" for b in layers))
    devs: dict[str, str] = {}
    if ctx.plan is not None:
        for v in ctx.plan.volumes:
            if not v.options.noauto:
                _volume_checks(ctx, v, devs)
    for t, layers in stacks:
        if ctx.plan is not None:   # a plan that fails has said why; no volume follows from it
            _coverage(ctx, t, layers, devs)
    root_dev = next((n for t, n in targets if t == "/"), None)
    _root_check(ctx, devs, root_dev)
    if not other_kernel:   # else every module would be reported missing: one line says it
        _module_findings(ctx)
    _program_findings(ctx)
    _keymap_check(ctx)
    ctx.note("image", f"{len(image.members)} files, parts: {' + '.join(image.parts)}")
    ctx.note("modules needed", ", ".join(ctx.needs.modules) or "none")
    if ctx.needs.algorithms:
        ctx.note("ciphers needed", ", ".join(ctx.needs.algorithms))
    return Report(image.path, kver, image.parts, ctx.findings, ctx.checked)
