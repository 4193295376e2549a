"""Merge the command line and crypttab into one frozen :class:`Plan`, the way systemd's
generator and dracut do, and refuse contradictions before anything is touched.

Merge rules (docs/plan.md has the full table):

- ``rd.luks.uuid`` / ``rd.luks.name`` volumes take a crypttab line with the same UUID (its
  device, keys and options); a name given on the command line wins over the crypttab name.
  ``rd.luks.options=UUID=`` replaces that volume's options, ``rd.luks.data=UUID=`` its device.
- Once the command line names volumes (``rd.luks.uuid``, ``rd.luks.name``, ``cryptdevice``,
  ``cryptboot.cgd``), crypttab lines it does not name are left out unless marked ``initramfs``
  or ``x-initrd.attach``. ``rd.luks.crypttab=0`` ignores crypttab; Debian's ``cryptopts=``
  replaces it; ``rd.luks=0`` turns off every volume but ``cryptboot.cgd`` ones.
- Keys, in the order they are tried: the volume's own keyfiles (crypttab, then
  ``rd.luks.key=UUID=``, ``cryptkey=``), then ``rd.luks.key`` keys for all volumes, then a
  passphrase typed for an earlier volume, then the prompt (not for ``headless``).
"""

from __future__ import annotations

from cryptboot.config.cmdline import Cmdline, LuksRequest, parse_cmdline
from cryptboot.config.crypttab import Entry, parse_crypttab
from cryptboot.config.devspec import mapper_name, normalize_uuid, uuid_matches
from cryptboot.config.model import (
    DeviceSpec,
    FailureAction,
    KeyKind,
    KeySource,
    Plan,
    Root,
    SpecKind,
    Vconsole,
    Volume,
    VolumeOptions,
)
from cryptboot.config.values import Where, read_config
from cryptboot.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Draft:
    """A volume being assembled from several sources (a plain class: see values.py)."""

    def __init__(self, name: str, source: DeviceSpec, where: Where, origin: str,
                 fields: dict[str, Any] | None = None,
                 keys: list[tuple[KeySource, Where]] | None = None, uuid: str | None = None,
                 *, named: bool = False, name_from_device: bool = False) -> None:
        self.name = name
        self.source = source
        self.where = where
        self.origin = origin
        self.fields: dict[str, Any] = fields if fields is not None else {}
        self.keys: list[tuple[KeySource, Where]] = keys if keys is not None else []
        self.uuid = uuid                  # for matching rd.luks.* settings to this volume
        self.from_crypttab = False
        self.named = named                # named on the command line
        self.name_from_device = name_from_device


def _entry_uuid(entry: Entry) -> str | None:
    if entry.source.kind is SpecKind.UUID:
        return entry.source.value
    if entry.name.startswith("luks-"):
        try:
            value, complete = normalize_uuid(entry.name[5:])
        except ValueError:
            return None
        return value if complete else None
    return None


def _draft(entry: Entry, origin: str) -> _Draft:
    return _Draft(entry.name, entry.source, entry.where, origin, dict(entry.options),
                  [(k, entry.where) for k in entry.keys], _entry_uuid(entry))


def _same_uuid(a: str, b: str) -> bool:
    return uuid_matches(a, True, b) or uuid_matches(b, True, a)


def _same_device(a: DeviceSpec, b: DeviceSpec) -> bool:
    if a.kind is not b.kind:
        return False
    if a.kind in (SpecKind.UUID, SpecKind.PARTUUID):
        if a.prefix or b.prefix:
            return _same_uuid(a.value, b.value)
        return a.value == b.value
    return a.value == b.value


def build_plan(
    cmdline: str, crypttab: str | None, crypttab_path: str = "/etc/crypttab",
    cmdline_path: str = "/proc/cmdline", vconsole: Vconsole | None = None,
) -> Plan:
    """The plan for ``cmdline`` and ``crypttab`` text (None: there is no crypttab).

    ``vconsole``: the keymap and font the files say (:func:`cryptboot.config.vconsole.
    read_vconsole`); the command line's ``rd.vconsole.*`` words override it.

    Raises ConfigError (``FILE:LINE: expected ..., found ...``) on malformed input and on
    contradictions: two volumes with one name or one device, a root nothing provides, a key
    device that is the volume itself, key devices that depend on each other in a loop.
    """
    cmd = parse_cmdline(cmdline, cmdline_path)
    warnings: list[str] = list(cmd.warnings)
    drafts = _crypttab_drafts(cmd, crypttab, crypttab_path, warnings)
    if cmd.luks:
        _apply_requests(cmd, drafts)
        _apply_cmdline_entries(cmd, drafts, warnings)
        drafts = _allow_list(cmd, drafts, warnings)
    elif cmd.requests or cmd.cryptdevices or cmd.cryptopts:
        warnings.append(f"{cmd.where}: rd.luks=0: the LUKS volumes named on the command line "
                        "are not unlocked")
    drafts += [_draft(e, f"cmdline: cryptboot.cgd={e.name}:...") for e in cmd.cgd]
    for d in drafts:
        _apply_uuid_settings(cmd, d)
    if cmd.luks:
        _warn_unmatched(cmd, drafts, warnings)
    for d in drafts:
        _warn_unreachable(d, warnings)
    _check(drafts)
    volumes = tuple(_finish(cmd, d) for d in _ordered(drafts))
    root = Root(cmd.root, cmd.rootfstype, cmd.readonly, cmd.rootflags)
    _check_root(cmd, volumes, warnings)
    network, ssh = cmd.net.plans()
    return Plan(
        volumes=volumes,
        root=root,
        init=cmd.init,
        init_args=cmd.init_args,
        device_timeout=cmd.device_timeout,
        root_timeout=cmd.root_timeout,
        failure=_failure(cmd, warnings),
        breaks=frozenset(cmd.breaks),
        auto=cmd.auto,
        debug=cmd.debug,
        warnings=tuple(dict.fromkeys(warnings)),
        module_params=tuple(cmd.module_params),
        module_blacklist=frozenset(cmd.module_blacklist),
        network=network,
        ssh=ssh,
        vconsole=_vconsole(cmd, vconsole),
        layers=cmd.stack.layers(),
        lvm_vgs=tuple(cmd.stack.vgs),
        lvm_lvs=tuple(cmd.stack.lvs),
        md_uuids=tuple(cmd.stack.md_uuids),
        md_conf=cmd.stack.md_conf,
        resume=None if cmd.stack.noresume else cmd.stack.resume,
        resume_offset=cmd.stack.resume_offset,
    )


def _vconsole(cmd: Cmdline, files: Vconsole | None) -> Vconsole:
    if files is None and not cmd.vconsole:
        return Vconsole()
    from cryptboot.config.vconsole import merge

    return merge(files or Vconsole(), cmd.vconsole)


def _crypttab_drafts(cmd: Cmdline, crypttab: str | None, path: str,
                     warnings: list[str]) -> list[_Draft]:
    if not cmd.luks:
        if crypttab is not None and crypttab.strip():
            warnings.append(f"{cmd.where}: rd.luks=0: {path} is ignored")
        return []
    if cmd.cryptopts is not None:
        if crypttab is not None and crypttab.strip():
            warnings.append(f"{cmd.where}: cryptopts= replaces {path}; its lines are ignored")
        out = []
        for e in cmd.cryptopts:
            d = _draft(e, "cmdline: cryptopts=")
            d.from_crypttab = d.named = True
            warnings.extend(e.warnings)
            out.append(d)
        return out
    if crypttab is None:
        return []
    if not cmd.crypttab:
        warnings.append(f"{cmd.where}: rd.luks.crypttab=0: {path} is ignored")
        return []
    out = []
    for e in parse_crypttab(crypttab, path):
        warnings.extend(e.warnings)
        d = _draft(e, str(e.where))
        d.from_crypttab = True
        out.append(d)
    return out


def _merge_requests(requests: list[LuksRequest]) -> list[LuksRequest]:
    """``rd.luks.uuid=X`` and ``rd.luks.name=X=N`` name one volume."""
    merged: list[LuksRequest] = []
    for r in requests:
        for i, m in enumerate(merged):
            if uuid_matches(m.uuid, False, r.uuid):
                merged[i] = LuksRequest(m.uuid, m.prefix, r.name or m.name,
                                        m.keysource or r.keysource, f"{m.param} {r.param}")
                break
        else:
            merged.append(r)
    return merged


def _apply_requests(cmd: Cmdline, drafts: list[_Draft]) -> None:
    for r in _merge_requests(cmd.requests):
        matches = [d for d in drafts if d.from_crypttab and d.uuid is not None
                   and uuid_matches(r.uuid, r.prefix, d.uuid)]
        if r.name and len(matches) > 1:
            raise cmd.where.error(
                f"{r.param}: expected one crypttab line with UUID {r.uuid}, found "
                f"{len(matches)} ({', '.join(str(d.where) for d in matches)})")
        for d in matches:
            d.named = True
            d.origin += f", cmdline: {r.param}"
            if r.name:
                d.name = r.name
            if r.keysource:
                d.fields["keysource"] = True
        if matches:
            continue
        src = DeviceSpec(SpecKind.UUID, r.uuid, prefix=r.prefix)
        d = _Draft(r.name or f"luks-{r.uuid}", src, cmd.where, f"cmdline: {r.param}",
                   uuid=r.uuid, named=True,
                   name_from_device=r.name is None and r.prefix)
        if r.keysource:
            d.fields["keysource"] = True
        if cmd.default_options is not None and _for_uuid(cmd.uuid_options, r.uuid) is None:
            d.fields.update(cmd.default_options[0].fields)
            d.origin += f", cmdline: {cmd.default_options[1]}"
        drafts.append(d)


def _apply_cmdline_entries(cmd: Cmdline, drafts: list[_Draft], warnings: list[str]) -> None:
    """``cryptdevice=`` (with ``cryptkey=`` and ``crypto=``) volumes, merged by name or device."""
    if cmd.cryptkey is not None and not cmd.cryptdevices:
        warnings.append(f"{cmd.where}: {cmd.cryptkey[1]}: no cryptdevice= to use it for; ignored")
    if cmd.crypto is not None and not cmd.cryptdevices:
        warnings.append(f"{cmd.where}: crypto=: no cryptdevice= to use it for; ignored")
    for e in cmd.cryptdevices:
        warnings.extend(e.warnings)
        fields = dict(e.options)
        if cmd.crypto is not None:
            fields.update(cmd.crypto)
        keys = [(cmd.cryptkey[0], cmd.where)] if cmd.cryptkey is not None else []
        same = [d for d in drafts if d.name == e.name or _same_device(d.source, e.source)]
        for d in same:
            if d.name == e.name and not _same_device(d.source, e.source):
                raise cmd.where.error(
                    f"cryptdevice=: volume {e.name!r} is defined twice: expected one device, "
                    f"found {e.source} here and {d.source} at {d.origin}")
        if same:
            d = same[0]
            d.name, d.named = e.name, True
            d.fields.update(fields)
            d.keys += keys
            d.origin += ", cmdline: cryptdevice="
        else:
            drafts.append(_Draft(e.name, e.source, cmd.where, "cmdline: cryptdevice=", fields,
                                 keys, _entry_uuid(e), named=True))


def _allow_list(cmd: Cmdline, drafts: list[_Draft], warnings: list[str]) -> list[_Draft]:
    if not (cmd.requests or cmd.cryptdevices or cmd.cgd):
        return drafts
    kept = []
    for d in drafts:
        if d.from_crypttab and not d.named and not d.fields.get("initramfs"):
            warnings.append(f"{d.where}: volume {d.name!r} left out: the command line names "
                            "the volumes to unlock and this line is not one of them (mark it "
                            "initramfs or x-initrd.attach to keep it)")
            continue
        kept.append(d)
    return kept


def _for_uuid(mapping: dict[str, Any], uuid: str | None) -> Any:
    if uuid is None:
        return None
    for key, value in mapping.items():
        if _same_uuid(key, uuid):
            return value
    return None


def _apply_uuid_settings(cmd: Cmdline, d: _Draft) -> None:
    """Per-UUID rd.luks.options / .data / .key, then the all-volume switches."""
    opts = _for_uuid(cmd.uuid_options, d.uuid)
    if opts is not None:
        keep = {k: d.fields[k] for k in ("keysource",) if k in d.fields}
        d.fields = {**opts[0].fields, **keep}
        d.origin += f", cmdline: {opts[1]}"
    data = _for_uuid(cmd.data, d.uuid)
    if data is not None:
        d.source = data[0]
        d.origin += f", cmdline: {data[1]}"
    for k in cmd.keys:
        if k.uuid is not None and d.uuid is not None and _same_uuid(k.uuid, d.uuid):
            d.keys.append((k.key, cmd.where))
    if not d.fields.get("keysource"):
        for k in cmd.keys:
            if k.uuid is None and (k.luksdev is None or _luksdev_matches(k.luksdev, d)):
                d.keys.append((k.key, cmd.where))
    if cmd.discard_all or any(d.uuid and _same_uuid(u, d.uuid) for u in cmd.discard_uuids):
        d.fields["discard"] = True
    if cmd.prompt_timeout is not None:
        d.fields.setdefault("timeout", cmd.prompt_timeout)
    if cmd.tries is not None:
        d.fields.setdefault("tries", cmd.tries)


def _warn_unmatched(cmd: Cmdline, drafts: list[_Draft], warnings: list[str]) -> None:
    """Per-UUID settings for a UUID no volume has are named, not silently unused."""
    uuids = [d.uuid for d in drafts if d.uuid is not None]
    settings: list[tuple[str, str]] = [(u, o[1]) for u, o in cmd.uuid_options.items()]
    settings += [(u, v[1]) for u, v in cmd.data.items()]
    settings += [(k.uuid, k.param) for k in cmd.keys if k.uuid is not None]
    settings += [(u, f"rd.luks.allow-discards={u}") for u in cmd.discard_uuids]
    for uuid, param in settings:
        if not any(_same_uuid(uuid, u) for u in uuids):
            warnings.append(f"{cmd.where}: {param}: no volume has UUID {uuid}; ignored")
    for k in cmd.keys:
        if k.luksdev is not None and not any(_luksdev_matches(k.luksdev, d) for d in drafts):
            warnings.append(f"{cmd.where}: {k.param}: no volume is on {k.luksdev}; ignored")


def _luksdev_matches(spec: DeviceSpec, d: _Draft) -> bool:
    if spec.kind is SpecKind.UUID and d.uuid is not None:
        return uuid_matches(spec.value, True, d.uuid) or _same_uuid(spec.value, d.uuid)
    return _same_device(spec, d.source) or mapper_name(spec) == d.name


def _warn_unreachable(d: _Draft, warnings: list[str]) -> None:
    if d.fields.get("noauto"):
        warnings.append(f"{d.where}: volume {d.name!r} is noauto: cryptboot plans it but the "
                        "boot does not unlock it unless asked by name")


def _finish(cmd: Cmdline, d: _Draft) -> Volume:
    options = VolumeOptions(**d.fields)
    keys: list[KeySource] = []
    for key, where in d.keys:
        dev = key.device
        if dev is not None and (_same_device(dev, d.source) or mapper_name(dev) == d.name):
            raise where.error(f"volume {d.name!r}: expected a key device other than the volume "
                              f"itself, found {dev} (the volume's own device)")
        if key not in keys:
            keys.append(key)
    keys.append(KeySource(KeyKind.CACHED))
    if not options.headless:
        keys.append(KeySource(KeyKind.PROMPT))
    return Volume(d.name, d.source, tuple(keys), options, d.origin, d.name_from_device)


def _ordered(drafts: list[_Draft]) -> list[_Draft]:
    """Key-source volumes first; a volume whose key or header sits on another volume's mapping
    after that volume. A loop is a contradiction."""
    by_name = {d.name: d for d in drafts}
    deps: dict[str, set[str]] = {}
    for d in drafts:
        needs = {mapper_name(k.device) for k, _ in d.keys if k.device is not None}
        hdr = d.fields.get("header_device")
        if isinstance(hdr, DeviceSpec):
            needs.add(mapper_name(hdr))
        deps[d.name] = {n for n in needs if n in by_name and n != d.name}
    start = sorted(drafts, key=lambda d: not d.fields.get("keysource"))
    done: list[_Draft] = []
    placed: set[str] = set()
    visiting: set[str] = set()

    def visit(d: _Draft) -> None:
        if d.name in placed:
            return
        if d.name in visiting:
            raise d.where.error(f"volume {d.name!r}: expected key devices that can be opened one "
                                "after another, found a loop of volumes holding each other's keys")
        visiting.add(d.name)
        for n in sorted(deps[d.name]):
            visit(by_name[n])
        visiting.discard(d.name)
        placed.add(d.name)
        done.append(d)

    for d in start:
        visit(d)
    return done


def _check(drafts: list[_Draft]) -> None:
    names: dict[str, _Draft] = {}
    for d in drafts:
        if d.name in names:
            first = names[d.name]
            raise d.where.error(f"duplicate volume name {d.name!r}: expected each name once, "
                                f"found it here ({d.origin}) and at {first.origin}")
        names[d.name] = d
    for i, a in enumerate(drafts):
        for b in drafts[i + 1:]:
            if _same_device(a.source, b.source):
                raise b.where.error(f"volumes {a.name!r} and {b.name!r}: expected one volume per "
                                    f"device, found both on {b.source}")


def _check_root(cmd: Cmdline, volumes: tuple[Volume, ...], warnings: list[str]) -> None:
    root = cmd.root
    if root is None:
        warnings.append(f"{cmd.where}: no root= given: volumes can be unlocked, but there is no "
                        "root file system to mount")
        return
    for v in volumes:
        if _same_device(root, v.source):
            raise cmd.where.error(
                f"root={root}: expected the file system inside a volume, found the encrypted "
                f"device of volume {v.name!r}", hint=f"use root=/dev/mapper/{v.name}")
    name = mapper_name(root)
    if name is None:
        return
    for v in volumes:
        if v.name == name:
            if v.options.noauto:
                warnings.append(f"{cmd.where}: root=/dev/mapper/{name} is on a noauto volume")
            return
        if v.name_from_device and name.startswith("luks-") and \
                uuid_matches(v.source.value, True, name[5:]):
            return
    if cmd.auto and name.startswith("luks-"):
        return
    if cmd.stack.lvm and "-" in name.replace("--", ""):
        return  # VG-LV: an LVM logical volume (issue 12), activated when its PVs appear
    found = ", ".join(v.name for v in volumes) or "no volumes"
    raise cmd.where.error(
        f"root=/dev/mapper/{name}: expected a volume named {name!r}, found {found}",
        hint="name it in crypttab, or with rd.luks.name=UUID=NAME, cryptdevice=DEVICE:NAME or "
             "cryptopts=target=NAME,...; an LVM volume is /dev/mapper/VG-LV (rd.lvm=0 "
             "turns LVM off)")


def _failure(cmd: Cmdline, warnings: list[str]) -> FailureAction:
    if cmd.failure is not None:
        return cmd.failure
    if not cmd.shell:
        return cmd.emergency or FailureAction.HALT
    if cmd.emergency is not None:
        warnings.append(f"{cmd.where}: rd.emergency={cmd.emergency} takes effect only with "
                        "rd.shell=0 (as in dracut); a failure opens a shell")
    return FailureAction.SHELL


def _read(path: str) -> str | None:
    return read_config(path)


def load_plan(
    cmdline_path: str = "/proc/cmdline", crypttab_path: str = "/etc/crypttab",
    defaults_path: str | None = None, vconsole_path: str | None = None,
) -> Plan:
    """The plan from files; a missing crypttab means none, a missing command line is an error.

    ``vconsole_path``: a vconsole.conf to read (in an image, the one mkinitramfs wrote).

    ``defaults_path`` holds an image's default words; they come before the kernel's, so the
    kernel's own command line overrides them (the last word wins).
    """
    cmdline = _read(cmdline_path)
    if cmdline is None:
        raise ConfigError("expected the kernel command line, found no such file",
                          file=cmdline_path, hint="is /proc mounted?")
    where = cmdline_path
    defaults = _read(defaults_path) if defaults_path else None
    if defaults and defaults.strip():
        cmdline = defaults.strip() + " " + cmdline
        where = f"{defaults_path} + {cmdline_path}"
    vconsole = None
    if vconsole_path:
        text = _read(vconsole_path)
        if text is not None:
            from cryptboot.config.vconsole import from_vconsole_conf

            vconsole = from_vconsole_conf(text, vconsole_path)
    return build_plan(cmdline, _read(crypttab_path), crypttab_path, where, vconsole)

